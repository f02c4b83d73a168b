"""Faults and bad inputs (issue 12): real SIGKILLs of a training process, torn and empty checkpoints,
a torn log line, a crafted pickle in torchvision's cache, 16-bit and rotated images, the run lock, an
unreadable image inside a training folder, a full disk, and the one-line errors of ``csa``."""
import hashlib
import os
import resource
import signal
import subprocess
import sys
import warnings
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from csa_lib.cli import main
from csa_lib.config import REPO_ROOT, get_preset
from csa_lib.data import InpaintingDataset, load_image
from csa_lib.masks import center_mask
from csa_lib.train import (RunInUseError, RunLock, Trainer, load_checkpoint, load_generator, read_log)
from subprocess_kill import csa, one_error_line

STATE = ("generator", "image_D", "feature_D")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()  # `csa` sets the thread count of its process
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vgg():
    from csa_lib.vgg import VGG16Features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGG16Features("none")


def smoke(out_dir, **overrides):
    settings = {"train.out_dir": str(out_dir), "train.tensorboard": False, "train.steps": 4,
                "train.decay_start": 2, "train.ckpt_every": 2, "train.sample_every": 4, "train.log_every": 1}
    settings.update(overrides)
    return get_preset("smoke", **settings)


def ckpt_step(path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


def same_state(a, b) -> bool:
    """Model and optimiser tensors of two checkpoint dicts are bit-identical."""
    def flat(x):
        if isinstance(x, torch.Tensor):
            return [x]
        if isinstance(x, dict):
            return [t for k in sorted(x, key=str) for t in flat(x[k])]
        if isinstance(x, (list, tuple)):
            return [t for v in x for t in flat(v)]
        return [torch.tensor(float(x))] if isinstance(x, (int, float)) else []
    ta = flat({k: a[k] for k in (*STATE, "optimizers")})
    tb = flat({k: b[k] for k in (*STATE, "optimizers")})
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


# --------------------------------------------------------------------------------------------------
# Real SIGKILLs of `csa train`, then resume: bit-identical weights and identical logged losses
# --------------------------------------------------------------------------------------------------
# ckpt_every=2 is not a multiple of log_every=3: the logged averages must resume exactly too.
RUN = ["--preset", "smoke", "--steps", "5", "--set", "train.decay_start=3", "--set", "train.ckpt_every=2",
       "--set", "train.log_every=3", "--set", "train.sample_every=5", "--set", "train.tensorboard=false",
       "-q", "--threads", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An uninterrupted smoke run (the reference), R in the issue."""
    out = tmp_path_factory.mktemp("reliability") / "full"
    proc = csa("train", "--out", str(out), *RUN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def temp_files(run):
    return sorted(p.name for p in (run / "checkpoints").glob(".*.tmp*"))


@pytest.mark.slow
def test_sigkill_at_every_point_then_resume_is_bit_identical(tmp_path, finished_run):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    train = ["train", "--out", str(run), *RUN]

    # 1. Between checkpoints: after step 4 ran, before its checkpoint (log line 3 is on disk).
    csa(*train, kill_at="step@4")
    assert ckpt_step(ckpts / "last.pt") == 2 and [r["step"] for r in read_log(run / "log.jsonl")] == [3]
    assert "--resume" in one_error_line(csa(*train))  # a plain `train` never starts the run over

    # 2. Inside the save at step 4: the temporary file is written, not renamed. last.pt is untouched.
    csa(*train, "--resume", kill_at="tmp@4")
    assert len(temp_files(run)) == 1 and ckpt_step(ckpts / "last.pt") == 2

    # 3. After last.pt -> prev.pt and before next.pt -> last.pt: no last.pt on disk at all. The orphan
    #    temporary file of (2) was removed when this process started.
    csa(*train, "--resume", kill_at="rotated@4")
    assert temp_files(run) == [] and not (ckpts / "last.pt").exists()
    assert (ckpt_step(ckpts / "next.pt"), ckpt_step(ckpts / "prev.pt")) == (4, 2)
    assert "--resume" in one_error_line(csa(*train))
    assert load_checkpoint(run)["step"] == 4  # readers (eval, inpaint) find next.pt

    # 4. The resume finishes that rotation and goes on from step 4; killed with next.pt in place.
    csa(*train, "--resume", kill_at="next@5")
    assert (ckpt_step(ckpts / "next.pt"), ckpt_step(ckpts / "last.pt"), ckpt_step(ckpts / "prev.pt")) == (5, 4, 2)

    # 5. The last resume finds step 5 complete in next.pt: nothing left to train.
    proc = csa(*train, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "at step 5" in proc.stdout
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "prev.pt"]
    assert (ckpt_step(ckpts / "last.pt"), ckpt_step(ckpts / "prev.pt")) == (5, 4)

    want = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(ckpts / "last.pt", weights_only=True)
    assert same_state(got, want)
    log_want, log_got = read_log(finished_run / "log.jsonl"), read_log(run / "log.jsonl")
    assert [r["step"] for r in log_got] == [r["step"] for r in log_want] == [3, 5]
    for a, b in zip(log_want, log_got):
        assert {k: v for k, v in a.items() if "/" in k} == {k: v for k, v in b.items() if "/" in k}


@pytest.mark.slow
def test_full_disk_during_checkpoint_write_is_one_line(tmp_path):
    # A file-size limit stands in for a full disk: the checkpoint write fails with EFBIG, as it would
    # with ENOSPC. Logs and the sample grid (a few kB) still fit; the checkpoint (13 MB) does not.
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    run = tmp_path / "run"
    proc = csa("train", "--out", str(run), *RUN[:2], "--steps", "1", *RUN[4:], preexec_fn=limit_file_size)
    line = one_error_line(proc)
    assert "next.pt" in line and "disk full" in line
    assert list((run / "checkpoints").iterdir()) == []  # no torn file, no temporary file left


# --------------------------------------------------------------------------------------------------
# Empty and torn checkpoints: fall back to prev.pt, and keep it as the backup after the next save
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_torn_last_falls_back_and_the_backup_survives_the_next_save(tmp_path, vgg, damage):
    Trainer(smoke(tmp_path), vgg=vgg, progress=False).fit()
    last, prev = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "prev.pt"
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])

    with pytest.warns(UserWarning, match="prev.pt"):
        assert load_checkpoint(last)["step"] == 2  # a file named last.pt falls back to its sibling too
    with pytest.warns(UserWarning, match="last.pt"):
        generator, _ = load_generator(tmp_path)  # eval and inpaint load this way
    with pytest.warns(UserWarning, match="prev.pt"):
        resumed = Trainer.resume(tmp_path, vgg=vgg, progress=False)
    assert resumed.step == 2
    resumed.step = 3  # pretend a step ran, then save: the torn last.pt must not become the backup
    with pytest.warns(UserWarning, match="does not load"):
        resumed.save_checkpoint()
    resumed.close()
    assert (ckpt_step(last), ckpt_step(prev)) == (3, 2)
    resumed.step = 4
    resumed.save_checkpoint()
    assert (ckpt_step(last), ckpt_step(prev)) == (4, 3)


def test_cli_eval_of_an_empty_last_pt_is_not_a_traceback(tmp_path, vgg, capsys):
    Trainer(smoke(tmp_path, **{"train.steps": 2}), vgg=vgg, progress=False).fit()
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(b"")
    assert main(["eval", str(last), "--max-images", "2", "-q", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "last.pt is empty (0 bytes)" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# log.jsonl: a torn last line is dropped (and the file rewritten atomically); exact logged averages
# --------------------------------------------------------------------------------------------------
def test_torn_log_line_is_dropped_and_the_run_resumes(tmp_path, vgg):
    Trainer(smoke(tmp_path), vgg=vgg, progress=False).fit()
    log = tmp_path / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 5, "G/total": 0.12')  # what a full disk left behind
    with pytest.warns(UserWarning, match=r"log.jsonl: dropped a torn last line 5"):
        assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4]
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = Trainer.resume(tmp_path, vgg=vgg, progress=False, overrides={"train.steps": 5})
        resumed.fit()
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5]
    assert log.read_text().endswith("}\n") and list(tmp_path.glob(".*.tmp*")) == []

    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON record"):
        read_log(log)


def test_logged_averages_resume_exactly_when_checkpoints_fall_inside_a_log_window(tmp_path, vgg):
    kw = {"train.steps": 5, "train.ckpt_every": 2, "train.log_every": 3}
    full = Trainer(smoke(tmp_path / "full", **kw), vgg=vgg, progress=False)
    full.fit()

    class Killed(Exception):
        pass

    def kill_at_3(trainer, logs):
        if trainer.step == 3:
            raise Killed

    run = Trainer(smoke(tmp_path / "run", **kw), vgg=vgg, progress=False)
    with pytest.raises(Killed):
        run.fit(callback=kill_at_3)
    Trainer.resume(tmp_path / "run", vgg=vgg, progress=False).fit()
    a, b = read_log(tmp_path / "full/log.jsonl"), read_log(tmp_path / "run/log.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 5]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if "/" in k} == {k: v for k, v in rb.items() if "/" in k}


def test_resume_with_a_new_learning_rate_uses_it_from_the_first_step(tmp_path, vgg):
    Trainer(smoke(tmp_path, **{"train.steps": 2}), vgg=vgg, progress=False).fit()
    ov = {"train.steps": 6, "train.lr": 1e-4, "train.decay_start": 4}
    resumed = Trainer.resume(tmp_path, overrides=ov, vgg=vgg, progress=False)
    lrs = []
    resumed.fit(callback=lambda t, logs: lrs.append(logs["lr"]))
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 0.5e-4])  # steps 3..6 on the new schedule


# --------------------------------------------------------------------------------------------------
# The run lock
# --------------------------------------------------------------------------------------------------
def test_a_run_in_use_is_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path, vgg, capsys):
    Trainer(smoke(tmp_path, **{"train.steps": 2}), vgg=vgg, progress=False).fit()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from csa_lib.train import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--preset", "smoke", "--out", str(tmp_path), "--resume", "--steps", "3", "-q",
                     "--threads", "1", "--set", "train.tensorboard=false"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"csa: error: run folder {tmp_path} is in use by another process (pid {holder.pid}); "
                       "wait for it to finish or stop it first")
        with pytest.raises(RunInUseError, match=str(holder.pid)):
            Trainer(smoke(tmp_path, **{"train.steps": 3}), vgg=vgg, progress=False).fit()
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    with RunLock(tmp_path):
        pass
    resumed = Trainer.resume(tmp_path, overrides={"train.steps": 3}, vgg=vgg, progress=False)
    assert resumed.fit()["step"] == 3


# --------------------------------------------------------------------------------------------------
# Images: 16-bit, float, EXIF orientation, truncated, decompression bombs, unreadable in a training set
# --------------------------------------------------------------------------------------------------
def write_png16(path, arr):
    """A 16-bit PNG (grey [H,W] or RGB [H,W,3] uint16) written by hand: PIL cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    grey = np.tile(np.array([0, 257 * 64, 32768, 65535], np.uint16), (4, 1))
    write_png16(tmp_path / "g16.png", grey)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert np.asarray(load_image(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 64, 128, 255]
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    write_png16(tmp_path / "rgb16.png", rgb)
    assert np.asarray(load_image(tmp_path / "rgb16.png"))[0, 0].tolist() == [255, 128, 0]
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(load_image(tmp_path / "f.tif"))[0, 0].tolist() == [128, 128, 128]
    # The training and evaluation loaders read through load_image: grey, not white.
    ds = InpaintingDataset(tmp_path, 4, center_mask(4), files=["g16.png"])
    image, _ = ds[0]
    assert image[0, 0].tolist() == pytest.approx([v / 127.5 - 1 for v in (0, 64, 128, 255)], abs=1e-6)


def test_exif_orientation_is_applied_once(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    shown = load_image(tmp_path / "photo.jpg")
    assert shown.size == (10, 20)  # displayed upright: 10 wide, 20 high
    assert np.asarray(shown)[:5].mean() > 200 and np.asarray(shown)[-5:].mean() < 50  # white on top
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(shown)), np.asarray(shown))  # idempotent
    assert load_image(tmp_path / "photo.jpg", mode="L", what="mask").size == (10, 20)


def test_truncated_and_bomb_images_are_one_line_naming_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"^cannot read mask .*cut\.png: .*truncated") as err:
        load_image(tmp_path / "cut.png", what="mask")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is now over twice the limit
    with pytest.raises(OSError, match=r"cannot read image .*a\.png: .*decompression bomb"):
        load_image(tmp_path / "a.png")


def test_an_unreadable_training_image_is_skipped_with_a_warning(tmp_path, vgg):
    data = tmp_path / "images"
    data.mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 40, 3), 50 * k, np.uint8)).save(data / f"{k}.png")
    (data / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # 5 files, 6 samples: all are reached
    kw = {"data.root": str(data), "data.eval_range": (0, 2), "train.steps": 3, "train.ckpt_every": 1}
    with pytest.warns(UserWarning, match=r"2b\.png.*1 of 5 files skipped"):
        assert Trainer(smoke(tmp_path / "run", **kw), vgg=vgg, progress=False).fit()["step"] == 3

    strict = Trainer(smoke(tmp_path / "strict", **kw, **{"data.skip_bad_images": False}), vgg=vgg,
                     progress=False)
    with pytest.raises(OSError, match=r"cannot read image .*2b\.png"):
        strict.fit()

    # Removing the file changes the list: the resume goes on, saying the order is no longer exact.
    (data / "2b.png").unlink()
    with pytest.warns(UserWarning, match="not exactly"):
        resumed = Trainer.resume(tmp_path / "run", overrides={"train.steps": 4}, vgg=vgg, progress=False)
    assert resumed.fit()["step"] == 4


# --------------------------------------------------------------------------------------------------
# torchvision's VGG cache: a crafted pickle must never run
# --------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_vgg_cache_pickle_does_not_run(tmp_path, monkeypatch, capsys):
    from csa_lib import vgg as vgg_mod

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CSA_VGG_WEIGHTS", raising=False)
    cache = vgg_mod.torchvision_cache_file()
    assert cache.name == "vgg16-397923af.pth" and str(tmp_path) in str(cache)
    cache.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"features.0.weight": Payload(marker)}, cache)

    with pytest.raises(ValueError, match="does not match the 397923af in its name"):
        vgg_mod.load_vgg16("auto")
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--vgg-weights", "auto",
                 "-q", "--threads", "1", "--set", "train.tensorboard=false"]) == 2
    assert "397923af" in capsys.readouterr().err
    assert not marker.exists()

    # Even with a name that matches its hash, the file is loaded with weights_only=True.
    renamed = cache.with_name(f"vgg16-{hashlib.sha256(cache.read_bytes()).hexdigest()[:8]}.pth")
    cache.rename(renamed)
    with pytest.raises(ValueError, match="cannot read VGG16 weights"):
        vgg_mod.read_torchvision_cache(renamed)
    assert not marker.exists()

    # A genuine state dict under its hash name loads.
    features = vgg_mod._build_features()
    good = tmp_path / "good.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, good)
    named = good.with_name(f"vgg16-{hashlib.sha256(good.read_bytes()).hexdigest()[:8]}.pth")
    good.rename(named)
    monkeypatch.setattr(vgg_mod, "torchvision_cache_file", lambda: named)
    weights = vgg_mod.load_vgg16("torchvision")
    assert torch.equal(weights.state_dict["features.0.weight"], features[0].weight)


