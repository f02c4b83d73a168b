"""`csa inpaint` for real use: thresholded and generated masks, EXIF, the face model's centre crop pasted
back at the input's size, folder mode, the shipped model (a temporary one exported from a smoke run),
and `csa --version`."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import csa_lib.pretrained as pretrained
from csa_lib.cli import main
from csa_lib.inference import crop_box, generate_mask, inpaint_tensor, read_image, read_image_and_mask
from csa_lib.config import REPO_ROOT


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()  # `csa` sets a thread count for its process; give the worker its own back
    yield
    torch.set_num_threads(n)


def write(path, array, **save):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **save)
    return path


def photo(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A 1-step smoke run trained with the face model's pre-processing (centre crop, crop_top 0.75)."""
    run = tmp_path_factory.mktemp("run")
    n = torch.get_num_threads()
    assert main(["train", "--preset", "smoke", "--out", str(run), "--steps", "1", "--vgg-weights", "none",
                 "--set", "train.tensorboard=false", "--set", "data.resize=center_crop",
                 "--set", "data.crop_top=0.75", "-q", "--threads", "1"]) == 0
    torch.set_num_threads(n)
    return run


@pytest.fixture
def shipped(smoke_run, tmp_path, monkeypatch):
    """A temporary shipped model in a weights folder that `csa_lib.pretrained` is pointed at."""
    weights = tmp_path / "weights"
    weights.mkdir()
    card = pretrained.export_generator(smoke_run / "checkpoints" / "last.pt", weights / "csa_celeba64.pt",
                                       {"licence": "test"})
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    return card


