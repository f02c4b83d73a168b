"""Tests for csa_lib.data: folder/CelebA/Places2 layouts, crops, ranges, bad files, embedded photos."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from csa_lib.config import DataConfig, get_preset
from csa_lib.data import (CELEBA_CROP_TOP, EmbeddedDataset, InpaintingDataset, build_dataset,
                          celeba_split_files, data_root, list_images, load_image, paris_files, places2_files,
                          prepare_image, sample_images)
from csa_lib.masks import MaskFolder, center_mask, random_rect_mask


def _face(i):
    """A 178x218 RGB picture whose rows encode their index (red = row), so crops can be located."""
    arr = np.zeros((218, 178, 3), np.uint8)
    arr[:, :, 0] = np.arange(218)[:, None]
    arr[:, :, 1] = 10 * i
    arr[:, :, 2] = np.linspace(0, 255, 178)[None, :]
    return Image.fromarray(arr)


@pytest.fixture
def celeba(tmp_path):
    """A fake CelebA tree: 6 JPEGs 178x218, splits 3 train / 2 valid / 1 test."""
    img = tmp_path / "img_align_celeba"
    img.mkdir()
    lines = []
    for i in range(1, 7):
        _face(i).save(img / f"{i:06d}.jpg", quality=95)
        lines.append(f"{i:06d}.jpg {0 if i <= 3 else 1 if i <= 5 else 2}")
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _ok_range(x):
    assert x.min() >= -1 and x.max() <= 1


# --- CelebA layout ------------------------------------------------------------------------------------------
def test_celeba_splits(celeba):
    assert [p.name for p in celeba_split_files(celeba, "train")] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert [p.name for p in celeba_split_files(celeba, "valid")] == ["000004.jpg", "000005.jpg"]
    assert [p.name for p in celeba_split_files(celeba, "test")] == ["000006.jpg"]
    assert len(celeba_split_files(celeba, "all")) == 6
    with pytest.raises(ValueError, match="split"):
        celeba_split_files(celeba, "holdout")


def test_celeba_torchvision_layout(celeba, tmp_path_factory):
    """torchvision puts the files under <root>/celeba/; both layouts are accepted."""
    outer = tmp_path_factory.mktemp("tv")
    celeba.rename(outer / "celeba")
    assert len(celeba_split_files(outer, "train")) == 3


def test_celeba_missing_partition(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        celeba_split_files(tmp_path, "train")


def test_celeba_dataset_crops_and_ranges(celeba):
    cfg = DataConfig(root=str(celeba), layout="celeba", image_size=32, resize="center_crop",
                     masks="center", crop_top=CELEBA_CROP_TOP)
    train, ev = build_dataset(cfg, "train"), build_dataset(cfg, "eval")
    assert len(train) == 3 and len(ev) == 1
    image, mask = ev[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and mask.shape == (1, 32, 32)
    _ok_range(image)
    # red channel = source row: a 178 crop starting at row 0.75 * 40 = 30 spans rows 30..207
    red = (image[0, :, 16] + 1) * 127.5
    assert abs(red[0].item() - 32) < 4 and abs(red[-1].item() - 205) < 4
    assert abs(((image[2, 16] + 1) * 127.5)[0].item()) < 8  # whole width kept: blue starts near 0


def test_resize_policies():
    img = _face(1)
    sq = np.asarray(prepare_image(img, 16, "square"))[:, :, 0].astype(int)
    top = np.asarray(prepare_image(img, 16, "center_crop", crop_top=0.0))[:, :, 0].astype(int)
    mid = np.asarray(prepare_image(img, 16, "center_crop"))[:, :, 0].astype(int)
    assert sq[0, 0] < 10 and sq[-1, 0] > 205  # the whole height squeezed in
    assert top[-1, 0] < 180 and mid[0, 0] > 15  # the crop drops rows at the bottom / at both ends
    with pytest.raises(ValueError, match="resize"):
        prepare_image(img, 16, "stretch")
    with pytest.raises(ValueError, match="crop_top"):
        prepare_image(img, 16, "center_crop", crop_top=1.5)


# --- folder datasets: masks, seeds, flips, ranges -----------------------------------------------------------
def test_folder_dataset_fixed_masks_and_ranges(celeba):
    cfg = DataConfig(root=str(celeba / "img_align_celeba"), image_size=32, masks="rect",
                     hole_ratio=(0.1, 0.3), train_range=(0, 4), eval_range=(4, 6), eval_seed=5)
    train, ev = build_dataset(cfg, "train"), build_dataset(cfg, "eval")
    assert [p.name for p in ev.files] == ["000005.jpg", "000006.jpg"] and len(train) == 4
    a, b = ev[1], ev[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], random_rect_mask(32, (0.1, 0.3), torch.Generator().manual_seed(5 + 1)))
    masks = {tuple(train[0][1].flatten().tolist()) for _ in range(5)}
    assert len(masks) > 1  # training masks are drawn afresh
    assert len(list(ev)) == 2 and torch.equal(ev[-1][1], a[1])  # plain iteration stops; negative index
    with pytest.raises(IndexError):
        ev[2]


def test_flip(celeba):
    files = list_images(celeba)
    plain = InpaintingDataset(None, 16, center_mask(16), files=files[:1])[0][0]
    flipped = [InpaintingDataset(None, 16, center_mask(16), files=files[:1], flip=True, seed=s)[0][0]
               for s in range(8)]
    assert any(torch.equal(f, plain.flip(-1)) for f in flipped) and any(torch.equal(f, plain) for f in flipped)


def test_mask_folder_as_source(celeba, tmp_path_factory):
    mdir = tmp_path_factory.mktemp("masks")
    m = np.zeros((64, 64), np.uint8)
    m[:32] = 255
    Image.fromarray(m).save(mdir / "half.png")
    ds = InpaintingDataset(celeba / "img_align_celeba", 32, MaskFolder(mdir, 32, augment=False))
    assert ds[0][1].sum() == 32 * 16


def test_wrong_mask_size_is_reported(celeba):
    ds = InpaintingDataset(celeba, 32, center_mask(16))
    with pytest.raises(ValueError, match="image size"):
        ds[0]


# --- bad input ----------------------------------------------------------------------------------------------
def test_corrupt_file_raises_or_skips(tmp_path):
    _face(1).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    _face(3).save(tmp_path / "c.png")
    ds = InpaintingDataset(tmp_path, 16, center_mask(16))
    with pytest.raises(OSError, match="b.jpg"):
        ds[1]
    skip = InpaintingDataset(tmp_path, 16, center_mask(16), on_error="skip")
    with pytest.warns(UserWarning, match="b.jpg"):
        image, _ = skip[1]
    assert skip.skipped == 1 and torch.equal(image, skip[2][0])  # the next readable image stands in
    skip[1]
    assert skip.skipped == 1  # counted once per file


def test_all_files_bad(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    ds = InpaintingDataset(tmp_path, 16, center_mask(16), on_error="skip")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="no readable image"):
        ds[0]


def test_image_modes_convert_to_rgb(tmp_path):
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((20, 30, 4), 200, np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).convert("P").save(tmp_path / "pal.png")
    for name in ("gray.png", "rgba.png", "pal.png"):
        assert load_image(tmp_path / name).mode == "RGB"
    ds = InpaintingDataset(tmp_path, 8, center_mask(8))
    image, _ = ds[0]  # gray.png sorts first
    assert image.shape == (3, 8, 8)
    torch.testing.assert_close(image, torch.full((3, 8, 8), 77 / 127.5 - 1))


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        InpaintingDataset(tmp_path / "nope", 16, center_mask(16))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty"):
        InpaintingDataset(tmp_path / "empty", 16, center_mask(16))
    with pytest.raises(FileNotFoundError, match="ghost.jpg"):
        load_image(tmp_path / "ghost.jpg")
    with pytest.raises(ValueError, match="on_error"):
        InpaintingDataset(tmp_path, 16, center_mask(16), on_error="ignore")


def test_list_images_case_and_recursion(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.WebP", "d.txt", "e.jpeg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG") if name != "d.txt" else \
            (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == \
        ["a.png", "b.JPG", "e.jpeg", "sub/c.WebP"]


# --- other layouts ------------------------------------------------------------------------------------------
def test_places2_and_paris_layouts(tmp_path):
    (tmp_path / "a" / "airfield").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (12, 10), (i, 0, 0)).save(tmp_path / "a" / "airfield" / f"{i:08d}.jpg")
    (tmp_path / "train.txt").write_text("/a/airfield/00000002.jpg 0\n/a/airfield/00000000.jpg 0\n")
    files = places2_files(tmp_path, "train.txt")
    assert [p.name for p in files] == ["00000002.jpg", "00000000.jpg"]
    assert all(p.is_file() for p in files)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        places2_files(tmp_path, "missing.txt")
    (tmp_path / "paris_train_original").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "paris_train_original" / "p.png")
    assert [p.name for p in paris_files(tmp_path, "train")] == ["p.png"]
    ds = build_dataset(DataConfig(root=str(tmp_path), layout="places2", image_size=8), "eval")
    assert len(ds) == 4  # no places365_val.txt: every image under the root


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("CSA_DATA_ROOT", raising=False)
    assert data_root() is None and data_root(tmp_path) == tmp_path
    monkeypatch.setenv("CSA_DATA_ROOT", str(tmp_path / "faces"))
    assert data_root(tmp_path) == tmp_path / "faces"


# --- embedded photos ----------------------------------------------------------------------------------------
def test_sample_images():
    x = sample_images(32)
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32
    _ok_range(x)
    assert x.std() > 0.2  # real photos, not blank


def test_embedded_dataset():
    ds = EmbeddedDataset(32, center_mask(32), n=10, seed=3)
    (a, ma), (b, _) = ds[4], ds[4]
    assert a.shape == (3, 32, 32) and ma.shape == (1, 32, 32) and torch.equal(a, b)
    _ok_range(a)
    assert not torch.equal(ds[4][0], ds[5][0])
    with pytest.raises(IndexError):
        ds[10]
    fresh = EmbeddedDataset(32, center_mask(32), n=10)
    assert not torch.equal(fresh[0][0], fresh[0][0])


def test_build_dataset_embedded_smoke():
    cfg = get_preset("smoke").data
    train, ev = build_dataset(cfg, "train"), build_dataset(cfg, "eval")
    assert isinstance(train, EmbeddedDataset) and ev.seed == cfg.eval_seed and not ev.flip
    image, mask = ev[0]
    assert image.shape == (3, cfg.image_size, cfg.image_size)
    assert cfg.hole_ratio[0] <= mask.mean() <= cfg.hole_ratio[1]
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="split"):
        build_dataset(cfg, "test")
    copy = pickle.loads(pickle.dumps(ev))  # spawned DataLoader workers receive a pickled dataset
    assert torch.equal(copy[0][0], image) and torch.equal(copy[0][1], mask)


# --- shared real data (skipped when absent) -----------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_celeba_and_nvidia_masks():
    faces, masks = shared_path("data", "celeba_10k"), shared_path("data", "nvidia_masks_256")
    cfg = DataConfig(root=str(faces), image_size=64, resize="center_crop", crop_top=CELEBA_CROP_TOP,
                     masks="folder", mask_dir=str(masks), train_range=(0, 9000), eval_range=(9000, 10000))
    ev = build_dataset(cfg, "eval")
    assert len(ev) == 1000 and ev.files[0].name == "009001.jpg"
    image, mask = ev[0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert torch.equal(mask, ev[0][1])


def test_build_dataset_with_a_relative_image_folder(tmp_path, monkeypatch):
    """``csa train --data ../faces`` (a relative folder): the files must not be joined to the root twice."""
    from PIL import Image

    from csa_lib.config import get_preset
    from csa_lib.data import build_dataset

    faces = tmp_path / "faces"
    faces.mkdir()
    for k in range(3):
        Image.new("RGB", (40, 48), (10 * k, 20, 30)).save(faces / f"{k:06d}.jpg")
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = get_preset("smoke").data
    cfg.root, cfg.skip_bad_images = "../faces", False
    ds = build_dataset(cfg, "train")
    image, mask = ds[0]  # raised "no readable image" / file not found before the fix
    assert image.shape[-1] == cfg.image_size and ds.skipped == 0