# --------------------------------------------------------------------------------------------------
# One-line errors for values and arguments (in-process: `main` returns 2 and prints one line)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory, vgg):
    out = tmp_path_factory.mktemp("small") / "run"
    Trainer(smoke(out, **{"train.steps": 2}), vgg=vgg, progress=False).fit()
    return out


def error_of(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csa: error:"), err
    return err[0]


TRAIN = ["train", "--preset", "smoke", "-q", "--threads", "1", "--set", "train.tensorboard=false"]


@pytest.mark.parametrize("argv, expect", [
    (["--set", "train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
    (["--set", "train.steps=-1"], "train.steps must be a positive integer, got -1"),
    (["--set", "train.lr=0"], "train.lr must be a positive number"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_training_values_are_one_line(tmp_path, capsys, argv, expect):
    assert expect in error_of(capsys, *TRAIN, "--out", str(tmp_path / "run"), *argv)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, small_run):
    assert "CUDA is not available" in error_of(capsys, *TRAIN, "--out", str(tmp_path), "--device", "cuda")
    assert "CUDA is not available" in error_of(capsys, "eval", str(small_run), "--device", "cuda")


@pytest.mark.parametrize("setting, expect", [
    ("model.base_channels=16", "the model cannot change on resume (the checkpoint has model.base_channels=8)"),
    ("train.seed=7", "train.seed=7: cannot change on resume (the checkpoint has 0)"),
])
def test_resume_refuses_settings_it_cannot_honour(capsys, small_run, setting, expect):
    before = (small_run / "checkpoints" / "last.pt").read_bytes()
    assert expect in error_of(capsys, *TRAIN, "--out", str(small_run), "--resume", "--set", setting)
    assert (small_run / "checkpoints" / "last.pt").read_bytes() == before


def test_eval_arguments_are_checked(tmp_path, capsys, small_run):
    assert "--max-images must be a positive" in error_of(capsys, "eval", str(small_run), "--max-images", "-5")
    assert "--range '5:2'" in error_of(capsys, "eval", str(small_run), "--range", "5:2")
    assert "unknown device 'tpu'" in error_of(capsys, "eval", str(small_run), "--device", "tpu")
    junk = tmp_path / "inception.pth"
    torch.save({"not": torch.zeros(1)}, junk)
    assert "not usable Inception-v3 weights" in error_of(capsys, "eval", str(small_run), "--fid", str(junk))
    junk.write_bytes(b"\x00garbage")
    assert "inception.pth: not usable Inception-v3 weights" in error_of(capsys, "eval", str(small_run),
                                                                        "--fid", str(junk))


def test_eval_names_an_unreadable_image(tmp_path, capsys, small_run):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "ok.png")
    (folder / "torn.jpg").write_bytes(b"\xff\xd8\xff\xe0 torn")
    line = error_of(capsys, "eval", str(small_run), "--data", str(folder), "-q", "--threads", "1")
    assert "cannot read image" in line and "torn.jpg" in line


# --------------------------------------------------------------------------------------------------
# The CSA layer on a busy machine: one thread per image, the same numbers
# --------------------------------------------------------------------------------------------------
def test_csa_single_image_uses_one_thread_on_a_busy_machine(monkeypatch):
    from csa_lib import _csa_backend, csa
    from csa_lib.masks import feature_mask

    numba = pytest.importorskip("numba")
    if _csa_backend.kernels() is None:
        pytest.skip("numba kernels unavailable")

    torch.set_num_threads(2)
    layer = csa.CoherentSemanticAttention(chain="numba")
    hole = feature_mask(center_mask(64, 24)[None].float())
    x0 = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    results = {}
    for mode in ("1", "0"):  # CSA_SPLIT_IMAGES=1: an idle machine (split over 2 threads); 0: busy
        monkeypatch.setenv("CSA_SPLIT_IMAGES", mode)
        assert _csa_backend.numba_threads(1) == 2  # S, the channel split, does not depend on the load
        assert numba.get_num_threads() == (2 if mode == "1" else 1)
        assert _csa_backend.numba_threads(8) == 1 and numba.get_num_threads() == 2  # a batch fills the threads
        x = x0.clone().requires_grad_(True)
        y = layer(x, hole)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[mode] = (y.detach(), x.grad)
    assert all(torch.equal(a, b) for a, b in zip(results["1"], results["0"]))

    monkeypatch.delenv("CSA_SPLIT_IMAGES")
    monkeypatch.setattr(_csa_backend, "_BUSY", {"t": -1.0, "busy": False})
    monkeypatch.setattr(os, "getloadavg", lambda: (os.cpu_count() + 1.5, 0.0, 0.0))
    assert _csa_backend.cores_busy()
    monkeypatch.setattr(_csa_backend, "_BUSY", {"t": -1.0, "busy": True})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert not _csa_backend.cores_busy()


def test_inpaint_names_the_bad_file_and_warns_on_a_whole_image_hole(tmp_path, capsys, small_run):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(mask)
    ckpt = ["--checkpoint", str(small_run / "checkpoints" / "last.pt"), "--threads", "1", "-o", str(tmp_path / "o.png")]
    (tmp_path / "bad_mask.png").write_bytes(mask.read_bytes()[:30])
    line = error_of(capsys, "inpaint", str(photo), str(tmp_path / "bad_mask.png"), *ckpt)
    assert "cannot read mask" in line and "bad_mask.png" in line
    (tmp_path / "cut.png").write_bytes(photo.read_bytes()[:200])
    line = error_of(capsys, "inpaint", str(tmp_path / "cut.png"), str(mask), *ckpt)
    assert "cannot read image" in line and "cut.png" in line

    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(mask)
    assert main(["inpaint", str(photo), str(mask), *ckpt]) == 0
    assert "covers the whole image" in capsys.readouterr().err
