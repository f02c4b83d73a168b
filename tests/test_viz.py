"""Tests for csa_lib.viz: colours of known offsets, offset fields, heat maps, figures without a display."""
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures must never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from csa_lib import viz  # noqa: E402


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


# ------------------------------------------------------------------------------------------ colours

def test_color_wheel_has_55_hues_from_red_through_the_six_anchors():
    wheel = viz.color_wheel()
    assert wheel.shape == (55, 3)
    assert_close(wheel[0], torch.tensor([1.0, 0, 0], dtype=torch.float64))  # red
    assert_close(wheel[15], torch.tensor([1.0, 1, 0], dtype=torch.float64))  # yellow after RY
    assert_close(wheel[36], torch.tensor([0.0, 0, 1], dtype=torch.float64))  # blue after RY+YG+GC+CB


def test_zero_offset_is_white():
    rgb = viz.flow_to_color(torch.zeros(2, 3, 4))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.float32
    assert np.all(rgb == 1.0)


def test_cardinal_directions_follow_the_documented_wheel():
    # One pixel per direction, full length: (dy, dx) = right, down, left, up.
    flow = torch.tensor([[0.0, 1, 0, -1], [1, 0, -1, 0]]).view(2, 1, 4)
    right, down, left, up = viz.flow_to_color(flow, max_norm=1.0)[0]
    np.testing.assert_allclose(right, [1, 0, 0], atol=1e-6)  # angle 0 = red
    assert down[0] == pytest.approx(1) and down[1] > 0.8 and down[2] == pytest.approx(0)  # orange-yellow
    assert left[0] == pytest.approx(0) and left[1] > 0.5 and left[2] > 0.2  # cyan-blue
    assert up[2] == pytest.approx(1) and up[0] > 0.3 and up[1] == pytest.approx(0)  # blue-magenta


def test_channel_last_layout_gives_the_same_colours(gen):
    flow = torch.randn(2, 5, 6, generator=gen)
    np.testing.assert_array_equal(viz.flow_to_color(flow), viz.flow_to_color(flow.permute(1, 2, 0).numpy()))


def test_saturation_grows_with_magnitude_and_saturates_at_max_norm():
    flow = torch.tensor([[0.0, 0, 0, 0, 0], [0, 1, 2, 4, 8]]).view(2, 1, 5)  # to the right
    rgb = viz.flow_to_color(flow, max_norm=4.0)[0]
    np.testing.assert_allclose(rgb[:4, 0], 1.0)  # red channel stays full
    np.testing.assert_allclose(rgb[:4, 1], [1, 0.75, 0.5, 0], atol=1e-6)  # white -> red linearly
    np.testing.assert_allclose(rgb[4], [0.75, 0, 0], atol=1e-6)  # beyond max_norm: darker
    # default max_norm = the largest length, so the longest offset is fully saturated
    assert np.allclose(viz.flow_to_color(flow)[0, 4], [1, 0, 0], atol=1e-6)


def test_uint8_output_and_bad_shapes():
    rgb = viz.flow_to_color(torch.zeros(2, 2, 2), as_uint8=True)
    assert rgb.dtype == np.uint8 and np.all(rgb == 255)
    with pytest.raises(ValueError, match="shape"):
        viz.flow_to_color(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="max_norm"):
        viz.flow_to_color(torch.ones(2, 2, 2), max_norm=0.0)


def test_color_wheel_image_is_white_at_centre_and_red_on_the_right():
    img = viz.color_wheel_image(33)
    assert img.shape == (33, 33, 3)
    np.testing.assert_allclose(img[16, 16], 1.0)
    np.testing.assert_allclose(img[16, 32], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[0, 0], 1.0)  # outside the disc


# ------------------------------------------------------------------------------------------ offsets

def test_offsets_from_sources_on_a_small_grid():
    h, w = 4, 5
    source = torch.full((h * w,), -1)
    source[1 * w + 2] = 3 * w + 0  # (1,2) copies from (3,0): dy=+2, dx=-2
    source[2 * w + 4] = 2 * w + 1  # (2,4) copies from (2,1): dy=0, dx=-3
    off = viz.offsets_from_sources(source, (h, w))
    assert off.shape == (2, h, w)
    assert off[:, 1, 2].tolist() == [2.0, -2.0]
    assert off[:, 2, 4].tolist() == [0.0, -3.0]
    assert int((off != 0).any(0).sum()) == 2  # zero wherever there is no source
    with pytest.raises(ValueError, match="entries"):
        viz.offsets_from_sources(source[:-1], (h, w))


