"""Tests of the CSA layer: the fast layer against the line-by-line reference, gradients, the official
backward rule, degenerate masks, the paper-mode guard and the meaning of the attention it returns."""
import pytest
import torch
import torch.nn.functional as F

from csa_lib import csa as csa_mod
from csa_lib.csa import GUARD_EPS, CoherentSemanticAttention, CSAAttention, csa_reference

CHAINS = csa_mod.available_chains("cpu")


# ---------------------------------------------------------------------------------------------- helpers
def blob_mask(B, H, W, ratio, gen):
    """Irregular hole masks: thresholded smooth noise, one per image, about `ratio` of holes."""
    noise = F.avg_pool2d(torch.rand(B, 1, H + 4, W + 4, generator=gen), 5, stride=1)
    thr = noise.flatten(1).quantile(1 - ratio, dim=1)[:, None, None, None]
    return noise > thr


def centre_mask(B, H, W, h):
    m = torch.zeros(B, 1, H, W, dtype=torch.bool)
    m[:, :, (H - h) // 2:(H - h) // 2 + h, (W - h) // 2:(W - h) // 2 + h] = True
    return m


def features(B, C, H, W, gen, dtype=torch.float64, offset=0.0):
    return (torch.randn(B, C, H, W, generator=gen) + offset).to(dtype)


def check_same(y, att, y_ref, att_ref, rtol, atol):
    torch.testing.assert_close(att.count, att_ref.count)
    torch.testing.assert_close(att.hole_index, att_ref.hole_index)
    torch.testing.assert_close(att.source, att_ref.source)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    for name in ("d_max", "d_ad", "a", "b"):
        torch.testing.assert_close(getattr(att, name), getattr(att_ref, name), rtol=rtol, atol=atol, msg=name)
    if att_ref.rows is not None:
        torch.testing.assert_close(att.rows, att_ref.rows, rtol=rtol, atol=atol)


CASES = [  # (B, C, H, W, mask kind)
    (2, 5, 8, 8, "centre"),
    (3, 7, 9, 11, "blob"),
    (1, 16, 12, 12, "blob"),
    (4, 3, 6, 6, "per_image"),
]


def make_case(case, gen, dtype=torch.float64, offset=0.0):
    B, C, H, W, kind = case
    x = features(B, C, H, W, gen, dtype, offset)
    if kind == "centre":
        hole = centre_mask(B, H, W, H // 2)
    elif kind == "blob":
        hole = blob_mask(B, H, W, 0.35, gen)
    else:  # different sizes of centre hole and a blob per image
        hole = torch.cat([centre_mask(1, H, W, 2), centre_mask(1, H, W, 4), blob_mask(1, H, W, 0.2, gen),
                          blob_mask(1, H, W, 0.5, gen)])[:B]
    return x, hole


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
@pytest.mark.parametrize("case", CASES)
def test_fast_matches_reference_float64(case, semantics, chain, gen):
    x, hole = make_case(case, gen)
    y_ref, att_ref = csa_reference(x, hole, semantics, return_rows=True)
    y, att = CoherentSemanticAttention(semantics, chain=chain)(x, hole, return_rows=True)
    check_same(y, att, y_ref, att_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_fast_matches_reference_float32(semantics, chain, gen):
    # a positive offset keeps the official (unguarded) weights in (0, 1) so float32 rounding is not amplified
    for case in CASES[:3]:
        x, hole = make_case(case, gen, torch.float32, offset=2.0)
        y_ref, att_ref = csa_reference(x, hole, semantics, return_attention=True)
        y, att = CoherentSemanticAttention(semantics, chain=chain)(x, hole, return_attention=True)
        assert ((att.a >= 0) & (att.a < 1)).all()
        torch.testing.assert_close(att.source, att_ref.source)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_reference_follows_the_recurrence_by_hand():
    # 1 x 3 image, C = 2: known f_0 = (1, 0); holes p_1 = 1, p_2 = 2
    x = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 2.0, 4.0]]]], dtype=torch.float64)
    hole = torch.tensor([[[[False, True, True]]]])
    y, att = csa_reference(x, hole, "official", return_attention=True)
    # search: only one known position, so k_1 = k_2 = f_0; official s_t = <f_p, f_0> / ||f_0||
    assert att.source.tolist() == [[0, 0]]
    torch.testing.assert_close(att.d_max, torch.tensor([[0.0, 3.0]], dtype=torch.float64))
    # chain: m_1 = f_0, d_2 = <m_1, f_2/||f_2||> = 3/5, a = d/(d+s) = 0.6/3.6, b = 3/3.6
    d2 = 3.0 / 5.0
    torch.testing.assert_close(att.d_ad[0, 1].item(), d2)
    torch.testing.assert_close(att.a[0, 1].item(), d2 / (d2 + 3.0))
    torch.testing.assert_close(y[0, :, 0, 2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(y[0, :, 0, 0], x[0, :, 0, 0])


@pytest.mark.parametrize("chain", CHAINS)
def test_batch_equals_images_one_by_one(chain, gen):
    x, hole = make_case((4, 6, 10, 10, "per_image"), gen)
    layer = CoherentSemanticAttention("paper", chain=chain)
    y, att = layer(x, hole, return_attention=True)
    for i in range(4):
        yi, ai = layer(x[i:i + 1], hole[i:i + 1], return_attention=True)
        torch.testing.assert_close(y[i:i + 1], yi, rtol=1e-12, atol=1e-12)
        for key, v in ai.image(0).items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(att.image(i)[key], v, rtol=1e-12, atol=1e-12)


def test_known_positions_unchanged_and_holes_filled(gen):
    x, hole = make_case((2, 4, 8, 8, "blob"), gen)
    y = CoherentSemanticAttention()(x, hole)
    keep = (~hole).expand_as(x)
    assert torch.equal(y[keep], x[keep])
    assert not torch.allclose(y[hole.expand_as(x)], x[hole.expand_as(x)])


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_attention_rows_reproduce_output(semantics, chain, gen):
    x, hole = make_case((3, 5, 8, 8, "blob"), gen, offset=0.5)
    y, att = CoherentSemanticAttention(semantics, chain=chain)(x, hole, return_rows=True)
    feats = x.flatten(2).transpose(1, 2)                       # [B,N,C]
    out = y.flatten(2).transpose(1, 2)
    for i in range(3):
        im = att.image(i)
        assert im["count"] == int(hole[i].sum())
        torch.testing.assert_close(im["rows"] @ feats[i], out[i, im["hole_index"]])
        # rows only use known sources, and the first row is the one-hot of the first source
        assert (im["rows"][:, hole[i].flatten()] == 0).all()
        assert im["rows"][0, im["source"][0]] == 1 and im["rows"][0].sum() == 1


# ---------------------------------------------------------------------------------------------- meaning
def test_attends_to_shifted_copy_of_context(gen):
    # the hole holds a copy of the features 4 columns to its left: every hole must pick that copy
    B, C, H, W, s = 1, 32, 12, 12, 4
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    hole = centre_mask(B, H, W, 4)
    rows, cols = torch.nonzero(hole[0, 0], as_tuple=True)
    y, att = CoherentSemanticAttention("official")(x, hole, return_attention=True)
    assert att.hole_index[0].tolist() == (rows * W + cols).tolist()
    # the hole's "original" features (what CSA searches with) equal the shifted context
    x2 = x.clone()
    x2[0, :, rows, cols] = x[0, :, rows, cols - s]
    for semantics in ("paper", "official"):
        _, att = CoherentSemanticAttention(semantics)(x2, hole, return_attention=True)
        assert att.source[0].tolist() == (rows * W + cols - s).tolist()
        torch.testing.assert_close(att.d_max[0], torch.ones(16, dtype=torch.float64)
                                   if semantics == "paper" else x2[0, :, rows, cols].norm(dim=0))


def test_official_and_paper_differ_where_they_should(gen):
    x, hole = make_case((2, 6, 8, 8, "blob"), gen, offset=0.3)
    y_p, att_p = CoherentSemanticAttention("paper")(x, hole, return_attention=True)
    y_o, att_o = CoherentSemanticAttention("official")(x, hole, return_attention=True)
    # the search differs only by a positive factor per query: same sources, scores scaled by ||f_p||
    assert torch.equal(att_p.source, att_o.source)
    q_norm = x.flatten(2).transpose(1, 2)[torch.arange(2)[:, None], att_o.hole_index.clamp(min=0)].norm(dim=-1)
    valid = att_o.hole_index >= 0
    torch.testing.assert_close(att_o.d_max[valid], (att_p.d_max * q_norm)[valid], rtol=1e-6, atol=1e-8)
    # the first hole copies its match in both; the chains (and so the outputs) differ afterwards
    torch.testing.assert_close(att_p.b[:, 0], att_o.b[:, 0])
    assert not torch.allclose(att_p.a[valid], att_o.a[valid])
    assert not torch.allclose(y_p, y_o)
    assert torch.equal(y_p[~hole.expand_as(x)], y_o[~hole.expand_as(x)])


def test_paper_guard_keeps_outputs_finite_and_convex(gen):
    # 1 x 4 image, C = 2: known q0 = (1, 0), q3 = (0, 1); holes p1 ~ q0 and p2 = (-r, r), r = 1/sqrt(2).
    # p1 copies q0, so m_1 = (1, 0); at p2 the official scores are d_2 = <m_1, p2/|p2|> = -r and
    # s_2 = <p2, q3> = +r: d_2 + s_2 ~ 0 and the unguarded weights explode (official issue #26).
    r = 0.5 ** 0.5
    x = torch.tensor([[[[1.0, 1.0, -r, 0.0]], [[0.0, 0.1, r, 1.0]]]], dtype=torch.float64)
    hole = torch.tensor([[[[False, True, True, False]]]])
    _, att_off = CoherentSemanticAttention("official")(x, hole, return_attention=True)
    assert not torch.isfinite(att_off.a[0, 1]) or att_off.a[0, 1].abs() > 1e3
    y, att = CoherentSemanticAttention("paper")(x, hole, return_attention=True)
    # paper mode: d' = max(d, 0) = 0, so a = 0, b = 1: p2 copies its match q3
    assert torch.isfinite(y).all()
    assert att.a[0, 1] == 0 and att.b[0, 1] == 1
    torch.testing.assert_close(y[0, :, 0, 2], x[0, :, 0, 3])
    # on random signed features the paper weights always form a convex blend
    x, hole = make_case((3, 8, 10, 10, "blob"), gen)
    y, att = CoherentSemanticAttention("paper")(x, hole, return_attention=True)
    valid = att.hole_index >= 0
    assert (att.a[valid] >= 0).all() and (att.b[valid] > 0).all()
    torch.testing.assert_close((att.a + att.b)[valid], torch.ones(int(valid.sum()), dtype=torch.float64))
    assert y.abs().max() <= x.abs().max() * 1.0001


def test_paper_guard_formula_near_zero():
    d = torch.tensor([0.3, -0.2, 0.0, 1e-9, -0.5], dtype=torch.float64)
    s = torch.tensor([0.5, 0.4, 0.0, -1e-9, -0.1], dtype=torch.float64)
    a, b = csa_mod._coefficients(d, s, paper=True)
    torch.testing.assert_close(a, torch.tensor([0.3 / (0.8 + GUARD_EPS), 0, 0, 1e-9 / (1e-9 + GUARD_EPS), 0],
                                               dtype=torch.float64))
    torch.testing.assert_close(a + b, torch.ones(5, dtype=torch.float64))



@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_argmax_ties_go_to_smallest_known_index(chain, semantics, dtype, gen):
    """Exact ties (two identical known vectors, the best match of every hole) go to the smallest
    raster index, whatever the back-end (numba compacts the known columns before the matmul)."""
    B, C, H, W = 2, 6, 8, 8
    x = 0.01 * torch.randn(B, C, H, W, generator=gen, dtype=dtype)
    hole = centre_mask(B, H, W, 4)
    v = torch.randn(C, generator=gen, dtype=dtype).abs() + 1.0
    for p in (47, 9, 62):                      # known positions (row 1, row 5 right edge, row 7)
        x[:, :, p // W, p % W] = v
    x[:, :, 2:6, 2:6] = v[:, None, None]       # the holes point the same way
    y, att = CoherentSemanticAttention(semantics, chain=chain)(x, hole, return_attention=True)
    assert (att.source[:, :int(att.count[0])] == 9).all()
    _, att_ref = csa_reference(x, hole, semantics, return_attention=True)
    assert torch.equal(att.source, att_ref.source)


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_thread_count_does_not_change_results(threads, gen):
    if "numba" not in CHAINS:
        pytest.skip("numba not installed")
    x, hole = make_case((4, 6, 10, 10, "per_image"), gen, torch.float32)
    x.requires_grad_(True)
    layer = CoherentSemanticAttention("paper", chain="numba")
    y1, att1 = layer(x, hole, return_attention=True)
    (g1,) = torch.autograd.grad((y1 * torch.arange(y1.numel()).reshape(y1.shape).sin()).sum(), x)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y2, att2 = layer(x, hole, return_attention=True)
        (g2,) = torch.autograd.grad((y2 * torch.arange(y2.numel()).reshape(y2.shape).sin()).sum(), x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2) and torch.equal(g1, g2) and torch.equal(att1.source, att2.source)


@pytest.mark.parametrize("B,threads", [(1, 2), (1, 3), (2, 4), (3, 2)])
def test_numba_images_split_over_threads(B, threads, gen):
    """A batch smaller than the thread count splits each image's passes into channel ranges (S > 1):
    same result as one thread and as the reference, C not a multiple of the number of ranges."""
    if "numba" not in CHAINS:
        pytest.skip("numba not installed")
    x, hole = make_case((B, 7, 9, 11, "blob"), gen, torch.float64)
    w = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    layer = CoherentSemanticAttention("paper", chain="numba")
    outs = []
    old = torch.get_num_threads()
    for n in (1, threads):
        torch.set_num_threads(n)
        try:
            xg = x.clone().requires_grad_(True)
            y, att = layer(xg, hole, return_attention=True)
            (g,) = torch.autograd.grad((y * w).sum(), xg)
        finally:
            torch.set_num_threads(old)
        outs.append((y, att, g))
    (y1, att1, g1), (y2, att2, g2) = outs
    assert torch.equal(att1.source, att2.source) and torch.equal(att1.hole_index, att2.hole_index)
    torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, g1, rtol=1e-12, atol=1e-12)
    y_ref, att_ref = csa_reference(x, hole, "paper", return_attention=True)
    check_same(y2, att2, y_ref, att_ref, 1e-10, 1e-10)


# ---------------------------------------------------------------------------------------------- degenerate
@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("backward", ["autograd", "official"])
def test_degenerate_masks(chain, backward, gen):
    B, C, H, W = 4, 3, 5, 5
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    hole = torch.zeros(B, 1, H, W, dtype=torch.bool)
    hole[1] = True                      # no known position
    hole[2] = True
    hole[2, 0, 4, 4] = False            # a single known position: every hole copies it
    hole[3, 0, 2, 2] = True             # a single hole
    layer = CoherentSemanticAttention("paper", backward=backward, chain=chain)
    y, att = layer(x, hole, return_attention=True)
    assert torch.isfinite(y).all()
    assert att.count.tolist() == [0, 0, H * W - 1, 1]
    torch.testing.assert_close(y[0], x[0])                         # no hole: identity
    torch.testing.assert_close(y[1], x[1])                         # no known position: unchanged
    torch.testing.assert_close(y[2], x[2, :, 4:5, 4:5].expand(C, H, W))
    assert (att.source[2, :H * W - 1] == H * W - 1).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    y_ref, att_ref = csa_reference(x.detach(), hole, "paper", return_attention=True)
    check_same(y.detach(), att, y_ref, att_ref, 1e-10, 1e-10)


def test_memory_formats_and_half_precision(gen):
    x, hole = make_case((2, 8, 8, 8, "blob"), gen, torch.float32, offset=1.0)
    layer = CoherentSemanticAttention()
    y = layer(x, hole)
    xc = x.clone().to(memory_format=torch.channels_last).requires_grad_(True)
    torch.testing.assert_close(layer(xc, hole), y)
    layer(xc, hole).sum().backward()
    xn = x.clone().requires_grad_(True)
    layer(xn, hole).sum().backward()
    torch.testing.assert_close(xc.grad, xn.grad)
    yh = layer(x.to(torch.bfloat16), hole)                 # computed in float32, returned in bfloat16
    assert yh.dtype == torch.bfloat16 and torch.isfinite(yh.float()).all()


def test_empty_batch_shapes(gen):
    x = torch.randn(2, 3, 4, 4, generator=gen)
    y, att = CoherentSemanticAttention()(x, torch.zeros(2, 1, 4, 4, dtype=torch.bool), return_rows=True)
    assert torch.equal(y, x)
    assert att.hole_index.shape == (2, 0) and att.rows.shape == (2, 0, 16)


def test_input_validation():
    layer = CoherentSemanticAttention()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="4-D"):
        layer(x[0], torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        layer(x, torch.zeros(2, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        layer(x, torch.zeros(3, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        layer(x, torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(TypeError, match="floating"):
        layer(x.long(), torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="semantics"):
        CoherentSemanticAttention("cosine")
    with pytest.raises(ValueError, match="backward"):
        CoherentSemanticAttention(backward="true")
    with pytest.raises(ValueError, match="chain"):
        CoherentSemanticAttention(chain="cuda-magic")
    # a float 0/1 mask and a [1,1,H,W] mask shared by the batch are accepted
    hole = torch.zeros(1, 1, 4, 4)
    hole[..., 1:3, 1:3] = 1
    torch.testing.assert_close(layer(x, hole), layer(x, hole.bool().expand(2, 1, 4, 4)))


# ---------------------------------------------------------------------------------------------- backward
@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_gradcheck_autograd_mode(semantics, chain, gen):
    x, hole = make_case((2, 3, 4, 5, "per_image"), gen, offset=0.3)
    x.requires_grad_(True)
    layer = CoherentSemanticAttention(semantics, chain=chain)
    assert torch.autograd.gradcheck(lambda z: layer(z, hole), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_fast_gradient_equals_reference_gradient(semantics, chain, gen):
    x, hole = make_case((2, 8, 8, 8, "per_image"), gen, offset=0.3)
    w = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (csa_reference(xr, hole, semantics) * w).sum().backward()
    (CoherentSemanticAttention(semantics, chain=chain)(xf, hole) * w).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-9, atol=1e-9)


def test_official_backward_by_hand():
    # 1 x 4 image, C = 1: known q0, q3; holes p1, p2; q3 < 0 so both holes pick q0.
    x = torch.tensor([[[[1.0, 5.0, 2.0, -3.0]]]], dtype=torch.float64, requires_grad=True)
    hole = torch.tensor([[[[False, True, True, False]]]])
    g = torch.tensor([[[[10.0, 20.0, 30.0, 40.0]]]], dtype=torch.float64)
    y, att = CoherentSemanticAttention("official", backward="official")(x, hole, return_rows=True)
    # official D_max(p, q) = f_p f_q / (|f_q| + 1e-8) ~ f_p sign(f_q)
    assert att.source.tolist() == [[0, 0]]
    (y * g).sum().backward()
    # W rows: known q0 -> e_0, known q3 -> e_3, p1 -> e_{c(p1)} = e_0, p2 -> trunc(a e_0 + b e_0) = e_0 or 0
    w2 = int(att.rows[0, 1, 0].item())                              # a + b = 1 in reals; trunc as the code
    assert w2 in (0, 1) and att.rows[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    expect = g.clone()
    expect[..., 0] += g[..., 0] + g[..., 1] + w2 * g[..., 2]        # column 0 collects rows q0, p1, (p2)
    expect[..., 3] += g[..., 3]                                     # known identity row
    torch.testing.assert_close(x.grad, expect)


@pytest.mark.parametrize("chain", CHAINS)
def test_official_backward_rule_generic(chain, gen):
    x, hole = make_case((3, 4, 7, 7, "per_image"), gen)
    x.requires_grad_(True)
    g = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    y, att = CoherentSemanticAttention("official", backward="official", chain=chain)(x, hole, return_rows=True)
    (y * g).sum().backward()
    # dense N x N W per image, as the official code builds it, then grad = g + W^T g
    B, C, H, W_ = x.shape
    N = H * W_
    for i in range(3):
        Wm = torch.zeros(N, N, dtype=torch.float64)
        known = (~hole[i].flatten()).nonzero().flatten()
        Wm[known, known] = 1
        im = att.image(i)
        Wm[im["hole_index"]] = im["rows"].trunc()
        gi = g[i].reshape(C, N)
        torch.testing.assert_close(x.grad[i].reshape(C, N), gi + gi @ Wm, rtol=1e-12, atol=1e-12)
        # holes: identity gradient
        hi = im["hole_index"]
        torch.testing.assert_close(x.grad[i].reshape(C, N)[:, hi], gi[:, hi])
    # the forward is the same as in autograd mode
    torch.testing.assert_close(y, CoherentSemanticAttention("official", chain=chain)(x.detach(), hole))


# ---------------------------------------------------------------------------------------------- triton
TRITON_SCRIPT = r"""
import torch
from csa_lib.csa import CoherentSemanticAttention, available_chains, csa_reference
assert "triton" in available_chains("cpu"), available_chains("cpu")
g = torch.Generator().manual_seed(0)
x = torch.randn(4, 5, 7, 7, generator=g, dtype=torch.float64) + 0.3
hole = torch.rand(4, 1, 7, 7, generator=g) < 0.4
hole[1] = False                      # no hole
hole[2] = True                       # no known position
for sem in ("paper", "official"):
    xr, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=g, dtype=x.dtype)
    yr, ar = csa_reference(xr, hole, sem, return_attention=True)
    yt, at = CoherentSemanticAttention(sem, chain="triton")(xt, hole, return_attention=True)
    assert torch.equal(at.source, ar.source)
    torch.testing.assert_close(yt, yr, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(at.a, ar.a, rtol=1e-10, atol=1e-10)
    (yr * w).sum().backward()
    (yt * w).sum().backward()
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-9, atol=1e-9)
    x32 = x.float() + 1.0
    y32 = CoherentSemanticAttention(sem, chain="triton")(x32, hole)
    torch.testing.assert_close(y32, CoherentSemanticAttention(sem, chain="torch")(x32, hole), rtol=1e-5, atol=1e-5)
print("triton-ok")
"""


@pytest.mark.slow
def test_triton_chain_under_interpreter():
    """The Triton kernels (CUDA back-end) run on CPU under TRITON_INTERPRET=1 in a fresh process."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "triton" in r.stderr and "ImportError" in r.stderr:
        pytest.skip(f"triton interpreter unavailable: {r.stderr[-300:]}")
    if r.returncode != 0 and "only 0-dimensional arrays can be converted" in r.stderr:
        # Triton 3.6's CPU interpreter (torch 2.11's) fails at its first launch under NumPy 2.4: a bug of
        # the interpreter used only for this CPU test, not of the kernels; they need a GPU to be checked.
        pytest.skip("this Triton's CPU interpreter cannot run under this NumPy (TypeError: only 0-dimensional "
                    "arrays can be converted); the kernels are checked by benchmarks/gpu_check.py on a GPU")
    assert r.returncode == 0 and "triton-ok" in r.stdout, r.stderr[-3000:]


NO_NUMBA_SCRIPT = r"""
import sys
sys.modules["numba"] = None          # makes `import numba` fail, as on a machine without it
import torch
from csa_lib.csa import CoherentSemanticAttention, available_chains, csa_reference
assert "numba" not in available_chains("cpu"), available_chains("cpu")
x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
hole = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
hole[:, :, 2:4, 1:5] = True
y = CoherentSemanticAttention()(x, hole)
torch.testing.assert_close(y, csa_reference(x, hole))
y.sum().backward()
print("no-numba-ok")
"""


def test_works_without_numba():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", NO_NUMBA_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no-numba-ok" in r.stdout, r.stderr[-3000:]
