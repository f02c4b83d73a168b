"""Datasets that yield ``(image, mask)`` pairs for inpainting.

- ``image``: float ``[3, H, W]`` in [-1, 1]; ``mask``: float ``[1, H, W]``, 1 = hole (see ``masks.py``).
- ``InpaintingDataset``: any folder of photos (CelebA, Places2, Paris StreetView, your own).
- ``EmbeddedDataset``: random crops of the colour photos that scikit-image ships inside its package, so
  the demo and the tests run on a fresh machine with no download at all.
- ``build_dataset(data_cfg, split)``: what the trainer and the evaluation code call.

Nothing here downloads anything at run time; ``download_celeba`` is the one explicit exception and only runs
when you call it. See ``data/README.md`` for where to get each dataset and under which licence.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .config import RESIZES, SHARED_ROOT
from .copytask import CopyTask  # noqa: F401  (public here: csa_lib.data.CopyTask)
from .masks import check_mask, fixed_mask, make_mask_source

#: Real data beside a checkout (``../shared/data``; may be absent, never committed).
SHARED_DATA = SHARED_ROOT / "data"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: In ``img_align_celeba`` (178x218) the face sits below the image centre, so the usual square crop starts
#: lower than a centred one: top offset 30 of the 40 spare rows (15 of 20 on the 89x109 copies in
#: ``../shared/data/celeba_10k``). Pass ``crop_top=CELEBA_CROP_TOP`` with ``resize="center_crop"``.
CELEBA_CROP_TOP = 0.75


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------
def data_root(default: str | Path | None = None) -> Path | None:
    """The image folder named by ``$CSA_DATA_ROOT`` (e.g. ``/data/celeba/img_align_celeba``), else
    ``default`` (notebooks pass ``../shared/data/celeba_10k``). Only a path: nothing is checked or fetched."""
    value = os.environ.get("CSA_DATA_ROOT") or default
    return None if value is None else Path(value).expanduser()


def _existing_dir(root: str | Path, what: str = "image folder") -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} is not a directory: {root}")
    return root


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``root`` (jpg/jpeg/png/bmp/webp, any letter case)."""
    root = _existing_dir(root)
    found = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return files


