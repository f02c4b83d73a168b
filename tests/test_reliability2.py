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
# 1. Data loss
# ==================================================================================================
def test_demo_retrain_takes_the_lock_before_deleting_anything(tmp_path, capsys):
    # Before: last.pt, prev.pt and log.jsonl were deleted, then the lock was refused ("in use").
    run = tmp_path / "demo"
    (run / "checkpoints").mkdir(parents=True)
    files = {run / "checkpoints" / "last.pt": b"last", run / "checkpoints" / "prev.pt": b"prev",
             run / "log.jsonl": b'{"step": 1}\n'}
    for path, data in files.items():
        path.write_bytes(data)
    with RunLock(run):  # another process training in this folder
        line = error_of(capsys, "demo", "--out", run, "--retrain", "--steps", "1", "-q", "--threads", "1")
    assert "in use by another process" in line
    assert all(path.read_bytes() == data for path, data in files.items())


def test_inpaint_refuses_to_write_over_its_input_unless_overwrite(tmp_path, capsys):
    # Before: -o equal to the input silently replaced the photo.
    src = write(tmp_path / "photo.png", photo())
    mask = write(tmp_path / "mask.png", hole())
    before = src.read_bytes()
    common = ["--threads", "1", "-q"]
    assert "is the input image" in error_of(capsys, "inpaint", src, mask, "-o", src, *common)
    assert "is the mask" in error_of(capsys, "inpaint", src, mask, "-o", mask, *common)
    same = tmp_path / "sub" / ".." / "photo.png"  # the same file under another name
    (tmp_path / "sub").mkdir()
    assert "is the input image" in error_of(capsys, "inpaint", src, mask, "-o", same, *common)
    assert src.read_bytes() == before
    assert main(["inpaint", str(src), str(mask), "-o", str(src), "--overwrite", *common]) == 0
    after = np.asarray(Image.open(src))
    assert after.shape == (40, 40, 3) and not np.array_equal(after, photo())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "photo.png", "sub"]  # no temporary file


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))


@pytest.mark.slow
def test_inpaint_on_a_full_disk_leaves_the_existing_file_whole(tmp_path):
    # Before: the existing output (or, with -o = input, the photo) was cut to the limit, then an error.
    src = write(tmp_path / "photo.png", photo(120, 120))  # random noise: about 43 kB as PNG
    mask = write(tmp_path / "mask.png", hole(120, 120))
    out = tmp_path / "out.png"
    out.write_bytes(src.read_bytes())
    before = src.read_bytes()
    assert len(before) > 16 << 10
    for target, extra in ((out, []), (src, ["--overwrite"])):
        proc = csa("inpaint", str(src), str(mask), "-o", str(target), "--threads", "1", "-q", *extra,
                   preexec_fn=_limit_file_size)
        line = one_error_line(proc)
        assert f"cannot write {target}" in line and "nothing was replaced" in line
        assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "out.png", "photo.png"]


