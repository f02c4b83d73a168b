"""Tests for csa_lib.peers: contextual attention (DeepFill) and the shift connection (Shift-Net).

The contextual attention is checked against an independent, literal per-image implementation that uses
real convolutions (normalised patches as conv2d filters, conv_transpose2d for the paste) and an explicit
double loop for the propagation, so the batched unfold/bmm/fold version cannot agree with it by accident.
"""
import pytest
import torch
import torch.nn.functional as F

from csa_lib.peers import ContextualAttention, ShiftAttention, attention_argmax, valid_sources


def rect_hole(B, H, W, top, left, h, w):
    hole = torch.zeros(B, 1, H, W, dtype=torch.bool)
    hole[:, :, top:top + h, left:left + w] = True
    return hole


def shifted_copy(gen, C, H, W, top, left, h, w, dy, dx, ring):
    """Random features whose future hole (plus a ring of `ring` positions around it) is a copy of the
    region translated by (-dy, -dx). Hole position (i, j) then has a perfect match at (i - dy, j - dx)."""
    x = torch.randn(1, C, H, W, generator=gen, dtype=torch.float64)
    t, l = top - ring, left - ring
    hh, ww = h + 2 * ring, w + 2 * ring
    x[:, :, t:t + hh, l:l + ww] = x[:, :, t - dy:t - dy + hh, l - dx:l - dx + ww].clone()
    hole = rect_hole(1, H, W, top, left, h, w)
    expected = torch.full((1, H * W), -1, dtype=torch.long)
    for i in range(top, top + h):
        for j in range(left, left + w):
            expected[0, i * W + j] = (i - dy) * W + (j - dx)
    return x, hole, expected


def contextual_by_conv(x, hole, ksize=3, scale=10.0, propagate=True, normalize_query=True):
    """Literal DeepFill-style formulation for ONE image: x [1,C,H,W], hole bool [1,1,H,W]."""
    _, C, H, W = x.shape
    N, k, pad = H * W, ksize, ksize // 2
    patches = F.unfold(x, k, padding=pad)[0].T.reshape(N, C, k, k)  # filter q = window of q
    filters = patches / patches.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None, None]
    s = F.conv2d(x, filters, padding=pad)[0]  # [N(source), H, W(target)]
    if normalize_query:
        qnorm = F.conv2d(x.pow(2).sum(1, keepdim=True), torch.ones(1, 1, k, k, dtype=x.dtype),
                         padding=pad)[0, 0].sqrt()
        s = s / qnorm.clamp_min(1e-8)
    s = s.reshape(H, W, H, W)  # (source y, source x, target y, target x)
    if propagate:
        fused = torch.zeros_like(s)
        for qy in range(H):
            for qx in range(W):
                for oy in (-1, 0, 1):
                    for ox in (-1, 0, 1):
                        sy, sx = qy + oy, qx + ox
                        if not (0 <= sy < H and 0 <= sx < W):
                            continue
                        # target p + o for every target p, shifted back onto p (zero outside)
                        shifted = torch.zeros(H, W, dtype=x.dtype)
                        ty, tx = slice(max(0, -oy), H - max(0, oy)), slice(max(0, -ox), W - max(0, ox))
                        py, px = slice(max(0, oy), H - max(0, -oy)), slice(max(0, ox), W - max(0, -ox))
                        shifted[ty, tx] = s[sy, sx, py, px]
                        fused[qy, qx] += shifted
        s = fused
    s = s.reshape(N, H, W)
    valid = torch.zeros(N, dtype=torch.bool)
    for qy in range(pad, H - pad):
        for qx in range(pad, W - pad):
            valid[qy * W + qx] = not hole[0, 0, qy - pad:qy + pad + 1, qx - pad:qx + pad + 1].any()
    if not valid.any():
        return x.clone(), torch.zeros(1, N, H, W, dtype=x.dtype)
    logits = torch.where(valid[:, None, None], scale * s, torch.tensor(float("-inf"), dtype=x.dtype))
    w = torch.softmax(logits, dim=0)[None]  # [1, N(source), H, W]
    summed = F.conv_transpose2d(w, patches, padding=pad)
    cover = F.conv_transpose2d(torch.ones(1, 1, H, W, dtype=x.dtype),
                               torch.ones(1, 1, k, k, dtype=x.dtype), padding=pad)
    return torch.where(hole, summed / cover, x), w


def shift_by_loop(x, hole):
    """Naive per-position Shift-Net for ONE image: returns shifted [1,C,H,W] and source [1,H*W]."""
    _, C, H, W = x.shape
    f = x[0].reshape(C, -1)
    shifted, source = torch.zeros_like(f), torch.full((1, H * W), -1, dtype=torch.long)
    known = [q for q in range(H * W) if not hole.flatten()[q]]
    for p in range(H * W):
        if hole.flatten()[p] and known:
            cos = [float(F.cosine_similarity(f[:, p], f[:, q], dim=0, eps=1e-8)) for q in known]
            q = known[max(range(len(known)), key=lambda i: (cos[i], -i))]
            shifted[:, p], source[0, p] = f[:, q], q
    return shifted.reshape(1, C, H, W), source


