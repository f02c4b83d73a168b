"""How much the official code's in-place ``masked_fill_`` moves the coarse net's first-layer gradient.

The official forward (``models/CSA.py`` line 140 of KumapowerLIU/CSA-inpainting) zeroes the hole of the
coarse net's input tensor in place, after the coarse net ran and its first convolution saved that tensor
for the backward. So the official weight gradient of that convolution is computed from the hole-zeroed
image, while the forward (and hence the gradient arriving at the convolution's output) used the image
with the hole painted the fill colour. This script computes both weight gradients for csa_lib's
``CoarseNet`` at the official size and prints their relative difference (README, "Paper vs official code
vs this repository", defect 2). The L1 loss is the only one that reaches the coarse net (the refinement
input holds its detached output), and its weight (official 100) does not change a relative difference.

    python benchmarks/official_inplace_grad.py [--images 4] [--size 256] [--width 64] [--hole 120]
"""
from __future__ import annotations

import argparse

import torch
from torch.nn.grad import conv2d_weight

from csa_lib.data import EmbeddedDataset
from csa_lib.losses import l1_loss
from csa_lib.masks import center_mask
from csa_lib.networks import CoarseNet, fill_hole


def first_layer_gradients(net: CoarseNet, image: torch.Tensor, mask: torch.Tensor):
    """(weight gradient of ``net.down[0]`` as autograd computes it, the same from the hole-zeroed input).

    image ``[1,3,S,S]`` in [-1,1], mask ``[1,1,S,S]`` (1 = hole). The second is what the official backward
    computes: the gradient at the conv's output is unchanged, only the saved input differs.
    """
    x = fill_hole(image, mask)
    out0 = net.down[0](x)
    out0.retain_grad()
    net.zero_grad()
    # The rest of CoarseNet.forward, from the first conv's output on.
    h, skips = out0, [out0]
    for layer in net.down[1:]:
        h = layer(h)
        skips.append(h)
    skips.pop()
    h = net.up[0](h)
    for layer in net.up[1:]:
        h = layer(torch.cat([h, skips.pop()], dim=1))
    l1_loss(h, image).backward()
    w = net.down[0]
    true = w.weight.grad.clone()
    zeroed = conv2d_weight(image * (1 - mask), w.weight.shape, out0.grad, stride=w.stride, padding=w.padding)
    return true, zeroed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--hole", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    net = CoarseNet(args.width, args.size)
    data = EmbeddedDataset(args.size, center_mask(args.size, args.hole), n=args.images, seed=args.seed)
    for i in range(args.images):
        image, mask = (t[None] for t in data[i])
        true, zeroed = first_layer_gradients(net, image, mask)
        print(f"image {i}: |g_official - g| / |g| = {float((zeroed - true).norm() / true.norm()):.3f}")


if __name__ == "__main__":
    main()
