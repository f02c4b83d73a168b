"""Inpainting without learning, to measure what a trained network adds.

:func:`biharmonic_inpaint` fills each hole with the smoothest continuation of the known pixels around
it (scikit-image's ``inpaint_biharmonic``: it solves the biharmonic equation ``Δ²u = 0`` inside the hole
with the known pixels as boundary values). It has no notion of faces, so it is the floor a learned
model must clear. :func:`mean_fill` is an even simpler floor: the mean colour of the known pixels.
Both take and return the generator's convention, so :func:`csa_lib.metrics.evaluate` scores them alike.

:func:`border_blend` is the one place the two meet: a named, optional post-processing that mixes a
network's fill with the biharmonic continuation in the first two rings of the hole, where a smooth
interpolator is nearly exact and a network without a full-resolution view of the hole's edge is not
(benchmarks/RESULTS.md, "The first pixel inside the hole"). The shipped face model's version 3 has such a view
(``ModelConfig.border_head``) and gains nothing from the blend ("Version 3: the border head").
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .masks import border_distance


def biharmonic_inpaint(image: Tensor, mask: Tensor) -> Tensor:
    """image ``[B,3,H,W]`` in [-1, 1], mask ``[B,1,H,W]`` (1 = hole) -> ``[B,3,H,W]`` in [-1, 1].

    Known pixels are returned unchanged; each image is solved on the CPU in float64.
    """
    from skimage.restoration import inpaint_biharmonic

    out = []
    for img, m in zip(image.detach().float().cpu(), mask.detach().cpu()):
        arr = img.permute(1, 2, 0).double().numpy()
        hole = m[0].numpy() > 0.5
        if hole.any() and not hole.all():
            arr = inpaint_biharmonic(arr, hole, channel_axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float())
    return torch.stack(out).clamp(-1, 1).to(image.device)


#: Weights of the biharmonic fill at chessboard distance 1 and 2 px from the known region (the rest of the
#: hole keeps the network's fill). Chosen for face model version 2 on held-out faces 9,001-9,300 (30-60 % bins)
#: by ``benchmarks/border_error.py``: 0.7-0.8 at 1 px gave the lowest error there, 0.4 at 2 px.
BORDER_BLEND = (0.8, 0.4)


def border_blend(fill: Tensor, image: Tensor, mask: Tensor, weights: tuple[float, ...] = BORDER_BLEND) -> Tensor:
    """A fill with its first hole rings mixed with the biharmonic continuation of the known pixels.

    fill, image ``[B,3,H,W]`` in [-1, 1] (``fill`` a composite or a raw output: only hole pixels are
    used), mask ``[B,1,H,W]`` (1 = hole); ``weights[k]`` is the biharmonic share at distance ``k + 1`` px.
    Returns the composite ``[B,3,H,W]``: known pixels from ``image``, hole pixels
    ``(1 - w) * fill + w * biharmonic`` with ``w`` from the pixel's distance to the known region (0 deeper in).
    """
    if any(not 0.0 <= float(w) <= 1.0 for w in weights):
        raise ValueError(f"border_blend: weights must lie in [0, 1], got {tuple(weights)}")
    dist = border_distance(mask)
    w = torch.zeros_like(mask, dtype=fill.dtype)
    for k, wk in enumerate(weights, start=1):
        w = torch.where(dist == k, torch.as_tensor(float(wk), dtype=fill.dtype), w)
    smooth = biharmonic_inpaint(image, mask).to(fill.dtype)
    hole = (mask > 0.5).to(fill.dtype)
    return image * (1 - hole) + (fill * (1 - w) + smooth * w) * hole


def mean_fill(image: Tensor, mask: Tensor) -> Tensor:
    """Each hole filled with its image's mean known colour: ``[B,3,H,W]`` in [-1, 1]."""
    known = 1 - mask
    mean = (image * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return image * known + mean * mask