# ----------------------------------------------------------------------------------------- contextual


@pytest.mark.parametrize("propagate", [False, True])
@pytest.mark.parametrize("normalize_query", [True, False])
@pytest.mark.parametrize("where", ["inside", "corner"])
def test_contextual_matches_literal_conv(gen, propagate, normalize_query, where):
    x = torch.randn(1, 3, 7, 6, generator=gen, dtype=torch.float64)
    # "corner" touches the bottom and right borders, where fewer windows overlap in the paste
    hole = rect_hole(1, 7, 6, 2, 1, 3, 2) if where == "inside" else rect_hole(1, 7, 6, 4, 3, 3, 3)
    layer = ContextualAttention(propagate=propagate, normalize_query=normalize_query)
    y, scores = layer(x, hole, return_attention=True)
    y_ref, w_ref = contextual_by_conv(x, hole, propagate=propagate, normalize_query=normalize_query)
    torch.testing.assert_close(scores, w_ref)
    torch.testing.assert_close(y, y_ref)


def test_contextual_shapes_and_known_unchanged(gen):
    x = torch.randn(2, 5, 9, 8, generator=gen)
    hole = rect_hole(2, 9, 8, 3, 2, 4, 3)
    y, scores = ContextualAttention()(x, hole, return_attention=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert scores.shape == (2, 9 * 8, 9, 8)
    assert torch.equal(y[~hole.expand_as(x)], x[~hole.expand_as(x)])  # bit-identical
    assert not torch.allclose(y[hole.expand_as(x)], x[hole.expand_as(x)])  # the hole was repainted


def test_contextual_weights_sum_to_one_and_zero_on_hole_sources(gen):
    x = torch.randn(2, 4, 10, 10, generator=gen, dtype=torch.float64)
    hole = rect_hole(2, 10, 10, 3, 3, 4, 4)
    hole[1, 0, 0:2, 0:2] = True  # a second, different hole in image 1
    _, scores = ContextualAttention()(x, hole, return_attention=True)
    w = scores.flatten(2)  # [B, source, target]
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2, 100, dtype=torch.float64))
    valid = valid_sources(hole, 3)
    assert torch.all(w[~valid] == 0)
    assert torch.all(w[hole.flatten(1)] == 0)  # every hole source is invalid -> weight exactly 0
    assert torch.all(w[valid] > 0)  # softmax: every valid source keeps some weight


def test_valid_sources_rule():
    hole = rect_hole(1, 6, 6, 2, 2, 1, 1)  # a single hole pixel at (2, 2)
    v = valid_sources(hole, 3).reshape(6, 6)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:5, 1:5] = True  # whole 3x3 window inside the image ...
    expected[1:4, 1:4] = False  # ... and not touching the hole pixel
    assert torch.equal(v, expected)
    assert torch.equal(valid_sources(hole, 1).reshape(6, 6), ~hole[0, 0])  # 1x1: simply "known"


def test_contextual_batch_equals_one_by_one(gen):
    x = torch.randn(3, 4, 8, 9, generator=gen)
    hole = torch.zeros(3, 1, 8, 9, dtype=torch.bool)
    hole[0, :, 2:5, 3:6] = True
    hole[1, :, 5:8, 0:4] = True  # hole at the border
    # image 2: no hole at all
    layer = ContextualAttention()
    y, s = layer(x, hole, return_attention=True)
    for i in range(3):
        yi, si = layer(x[i:i + 1], hole[i:i + 1], return_attention=True)
        torch.testing.assert_close(y[i:i + 1], yi)
        torch.testing.assert_close(s[i:i + 1], si)


@pytest.mark.parametrize("propagate", [False, True])
def test_contextual_attends_to_shifted_copy(gen, propagate):
    # Hole 4x4 at (12, 12) of a 20x20 map is a copy of the region at (4, 3). With propagation, the
    # neighbours of each hole position must match too, so the copied ring is 2 wide instead of 1.
    x, hole, expected = shifted_copy(gen, 8, 20, 20, 12, 12, 4, 4, dy=8, dx=9, ring=2 if propagate else 1)
    y, scores = ContextualAttention(propagate=propagate)(x, hole, return_attention=True)
    assert torch.equal(attention_argmax(scores, hole), expected)
    # The perfect match dominates the softmax, so the fill is close to the hidden copy itself.
    err = (y - x)[hole.expand_as(x)].abs().mean() / x.abs().mean()
    assert err < 0.25, float(err)


def test_propagation_changes_scores(gen):
    x = torch.randn(1, 4, 8, 8, generator=gen)
    hole = rect_hole(1, 8, 8, 3, 3, 2, 3)
    y0, s0 = ContextualAttention(propagate=False)(x, hole, return_attention=True)
    y1, s1 = ContextualAttention(propagate=True)(x, hole, return_attention=True)
    assert (s0 - s1).abs().max() > 1e-2
    assert (y0 - y1).abs().max() > 1e-3


