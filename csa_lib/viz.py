"""Pictures of the attention: offset fields, attention heat maps, the chain's balance, result grids.

This module only draws. What it draws comes as tensors from :mod:`csa_lib.attention_maps` (a
``CSAAttention`` record of ``csa_lib.csa``, or contextual attention's score maps of ``csa_lib.peers``,
read into sources, offsets, rows and the chain's balance; the conventions and what an attention row sums
to are explained there) and from :mod:`csa_lib.attention_stats` (running a generator and measuring its
attention). Plot functions build their figures with ``plt.subplots`` (so ``plt.show()`` works in a
notebook) but never need a display: they run under the Agg backend and return the Figure, which the
caller shows or closes.

Conventions
-----------
- **Offsets** are ``[2, H, W]`` in the order ``(dy, dx)``: the source position minus the hole position
  (:mod:`csa_lib.attention_maps`); maps and offsets on the feature grid are brought to image space there.
- **Colours** follow the Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology
  for Optical Flow", 2011) as DeepFill's contextual-attention figures show it: hue = direction,
  saturation = length / ``max_norm``. Angle 0 ("the source lies to the right") is red; going clockwise
  *on screen* (right -> down -> left -> up) the hue runs red -> yellow -> green -> cyan -> blue ->
  magenta. Zero offset is white; lengths beyond ``max_norm`` are drawn darker (75 % brightness).
- **Attention rows** are drawn with their signs: a map with negative entries (the official semantics'
  affine blends) gets a diverging colour map centred at 0, a non-negative one ``magma``.

The figures of single lessons (notebook 00's pipeline diagram, notebook 03's fill comparison) live next
to their notebooks, in ``notebooks/figures.py``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .attention_maps import (attention_heatmap, attention_offsets, chain_balance, chain_predecessors,
                             contextual_heatmap, contextual_sources, csa_sources, grid_stride, hole_map,
                             hole_step, neighbour_coherence, offsets_from_sources, upsample_map, upsample_offsets)
# benchmarks/face_attention.py imports the runner from here, where it lived; its home is attention_stats.

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


def panel_grid(n_rows: int, n_cols: int, cell: float = 2.6) -> tuple[Figure, np.ndarray]:
    """A grid of image panels without ticks (``cell`` inches per panel); ``axes`` is ``[n_rows, n_cols]``."""
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
        fig, axes = panel_grid(1, 1, cell=3.2)
        ax = axes[0, 0]
    ax.imshow(flow_to_color(offsets, max_norm), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if legend:
        _add_wheel_inset(ax)
    return ax.figure


def cell_rect(y: int, x: int, stride: tuple[int, int], **kw) -> Rectangle:
    """An unfilled Rectangle around feature cell ``(y, x)`` in image pixels (``stride``: pixels per cell)."""
    sy, sx = stride
    return Rectangle((x * sx - 0.5, y * sy - 0.5), sx, sy, fill=False, **kw)


def cell_centre(y: int, x: int, stride: tuple[int, int]) -> tuple[float, float]:
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
    stride = grid_stride(att.size, (H, W))
    t = _default_step(att, i) if t is None else t
    (step, *_) = chain_predecessors(att, i, t, k=0)
    fig, axes = panel_grid(1, 4)
    axes[0, 0].imshow(masked_display(image, mask))
    axes[0, 0].set_title("input (masked)", fontsize=9)
    plot_offsets(upsample_offsets(attention_offsets(att, i), (H, W)), ax=axes[0, 1], title="CSA offsets")
    grey = to_display(image)
    _imshow_map(axes[0, 2], attention_heatmap(att, i, t, (H, W)), f"row w_t, t={t + 1}", background=grey)
    axes[0, 2].add_patch(cell_rect(*step["pos"], stride, edgecolor="cyan", lw=1.5))
    axes[0, 2].add_patch(cell_rect(*step["source"], stride, edgecolor="lime", lw=1.5))
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
    fig, axes = panel_grid(1, n, cell=3.0)
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
    stride = grid_stride(att.size, (H, W))
    hole = hole_map(att, i)
    src_csa, src_ca = csa_sources(att, i), contextual_sources(scores, hole, i)
    off_csa, off_ca = (upsample_offsets(offsets_from_sources(s, att.size), (H, W)) for s in (src_csa, src_ca))
    max_norm = float(max(torch.hypot(*off_csa).max(), torch.hypot(*off_ca).max(), 1.0))
    t = _default_step(att, i) if t is None else t
    y, x = chain_predecessors(att, i, t, k=0)[0]["pos"]
    fig, axes = panel_grid(2, 3)
    axes[0, 0].imshow(masked_display(image, mask))
    axes[0, 0].set_title("input (masked)", fontsize=9)
    for col, (name, src, off) in enumerate((("CSA", src_csa, off_csa), ("contextual", src_ca, off_ca)), 1):
        coh = neighbour_coherence(src, att.size)
        plot_offsets(off, ax=axes[0, col], max_norm=max_norm, title=f"{name}: coherent pairs {coh:.0%}")
    axes[1, 0].imshow(to_display(image))
    axes[1, 0].add_patch(cell_rect(y, x, stride, edgecolor="cyan", lw=1.5))
    axes[1, 0].set_title(f"hole cell ({y}, {x}), t={t + 1}", fontsize=9)
    grey = to_display(image)
    for ax in axes[1, 1:]:
        ax.add_patch(cell_rect(y, x, stride, edgecolor="cyan", lw=1.5))
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
    fig, axes = panel_grid(rows, len(panels), cell=2.0)
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
    stride = grid_stride(att.size, (H, W))
    chain = chain_predecessors(att, i, t, k)
    ax = axes[0]
    ax.imshow(masked_display(image, mask, fill=0.85))
    # Fainter for older steps: the chain's memory fades with the product of a_k.
    for n_back, step in reversed(list(enumerate(chain))):
        alpha = 1.0 if n_back == 0 else 0.35 + 0.4 / n_back
        ax.add_patch(cell_rect(*step["pos"], stride, edgecolor="cyan", lw=1.5, alpha=alpha))
        ax.add_patch(cell_rect(*step["source"], stride, edgecolor="lime", lw=1.5, alpha=alpha))
        ax.plot(*zip(cell_centre(*step["pos"], stride), cell_centre(*step["source"], stride)),
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
    fig, axes = panel_grid(len(positions), 3, cell=2.8)
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
        self.stride = grid_stride(att.size, image.shape[-2:])
        if int(att.count[i]) == 0:
            raise ValueError(f"image {i} has no hole positions at the feature resolution")
        first = int(att.hole_index[i, int(att.count[i]) // 2])
        self.start = divmod(first, att.size[1])  # (y, x) of the middle hole

    def draw(self, axes, y: int, x: int) -> None:
        """Draw the three explorer panels for feature cell ``(y, x)`` into ``axes`` (three Axes)."""
        t = hole_step(self.att, self.i, y, x)
        if t is None:
            axes[0].imshow(masked_display(self.image, self.mask, fill=0.85))
            axes[0].add_patch(cell_rect(y, x, self.stride, edgecolor="red", lw=1.5))
            axes[0].set_title(f"{(y, x)} is a known position: pick a hole", fontsize=8)
            for ax in axes[1:]:
                ax.set_axis_off()
        else:
            _draw_explorer_row(axes, self.image, self.mask, self.att, self.i, t, self.k)

    def figure(self, y: int, x: int) -> Figure:
        """The three explorer panels for feature cell ``(y, x)`` (a message if it is a known position)."""
        fig, axes = panel_grid(1, 3, cell=2.8)
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


def plot_source_arrows(image: torch.Tensor, mask: torch.Tensor, sources: torch.Tensor,
                       correct: torch.Tensor | None = None, ax=None, title: str = "sources") -> Figure:
    """The masked image with one arrow per hole cell, from the cell to the known cell it copies.

    ``image [3,H,W]`` in [-1,1], ``mask [1,H,W]`` (1 = hole), ``sources`` long ``[h*w]`` (the chosen source
    of every hole cell, -1 elsewhere, e.g. a row of ``attention_stats.layer_sources``). ``correct`` bool
    ``[h*w]`` colours the arrows: green = right, red = wrong (all white when None).
    """
    if ax is None:
        fig, axes = panel_grid(1, 1, cell=3.2)
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
        x0, y0 = cell_centre(py, px, stride)
        x1, y1 = cell_centre(qy, qx, stride)
        colour = "white" if correct is None else ("lime" if bool(correct[p]) else "red")
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=1.2, shrinkA=0, shrinkB=0))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    return ax.figure
