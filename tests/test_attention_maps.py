"""Tests for csa_lib.attention_maps: offsets from sources, attention rows and heat maps, the chain's
balance and predecessors, neighbour coherence; on hand-made records and on the real layers."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from csa_lib import attention_maps


def fake_attention(hole: torch.Tensor, gen: torch.Generator, a_range=(-0.3, 0.9)) -> SimpleNamespace:
    """A CSAAttention-shaped record for bool ``hole [B, h, w]``: random known sources and coefficients,
    rows built with the recurrence w_t = a_t w_{t-1} + b_t e_{c(p_t)} written out independently here."""
    B, h, w = hole.shape
    count = hole.flatten(1).sum(1)
    T = int(count.max())
    hole_index = torch.full((B, T), -1, dtype=torch.long)
    source = torch.full((B, T), -1, dtype=torch.long)
    a, b = torch.zeros(B, T), torch.zeros(B, T)
    rows = torch.zeros(B, T, h * w)
    for i in range(B):
        holes = hole[i].flatten().nonzero().squeeze(1)
        known = (~hole[i].flatten()).nonzero().squeeze(1)
        n = holes.numel()
        hole_index[i, :n] = holes
        source[i, :n] = known[torch.randint(len(known), (n,), generator=gen)]
        lo, hi = a_range
        a[i, :n] = lo + (hi - lo) * torch.rand(n, generator=gen)
        a[i, 0] = 0.0
        b[i, :n] = 1 - a[i, :n]
        prev = torch.zeros(h * w)
        for t in range(n):
            e = torch.zeros(h * w)
            e[source[i, t]] = 1.0
            prev = a[i, t] * prev + b[i, t] * e
            rows[i, t] = prev
    record = dict(count=count, hole_index=hole_index, source=source, a=a, b=b, rows=rows,
                  d_max=torch.ones(B, T), d_ad=torch.zeros(B, T), size=(h, w))
    try:  # the real record type when the CSA layer is there; the same fields otherwise
        from csa_lib.csa import CSAAttention
    except ImportError:
        return SimpleNamespace(**record)
    return CSAAttention(**record)


def centre_hole(B: int, h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    hole = torch.zeros(B, h, w, dtype=torch.bool)
    hole[:, y0:y1, x0:x1] = True
    return hole


# ------------------------------------------------------------------------------------------ offsets

def test_offsets_from_sources_on_a_small_grid():
    h, w = 4, 5
    source = torch.full((h * w,), -1)
    source[1 * w + 2] = 3 * w + 0  # (1,2) copies from (3,0): dy=+2, dx=-2
    source[2 * w + 4] = 2 * w + 1  # (2,4) copies from (2,1): dy=0, dx=-3
    off = attention_maps.offsets_from_sources(source, (h, w))
    assert off.shape == (2, h, w)
    assert off[:, 1, 2].tolist() == [2.0, -2.0]
    assert off[:, 2, 4].tolist() == [0.0, -3.0]
    assert int((off != 0).any(0).sum()) == 2  # zero wherever there is no source
    with pytest.raises(ValueError, match="entries"):
        attention_maps.offsets_from_sources(source[:-1], (h, w))


def test_upsampled_offsets_are_nearest_and_scaled_by_the_stride():
    off = torch.tensor([[[1.0, 0], [0, -2]], [[0.0, 3], [0, 1]]])  # [2, 2, 2]
    up = attention_maps.upsample_offsets(off, 8)  # stride 4
    assert up.shape == (2, 8, 8)
    assert up[:, 0:4, 0:4].unique(dim=1).shape[1] == 1  # constant per cell
    assert up[:, 5, 6].tolist() == [-8.0, 4.0]
    with pytest.raises(ValueError, match="multiple"):
        attention_maps.upsample_offsets(off, 7)


def test_attention_offsets_zero_at_known_positions(gen):
    hole = centre_hole(2, 6, 6, 2, 4, 1, 5)
    att = fake_attention(hole, gen)
    off = attention_maps.attention_offsets(att, 1)
    assert torch.all(off[:, ~hole[1]] == 0)
    T = int(att.count[1])
    p, q = att.hole_index[1, :T], att.source[1, :T]
    assert_close(off[0].flatten()[p], (q // 6 - p // 6).float())
    assert_close(off[1].flatten()[p], (q % 6 - p % 6).float())


def shifted_copy_features(gen, size=12, shift=(5, -4), box=(1, 5, 6, 11), channels=16):
    """Random features whose hole (box y0:y1, x0:x1) is an exact copy of the context ``shift`` away
    (the copied region must not overlap the hole, or part of it would not be context)."""
    (y0, y1, x0, x1), (dy, dx) = box, shift
    x = torch.randn(1, channels, size, size, generator=gen, dtype=torch.float64)
    x[..., y0:y1, x0:x1] = x[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx].clone()
    hole = torch.zeros(1, 1, size, size, dtype=torch.bool)
    hole[..., y0:y1, x0:x1] = True
    return x, hole


@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_shifted_copy_gives_a_constant_offset_field_with_the_real_csa_layer(gen, semantics):
    csa = pytest.importorskip("csa_lib.csa")
    x, hole = shifted_copy_features(gen)
    _, att = csa.CoherentSemanticAttention(semantics=semantics)(x, hole, return_attention=True)
    off = attention_maps.attention_offsets(att, 0)
    assert torch.all(off[0][hole[0, 0]] == 5) and torch.all(off[1][hole[0, 0]] == -4)
    assert torch.all(off[:, ~hole[0, 0]] == 0)
    assert attention_maps.neighbour_coherence(attention_maps.csa_sources(att, 0), att.size) == 1.0


def test_shifted_copy_gives_the_shift_inside_the_hole_for_contextual_attention(gen):
    peers = pytest.importorskip("csa_lib.peers")
    x, hole = shifted_copy_features(gen, size=16, box=(4, 10, 8, 14), shift=(2, -7))
    _, scores = peers.ContextualAttention(propagate=False)(x.float(), hole, return_attention=True)
    off = attention_maps.contextual_offsets(scores, hole, 0)
    # Only cells whose 3x3 window lies inside the hole are exact copies of a known window.
    interior = torch.zeros(16, 16, dtype=torch.bool)
    interior[5:9, 9:13] = True
    assert torch.all(off[0][interior] == 2) and torch.all(off[1][interior] == -7)
    assert torch.all(off[:, ~hole[0, 0]] == 0)


# ------------------------------------------------------------------------------------------ heat maps and chain

def test_rows_sum_to_one_and_heatmaps_keep_that_sum_in_image_space(gen):
    hole = centre_hole(1, 8, 8, 2, 6, 2, 6)
    att = fake_attention(hole, gen)  # a_t down to -0.3: affine, not convex, blends
    for t in (0, 5, int(att.count[0]) - 1):
        hm = attention_maps.attention_heatmap(att, 0, t, image_size=32)
        assert hm.shape == (32, 32)
        assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6)
        assert_close(hm[::4, ::4] * 16, att.rows[0, t].double().view(8, 8))


def test_rows_rebuilt_from_coefficients_match_stored_rows(gen):
    hole = centre_hole(2, 7, 7, 1, 5, 2, 6)
    att = fake_attention(hole, gen)
    no_rows = SimpleNamespace(**{**vars(att), "rows": None})
    for i in range(2):
        for t in range(int(att.count[i])):
            assert_close(attention_maps.attention_row(no_rows, i, t), att.rows[i, t].double(), atol=1e-6, rtol=1e-6)
    weights = attention_maps.chain_weights(att, 0, 6)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(weights[-1]) == pytest.approx(float(att.b[0, 6]))


@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_real_csa_rows_sum_to_one_and_are_convex_in_paper_mode(gen, semantics):
    csa = pytest.importorskip("csa_lib.csa")
    x = torch.randn(2, 8, 6, 6, generator=gen, dtype=torch.float64)  # signed, like the real features
    hole = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    hole[0, :, 1:4, 2:5] = True
    hole[1, :, 2:6, 0:3] = True
    _, att = csa.CoherentSemanticAttention(semantics=semantics)(x, hole, return_attention=True,
                                                                 return_rows=True)
    no_rows = SimpleNamespace(**{**vars(att), "rows": None})
    for i in range(2):
        for t in range(int(att.count[i])):
            hm = attention_maps.attention_heatmap(att, i, t, image_size=24)
            assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6)
            if semantics == "paper":
                assert float(hm.min()) >= 0  # convex blends: a probability map
            assert_close(attention_maps.attention_row(no_rows, i, t), att.rows[i, t].double(), atol=1e-9, rtol=1e-9)


def test_contextual_heatmap_is_a_distribution(gen):
    B, h, w = 1, 6, 6
    logits = torch.randn(B, h * w, h, w, generator=gen)
    scores = logits.softmax(1)
    hm = attention_maps.contextual_heatmap(scores, 0, 2, 3, image_size=24)
    assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6) and float(hm.min()) >= 0


def test_chain_balance_and_predecessors(gen):
    hole = centre_hole(1, 6, 6, 2, 4, 1, 5)
    att = fake_attention(hole, gen)
    a_map, b_map = attention_maps.chain_balance(att, 0)
    assert torch.isnan(a_map[~hole[0]]).all()
    assert_close(a_map[hole[0]] + b_map[hole[0]], torch.ones(int(att.count[0]), dtype=torch.float64))
    assert float(a_map[2, 1]) == 0.0  # first hole in raster order: nothing to continue
    chain = attention_maps.chain_predecessors(att, 0, t=5, k=2)
    assert [c["t"] for c in chain] == [5, 4, 3]
    assert chain[0]["pos"] == (3, 2)  # holes in raster order: (2,1..4), then (3,1), (3,2)
    assert attention_maps.hole_step(att, 0, 3, 2) == 5 and attention_maps.hole_step(att, 0, 0, 0) is None


def test_neighbour_coherence_counts_contiguous_copies():
    h, w = 5, 5
    pos = torch.arange(h * w)
    hole = torch.zeros(h * w, dtype=torch.bool)
    hole[pos // w == 2] = True  # one hole row
    shifted = torch.where(hole, pos - 2 * w, -1)  # every hole copies the row two above: all coherent
    assert attention_maps.neighbour_coherence(shifted, (h, w)) == 1.0
    broken = shifted.clone()
    broken[2 * w + 2] = 0  # the middle hole copies (0, 0): its two raster pairs break
    assert attention_maps.neighbour_coherence(broken, (h, w)) == pytest.approx(2 / 4)
    assert attention_maps.neighbour_coherence(broken, (h, w), tolerance=10) == 1.0
    assert np.isnan(attention_maps.neighbour_coherence(torch.full((h * w,), -1), (h, w)))
