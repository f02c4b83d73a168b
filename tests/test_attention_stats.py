"""csa_lib.attention_stats and csa_lib.ablation: the runner that catches the attention layer's input,
source statistics against hand-made cases, the activity check, and the paired intervals."""
import math

import torch

from csa_lib.ablation import (ablation_row, copytask_batch, format_ablation, paired_difference, replaced_row, rows_subset,
                             summarize, summarize_by_group)
from csa_lib.attention_stats import (activity, attention_layer, feature_cosine_by_distance, layer_sources,
                                     measure_attention, mirror_sources, nearest_known_sources,
                                     replaced_attention, run_with_attention_input, source_statistics)
from csa_lib.config import ModelConfig, get_preset
from csa_lib.copytask import CopyTask
from csa_lib.csa import CoherentSemanticAttention
from csa_lib.networks import CSAInpainter, build_models


def _hole(h=4, w=4, cells=((1, 1),)):
    hole = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for y, x in cells:
        hole[0, 0, y, x] = True
    return hole


def test_nearest_known_rule():
    hole = _hole(cells=((1, 1), (1, 2)))
    src = nearest_known_sources(hole)
    # (1,1) -> nearest known at distance 1: (0,1) has the smallest raster index among (0,1),(1,0),(2,1)
    assert src[0, 1 * 4 + 1] == 0 * 4 + 1
    assert src[0, 1 * 4 + 2] == 0 * 4 + 2
    assert (src[0][~hole.flatten()] == -1).all()


def test_statistics_on_a_hand_example():
    hole = _hole(cells=((1, 1),))
    sources = torch.full((1, 16), -1)
    sources[0, 5] = 15  # (1,1) copies (3,3): distance 2, not adjacent
    targets = torch.full((1, 1, 16), -1)
    targets[0, 0, 5] = 15
    st = source_statistics(sources, hole, targets)
    assert st["cells"] == 1 and st["adjacent"] == 0 and st["true"] == 1 and st["true_pm1"] == 1
    # 15 known cells, 8 of them adjacent to (1,1); 1 is the target
    assert math.isclose(st["chance_adjacent"], 8 / 15, rel_tol=1e-6)
    assert math.isclose(st["chance_true"], 1 / 15, rel_tol=1e-6)
    # known cells at Chebyshev distance 2 from (1,1): row 3 (4 cells) + column 3 rows 0..2 (3) = 7
    assert math.isclose(st["dm_true"], 1 / 7, rel_tol=1e-6)
    sources[0, 5] = 14  # (3,2): one cell from the target
    st = source_statistics(sources, hole, targets)
    assert st["true"] == 0 and st["true_pm1"] == 1


def test_mirror_statistics():
    hole = _hole(cells=((1, 0),))
    assert mirror_sources(hole)[0, 4] == 7
    sources = torch.full((1, 16), -1)
    sources[0, 4] = 7
    st = source_statistics(sources, hole, mirror=True)
    assert st["mirror"] == 1 and st["adjacent"] == 0


def _model(attention="csa", seed=0):
    torch.manual_seed(seed)
    return CSAInpainter(ModelConfig(image_size=32, base_channels=8, attention=attention)).eval()


def test_identity_layer_is_inactive_and_csa_is_active():
    ds = CopyTask(6, 32, seed=0)
    images, masks, targets = copytask_batch(ds)
    assert targets.shape[0] == 6 and (targets >= 0).any()
    ident = activity(_model("identity"), images, masks)
    assert ident["changed"] == 0.0 and ident["has_hole_cell"] == 1.0
    csa = activity(_model("csa"), images, masks)
    assert csa["changed"] == 1.0
    # no hole at all: nothing can change
    empty = activity(_model("csa"), images, torch.zeros_like(masks))
    assert empty["changed"] == 0.0 and empty["has_hole_cell"] == 0.0


def test_replaced_attention_restores_the_layer():
    G = _model("csa")
    layer = attention_layer(G)
    x, m = CopyTask(2, 32)[0]
    with replaced_attention(G, "identity"):
        assert attention_layer(G) is not layer
        src, hole, _ = layer_sources(G, x[None], m[None])
        assert (src == -1).all()
    assert attention_layer(G) is layer
    src, hole, _ = layer_sources(G, x[None], m[None])
    assert (src[hole.flatten(1)] >= 0).all()


def test_measure_attention_rows_and_random_init_finds_copies():
    ds = CopyTask(16, 32, seed=1)
    images, masks, targets = copytask_batch(ds)
    rows = measure_attention(_model("csa", seed=3), images, masks, targets=targets)
    assert set(rows) == {"trained", "random_init", "nearest_known"}
    # corner holes leave some cells without a known neighbour; the rule still beats chance by far
    assert rows["nearest_known"]["adjacent"] > 2 * rows["nearest_known"]["chance_adjacent"]
    for r in rows.values():
        assert 0 <= r["true"] <= 1 and 0 < r["chance_true"] < 1


