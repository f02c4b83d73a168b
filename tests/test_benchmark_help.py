"""Every benchmark script answers ``--help`` (argparse formats each help string with ``%``: a bare "30-60 %"
in a help text crashed ``border_error.py --help``)."""
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and "argparse" in p.read_text())


def test_the_scripts_are_found():
    assert {"border_error.py", "eval_framings.py", "face_ablation.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out
