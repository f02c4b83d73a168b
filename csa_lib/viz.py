"""Pictures of the attention: offset fields, attention heat maps, the chain's balance, result grids.

Everything here reads a ``CSAAttention`` record (``csa_lib.csa``) or contextual attention's score maps
(``csa_lib.peers``) and turns it into arrays or matplotlib Figures. Plot functions build their figures
with ``plt.subplots`` (so ``plt.show()`` works in a notebook) but never need a display: they run under
the Agg backend and return the Figure, which the caller shows or closes.

Conventions
-----------
- **Offsets** are ``[2, H, W]`` float tensors in the order ``(dy, dx)``: the source position minus the
  hole position, in pixels of the grid they live on (rows grow downwards, columns to the right).
  Known positions, and holes without a source, have offset 0. In optical-flow notation ``u = dx``,
  ``v = dy``.
- **Colours** follow the Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology
  for Optical Flow", 2011) as DeepFill's contextual-attention figures show it: hue = direction,
  saturation = length / ``max_norm``. Angle 0 ("the source lies to the right") is red; going clockwise
  *on screen* (right -> down -> left -> up) the hue runs red -> yellow -> green -> cyan -> blue ->
  magenta. Zero offset is white; lengths beyond ``max_norm`` are drawn darker (75 % brightness).
- **Feature grid vs image**: the CSA layer works on an ``h x w`` grid (1/8 of the image); cell
  ``(y, x)`` covers image pixels ``[y*s, (y+1)*s) x [x*s, (x+1)*s)`` with stride ``s = H / h``.
  Maps are brought to image space by nearest-neighbour upsampling; offsets are multiplied by ``s``.

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
``s*s`` pixels, so the map sums to the row sum (1); plots switch to a diverging colour map when a row
has negative entries. Contextual attention's rows are softmax weights: non-negative and summing to 1
over the valid sources (``csa_lib.peers``), so :func:`contextual_heatmap` is a probability map as well.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# --------------------------------------------------------------------------------------------------
# Colour wheel
# --------------------------------------------------------------------------------------------------

# Middlebury wheel: six primary/secondary colours and how many wheel entries each transition gets.
# The uneven counts give perceptually similar arcs (the eye separates red-yellow finely, green-cyan not).
_WHEEL_ANCHORS = ((1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1))  # R Y G C B M
_WHEEL_STEPS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR  -> 55 colours


def color_wheel() -> torch.Tensor:
    """The 55 hues of the Middlebury wheel as ``[55, 3]`` floats in [0, 1], starting at red."""
    cols = []
    for j, steps in enumerate(_WHEEL_STEPS):
        start = torch.tensor(_WHEEL_ANCHORS[j], dtype=torch.float64)
        end = torch.tensor(_WHEEL_ANCHORS[(j + 1) % len(_WHEEL_ANCHORS)], dtype=torch.float64)
        for k in range(steps):  # linear ramp of one channel between neighbouring anchors
            cols.append(start + (end - start) * k / steps)
    return torch.stack(cols)


def _split_flow(flow: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) from a ``[2, H, W]`` or ``[H, W, 2]`` tensor/array (channel-first wins if both fit)."""
    f = (flow.detach().cpu() if torch.is_tensor(flow) else torch.as_tensor(np.asarray(flow))).double()
    if f.ndim != 3 or 2 not in (f.shape[0], f.shape[-1]):
        raise ValueError(f"flow must have shape [2, H, W] or [H, W, 2] (dy, dx); got {tuple(f.shape)}")
    dy, dx = (f[0], f[1]) if f.shape[0] == 2 else (f[..., 0], f[..., 1])
    # Non-finite entries (e.g. NaN "no source") are drawn as zero offset: white.
    return torch.nan_to_num(dy, 0.0, 0.0, 0.0), torch.nan_to_num(dx, 0.0, 0.0, 0.0)


def flow_to_color(flow: Any, max_norm: float | None = None, as_uint8: bool = False) -> np.ndarray:
    """Colour an offset field with the Middlebury wheel.

    Args:
        flow: offsets ``[2, H, W]`` or ``[H, W, 2]``, channel order ``(dy, dx)`` (= ``(v, u)``), any units.
        max_norm: length drawn at full saturation; default the field's largest length (1 if all zero).
        as_uint8: return ``uint8`` in [0, 255] instead of ``float32`` in [0, 1].

    Returns:
        RGB ``[H, W, 3]`` numpy array. Hue = direction (``atan2(dy, dx)``: right = red, clockwise on
        screen), saturation = length / max_norm (0 = white), longer than max_norm = 75 % brightness.
    """
    dy, dx = _split_flow(flow)
    mag = torch.hypot(dy, dx)
    if max_norm is None:
        max_norm = float(mag.max()) if mag.numel() and float(mag.max()) > 0 else 1.0
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    rad = mag / max_norm
    wheel = color_wheel()
    n = wheel.shape[0]
    pos = torch.remainder(torch.atan2(dy, dx), 2 * math.pi) / (2 * math.pi) * n  # [0, n)
    k0 = torch.floor(pos).long() % n
    frac = (pos - torch.floor(pos)).unsqueeze(-1)
    hue = (1 - frac) * wheel[k0] + frac * wheel[(k0 + 1) % n]  # interpolate between wheel entries
    r = rad.unsqueeze(-1)
    rgb = torch.where(r <= 1, 1 - r * (1 - hue), 0.75 * hue)  # desaturate towards white for short offsets
    rgb = rgb.clamp(0, 1).numpy().astype(np.float32)
    return (rgb * 255).round().astype(np.uint8) if as_uint8 else rgb


