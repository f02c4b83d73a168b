"""csa_lib.interactive: strokes to masks, the fill, picking a hole position, and the widget's event path
(driven here without a browser; tests/test_browser.py drives it in JupyterLab)."""
import numpy as np
import pytest
import torch
from PIL import Image

from csa_lib.config import get_preset
from csa_lib.interactive import PhotoInpainter, heat_overlay
from csa_lib.networks import build_models


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return build_models(get_preset("smoke", **{"model.image_size": 32}).model)[0].eval()


@pytest.fixture
def app(generator):
    rng = np.random.default_rng(0)
    photos = {"wide": Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
              "tall": Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8))}
    return PhotoInpainter(generator, {"image_size": 32, "resize": "center_crop", "crop_top": 0.5}, photos)


def test_photos_are_prepared_like_training_images(app):
    assert app.name == "wide" and app.image.shape == (3, 32, 32)
    assert app.image.min() >= -1 and app.image.max() <= 1
    app.select("tall")
    assert app.name == "tall"


def test_stroke_paints_discs_along_the_polyline(app):
    app.draw_stroke([(16, 4), (16, 28)], radius=2)
    m = app.mask[0]
    # Pixel k spans [k, k+1): centres 14.5..17.5 lie within 2 of the line y = 16.
    assert m[16, 4:28].all() and m[14:18, 16].all()  # the line and its width
    assert not m[13].any() and not m[18].any()       # nothing beyond the radius
    app.clear()
    assert not app.mask.any()
    app.draw_stroke([(5.2, 5.7)], radius=0.6)         # a click is a dot
    assert 1 <= int(app.mask.sum()) <= 4


def test_run_keeps_known_pixels_and_pick_reads_the_attention(app):
    with pytest.raises(ValueError, match="draw a hole"):
        app.run()
    app.draw_stroke([(12, 6), (20, 26)], radius=3)
    res = app.run()
    known = app.mask.expand(3, -1, -1) == 0
    assert torch.equal(res["composite"][known], app.image[known])
    assert not torch.equal(res["composite"], app.image)
    assert app.pick(0, 0) is None                     # a known position
    assert "known position" in app.describe()
    p = app.pick(16, 16)
    assert p is not None and p["stride"] == (8, 8) and p["cell"] == (2, 2)
    assert abs(float(p["heat"].sum()) - 1) < 1e-5 and p["heat"].shape == (32, 32)
    assert "source cell" in app.describe()
    over = heat_overlay(app.image, p["heat"])
    assert over.shape == (32, 32, 3) and 0 <= over.min() and over.max() <= 1
    fig = app.figure()
    assert len(fig.axes) == 4


def test_widget_events_draw_fill_and_pick(app):
    pytest.importorskip("ipycanvas")
    from csa_lib.interactive import PhotoWidget

    w = PhotoWidget(app)
    s = app.scale
    w._down(4 * s, 16 * s)             # canvas x, y
    w._move(28 * s, 16 * s)
    assert app.mask[0, 16, 4:28].all() and app.result is None
    w._up(28 * s, 16 * s)              # release: fill
    assert app.result is not None and "filled" in w.status.value
    w._pick(16 * s, 16 * s)
    assert app.picked is not None and "source cell" in w.status.value
    w.clear_button.click()
    assert not app.mask.any() and app.result is None


def test_explorer_click_on_the_ipympl_canvas_picks_the_cell(generator):
    """Notebook 08's explorer: a click on the overview of the live (ipympl) figure moves the sliders
    and redraws the panels for the clicked cell."""
    pytest.importorskip("ipympl")
    from matplotlib.backend_bases import MouseEvent

    from csa_lib import viz
    from csa_lib.attention_maps import hole_step
    from csa_lib.attention_stats import run_with_attention_input

    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    out, _, _ = run_with_attention_input(generator, image, mask)
    explorer = viz.AttentionExplorer(image[0], mask[0], out.attention)
    box = explorer.widget()
    sliders, canvas = box.children
    ys, xs = sliders.children
    overview = canvas.figure.axes[0]
    target = next((y, x) for y in range(4) for x in range(4)
                  if hole_step(out.attention, 0, y, x) is not None and (y, x) != (ys.value, xs.value))
    centre = viz.cell_centre(*target, explorer.stride)          # (x, y) in image pixels
    px, py = overview.transData.transform(centre)
    canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", canvas, px, py, button=1))
    assert (ys.value, xs.value) == target
    assert f"at {target}" in overview.get_title()
