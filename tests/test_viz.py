"""Tests for csa_lib.viz: colours of known offsets, figures without a display (the tensors they draw:
tests/test_attention_maps.py)."""
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures must never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from test_attention_maps import centre_hole, fake_attention  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from csa_lib import viz  # noqa: E402
from csa_lib.attention_stats import run_with_attention_input  # noqa: E402


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


def test_inpainting_grid_draws_a_real_output(gen):
    networks = pytest.importorskip("csa_lib.networks")
    from csa_lib.config import get_preset

    torch.manual_seed(0)
    G = networks.build_models(get_preset("smoke").model)[0].eval()
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 8:24] = 1
    mask[1, :, 0:16, 4:20] = 1
    out, _, _ = run_with_attention_input(G, image, mask)
    _check_and_close(viz.inpainting_grid(out, image, mask), 10)  # a real InpaintOutput


def test_map_colours_never_clip_and_centre_signed_maps():
    cmap, norm = viz._map_colours(np.array([0.2, 0.7]), vmin=0, vmax=1)
    assert (norm.vmin, norm.vmax) == (0, 1) and cmap.name == "magma"
    _, norm = viz._map_colours(np.array([0.2, 1.6]), vmin=0, vmax=1)  # official semantics: a_t > 1
    assert norm.vmax == pytest.approx(1.6)
    cmap, norm = viz._map_colours(np.array([-0.5, 2.0]), vmin=0, vmax=1)  # negative weights: diverging
    assert cmap.name == "RdBu_r" and (norm.vmin, norm.vmax) == (-2.0, 2.0)
