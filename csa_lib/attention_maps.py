"""Reading an attention record: sources, offsets, rows, the chain's balance, as tensors.

Everything here turns a ``CSAAttention`` record (``csa_lib.csa``: the hole cells of each image in chain
order, their sources ``c(p)`` and the coefficients ``a_t, b_t``) or contextual attention's score maps
(``csa_lib.peers``) into plain tensors on the CPU: dense source maps, offset fields, attention rows and
heat maps, the chain's balance. Nothing here draws (``csa_lib.viz`` draws these), runs a network
(``csa_lib.attention_stats.run_with_attention_input`` runs a generator and catches its record) or
compares with chance (``csa_lib.attention_stats``).

Conventions
-----------
- **Grids and sources**: the attention layer works on an ``h x w`` grid (1/8 of the image); a position
  is a flat raster index ``y * w + x``; a source map is long ``[h*w]`` with ``-1`` = no source (known
  positions, holes without a valid source).
- **Offsets** are ``[2, H, W]`` float tensors in the order ``(dy, dx)``: the source position minus the
  hole position, in cells of the grid they live on (rows grow downwards, columns to the right). Known
  positions, and holes without a source, have offset 0. In optical-flow notation ``u = dx``, ``v = dy``.
- **Feature grid vs image**: cell ``(y, x)`` covers image pixels ``[y*s, (y+1)*s) x [x*s, (x+1)*s)``
  with stride ``s = H / h`` (:func:`grid_stride`). Maps are brought to image space by nearest-neighbour
  upsampling (:func:`upsample_map`); offsets are multiplied by ``s`` (:func:`upsample_offsets`).

Attention rows and what they sum to
-----------------------------------
CSA's chain writes every generated vector as ``m_t = sum_q w_t[q] f_q`` with ``w_1 = e_{c(p_1)}`` and
``w_t = a_t w_{t-1} + b_t e_{c(p_t)}``, ``a_t = d_t/(d_t+s_t)``, ``b_t = s_t/(d_t+s_t)``. Since
``a_t + b_t = 1``, every row sums to 1 by induction, so no renormalisation is needed (or done):

- ``semantics="paper"`` (``csa_lib.csa``) clamps both scores at 0 before the ratio, so ``a_t, b_t`` lie
  in [0, 1]: the rows are *convex* blends, non-negative, summing to 1 -- a probability map.
- ``semantics="official"`` has no guard: with signed features ``d_t`` can be negative, so ``a_t < 0``,
  ``b_t > 1`` (or huge, near ``d_t + s_t = 0``) happen. The rows still sum to 1 (up to rounding) but are
  *affine* blends with negative entries.

:func:`attention_heatmap` keeps the signed weights and only spreads each cell's weight over its
``s*s`` pixels, so the map sums to the row sum (1). Contextual attention's rows are softmax weights:
non-negative and summing to 1 over the valid sources (``csa_lib.peers``), so :func:`contextual_heatmap`
is a probability map as well.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["offsets_from_sources", "csa_sources", "attention_offsets", "hole_map", "contextual_sources",
           "contextual_offsets", "image_hw", "grid_stride", "upsample_offsets", "upsample_map", "hole_step",
           "chain_weights", "attention_row", "attention_heatmap", "contextual_heatmap", "chain_balance",
           "chain_predecessors", "neighbour_coherence"]


# --------------------------------------------------------------------------------------------------
# Offsets and sources
# --------------------------------------------------------------------------------------------------


def offsets_from_sources(source: Any, size: tuple[int, int]) -> torch.Tensor:
    """Offsets ``[2, h, w]`` (dy, dx) from a dense source map.

    Args:
        source: long ``[h*w]`` (or ``[h, w]``): flat raster index ``y*w + x`` of the position each
            position copies from, ``-1`` = none (known positions); offset 0 there.
        size: ``(h, w)`` of the grid.
    """
    h, w = size
    src = torch.as_tensor(source).long().reshape(-1)
    if src.numel() != h * w:
        raise ValueError(f"source has {src.numel()} entries but size {size} needs {h * w}")
    if src.numel() and (int(src.max()) >= h * w or int(src.min()) < -1):
        raise ValueError(f"source indices must be -1 (none) or in [0, h*w = {h * w})")
    pos = torch.arange(h * w, device=src.device)  # on the source's device: a CUDA source works too
    valid = src >= 0
    dy = torch.where(valid, src.div(w, rounding_mode="floor") - pos // w, 0)
    dx = torch.where(valid, src.remainder(w) - pos % w, 0)
    return torch.stack([dy, dx]).float().reshape(2, h, w)


def _holes(att, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(T, hole_index[T], source[T]) of image ``i`` of a CSAAttention record, on the CPU."""
    if not 0 <= i < att.count.shape[0]:
        raise IndexError(f"image index {i} out of range for a batch of {att.count.shape[0]}")
    T = int(att.count[i])
    return T, att.hole_index[i, :T].long().cpu(), att.source[i, :T].long().cpu()


