"""The `class` notebook profile (issue 23): a class period in which notebook 06 (and 02, the coarse net)
trains on real faces when a face folder is given, scored on held-out faces against biharmonic inpainting
and the shipped model; without faces it says what to download and trains on the embedded photos."""
import re
from pathlib import Path

import nbformat
import pytest

from csa_lib.config import NOTEBOOK_PROFILES, REPO_ROOT

NB02 = REPO_ROOT / "notebooks" / "02_coarse_network.ipynb"
NB06 = REPO_ROOT / "notebooks" / "06_training_on_gpu.ipynb"


def _code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def _markdown(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


def test_class_is_a_notebook_profile(monkeypatch):
    from csa_lib.config import notebook_profile

    assert "class" in NOTEBOOK_PROFILES
    monkeypatch.delenv("CSA_SMOKE", raising=False)
    monkeypatch.setenv("CSA_PROFILE", "class")
    assert notebook_profile() == "class"


@pytest.mark.parametrize("path", [NB02, NB06], ids=lambda p: p.name)
def test_class_lessons_train_on_a_face_folder_or_say_what_to_download(path: Path):
    code = _code(path)
    # the folder: $CSA_DATA_ROOT, else ../shared/data/celeba_10k beside the checkout
    assert 'data_root(SHARED_ROOT / "data" / "celeba_10k")' in code
    assert re.search(r'PROFILE\s*==\s*"class"|"class"', code), f"{path.name}: no class branch"
    assert "CLASS_MINUTES" in code, f"{path.name}: the class run needs a time budget the student can change"
    assert "data/README.md" in code, f"{path.name}: without faces it must say where to get them"
    # scored against the two references on the same held-out faces
    for reference in ("biharmonic_inpaint", 'load_pretrained("celeba64"'):
        assert reference in code, f"{path.name}: no {reference} score"


def test_notebook_06_states_what_a_class_period_achieves_and_where_it_was_measured():
    text = _markdown(NB06)
    assert "CLASS_RESULT_TEXT" not in text
    statement = text[text.index("Measured in the class profile"):]
    assert "AMD EPYC" in statement and "images/s" in statement and "biharmonic" in statement


def _face_folder(folder: Path, n: int) -> Path:
    """``n`` small JPEGs (89x109, the team's CelebA copies' size) cut from the embedded photos."""
    from csa_lib.data import embedded_photos

    folder.mkdir()
    photos = embedded_photos()
    for i in range(n):
        im = photos[i % len(photos)]
        left, top = (i * 7) % max(1, im.width - 180), (i * 11) % max(1, im.height - 220)
        im.crop((left, top, left + 178, top + 218)).resize((89, 109)).save(folder / f"{i:06d}.jpg", quality=90)
    return folder


@pytest.mark.slow
def test_notebook_06_smoke_trains_and_scores_on_a_face_folder(tmp_path, monkeypatch):
    """The face path of section 6 (the class lesson at toy size) on a folder named by CSA_DATA_ROOT, on a
    machine without ../shared: it trains on the folder, scores the held-out part against biharmonic and
    the shipped model, and draws its figures."""
    from nbclient import NotebookClient

    faces = _face_folder(tmp_path / "faces", 120)
    empty = tmp_path / "no_shared"
    empty.mkdir()
    monkeypatch.setenv("CSA_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CSA_DATA_ROOT", str(faces))
    monkeypatch.setenv("CSA_SHARED_ROOT", str(empty))
    nb = nbformat.read(NB06, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NB06.parent)}}).execute()
    out = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "stream")
    assert f"faces: {faces} (120 images)" in out
    assert "training celeba64 on faces" in out
    assert re.search(r"biharmonic\s+PSNR\s+\d", out) and re.search(r"shipped model\s+PSNR\s+\d", out)
    assert re.search(r"after \d+ steps: [+-]\d+\.\d\d dB against biharmonic", out)