def color_wheel_image(size: int = 65) -> np.ndarray:
    """A legend: ``[size, size, 3]`` RGB in [0, 1]; pixel colour = its offset from the centre (white outside)."""
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    rgb = flow_to_color(torch.stack([ys, xs]).double(), max_norm=c)
    rgb[(torch.hypot(ys, xs) > c).numpy()] = 1.0
    return rgb


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


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _stride(size: tuple[int, int], image_size: int | Sequence[int]) -> tuple[int, int]:
    H, W = _image_hw(image_size)
    h, w = size
    if H % h or W % w:
        raise ValueError(f"image size {(H, W)} is not a whole multiple of the grid {size}")
    return H // h, W // w


def upsample_offsets(offsets: torch.Tensor, image_size: int | Sequence[int]) -> torch.Tensor:
    """Offsets ``[2, h, w]`` on the feature grid -> ``[2, H, W]`` in image pixels (nearest, times the stride)."""
    sy, sx = _stride(tuple(offsets.shape[1:]), image_size)
    up = offsets.repeat_interleave(sy, 1).repeat_interleave(sx, 2)
    return up * torch.tensor([sy, sx], dtype=up.dtype).view(2, 1, 1)


def upsample_map(m: torch.Tensor, image_size: int | Sequence[int], preserve_sum: bool = False) -> torch.Tensor:
    """A ``[h, w]`` map -> ``[H, W]`` by nearest upsampling; ``preserve_sum`` divides by the cell area."""
    sy, sx = _stride(tuple(m.shape), image_size)
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


