"""Inpainting without learning, to measure what a trained network adds.

:func:`biharmonic_inpaint` fills each hole with the smoothest continuation of the known pixels around
it (scikit-image's ``inpaint_biharmonic``: it solves the biharmonic equation ``Δ²u = 0`` inside the hole
with the known pixels as boundary values). It has no notion of faces, so it is the floor a learned
model must clear. :func:`mean_fill` is an even simpler floor: the mean colour of the known pixels.
Both take and return the generator's convention, so :func:`csa_lib.metrics.evaluate` scores them alike.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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


def mean_fill(image: Tensor, mask: Tensor) -> Tensor:
    """Each hole filled with its image's mean known colour: ``[B,3,H,W]`` in [-1, 1]."""
    known = 1 - mask
    mean = (image * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return image * known + mean * mask
