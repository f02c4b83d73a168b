"""csa_lib.inference, the public inference API (issue 21): PIL / numpy / tensor inputs validated in one
sentence, a PIL image of the input's size with known pixels unchanged, the model card's crop policy, the
attention record, mask generators, load_model by name or checkpoint; and the first-run promises around it
(issue 21 section 3, issue 25 section 2): limits in --help and the README, the upscale warning,
--save-mask, a demo without Python warning lines, notebook 09 without ipycanvas."""
import json
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import csa_lib.pretrained as pretrained
from csa_lib import inference
from csa_lib.config import REPO_ROOT
from csa_lib.inference import InpaintModel, generate_mask, inpaint, load_model, mask_to_pil, read_mask

SHIPPED = (pretrained.WEIGHTS_DIR / "csa_celeba64.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="weights/csa_celeba64.json not in this checkout")


class ConstantGenerator(torch.nn.Module):
    """Stands in for a CSAInpainter: records its inputs, outputs a constant (0.5 in [-1, 1])."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, m):
        self.seen.append((x.clone(), m.clone()))
        return SimpleNamespace(refined=torch.full_like(x, 0.5))


def constant_model(size=32, resize="center_crop", crop_top=0.75):
    return InpaintModel(ConstantGenerator(), {"image_size": size, "resize": resize, "crop_top": crop_top}, "test")


def photo(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def square_hole(h=48, w=80):
    m = np.zeros((h, w), np.uint8)
    m[20:30, 30:50] = 255
    return m


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text.strip(), text
    return text


# --------------------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pil", "uint8 array", "float array", "grey array", "float tensor",
                                  "uint8 tensor", "batched tensor"])
def test_every_input_kind_gives_a_pil_image_with_known_pixels_unchanged(kind):
    pixels = photo()
    hole = square_hole() > 127
    image = {"pil": Image.fromarray(pixels),
             "uint8 array": pixels,
             "float array": pixels / 255.0,
             "grey array": pixels[..., 0],
             "float tensor": torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1,
             "uint8 tensor": torch.from_numpy(pixels).permute(2, 0, 1),
             "batched tensor": (torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)[None]}[kind]
    expect = np.repeat(pixels[..., :1], 3, -1) if kind == "grey array" else pixels
    model = constant_model()
    out = inpaint(model, image, Image.fromarray(square_hole()))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (80, 48)
    got = np.asarray(out)
    assert np.array_equal(got[~hole], expect[~hole])          # known pixels: the input's bytes
    assert (got[hole] == 191).all()                           # 0.5 in [-1, 1] -> 191 of 255
    x, m = model.generator.seen[0]
    assert x.shape == (1, 3, 32, 32) and m.shape == (1, 1, 32, 32) and m.sum() > 0


@pytest.mark.parametrize("mask_kind", ["pil L", "pil 1", "bool array", "0/1 uint8", "float", "tensor [1,H,W]",
                                       "tensor [1,1,H,W]", "[H,W,1] array"])
def test_every_mask_kind_means_white_or_one_is_hole(mask_kind):
    hole = square_hole() > 127
    mask = {"pil L": Image.fromarray(square_hole()),
            "pil 1": Image.fromarray(square_hole()).convert("1"),
            "bool array": hole,
            "0/1 uint8": hole.astype(np.uint8),
            "float": hole.astype(np.float32),
            "tensor [1,H,W]": torch.from_numpy(hole).float()[None],
            "tensor [1,1,H,W]": torch.from_numpy(hole)[None, None],
            "[H,W,1] array": hole[..., None]}[mask_kind]
    got = np.asarray(inpaint(constant_model(), photo(), mask))
    assert (got[hole] == 191).all() and np.array_equal(got[~hole], photo()[~hole])


@pytest.mark.parametrize("image, expect", [
    (torch.rand(3, 48, 80) * 255, "expected [-1, 1]: 0..255 values? use image / 127.5 - 1"),
    (torch.rand(3, 48, 80) * 2 - 1.5, "expected [-1, 1]"),
    (torch.rand(48, 80, 3) * 2 - 1, "channels last? tensors are [3, H, W]"),
    (torch.zeros(3, 48, 80, dtype=torch.int32), "float in [-1, 1] or uint8"),
    (np.zeros((3, 48, 80), np.uint8), "channels first? numpy images are [H, W, 3]"),
    (np.full((48, 80, 3), 200.0), "0..255 values? pass them as uint8"),
    (np.full((48, 80, 3), np.nan), "expected [0, 1]"),
    (np.zeros((48, 80, 4), np.uint8), "[H, W, 3] RGB or [H, W] grey"),
    (np.zeros((48, 80, 3), np.uint16), "uint8 (0..255) or float (0..1)"),
    ("photo.png", "a PIL image, a numpy array or a tensor"),
])
def test_bad_images_are_one_sentence_value_errors(image, expect):
    with pytest.raises(ValueError) as e:
        inpaint(constant_model(), image, square_hole())
    assert expect in one_line(e)


@pytest.mark.parametrize("mask, expect", [
    (np.zeros((20, 20), np.uint8), "size mismatch: the image is 80x48 but the mask is 20x20"),
    (Image.new("L", (40, 24)), "size mismatch"),
    (np.zeros((48, 80, 3), np.uint8), "one channel"),
    (np.full((48, 80), 255.0), "a float mask must lie in [0, 1], 1 = hole: a 0..255 mask?"),
    (np.full((48, 80), -1.0), "a float mask must lie in [0, 1]"),
    (np.full((48, 80), 300, np.int32), "expected 0..255"),
    (None, "a PIL image, a numpy array or a tensor"),
])
def test_bad_masks_are_one_sentence_value_errors(mask, expect):
    with pytest.raises(ValueError) as e:
        inpaint(constant_model(), photo(), mask)
    assert expect in one_line(e)


def test_hole_outside_the_crop_and_tiny_images_are_refused():
    outside = np.zeros((48, 80), np.uint8)
    outside[:, :5] = 255  # the centre crop is columns 16..64
    with pytest.raises(ValueError) as e:
        inpaint(constant_model(), photo(), outside)
    assert "outside the 48x48 square" in one_line(e)
    with pytest.raises(ValueError) as e:
        inpaint(constant_model(), photo(4, 4), np.ones((4, 4), bool))
    assert "too small to inpaint" in one_line(e)


def test_model_must_be_an_inpaint_model():
    with pytest.raises(ValueError, match="load_model"):
        inpaint(ConstantGenerator(), photo(), square_hole())


# --------------------------------------------------------------------------------------------------
# warnings: expected conditions in one sentence
# --------------------------------------------------------------------------------------------------
def caught(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(x.message) for x in w]


def test_empty_total_and_inverted_looking_masks_warn():
    model = constant_model()
    out, said = caught(lambda: inpaint(model, photo(), np.zeros((48, 80), bool)))
    assert np.array_equal(np.asarray(out), photo()) and len(said) == 1 and "no hole" in said[0]
    assert model.generator.seen == []  # nothing to fill: the network is not run
    _, said = caught(lambda: inpaint(constant_model(resize="square"), photo(), np.ones((48, 80), bool)))
    assert any("covers the whole image" in s for s in said)
    mostly = np.ones((48, 80), bool)
    mostly[:8] = False
    _, said = caught(lambda: inpaint(constant_model(resize="square"), photo(), mostly))
    assert any("83% of the image as hole" in s and "invert it" in s for s in said)
    red = np.zeros((48, 80, 3), np.uint8)
    red[20:30, 30:50, 0] = 255  # red strokes on black: grey 76, known by the threshold
    _, said = caught(lambda: inpaint(model, photo(), Image.fromarray(red)))
    assert any("grey value <= 127" in s for s in said)


def test_a_fill_upscaled_more_than_4x_is_warned_about():
    hole = np.zeros((300, 300), bool)
    hole[140:160, 140:160] = True
    _, said = caught(lambda: inpaint(constant_model(size=32), photo(300, 300), hole))
    assert len(said) == 1 and "upscaled 9.4x" in said[0] and "downscale the photo to about 128 px" in said[0]
    small = np.zeros((120, 160), bool)
    small[50:60, 70:90] = True
    _, said = caught(lambda: inpaint(constant_model(size=32), photo(120, 160), small))
    assert said == []  # 120 / 32 = 3.75x: no warning
    assert inference.upscale_factor(500, 700, {"image_size": 64, "resize": "center_crop"}) == 500 / 64


# --------------------------------------------------------------------------------------------------
# masks, files
# --------------------------------------------------------------------------------------------------
def test_generated_masks_save_and_read_back_unchanged(tmp_path):
    model = constant_model(size=64)
    for kind in ("center", "irregular"):
        m = generate_mask(kind, 100, 60, model, seed=2)
        top, left, h, w = inference.crop_box(100, 60, model)
        assert m.shape == (1, 100, 60) and m.sum() == m[:, top:top + h, left:left + w].sum() > 0
        mask_to_pil(m).save(tmp_path / f"{kind}.png")
        assert torch.equal(read_mask(tmp_path / f"{kind}.png", (100, 60)), m)
    with pytest.raises(ValueError, match="'center' or 'irregular'"):
        generate_mask("circle", 10, 10, model)


def test_read_image_applies_exif_and_missing_files_name_themselves(tmp_path):
    img = Image.fromarray(photo(20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert inference.read_image(tmp_path / "phone.jpg").size == (20, 30)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        inference.read_image(tmp_path / "absent.png")


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------
def test_load_model_errors_are_file_not_found_or_value_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_model("nope")
    assert "checkpoint nope: no such file (nor a shipped model name: celeba64" in one_line(e)
    with pytest.raises(FileNotFoundError) as e:
        load_model(tmp_path / "absent.pt")
    assert "absent.pt" in one_line(e)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as e:
        load_model("celeba64")
    assert "model card not found" in one_line(e) and "csa_lib/weights/" in str(e.value)
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "x.pt").write_bytes(b"not weights")
    (weights / "csa_celeba64.json").write_text(json.dumps({"file": "x.pt", "sha256": "0" * 64, "model": {}}))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    with pytest.raises(ValueError) as e:
        load_model("celeba64")
    assert "x.pt is corrupt or was changed" in one_line(e)


@needs_shipped
def test_shipped_model_fills_a_face_and_returns_its_attention():
    from csa_lib.data import ASTRONAUT_FACE_BOX
    from skimage import data as skdata

    model = load_model("celeba64")
    assert model.image_size == 64 and model.preprocessing["resize"] == "center_crop" and "celeba64" in model.description
    face = Image.fromarray(skdata.astronaut()).crop(ASTRONAUT_FACE_BOX)  # 220x220 px
    mask = generate_mask("center", face.height, face.width, model)
    out, details = model(face, mask, return_details=True)
    hole = mask[0].numpy() > 0
    assert out.size == face.size and np.array_equal(np.asarray(out)[~hole], np.asarray(face)[~hole])
    assert not np.array_equal(np.asarray(out)[hole], np.asarray(face)[hole])
    assert details.box == (0, 0, 220, 220) and details.upscale == 220 / 64
    assert details.network_image.shape == (3, 64, 64) and details.coarse.shape == (3, 64, 64)
    assert int(details.attention.count[0]) > 0  # the CSA layer's record: hole positions it generated


# --------------------------------------------------------------------------------------------------
# csa inpaint: limits in --help, the upscale warning, --save-mask
# --------------------------------------------------------------------------------------------------
def test_help_and_quick_start_say_what_the_shipped_model_is():
    from csa_lib.cli import SHIPPED_MODEL_LIMITS, build_parser

    helptext = " ".join(build_parser()._subparsers._group_actions[0].choices["inpaint"].format_help().split())
    assert " ".join(SHIPPED_MODEL_LIMITS.split()) in helptext
    quick = (REPO_ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert " ".join(SHIPPED_MODEL_LIMITS.split()) in " ".join(quick.replace("**", "").replace("`", "").split())
    for fact in ("64-px face model", "upscales it", "only faces", "non-commercial"):
        assert fact in SHIPPED_MODEL_LIMITS


@pytest.fixture
def keep_torch_threads():
    n = torch.get_num_threads()  # `csa` sets a thread count for its process
    yield
    torch.set_num_threads(n)


@needs_shipped
def test_save_mask_and_upscale_warning_of_csa_inpaint(tmp_path, capsys, keep_torch_threads):
    from csa_lib.cli import main

    src = tmp_path / "big.png"
    Image.fromarray(photo(400, 300)).save(src)
    out, saved = tmp_path / "filled.png", tmp_path / "hole.png"
    assert main(["inpaint", str(src), "--mask", "irregular", "--seed", "4", "-o", str(out),
                 "--save-mask", str(saved), "--threads", "1", "-q"]) == 0
    err = capsys.readouterr()
    warned = [line for line in err.err.splitlines() if line.startswith("csa: warning:")]
    assert len(warned) == 1 and "upscaled 4.7x" in warned[0] and str(src) in warned[0], err.err
    assert f"the mask (white = hole): {saved}" in err.out
    mask = generate_mask("irregular", 400, 300, {"image_size": 64, "resize": "center_crop", "crop_top": 0.75}, seed=4)
    assert np.array_equal(np.asarray(Image.open(saved)) > 127, mask[0].numpy() > 0)
    a, b = np.asarray(Image.open(src)), np.asarray(Image.open(out))
    hole = mask[0].numpy() > 0
    assert np.array_equal(a[~hole], b[~hole]) and not np.array_equal(a[hole], b[hole])


@pytest.mark.parametrize("extra, expect", [
    (["--save-mask", "{out}"], "--save-mask {out} is also the output -o"),
    (["--save-mask", "{src}"], "--save-mask {src} is the input image"),
    (["--save-mask", "{tmp}"], "is a folder"),
    (["--save-mask", "{tmp}/hole.xyz"], "unknown image format"),
])
def test_save_mask_refuses_to_overwrite_inputs_or_the_output(tmp_path, capsys, extra, expect):
    from csa_lib.cli import main

    src, out = tmp_path / "p.png", tmp_path / "o.png"
    Image.fromarray(photo()).save(src)
    fmt = {"out": out, "src": src, "tmp": tmp_path}
    assert main(["inpaint", str(src), "--mask", "center", "-o", str(out), "-q",
                 *[a.format(**fmt) for a in extra]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csa: error:") and expect.format(**fmt) in err[0]


@needs_shipped
def test_save_mask_in_folder_mode_writes_one_mask_per_output(tmp_path, capsys, keep_torch_threads):
    from csa_lib.cli import main

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k in range(2):
        Image.fromarray(photo(64, 64, seed=k)).save(src / f"img{k}.png")
    assert main(["inpaint", str(src), "--mask", "center", "-o", str(out), "--save-mask", str(out),
                 "--threads", "1", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img0_mask.png", "img1.png", "img1_mask.png"]
    assert main(["inpaint", str(src), "--mask", "center", "-o", str(tmp_path / "o2"), "--save-mask", str(src),
                 "-q"]) == 2
    assert "is the image folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# make demo: no Python warning lines; the widget without ipycanvas; notebook 09 without ipycanvas
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_prints_plain_sentences_not_python_warnings(tmp_path):
    # No VGG16 weights anywhere (empty torch hub, no shared folder): the demo's expected condition.
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "CSA_SHARED_ROOT": str(tmp_path / "none"),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("CSA_VGG_WEIGHTS", None)
    proc = subprocess.run([sys.executable, "-m", "csa_lib.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--steps", "2", "--threads", "1", "-q"], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "Warning:" not in text and "warnings.warn" not in text and "Traceback" not in text, text
    notes = [line for line in proc.stdout.splitlines() if "no VGG16 weights" in line]
    assert len(notes) == 1 and "`csa weights`" in notes[0]
    assert "RANDOM" not in text  # said once, in the plain sentence
    if SHIPPED:
        assert "on the coffee cup (not a face)" in proc.stdout  # the failure case beside the successes
        assert (tmp_path / "demo" / "shipped_model_face.png").is_file()


def test_widget_without_ipycanvas_says_how_to_get_it(monkeypatch):
    from csa_lib.interactive import NO_WIDGET, PhotoInpainter

    monkeypatch.setitem(sys.modules, "ipycanvas", None)  # import ipycanvas now fails
    app = PhotoInpainter(constant_model(size=16), photos={"p": Image.fromarray(photo())})
    with pytest.raises(ModuleNotFoundError) as e:
        app.widget()
    assert str(e.value) == NO_WIDGET and ".[widgets]" in NO_WIDGET


@pytest.mark.slow
def test_notebook_09_runs_to_the_end_without_ipycanvas(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # A package named ipycanvas whose import fails, first on the kernel's path: as if it were not installed.
    stub = tmp_path / "stub" / "ipycanvas"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ipycanvas'\")\n")
    path = REPO_ROOT / "notebooks" / "09_inpaint_your_own_photo.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")]))
    for key, value in {"CSA_SMOKE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    from csa_lib.interactive import NO_WIDGET

    assert NO_WIDGET in printed  # the widget cell's one sentence; every later cell ran
