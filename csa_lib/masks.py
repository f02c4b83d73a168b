"""Hole masks: centre squares, random rectangles, free-form strokes, folders of PNGs, and the
feature-resolution mask that the CSA layer uses.

Conventions (whole project): a mask is a float tensor with **1 = hole, 0 = known**, shaped ``[1, H, W]``
for one sample or ``[B, 1, H, W]`` for a batch. Feature-resolution masks are **bool** ``[B, 1, h, w]``.

Randomness comes only from a ``torch.Generator`` (or an int seed turned into one), so a mask is a pure
function of its seed: sample ``i`` of an evaluation set can use ``torch.Generator().manual_seed(seed + i)``
and get the same hole on every machine. Strokes are drawn with ``PIL.ImageDraw`` (no OpenCV).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .config import FEATURE_LEVELS, FEATURE_THRESHOLD, MASK_KINDS, OFFICIAL_CENTER_HOLE, check_choice

Size = int | tuple[int, int]
GeneratorLike = torch.Generator | int | None
MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".webp")


# ----------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------
def _hw(image_size: Size) -> tuple[int, int]:
    """``int`` or ``(H, W)`` -> ``(H, W)``, with a clear error for nonsense."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ValueError(f"image_size must be a positive int or (H, W) of ints, got {image_size!r}")
    return h, w


def as_generator(generator: GeneratorLike) -> torch.Generator | None:
    """An int seed becomes a fresh seeded ``torch.Generator``; a generator or None passes through
    (None means torch's global random state)."""
    if isinstance(generator, bool):
        raise TypeError("generator must be a torch.Generator, an int seed or None, not a bool")
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator)}")


def _uniform(g: torch.Generator | None, a: float, b: float) -> float:
    """One float uniform in [a, b) drawn from ``g``."""
    return a + (b - a) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator | None, low: int, high: int) -> int:
    """One int uniform in [low, high) drawn from ``g``."""
    return int(torch.randint(low, high, (), generator=g).item())


