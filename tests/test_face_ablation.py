"""benchmarks/face_ablation.py: its table and its argument errors (the scoring is csa_lib.ablation, tested
in test_attention_stats.py)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from csa_lib.ablation import summarize_by_group

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _script():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("face_ablation", BENCH / "face_ablation.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_bin_table_reports_difference_activity_and_inactive_rows():
    fa = _script()
    act = {"n": 4, "changed": 0.5, "per_image_changed": torch.tensor([True, True, False, False]),
           "per_image_has_hole_cell": torch.tensor([True, True, False, True])}
    layer = {"psnr": torch.tensor([12.0, 13.0, 20.0, 20.0]), "l1": torch.ones(4), "activity": act}
    ident = {"psnr": torch.tensor([10.0, 11.0, 20.0, 20.0]), "l1": torch.ones(4), "activity": None}
    by = summarize_by_group({"identity": [ident], "CSA": [layer]}, ["a", "a", "b", "b"], reference="identity")
    table = fa.bin_table(by, {"a": (2, 1.0), "b": (2, 0.5), "all": (4, 0.75)}, "identity")
    lines = table.splitlines()
    assert lines[0].startswith("| bin | N | >= 1 hole cell | identity (dB) | CSA (dB) | CSA - identity")
    assert lines[2] == "| a | 2 | 100 % | 10.50 | 12.50 | +2.000 [+2.000, +2.000] | 100 % |"
    assert "**inactive**" in lines[3]  # bin b: the layer changed no image there
    assert lines[4].startswith("| all | 4 | 75 % | 15.25 | 16.25 | +1.000")


@pytest.mark.parametrize("argv, message", [
    (["--model", "CSA"], "expected METHOD=SPEC"),
    (["--model", "CSA=x", "--reference", "identity"], "--reference 'identity'"),
    (["--model", "identity=x", "--at-inference", "CSA"], "--at-inference 'CSA'"),
    (["--model", "identity=x", "--framings", "99"], "--framings '99'"),
])
def test_bad_arguments_name_the_argument(tmp_path, capsys, argv, message):
    fa = _script()
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(SystemExit) as e:
        fa.main(argv + ["--data", str(d), "--masks", str(d), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_data_folder_is_named(tmp_path, capsys):
    fa = _script()
    with pytest.raises(SystemExit):
        fa.main(["--model", "identity=x", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "nope is not a folder" in capsys.readouterr().err
