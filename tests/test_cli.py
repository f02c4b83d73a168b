"""The `csa` command end to end on the smoke preset, and its one-line errors."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from csa_lib.cli import main, parse_value
from csa_lib.inference import read_image_and_mask
from csa_lib.config import REPO_ROOT


@pytest.fixture(autouse=True)
def keep_torch_threads():
    # `csa` picks a CPU thread count for its process; give the test worker its own setting back.
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    image = write_png(tmp_path / "photo.png", rng.integers(0, 256, (30, 40, 3)))  # 40 wide, 30 high
    mask = np.zeros((30, 40), np.uint8)
    mask[8:20, 10:25] = 255
    return image, write_png(tmp_path / "mask.png", mask)


@pytest.mark.slow
def test_train_eval_inpaint_end_to_end(tmp_path, image_and_mask, capsys):
    run = tmp_path / "run"
    train = ["train", "--preset", "smoke", "--out", str(run), "--steps", "2", "--vgg-weights", "none",
             "--set", "train.tensorboard=false", "--set", "train.sample_every=2", "-q", "--threads", "1"]
    assert main(train) == 0
    ckpt = run / "checkpoints" / "last.pt"
    assert ckpt.is_file() and (run / "log.jsonl").is_file()
    assert "checkpoint:" in capsys.readouterr().out

    # Training again into the same folder needs --resume (no silent overwrite); resuming extends the run.
    assert main(train) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(train[:6] + ["3"] + train[7:] + ["--resume"]) == 0
    assert "step 3/3" in capsys.readouterr().out

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        write_png(folder / f"{k}.png", np.full((32, 32, 3), 60 * k, np.uint8))
    assert main(["eval", str(ckpt), "--data", str(folder), "-q", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "| model | bin | N |" in table and "| 3 |" in table and "composited" in table

    image, mask = image_and_mask
    out = tmp_path / "filled.png"
    assert main(["inpaint", str(ckpt), str(image), str(mask), "-o", str(out), "--threads", "1"]) == 0
    src, got, hole = (np.asarray(Image.open(p)) for p in (image, out, mask))
    assert got.shape == src.shape
    assert np.array_equal(got[hole == 0], src[hole == 0])  # known pixels are kept exactly


@pytest.mark.parametrize("case", ["size mismatch", "unreadable mask", "missing image"])
def test_inpaint_errors_are_one_line_without_traceback(tmp_path, image_and_mask, case):
    image, mask = image_and_mask
    if case == "size mismatch":
        mask = write_png(tmp_path / "small_mask.png", np.zeros((20, 20), np.uint8))
        expect = "size mismatch"
    elif case == "unreadable mask":  # (grey masks are thresholded: tests/test_inpaint_cli.py)
        mask = tmp_path / "bad_mask.png"
        mask.write_text("not a picture")
        expect = "bad_mask.png"
    else:
        image = tmp_path / "absent.png"
        expect = "absent.png"
    cmd = [sys.executable, "-m", "csa_lib.cli", "inpaint", str(tmp_path / "no.pt"), str(image), str(mask),
           "-o", str(tmp_path / "out.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csa: error:") and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_preset_setting_and_checkpoint_fail_cleanly(tmp_path, capsys):
    assert main(["train", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path), "--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--set", "train.steps=many"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2  # argparse's own usage error


def test_parse_value_follows_the_field_type():
    assert parse_value("3", 1) == 3 and parse_value("2", 0.5) == 2.0
    assert parse_value("0.2,0.5", (0.1, 0.6)) == (0.2, 0.5)
    assert parse_value("None", 5) is None and parse_value("off", True) is False
    assert parse_value("runs/x", "runs/default") == "runs/x"
    assert parse_value("100", None) == 100 and parse_value("center", None) == "center"
    with pytest.raises(ValueError):
        parse_value("1.5", 3)


def test_read_image_and_mask_accepts_0_1_masks(tmp_path, image_and_mask):
    image, _ = image_and_mask
    m = np.zeros((30, 40), np.uint8)
    m[:5] = 1
    img, mask = read_image_and_mask(image, write_png(tmp_path / "m01.png", m))
    assert img.size == (40, 30) and img.mode == "RGB" and mask.shape == (1, 30, 40)
    assert mask.sum() == 5 * 40
