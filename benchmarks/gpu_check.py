"""GPU readiness check: one prepared command that spends a lent GPU's minutes well (issue 15).

    python benchmarks/gpu_check.py --prepare-data          # here: copy ../shared data into .gpu_data/
    python3 benchmarks/gpu_check.py --out $OUT             # on the GPU machine: about 8 minutes
    python benchmarks/gpu_check.py --smoke --out DIR       # on a CPU: the same code paths, tiny sizes

Parts, run in this order, each isolated (a failure is recorded in the report and the next part runs):

  a  correctness: the fast CSA layer (Triton on CUDA) against csa_reference (float64 on the CPU), paper
     and official semantics, forward and backward (true gradient), B = 1 and 16, an irregular mask per
     image, fp32 and bf16 inputs: worst relative and absolute differences, argmax agreement;
  b  timing: the layer (B = 1, 16; forward, forward+backward) with the fastest chain and the plain torch
     chain (target: forward+backward at B = 16 under 2 ms);
  c  training throughput of the trainer's step on synthetic batches (data loading excluded): paper256 in
     bf16 at the largest batch that fits (target at least 100 images/s), and celeba64 at d's width;
  d  celeba64 trained for --train-minutes on the carried data, evaluated per hole-ratio bin
     (csa_lib.metrics), its generator brought back as fp16 shards of at most 15 MiB (the device tool
     returns files of at most 16 MiB) and a card;
  e  notebooks 06-08 in their full profile (CSA_PROFILE=full) with every Trainer.fit capped at
     --nb-budget-s seconds, each in a fresh process (nbclient when installed, else the code cells run in
     order by a plain Python process, as on the GPU machine, which has no Jupyter).

Everything goes into OUT/gpu_check.json, rewritten after every part (so a run cut short still reports).
Data for d and e: ``.gpu_data/`` (git-ignored) laid out like ``../shared``; when it exists and
CSA_SHARED_ROOT is unset, this script points CSA_SHARED_ROOT at it. ``--prepare-data`` fills it within
the device tool's 64 MiB carry limit: the 10k CelebA faces, every second NVIDIA mask, the VGG16 file.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_DATA = REPO / ".gpu_data"
VGG_FILE = "vgg16_caffe_rgb_conv1-4_fp16.pth"
SHARD_BYTES = 15 * 2**20  # the device tool brings back files of at most 16 MiB
PARTS = "abcde"
NOTEBOOKS = ("06_training_on_gpu", "07_evaluation", "08_visualizing_attention")

if str(REPO) not in sys.path:  # the GPU machine runs the working tree, nothing installed
    sys.path.insert(0, str(REPO))
if "CSA_SHARED_ROOT" not in os.environ and GPU_DATA.is_dir():
    os.environ["CSA_SHARED_ROOT"] = str(GPU_DATA)  # before csa_lib.config reads it

import torch  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Sizes: the real check and its CPU smoke run the same code with these numbers
# --------------------------------------------------------------------------------------------------
def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(C=16, S=64, batches=(1, 3), repeats=3, warmup=1, paper_base=4, paper_size=32,
                    paper_batches=(1, 2), paper_steps=1, celeba_base=4, celeba_size=32, celeba_batch=2,
                    celeba_steps=1, d_steps=2, d_eval=8)
    return dict(C=512, S=256, batches=(1, 16), repeats=20, warmup=3, paper_base=64, paper_size=256,
                paper_batches=(16, 32, 64, 128, 256), paper_steps=5, celeba_base=None, celeba_size=None,
                celeba_batch=None, celeba_steps=10, d_steps=None, d_eval=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() in ms, after warm-up (compilation, autotuning), device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def feature_masks(batch: int, S: int, seed: int = 0) -> torch.Tensor:
    """One irregular mask per image (30-50 % holes at S px), at the CSA layer's 1/8 resolution, bool [B,1,S/8,S/8]."""
    from csa_lib.masks import feature_mask, irregular_mask

    g = torch.Generator().manual_seed(seed)
    m = torch.stack([irregular_mask(S, (0.3, 0.5), generator=g) for _ in range(batch)])
    return feature_mask(m.float())