def test_two_writers_of_one_output_leave_one_readable_image(tmp_path):
    # Before: both wrote into the same file at once (open, truncate, write) and left an unreadable PNG.
    out = tmp_path / "same.png"
    images = [torch.rand(3, 400, 400, generator=torch.Generator().manual_seed(k)) * 2 - 1 for k in range(2)]
    expected = [np.asarray(Image.open(save_image(x, tmp_path / f"ref{k}.png"))) for k, x in enumerate(images)]
    for _ in range(4):
        barrier = threading.Barrier(2)

        def writer(x):
            barrier.wait()
            save_image(x, out)

        threads = [threading.Thread(target=writer, args=(x,)) for x in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = np.asarray(Image.open(out))
        assert any(np.array_equal(got, e) for e in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref0.png", "ref1.png", "same.png"]


def test_folder_mode_refuses_an_image_or_mask_folder_as_output(tmp_path, capsys):
    # Before: DIR -o DIR replaced the masks by RGB outputs; --masks M -o M overwrote a mask.
    src, masks = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    write(src / "face.png", photo())
    write(src / "face_mask1.png", hole())
    write(masks / "face.png", hole())
    before = {p: p.read_bytes() for p in [*src.iterdir(), *masks.iterdir()]}
    assert "-o" in error_of(capsys, "inpaint", src, "-o", src, "-q")
    assert "is the image folder" in error_of(capsys, "inpaint", src, "-o", tmp_path / "in" / ".", "-q")
    assert "is the mask folder" in error_of(capsys, "inpaint", src, "--masks", masks, "-o", masks, "-q")
    assert {p: p.read_bytes() for p in before} == before and len(list(src.iterdir())) == 2


@pytest.mark.slow
def test_folder_mode_exact_mask_names_unique_outputs_and_says_what_it_skipped(tmp_path, capsys):
    # Before: a.jpg and a.png gave one output ("wrote 2 images", one file); anna_masked.png was taken as
    # the mask of anna.png; gas_mask_portrait.jpg was skipped silently.
    src = tmp_path / "in"
    src.mkdir()
    m = hole()
    write(src / "a_mask.png", m)
    Image.fromarray(photo(seed=1).astype(np.uint8)).save(src / "a.jpg", quality=95)
    write(src / "a.png", photo(seed=2))
    write(src / "anna.png", photo(seed=3))
    write(src / "anna_mask.png", m)
    anna_masked = np.zeros((40, 40), np.uint8)
    anna_masked[:8] = 255
    write(src / "anna_masked.png", photo(seed=4))  # a photo, not a mask
    write(src / "anna_masked_mask.png", anna_masked)
    Image.fromarray(photo(seed=5).astype(np.uint8)).save(src / "gas_mask_portrait.jpg", quality=95)
    write(src / "gas_mask_portrait_mask.png", m)
    write(src / "orphan_mask.png", m)  # named like a mask, no orphan.* photo
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["inpaint", str(src), "-o", str(out), "-q", "--threads", "1"]) == 0
    std = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg.png", "a_png.png", "anna.png", "anna_masked.png",
                                                      "gas_mask_portrait.png"]
    assert "wrote 5 images" in std.out
    assert "orphan_mask.png" in std.err and "notes.txt" in std.err and "skipped" in std.err
    # anna.png was filled inside anna_mask.png's hole, not in anna_masked.png's top rows
    a, b = np.asarray(Image.open(src / "anna.png")), np.asarray(Image.open(out / "anna.png"))
    assert np.array_equal(a[m == 0], b[m == 0]) and not np.array_equal(a[m > 0], b[m > 0])
    # A photo whose name merely contains "_mask" needs its own mask.
    (src / "anna_masked_mask.png").unlink()
    assert "anna_masked.png" in error_of(capsys, "inpaint", src, "-o", tmp_path / "out2", "-q")
    # The rule is stated in --help.
    helptext = build_parser()._subparsers._group_actions[0].choices["inpaint"].format_help()
    assert "IMAGE_maskN" in " ".join(helptext.split()) and "skipped are listed" in " ".join(helptext.split())


def test_training_start_deletes_only_its_own_temporary_files(tmp_path):
    # Before: every ".*.tmp*" file was an "orphan", a user's .draft.tmpl included.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    mine = [run / "checkpoints" / ".next.pt.tmp4242", run / ".log.jsonl.tmp77"]
    theirs = [run / ".draft.tmpl", run / ".notes.tmp", run / "checkpoints" / ".keep.tmp1x"]
    for p in mine + theirs:
        p.write_text("x")
    with pytest.warns(UserWarning, match="removed 2 temporary file"):
        assert sorted(remove_orphan_temps(run)) == sorted(mine)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in mine)


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
    google_colab = types.ModuleType("google.colab")
    google_colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: None)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
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


# ==================================================================================================
# 3. Silent wrong results
# ==================================================================================================
TRAIN = ["train", "--preset", "smoke", "-q", "--threads", "1", "--set", "train.tensorboard=false"]


