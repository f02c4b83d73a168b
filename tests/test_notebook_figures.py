"""Tests for the lesson figures in notebooks/figures.py: the pipeline diagram (notebook 00) and the fill
comparison (notebook 03). They must draw without a display and show what their docstrings promise."""
import importlib.util

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures must never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from csa_lib import viz  # noqa: E402
from csa_lib.config import REPO_ROOT, LossConfig  # noqa: E402

# Loaded from its file: the notebooks import it as notebooks.figures with the repository root on sys.path.
_spec = importlib.util.spec_from_file_location("notebook_figures", REPO_ROOT / "notebooks" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])


def test_pipeline_diagram_names_every_part_and_the_weights():
    fig = figures.pipeline_diagram(LossConfig(lambda_r=2.0, lambda_c=0.5, lambda_d=0.25))
    text = _texts(fig)
    for part in ("coarse net", "CSA layer", "refine\nencoder", "refine\ndecoder", "70×70 PatchGAN",
                 "VGG16 pool3", "relu4_3"):
        assert part in text, part
    # the printed weights come from the config, not from literals
    assert "\\lambda_r = 2" in text and "\\lambda_c = 0.5" in text and "\\lambda_d = 0.25" in text
    fig.canvas.draw()  # renders (mathtext included) without a display
    plt.close(fig)
    default = _texts(figures.pipeline_diagram())
    assert "\\lambda_c = 0.01" in default and "\\lambda_d = 0.002" in default
    plt.close("all")


def test_zoom_slices():
    rows, cols = figures.zoom_slices(10, 2, 5, 3)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (7, 18, 0, 10)  # clipped at 0 on the left


def test_plot_fill_comparison_draws_fills_and_offsets():
    S = 16
    image = torch.linspace(-1, 1, 3 * S * S).reshape(3, S, S)
    hole = torch.zeros(1, S, S, dtype=torch.bool)
    hole[:, 5:9, 6:10] = True
    filled = torch.where(hole, torch.ones_like(image), image)          # a white fill
    src = torch.full((S * S,), -1, dtype=torch.long)
    idx = hole.reshape(-1).nonzero().squeeze(1)
    src[idx] = idx + 4                                                  # every hole copies 4 to the right
    zoom = figures.zoom_slices(5, 6, 4, 2)
    case = {"image": image, "hole": hole, "fills": [("ground truth", image), ("white", filled)],
            "sources": [("right", src), ("none", torch.full((S * S,), -1))], "zoom": zoom}
    fig = figures.plot_fill_comparison([case, {**case, "zoom": None}], max_norm=4)
    axes = np.array(fig.axes).reshape(4, 4)
    assert [ax.get_title() for ax in axes[0, :2]] == ["ground truth (zoom)", "white (zoom)"]
    assert axes[2, 0].get_title() == "ground truth"                   # no zoom: no "(zoom)"
    # the zoomed fill panel shows exactly the zoom window of the image
    np.testing.assert_allclose(axes[0, 1].images[0].get_array(), viz.to_display(filled)[zoom[0], zoom[1]])
    # offsets: 4 to the right at max_norm 4 is fully saturated red inside the hole, white outside
    off = np.asarray(axes[1, 2].images[0].get_array())
    r0, c0 = 5 - zoom[0].start, 6 - zoom[1].start
    np.testing.assert_allclose(off[r0, c0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(off[0, 0], [1.0, 1.0, 1.0])
    assert np.allclose(np.asarray(axes[1, 3].images[0].get_array()), 1.0)  # no sources: all white
    # the masked input paints the hole white; the hole is outlined in the zoomed panels
    masked = np.asarray(axes[1, 0].images[0].get_array())
    assert np.allclose(masked[5:9, 6:10], 1.0) and not np.allclose(masked, 1.0)
    assert len(axes[0, 0].patches) == 1
    fig.canvas.draw()
    plt.close(fig)


def test_plot_fill_comparison_rejects_a_wrong_source_length():
    image, hole = torch.zeros(3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="entries"):
        figures.plot_fill_comparison([{"image": image, "hole": hole, "fills": [], "sources": [("x", torch.zeros(5))]}])
    plt.close("all")