def test_upsampled_offsets_are_nearest_and_scaled_by_the_stride():
    off = torch.tensor([[[1.0, 0], [0, -2]], [[0.0, 3], [0, 1]]])  # [2, 2, 2]
    up = viz.upsample_offsets(off, 8)  # stride 4
    assert up.shape == (2, 8, 8)
    assert up[:, 0:4, 0:4].unique(dim=1).shape[1] == 1  # constant per cell
    assert up[:, 5, 6].tolist() == [-8.0, 4.0]
    with pytest.raises(ValueError, match="multiple"):
        viz.upsample_offsets(off, 7)


def test_attention_offsets_zero_at_known_positions(gen):
    hole = centre_hole(2, 6, 6, 2, 4, 1, 5)
    att = fake_attention(hole, gen)
    off = viz.attention_offsets(att, 1)
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
    off = viz.attention_offsets(att, 0)
    assert torch.all(off[0][hole[0, 0]] == 5) and torch.all(off[1][hole[0, 0]] == -4)
    assert torch.all(off[:, ~hole[0, 0]] == 0)
    assert viz.neighbour_coherence(viz.csa_sources(att, 0), att.size) == 1.0


def test_shifted_copy_gives_the_shift_inside_the_hole_for_contextual_attention(gen):
    peers = pytest.importorskip("csa_lib.peers")
    x, hole = shifted_copy_features(gen, size=16, box=(4, 10, 8, 14), shift=(2, -7))
    _, scores = peers.ContextualAttention(propagate=False)(x.float(), hole, return_attention=True)
    off = viz.contextual_offsets(scores, hole, 0)
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
        hm = viz.attention_heatmap(att, 0, t, image_size=32)
        assert hm.shape == (32, 32)
        assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6)
        assert_close(hm[::4, ::4] * 16, att.rows[0, t].double().view(8, 8))


def test_rows_rebuilt_from_coefficients_match_stored_rows(gen):
    hole = centre_hole(2, 7, 7, 1, 5, 2, 6)
    att = fake_attention(hole, gen)
    no_rows = SimpleNamespace(**{**vars(att), "rows": None})
    for i in range(2):
        for t in range(int(att.count[i])):
            assert_close(viz.attention_row(no_rows, i, t), att.rows[i, t].double(), atol=1e-6, rtol=1e-6)
    weights = viz.chain_weights(att, 0, 6)
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
            hm = viz.attention_heatmap(att, i, t, image_size=24)
            assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6)
            if semantics == "paper":
                assert float(hm.min()) >= 0  # convex blends: a probability map
            assert_close(viz.attention_row(no_rows, i, t), att.rows[i, t].double(), atol=1e-9, rtol=1e-9)


def test_contextual_heatmap_is_a_distribution(gen):
    B, h, w = 1, 6, 6
    logits = torch.randn(B, h * w, h, w, generator=gen)
    scores = logits.softmax(1)
    hm = viz.contextual_heatmap(scores, 0, 2, 3, image_size=24)
    assert float(hm.sum()) == pytest.approx(1.0, abs=1e-6) and float(hm.min()) >= 0


def test_chain_balance_and_predecessors(gen):
    hole = centre_hole(1, 6, 6, 2, 4, 1, 5)
    att = fake_attention(hole, gen)
    a_map, b_map = viz.chain_balance(att, 0)
    assert torch.isnan(a_map[~hole[0]]).all()
    assert_close(a_map[hole[0]] + b_map[hole[0]], torch.ones(int(att.count[0]), dtype=torch.float64))
    assert float(a_map[2, 1]) == 0.0  # first hole in raster order: nothing to continue
    chain = viz.chain_predecessors(att, 0, t=5, k=2)
    assert [c["t"] for c in chain] == [5, 4, 3]
    assert chain[0]["pos"] == (3, 2)  # holes in raster order: (2,1..4), then (3,1), (3,2)
    assert viz.hole_step(att, 0, 3, 2) == 5 and viz.hole_step(att, 0, 0, 0) is None