def test_resume_refuses_another_image_size_and_fewer_steps(capsys, small_run):
    # Before: --set data.image_size=64 trained a 32-px run on 64-px data; --steps 1 at step 2 "resumed".
    before = (small_run / "checkpoints" / "last.pt").read_bytes()
    line = error_of(capsys, *TRAIN, "--out", small_run, "--resume", "--set", "data.image_size=64")
    assert "data.image_size=64: cannot change on resume (the checkpoint has 32)" in line
    line = error_of(capsys, *TRAIN, "--out", small_run, "--resume", "--steps", "1")
    assert "train.steps=1 is below the checkpoint's step 2" in line
    assert (small_run / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_resume_on_another_data_folder_says_so_in_one_line(tmp_path, capsys, small_run):
    # Before: --resume --data OTHER said nothing.
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    data = tmp_path / "other"
    data.mkdir()
    for k in range(3):
        write(data / f"{k}.png", photo(seed=k))
    assert main([*TRAIN, "--out", str(run), "--resume", "--steps", "3", "--data", str(data)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "resuming on other data" in line]
    assert len(warned) == 1 and warned[0].startswith("csa: warning:") and str(data) in warned[0]
    assert load_checkpoint(run)["step"] == 3


def test_checkpoint_with_a_nan_weight_is_refused(tmp_path, capsys):
    # Before: an all-black output (known pixels too), status 0.
    ckpt = fake_checkpoint(tmp_path / "nan.pt", nan=True)
    src = write(tmp_path / "p.png", photo())
    line = error_of(capsys, "inpaint", src, "--mask", "center", "--checkpoint", ckpt, "-o", tmp_path / "o.png",
                    "--threads", "1", "-q")
    assert "non-finite weights" in line and "nan.pt" in line
    assert not (tmp_path / "o.png").exists()


class MaskSet(torch.utils.data.Dataset):
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1, self.masks[i]


def test_eval_does_not_score_images_without_a_hole(tmp_path, capsys, small_run):
    # Before: an empty mask's composite is the input: PSNR inf, and the "all" row's mean was inf.
    from csa_lib.metrics import evaluate, results_table

    holed = torch.zeros(1, 16, 16)
    holed[:, 4:12, 4:12] = 1
    grey = lambda image, mask: torch.zeros_like(image)  # noqa: E731
    with pytest.warns(UserWarning, match="1 of 3 images have an empty mask"):
        res = evaluate(grey, MaskSet([holed, torch.zeros(1, 16, 16), holed]), batch_size=2, progress=False)
    assert res.n == 2 and "inf" not in results_table(res)
    # The command: every mask empty is one line, not a table of inf.
    data, masks = tmp_path / "images", tmp_path / "masks"
    data.mkdir()
    masks.mkdir()
    for k in range(3):
        write(data / f"{k}.png", photo(seed=k))
        write(masks / f"{k}.png", np.zeros((32, 32), np.uint8))
    line = error_of(capsys, "eval", small_run, "--data", data, "--masks", masks, "-q", "--threads", "1")
    assert "all 3 masks are empty" in line


@pytest.fixture(scope="module")
def G32():
    return CSAInpainter(ModelConfig(image_size=32, base_channels=4, attention="identity")).eval()


def _pair(b=2, s=32):
    image = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(b, 1, s, s)
    mask[..., 8:20, 8:20] = 1
    return image, mask


@pytest.mark.parametrize("case, expect", [
    ("0..255", "look like 0..255 pixel values"),
    ("uint8", "must be a float tensor"),
    ("mask 0..255", "a 0..255 mask"),
    ("mask 3 channels", "mask must be [B,1,H,W] = [2,1,32,32]"),
    ("mask other size", "mask must be [B,1,H,W]"),
    ("not square", "not square"),
    ("not a multiple of 8", "not a multiple of 8"),
    ("other size", "this model takes 32x32 images"),
    ("float64", "pass image.to(torch.float32)"),
    ("nan", "expected [-1, 1]"),
    ("grey", "must be [B,3,H,W]"),
])
def test_forward_refuses_inputs_it_cannot_use_with_one_sentence(G32, case, expect):
    # Before: 0..255 images ran (outputs up to 217); wrong masks gave raw torch errors.
    image, mask = _pair()
    bad = {"0..255": lambda: ((image + 1) * 127.5, mask), "uint8": lambda: (((image + 1) * 127.5).byte(), mask),
           "mask 0..255": lambda: (image, mask * 255), "mask 3 channels": lambda: (image, mask.expand(2, 3, 32, 32)),
           "mask other size": lambda: (image, mask[..., :16, :16]), "not square": lambda: (image[..., :24], mask),
           "not a multiple of 8": lambda: _pair(s=36), "other size": lambda: _pair(s=64),
           "float64": lambda: (image.double(), mask), "nan": lambda: (image.clone().fill_(float("nan")), mask),
           "grey": lambda: (image[:, :1], mask)}[case]()
    with pytest.raises(ValueError) as e:
        G32(*bad)
    assert expect in str(e.value) and len(str(e.value).splitlines()) == 1


def test_forward_takes_valid_inputs_within_the_tolerance_and_warns_on_0_to_1(G32):
    image, mask = _pair()
    image[0, 0, 0, 0], image[0, 0, 0, 1] = 1.0005, -1.0005  # rounding, not a wrong scale
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert G32(image, mask.bool()).refined.shape == (2, 3, 32, 32)
    with pytest.warns(UserWarning, match="pass image \\* 2 - 1"):
        G32((image.clamp(-1, 1) + 1) / 2, mask)


def test_an_unreadable_image_in_the_sample_batch_is_skipped(tmp_path, vgg):
    # Before: the fixed sample batch (read without skipping) stopped training at an unreadable image.
    data = tmp_path / "images"
    data.mkdir()
    (data / "0_torn.png").write_bytes(b"\x89PNG\r\n\x1a\n torn")
    for k in range(1, 5):
        write(data / f"{k}.png", photo(seed=k))
    trainer = Trainer(smoke(tmp_path / "run", **{"data.root": str(data), "train.steps": 1,
                                                 "train.sample_every": 1}), vgg=vgg, progress=False)
    with pytest.warns(UserWarning, match="0_torn.png"):
        assert trainer.fit()["step"] == 1
    with pytest.warns(UserWarning, match="sample grids: skipping unreadable image"):
        assert trainer.fixed_batch()[0].shape[0] == 4  # the four readable images


def test_warnings_for_masks_without_a_hole(tmp_path, capsys):
    # Before: an empty mask said "0% filled" and nothing else; red strokes on black (grey 76, known) the
    # same; an all-black training mask folder trained on nothing to fill, silently.
    from csa_lib.cli import _warn_if_masks_empty
    from csa_lib.config import DataConfig

    src = write(tmp_path / "p.png", photo())
    black = write(tmp_path / "black.png", np.zeros((40, 40), np.uint8))
    red = np.zeros((40, 40, 3), np.uint8)
    red[10:30, 10:30, 0] = 255
    red = write(tmp_path / "red.png", red)
    for mask, expect in ((black, "has no hole"), (red, "drawn at a grey value <= 127")):
        assert main(["inpaint", str(src), str(mask), "-o", str(tmp_path / "o.png"), "-q", "--threads", "1"]) == 0
        err = capsys.readouterr().err
        assert expect in err and err.startswith("csa: warning:")
    folder = tmp_path / "masks"
    folder.mkdir()
    for k in range(3):
        write(folder / f"{k}.png", np.zeros((32, 32), np.uint8))
    _warn_if_masks_empty(DataConfig(image_size=32, masks="folder", mask_dir=str(folder)))
    assert "all 3 masks checked" in capsys.readouterr().err
    write(folder / "3.png", hole(32, 32))
    _warn_if_masks_empty(DataConfig(image_size=32, masks="folder", mask_dir=str(folder)))
    assert capsys.readouterr().err == ""


# ==================================================================================================
# 4. One line instead of a traceback
# ==================================================================================================
@pytest.mark.parametrize("setting, expect", [
    ("model.base_channels=0", "model.base_channels must be an integer in [1, 512]"),
    ("model.base_channels=100000", "model.base_channels must be an integer in [1, 512]"),
    ("data.image_size=30", "data.image_size=30 differs from model.image_size=32"),
])
def test_bad_model_settings_are_one_line(tmp_path, capsys, setting, expect):
    assert expect in error_of(capsys, *TRAIN, "--out", tmp_path / "run", "--set", setting)


def test_checkpoint_asking_for_a_huge_model_is_one_line(tmp_path, capsys):
    # Before: base_channels=100000 tried to allocate 1.28 TB.
    ckpt = fake_checkpoint(tmp_path / "huge.pt", base_channels=100_000)
    src = write(tmp_path / "p.png", photo())
    line = error_of(capsys, "inpaint", src, "--mask", "center", "--checkpoint", ckpt, "-o", tmp_path / "o.png",
                    "-q", "--threads", "1")
    assert "huge.pt" in line and "model.base_channels must be an integer in [1, 512]" in line


def test_out_of_memory_is_one_line_naming_the_image(tmp_path, capsys, monkeypatch):
    # Before: "RuntimeError: can't allocate memory" as a traceback (a 12000x12000 JPEG under a limit).
    # The allocation failure is simulated: a real one needs minutes and a memory limit torch survives.
    import csa_lib.inference as inference

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 1728000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(inference, "inpaint", no_memory)
    src = write(tmp_path / "big.png", photo(48, 64))
    line = error_of(capsys, "inpaint", src, "--mask", "center", "-o", tmp_path / "o.png", "-q", "--threads", "1")
    assert "not enough memory to inpaint" in line and "big.png (64x48 px)" in line


def test_tiny_image_is_one_line(tmp_path, capsys):
    # Before: "hole_size must be an int in [1, 1]" without saying that the image is too small.
    src = write(tmp_path / "dot.png", np.zeros((1, 1, 3)))
    line = error_of(capsys, "inpaint", src, "--mask", "center", "-o", tmp_path / "o.png", "-q", "--threads", "1")
    assert "dot.png is 1x1 px: too small to inpaint" in line


class Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_torch_load_advice_to_drop_weights_only_is_not_passed_on(tmp_path, capsys, small_run):
    # Before: "Weights only load failed. ... Re-running `torch.load` with `weights_only` set to `False`
    # will likely succeed ..." was the message: advice to run the file's code.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"generator": Payload(marker), "preset": {}, "step": 1}, evil)
    src = write(tmp_path / "p.png", photo())
    lines = [error_of(capsys, "inpaint", src, "--mask", "center", "--checkpoint", evil, "-o", tmp_path / "o.png",
                      "-q", "--threads", "1"),
             error_of(capsys, "eval", evil, "-q", "--threads", "1")]
    with pytest.raises(ValueError) as e:
        load_checkpoint(evil)
    for line in lines + [str(e.value)]:
        assert "evil.pt" in line and "never unpickled" in line and "posix.mkdir" in line
        assert "False" not in line and "Re-running" not in line and "weights_only` set" not in line
    assert not marker.exists()


# ---- §5: the layer on a busy machine ----------------------------------------------------------------
def test_the_layer_runs_its_torch_ops_on_one_thread_when_a_small_batch_meets_busy_cores(monkeypatch):
    """A two-thread matmul inside the layer waits for a parked thread on busy cores (a time slice for a
    2 ms layer): with B = 1 and the cores taken, the layer's torch ops run on one thread, forward and
    backward, and the caller's thread count is restored; quiet machine or a full batch: untouched."""
    pytest.importorskip("numba")
    from csa_lib import _csa_backend
    from csa_lib.csa import CoherentSemanticAttention
    from csa_lib.masks import center_mask, feature_mask

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        real_bmm, real_empty_like = torch.bmm, torch.empty_like
        monkeypatch.setattr(torch, "bmm", lambda *a, **k: seen.append(("fwd", torch.get_num_threads()))
                            or real_bmm(*a, **k))
        layer = CoherentSemanticAttention("official", chain="numba")
        hole = feature_mask(center_mask(64, 24)[None].float())
        for mode, batch, want in (("0", 1, 1), ("1", 1, 2), ("0", 2, 2)):
            monkeypatch.setenv("CSA_SPLIT_IMAGES", mode)  # "0": the cores are busy
            seen.clear()
            x = torch.randn(batch, 16, 8, 8, requires_grad=True)
            monkeypatch.setattr(torch, "empty_like", lambda *a, **k: seen.append(("any", torch.get_num_threads()))
                                or real_empty_like(*a, **k))
            y = layer(x, hole.expand(batch, -1, -1, -1))
            y.backward(torch.ones_like(y))
            monkeypatch.setattr(torch, "empty_like", real_empty_like)
            assert seen and all(n == want for _, n in seen), (mode, batch, seen)
            assert torch.get_num_threads() == 2  # restored after forward and backward
        monkeypatch.setenv("CSA_SPLIT_IMAGES", "0")
        with pytest.raises(KeyError):  # an error inside still gives the caller its threads back
            with _csa_backend.torch_threads(1):
                assert torch.get_num_threads() == 1
                raise KeyError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
