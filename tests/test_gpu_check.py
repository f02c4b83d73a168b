"""benchmarks/gpu_check.py --smoke: every part of the GPU check runs on the CPU and reports.

The real check runs on a lent GPU (benchmarks/RESULTS.md says how); this runs the same code paths with tiny
sizes, so that the minutes on the GPU are not lost to a bug found there. One notebook (08) stands for part
e here: `make test` executes every notebook through nbval anyway.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from csa_lib.config import REPO_ROOT, get_preset, missing_files

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--threads", "1",
                           "--nb-runner", "exec", "--notebooks", "08_visualizing_attention",
                           "--deadline-min", "60"],              # a slow CI machine: no part is skipped
                          env=env, capture_output=True, text=True, timeout=1800)
    assert (out / "gpu_check.json").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    rep["_rc"], rep["_out"], rep["_stdout"] = proc.returncode, out, proc.stdout
    return rep


@pytest.mark.slow
def test_every_part_ran_and_the_run_succeeded(report):
    assert report["smoke"] is True and report["machine"]["device"] == "cpu"
    assert set(report["parts"]) == set("abcde")
    failed = {k: v.get("error") for k, v in report["parts"].items() if v["status"] not in ("ok", "skipped")}
    assert not failed, failed
    assert report["_rc"] == 0
    assert "gpu_check on cpu" in report["_stdout"]          # the summary table ends the output


@pytest.mark.slow
def test_a_fast_layer_matches_the_reference_in_fp32_and_bf16(report):
    a = report["parts"]["a"]["result"]
    assert len(a["rows"]) == 2 * 2 * 2                       # semantics x batch sizes x dtypes
    assert {r["B"] for r in a["rows"]} == {1, 3} and a["all_finite"]
    assert a["worst"]["float32_fwd_rel"] < 1e-5 and a["worst"]["float32_bwd_rel"] < 1e-5
    assert a["worst"]["bfloat16_fwd_rel"] < 2e-2 and a["worst"]["bfloat16_bwd_rel"] < 5e-2
    assert all(r["holes"] > 0 for r in a["rows"])


@pytest.mark.slow
def test_b_and_c_report_timings(report):
    b = report["parts"]["b"]["result"]
    assert {r["chain"] for r in b["rows"]} >= {"torch"} and all(r["fwd_bwd_ms"] > 0 for r in b["rows"])
    c = report["parts"]["c"]["result"]
    assert c["paper256_bf16"]["best"]["images_per_s"] > 0 and c["paper256_bf16"]["largest_batch"] == 2
    assert c["celeba64"]["images_per_s"] > 0


@pytest.mark.slow
def test_d_trains_evaluates_per_bin_and_brings_the_generator_back(report):
    d = report["parts"]["d"]
    if missing_files(get_preset("celeba64")):
        assert d["status"] == "skipped" and "missing" in d["result"]["reason"]
        return
    r = d["result"]
    assert r["fit"]["step"] == 2 and r["by_bin"]["all"]["n"] == 8
    assert sum(v["n"] for k, v in r["by_bin"].items() if k != "all") == 8   # every image in one bin
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import load_generator_shards

    card = report["_out"] / "celeba64_G.json"
    G = load_generator_shards(card)
    S = json.loads(card.read_text())["preset"]["model"]["image_size"]
    out = G(torch.zeros(1, 3, S, S), torch.ones(1, 1, S, S))
    assert torch.isfinite(out.refined).all()


@pytest.mark.slow
def test_e_runs_the_notebook_with_its_budget(report):
    e = report["parts"]["e"]["result"]
    nb = e["08_visualizing_attention"]
    assert e["profile"] == "smoke" and nb["ok"] and nb["runner"] == "exec" and nb["cells_run"] > 10


def test_a_failing_part_is_recorded_and_the_rest_still_runs(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    report = {"parts": {}}

    def boom():
        raise ZeroDivisionError("in part x")

    gpu_check.run_part("x", boom, report, tmp_path, deadline=float("inf"))
    gpu_check.run_part("y", lambda: {"value": 1}, report, tmp_path, deadline=float("inf"))
    gpu_check.run_part("z", lambda: {"value": 2}, report, tmp_path, deadline=float("-inf"))
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["parts"]["x"]["status"] == "failed" and "ZeroDivisionError" in on_disk["parts"]["x"]["error"]
    assert on_disk["parts"]["y"] == {**on_disk["parts"]["y"], "status": "ok", "result": {"value": 1}}
    assert on_disk["parts"]["z"]["status"] == "skipped"


def test_prepare_data_fits_the_carry_limit_or_says_why(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    monkeypatch.setattr(gpu_check, "GPU_DATA", tmp_path / ".gpu_data")
    monkeypatch.setenv("CSA_PREPARE_FROM", str(tmp_path / "nowhere"))
    assert gpu_check.main(["--prepare-data"]) == 2       # no source: a clear error, nothing copied
    assert not (tmp_path / ".gpu_data").exists()
    src = tmp_path / "shared"
    for sub, n in (("data/celeba_10k", 3), ("data/nvidia_masks_256", 6)):
        (src / sub).mkdir(parents=True)
        for i in range(n):
            (src / sub / f"{i:05d}.png").write_bytes(b"x" * 1000)
    (src / "weights").mkdir()
    (src / "weights" / gpu_check.VGG_FILE).write_bytes(b"w" * 1000)
    monkeypatch.setenv("CSA_PREPARE_FROM", str(src))
    assert gpu_check.main(["--prepare-data", "--mask-every", "2", "--faces", "3"]) == 0
    assert len(list((tmp_path / ".gpu_data/data/nvidia_masks_256").iterdir())) == 3
    assert (tmp_path / ".gpu_data/weights" / gpu_check.VGG_FILE).is_file()
    assert gpu_check.main(["--prepare-data", "--max-mib", "0.001"]) == 2   # over the limit: says so


def test_a_failing_notebook_cell_is_named_and_stops_the_notebook(tmp_path):
    import nbformat

    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a lesson"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("%matplotlib inline\nx / 0"), nbformat.v4.new_code_cell("x = 2")]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg"}
    r = gpu_check.run_notebook(path, 5.0, 300.0, "exec", env, tmp_path)
    assert not r["ok"] and r["cells_run"] == 2                # the third code cell never ran
    assert r["failed_cell"]["cell"] == 1 and "ZeroDivisionError" in r["failed_cell"]["error"]