def test_neighbour_coherence_counts_contiguous_copies():
    h, w = 5, 5
    pos = torch.arange(h * w)
    hole = torch.zeros(h * w, dtype=torch.bool)
    hole[pos // w == 2] = True  # one hole row
    shifted = torch.where(hole, pos - 2 * w, -1)  # every hole copies the row two above: all coherent
    assert viz.neighbour_coherence(shifted, (h, w)) == 1.0
    broken = shifted.clone()
    broken[2 * w + 2] = 0  # the middle hole copies (0, 0): its two raster pairs break
    assert viz.neighbour_coherence(broken, (h, w)) == pytest.approx(2 / 4)
    assert viz.neighbour_coherence(broken, (h, w), tolerance=10) == 1.0
    assert np.isnan(viz.neighbour_coherence(torch.full((h * w,), -1), (h, w)))


# ------------------------------------------------------------------------------------------ figures

@pytest.fixture
def scene(gen):
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 12:28] = 1
    hole = centre_hole(2, 8, 8, 2, 6, 3, 7)
    att = fake_attention(hole, gen)
    scores = torch.randn(2, 64, 8, 8, generator=gen).softmax(1)
    return image, mask, att, scores


def _check_and_close(fig, n_axes_min: int):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) >= n_axes_min
    fig.canvas.draw()  # renders without a display
    plt.close(fig)


def test_attention_figures_render_without_a_display(scene):
    image, mask, att, scores = scene
    _check_and_close(viz.plot_attention(image[1], mask[1], att, i=1), 4)
    _check_and_close(viz.plot_chain_balance(att, 0, image[0], mask[0]), 3)
    _check_and_close(viz.compare_attention(image[0], mask[0], att, scores, t=3), 6)
    _check_and_close(viz.plot_offsets(torch.randn(2, 8, 8)), 1)


def test_inpainting_grid_from_a_dict_and_an_output_object(scene):
    image, mask, _, _ = scene
    out = SimpleNamespace(coarse=image * 0.5, refined=image * 0.8, composite=image, attention=None)
    fig = viz.inpainting_grid(out, image, mask)
    assert len(fig.axes) == 2 * 5  # input, coarse, refined, composite, ground truth
    assert [ax.get_title() for ax in fig.axes[:5]] == ["input (masked)", "coarse", "refined", "composite",
                                                      "ground truth"]
    _check_and_close(fig, 10)
    _check_and_close(viz.inpainting_grid({"a": image, "b": -image}, n=1), 2)
    with pytest.raises(KeyError, match="missing"):
        viz.inpainting_grid({"a": image}, columns=["missing"])


def test_explorer_static_and_interactive_views(scene):
    image, mask, att, _ = scene
    _check_and_close(viz.explorer_static(image[0], mask[0], att, positions=[0, (3, 4), 10]), 9)
    explorer = viz.AttentionExplorer(image[0], mask[0], att, k=2)
    _check_and_close(explorer.figure(3, 4), 3)  # a hole
    _check_and_close(explorer.figure(0, 0), 1)  # a known position: a message, no crash
    with pytest.raises(ValueError, match="not a hole"):
        viz.explorer_static(image[0], mask[0], att, positions=[(0, 0)])
    pytest.importorskip("ipywidgets")
    box = explorer.widget()  # no frontend here: building the widgets must still work
    assert len(box.children) == 2
    plt.close("all")


def test_run_with_attention_input_catches_what_the_layer_saw(gen):
    networks = pytest.importorskip("csa_lib.networks")
    csa = pytest.importorskip("csa_lib.csa")
    from csa_lib.config import get_preset

    torch.manual_seed(0)
    G = networks.build_models(get_preset("smoke").model)[0].eval()
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 8:24] = 1
    mask[1, :, 0:16, 4:20] = 1
    out, x, hole = viz.run_with_attention_input(G, image, mask)
    assert x.shape[-2:] == hole.shape[-2:] == out.feature_hole.shape[-2:]
    assert torch.equal(hole, out.feature_hole)
    _, att = csa.CoherentSemanticAttention()(x, hole, return_attention=True)  # same input, same search
    assert torch.equal(att.source, out.attention.source) and torch.equal(att.count, out.attention.count)
    _check_and_close(viz.inpainting_grid(out, image, mask), 10)  # a real InpaintOutput


def test_map_colours_never_clip_and_centre_signed_maps():
    cmap, norm = viz._map_colours(np.array([0.2, 0.7]), vmin=0, vmax=1)
    assert (norm.vmin, norm.vmax) == (0, 1) and cmap.name == "magma"
    _, norm = viz._map_colours(np.array([0.2, 1.6]), vmin=0, vmax=1)  # official semantics: a_t > 1
    assert norm.vmax == pytest.approx(1.6)
    cmap, norm = viz._map_colours(np.array([-0.5, 2.0]), vmin=0, vmax=1)  # negative weights: diverging
    assert cmap.name == "RdBu_r" and (norm.vmin, norm.vmax) == (-2.0, 2.0)
