"""docs/colab.py: the "Open in Colab" badges and the Colab-only set-up block."""
import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("colab", ROOT / "docs" / "colab.py")
colab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab)


@pytest.fixture
def tree(tmp_path):
    """A copy of the README and of every notebook, to write badges into."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [root / "README.md", *colab.notebooks_in(root)]}


def test_write_check_rewrite_and_remove_round_trip(tree, capsys):
    before = _snapshot(tree)
    assert colab.main(["--check", "octocat/csa-inpainting"], root=tree) == 1  # nothing written yet
    assert colab.main(["octocat/csa-inpainting"], root=tree) == 0
    assert colab.main(["--check", "octocat/csa-inpainting"], root=tree) == 0
    nb = json.loads((tree / "notebooks" / "03_csa_layer.ipynb").read_text())
    title = "".join(nb["cells"][0]["source"])
    url = "https://colab.research.google.com/github/octocat/csa-inpainting/blob/main/notebooks/03_csa_layer.ipynb"
    assert url in title and title.startswith("# 03")
    first_code = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert first_code.startswith(colab.CODE_BEGIN) and "profile:" in first_code  # still prints the profile
    assert url in (tree / "README.md").read_text()
    # idempotent: a second run changes nothing; a new branch replaces the badges instead of adding more
    after = _snapshot(tree)
    assert colab.main(["octocat/csa-inpainting"], root=tree) == 0
    assert _snapshot(tree) == after
    assert colab.main(["octocat/csa-inpainting", "--branch", "dev"], root=tree) == 0
    readme = (tree / "README.md").read_text()
    assert readme.count("colab-badge.svg") == len(before) - 1 and "/blob/dev/" in readme and "/blob/main/" not in readme
    assert colab.main(["--check", "octocat/csa-inpainting"], root=tree) == 1  # stale branch
    assert colab.main(["--remove"], root=tree) == 0
    assert _snapshot(tree) == before  # byte for byte


@pytest.mark.parametrize("bad", ["csa-inpainting", "a/b/c", "_x/y", "owner/na me"])
def test_bad_repository_is_one_line_error_and_touches_nothing(tree, bad, capsys):
    before = _snapshot(tree)
    assert colab.main([bad], root=tree) == 2
    assert bad.strip() in capsys.readouterr().err
    assert _snapshot(tree) == before


def test_url_forms_are_accepted():
    assert colab.check_repo("https://github.com/octocat/csa-inpainting.git") == "octocat/csa-inpainting"


def test_setup_block_does_nothing_outside_colab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(colab.setup_block("octocat/csa-inpainting"), {})
    assert calls == [] and Path.cwd() == tmp_path


def test_setup_block_inside_colab_clones_changes_into_the_repository_and_installs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colab_module, enabled = types.ModuleType("google.colab"), []
    colab_module.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", colab_module)
    monkeypatch.setattr(sys, "path", list(sys.path))
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        if cmd[0] == "git":
            (tmp_path / cmd[-1]).mkdir()

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(colab.setup_block("octocat/csa-inpainting", "dev"), {})
    assert calls[0] == ["git", "clone", "--depth", "1", "--branch", "dev",
                        "https://github.com/octocat/csa-inpainting", "csa-inpainting"]
    assert calls[1][1:] == ["-m", "pip", "install", "-q", "-e", ".[widgets]"]
    assert Path.cwd() == tmp_path / "csa-inpainting"
    assert enabled == [True]  # Colab's manager for third-party widgets (ipympl, ipycanvas)