def load_image(path: str | Path, mode: str = "RGB", what: str = "image") -> Image.Image:
    """Open an image file as an 8-bit PIL image in ``mode`` (``"RGB"`` for photos, ``"L"`` for masks).

    - Palette and RGBA images are converted (alpha is dropped).
    - High bit depth is scaled, not clipped: 16-bit greyscale (PIL ``I;16``) and 32-bit integer images
      are divided by 257 (0..65535 -> 0..255); float images (``F``, e.g. float TIFF) are taken as 0..1
      (as 0..255 when their maximum is above 1). 16-bit RGB PNGs already arrive as 8-bit RGB from PIL.
    - The EXIF orientation is applied (``ImageOps.exif_transpose``): a photo and a mask drawn on the
      photo as a viewer shows it end up the same way round.
    - The whole file is decoded here, so a truncated or corrupt file, or one over PIL's
      decompression-bomb limit, raises ``OSError("cannot read <what> <path>: ...")`` (one line, naming
      the file); a missing file raises ``FileNotFoundError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            im = ImageOps.exif_transpose(im)
            return to_8bit(im).convert(mode)
    except Exception as e:  # PIL raises many different types for bad files
        reason = " ".join(str(e).replace(f"'{path}'", "").split()) or type(e).__name__  # the path once
        raise OSError(f"cannot read {what} {path}: {reason}") from e


def to_8bit(im: Image.Image) -> Image.Image:
    """A PIL image in an 8-bit mode (L, RGB, RGBA, ...), high bit depths scaled to 0..255."""
    if im.mode == "P":
        return im.convert("RGBA")  # palette images may carry transparency
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.float64)
        # 32-bit "I" images from 8-bit sources hold 0..255; 16-bit sources (and I;16) 0..65535.
        scale = 1.0 if im.mode == "I" and arr.max(initial=0) <= 255 else 257.0
        return Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    return im


def celeba_split_files(root: str | Path, split: str = "train") -> list[Path]:
    """CelebA aligned faces of one official split, in file order.

    ``root`` holds ``img_align_celeba/`` and ``list_eval_partition.txt`` (directly, or inside ``celeba/``
    as torchvision lays it out). ``split``: ``"train"`` (0), ``"valid"``/``"val"`` (1), ``"test"`` (2), ``"all"``.
    """
    codes = {"train": {"0"}, "valid": {"1"}, "val": {"1"}, "test": {"2"}, "all": {"0", "1", "2"}}
    if split not in codes:
        raise ValueError(f"unknown CelebA split {split!r}; choose one of {sorted(codes)}")
    root = _existing_dir(root, "CelebA root")
    if not (root / "list_eval_partition.txt").exists() and (root / "celeba").is_dir():
        root = root / "celeba"
    part, images = root / "list_eval_partition.txt", root / "img_align_celeba"
    for p in (part, images):
        if not p.exists():
            raise FileNotFoundError(f"CelebA layout needs {p} (see data/README.md)")
    files = []
    for line_no, line in enumerate(part.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{part}:{line_no}: expected '<file> <0|1|2>', got {line!r}")
        if fields[1] in codes[split]:
            files.append(images / fields[0])
    if not files:
        raise ValueError(f"{part} lists no files for split {split!r}")
    return files


def download_celeba(root: str | Path) -> Path:
    """Fetch CelebA with ``torchvision.datasets.CelebA(root, download=True)`` (needs internet and the
    ``gdown`` package; Google Drive quotas often block it). Returns the folder for ``celeba_split_files``."""
    from torchvision.datasets import CelebA
    try:
        CelebA(str(root), split="all", target_type=[], download=True)
    except Exception as e:
        raise RuntimeError(
            f"downloading CelebA into {root} failed ({type(e).__name__}: {e}). Without internet, download "
            "img_align_celeba.zip and list_eval_partition.txt by hand (see data/README.md) and pass the folder "
            "with --data.") from e
    return Path(root) / "celeba"


def places2_files(root: str | Path, list_file: str | Path) -> list[Path]:
    """Places2/Places365 images named by a list file (``places365_train_standard.txt``, ``places365_val.txt``):
    one ``<relative path> [label]`` per line, paths relative to ``root`` (a leading ``/`` is ignored)."""
    root = _existing_dir(root, "Places2 root")
    list_file = Path(list_file)
    if not list_file.is_absolute():
        list_file = root / list_file
    if not list_file.is_file():
        raise FileNotFoundError(f"Places2 list file not found: {list_file}")
    names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"Places2 list file is empty: {list_file}")
    return [root / n.lstrip("/") for n in names]


def paris_files(root: str | Path, split: str = "train") -> list[Path]:
    """Paris StreetView (Pathak et al. 2016): ``paris_train_original/`` for train and ``paris_eval_gt/`` for
    eval when those folders exist under ``root``; otherwise every image under ``root``."""
    root = _existing_dir(root, "Paris StreetView root")
    sub = root / ("paris_train_original" if split == "train" else "paris_eval_gt")
    return list_images(sub if sub.is_dir() else root)


# ----------------------------------------------------------------------------------------------------
# image preparation
# ----------------------------------------------------------------------------------------------------
def prepare_image(img: Image.Image, size: int, resize: str = "square",
                  crop_top: float | None = None) -> Image.Image:
    """Resize a PIL image to ``size x size``.

    - ``"square"``: stretch the whole image to a square (the official code's ``Resize``).
    - ``"center_crop"``: crop a square of the short side, then resize. Horizontally centred; vertically
      the crop starts at ``crop_top`` times the spare rows (0 = top, 0.5 = centre (default), 1 = bottom;
      ``CELEBA_CROP_TOP`` = 0.75 for CelebA faces).
    """
    w, h = img.size
    if resize == "square":
        return img.resize((size, size), Image.BICUBIC)
    if resize != "center_crop":
        raise ValueError(f"unknown resize policy {resize!r}; choose 'square' or 'center_crop'")
    crop_top = 0.5 if crop_top is None else crop_top
    if not 0.0 <= crop_top <= 1.0:
        raise ValueError(f"crop_top must be a fraction in [0, 1], got {crop_top!r}")
    s = min(w, h)
    left, top = (w - s) // 2, round(crop_top * (h - s))
    # Crop first, then resize: pixels outside the square never leak in through the resize filter.
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def framed_crop(img: Image.Image, size: int, crop_top: float | None = None, shift: tuple[float, float] = (0.0, 0.0),
                zoom: float = 1.0) -> Image.Image:
    """The ``"center_crop"`` square moved and scaled: a user's photo is never framed like the training crop.

    The square of :func:`prepare_image` (side = the short side, vertical start ``crop_top``) is shifted by
    ``shift = (dy, dx)`` times its side (positive = the crop moves down/right, so the face moves up/left)
    and its side divided by ``zoom`` (> 1 zooms in: the face gets larger; < 1 zooms out), keeping its
    centre. Parts of the square outside the photo are filled by mirroring the photo at its edge (no black
    bars for the network to learn). ``shift=(0, 0), zoom=1`` is exactly ``prepare_image(..., "center_crop")``.
    """
    if zoom <= 0:
        raise ValueError(f"zoom must be > 0, got {zoom}")
    w, h = img.size
    s = min(w, h)
    crop_top = 0.5 if crop_top is None else crop_top
    left0, top0 = (w - s) // 2, round(crop_top * (h - s))
    if shift == (0.0, 0.0) and zoom == 1.0:
        return img.crop((left0, top0, left0 + s, top0 + s)).resize((size, size), Image.BICUBIC)
    side = s / zoom
    cy, cx = top0 + s / 2 + shift[0] * s, left0 + s / 2 + shift[1] * s
    top, left = cy - side / 2, cx - side / 2
    pad = int(np.ceil(max(0.0, -top, -left, top + side - h, left + side - w))) + 2
    if pad > 2:
        arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        src, off = Image.fromarray(arr), pad
    else:
        src, off = img, 0
    box = (left + off, top + off, left + off + side, top + off + side)
    return src.resize((size, size), Image.BICUBIC, box=box)


def jitter_colour(image: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """Mild colour jitter of ``image [3,H,W]`` in [-1, 1]: brightness, contrast and saturation each
    scaled by a factor in ``[1 - amount, 1 + amount]`` (torchvision's ``ColorJitter`` definitions, on
    the [0, 1] scale). ``amount = 0`` returns the image unchanged."""
    if amount <= 0:
        return image
    b, c, s = (1 + amount * (2 * torch.rand(3, generator=g) - 1)).tolist()
    x = (image + 1) / 2 * b
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])
    x = (x - grey.mean()) * c + grey.mean()
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])
    x = (x - grey) * s + grey
    return x.clamp(0, 1) * 2 - 1


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float ``[3, H, W]`` in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def _mask_source(source) -> Callable:
    """Accept a callable ``source(generator) -> [1, H, W]`` (a ``MaskFolder`` is one) or a fixed mask tensor."""
    if isinstance(source, torch.Tensor):
        check_mask(source, name="fixed mask")
        return functools.partial(fixed_mask, source.float())
    if not callable(source):
        raise TypeError(f"mask_source must be callable(generator) -> [1, H, W] or a tensor, got {type(source)}")
    return source


def _item_generator(seed: int | None, i: int) -> torch.Generator:
    """Fixed per-sample generator with a seed (evaluation); otherwise one seeded from torch's global RNG,
    which DataLoader re-seeds per worker, so workers do not repeat each other."""
    if seed is not None:
        return torch.Generator().manual_seed(seed + i)
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))


# ----------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------
class InpaintingDataset(Dataset):
    """Images from a folder (or an explicit file list) with a hole mask per image.

    ``ds[i]`` -> ``(image [3, S, S] in [-1, 1], mask [1, S, S] float, 1 = hole)``.

    - ``mask_source``: ``callable(generator) -> [1, S, S]`` (see ``masks.make_mask_source``), a
      ``MaskFolder``, or one fixed mask tensor.
    - ``seed``: when set, sample i draws its mask (and flip) from ``Generator().manual_seed(seed + i)``, so
      evaluation masks are the same on every run. When None every access draws fresh ones.
    - ``flip``: random horizontal flip (training).
    - ``on_error``: ``"raise"`` (an unreadable file raises an error naming it) or ``"skip"`` (warn, count
      it in ``.skipped`` and return the next readable image instead).
    """

    def __init__(self, root: str | Path | None, image_size: int, mask_source, resize: str = "square",
                 files: Sequence[str | Path] | None = None, flip: bool = False, seed: int | None = None,
                 on_error: str = "raise", crop_top: float | None = None,
                 augment: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if resize not in RESIZES:
            raise ValueError(f"unknown resize policy {resize!r}; choose one of {RESIZES}")
        if files is None:
            if root is None:
                raise ValueError("give an image folder (root) or a list of files")
            files = list_images(root)
        else:
            base = Path(root) if root is not None else Path()
            files = [base / f for f in files]
        if len(files) == 0:
            raise ValueError(f"no image files given for {root}")
        self.root, self.files = root, list(files)
        self.image_size, self.resize, self.crop_top = image_size, resize, crop_top
        self.mask_source, self.flip, self.seed, self.on_error = _mask_source(mask_source), flip, seed, on_error
        translate, scale, colour = (float(v) for v in augment)
        if not (0 <= translate < 0.5 and 0 <= scale < 0.5 and 0 <= colour < 1):
            raise ValueError(f"augment (translate, scale, colour) must be in [0, 0.5) x [0, 0.5) x [0, 1), "
                             f"got {augment!r}")
        if (translate or scale) and resize != "center_crop":
            raise ValueError("translation/scale augmentation needs resize='center_crop'")
        self.augment = (translate, scale, colour)
        #: A fixed framing ``(dy, dx, zoom)`` for evaluation at other crops (:func:`framed_crop`); None = the
        #: preset's crop. Set it on an evaluation set to score a model on faces framed differently.
        self.framing: tuple[float, float, float] | None = None
        self._bad: set[int] = set()

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files were skipped so far (``on_error="skip"``)."""
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> Image.Image:
        """Image i, or with ``on_error="skip"`` the next readable one after it."""
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            if j in self._bad:
                continue
            try:
                return load_image(self.files[j])
            except OSError as e:  # FileNotFoundError is an OSError too
                if self.on_error == "raise":
                    raise
                self._bad.add(j)
                warnings.warn(f"skipping unreadable image ({e}); {len(self._bad)} of {len(self.files)} "
                              "files skipped so far", stacklevel=3)
        raise RuntimeError(f"no readable image among the {len(self.files)} files of {self.root}")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i = i % len(self)
        g = _item_generator(self.seed, i)
        translate, scale, colour = self.augment
        if translate or scale:
            u = (2 * torch.rand(3, generator=g) - 1).tolist()  # three uniform draws in [-1, 1]
            # zoom uniform in log space between 1/(1+scale) and 1+scale: zooming in and out equally likely
            zoom = (1 + scale) ** u[2]
            img = framed_crop(self._load(i), self.image_size, self.crop_top,
                              shift=(translate * u[0], translate * u[1]), zoom=zoom)
        elif self.framing is not None:
            dy, dx, zoom = self.framing
            img = framed_crop(self._load(i), self.image_size, self.crop_top, shift=(dy, dx), zoom=zoom)
        else:
            img = prepare_image(self._load(i), self.image_size, self.resize, self.crop_top)
        image = jitter_colour(to_tensor(img), colour, g)
        mask = check_mask(self.mask_source(g), self.image_size).float()
        if self.flip and torch.rand((), generator=g).item() < 0.5:
            image = image.flip(-1)
        return image, mask


# The colour photographs bundled inside scikit-image's wheel (read locally, never fetched with pooch).
EMBEDDED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle",
                   "hubble_deep_field", "immunohistochemistry")