def csa_sources(att, i: int = 0) -> torch.Tensor:
    """Dense source map ``[h*w]`` long of image ``i``: ``c(p)`` at holes, ``-1`` at known positions."""
    h, w = att.size
    T, hole_index, source = _holes(att, i)
    out = torch.full((h * w,), -1, dtype=torch.long)
    out[hole_index] = source
    return out


def attention_offsets(att, i: int = 0) -> torch.Tensor:
    """CSA's search result as offsets ``[2, h, w]`` (dy, dx) on the feature grid; zero at known positions."""
    return offsets_from_sources(csa_sources(att, i), att.size)


def hole_map(att, i: int = 0) -> torch.Tensor:
    """Bool ``[h, w]``: True at the hole positions of image ``i``."""
    h, w = att.size
    out = torch.zeros(h * w, dtype=torch.bool)
    out[_holes(att, i)[1]] = True
    return out.reshape(h, w)


def contextual_sources(scores: torch.Tensor, hole: torch.Tensor, i: int = 0) -> torch.Tensor:
    """Argmax source of contextual attention, ``[h*w]`` long, ``-1`` outside the hole.

    Args:
        scores: ``[B, h*w (sources), h, w]`` softmax weights from ``ContextualAttention(...,
            return_attention=True)``.
        hole: bool ``[B, 1, h, w]``, ``[h, w]`` (or anything reshapeable to ``[h*w]`` for image ``i``).
    """
    if scores.ndim != 4 or scores.shape[1] != scores.shape[2] * scores.shape[3]:
        raise ValueError(f"scores must be [B, h*w, h, w]; got {tuple(scores.shape)}")
    best_w, src = scores[i].detach().cpu().flatten(1).max(0)  # [h*w]: best source of every position
    hole_i = hole[i] if hole.ndim == 4 else hole
    # All-zero scores mean "no valid source" (peers.ContextualAttention): -1, as for known positions.
    return torch.where(hole_i.reshape(-1).bool().cpu() & (best_w > 0), src, -1)


