"""Baselines without learning and the fixed-mask-per-bin protocol."""
import numpy as np
import pytest
import torch
from PIL import Image

from csa_lib.baselines import biharmonic_inpaint, mean_fill
from csa_lib.masks import MaskFolder
from csa_lib.metrics import BinnedMaskProtocol, evaluate, results_table


def test_biharmonic_keeps_known_pixels_and_fills_a_smooth_ramp():
    # A linear ramp is biharmonic: the solver must reproduce it inside the hole almost exactly.
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).clone()
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 8:24] = 1
    mask[1, :, 4:12, 20:30] = 1
    out = biharmonic_inpaint(ramp, mask)
    assert torch.equal(out * (1 - mask), ramp * (1 - mask))
    assert (out - ramp).abs().max() < 1e-3
    flat = mean_fill(ramp, mask)
    assert ((flat - ramp).abs() * mask).sum() > 10 * ((out - ramp).abs() * mask).sum()


def test_mean_fill_uses_the_known_mean():
    img = torch.zeros(1, 3, 4, 4)
    img[..., :, :2] = 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = mask[..., 0, 3] = 1
    out = mean_fill(img, mask)
    # known: 14 pixels, 7 of them 1.0 (columns 0-1 minus the hole at (0, 0)) -> mean 7/14
    assert out[0, 0, 0, 0].item() == pytest.approx(7 / 14) and out[0, 0, 1, 0].item() == 1.0


def _mask_folder(root, ratios):
    for i, r in enumerate(ratios):
        arr = np.zeros((20, 20), np.uint8)
        arr.flat[: round(r * 400)] = 255
        Image.fromarray(arr).save(root / f"{i:03d}.png")
    return MaskFolder(root, 20, augment=False)


def test_binned_protocol_is_fixed_and_balanced(tmp_path):
    folder = _mask_folder(tmp_path, [0.05] * 4 + [0.15] * 4 + [0.35] * 3)
    images = [(torch.full((3, 20, 20), i / 10.0), None) for i in range(9)]
    bins = ("0-10%", "10-20%", "30-40%")
    p = BinnedMaskProtocol(images, folder, bins=bins, seed=3)
    q = BinnedMaskProtocol(images, folder, bins=bins, seed=3)
    assert p.labels == list(bins) * 3 and p.mask_index == q.mask_index
    assert len(set(p.mask_index)) == 9  # drawn without replacement
    for j in range(len(p)):
        image, mask = p[j]
        assert torch.equal(image, images[j][0]) and folder.ratio_bin(p.mask_index[j]) == p.labels[j]
    res = evaluate(mean_fill, p, batch_size=4, masks_by_bin=p.labels, progress=False)
    assert res.bins == p.labels and set(res.summary()) == set(bins) | {"all"}
    assert "N" in results_table(res)
    with pytest.raises(ValueError, match="has 4 masks in bin 0-10%, the protocol needs 6"):
        BinnedMaskProtocol(images * 2, folder, bins=bins)


def test_border_distance_and_error_bands():
    from csa_lib.masks import border_distance
    from csa_lib.metrics import error_by_border_distance

    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 1:8, 1:8] = 1  # a 7x7 hole: rings at distance 1, 2, 3 and the centre at 4
    d = border_distance(mask)[0, 0]
    assert d[0, 0] == 0 and d[1, 1] == 1 and d[2, 2] == 2 and d[3, 3] == 3 and d[4, 4] == 4
    assert [(d == k).sum().item() for k in (1, 2, 3, 4)] == [24, 16, 8, 1]
    target = torch.zeros(1, 3, 9, 9)
    pred = target.clone()
    pred[..., 4, 4] = 1.0  # only the centre pixel is wrong: 0.5 in [0, 1] units, squared 0.25
    bands = error_by_border_distance(pred, target, mask, bands=((1, 1), (2, 3), (4, None)))
    assert bands["1"] == (0.0, 24) and bands["2-3"] == (0.0, 24) and bands["4+"] == (0.25, 1)


def test_border_blend_mixes_biharmonic_only_in_the_first_rings():
    # A 12x12 hole in a ramp; the "network" fill is a constant 0.5 everywhere.
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).clone()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:22, 10:22] = 1
    fill = torch.full_like(ramp, 0.5)
    from csa_lib.baselines import border_blend
    from csa_lib.masks import border_distance

    out = border_blend(fill, ramp, mask, weights=(0.75, 0.25))
    d = border_distance(mask).expand(-1, 3, -1, -1)
    smooth = biharmonic_inpaint(ramp, mask)
    assert torch.equal(out[d == 0], ramp[d == 0])  # known pixels: the image's
    torch.testing.assert_close(out[d == 1], 0.25 * fill[d == 1] + 0.75 * smooth[d == 1])
    torch.testing.assert_close(out[d == 2], 0.75 * fill[d == 2] + 0.25 * smooth[d == 2])
    assert torch.equal(out[d >= 3], fill[d >= 3])  # deeper: the network's fill untouched
    # the biharmonic share lowers the error in the first ring (the fill is wrong, the ramp is biharmonic)
    assert (out - ramp)[d == 1].abs().mean() < 0.3 * (fill - ramp)[d == 1].abs().mean()
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
        border_blend(fill, ramp, mask, weights=(1.5,))
