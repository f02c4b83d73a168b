"""The shipped weights install with the package (issue 21, section 2).

A wheel built from this checkout holds every ``weights/*.pt``, ``*.json`` and ``*.md`` as the package data
``csa_lib/weights/``; installed into a fresh virtual environment and run outside the checkout,
``load_pretrained`` finds every shipped model there, and ``csa inpaint`` fills a photo with it.

Nothing is downloaded: the wheel is built without build isolation (this environment's setuptools) and
installed with ``--no-deps --no-index``. The fresh environment reaches torch and the other requirements
through a ``.pth`` file naming this environment's site-packages; the editable ``csa_lib`` of this
environment is not on that path (its finder is only installed by this environment's own ``.pth``), so
every ``csa_lib`` import there is the wheel's.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
from PIL import Image

from csa_lib.config import REPO_ROOT
from csa_lib.pretrained import CHECKOUT_WEIGHTS, list_pretrained

#: What a wheel is built from: the package, the weights and the files pyproject.toml reads.
SOURCES = ("csa_lib", "weights", "pyproject.toml", "requirements.txt", "README.md", "LICENSE")


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of this checkout (the copy keeps build/ and *.egg-info out of the work tree)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.tmp*"))
        else:
            shutil.copy(path, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist"],
        env=env)
    (path,) = (root / "dist").glob("csa_inpainting-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_every_weights_file(wheel):
    with zipfile.ZipFile(wheel) as z:
        packaged = {n.removeprefix("csa_lib/weights/") for n in z.namelist() if n.startswith("csa_lib/weights/")}
    shipped = {p.name for pattern in ("*.pt", "*.json", "*.md") for p in CHECKOUT_WEIGHTS.glob(pattern)}
    assert shipped and packaged == shipped
    # The weights are nearly all of it (38 MB of float16 for celeba64); a much larger wheel took in
    # something it should not (runs/, data/).
    assert wheel.stat().st_size < 1.2 * sum((CHECKOUT_WEIGHTS / n).stat().st_size for n in shipped) + 2e6


@pytest.mark.slow
def test_installed_wheel_loads_the_shipped_models_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
        env={**os.environ, "PIP_NO_INDEX": "1"})
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    (tmp_path / "venv" / site.split(str(venv) + os.sep, 1)[1] / "deps.pth").write_text(
        sysconfig.get_path("purelib") + "\n")  # torch, numpy, ...: never downloaded
    names = list_pretrained(available_only=True)
    code = ("import sys, csa_lib, csa_lib.pretrained as p; from pathlib import Path; "
            "from csa_lib.inference import load_model; "
            "assert Path(csa_lib.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), csa_lib.__file__; "
            "assert p.WEIGHTS_DIR == p.PACKAGED_WEIGHTS, p.WEIGHTS_DIR; "
            "names = p.list_pretrained(available_only=True); "
            "[load_model(n) for n in names]; "
            "G = p.load_pretrained('celeba64'); print(' '.join(names), G.card['file'], p.WEIGHTS_DIR)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = run([py, "-I", "-c", code], cwd=tmp_path, env=env).split()
    assert out[:len(names)] == names and out[len(names)] == "csa_celeba64.pt"
    assert out[-1].startswith(str(venv)) and out[-1].endswith(os.path.join("csa_lib", "weights"))
    # The console script of the installed package, on a photo, with the shipped model.
    src = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(src)
    said = run([venv / "bin" / "csa", "inpaint", src, "--mask", "center", "-o", tmp_path / "out.png",
                "--save-mask", tmp_path / "hole.png", "--threads", "1"], cwd=tmp_path, env=env)
    assert "shipped model celeba64" in said
    a, b = np.asarray(Image.open(src)), np.asarray(Image.open(tmp_path / "out.png"))
    hole = np.asarray(Image.open(tmp_path / "hole.png")) > 127
    assert a.shape == b.shape and hole.any() and np.array_equal(a[~hole], b[~hole])