def test_feature_cosine_by_distance():
    f = torch.zeros(1, 2, 3, 3)
    f[0, 0] = 1.0  # every cell the same vector
    out = feature_cosine_by_distance(f, torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    assert set(out) == {1, 2} and all(math.isclose(v, 1.0, rel_tol=1e-5) for v in out.values())


def test_paired_difference_and_table():
    a, b = torch.tensor([2.0, 3.0, 4.0, 5.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    d = paired_difference(a, b)
    assert d["mean"] == 1.0 and d["lo"] == d["hi"] == 1.0 and d["n"] == 4
    assert math.isnan(paired_difference(torch.tensor([float("inf")]), torch.tensor([1.0]))["mean"])
    ds = CopyTask(4, 32, seed=2)
    images, masks, _ = copytask_batch(ds)
    rows = {"csa": [ablation_row(_model("csa"), images, masks)],
            "identity": [ablation_row(_model("identity"), images, masks)]}
    lines = summarize(rows, reference="identity")
    assert lines[0]["active"] == 1.0 and lines[1]["active"] is None
    table = format_ablation(lines, reference="identity")
    assert "| csa | 1 |" in table and "100 % of images" in table
    lines[0]["active"] = 0.0
    assert "inactive" in format_ablation(lines)


def test_mirror_far_excludes_adjacent_sources():
    # hole cell (1,1) in a 4x4 grid: its mirror (1,2) touches it; a source there is "mirror" but not "far"
    hole = _hole(cells=((1, 1),))
    sources = torch.full((1, 16), -1)
    sources[0, 5] = 6
    st = source_statistics(sources, hole, mirror=True)
    assert st["mirror"] == 1 and st["adjacent"] == 1 and st["mirror_far"] == 0


def test_plot_source_arrows_draws_one_arrow_per_hole_cell():
    import matplotlib
    matplotlib.use("Agg")
    from csa_lib.viz import plot_source_arrows
    ds = CopyTask(1, 32, seed=0)
    image, mask = ds[0]
    sources = torch.full((16,), -1)
    sources[mask[0, ::8, ::8].flatten() > 0] = 0
    fig = plot_source_arrows(image, mask, sources, correct=sources >= 0)
    assert len(fig.axes[0].texts) == int((sources >= 0).sum())


def test_run_with_attention_input_catches_what_the_layer_saw(gen):
    torch.manual_seed(0)
    G = build_models(get_preset("smoke").model)[0].eval()
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 8:24] = 1
    mask[1, :, 0:16, 4:20] = 1
    out, x, hole = run_with_attention_input(G, image, mask)
    assert x.shape[-2:] == hole.shape[-2:] == out.feature_hole.shape[-2:]
    assert torch.equal(hole, out.feature_hole)
    _, att = CoherentSemanticAttention()(x, hole, return_attention=True)  # same input, same search
    assert torch.equal(att.source, out.attention.source) and torch.equal(att.count, out.attention.count)


def test_summarize_by_group_slices_scores_and_activity():
    # two seeds of a layer that changed images 0 and 2 only, against a reference that is 1 dB worse on group a
    act = {"n": 4, "changed": 0.5, "per_image_changed": torch.tensor([True, False, True, False]),
           "per_image_has_hole_cell": torch.tensor([True, False, True, True])}
    row = {"psnr": torch.tensor([11.0, 12.0, 20.0, 20.0]), "l1": torch.tensor([1.0, 1.0, 2.0, 2.0]), "activity": act}
    ref = {"psnr": torch.tensor([10.0, 11.0, 20.0, 20.0]), "l1": torch.tensor([1.0, 1.0, 2.0, 2.0]), "activity": None}
    rows = {"layer": [row, row], "ref": [ref, ref]}
    by = summarize_by_group(rows, ["a", "a", "b", "b"], reference="ref")
    assert list(by) == ["a", "b", "all"]
    a, b, everything = (by[k][0] for k in ("a", "b", "all"))
    assert a["psnr"] == 11.5 and a["active"] == 0.5 and a["vs_ref"]["mean"] == 1.0 and a["vs_ref"]["n"] == 4
    assert b["psnr"] == 20.0 and b["active"] == 0.5 and b["vs_ref"]["mean"] == 0.0
    assert everything["vs_ref"]["mean"] == 0.5 and everything["active"] == 0.5
    sub = rows_subset(rows, torch.tensor([False, True, False, True]))
    assert sub["layer"][0]["activity"]["changed"] == 0.0 and sub["layer"][0]["activity"]["has_hole_cell"] == 0.5
    assert sub["ref"][0]["activity"] is None and sub["ref"][0]["psnr"].tolist() == [11.0, 20.0]
    assert "**inactive**" in format_ablation(summarize(sub, "ref"), "ref")


def test_replaced_row_scores_the_swapped_layer_and_puts_the_old_one_back():
    images, masks, _ = copytask_batch(CopyTask(4, 32, seed=1))
    G = _model("csa")
    layer = attention_layer(G)
    own = ablation_row(G, images, masks)
    removed = replaced_row(G, images, masks, "identity")
    assert removed["activity"] is None and attention_layer(G) is layer
    assert not torch.equal(removed["psnr"], own["psnr"])  # the CSA layer was active on these images
    ident = _model("identity")
    torch.testing.assert_close(replaced_row(ident, images, masks, "identity")["psnr"],
                               ablation_row(ident, images, masks)["psnr"])