@torch.no_grad()
def run_with_attention_input(generator: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor):
    """Run a ``CSAInpainter`` and also catch what its attention layer saw.

    ``image [B,3,H,W]`` in [-1,1] and ``mask [B,1,H,W]`` (1 = hole) may be on any device: they are moved to
    the generator's. Returns ``(out, features, hole)`` on that device: the ``InpaintOutput`` (with
    ``.attention``), the features entering the attention layer ``[B, 8C, h, w]`` (signed, before
    InstanceNorm) and the feature hole ``bool [B, 1, h, w]``. Feeding the same ``features, hole`` to
    another layer (e.g. ``peers.ContextualAttention``) compares the two attentions on the same input.
    """
    layers = [lvl.attention for lvl in generator.refine_net.levels if getattr(lvl, "attention", None) is not None]
    if len(layers) != 1:
        raise ValueError(f"expected one attention layer in generator.refine_net, found {len(layers)}")
    seen = {}

    def grab(module, args):  # forward pre-hook: args = (x, hole, ...)
        seen["x"], seen["hole"] = args[0].detach(), args[1].detach()

    # The inputs go to the generator's device (a CPU image and a CUDA model is the usual notebook case).
    device = next(generator.parameters()).device
    handle = layers[0].register_forward_pre_hook(grab)
    try:
        out = generator(image.to(device), mask.to(device), return_attention=True)
    finally:
        handle.remove()
    return out, seen["x"], seen["hole"]


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def to_display(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` image in [-1, 1] -> ``[H, W, 3]`` numpy in [0, 1] for ``imshow``."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [3, H, W] (or [1, H, W]); got {tuple(image.shape)}")
    img = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return img.expand(3, -1, -1).permute(1, 2, 0).numpy()


def masked_display(image: torch.Tensor, mask: torch.Tensor, fill: float = 1.0) -> np.ndarray:
    """The network's view: ``[H, W, 3]`` in [0, 1] with the hole (mask ``[1, H, W]``, 1 = hole) painted ``fill``."""
    img = to_display(image)
    hole = mask.detach().cpu().reshape(mask.shape[-2:]).numpy() > 0.5
    img = img.copy()
    img[hole] = fill
    return img


def _grid(n_rows: int, n_cols: int, cell: float = 2.6) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _map_colours(finite: np.ndarray, vmin: float | None, vmax: float | None):
    """(colour map, Normalize) for a map's finite values: diverging and centred at 0 when some are
    negative, else ``magma`` from ``vmin`` (default 0) to ``vmax`` (default the max). A requested range
    is widened rather than clipping data outside it (official semantics: a_t > 1 happens)."""
    if finite.size and finite.min() < 0:
        lim = float(np.abs(finite).max()) or 1.0
        return plt.get_cmap("RdBu_r"), matplotlib.colors.Normalize(-lim, lim)
    lo = min(0.0 if vmin is None else vmin, float(finite.min(initial=np.inf)))
    hi = max(-np.inf if vmax is None else vmax, float(finite.max(initial=-np.inf)))
    if not (np.isfinite(lo) and np.isfinite(hi)):  # an empty map
        lo, hi = 0.0, 1.0
    return plt.get_cmap("magma"), matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)


def _imshow_map(ax, m: torch.Tensor | np.ndarray, title: str, colorbar: bool = True,
                background: np.ndarray | None = None, vmin: float | None = None, vmax: float | None = None,
                weights: bool = True) -> None:
    """Draw a map (colours: :func:`_map_colours`; NaN = clear).

    With ``background`` (``[H, W, 3]`` in [0, 1], the size of ``m``) the map is laid over a dimmed grey
    copy of the image. For ``weights`` (attention rows) the opacity grows with ``|m|``, so tiny weights
    fade out and one sees *where* the weight lies; otherwise every finite entry is drawn.
    """
    m = np.asarray(m, dtype=np.float64)
    finite = m[np.isfinite(m)]
    cmap, norm = _map_colours(finite, vmin, vmax)
    if background is None:
        ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=norm, interpolation="nearest")
    else:
        grey = background.mean(-1, keepdims=True) * 0.6 + 0.2  # dimmed, so the colours stand out
        ax.imshow(np.repeat(grey, 3, -1))
        rgba = cmap(norm(np.nan_to_num(m)))
        peak = float(np.abs(finite).max()) if finite.size else 1.0
        alpha = np.sqrt(np.abs(np.nan_to_num(m)) / (peak or 1.0)) if weights else np.full(m.shape, 0.9)
        rgba[..., 3] = np.where(np.isfinite(m), alpha, 0.0)
        ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(matplotlib.cm.ScalarMappable(norm, cmap), ax=ax, fraction=0.046, pad=0.03)


def _add_wheel_inset(ax, size: int = 41) -> None:
    inset = ax.inset_axes([0.74, 0.74, 0.25, 0.25])
    inset.imshow(color_wheel_image(size))
    inset.set_axis_off()


def plot_offsets(offsets: torch.Tensor, ax=None, max_norm: float | None = None, title: str = "offsets",
                 legend: bool = True) -> Figure:
    """Draw an offset field ``[2, H, W]`` (dy, dx) with the colour wheel (legend inset top right)."""
    if ax is None:
        fig, axes = _grid(1, 1, cell=3.2)
        ax = axes[0, 0]
    ax.imshow(flow_to_color(offsets, max_norm), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if legend:
        _add_wheel_inset(ax)
    return ax.figure


def _cell_rect(y: int, x: int, stride: tuple[int, int], **kw) -> Rectangle:
    sy, sx = stride
    return Rectangle((x * sx - 0.5, y * sy - 0.5), sx, sy, fill=False, **kw)


def _cell_centre(y: int, x: int, stride: tuple[int, int]) -> tuple[float, float]:
    """(x, y) plot coordinates of a feature cell's centre in image pixels."""
    return (x + 0.5) * stride[1] - 0.5, (y + 0.5) * stride[0] - 0.5


def _default_step(att, i: int) -> int:
    return int(att.count[i]) // 2  # a hole in the middle of the chain: it has predecessors


def plot_attention(image: torch.Tensor, mask: torch.Tensor, att, i: int = 0, t: int | None = None) -> Figure:
    """Four panels for image ``i``: masked input, CSA offsets (image space), the heat map of chain
    step ``t`` (default: middle of the chain) with the hole cell (cyan) and its source (lime), and the
    chain balance ``a_t`` (weight on the previously generated vector). ``t`` is a 0-based index; titles
    show the 1-based step ``t + 1`` of the equations (docs/notation.md).

    Args: image ``[3, H, W]`` in [-1, 1], mask ``[1, H, W]`` (1 = hole), att a CSAAttention.
    """
    H, W = image.shape[-2:]
    stride = _stride(att.size, (H, W))
    t = _default_step(att, i) if t is None else t
    (step, *_) = chain_predecessors(att, i, t, k=0)
    fig, axes = _grid(1, 4)
    axes[0, 0].imshow(masked_display(image, mask))
    axes[0, 0].set_title("input (masked)", fontsize=9)
    plot_offsets(upsample_offsets(attention_offsets(att, i), (H, W)), ax=axes[0, 1], title="CSA offsets")
    grey = to_display(image)
    _imshow_map(axes[0, 2], attention_heatmap(att, i, t, (H, W)), f"row w_t, t={t + 1}", background=grey)
    axes[0, 2].add_patch(_cell_rect(*step["pos"], stride, edgecolor="cyan", lw=1.5))
    axes[0, 2].add_patch(_cell_rect(*step["source"], stride, edgecolor="lime", lw=1.5))
    _imshow_map(axes[0, 3], upsample_map(chain_balance(att, i)[0], (H, W)), "a_t: continue previous",
                background=grey, vmin=0, vmax=1, weights=False)
    fig.tight_layout()
    return fig


def plot_chain_balance(att, i: int = 0, image: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None) -> Figure:
    """The chain's balance per hole position: ``b_t`` (copy the best context match) beside ``a_t``
    (continue the previously generated vector), on the feature grid; known positions blank."""
    a_map, b_map = chain_balance(att, i)
    n = 3 if image is not None else 2
    fig, axes = _grid(1, n, cell=3.0)
    if image is not None:
        axes[0, 0].imshow(masked_display(image, mask) if mask is not None else to_display(image))
        axes[0, 0].set_title("input", fontsize=9)
    if image is not None:  # on the image, so the map lines up with the picture
        grey = to_display(image)
        a_map, b_map = (upsample_map(m, tuple(image.shape[-2:])) for m in (a_map, b_map))
    else:
        grey = None
    # Paper semantics: both in [0, 1]; official semantics may leave that range (diverging map then).
    _imshow_map(axes[0, n - 2], b_map, "b_t: copy from context", background=grey, vmin=0, vmax=1,
                weights=False)
    _imshow_map(axes[0, n - 1], a_map, "a_t: continue previous", background=grey, vmin=0, vmax=1,
                weights=False)
    fig.tight_layout()
    return fig


def compare_attention(image: torch.Tensor, mask: torch.Tensor, att, scores: torch.Tensor, i: int = 0,
                      t: int | None = None) -> Figure:
    """CSA beside contextual attention on the same input and hole.

    Top row: argmax offsets of each method (same colour scale) with the neighbour coherence (fraction of
    adjacent hole pairs that copy a contiguous patch) in the titles. Bottom row: where the hole cell of
    chain step ``t`` takes its feature from under each method (CSA row ``w_t``; contextual softmax row).
    ``t`` is a 0-based index; the title shows the 1-based step ``t + 1`` (docs/notation.md).

    Args: image ``[3, H, W]`` in [-1, 1], mask ``[1, H, W]``, att CSAAttention, scores ``[B, h*w, h, w]``.
    """
    H, W = image.shape[-2:]
    if tuple(scores.shape[2:]) != tuple(att.size):
        raise ValueError(f"scores grid {tuple(scores.shape[2:])} differs from the CSA grid {att.size}")
    stride = _stride(att.size, (H, W))
    hole = hole_map(att, i)
    src_csa, src_ca = csa_sources(att, i), contextual_sources(scores, hole, i)
    off_csa, off_ca = (upsample_offsets(offsets_from_sources(s, att.size), (H, W)) for s in (src_csa, src_ca))
    max_norm = float(max(torch.hypot(*off_csa).max(), torch.hypot(*off_ca).max(), 1.0))
    t = _default_step(att, i) if t is None else t
    y, x = chain_predecessors(att, i, t, k=0)[0]["pos"]
    fig, axes = _grid(2, 3)
    axes[0, 0].imshow(masked_display(image, mask))
    axes[0, 0].set_title("input (masked)", fontsize=9)
    for col, (name, src, off) in enumerate((("CSA", src_csa, off_csa), ("contextual", src_ca, off_ca)), 1):
        coh = neighbour_coherence(src, att.size)
        plot_offsets(off, ax=axes[0, col], max_norm=max_norm, title=f"{name}: coherent pairs {coh:.0%}")
    axes[1, 0].imshow(to_display(image))
    axes[1, 0].add_patch(_cell_rect(y, x, stride, edgecolor="cyan", lw=1.5))
    axes[1, 0].set_title(f"hole cell ({y}, {x}), t={t + 1}", fontsize=9)
    grey = to_display(image)
    for ax in axes[1, 1:]:
        ax.add_patch(_cell_rect(y, x, stride, edgecolor="cyan", lw=1.5))
    _imshow_map(axes[1, 1], attention_heatmap(att, i, t, (H, W)), "CSA row w_t", background=grey)
    _imshow_map(axes[1, 2], contextual_heatmap(scores, i, y, x, (H, W)), "contextual softmax row",
                background=grey)
    fig.tight_layout()
    return fig


_GRID_KEYS = ("coarse", "refined", "composite")


def inpainting_grid(images: Any, image: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    n: int = 4, columns: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
                    title: str | None = None) -> Figure:
    """A grid: one row per sample, columns input (masked) | outputs ... | ground truth.

    Args:
        images: a dict name -> ``[B, 3, H, W]`` in [-1, 1], or an ``InpaintOutput`` (its ``coarse``,
            ``refined`` and ``composite`` are used).
        image, mask: the ground truth ``[B, 3, H, W]`` and mask ``[B, 1, H, W]``; when given, a masked
            input column comes first and the ground truth last.
        n: at most this many samples. columns: which keys of ``images`` to show, in order.
        row_labels: a label left of each row. title: a title above the column titles (never on them).
    """
    if not isinstance(images, dict):
        images = {k: getattr(images, k) for k in _GRID_KEYS if getattr(images, k, None) is not None}
    cols = list(columns) if columns is not None else list(images)
    missing = [c for c in cols if c not in images]
    if missing:
        raise KeyError(f"inpainting_grid: no images for column(s) {missing}; have {sorted(images)}")
    panels: list[tuple[str, Any]] = []
    if image is not None and mask is not None:
        panels.append(("input (masked)", lambda b: masked_display(image[b], mask[b])))
    panels += [(c, (lambda c: lambda b: to_display(images[c][b]))(c)) for c in cols]
    if image is not None:
        panels.append(("ground truth", lambda b: to_display(image[b])))
    batch = next(iter(images.values())).shape[0] if images else image.shape[0]
    rows = min(n, batch)
    fig, axes = _grid(rows, len(panels), cell=2.0)
    for b in range(rows):
        for c, (name, draw) in enumerate(panels):
            axes[b, c].imshow(draw(b))
            if b == 0:
                axes[b, c].set_title(name, fontsize=9)
        if row_labels is not None and b < len(row_labels):
            axes[b, 0].set_ylabel(row_labels[b], fontsize=9)
    fig.tight_layout()
    if title:
        # Anchored by its bottom at the figure's top edge: it cannot overlap the column titles, which
        # tight_layout placed inside the figure (a saved figure with bbox_inches="tight" grows to fit it).
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return fig


# --------------------------------------------------------------------------------------------------
# Explorer: one hole position, its source, its row and its predecessors
# --------------------------------------------------------------------------------------------------


def _draw_explorer_row(axes, image, mask, att, i: int, t: int, k: int) -> None:
    """Three panels for chain step ``t``: overview with predecessors, source patch zoom, row heat map."""
    H, W = image.shape[-2:]
    stride = _stride(att.size, (H, W))
    chain = chain_predecessors(att, i, t, k)
    ax = axes[0]
    ax.imshow(masked_display(image, mask, fill=0.85))
    # Fainter for older steps: the chain's memory fades with the product of a_k.
    for n_back, step in reversed(list(enumerate(chain))):
        alpha = 1.0 if n_back == 0 else 0.35 + 0.4 / n_back
        ax.add_patch(_cell_rect(*step["pos"], stride, edgecolor="cyan", lw=1.5, alpha=alpha))
        ax.add_patch(_cell_rect(*step["source"], stride, edgecolor="lime", lw=1.5, alpha=alpha))
        ax.plot(*zip(_cell_centre(*step["pos"], stride), _cell_centre(*step["source"], stride)),
                color="yellow", lw=0.8, alpha=alpha)
    me = chain[0]
    ax.set_title(f"t={t} at {me['pos']} <- {me['source']}", fontsize=8)
    # Zoom on the source cell with one cell of context around it.
    sy, sx = stride
    (qy, qx) = me["source"]
    y0, x0 = max(0, (qy - 1) * sy), max(0, (qx - 1) * sx)
    crop = to_display(image)[y0:(qy + 2) * sy, x0:(qx + 2) * sx]
    axes[1].imshow(crop, interpolation="nearest")
    axes[1].add_patch(Rectangle((qx * sx - x0 - 0.5, qy * sy - y0 - 0.5), sx, sy, fill=False,
                                edgecolor="lime", lw=1.5))
    axes[1].set_title("source patch (+1 cell)", fontsize=8)
    weights = ", ".join(f"{s['weight']:.2f}" for s in chain)
    _imshow_map(axes[2], attention_heatmap(att, i, t, (H, W)), "row w_t", colorbar=False,
                background=to_display(image))
    axes[2].set_xlabel(f"weights of steps t, t-1, ...: {weights}", fontsize=7)


def _as_step(att, i: int, p) -> int:
    """A preset position: an int is a chain step, a pair ``(y, x)`` a hole cell on the feature grid."""
    if isinstance(p, (int, np.integer)):
        return int(p)
    t = hole_step(att, i, int(p[0]), int(p[1]))
    if t is None:
        raise ValueError(f"feature position {tuple(p)} is not a hole of image {i}")
    return t


def explorer_static(image: torch.Tensor, mask: torch.Tensor, att, positions: Sequence | None = None,
                    i: int = 0, k: int = 3) -> Figure:
    """The explorer as a static figure: one row per preset position (chain step ``t`` or hole cell
    ``(y, x)``; default: first, middle and last hole). Columns: the image with the hole cell (cyan), its
    source (lime) and its ``k`` predecessors (fainter); a zoom on the source patch; the row ``w_t``.

    Args: image ``[3, H, W]`` in [-1, 1], mask ``[1, H, W]`` (1 = hole), att a CSAAttention.
    """
    T = int(att.count[i])
    if T == 0:
        raise ValueError(f"image {i} has no hole positions at the feature resolution")
    positions = [0, T // 2, T - 1] if positions is None else list(positions)
    fig, axes = _grid(len(positions), 3, cell=2.8)
    for r, p in enumerate(positions):
        _draw_explorer_row(axes[r], image, mask, att, i, _as_step(att, i, p), k)
    fig.tight_layout()
    return fig


def _ipympl_canvas(figsize: tuple[float, float]):
    """A new figure on an ipympl canvas (a widget that sends mouse events to the kernel), without
    switching pyplot's backend: other figures stay inline. None when ipympl is not installed."""
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        return None
    canvas = Canvas(Figure(figsize=figsize))
    FigureManager(canvas, 0)  # the toolbar and the canvas' manager; not registered with pyplot
    canvas.header_visible = False
    return canvas


class AttentionExplorer:
    """Interactive view of one hole position: sliders pick a feature cell ``(y, x)``, and so does a click
    on the overview panel when ipympl is installed (the figure is then a live ipympl canvas); the figure
    shows the cell's source patch, its attention row and its ``k`` predecessors in the chain.

    ``display(explorer)`` (or leaving it as a cell's last expression) shows the widgets when ipywidgets
    is installed; without ipywidgets it shows :meth:`static`. Without ipympl the figure is a picture
    redrawn on every slider move (clicks cannot reach the kernel). Widgets in a kernel with no frontend
    (a test run, nbconvert) are harmless: nothing renders, nothing fails. Use :meth:`static` for a
    figure that reads well without a live kernel.
    """

    def __init__(self, image: torch.Tensor, mask: torch.Tensor, att, i: int = 0, k: int = 3):
        self.image, self.mask, self.att, self.i, self.k = image, mask, att, i, k
        self.stride = _stride(att.size, image.shape[-2:])
        if int(att.count[i]) == 0:
            raise ValueError(f"image {i} has no hole positions at the feature resolution")
        first = int(att.hole_index[i, int(att.count[i]) // 2])
        self.start = divmod(first, att.size[1])  # (y, x) of the middle hole

    def draw(self, axes, y: int, x: int) -> None:
        """Draw the three explorer panels for feature cell ``(y, x)`` into ``axes`` (three Axes)."""
        t = hole_step(self.att, self.i, y, x)
        if t is None:
            axes[0].imshow(masked_display(self.image, self.mask, fill=0.85))
            axes[0].add_patch(_cell_rect(y, x, self.stride, edgecolor="red", lw=1.5))
            axes[0].set_title(f"{(y, x)} is a known position: pick a hole", fontsize=8)
            for ax in axes[1:]:
                ax.set_axis_off()
        else:
            _draw_explorer_row(axes, self.image, self.mask, self.att, self.i, t, self.k)

    def figure(self, y: int, x: int) -> Figure:
        """The three explorer panels for feature cell ``(y, x)`` (a message if it is a known position)."""
        fig, axes = _grid(1, 3, cell=2.8)
        self.draw(axes[0], y, x)
        fig.tight_layout()
        return fig

    def static(self, positions: Sequence | None = None) -> Figure:
        """Static fallback: :func:`explorer_static` for preset positions."""
        return explorer_static(self.image, self.mask, self.att, positions, self.i, self.k)

    def widget(self):
        """An ipywidgets VBox: sliders, and the figure as a live ipympl canvas (click the overview to
        pick a cell) or, without ipympl, as a picture. Raises ImportError when ipywidgets is missing."""
        import ipywidgets as widgets

        h, w = self.att.size
        ys = widgets.IntSlider(value=self.start[0], min=0, max=h - 1, description="y (feature)")
        xs = widgets.IntSlider(value=self.start[1], min=0, max=w - 1, description="x (feature)")
        sliders = widgets.HBox([ys, xs])
        canvas = _ipympl_canvas(figsize=(2.8 * 3, 2.8))
        if canvas is None:
            return widgets.VBox([sliders, self._picture(ys, xs),
                                 widgets.HTML("<i>click-to-pick needs ipympl (pip install ipympl); "
                                              "the sliders pick the cell</i>")])
        fig = canvas.figure
        axes = fig.subplots(1, 3, squeeze=False)[0]
        canvas.add_class("csa-explorer")

        def redraw(*_):
            for ax in axes:
                ax.clear()
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
            self.draw(axes, ys.value, xs.value)
            fig.tight_layout()
            canvas.draw_idle()

        # A click on the overview moves the sliders, which redraw the figure.
        canvas.mpl_connect("button_press_event", lambda ev: self._on_click(ev, axes[0], ys, xs))
        ys.observe(redraw, names="value")
        xs.observe(redraw, names="value")
        redraw()
        return widgets.VBox([sliders, canvas])

    def _picture(self, ys, xs):
        """Without ipympl: an Output that shows the figure as a picture, redrawn when a slider moves."""
        import ipywidgets as widgets
        from IPython.display import display

        out = widgets.Output()

        def redraw(*_):
            with out:
                out.clear_output(wait=True)
                fig = self.figure(ys.value, xs.value)
                display(fig)
                plt.close(fig)

        ys.observe(redraw, names="value")
        xs.observe(redraw, names="value")
        redraw()
        return out

    def _on_click(self, event, overview, ys, xs) -> None:
        if event.inaxes is not overview or event.xdata is None:
            return
        ys.value = min(ys.max, max(0, int((event.ydata + 0.5) // self.stride[0])))
        xs.value = min(xs.max, max(0, int((event.xdata + 0.5) // self.stride[1])))

    def _ipython_display_(self):
        from IPython.display import display

        try:
            display(self.widget())
        except ImportError:  # no ipywidgets: the static figure still tells the story
            fig = self.static()
            display(fig)
            plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Lesson figures: the pipeline diagram (notebook 00) and the peers on a photo (notebook 03)
# --------------------------------------------------------------------------------------------------
def _box(ax, xy: tuple[float, float], w: float, h: float, text: str, colour: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02", fc=colour, ec="black", lw=1))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=8.5)


def _arrow(ax, start, end, text: str | None = None, colour: str = "black", ls: str = "-",
           rad: float = 0.0) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.3, linestyle=ls,
                                                          connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=7.5,
                color=colour)


def pipeline_diagram(loss_cfg: Any = None) -> Figure:
    """CSA as one picture: coarse net -> refinement net with the CSA layer at 1/8 -> output, with the
    consistency loss (VGG16 relu4_3 of the real image) and the two RaLSGAN discriminators.

    ``loss_cfg``: a :class:`csa_lib.config.LossConfig` whose weights are printed (default: the paper's).
    Returns the Figure (boxes are drawn in data coordinates on an 11 x 5.2 canvas).
    """
    if loss_cfg is None:
        from .config import LossConfig

        loss_cfg = LossConfig()
    lam = f"$\\lambda_r = {loss_cfg.lambda_r:g}$", f"$\\lambda_c = {loss_cfg.lambda_c:g}$", \
        f"$\\lambda_d = {loss_cfg.lambda_d:g}$"
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.8, 4.4)
    ax.axis("off")
    # the generator, left to right along y = 2.85
    for (x, w, text, colour) in [(0.1, 1.4, "masked image\n$\\tilde x$, mask $m$", "#eeeeee"),
                                 (2.0, 1.6, "coarse net\n(U-Net, 8 levels)", "#cfe2f3"),
                                 (4.1, 1.6, "paste $I_c$ into hole\n+ masked image\n(6 channels)", "#eeeeee"),
                                 (6.2, 1.3, "refine\nencoder", "#d9ead3"),
                                 (7.9, 1.2, "CSA layer\nat 1/8\n(32×32×512)", "#f4cccc"),
                                 (9.5, 1.3, "refine\ndecoder", "#d9ead3")]:
        _box(ax, (x, 2.4), w, 0.9, text, colour)
    for x0, x1, text in [(1.5, 2.0, None), (3.6, 4.1, "$I_c$"), (5.7, 6.2, None), (7.5, 7.9, None),
                         (9.1, 9.5, None)]:
        _arrow(ax, (x0, 2.85), (x1, 2.85), text)
    # the output and the two discriminators, bottom row
    _box(ax, (9.5, 0.3), 1.3, 0.8, "output $I_r$\n(composite\nfor eval)", "#eeeeee")
    _box(ax, (6.1, 0.3), 1.9, 0.8, "image patch D\n(70×70 PatchGAN)", "#fff2cc")
    _box(ax, (3.6, 0.3), 2.1, 0.8, "feature patch D\n(VGG16 pool3 + 3 convs)", "#fff2cc")
    _arrow(ax, (10.15, 2.4), (10.15, 1.1))
    _arrow(ax, (9.5, 0.7), (8.0, 0.7), "RaLSGAN", colour="#b45f06")
    _arrow(ax, (9.9, 0.3), (4.65, 0.3), colour="#b45f06", rad=-0.25)
    ax.text(7.2, -0.55, "RaLSGAN (VGG16 features of $I_r$ vs. of $x$)", ha="center", fontsize=7.5, color="#b45f06")
    # the consistency loss: VGG16 relu4_3 of the real image against the CSA output and its decoder mirror
    _box(ax, (7.4, 3.6), 2.0, 0.7, "VGG16 relu4_3 of the\nreal image $x$", "#ead1dc")
    _arrow(ax, (8.3, 3.6), (8.5, 3.3), colour="#a61c00", ls="--")
    _arrow(ax, (9.6, 3.8), (10.15, 3.3), colour="#a61c00", ls="--")
    ax.text(9.75, 4.0, "consistency $\\mathcal{L}_c$\n(hole positions)", fontsize=7.5, color="#a61c00")
    ax.text(0.1, 1.6, f"L1 on $I_c$ and $I_r$  ({lam[0]})\n"
            f"consistency $\\mathcal{{L}}_c$ on hole positions ({lam[1]})\n"
            f"two discriminators ({lam[2]})", fontsize=8, va="top")
    ax.set_title("CSA: coarse-to-fine inpainting with a coherent semantic attention layer", fontsize=10)
    return fig


def zoom_slices(top: int, left: int, size: int, margin: int) -> tuple[slice, slice]:
    """Rows and columns of a square window around a ``size``-pixel hole at ``(top, left)``, ``margin``
    pixels on each side (clipped at 0 only: the caller keeps the window inside the image)."""
    return (slice(max(0, top - margin), top + size + margin), slice(max(0, left - margin), left + size + margin))


def plot_fill_comparison(cases: Sequence[dict], max_norm: float | None = None) -> Figure:
    """Several methods' fills of one hole and their argmax sources, two rows per case (notebook 03).

    Each case is a dict with
        ``image``: ``[3, H, W]`` in [-1, 1]; ``hole``: bool ``[1, H, W]`` or ``[H, W]`` (True = hole);
        ``fills``: list of ``(name, [3, H, W] in [-1, 1])`` shown in the first row (zoomed);
        ``sources``: list of ``(name, [H*W] long)`` raster source index per position (-1 = none), drawn
            as offset fields after the masked input and the colour key in the second row;
        ``zoom``: ``(rows, cols)`` slices (:func:`zoom_slices`), or None for the whole image.
    Offsets are coloured with :func:`flow_to_color` at ``max_norm`` (default: half the image side). The
    hole is outlined (dashed) in every zoomed panel.
    """
    n_cols = max(max(len(c["fills"]), 2 + len(c["sources"])) for c in cases)
    fig, axes = _grid(2 * len(cases), n_cols, cell=2.6)
    for r, case in enumerate(cases):
        image, hole = case["image"], case["hole"].reshape(case["image"].shape[-2:]).bool()
        H, W = hole.shape
        rows, cols = case.get("zoom") or (slice(0, H), slice(0, W))
        ys, xs = torch.nonzero(hole[rows, cols], as_tuple=True)

        def outline(ax):
            if len(ys):
                ax.add_patch(Rectangle((int(xs.min()) - 0.5, int(ys.min()) - 0.5), int(xs.max() - xs.min()) + 1,
                                       int(ys.max() - ys.min()) + 1, fill=False, ec="w", ls="--"))

        for ax, (name, fill) in zip(axes[2 * r], case["fills"]):
            ax.imshow(to_display(fill)[rows, cols])
            ax.set_title(name + (" (zoom)" if case.get("zoom") else ""), fontsize=10)
            outline(ax)
        second = axes[2 * r + 1]
        second[0].imshow(masked_display(image, hole[None].float()))
        second[0].set_title("input with hole", fontsize=10)
        second[1].imshow(color_wheel_image())
        second[1].set_title("offset colour key", fontsize=10)
        for ax, (name, src) in zip(second[2:], case["sources"]):
            rgb = flow_to_color(offsets_from_sources(src, (H, W)), max_norm=max_norm or max(H, W) / 2)
            ax.imshow(rgb[rows, cols])
            ax.set_title(name + (" (zoom)" if case.get("zoom") else ""), fontsize=10)
            outline(ax)
    for ax in axes.flat:
        if not ax.images:
            ax.axis("off")
    fig.tight_layout()
    return fig


def plot_source_arrows(image: torch.Tensor, mask: torch.Tensor, sources: torch.Tensor,
                       correct: torch.Tensor | None = None, ax=None, title: str = "sources") -> Figure:
    """The masked image with one arrow per hole cell, from the cell to the known cell it copies.

    ``image [3,H,W]`` in [-1,1], ``mask [1,H,W]`` (1 = hole), ``sources`` long ``[h*w]`` (the chosen source
    of every hole cell, -1 elsewhere, e.g. a row of ``attention_stats.layer_sources``). ``correct`` bool
    ``[h*w]`` colours the arrows: green = right, red = wrong (all white when None).
    """
    if ax is None:
        fig, axes = _grid(1, 1, cell=3.2)
        ax = axes[0, 0]
    H, W = image.shape[-2:]
    n = sources.numel()
    h = w = int(round(math.sqrt(n)))
    if h * w != n:
        raise ValueError(f"sources must cover a square grid, got {n} entries")
    stride = (H // h, W // w)
    ax.imshow(masked_display(image, mask), interpolation="nearest")
    for p in (sources >= 0).nonzero().flatten().tolist():
        (py, px), (qy, qx) = divmod(p, w), divmod(int(sources[p]), w)
        x0, y0 = _cell_centre(py, px, stride)
        x1, y1 = _cell_centre(qy, qx, stride)
        colour = "white" if correct is None else ("lime" if bool(correct[p]) else "red")
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=1.2, shrinkA=0, shrinkB=0))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    return ax.figure
