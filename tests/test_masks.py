"""Tests for csa_lib.masks: shapes, binary values, hole-ratio guarantees, seeds, feature masks, folders."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import shared_path
from csa_lib.config import DataConfig
from csa_lib.masks import (MaskFolder, center_mask, check_mask, feature_mask, hole_ratio, irregular_mask,
                           make_mask_source, random_rect_mask, ratio_bin)


def assert_binary_mask(m, size):
    assert m.shape == (1, size, size) and m.dtype == torch.float32
    assert ((m == 0) | (m == 1)).all()


# --- centre --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,hole,start", [(256, 120, 68), (256, 128, 64), (64, 30, 17), (33, 10, 11)])
def test_center_mask_position(size, hole, start):
    m = center_mask(size, hole)
    assert_binary_mask(m, size)
    rows = torch.nonzero(m[0].any(1)).flatten()
    cols = torch.nonzero(m[0].any(0)).flatten()
    assert rows[0] == start and rows[-1] == start + hole - 1 and cols[0] == start
    assert m.sum() == hole * hole


def test_center_mask_default_is_official_fraction():
    assert center_mask(256).sum() == 120 * 120
    assert center_mask(64).sum() == 30 * 30  # round(120/256 * 64) = 30


@pytest.mark.parametrize("hole", [0, 300, 12.5])
def test_center_mask_bad_hole(hole):
    with pytest.raises(ValueError, match="hole_size"):
        center_mask(256, hole)


# --- random rectangles and free-form strokes ----------------------------------------------------------
@pytest.mark.parametrize("fn,rng", [(random_rect_mask, (0.1, 0.4)), (irregular_mask, (0.1, 0.6)),
                                    (irregular_mask, (0.01, 0.1)), (irregular_mask, (0.5, 0.6)),
                                    (random_rect_mask, (0.3, 0.31))])
@pytest.mark.parametrize("size", [32, 64])
def test_random_masks_ratio_in_range(fn, rng, size):
    ratios = []
    for seed in range(150):
        m = fn(size, rng, seed)
        assert_binary_mask(m, size)
        ratios.append(hole_ratio(m))
    ratios = np.array(ratios)
    assert ratios.min() >= rng[0] and ratios.max() <= rng[1]
    assert ratios.std() > 0 or rng[1] - rng[0] < 0.02  # masks really vary


def test_irregular_mask_at_256_in_range():
    for seed in range(20):
        r = hole_ratio(irregular_mask(256, (0.2, 0.3), seed))
        assert 0.2 <= r <= 0.3


@pytest.mark.parametrize("fn", [random_rect_mask, irregular_mask])
def test_random_masks_deterministic(fn):
    a = fn(64, (0.1, 0.4), torch.Generator().manual_seed(7))
    b = fn(64, (0.1, 0.4), 7)  # an int seed is the same as a generator seeded with it
    c = fn(64, (0.1, 0.4), 8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_masks_nonsquare():
    m = irregular_mask((32, 48), (0.1, 0.4), 0)
    assert m.shape == (1, 32, 48) and 0.1 <= hole_ratio(m) <= 0.4
    assert random_rect_mask((32, 48), (0.1, 0.4), 0).shape == (1, 32, 48)


@pytest.mark.parametrize("rng", [(0.5, 0.2), (-0.1, 0.2), (0.1, 1.5), (0.1,), (0.5001, 0.5002)])
def test_bad_ratio_ranges(rng):
    with pytest.raises(ValueError, match="hole_ratio"):
        irregular_mask(16, rng, 0)


def test_bad_generator_type():
    with pytest.raises(TypeError, match="generator"):
        irregular_mask(16, (0.1, 0.2), "seed")


# --- ratios, bins and validation --------------------------------------------------------------------------
def test_hole_ratio_shapes():
    m = center_mask(16, 8)
    assert hole_ratio(m) == pytest.approx(0.25)
    assert hole_ratio(m[0]) == pytest.approx(0.25)
    batch = torch.stack([m, torch.zeros_like(m)])
    torch.testing.assert_close(hole_ratio(batch), torch.tensor([0.25, 0.0]))


@pytest.mark.parametrize("r,label", [(0.0, "0-10%"), (0.05, "0-10%"), (0.15, "10-20%"), (0.2, "20-30%"),
                                     (0.55, "50-60%"), (1.0, "90-100%")])
def test_ratio_bin(r, label):
    assert ratio_bin(r) == label


def test_check_mask_errors():
    good = center_mask(16, 4)
    assert check_mask(good, 16) is good
    check_mask(good[None] > 0.5)  # bool batch is fine
    with pytest.raises(ValueError, match="binary"):
        check_mask(good * 0.5)
    with pytest.raises(ValueError, match=r"\[1, H, W\]"):
        check_mask(torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="image size"):
        check_mask(good, 32)
    with pytest.raises(ValueError, match="dtype"):
        check_mask(good.long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_mask(np.zeros((1, 4, 4)))


# --- feature-resolution mask --------------------------------------------------------------------------------
def test_feature_mask_official_counts():
    assert feature_mask(center_mask(256, 120)).sum() == 252
    assert feature_mask(center_mask(256, 128)).sum() == 256


def test_feature_mask_shapes_and_equivalence():
    m = irregular_mask(64, (0.2, 0.5), 3)
    out = feature_mask(m[None])
    assert out.shape == (1, 1, 8, 8) and out.dtype == torch.bool
    assert torch.equal(feature_mask(m), out) and torch.equal(feature_mask(m[0]), out)
    # by hand: three 4x4 stride-2 averages with zero padding 1, then > 5/16
    x = m[None]
    for _ in range(3):
        x = F.conv2d(x, torch.ones(1, 1, 4, 4) / 16, stride=2, padding=1)
    assert torch.equal(out, x > 5 / 16)
    assert not feature_mask(torch.zeros(2, 1, 16, 16)).any()
    assert feature_mask(torch.ones(2, 1, 16, 16))[:, :, 1:-1, 1:-1].all()


def test_feature_mask_batch_is_per_image():
    batch = torch.stack([center_mask(64, 32), irregular_mask(64, (0.2, 0.4), 1)])
    out = feature_mask(batch)
    assert out.shape == (2, 1, 8, 8)
    for i in range(2):
        assert torch.equal(out[i:i + 1], feature_mask(batch[i]))


@pytest.mark.parametrize("bad,match", [(torch.zeros(1, 1, 20, 20), "divisible"),
                                       (torch.full((1, 1, 16, 16), 0.5), "binary"),
                                       (torch.zeros(1, 3, 16, 16), "shape")])
def test_feature_mask_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        feature_mask(bad)


# --- mask sources ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["center", "rect", "irregular"])
def test_make_mask_source(kind):
    src = make_mask_source(DataConfig(image_size=32, masks=kind, hole_ratio=(0.1, 0.3)))
    a, b = src(torch.Generator().manual_seed(1)), src(torch.Generator().manual_seed(1))
    assert_binary_mask(a, 32)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["center", "rect", "irregular", "folder"])
def test_mask_sources_pickle(kind, tmp_path):
    """DataLoader workers started with 'spawn' (macOS, Windows) need picklable mask sources."""
    _write_masks(tmp_path)
    src = make_mask_source(DataConfig(image_size=32, masks=kind, mask_dir=str(tmp_path)))
    again = pickle.loads(pickle.dumps(src))
    assert torch.equal(src(torch.Generator().manual_seed(2)), again(torch.Generator().manual_seed(2)))


def test_make_mask_source_errors():
    with pytest.raises(ValueError, match="data.masks must be one of center, rect, irregular, folder"):
        DataConfig(masks="stars")  # the config refuses it (csa_lib.config.MASK_KINDS) ...
    cfg = DataConfig()
    cfg.masks = "stars"  # ... and so does the mask source, for a field assigned directly
    with pytest.raises(ValueError, match="data.masks must be one of"):
        make_mask_source(cfg)
    with pytest.raises(ValueError, match="mask_dir"):
        make_mask_source(DataConfig(masks="folder"))


# --- folders of PNG masks ----------------------------------------------------------------------------------------
def _write_masks(folder):
    """Three 40x40 masks: a grey (0..255) image whose > 127 part is the top-left 10x20 block, a full
    white square and a tiny dot; plus a non-image file that must be ignored."""
    folder.mkdir(parents=True, exist_ok=True)
    a = np.full((40, 40), 100, np.uint8)
    a[:10, :20] = 200  # 12.5 % hole after binarisation at 127
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(folder / "b.PNG")
    c = np.zeros((40, 40), np.uint8)
    c[5:7, 5:7] = 255
    Image.fromarray(c).save(folder / "c.png")
    (folder / "notes.txt").write_text("not a mask")


def test_mask_folder_binarise_resize_bins(tmp_path):
    _write_masks(tmp_path / "m")
    mf = MaskFolder(tmp_path / "m", 20, augment=False)
    assert len(mf) == 3 and [p.name for p in mf.paths] == ["a.png", "b.PNG", "c.png"]
    a = mf[0]
    assert_binary_mask(a, 20)
    assert a[0, :5, :10].all() and a.sum() == 50  # nearest resize halves the 10x20 block
    assert [mf.ratio_bin(i) for i in range(3)] == ["10-20%", "90-100%", "0-10%"]
    assert mf.indices_in_bin("10-20%") == [0]


def test_mask_folder_sample_augments_deterministically(tmp_path):
    _write_masks(tmp_path)
    mf = MaskFolder(tmp_path, 40, augment=True)
    samples = [mf.sample(torch.Generator().manual_seed(s)) for s in range(40)]
    assert torch.equal(samples[3], mf(torch.Generator().manual_seed(3)))
    # the 10x20 block of a.png must turn up in other corners/orientations
    corners = {tuple(int(x) for x in torch.nonzero(s[0]).min(0).values) for s in samples if s.sum() == 200}
    assert len(corners) > 1
    assert all(s.sum() in (200, 1600, 4) for s in samples)  # augmentation keeps the hole area


def test_mask_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MaskFolder(tmp_path / "nowhere", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        MaskFolder(tmp_path / "empty", 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="x.png"):
        MaskFolder(tmp_path / "bad", 32)[0]


def test_make_mask_source_folder(tmp_path):
    _write_masks(tmp_path)
    cfg = DataConfig(image_size=20, masks="folder", mask_dir=str(tmp_path))
    assert isinstance(make_mask_source(cfg), MaskFolder)
    assert make_mask_source(cfg, train=False).augment is False


@pytest.mark.shared_data
def test_nvidia_masks_bins():
    """The shared NVIDIA set: files 2000*k.. lie in bin k; >= 98 % of a sample agrees (files right at a bin
    edge can fall the other way after the 512 -> 256 resize)."""
    mf = MaskFolder(shared_path("data", "nvidia_masks_256"), 256, augment=False)
    assert len(mf) == 12000
    labels = ["0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%"]
    idx = list(range(0, 12000, 97))
    agree = np.mean([mf.ratio_bin(i) == labels[i // 2000] for i in idx])
    assert agree >= 0.98
    m = mf.sample(torch.Generator().manual_seed(0))
    assert_binary_mask(m, 256)
    assert 0 < feature_mask(m).sum() < 32 * 32
