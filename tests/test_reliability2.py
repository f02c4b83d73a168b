"""Reliability, second round (issue 20, sections 1-4): nothing a user owns is overwritten or deleted, no
branch name runs code in the Colab set-up, no silent wrong result, and one line instead of a traceback.

Every test here failed on the code before the fix (each says what it guards)."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import types
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csa_lib.cli import build_parser, main, save_image
from csa_lib.config import REPO_ROOT, ModelConfig, get_preset
from csa_lib.networks import CSAInpainter, build_models
from csa_lib.train import RunLock, Trainer, load_checkpoint, remove_orphan_temps
from subprocess_kill import csa, one_error_line


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()  # `csa` sets the thread count of its process
    yield
    torch.set_num_threads(n)


def write(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def photo(h=40, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


def hole(h=40, w=40):
    m = np.zeros((h, w), np.uint8)
    m[h // 2 - 6:h // 2 + 6, w // 2 - 6:w // 2 + 6] = 255
    return m


def error_of(capsys, *argv) -> str:
    """The one stderr line of a command that must fail with status 2."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("csa: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def smoke(out_dir, **overrides):
    settings = {"train.out_dir": str(out_dir), "train.tensorboard": False, "train.steps": 2,
                "train.decay_start": 1, "train.ckpt_every": 1, "train.sample_every": 2, "train.log_every": 1}
    settings.update(overrides)
    return get_preset("smoke", **settings)


@pytest.fixture(scope="module")
def vgg():
    from csa_lib.vgg import VGG16Features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGG16Features("none")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, vgg):
    """A 2-step smoke run (32 px, embedded photos)."""
    out = tmp_path_factory.mktemp("small") / "run"
    Trainer(smoke(out), vgg=vgg, progress=False).fit()
    return out


def fake_checkpoint(path, base_channels=8, nan=False):
    """A checkpoint as `csa inpaint --checkpoint` reads it (generator + preset + step), built without a
    trainer; ``nan`` puts one NaN into the first generator weight."""
    preset = get_preset("smoke")
    state = build_models(preset.model)[0].state_dict()
    if nan:
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first].view(-1)[0] = float("nan")
    preset.model.base_channels = base_channels
    torch.save({"generator": state, "preset": preset.to_dict(), "step": 3}, path)
    return path


# ==================================================================================================
# 2. Code execution in docs/colab.py
# ==================================================================================================
spec = importlib.util.spec_from_file_location("colab_under_test", REPO_ROOT / "docs" / "colab.py")
colab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab)


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(REPO_ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def _snapshot(root):
    return {p.name: p.read_bytes() for p in [root / "README.md", *colab.notebooks_in(root)]}


def test_colab_hostile_branch_is_a_quoted_name_not_code(tree, tmp_path, monkeypatch):
    # Before: the branch was pasted unescaped into the first code cell: this payload ran in Colab.
    marker = tmp_path / "pwned"
    hostile = f'main",__import__("os").mkdir({str(marker)!r}),"'
    assert colab.check_branch(hostile) == hostile  # a legal git branch name
    before = _snapshot(tree)
    assert colab.main(["octocat/csa-inpainting", "--branch", hostile], root=tree) == 0
    assert colab.main(["--check", "octocat/csa-inpainting", "--branch", hostile], root=tree) == 0
    nb = json.loads((tree / "notebooks" / "03_csa_layer.ipynb").read_text())
    cell = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    block = cell[:cell.index(colab.CODE_END) + len(colab.CODE_END)]

    work = tmp_path / "colab"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        if cmd[0] == "git":
            (work / cmd[-1]).mkdir()

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(block, {})
    assert not marker.exists()
    assert calls[0] == ["git", "clone", "--depth", "1", "--branch", hostile,
                        "https://github.com/octocat/csa-inpainting", "csa-inpainting"]
    # In the links the branch is percent-encoded: no quote or parenthesis ends the Markdown link.
    readme = (tree / "README.md").read_text()
    url = colab.colab_url("octocat/csa-inpainting", "03_csa_layer.ipynb", hostile)
    assert url in readme and not set('"()," ') & set(url.split("/blob/")[1])
    assert colab.main(["--remove"], root=tree) == 0
    assert _snapshot(tree) == before


@pytest.mark.parametrize("bad", ["a..b", "-x", "a b", "x.lock", "HEAD", "", "a:b", "a\\b", "a//b", ".a"])
def test_colab_invalid_branch_names_are_refused_and_touch_nothing(tree, bad, capsys):
    before = _snapshot(tree)
    assert colab.main(["octocat/csa-inpainting", f"--branch={bad}"], root=tree) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a valid git branch name" in err[0]
    assert _snapshot(tree) == before