class ConstantGenerator(torch.nn.Module):
    """Stands in for a CSAInpainter: records its inputs, outputs a constant grey (0.5 in [-1, 1])."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, m):
        self.seen.append((x.clone(), m.clone()))
        return SimpleNamespace(refined=torch.full_like(x, 0.5))


# --------------------------------------------------------------------------------------------------
# masks and images
# --------------------------------------------------------------------------------------------------
def test_masks_are_thresholded_not_rejected(tmp_path):
    image = write(tmp_path / "p.png", photo(30, 40))
    grey = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))  # an anti-aliased ramp, 40 grey levels
    _, mask = read_image_and_mask(image, write(tmp_path / "ramp.png", grey))
    assert torch.equal(mask[0], torch.from_numpy(grey > 127).float())
    # A JPEG mask: compression smears the edge into many grey levels; the threshold recovers the square.
    square = np.zeros((30, 40), np.uint8)
    square[8:20, 10:26] = 255
    _, mask = read_image_and_mask(image, write(tmp_path / "m.jpg", square, quality=70))
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m.jpg")))) > 2
    assert (mask[0].numpy() != (square > 127)).mean() < 0.01
    # Values {0, 1} keep meaning 1 = hole.
    _, mask = read_image_and_mask(image, write(tmp_path / "m01.png", (square > 0).astype(np.uint8)))
    assert torch.equal(mask[0], torch.from_numpy(square > 0).float())


def test_mask_of_same_aspect_is_resized_other_sizes_fail(tmp_path):
    image = write(tmp_path / "p.png", photo(30, 40))
    half = np.zeros((15, 20), np.uint8)
    half[:, 10:] = 255
    _, mask = read_image_and_mask(image, write(tmp_path / "half.png", half))
    assert mask.shape == (1, 30, 40) and mask[0, :, 20:].all() and not mask[0, :, :20].any()
    with pytest.raises(ValueError, match="size mismatch"):
        read_image_and_mask(image, write(tmp_path / "sq.png", np.zeros((20, 20), np.uint8)))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(photo(20, 30).astype(np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone photo taken in portrait
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "phone.jpg").size == (20, 30)  # shown upright: 20 wide, 30 high


def test_generated_masks_lie_in_the_crop_the_model_sees():
    pre = {"image_size": 64, "resize": "center_crop", "crop_top": 0.75}
    top, left, h, w = crop_box(100, 60, pre)
    assert (top, left, h, w) == (30, 0, 60, 60)  # 40 spare rows, 3/4 of them above the square
    assert crop_box(100, 60, {"image_size": 64, "resize": "square"}) == (0, 0, 100, 60)
    for kind in ("center", "irregular"):
        m = generate_mask(kind, 100, 60, pre, seed=1)
        assert m.shape == (1, 100, 60) and m.sum() > 0
        assert m.sum() == m[:, top:top + h, left:left + w].sum()
    assert torch.equal(generate_mask("irregular", 100, 60, pre, seed=3),
                       generate_mask("irregular", 100, 60, pre, seed=3))
    assert not torch.equal(generate_mask("irregular", 100, 60, pre, seed=3),
                           generate_mask("irregular", 100, 60, pre, seed=4))


# --------------------------------------------------------------------------------------------------
# inference.inpaint_tensor(): crop, resize, paste back
# --------------------------------------------------------------------------------------------------
def test_inpaint_centre_crop_pastes_back_and_keeps_known_pixels():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 90, 120, generator=g) * 2 - 1
    mask = torch.zeros(1, 90, 120)
    mask[:, 40:41, 30:90] = 1  # a 1-pixel stroke: must survive the downscale to 32 px
    gen = ConstantGenerator()
    pre = {"image_size": 32, "resize": "center_crop", "crop_top": 0.5}
    out = inpaint_tensor(gen, image, mask, pre)
    x, m = gen.seen[0]
    assert x.shape == (1, 3, 32, 32) and m.shape == (1, 1, 32, 32)
    assert m.sum() > 0  # the thin stroke is still a hole for the network
    assert out.shape == image.shape
    assert torch.equal(out[:, mask[0] == 0], image[:, mask[0] == 0])  # known pixels bit-exact
    assert torch.allclose(out[:, mask[0] == 1], torch.tensor(0.5))    # hole pixels from the network
    # The network saw the square centre crop (columns 15..105), not the whole stretched image.
    import torch.nn.functional as F
    crop = F.interpolate(image[None, :, :, 15:105], size=(32, 32), mode="bilinear", antialias=True,
                         align_corners=False)
    assert torch.allclose(x, crop.clamp(-1, 1))
    outside = torch.zeros(1, 90, 120)
    outside[:, :, :5] = 1
    with pytest.raises(ValueError, match="outside"):
        inpaint_tensor(gen, image, outside, pre)


def test_inpaint_square_policy_and_int_size_stretch_the_whole_image():
    image = torch.rand(3, 20, 50) * 2 - 1
    mask = torch.zeros(1, 20, 50)
    mask[:, 5:10, 40:48] = 1
    gen = ConstantGenerator()
    out = inpaint_tensor(gen, image, mask, 16)
    assert gen.seen[0][0].shape == (1, 3, 16, 16)
    assert torch.equal(out[:, mask[0] == 0], image[:, mask[0] == 0])


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_model_is_the_default_and_output_keeps_the_input_size(shipped, tmp_path, capsys):
    src = write(tmp_path / "face.png", photo(70, 50))
    out = tmp_path / "filled.png"
    assert main(["inpaint", str(src), "--mask", "center", "-o", str(out), "--threads", "1"]) == 0
    assert "shipped model celeba64" in capsys.readouterr().out
    got, before = np.asarray(Image.open(out)), np.asarray(Image.open(src))
    assert got.shape == before.shape
    hole = generate_mask("center", 70, 50, shipped["preprocessing"])[0].numpy() > 0
    assert np.array_equal(got[~hole], before[~hole])
    assert not np.array_equal(got[hole], before[hole])
    # The same with a drawn mask file and with a checkpoint instead of the shipped model.
    m = write(tmp_path / "m.png", hole.astype(np.uint8) * 255)
    assert main(["inpaint", str(src), str(m), "-o", str(tmp_path / "b.png"), "--threads", "1"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), got)
    # --border-blend changes only the hole's edge: the known pixels and the hole's centre stay as they were.
    assert main(["inpaint", str(src), str(m), "-o", str(tmp_path / "c.png"), "--threads", "1", "--border-blend"]) == 0
    blended = np.asarray(Image.open(tmp_path / "c.png"))
    ys, xs = np.nonzero(hole)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    assert np.array_equal(blended[~hole], before[~hole])
    assert np.array_equal(blended[cy - 3:cy + 4, cx - 3:cx + 4], got[cy - 3:cy + 4, cx - 3:cx + 4])
    assert not np.array_equal(blended[hole], got[hole])


@pytest.mark.slow
def test_folder_mode_lama_layout_and_masks_folder(shipped, tmp_path, capsys):
    src, masks = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    for k, (h, w) in enumerate([(40, 40), (60, 44), (40, 64)]):
        write(src / f"img{k}.png", photo(h, w, seed=k))
        m = np.zeros((h, w), np.uint8)
        m[h // 2 - 4:h // 2 + 4, w // 2 - 6:w // 2 + 6] = 255
        write(src / f"img{k}_mask.png", m)
        write(masks / f"img{k}.png", m)
    for extra in ([], ["--masks", str(masks)]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["inpaint", str(src), "-o", str(out), "--threads", "1", "-q"] + extra) == 0
        assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
        for k in range(3):
            a, b = np.asarray(Image.open(src / f"img{k}.png")), np.asarray(Image.open(out / f"img{k}.png"))
            m = np.asarray(Image.open(src / f"img{k}_mask.png")) > 127
            assert a.shape == b.shape and np.array_equal(a[~m], b[~m]) and not np.array_equal(a[m], b[m])
    (src / "img1_mask.png").unlink()
    assert main(["inpaint", str(src), "-o", str(tmp_path / "x"), "--threads", "1", "-q"]) == 2
    assert "no mask for 1 image(s)" in capsys.readouterr().err
    # Generated masks need no mask files.
    assert main(["inpaint", str(src), "--mask", "irregular", "--seed", "5", "-o", str(tmp_path / "gen"),
                 "--threads", "1", "-q"]) == 0
    assert len(list((tmp_path / "gen").iterdir())) == 3


@pytest.mark.slow
def test_old_form_with_checkpoint_first_still_works(smoke_run, tmp_path):
    src = write(tmp_path / "p.png", photo(40, 40))
    m = np.zeros((40, 40), np.uint8)
    m[10:20, 10:30] = 255
    mask = write(tmp_path / "m.png", m)
    ckpt = smoke_run / "checkpoints" / "last.pt"
    for argv in (["inpaint", str(ckpt), str(src), str(mask)], ["inpaint", str(src), str(mask), "--checkpoint", str(ckpt)]):
        out = tmp_path / "out.png"
        assert main(argv + ["-o", str(out), "--threads", "1"]) == 0
        a, b = np.asarray(Image.open(src)), np.asarray(Image.open(out))
        assert np.array_equal(a[m == 0], b[m == 0]) and not np.array_equal(a[m > 0], b[m > 0])


@pytest.mark.parametrize("argv, expect", [
    (["{img}", "-o", "{tmp}/o.png"], "give a mask"),
    (["{img}", "{img}", "--mask", "center", "-o", "{tmp}/o.png"], "give a mask"),
    (["{img}", "--mask", "center", "--masks", "{tmp}", "-o", "{tmp}/o.png"], "not both"),
    (["{tmp}/absent.png", "--mask", "center", "-o", "{tmp}/o.png"], "absent.png"),
    (["{img}", "--mask", "center", "-o", "{tmp}/o.png", "--checkpoint", "{tmp}/no.pt"], "no.pt"),
    (["{img}", "--mask", "center", "-o", "{tmp}/o.png"], "--checkpoint"),  # no shipped model here
])
def test_inpaint_errors_are_one_line(tmp_path, argv, expect):
    # A fresh process (no traceback may leak), pointed at an empty weights folder.
    img = write(tmp_path / "p.png", photo(20, 20))
    argv = [a.format(img=img, tmp=tmp_path) for a in argv]
    err = subprocess.run([sys.executable, "-c", "import sys, csa_lib.pretrained as p, csa_lib.cli as c; "
                          f"p.WEIGHTS_DIR = p.Path({str(tmp_path / 'empty')!r}); sys.exit(c.main(sys.argv[1:]))",
                          "inpaint", *argv], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert err.returncode == 2, err.stderr
    lines = err.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csa: error:") and expect in lines[0], err.stderr


def test_version_is_instant_and_names_torch():
    proc = subprocess.run([sys.executable, "-m", "csa_lib.cli", "--version"], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=60)
    from csa_lib import __version__

    assert proc.returncode == 0 and proc.stdout.startswith(f"csa {__version__} (torch ")
    assert torch.__version__.split("+")[0] in proc.stdout


def test_real_shipped_model_inpaints_a_photo(tmp_path):
    if not (pretrained.WEIGHTS_DIR / "csa_celeba64.json").is_file():
        pytest.skip("the shipped model weights/csa_celeba64.json is not here yet")
    from csa_lib.data import embedded_photos

    src = tmp_path / "photo.png"
    embedded_photos()[0].save(src)
    out = tmp_path / "filled.png"
    assert main(["inpaint", str(src), "--mask", "center", "-o", str(out), "--threads", "1"]) == 0
    a, b = np.asarray(Image.open(src).convert("RGB")), np.asarray(Image.open(out))
    hole = generate_mask("center", a.shape[0], a.shape[1],
                         pretrained.read_card()["preprocessing"])[0].numpy() > 0
    assert a.shape == b.shape and np.array_equal(a[~hole], b[~hole]) and not np.array_equal(a[hole], b[hole])


# --------------------------------------------------------------------------------------------------
# csa weights, and the notes at the end of a run
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache in a temporary folder, and no real download: each test says what happens."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_weights_offline_is_one_line(hub, monkeypatch, capsys):
    import urllib.error

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["weights", "vgg16", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download vgg16" in err[0] and "by hand" in err[0]
    assert main(["weights", "resnet"]) == 2
    assert "unknown weights resnet" in capsys.readouterr().err


def test_weights_checks_the_hash_of_files_in_the_cache(hub, capsys):
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"not the weights")
    assert main(["weights", "vgg16", "-q"]) == 2
    assert "does not match the 397923af" in capsys.readouterr().err


def test_weights_fetches_into_torchvision_cache(hub, monkeypatch, capsys):
    import csa_lib.cli as cli

    monkeypatch.setattr(cli, "weight_urls", lambda: {"vgg16": "https://example.invalid/vgg16.pth",
                                                     "inception_v3": "https://example.invalid/inc.pth"})
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        torch.save({"w": torch.ones(2)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert main(["weights", "-q"]) == 0
    assert sorted(p.name for p in hub.iterdir()) == ["inc.pth", "vgg16.pth"] and len(fetched) == 2
    assert main(["weights", "-q"]) == 0 and len(fetched) == 2  # already there: checked, not fetched again
    assert "vgg16.pth" in capsys.readouterr().out


def test_random_vgg_fallback_is_repeated_in_the_summary():
    from csa_lib.cli import _random_vgg_note

    def trainer(source):
        return SimpleNamespace(criterion=SimpleNamespace(vgg=SimpleNamespace(source=source)))

    assert "WARNING" in _random_vgg_note(trainer("random (spec 'auto' found no weights)"))
    assert _random_vgg_note(trainer("torchvision cache /x/vgg16-397923af.pth")) == ""
    assert _random_vgg_note(trainer("random (spec 'none')")) == ""  # asked for: warned at the start only


def test_demo_stopped_by_its_budget_says_run_again_to_continue(tmp_path, monkeypatch, capsys):
    import csa_lib.cli as cli
    import csa_lib.train as train

    monkeypatch.setattr(train, "Trainer", lambda preset, progress=True: SimpleNamespace(preset=preset))
    monkeypatch.setattr(cli, "_fit", lambda trainer: {"stopped": "time_budget", "step": 50})
    monkeypatch.setattr(cli, "demo_figures", lambda out, device="cpu": {})
    if hasattr(cli, "shipped_model_demo"):
        monkeypatch.setattr(cli, "shipped_model_demo", lambda out: {})
    assert main(["demo", "--out", str(tmp_path / "demo"), "--threads", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "step 50/240" in out and "again to continue" in out
