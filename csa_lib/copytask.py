"""The copy task: a synthetic inpainting problem that only attention can solve.

The Annotated Transformer teaches attention with a copy task; this is ours. Every image is a **periodic
texture**: a random tile of colour blocks repeated with a random period vector ``(P_y, P_x)``. The hole
hides a cell-aligned rectangle, and the hidden content is, pixel for pixel, the image shifted by a whole
number of periods, somewhere it is visible:

    image[y, x] = image[y + k P_y, x + l P_x]        for every integer k, l with both pixels inside

- **Nothing local predicts the hole.** The tile's colours are independent uniform draws, so the pixels
  next to the hole say nothing about the hole itself; continuing the border (biharmonic, a plain U-Net)
  can only reach the mean-colour level.
- **The surroundings say where the copy is.** A hole cell's neighbourhood repeats with the period, so the
  cell whose neighbourhood matches is the copy: exactly what CSA's search (``argmax`` of feature cosine
  over the known cells) can find.
- **Too much to carry through a bottleneck.** A tile holds up to ``(40/4)^2 = 100`` colour blocks (300
  numbers) and the period changes from image to image, so a network without attention would have to
  infer the period and route hundreds of values from the copy to the hole.
- **Cell-aligned.** Periods, hole and blocks sit on the 8-px grid of the CSA level (1/8 resolution), so
  the copy of a hole cell is exactly one known cell: ``offset(i) // 8`` is the true source in cells.

``CopyTask(n, image_size, seed)[i]`` -> ``(image [3,S,S] in [-1,1], mask [1,S,S] float, 1 = hole)``;
``offset(i)`` -> ``(dy, dx)`` pixels such that the true value at every hole pixel ``(y, x)`` is
``image[:, y + dy, x + dx]``, a known pixel. Item ``i`` depends only on ``(seed, i)``: the same on every
machine and every run, nothing downloaded.

:func:`oracle_fill` pastes the true copy (the ceiling: exact), :func:`copy_source_cells` gives the true
source cell of every hole cell (what the attention measurement compares CSA's choice with).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .config import COPY_KINDS

#: The CSA level's cell side in pixels (the layer works at 1/8 resolution, ``config.FEATURE_LEVELS``).
CELL = 8
#: Periods (pixels, per axis) and hole sides (cells) of the default task; at 64 px a hole is 2-3 cells a side.
DEFAULT_PERIODS = (16, 24, 32, 40)
DEFAULT_HOLE_CELLS = (2, 3)
#: ``"periodic"``: a periodic texture (every whole-period shift is a copy); ``"twin"``: a random mosaic in which
#: the hole and a ring around it repeat one other rectangle and its ring (one copy, anywhere).
#: ``"lattice"``: a periodic texture on a random sheared lattice, periods ``(P_y, s)`` and ``(0, P_x)`` with a
#: shear ``s`` (a multiple of 8 below ``P_x``): the copy's direction varies from image to image, not only its
#: distance, so a convolution cannot learn a few fixed shifts. (The list lives in config: one home per rule.)
KINDS = COPY_KINDS


@dataclass(frozen=True)
class CopyItem:
    """One drawn sample before it becomes tensors (all sizes in pixels)."""

    period: tuple[int, int]  # (P_y, P_x)
    hole: tuple[int, int, int, int]  # (top, left, height, width), multiples of CELL
    offset: tuple[int, int]  # (dy, dx) from a hole pixel to its visible copy
    shear: int = 0  # kind "lattice": the second period vector is (P_y, shear); 0 = a rectangular lattice


class CopyTask(Dataset):
    """Periodic random textures with one hidden, cell-aligned rectangle (see the module docstring).

    - ``n``: number of items (``len``); ``image_size`` ``S``: a power of two >= 32 (the networks' rule).
    - ``seed``: item ``i`` is drawn from ``torch.Generator().manual_seed(seed * 1_000_003 + i)``.
    - ``block``: side of one colour block in pixels (divides 8): 4 = 2x2 blocks per CSA cell.
    - ``periods``: the allowed periods per axis, multiples of 8 (drawn independently for y and x);
      default :data:`DEFAULT_PERIODS` below ``image_size``.
    - ``hole_cells``: the allowed hole sides in cells (drawn independently for height and width);
      default :data:`DEFAULT_HOLE_CELLS` up to half the image.
    """

    def __init__(self, n: int, image_size: int = 64, seed: int = 0, block: int = 4,
                 periods: tuple[int, ...] | None = None, hole_cells: tuple[int, ...] | None = None,
                 kind: str = "periodic", ring: int = CELL):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"CopyTask: n must be a positive integer, got {n!r}")
        if image_size < 32 or image_size & (image_size - 1):
            raise ValueError(f"CopyTask: image_size must be a power of two >= 32, got {image_size}")
        if block < 1 or CELL % block:
            raise ValueError(f"CopyTask: block must divide the cell side {CELL}, got {block}")
        if periods is None:  # default: 16..40 px, as far as the image allows
            periods = tuple(p for p in DEFAULT_PERIODS if p < image_size)
        if hole_cells is None:
            hole_cells = tuple(h for h in DEFAULT_HOLE_CELLS if h * CELL <= image_size // 2)
        periods, hole_cells = tuple(int(p) for p in periods), tuple(int(h) for h in hole_cells)
        if not periods or any(p % CELL or p < CELL or p >= image_size for p in periods):
            raise ValueError(f"CopyTask: periods must be multiples of {CELL} below image_size {image_size}, "
                             f"got {periods}")
        if not hole_cells or any(h < 1 or h * CELL > image_size // 2 for h in hole_cells):
            raise ValueError(f"CopyTask: hole_cells must be in [1, {image_size // (2 * CELL)}], got {hole_cells}")
        if kind not in KINDS:
            raise ValueError(f"CopyTask: kind must be one of {KINDS}, got {kind!r}")
        if not 0 < ring <= image_size // 4:
            raise ValueError(f"CopyTask: ring must be in [1, {image_size // 4}] pixels, got {ring}")
        self.kind, self.ring = kind, int(ring)
        self.n, self.image_size, self.seed, self.block = n, image_size, int(seed), block
        self.periods, self.hole_cells = periods, hole_cells

    @classmethod
    def from_config(cls, data_cfg, n: int, seed: int) -> "CopyTask":
        """The task a ``DataConfig`` with ``layout="copytask"`` describes (``copy_*`` fields), ``n`` items."""
        return cls(n, data_cfg.image_size, seed=seed, block=data_cfg.copy_block, kind=data_cfg.copy_kind,
                   periods=data_cfg.copy_periods, hole_cells=data_cfg.copy_hole_cells, ring=data_cfg.copy_ring)

    def __len__(self) -> int:
        return self.n

    def _generator(self, i: int) -> torch.Generator:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a CopyTask of {self.n} items")
        return torch.Generator().manual_seed(self.seed * 1_000_003 + i)

    def _pick(self, values: tuple[int, ...], g: torch.Generator) -> int:
        return values[int(torch.randint(len(values), (), generator=g))]

    def _draw(self, i: int) -> tuple[CopyItem, torch.Generator]:
        """Period, hole and offset of item ``i`` (the generator is left ready to draw the colours)."""
        g, S, c = self._generator(i), self.image_size, CELL
        if self.kind == "twin":
            return self._draw_twin(g), g
        for _ in range(1000):  # rejection: a hole whose copy lies fully inside the image (almost always 1 try)
            period = (self._pick(self.periods, g), self._pick(self.periods, g))
            shear = int(torch.randint(period[1] // c, (), generator=g)) * c if self.kind == "lattice" else 0
            h, w = self._pick(self.hole_cells, g) * c, self._pick(self.hole_cells, g) * c
            top = int(torch.randint(0, (S - h) // c + 1, (), generator=g)) * c
            left = int(torch.randint(0, (S - w) // c + 1, (), generator=g)) * c
            offset = _nearest_copy(period, (top, left, h, w), S, shear)
            if offset is not None:
                return CopyItem(period, (top, left, h, w), offset, shear), g
        raise RuntimeError(f"CopyTask item {i}: no hole with a visible copy after 1000 draws")  # not reached

    def _cell_rect(self, g: torch.Generator) -> tuple[int, int, int, int]:
        S, c = self.image_size, CELL
        h, w = self._pick(self.hole_cells, g) * c, self._pick(self.hole_cells, g) * c
        top = int(torch.randint(0, (S - h) // c + 1, (), generator=g)) * c
        left = int(torch.randint(0, (S - w) // c + 1, (), generator=g)) * c
        return top, left, h, w

    def _draw_twin(self, g: torch.Generator) -> CopyItem:
        """"twin": a hole and a source rectangle of the same size whose rings (``ring`` px around each,
        clipped to the image) do not overlap."""
        r, S = self.ring, self.image_size
        for _ in range(1000):
            top, left, h, w = self._cell_rect(g)
            stop, sleft, _, _ = self._cell_rect(g)  # the source's size is the hole's
            if stop + h > S or sleft + w > S:
                continue
            # the two grown rectangles [top - r, top + h + r) x [...] must be disjoint
            if abs(stop - top) >= h + 2 * r or abs(sleft - left) >= w + 2 * r:
                return CopyItem((0, 0), (top, left, h, w), (stop - top, sleft - left))
        raise RuntimeError("CopyTask: no room for two disjoint twins; use a larger image or smaller holes")

    def item(self, i: int) -> CopyItem:
        """The geometry of item ``i``: period, hole rectangle and offset."""
        return self._draw(i)[0]

    def offset(self, i: int) -> tuple[int, int]:
        """``(dy, dx)`` in pixels: hole pixel ``(y, x)`` of item ``i`` equals the known ``(y + dy, x + dx)``."""
        return self.item(i).offset

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        it, g = self._draw(i)
        S, b = self.image_size, self.block
        if self.kind == "twin":
            return self._twin_image(it, g)
        (py, px), (top, left, h, w) = it.period, it.hole
        tile = torch.rand(3, py // b, px // b, generator=g) * 2 - 1  # independent colours in [-1, 1]
        tile = tile.repeat_interleave(b, dim=1).repeat_interleave(b, dim=2)  # [3, P_y, P_x]
        # image[y, x] = tile[y mod P_y, (x - shear * (y // P_y)) mod P_x]: periods (0, P_x) and (P_y, shear)
        y = torch.arange(S)[:, None]
        x = torch.arange(S)[None, :]
        image = tile[:, y % py, (x - it.shear * (y // py)) % px].contiguous()
        mask = torch.zeros(1, S, S)
        mask[:, top:top + h, left:left + w] = 1.0
        return image, mask

    def _twin_image(self, it: CopyItem, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A mosaic of random colour blocks in which the hole and its ring repeat the source and its ring."""
        S, r = self.image_size, self.ring
        (top, left, h, w), (dy, dx) = it.hole, it.offset
        image = _blocks(g, S, self.block)
        # target rows/cols of the grown rectangle, clipped so that both the target and its source lie inside
        y0, y1 = max(top - r, -dy, 0), min(top + h + r, S - dy, S)
        x0, x1 = max(left - r, -dx, 0), min(left + w + r, S - dx, S)
        image[:, y0:y1, x0:x1] = image[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx].clone()
        mask = torch.zeros(1, S, S)
        mask[:, top:top + h, left:left + w] = 1.0
        return image, mask


def _blocks(g: torch.Generator, size: int, block: int) -> Tensor:
    """``[3, size, size]`` of independent uniform colours in [-1, 1], constant on ``block x block`` squares."""
    colours = torch.rand(3, size // block, size // block, generator=g) * 2 - 1
    return colours.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)


def _lattice_shifts(period: tuple[int, int], size: int, shear: int = 0):
    """Every lattice vector ``k (P_y, shear) + l (0, P_x)`` with both components inside ``(-size, size)``."""
    py, px = period
    for k in range(-(size // py), size // py + 1):
        for l in range(-(size // px) - abs(k) * shear // px - 1, size // px + abs(k) * shear // px + 2):
            dy, dx = k * py, k * shear + l * px
            if abs(dy) < size and abs(dx) < size:
                yield dy, dx


def _nearest_copy(period: tuple[int, int], hole: tuple[int, int, int, int], size: int,
                  shear: int = 0) -> tuple[int, int] | None:
    """The shortest lattice shift ``k (P_y, shear) + l (0, P_x)`` that moves the hole rectangle fully inside
    the image and off itself, or None. Ties: the first in the scan order (smaller ``|dy| + |dx|``, then dy, dx)."""
    top, left, h, w = hole
    best = None
    for dy, dx in _lattice_shifts(period, size, shear):
        if (dy, dx) == (0, 0):
            continue
        inside = 0 <= top + dy and top + dy + h <= size and 0 <= left + dx and left + dx + w <= size
        disjoint = abs(dy) >= h or abs(dx) >= w
        if inside and disjoint:
            key = (abs(dy) + abs(dx), dy, dx)
            if best is None or key < best[0]:
                best = (key, (dy, dx))
    return None if best is None else best[1]


def oracle_fill(dataset: CopyTask, i: int) -> Tensor:
    """Item ``i`` with its hole filled by the visible copy (the ceiling; equals the image exactly)."""
    image, mask = dataset[i]
    dy, dx = dataset.offset(i)
    shifted = torch.roll(image, shifts=(-dy, -dx), dims=(1, 2))  # shifted[y, x] = image[y + dy, x + dx]
    return image * (1 - mask) + shifted * mask


def copy_source_cells(dataset: CopyTask, i: int) -> tuple[Tensor, Tensor]:
    """True source of every hole cell of item ``i`` at the CSA level (flat raster indices, ``S/8`` wide).

    Returns ``(hole_index [T], source_index [T])`` in the raster order of the hole cells (the order CSA
    generates them in), so that ``source_index[t]`` is the cell that holds the content of ``hole_index[t]``.
    Every periodic copy is equally right; this one is ``offset(i)`` (``copies_of_cell`` lists them all).
    """
    it = dataset.item(i)
    (top, left, h, w), (dy, dx) = it.hole, it.offset
    W = dataset.image_size // CELL
    rows = torch.arange(top // CELL, (top + h) // CELL)
    cols = torch.arange(left // CELL, (left + w) // CELL)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    hole = (r * W + c).flatten()
    source = ((r + dy // CELL) * W + (c + dx // CELL)).flatten()
    return hole, source


def copies_of_cell(dataset: CopyTask, i: int, cell: int) -> Tensor:
    """Every known cell of item ``i`` whose content equals hole cell ``cell`` (flat index), i.e. all
    whole-period shifts of it that land on a known cell. The attention measurement counts any of them
    as the true source."""
    it = dataset.item(i)
    top, left, h, w = it.hole
    W = H = dataset.image_size // CELL
    y, x = divmod(int(cell), W)
    if dataset.kind == "twin":  # one copy: the source rectangle
        dy, dx = it.offset
        return torch.tensor([(y + dy // CELL) * W + x + dx // CELL], dtype=torch.long)
    out = []
    for dy, dx in _lattice_shifts(it.period, dataset.image_size, it.shear):
        yy, xx = y + dy // CELL, x + dx // CELL
        in_hole = top // CELL <= yy < (top + h) // CELL and left // CELL <= xx < (left + w) // CELL
        if 0 <= yy < H and 0 <= xx < W and not in_hole:
            out.append(yy * W + xx)
    return torch.tensor(sorted(out), dtype=torch.long)
