"""Figures drawn for one lesson each, kept beside the notebooks that show them (not in ``csa_lib``).

- :func:`pipeline_diagram`: the whole CSA pipeline as one picture (notebook 00), boxes and arrows at
  hand-placed coordinates;
- :func:`plot_fill_comparison` and :func:`zoom_slices`: several methods' fills of one hole and their
  sources, on photos (notebook 03).

A notebook imports them with the repository root on ``sys.path``::

    import sys
    from csa_lib.config import REPO_ROOT
    sys.path.insert(0, str(REPO_ROOT))
    from notebooks.figures import pipeline_diagram

The drawing blocks they use (the offset colours, image display) are ``csa_lib.viz``'s; tests:
``tests/test_notebook_figures.py``.
"""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from csa_lib.attention_maps import offsets_from_sources
from csa_lib.config import LossConfig
from csa_lib.viz import color_wheel_image, flow_to_color, masked_display, panel_grid, to_display

__all__ = ["pipeline_diagram", "zoom_slices", "plot_fill_comparison"]


# --------------------------------------------------------------------------------------------------
# Notebook 00: the pipeline diagram
# --------------------------------------------------------------------------------------------------
def _box(ax, xy: tuple[float, float], w: float, h: float, text: str, colour: str) -> None:
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


# --------------------------------------------------------------------------------------------------
# Notebook 03: the peers on a photo
# --------------------------------------------------------------------------------------------------
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
    fig, axes = panel_grid(2 * len(cases), n_cols, cell=2.6)
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