def contextual_offsets(scores: torch.Tensor, hole: torch.Tensor, i: int = 0) -> torch.Tensor:
    """Contextual attention's argmax offsets ``[2, h, w]`` (dy, dx), zero outside the hole."""
    return offsets_from_sources(contextual_sources(scores, hole, i), tuple(scores.shape[2:]))


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an image size given as one int (a square) or a pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def grid_stride(size: tuple[int, int], image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(sy, sx)``: image pixels per cell of the ``size = (h, w)`` grid; the image must be a whole multiple."""
    H, W = image_hw(image_size)
    h, w = size
    if H % h or W % w:
        raise ValueError(f"image size {(H, W)} is not a whole multiple of the grid {size}")
    return H // h, W // w


def upsample_offsets(offsets: torch.Tensor, image_size: int | Sequence[int]) -> torch.Tensor:
    """Offsets ``[2, h, w]`` on the feature grid -> ``[2, H, W]`` in image pixels (nearest, times the stride)."""
    sy, sx = grid_stride(tuple(offsets.shape[1:]), image_size)
    up = offsets.repeat_interleave(sy, 1).repeat_interleave(sx, 2)
    return up * torch.tensor([sy, sx], dtype=up.dtype).view(2, 1, 1)


def upsample_map(m: torch.Tensor, image_size: int | Sequence[int], preserve_sum: bool = False) -> torch.Tensor:
    """A ``[h, w]`` map -> ``[H, W]`` by nearest upsampling; ``preserve_sum`` divides by the cell area."""
    sy, sx = grid_stride(tuple(m.shape), image_size)
    up = m.repeat_interleave(sy, 0).repeat_interleave(sx, 1)
    return up / (sy * sx) if preserve_sum else up


# --------------------------------------------------------------------------------------------------
# The chain: rows, predecessors, balance
# --------------------------------------------------------------------------------------------------


def hole_step(att, i: int, y: int, x: int) -> int | None:
    """Chain step ``t`` (0-based) of feature position ``(y, x)`` of image ``i``; None if it is known."""
    h, w = att.size
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"position {(y, x)} outside the {h}x{w} feature grid")
    T, hole_index, _ = _holes(att, i)
    hit = (hole_index == y * w + x).nonzero()
    return int(hit[0, 0]) if hit.numel() else None


def chain_weights(att, i: int, t: int) -> torch.Tensor:
    """Weight ``[t+1]`` (float64) that step ``t``'s row gives to the source chosen at each step ``j <= t``.

    Unrolling ``w_t = a_t w_{t-1} + b_t e_{c(p_t)}`` gives ``weight_j = b_j * prod_{k=j+1..t} a_k``
    (``b_1 = 1``): the own source gets ``b_t``, the predecessor's ``a_t b_{t-1}``, and so on. These sum
    to 1 because ``a_k + b_k = 1``.
    """
    T = int(att.count[i])
    if not 0 <= t < T:
        raise IndexError(f"chain step {t} out of range: image {i} has {T} hole positions")
    a = att.a[i, : t + 1].detach().double().cpu()
    b = att.b[i, : t + 1].detach().double().cpu()
    # suffix products of a: tail[j] = prod_{k=j+1..t} a_k, with tail[t] = 1
    tail = torch.ones(t + 1, dtype=torch.float64)
    if t > 0:
        tail[:-1] = torch.flip(torch.cumprod(torch.flip(a[1:], [0]), 0), [0])
    return b * tail


def attention_row(att, i: int, t: int) -> torch.Tensor:
    """Dense attention row ``w_t`` ``[h*w]`` of chain step ``t`` of image ``i``.

    Uses ``att.rows`` when the layer was run with ``return_rows=True``; otherwise rebuilds the row from
    the stored sources and coefficients with :func:`chain_weights` (same numbers, O(t) work).
    """
    if getattr(att, "rows", None) is not None:
        T = int(att.count[i])
        if not 0 <= t < T:
            raise IndexError(f"chain step {t} out of range: image {i} has {T} hole positions")
        return att.rows[i, t].detach().double().cpu()
    h, w = att.size
    _, _, source = _holes(att, i)
    row = torch.zeros(h * w, dtype=torch.float64)
    return row.index_add_(0, source[: t + 1], chain_weights(att, i, t))


def attention_heatmap(att, i: int, t: int, image_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Where chain step ``t`` of image ``i`` takes its feature from, as a map over the image.

    Returns ``[H, W]`` float64 (``[h, w]`` when ``image_size`` is None): the row ``w_t`` reshaped to
    the grid and spread evenly over each cell's pixels, so the map sums to the row sum, which is 1
    (see the module docstring). Non-negative in the paper semantics; entries can be negative in the
    official one (affine, not convex, blends).
    """
    h, w = att.size
    m = attention_row(att, i, t).reshape(h, w)
    return m if image_size is None else upsample_map(m, image_size, preserve_sum=True)


def contextual_heatmap(scores: torch.Tensor, i: int, y: int, x: int,
                       image_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Contextual attention's softmax row for feature position ``(y, x)`` as a map that sums to 1."""
    h, w = scores.shape[2:]
    m = scores[i, :, y, x].detach().double().cpu().reshape(h, w)
    return m if image_size is None else upsample_map(m, image_size, preserve_sum=True)


def chain_balance(att, i: int = 0, fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a_map, b_map)``, each ``[h, w]``: per hole, the weight on the previously generated vector
    (``a_t``, "continue the patch") and on its own best context match (``b_t``, "copy"); ``fill`` at
    known positions. ``a_t + b_t = 1``; the first hole has ``a = 0, b = 1``."""
    h, w = att.size
    T, hole_index, _ = _holes(att, i)
    maps = []
    for coef in (att.a, att.b):
        m = torch.full((h * w,), fill, dtype=torch.float64)
        m[hole_index] = coef[i, :T].detach().double().cpu()
        maps.append(m.reshape(h, w))
    return maps[0], maps[1]


def chain_predecessors(att, i: int, t: int, k: int = 3) -> list[dict]:
    """Step ``t`` and up to ``k`` steps before it: dicts with ``t``, ``pos`` and ``source`` as
    ``(y, x)`` feature cells, and ``weight`` = the weight that step ``t``'s row gives that source."""
    h, w = att.size
    _, hole_index, source = _holes(att, i)
    weights = chain_weights(att, i, t)
    out = []
    for j in range(t, max(-1, t - k - 1), -1):
        p, q = int(hole_index[j]), int(source[j])
        out.append({"t": j, "pos": (p // w, p % w), "source": (q // w, q % w), "weight": float(weights[j])})
    return out


def neighbour_coherence(source: torch.Tensor, size: tuple[int, int], tolerance: float = 0,
                        directions: Sequence[str] = ("right", "down")) -> float:
    """Fraction of neighbouring hole pairs whose sources are neighbours in the same way.

    For every pair (p, p') of adjacent positions that both have a source (``source >= 0``), the pair is
    *coherent* when ``c(p') - c(p)`` equals ``p' - p`` up to ``tolerance`` cells (max norm), i.e. the two
    copy from a contiguous patch. ``"right"`` pairs are raster neighbours. NaN when there are no pairs.
    """
    off = offsets_from_sources(source, size)
    has = (torch.as_tensor(source).reshape(size) >= 0)
    hits, total = 0, 0
    for d in directions:
        if d == "right":
            a, b, ha, hb = off[:, :, :-1], off[:, :, 1:], has[:, :-1], has[:, 1:]
        elif d == "down":
            a, b, ha, hb = off[:, :-1, :], off[:, 1:, :], has[:-1, :], has[1:, :]
        else:
            raise ValueError(f"unknown direction {d!r}; use 'right' or 'down'")
        both = ha & hb
        same = (a - b).abs().amax(0) <= tolerance
        hits += int((same & both).sum())
        total += int(both.sum())
    return hits / total if total else float("nan")