def test_contextual_degenerate_masks(gen):
    x = torch.randn(3, 2, 6, 6, generator=gen)
    hole = torch.zeros(3, 1, 6, 6, dtype=torch.bool)  # image 0: no hole
    hole[1] = True  # image 1: everything is hole
    hole[2, :, ::2, ::2] = True  # image 2: known pixels exist but no complete 3x3 known window
    x.requires_grad_(True)
    y, scores = ContextualAttention()(x, hole, return_attention=True)
    assert torch.equal(y, x)  # no hole -> identity; no valid source -> hole keeps its input values
    assert torch.all(scores[1:] == 0)  # no valid source -> all-zero weights, not NaN
    # image 0 (no hole) still gets its attention computed: every target attends to valid sources
    torch.testing.assert_close(scores[0].flatten(1).sum(0), torch.ones(36))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # with 1x1 patches image 2 does have sources
    y1 = ContextualAttention(ksize=1)(x.detach(), hole)
    assert not torch.equal(y1[2], x[2])


def test_contextual_accepts_float_mask_and_rejects_bad_input(gen):
    x = torch.randn(1, 2, 6, 6, generator=gen)
    hole = rect_hole(1, 6, 6, 2, 2, 2, 2)
    layer = ContextualAttention()
    torch.testing.assert_close(layer(x, hole.float()), layer(x, hole))
    with pytest.raises(ValueError, match="hole must be"):
        layer(x, hole[:, :, :5])
    with pytest.raises(ValueError, match="0/1"):
        layer(x, hole.float() * 0.5)
    with pytest.raises(ValueError, match="ksize"):
        ContextualAttention(ksize=2)


def test_contextual_gradcheck(gen):
    x = torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    hole = rect_hole(1, 5, 5, 0, 0, 2, 2)
    assert torch.autograd.gradcheck(lambda t: ContextualAttention()(t, hole), (x,))


# ----------------------------------------------------------------------------------------------- shift


def test_shift_matches_loop_and_shapes(gen):
    x = torch.randn(2, 3, 5, 6, generator=gen)
    hole = torch.zeros(2, 1, 5, 6, dtype=torch.bool)
    hole[0, :, 1:3, 2:5] = True
    hole[1, :, 3:5, 0:2] = True
    y, source = ShiftAttention()(x, hole, return_attention=True)
    assert y.shape == (2, 6, 5, 6) and source.shape == (2, 30) and source.dtype == torch.long
    assert torch.equal(y[:, :3], x)  # the input half is the input itself
    for i in range(2):
        shifted, src = shift_by_loop(x[i:i + 1], hole[i:i + 1])
        assert torch.equal(source[i:i + 1], src)
        assert torch.equal(y[i:i + 1, 3:], shifted)  # zero outside the hole, exact copies inside
    assert torch.all(source[~hole.flatten(1)] == -1)
    assert not hole.flatten(1).gather(1, source.clamp_min(0))[hole.flatten(1)].any()  # sources known


def test_shift_batch_equals_one_by_one(gen):
    x = torch.randn(3, 4, 6, 6, generator=gen)
    hole = torch.rand(3, 1, 6, 6, generator=gen) < 0.3
    y, s = ShiftAttention()(x, hole, return_attention=True)
    for i in range(3):
        yi, si = ShiftAttention()(x[i:i + 1], hole[i:i + 1], return_attention=True)
        assert torch.equal(y[i:i + 1], yi) and torch.equal(s[i:i + 1], si)


def test_shift_attends_to_shifted_copy(gen):
    x, hole, expected = shifted_copy(gen, 16, 12, 12, 6, 5, 3, 4, dy=5, dx=-3, ring=0)
    y, source = ShiftAttention()(x, hole, return_attention=True)
    assert torch.equal(source, expected)
    torch.testing.assert_close(y[:, 16:][hole.expand(1, 16, 12, 12)], x[hole.expand_as(x)])


def test_shift_degenerate_masks(gen):
    x = torch.randn(2, 3, 4, 4, generator=gen)
    hole = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    hole[1] = True
    y, source = ShiftAttention()(x, hole, return_attention=True)
    assert torch.equal(y[:, :3], x) and torch.all(y[:, 3:] == 0)
    assert torch.all(source == -1)


def test_shift_gradient_reaches_copied_source(gen):
    x = torch.randn(1, 2, 4, 4, generator=gen, requires_grad=True)
    hole = rect_hole(1, 4, 4, 0, 0, 1, 1)
    y, source = ShiftAttention()(x, hole, return_attention=True)
    y[:, 2:].sum().backward()  # only the shifted half
    q = int(source[0, 0])
    g = x.grad.flatten(2)[0]
    assert torch.all(g[:, q] == 1) and int((g != 0).any(0).sum()) == 1