def layer_inputs(batch: int, C: int, S: int, semantics: str, seed: int = 0):
    """Features [B,C,S/8,S/8] (signed for paper; positive for official, whose unguarded ratio d / (d + s)
    is ill-conditioned on signed features, official issue #26) and their hole masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, S // 8, S // 8, generator=g)
    if semantics == "official":
        x = x.abs() + 0.1
    return x, feature_masks(batch, S, seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------------------------------
# a: correctness of the fast layer against the reference
# --------------------------------------------------------------------------------------------------
def part_a(device, z, args) -> dict:
    from csa_lib import csa

    rows, worst = [], {}
    for semantics in ("paper", "official"):
        for B in z["batches"]:
            x, hole = layer_inputs(B, z["C"], z["S"], semantics, seed=B)
            g = torch.Generator().manual_seed(100 + B)
            w = torch.randn(x.shape, generator=g)                 # a random upstream gradient
            for dtype in (torch.float32, torch.bfloat16):
                xin = x.to(dtype).clone()                          # a fresh leaf per dtype
                # the reference sees the same (rounded) inputs, in float64 on the CPU
                xr = xin.double().requires_grad_()
                yr, att_r = csa.csa_reference(xr, hole, semantics, return_attention=True)
                (yr * w.double()).sum().backward()
                xd = xin.to(device).clone().requires_grad_()
                layer = csa.CoherentSemanticAttention(semantics)
                y, att = layer(xd, hole.to(device), return_attention=True)
                (y.float() * w.to(device)).sum().backward()
                valid = att_r.hole_index >= 0
                row = dict(semantics=semantics, B=B, dtype=str(dtype).replace("torch.", ""),
                           chain=csa._pick_chain("auto", xd.detach().float()),
                           holes=int(att_r.count.sum()),
                           argmax_agreement=float((att.source.cpu() == att_r.source)[valid].float().mean()),
                           fwd_rel=rel(y, yr), fwd_max_abs=float((y.double().cpu() - yr).abs().max()),
                           bwd_rel=rel(xd.grad, xr.grad),
                           bwd_max_abs=float((xd.grad.double().cpu() - xr.grad).abs().max()),
                           finite=bool(torch.isfinite(y).all() and torch.isfinite(xd.grad).all()))
                rows.append(row)
                for k in ("fwd_rel", "bwd_rel", "fwd_max_abs", "bwd_max_abs"):
                    key = f"{row['dtype']}_{k}"
                    worst[key] = max(worst.get(key, 0.0), row[k])
    return {"rows": rows, "worst": worst, "all_finite": all(r["finite"] for r in rows),
            "min_argmax_agreement": min(r["argmax_agreement"] for r in rows)}


# --------------------------------------------------------------------------------------------------
# b: timing of the layer
# --------------------------------------------------------------------------------------------------
def part_b(device, z, args) -> dict:
    from csa_lib import csa

    rows = []
    for B in z["batches"]:
        x, hole = layer_inputs(B, z["C"], z["S"], "paper")
        x, hole = x.to(device), hole.to(device)
        w = torch.randn_like(x)
        fast = csa.available_chains(device)[-1]
        for chain in dict.fromkeys(["torch", fast]):
            layer = csa.CoherentSemanticAttention("paper", chain=chain)

            def fwd():
                with torch.no_grad():
                    layer(x, hole)

            def fwd_bwd():
                xg = x.detach().requires_grad_()
                (layer(xg, hole) * w).sum().backward()

            rows.append(dict(B=B, chain=chain, holes_per_image=float(hole.sum() / B),
                             fwd_ms=median_ms(fwd, device, z["repeats"], z["warmup"]),
                             fwd_bwd_ms=median_ms(fwd_bwd, device, z["repeats"], z["warmup"])))
    big = [r for r in rows if r["B"] == max(z["batches"]) and r["chain"] != "torch"] or rows[-1:]
    return {"rows": rows, "target": "forward+backward at B=16 under 2 ms",
            "fast_fwd_bwd_ms_at_max_B": big[0]["fwd_bwd_ms"], "target_met": big[0]["fwd_bwd_ms"] < 2.0}


# --------------------------------------------------------------------------------------------------
# c: training throughput (the trainer's own step, synthetic batches already on the device)
# --------------------------------------------------------------------------------------------------
def _random_vgg():
    from csa_lib.vgg import VGG16Features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG weights: the speed is the same
        return VGG16Features("none")


def step_rate(trainer, batch: int, steps: int, device) -> dict:
    """Median seconds per trainer.train_step on a fixed synthetic batch, and images/s."""
    from csa_lib.masks import irregular_mask

    S = trainer.preset.model.image_size
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(batch, 3, S, S, generator=g) * 2 - 1).to(device)
    mask = torch.stack([irregular_mask(S, (0.1, 0.6), generator=g) for _ in range(batch)]).to(device)
    trainer.train_step(image, mask)                       # warm-up: compilation, cuDNN autotuning
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        trainer.train_step(image, mask)
        sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {"batch": batch, "s_per_step": s, "images_per_s": batch / s}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def trainer_for(name: str, out_dir: Path, overrides: dict, device):
    from csa_lib.config import get_preset
    from csa_lib.train import Trainer

    base = {"data.root": None, "data.masks": "irregular", "data.mask_dir": None, "data.train_range": (0, 8),
            "data.eval_range": (0, 4), "data.num_workers": 0, "loss.vgg_weights": "none",
            "train.device": str(device), "train.tensorboard": False, "train.out_dir": str(out_dir)}
    return Trainer(get_preset(name, **{**base, **overrides}), vgg=_random_vgg(), progress=False)


def part_c(device, z, args) -> dict:
    out = {}
    paper = trainer_for("paper256", args.work / "c_paper256", {
        "train.amp": "bf16", "model.base_channels": z["paper_base"], "model.image_size": z["paper_size"],
        "data.image_size": z["paper_size"]}, device)
    rows = []
    for batch in z["paper_batches"]:
        try:
            rows.append(step_rate(paper, batch, z["paper_steps"], device))
        except Exception as err:  # the largest batch that fits: stop at the first that does not
            if not is_oom(err):
                raise
            rows.append({"batch": batch, "error": "out of memory"})
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    fits = [r for r in rows if "images_per_s" in r]
    best = max(fits, key=lambda r: r["images_per_s"]) if fits else None
    out["paper256_bf16"] = {"rows": rows, "largest_batch": fits[-1]["batch"] if fits else None,
                            "best": best, "target": "at least 100 images/s",
                            "target_met": bool(best and best["images_per_s"] >= 100)}
    del paper
    if device.type == "cuda":
        out["paper256_bf16"]["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    base, batch = d_width(z, args)
    celeba = trainer_for("celeba64", args.work / "c_celeba64", {"model.base_channels": base, **d_size(z)}, device)
    out["celeba64"] = {"amp": str(celeba.amp), "base_channels": base,
                       **step_rate(celeba, batch, z["celeba_steps"], device)}
    return out


def d_size(z) -> dict:
    """Image-size overrides of the celeba64 model in parts c and d (none: the preset's 64 px)."""
    s = z["celeba_size"]
    return {"model.image_size": s, "data.image_size": s} if s else {}


def d_width(z, args) -> tuple[int, int]:
    """(base_channels, batch) of the celeba64 model of parts c and d."""
    from csa_lib.config import get_preset

    p = get_preset("celeba64")
    return (z["celeba_base"] or args.d_base_channels, z["celeba_batch"] or p.train.batch_size)


# --------------------------------------------------------------------------------------------------
# d: celeba64 for a few minutes, evaluated per hole-ratio bin, weights brought back
# --------------------------------------------------------------------------------------------------
def part_d(device, z, args, report) -> dict:
    from csa_lib import metrics
    from csa_lib.config import get_preset, missing_files
    from csa_lib.data import list_images
    from csa_lib.train import Trainer

    missing = missing_files(get_preset("celeba64"))
    if missing:
        return {"status": "skipped", "reason": "missing " + "; ".join(missing) +
                " (run --prepare-data here and carry .gpu_data)"}
    base, batch = d_width(z, args)
    budget = 60.0 * args.train_minutes
    if z["d_steps"]:
        steps = z["d_steps"]
    else:  # size the schedule to the budget from c's measured step time (else the preset's, cut by time)
        rate = (report["parts"].get("c", {}).get("result") or {}).get("celeba64", {}).get("s_per_step")
        steps = max(20, int(0.85 * budget / rate)) if rate else get_preset("celeba64").train.steps
    workers = 0 if z["d_steps"] else min(8, os.cpu_count() or 1)
    n = len(list_images(get_preset("celeba64").data.root))
    split = {}
    if n < 10000:  # --prepare-data --faces N: the first 90 % train, the held-out last 10 % evaluate
        split = {"data.train_range": (0, n - max(1, n // 10)), "data.eval_range": (n - max(1, n // 10), n)}
    preset = get_preset("celeba64", **split, **{
        "model.base_channels": base, "train.batch_size": batch, "train.steps": steps,
        "train.decay_start": steps // 2, "train.time_budget_s": budget, "train.device": str(device),
        "train.out_dir": str(args.work / "d_celeba64"), "train.tensorboard": False,
        "train.ckpt_every": max(steps, 1), "train.sample_every": max(steps, 1),
        "train.log_every": max(1, steps // 20), "data.num_workers": workers, **d_size(z)})
    shutil.rmtree(preset.train.out_dir, ignore_errors=True)
    trainer = Trainer(preset, progress=False)
    fit = trainer.fit()
    trainer.close()
    res = metrics.evaluate(trainer.G, trainer.eval_set, batch_size=64, device=device, masks_by_bin="hole_ratio",
                           max_images=z["d_eval"], progress=False, masks=metrics.describe_masks(preset.data),
                           split=metrics.describe_split(preset.data, len(trainer.eval_set)))
    card = save_generator(trainer, args.out, {"fit": fit, "metrics": res.summary()})
    return {"fit": fit, "steps_planned": steps, "base_channels": base, "batch": batch,
            "amp": str(trainer.amp), "table": metrics.results_table(res), "by_bin": res.summary(),
            "weights": card}


def save_generator(trainer, out: Path, extra: dict) -> dict:
    """The generator as fp16 shards ``celeba64_G.partK.pt`` (at most SHARD_BYTES each) and a card
    ``celeba64_G.json`` (sha256 of each shard, the preset). Load with :func:`load_generator_shards`."""
    from csa_lib.pretrained import sha256_file

    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in trainer.G.state_dict().items()}
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > SHARD_BYTES - 2**20:   # 1 MiB left for the pickle's own bytes
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += nbytes
    shards.append(cur)
    files = []
    for i, shard in enumerate(shards):
        path = out / f"celeba64_G.part{i}.pt"
        torch.save(shard, path)
        files.append({"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    card = {"files": files, "dtype": "float16", "step": trainer.step,
            "preset": trainer.preset.to_dict(), **json.loads(json.dumps(extra, default=str))}
    (out / "celeba64_G.json").write_text(json.dumps(card, indent=1) + "\n")
    return {"files": files, "card": "celeba64_G.json"}


def load_generator_shards(card_path: str | Path, device="cpu"):
    """Rebuild the generator of part d from its card and shards (each sha256-checked), float32, eval mode."""
    from csa_lib.config import Preset
    from csa_lib.networks import build_models
    from csa_lib.pretrained import sha256_file

    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    state = {}
    for f in card["files"]:
        path = card_path.parent / f["file"]
        if sha256_file(path) != f["sha256"]:
            raise ValueError(f"{path}: sha256 does not match its card {card_path}")
        state.update(torch.load(path, map_location="cpu", weights_only=True))
    G = build_models(Preset.from_dict(card["preset"]).model)[0]
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return G.to(device).eval()


# --------------------------------------------------------------------------------------------------
# e: notebooks 06-08 in their full profile, training capped
# --------------------------------------------------------------------------------------------------
#: Runs before a notebook's first cell: caps every Trainer.fit at the budget (seconds, argv[2]).
BUDGET_CELL = """\
import csa_lib.train as _gpu_check_train
_gpu_check_fit = _gpu_check_train.Trainer.fit
def _gpu_check_capped_fit(self, *args, **kwargs):  # gpu_check: the notebook's training, time-capped
    cap, cur = {budget!r}, self.preset.train.time_budget_s
    self.preset.train.time_budget_s = cap if cur is None else min(cur, cap)
    return _gpu_check_fit(self, *args, **kwargs)
_gpu_check_train.Trainer.fit = _gpu_check_capped_fit
"""

#: The plain-Python notebook runner (argv: notebook, budget_s, report.json): the code cells in order in
#: one namespace, from the notebook's folder, matplotlib Agg; IPython magics are dropped, and a stand-in
#: IPython.display.display (a no-op) is provided when IPython is not installed.
EXEC_RUNNER = r"""
import json, os, sys, time, traceback, types
nb, budget, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
os.chdir(os.path.dirname(os.path.abspath(nb)))
try:
    import IPython.display  # noqa: F401
except ImportError:
    ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
    disp.display = lambda *objs, **kw: None
    ip.display = disp
    sys.modules.update({"IPython": ip, "IPython.display": disp})
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
ns = {"__name__": "__main__"}
exec(BUDGET_CELL.format(budget=budget), ns)
cells = [c for c in json.load(open(nb))["cells"] if c["cell_type"] == "code"]
records = []
for i, cell in enumerate(cells):
    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    t0 = time.perf_counter()
    rec = {"cell": i, "ok": True}
    try:
        exec(compile(src, f"{os.path.basename(nb)}[code cell {i}]", "exec"), ns)
    except BaseException:
        rec.update(ok=False, error=traceback.format_exc()[-4000:])
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    plt.close("all")
    records.append(rec)
    json.dump(records, open(report, "w"))
    if not rec["ok"]:
        break
"""


def run_notebook(path: Path, budget: float, timeout: float, runner: str, env: dict, tmp: Path) -> dict:
    """Execute one notebook in a fresh process; returns per-cell records, the runner and the output tail."""
    report = tmp / f"{path.stem}.cells.json"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if runner == "nbclient":
        code = NBCLIENT_RUNNER
    else:
        code = f"BUDGET_CELL = {BUDGET_CELL!r}\n" + EXEC_RUNNER
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(budget), str(report)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        tail, rc = (proc.stdout + proc.stderr)[-3000:], proc.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = f"timed out after {timeout:.0f} s\n" + str(e.stdout or "")[-2000:], None
    cells = json.loads(report.read_text()) if report.exists() else []
    ok = rc == 0 and bool(cells) and all(c["ok"] for c in cells)
    return {"ok": ok, "runner": runner, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "cells_run": len(cells), "failed_cell": next((c for c in cells if not c["ok"]), None),
            "slowest_cells": sorted(cells, key=lambda c: -c["seconds"])[:3] if ok else None,
            "output_tail": None if ok else tail}


#: The nbclient runner (a real Jupyter kernel): the budget cell is prepended to an in-memory copy.
NBCLIENT_RUNNER = r"""
import json, os, sys, time
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
nb_path, budget, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
nb = nbformat.read(nb_path, as_version=4)
nb.cells.insert(0, nbformat.v4.new_code_cell(%r.format(budget=budget)))
client = NotebookClient(nb, timeout=None, kernel_name="python3",
                        resources={"metadata": {"path": os.path.dirname(os.path.abspath(nb_path))}})
from datetime import datetime
error = None
try:
    client.execute()
except CellExecutionError as e:
    error = str(e)[-4000:]
records = []
for i, c in enumerate(cell for cell in nb.cells[1:] if cell.cell_type == "code"):
    ex = c.get("metadata", {}).get("execution", {})
    if "iopub.execute_input" not in ex or "shell.execute_reply" not in ex:
        break                                             # not reached: an earlier cell failed
    f = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    t = (f(ex["shell.execute_reply"]) - f(ex["iopub.execute_input"])).total_seconds()
    records.append({"cell": i, "ok": True, "seconds": round(t, 2)})
if error is not None:  # the last cell that ran is the one that failed
    if records:
        records[-1].update(ok=False, error=error)
    else:
        records.append({"cell": 0, "ok": False, "error": error, "seconds": 0.0})
json.dump(records, open(report, "w"))
""" % BUDGET_CELL


def pick_runner(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import jupyter_client.kernelspec  # noqa: F401
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401

        jupyter_client.kernelspec.KernelSpecManager().get_kernel_spec("python3")
        return "nbclient"
    except Exception:  # the GPU machine has no Jupyter: the plain-Python runner
        return "exec"


def part_e(device, z, args) -> dict:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if args.smoke:
        env["CSA_SMOKE"] = "1"
    else:                                                 # the full profile (config.notebook_profile)
        env.pop("CSA_SMOKE", None)
        env["CSA_PROFILE"] = "full"
    runner = pick_runner(args.nb_runner)
    tmp = args.work / "notebooks"
    tmp.mkdir(parents=True, exist_ok=True)
    out = {"profile": "smoke" if args.smoke else "full", "budget_s_per_fit": args.nb_budget_s}
    faces = Path(os.environ.get("CSA_SHARED_ROOT", "")) / "data" / "celeba_10k"
    if faces.is_dir() and len(list(faces.iterdir())) < 10000:
        # a reduced --prepare-data folder: the notebooks index the full 10k (held-out 9,001-10,000), so
        # they take their no-CelebA branches instead (an empty shared root)
        (tmp / "no_shared").mkdir(exist_ok=True)
        env["CSA_SHARED_ROOT"] = str(tmp / "no_shared")
        out["shared_root"] = "empty: the carried CelebA folder is reduced"

    for name in args.notebooks:
        path = REPO / "notebooks" / f"{name}.ipynb"
        # each notebook ends by the hard stop (half a minute after --deadline-min): the report comes back
        timeout = min(args.nb_timeout_s, args.hard_stop - time.monotonic())
        if not path.exists() or timeout < 30:
            out[name] = {"ok": False, "error": f"no notebook {path}" if not path.exists() else
                         "skipped: too little time left before the hard stop"}
            continue
        out[name] = run_notebook(path, args.nb_budget_s, timeout, runner, env, tmp)
    out["all_ok"] = all(v["ok"] for k, v in out.items() if isinstance(v, dict))
    return out


# --------------------------------------------------------------------------------------------------
# The report and the driver
# --------------------------------------------------------------------------------------------------
def machine(device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "device": str(device),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "shared_root": os.environ.get("CSA_SHARED_ROOT")}
    for name in ("torchvision", "triton", "numba"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:
            info[name] = f"not available ({type(err).__name__})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except Exception:
        info["commit"] = None
    return info


def write(report: dict, out: Path) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, out / "gpu_check.json")


def run_part(name: str, fn, report: dict, out: Path, deadline: float) -> None:
    """Run one part, isolated: its result or its error (and any warnings) go into the report."""
    entry = report["parts"][name] = {"status": "running"}
    if time.monotonic() > deadline:
        entry.update(status="skipped", reason="--deadline-min reached before this part")
        write(report, out)
        return
    print(f"[gpu_check] part {name} ...", flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
            status = result.pop("status", "ok") if isinstance(result, dict) else "ok"
            entry.update(status=status, result=result)
        except BaseException as err:  # isolated: record it, go on (KeyboardInterrupt still stops below)
            entry.update(status="failed", error=f"{type(err).__name__}: {err}",
                         traceback=traceback.format_exc()[-4000:])
            if isinstance(err, KeyboardInterrupt):
                raise
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught})[:20]
    print(f"[gpu_check] part {name}: {entry['status']} in {entry['seconds']} s", flush=True)
    write(report, out)


def summary_lines(report: dict) -> list[str]:
    """A short table for the end of the output (the device tool returns the output's tail)."""
    lines = [f"gpu_check on {report['machine'].get('gpu', report['machine']['device'])}, "
             f"torch {report['machine']['torch']}, triton {report['machine']['triton']}"]
    for name, entry in report["parts"].items():
        r, extra = entry.get("result") or {}, ""
        if name == "a" and r:
            extra = " ".join(f"{k}={v:.2e}" for k, v in r["worst"].items()) + \
                f" argmax>={r['min_argmax_agreement']:.3f}"
        elif name == "b" and r:
            extra = "; ".join(f"B={x['B']} {x['chain']}: fwd {x['fwd_ms']:.2f} ms, fwd+bwd {x['fwd_bwd_ms']:.2f} ms"
                              for x in r["rows"])
        elif name == "c" and r:
            best = r["paper256_bf16"]["best"] or {}
            extra = (f"paper256 bf16 best {best.get('images_per_s', float('nan')):.1f} img/s "
                     f"at B={best.get('batch')}; celeba64 {r['celeba64']['images_per_s']:.1f} img/s "
                     f"at B={r['celeba64']['batch']}")
        elif name == "d" and r.get("by_bin"):
            a = r["by_bin"]["all"]
            extra = (f"{r['fit']['step']} steps; all: n={a['n']} psnr={a['psnr']:.2f} ssim={a['ssim']:.4f} "
                     f"l1={a['l1']:.4f}")
        elif name == "e" and r:
            extra = " ".join(f"{k}:{'ok' if v['ok'] else 'FAILED'}" for k, v in r.items() if isinstance(v, dict))
        err = entry.get("error", "")
        lines.append(f"  {name} {entry['status']:>7} {entry.get('seconds', 0):6.1f} s  {extra or err}")
    return lines


def travelling_bytes() -> tuple[int, list[str]]:
    """Bytes of the working tree that a device call sends (tracked and untracked-not-ignored files), and
    the ignored folders the notebooks need that must be carried too (``weights/`` when its files are
    ignored: notebooks 07 and 08 load the shipped model), their bytes included."""
    def size(paths):
        return sum((REPO / f).stat().st_size for f in paths if (REPO / f).is_file())

    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=True).stdout.split("\0")
    except Exception:  # not a git checkout: count every file outside the usual scratch folders
        listed = [str(f.relative_to(REPO)) for f in REPO.rglob("*") if f.is_file() and not
                  any(part in (".git", ".venv", "runs", ".gpu_data") for part in f.relative_to(REPO).parts)]
    total, extra = size(listed), []
    weights = REPO / "weights"
    ignored = [f for f in weights.glob("*") if f.is_file() and str(f.relative_to(REPO)) not in set(listed)]
    if ignored:
        extra.append("weights")
        total += size(str(f.relative_to(REPO)) for f in weights.glob("*"))
    return total, extra


def prepare_data(args) -> int:
    """Copy ../shared into .gpu_data/: --faces CelebA faces (the first 90 % and the last 10 % of the
    sorted folder, so the held-out end stays held out), every --mask-every'th NVIDIA mask, the VGG16 file;
    check that it travels with the working tree within the device tool's 64 MiB."""
    from csa_lib.config import SHARED_ROOT

    src = Path(os.environ.get("CSA_PREPARE_FROM", SHARED_ROOT))
    if src.resolve() == GPU_DATA.resolve():
        src = REPO.parent / "shared"
    faces, masks, vgg = src / "data" / "celeba_10k", src / "data" / "nvidia_masks_256", src / "weights" / VGG_FILE
    for path in (faces, masks, vgg):
        if not path.exists():
            print(f"--prepare-data: {path} not found", file=sys.stderr)
            return 2
    tree, extra = travelling_bytes()
    limit = args.max_mib * 2**20 if args.max_mib is not None else 63 * 2**20 - tree
    files, mask_files = sorted(faces.iterdir()), sorted(masks.iterdir())
    nbytes = lambda fs: sum(f.stat().st_size for f in fs)  # noqa: E731
    # Defaults: all faces and every second mask when they fit, else every 8th mask and as many faces as fit.
    every = args.mask_every or (2 if nbytes(files) + nbytes(mask_files[::2]) + vgg.stat().st_size <= limit
                                else 8)
    room = limit - vgg.stat().st_size - nbytes(mask_files[::every])
    n = args.faces or max(0, min(len(files), int(0.98 * room / (nbytes(files) / len(files)))))
    n = min(n, len(files))
    if args.faces is None and n < 100:
        print(f"--prepare-data: only {n} faces fit in {limit / 2**20:.1f} MiB", file=sys.stderr)
        return 2
    shutil.rmtree(GPU_DATA, ignore_errors=True)
    head = round(0.9 * n)
    picks = [(faces, files[:head] + files[len(files) - (n - head):]),
             (masks, mask_files[::every]), (vgg.parent, [vgg])]
    for folder, chosen in picks:
        dest = GPU_DATA / folder.relative_to(src)
        dest.mkdir(parents=True, exist_ok=True)
        for f in chosen:
            shutil.copy2(f, dest / f.name)
    total = sum(f.stat().st_size for f in GPU_DATA.rglob("*") if f.is_file())
    print(f"{GPU_DATA}: {total / 2**20:.1f} MiB ({n} faces, {len(picks[1][1])} masks); the working tree (with the "
          f"carried folders) sends {tree / 2**20:.1f} MiB more; carry={[GPU_DATA.name] + extra}")
    if total > limit:
        print(f"--prepare-data: {total / 2**20:.1f} MiB is over the {limit / 2**20:.1f} MiB left of the device "
              "tool's 64 MiB; lower --faces or raise --mask-every", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check", help="report folder")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for runs (default: OUT/../gpu_check_work)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what the test runs)")
    p.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    p.add_argument("--parts", default=PARTS, help="which parts to run, e.g. 'abc' (default: all)")
    p.add_argument("--train-minutes", type=float, default=2.0, help="part d's training time")
    p.add_argument("--d-base-channels", type=int, default=32,
                   help="part d's model width (64 = 76M parameters, too big to bring back; 32 = 19M)")
    p.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="part e's notebooks (stems)")
    p.add_argument("--nb-budget-s", type=float, default=20.0, help="part e: cap of every Trainer.fit")
    p.add_argument("--nb-timeout-s", type=float, default=240.0, help="part e: kill a notebook after this")
    p.add_argument("--nb-runner", choices=("auto", "exec", "nbclient"), default="auto")
    p.add_argument("--deadline-min", type=float, default=9.0,
                   help="no part starts after this many minutes; notebooks are stopped half a minute later")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--prepare-data", action="store_true", help="fill .gpu_data/ from ../shared and exit")
    p.add_argument("--mask-every", type=int, default=None,
                   help="--prepare-data: keep every k-th mask file (default: 2 when all fits, else 8)")
    p.add_argument("--faces", type=int, default=None,
                   help="--prepare-data: CelebA faces to copy (default: all 10,000 or as many as fit)")
    p.add_argument("--max-mib", type=float, default=None,
                   help="--prepare-data: size limit of .gpu_data (default: 63 MiB minus what travels anyway)")
    args = p.parse_args(argv)
    if args.prepare_data:
        return prepare_data(args)
    bad = set(args.parts) - set(PARTS)
    if bad:
        p.error(f"--parts: unknown part(s) {''.join(sorted(bad))}; choose from {PARTS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (use --smoke on a CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out.parent / (args.out.name + "_work")
    args.work.mkdir(parents=True, exist_ok=True)
    z = sizes(args.smoke)
    report = {"machine": machine(device), "smoke": args.smoke, "sizes": z, "parts": {},
              "args": {k: str(v) for k, v in vars(args).items()}}
    write(report, args.out)
    deadline = time.monotonic() + 60 * args.deadline_min
    args.hard_stop = deadline + 30.0
    torch.manual_seed(0)
    table = {"a": lambda: part_a(device, z, args), "b": lambda: part_b(device, z, args),
             "c": lambda: part_c(device, z, args), "d": lambda: part_d(device, z, args, report),
             "e": lambda: part_e(device, z, args)}
    for name in PARTS:
        if name in args.parts:
            run_part(name, table[name], report, args.out, deadline)
    report["total_seconds"] = round(sum(e.get("seconds", 0) for e in report["parts"].values()), 1)
    write(report, args.out)
    print("\n".join(summary_lines(report)))
    return 0 if all(e["status"] in ("ok", "skipped") for e in report["parts"].values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