def _check_ratio_range(hole_ratio: Sequence[float], h: int, w: int) -> tuple[int, int]:
    """Validate ``(lo, hi)`` and return the admissible hole-pixel counts ``[n_lo, n_hi]``."""
    if len(hole_ratio) != 2:
        raise ValueError(f"hole_ratio must be a (low, high) pair, got {hole_ratio!r}")
    lo, hi = float(hole_ratio[0]), float(hole_ratio[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"hole_ratio must satisfy 0 <= low <= high <= 1, got {hole_ratio!r}")
    n_lo, n_hi = math.ceil(lo * h * w - 1e-9), math.floor(hi * h * w + 1e-9)
    if n_lo > n_hi:
        raise ValueError(f"hole_ratio {hole_ratio!r} admits no whole number of pixels on a {h}x{w} mask")
    return n_lo, n_hi


def _to_mask(arr: np.ndarray) -> torch.Tensor:
    """bool/0-1 array ``[H, W]`` -> float mask ``[1, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]


# ----------------------------------------------------------------------------------------------------
# validation and statistics
# ----------------------------------------------------------------------------------------------------
def check_mask(mask: torch.Tensor, image_size: Size | None = None, name: str = "mask") -> torch.Tensor:
    """Raise a clear error unless ``mask`` is a binary hole mask ``[1, H, W]`` or ``[B, 1, H, W]``
    (float or bool, values in {0, 1}) of the given ``image_size``; returns ``mask`` unchanged."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() not in (3, 4) or mask.shape[-3] != 1:
        raise ValueError(f"{name} must have shape [1, H, W] or [B, 1, H, W], got {list(mask.shape)}")
    if mask.is_complex() or not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise ValueError(f"{name} must be a float or bool tensor, got dtype {mask.dtype}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        bad = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
        raise ValueError(f"{name} must be binary (0 = known, 1 = hole); found values such as {bad}")
    if image_size is not None and tuple(mask.shape[-2:]) != _hw(image_size):
        raise ValueError(f"{name} is {tuple(mask.shape[-2:])} but the image size is {_hw(image_size)}")
    return mask


def hole_ratio(mask: torch.Tensor) -> float | torch.Tensor:
    """Fraction of hole pixels: a float for ``[H, W]`` / ``[1, H, W]``, a ``Tensor[B]`` for ``[B, 1, H, W]``."""
    if mask.dim() == 4:
        return mask.float().flatten(1).mean(1)
    if mask.dim() in (2, 3):
        return mask.float().mean().item()
    raise ValueError(f"mask must be [H, W], [1, H, W] or [B, 1, H, W], got {list(mask.shape)}")


def ratio_bin(ratio: float, width: float = 0.1) -> str:
    """Label of the hole-ratio bin, NVIDIA-style: ``0.15 -> "10-20%"`` (1.0 falls in the last bin)."""
    n_bins = round(1 / width)
    k = min(int(ratio / width + 1e-9), n_bins - 1)
    return f"{round(100 * k * width)}-{round(100 * (k + 1) * width)}%"


# ----------------------------------------------------------------------------------------------------
# centre and rectangles
# ----------------------------------------------------------------------------------------------------
def center_mask(image_size: Size, hole_size: int | None = None) -> torch.Tensor:
    """Centred square hole ``[1, H, W]``; rows/cols ``[(S-h)//2, (S-h)//2 + h)`` are 1.

    ``hole_size`` None = ``round(120/256 * S)`` (the official default: 120 on 256). The paper's evaluation
    protocol uses 128 on 256 (``config.PAPER_CENTER_HOLE``).
    """
    h, w = _hw(image_size)
    if hole_size is None:
        hole_size = round(OFFICIAL_CENTER_HOLE / 256 * min(h, w))
    if not isinstance(hole_size, int) or not 0 < hole_size <= min(h, w):
        raise ValueError(f"hole_size must be an int in [1, {min(h, w)}], got {hole_size!r}")
    mask = torch.zeros(1, h, w)
    top, left = (h - hole_size) // 2, (w - hole_size) // 2
    mask[:, top:top + hole_size, left:left + hole_size] = 1.0
    return mask


def _random_rect(g, h: int, w: int, area: float) -> tuple[int, int, int, int]:
    """A rectangle ``(top, left, rh, rw)`` of about ``area`` pixels, aspect ratio in [1/2, 2]."""
    aspect = math.exp(_uniform(g, -math.log(2), math.log(2)))
    rh = min(h, max(1, round(math.sqrt(area * aspect))))
    rw = min(w, max(1, round(area / rh)))
    return _randint(g, 0, h - rh + 1), _randint(g, 0, w - rw + 1), rh, rw


def _exact_rect(g, h: int, w: int, n_lo: int, n_hi: int) -> torch.Tensor:
    """Fallback: one rectangle whose area lies in [n_lo, n_hi] pixels (exists for most ranges)."""
    options = [(rh, max(1, math.ceil(n_lo / rh))) for rh in range(1, h + 1)]
    options = [(rh, rw) for rh, rw in options if rw <= w and n_lo <= rh * rw <= n_hi]
    if not options:
        raise ValueError(f"no rectangle of {n_lo}..{n_hi} pixels fits in {h}x{w}")
    rh, rw = options[_randint(g, 0, len(options))]
    top, left = _randint(g, 0, h - rh + 1), _randint(g, 0, w - rw + 1)
    mask = torch.zeros(1, h, w)
    mask[:, top:top + rh, left:left + rw] = 1.0
    return mask


def random_rect_mask(image_size: Size, hole_ratio: Sequence[float] = (0.1, 0.4),
                     generator: GeneratorLike = None, max_rects: int = 3) -> torch.Tensor:
    """1 to ``max_rects`` (possibly overlapping) random rectangles, ``[1, H, W]`` float.

    The hole ratio is guaranteed to lie in ``hole_ratio = (low, high)``: a target ratio is drawn uniformly
    from the range and rectangles are added until it is reached; a draw that ends outside the range is
    redrawn, and after 20 failures a single rectangle of admissible area is used.
    """
    h, w = _hw(image_size)
    n_lo, n_hi = _check_ratio_range(hole_ratio, h, w)
    if max_rects < 1:
        raise ValueError(f"max_rects must be >= 1, got {max_rects}")
    g = as_generator(generator)
    for _ in range(20):
        target = _uniform(g, n_lo, n_hi + 1)
        mask = torch.zeros(1, h, w)
        for k in range(max_rects):
            remaining = max_rects - k
            top, left, rh, rw = _random_rect(g, h, w, (target - mask.sum().item()) / remaining)
            mask[:, top:top + rh, left:left + rw] = 1.0
            if mask.sum().item() >= min(target, n_hi):
                break
        if n_lo <= mask.sum().item() <= n_hi:
            return mask
    return _exact_rect(g, h, w, n_lo, n_hi)


# ----------------------------------------------------------------------------------------------------
# free-form strokes (DeepFill v2 style, drawn with PIL)
# ----------------------------------------------------------------------------------------------------
def _draw_stroke(draw: ImageDraw.ImageDraw, g, h: int, w: int, scale: float) -> None:
    """One brush stroke: a polyline of 4..12 segments with a random walk in angle, drawn as thick lines
    with round joints (discs). ``scale`` shrinks width and length (used when a stroke overshoots)."""
    s = min(h, w)
    width = max(1, round(_uniform(g, 0.04, 0.10) * s * scale))
    y, x = _uniform(g, 0, h), _uniform(g, 0, w)
    angle = _uniform(g, 0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(_randint(g, 4, 13)):
        angle += _uniform(g, -0.8, 0.8)  # a gentle random walk gives curved, brush-like strokes
        length = _uniform(g, 0.05, 0.2) * s * scale
        x = min(max(x + length * math.cos(angle), 0), w - 1)
        y = min(max(y + length * math.sin(angle), 0), h - 1)
        points.append((x, y))
    draw.line(points, fill=1, width=width)
    r = width / 2
    for px, py in points:  # round caps and joints, as a real brush leaves
        draw.ellipse((px - r, py - r, px + r, py + r), fill=1)


def _fill_to_count(arr: np.ndarray, n_lo: int, g) -> np.ndarray:
    """Rare fallback: grow the hole by random known pixels next to it until it has ``n_lo`` pixels."""
    arr = arr.copy()
    while arr.sum() < n_lo:
        grown = arr.copy()  # one step of 4-neighbour dilation: candidate pixels touch the hole
        grown[1:] |= arr[:-1]; grown[:-1] |= arr[1:]; grown[:, 1:] |= arr[:, :-1]; grown[:, :-1] |= arr[:, 1:]
        cand = np.flatnonzero(grown & ~arr) if arr.any() else np.flatnonzero(~arr)
        pick = torch.randperm(len(cand), generator=g)[: n_lo - int(arr.sum())].numpy()
        arr.flat[cand[pick]] = True
    return arr


def irregular_mask(image_size: Size, hole_ratio: Sequence[float] = (0.1, 0.6),
                   generator: GeneratorLike = None, max_strokes: int = 200) -> torch.Tensor:
    """Free-form brush-stroke mask ``[1, H, W]`` float whose hole ratio lies in ``hole_ratio``.

    A target ratio is drawn uniformly from the range; strokes are added until the target is reached. A stroke
    that would push the ratio above ``high`` is rejected and the next one drawn smaller, so the result always
    lies inside ``[low, high]`` (if strokes ever run out, the hole is grown pixel by pixel to ``low``).
    """
    h, w = _hw(image_size)
    n_lo, n_hi = _check_ratio_range(hole_ratio, h, w)
    g = as_generator(generator)
    target = _uniform(g, n_lo, n_hi + 1)
    canvas = Image.new("1", (w, h), 0)
    count, scale = 0, 1.0
    for _ in range(max_strokes):
        if count >= target:
            break
        trial = canvas.copy()
        _draw_stroke(ImageDraw.Draw(trial), g, h, w, scale)
        n = int(np.count_nonzero(np.asarray(trial)))
        if n > n_hi:
            scale *= 0.7  # too big: keep the canvas, try a smaller stroke
            continue
        canvas, count = trial, n
    arr = np.asarray(canvas).astype(bool)
    if count < n_lo:
        arr = _fill_to_count(arr, n_lo, g)
    return _to_mask(arr)


# ----------------------------------------------------------------------------------------------------
# masks from a folder of PNGs (NVIDIA irregular mask set)
# ----------------------------------------------------------------------------------------------------
def _augment(mask: torch.Tensor, g) -> torch.Tensor:
    """Random horizontal/vertical flips and a random multiple of 90 degrees (square masks only)."""
    if _randint(g, 0, 2):
        mask = mask.flip(-1)
    if _randint(g, 0, 2):
        mask = mask.flip(-2)
    k = _randint(g, 0, 4)
    if k and mask.shape[-1] == mask.shape[-2]:
        mask = torch.rot90(mask, k, dims=(-2, -1))
    return mask.contiguous()


class MaskFolder:
    """Hole masks from a folder of images (white = hole), e.g. the NVIDIA irregular mask set.

    Files (``.png .bmp .jpg .jpeg .webp``, any case, searched recursively, sorted) are read as grayscale,
    binarised at ``> 127`` and resized with nearest neighbour to ``image_size``.

    - ``mf[i]`` -> ``[1, H, W]`` float, the i-th file as is (deterministic, no augmentation).
    - ``mf.sample(generator)`` / ``mf(generator)`` -> ``[1, H, W]``: a random file, with random flips and
      90-degree rotations when ``augment=True``. This makes a ``MaskFolder`` a mask source.
    - ``mf.ratio_bin(i)`` -> ``"10-20%"`` etc., from the file's hole ratio at its own resolution.
    """

    def __init__(self, root: str | Path, image_size: Size, augment: bool = True):
        self.root = Path(root).expanduser()
        self.size = _hw(image_size)
        self.augment = augment
        if not self.root.exists():
            raise FileNotFoundError(f"mask folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"mask folder is not a directory: {self.root}")
        self.paths = sorted(p for p in self.root.rglob("*")
                            if p.suffix.lower() in MASK_EXTENSIONS and p.is_file())
        if not self.paths:
            raise ValueError(f"no mask images ({', '.join(MASK_EXTENSIONS)}) found in {self.root}")
        self._ratios: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("L")
        except Exception as e:  # PIL raises several types; name the file whatever it was
            raise OSError(f"cannot read mask file {path}: {e}") from e

    def __getitem__(self, i: int) -> torch.Tensor:
        """The i-th mask file, binarised (> 127 = hole) and nearest-resized: ``[1, H, W]`` float in {0, 1}."""
        im = self._read(i)
        if im.size != (self.size[1], self.size[0]):
            im = im.resize((self.size[1], self.size[0]), Image.NEAREST)
        return _to_mask(np.asarray(im) > 127)

    def sample(self, generator: GeneratorLike = None) -> torch.Tensor:
        """A random mask ``[1, H, W]`` (augmented when ``augment=True``), drawn from ``generator``."""
        g = as_generator(generator)
        mask = self[_randint(g, 0, len(self))]
        return _augment(mask, g) if self.augment else mask

    __call__ = sample

    def hole_ratio(self, i: int) -> float:
        """Hole ratio of file i at its native resolution (cached)."""
        if i not in self._ratios:
            self._ratios[i] = float((np.asarray(self._read(i)) > 127).mean())
        return self._ratios[i]

    def ratio_bin(self, i: int) -> str:
        """NVIDIA-style bin label of file i, ``"0-10%"``, ``"10-20%"``, ..., ``"50-60%"``, ..."""
        return ratio_bin(self.hole_ratio(i))

    def indices_in_bin(self, label: str) -> list[int]:
        """Indices of the files whose ``ratio_bin`` is ``label`` (reads every file once, then cached)."""
        return [i for i in range(len(self)) if self.ratio_bin(i) == label]


# ----------------------------------------------------------------------------------------------------
# mask sources for datasets
# ----------------------------------------------------------------------------------------------------
MaskSource = Callable[[torch.Generator | None], torch.Tensor]


def fixed_mask(mask: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
    """Mask source that always returns (a copy of) ``mask`` ``[1, H, W]``; ``generator`` is ignored."""
    return mask.clone()


def make_mask_source(data_cfg, train: bool = True) -> MaskSource:
    """Callable ``source(generator) -> [1, H, W]`` for ``data_cfg.masks``, one of
    :data:`csa_lib.config.MASK_KINDS` (``"center"``, ``"rect"``, ``"irregular"``, ``"folder"``).
    ``train=False`` turns off folder-mask augmentation."""
    # partial objects rather than lambdas: they pickle, so DataLoader workers can be spawned (macOS, Windows)
    size, kind, ratio = data_cfg.image_size, data_cfg.masks, tuple(data_cfg.hole_ratio)
    check_choice("data.masks", kind, MASK_KINDS)
    if kind == "center":
        return functools.partial(fixed_mask, center_mask(size, data_cfg.hole_size))
    if kind == "rect":
        return functools.partial(random_rect_mask, size, ratio)
    if kind == "irregular":
        return functools.partial(irregular_mask, size, ratio)
    if not data_cfg.mask_dir:  # kind == "folder"
        raise ValueError("masks='folder' needs data.mask_dir (a folder of mask PNGs, white = hole)")
    return MaskFolder(data_cfg.mask_dir, size, augment=train)


# ----------------------------------------------------------------------------------------------------
# feature-resolution mask (docs/method.md, "Architecture")
# ----------------------------------------------------------------------------------------------------
def feature_mask(mask: torch.Tensor, levels: int = FEATURE_LEVELS,
                 threshold: float = FEATURE_THRESHOLD) -> torch.Tensor:
    """Hole mask at 1/2**levels resolution, the official way: ``levels`` 4x4 stride-2 convolutions with all
    weights 1/16 and zero padding 1 (no threshold in between), then ``> threshold``.

    mask: ``[B, 1, H, W]``, ``[1, H, W]`` or ``[H, W]``, float/bool in {0, 1}, H and W divisible by
    2**levels. Returns bool ``[B, 1, H / 2**levels, W / 2**levels]`` (B = 1 for unbatched input).
    A 120x120 centre hole on 256 gives 252 hole positions at 32x32; a 128x128 hole gives 256.
    """
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        mask = mask[None]
    check_mask(mask)
    m = mask.float() if mask.dim() == 4 else mask.float()[None]
    step = 2 ** levels
    if levels < 0 or m.shape[-2] % step or m.shape[-1] % step:
        raise ValueError(f"mask size {tuple(m.shape[-2:])} must be divisible by 2**levels = {step}")
    # Averages of 16 values stay exact in float32 (multiples of 1/16**levels), so counts are reproducible.
    weight = torch.full((1, 1, 4, 4), 1 / 16, dtype=m.dtype, device=m.device)
    for _ in range(levels):
        m = F.conv2d(m, weight, stride=2, padding=1)
    return m > threshold


def border_distance(mask: Tensor) -> Tensor:
    """Chessboard distance of every hole pixel to the nearest known pixel: ``[B,1,H,W]`` long, 0 outside.

    mask ``[B,1,H,W]`` (1 = hole). A hole pixel that touches a known pixel (also diagonally) has distance
    1, the next ring 2, and so on; computed by repeated 3x3 erosions of the hole.
    """
    hole = (mask > 0.5).float()
    dist = torch.zeros_like(hole)
    while hole.any():
        dist += hole
        hole = -F.max_pool2d(-hole, 3, stride=1, padding=1)  # erosion: a pixel stays if all 8 neighbours are holes
    return dist.long()