_PHOTO_CACHE: list[Image.Image] = []


def embedded_photos() -> list[Image.Image]:
    """The embedded photos as PIL RGB images (loaded once, long side at most 640 px)."""
    if not _PHOTO_CACHE:
        import skimage.data
        for name in EMBEDDED_PHOTOS:
            try:
                arr = getattr(skimage.data, name)()
            except Exception as e:
                raise RuntimeError(f"scikit-image's bundled photo {name!r} could not be read: {e}") from e
            arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle -> (left, right, disparity)
            im = Image.fromarray(arr[..., :3]).convert("RGB")
            im.thumbnail((640, 640), Image.BICUBIC)
            _PHOTO_CACHE.append(im)
    return list(_PHOTO_CACHE)


def sample_images(size: int = 64) -> torch.Tensor:
    """The embedded photos, centre-cropped to squares and resized: ``[N, 3, size, size]`` in [-1, 1], N = 7."""
    return torch.stack([to_tensor(prepare_image(im, size, "center_crop")) for im in embedded_photos()])


#: Two natural photos kept out of training where a notebook evaluates on held-out images (the other
#: five include a star field and a microscopy slide, poor test pictures for a result figure).
HELD_OUT_PHOTOS = ("chelsea", "coffee")


def held_out_split(split: str) -> tuple[str, ...]:
    """Names of the embedded photos for ``split``: ``"eval"`` -> ``HELD_OUT_PHOTOS``, ``"train"`` -> the rest."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return HELD_OUT_PHOTOS if split == "eval" else tuple(n for n in EMBEDDED_PHOTOS if n not in HELD_OUT_PHOTOS)


class EmbeddedDataset(Dataset):
    """Random square crops (random photo, scale, position, horizontal flip) of the embedded photos, with a
    mask each: a tiny training set for demos and smoke runs that needs no download.

    ``ds[i]`` -> ``(image [3, S, S] in [-1, 1], mask [1, S, S])``. ``n`` is the epoch length. ``scale``:
    crop side as a fraction of the photo's short side. With ``seed`` set, item i is a fixed crop and mask
    (``Generator().manual_seed(seed + i)``), for evaluation. ``photos``: names from ``EMBEDDED_PHOTOS``
    to crop from (default all), e.g. ``held_out_split("train")`` to keep the evaluation photos unseen.
    """

    def __init__(self, image_size: int, mask_source, n: int = 1000, seed: int | None = None,
                 scale: tuple[float, float] = (0.3, 1.0), flip: bool = True,
                 photos: Sequence[str] | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale!r}")
        self.image_size, self.mask_source = image_size, _mask_source(mask_source)
        self.n, self.seed, self.scale, self.flip = n, seed, scale, flip
        names = EMBEDDED_PHOTOS if photos is None else tuple(photos)
        unknown = sorted(set(names) - set(EMBEDDED_PHOTOS))
        if unknown or not names:
            raise ValueError(f"photos must be a non-empty subset of {EMBEDDED_PHOTOS}; got {tuple(photos)!r}")
        self.photo_names = names
        self.photos = [embedded_photos()[EMBEDDED_PHOTOS.index(n)] for n in names]

    def __len__(self) -> int:
        return self.n

    def _crop(self, g: torch.Generator) -> torch.Tensor:
        photo = self.photos[int(torch.randint(len(self.photos), (), generator=g))]
        w, h = photo.size
        u = torch.rand(4, generator=g).tolist()
        side = max(1, round(min(w, h) * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])))
        left, top = round(u[1] * (w - side)), round(u[2] * (h - side))
        img = photo.crop((left, top, left + side, top + side)).resize((self.image_size,) * 2, Image.BICUBIC)
        image = to_tensor(img)
        return image.flip(-1) if self.flip and u[3] < 0.5 else image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for EmbeddedDataset of length {self.n}")
        g = _item_generator(self.seed, i)
        image = self._crop(g)
        mask = check_mask(self.mask_source(g), self.image_size).float()
        return image, mask


# ----------------------------------------------------------------------------------------------------
# from a configuration
# ----------------------------------------------------------------------------------------------------
def _slice(files: list, rng: tuple[int, int] | None) -> list:
    if rng is None:
        return files
    start, stop = rng
    out = files[start:stop]
    if not out:
        raise ValueError(f"range {rng} selects no files out of {len(files)}")
    return out


def _layout_files(data_cfg, split: str) -> list[Path]:
    """The sorted file list of ``data_cfg.root`` for a layout, before range slicing."""
    root, layout = data_cfg.root, data_cfg.layout
    if layout == "celeba":
        return celeba_split_files(root, "train" if split == "train" else "test")
    if layout == "places2":
        name = "places365_train_standard.txt" if split == "train" else "places365_val.txt"
        listed = Path(root).expanduser() / name
        return places2_files(root, listed) if listed.is_file() else list_images(root)
    if layout == "paris":
        return paris_files(root, split)
    if layout == "folder":
        return list_images(root)
    raise ValueError(f"unknown data layout {layout!r}; choose folder, celeba, places2 or paris")


def build_dataset(data_cfg, split: str = "train") -> Dataset:
    """The dataset for ``split`` in {"train", "eval"} yielding ``(image [3,S,S] in [-1,1], mask [1,S,S])``.

    ``data_cfg.root`` None = the embedded photos (``EmbeddedDataset``). Otherwise the layout's sorted file
    list, sliced by ``train_range`` / ``eval_range``. Eval: fixed masks from ``data_cfg.eval_seed``, no flip
    and no mask augmentation. Train: unreadable files are skipped with a warning unless
    ``data_cfg.skip_bad_images`` is False (``csa train --strict-images``).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train = split == "train"
    source = make_mask_source(data_cfg, train=train)
    seed = None if train else data_cfg.eval_seed
    flip = bool(data_cfg.flip) and train
    rng = data_cfg.train_range if train else data_cfg.eval_range
    if data_cfg.layout == "copytask":  # synthetic: training items from seed 0, evaluation from eval_seed
        start, stop = rng if rng is not None else ((0, 200_000) if train else (0, 256))
        return CopyTask.from_config(data_cfg, stop - start, seed=0 if train else data_cfg.eval_seed)
    if data_cfg.root is None:
        start, stop = rng if rng is not None else (0, 1000 if train else 32)
        seed = None if train else seed + start
        return EmbeddedDataset(data_cfg.image_size, source, n=stop - start, seed=seed, flip=flip)
    # The layout functions return paths that already start with the root: make them absolute, so that the
    # dataset's "root / file" join cannot repeat a relative root (``--data ../faces`` gave ../faces/../faces/...).
    files = [Path(f).absolute() for f in _slice(_layout_files(data_cfg, split), rng)]
    # Training skips an unreadable file (with a warning naming it) rather than ending a long run at
    # the step that reaches it; evaluation always raises, so that scores never silently cover fewer images.
    on_error = "skip" if train and getattr(data_cfg, "skip_bad_images", True) else "raise"
    # Framing augmentation (translation, zoom, colour) is for training only: evaluation keeps the preset's crop.
    augment = ((data_cfg.augment_translate, data_cfg.augment_scale, data_cfg.augment_colour) if train
               else (0.0, 0.0, 0.0))
    return InpaintingDataset(data_cfg.root, data_cfg.image_size, source, resize=data_cfg.resize,
                             files=files, flip=flip, seed=seed, crop_top=getattr(data_cfg, "crop_top", None),
                             on_error=on_error, augment=augment)


#: The face in scikit-image's ``astronaut`` photo (NASA, public domain) as (left, top, right, bottom),
#: framed like the ``celeba64`` crops (eyes at about row 27 of 64, 14 px apart; CelebA: row 29, 13 px).
ASTRONAUT_FACE_BOX = (125, 1, 345, 221)


def astronaut_face(size: int = 64) -> torch.Tensor:
    """A real face that ships with scikit-image: ``[3, size, size]`` in [-1, 1] (bicubic resize).

    Used where a face is needed without any dataset (tests, notebooks, ``make demo``): the shipped
    CelebA-64 model expects faces framed like this.
    """
    from skimage import data as skdata

    img = Image.fromarray(skdata.astronaut()).crop(ASTRONAUT_FACE_BOX)
    return to_tensor(img.resize((size, size), Image.BICUBIC))
