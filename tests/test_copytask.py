"""The copy task (csa_lib.copytask): the dataset contract, the oracle and the true sources."""
import pytest
import torch

from csa_lib.config import get_preset
from csa_lib.copytask import CELL, CopyTask, copies_of_cell, copy_source_cells, oracle_fill
from csa_lib.data import CopyTask as CopyTaskFromData
from csa_lib.data import build_dataset


def test_public_from_data_module():
    assert CopyTaskFromData is CopyTask


@pytest.mark.parametrize("size", [32, 64])
def test_item_contract(size):
    ds = CopyTask(40, size, seed=3)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, size, size) and mask.shape == (1, size, size)
        assert image.min() >= -1 and image.max() <= 1
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        dy, dx = ds.offset(i)
        ys, xs = mask[0].nonzero(as_tuple=True)
        # the copy is known and holds exactly the hidden content
        assert mask[0, ys + dy, xs + dx].sum() == 0
        assert torch.equal(image[:, ys, xs], image[:, ys + dy, xs + dx])


def test_deterministic_and_seed_dependent():
    a, b, c = CopyTask(5, 64, seed=1), CopyTask(5, 64, seed=1), CopyTask(5, 64, seed=2)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0]) and a.offset(i) == b.offset(i)
    assert not all(torch.equal(a[i][0], c[i][0]) for i in range(5))


def test_oracle_is_exact_and_mean_fill_is_not():
    ds = CopyTask(20, 64, seed=0)
    for i in range(20):
        image, mask = ds[i]
        assert torch.equal(oracle_fill(ds, i), image)
        # the hole is not predictable from a constant: the hidden content varies
        assert image[:, mask[0] > 0].std() > 0.2


def test_hole_and_copy_are_cell_aligned():
    ds = CopyTask(30, 64, seed=5)
    for i in range(30):
        it = ds.item(i)
        assert all(v % CELL == 0 for v in it.hole) and all(v % CELL == 0 for v in it.offset)
        assert all(p % CELL == 0 for p in it.period)


def test_true_source_cells_hold_the_same_content():
    ds = CopyTask(10, 64, seed=7)
    W = 64 // CELL
    for i in range(10):
        image, mask = ds[i]
        hole, source = copy_source_cells(ds, i)
        assert len(hole) == int(mask.sum()) // CELL**2
        for p, q in zip(hole.tolist(), source.tolist()):
            (py, px), (qy, qx) = divmod(p, W), divmod(q, W)
            a = image[:, py * CELL:(py + 1) * CELL, px * CELL:(px + 1) * CELL]
            b = image[:, qy * CELL:(qy + 1) * CELL, qx * CELL:(qx + 1) * CELL]
            assert torch.equal(a, b)
            assert mask[0, qy * CELL, qx * CELL] == 0
            copies = copies_of_cell(ds, i, p)
            assert q in copies.tolist()
            for c in copies.tolist():  # every listed copy is known and identical
                cy, cx = divmod(c, W)
                assert mask[0, cy * CELL, cx * CELL] == 0
                assert torch.equal(a, image[:, cy * CELL:(cy + 1) * CELL, cx * CELL:(cx + 1) * CELL])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be"), (dict(image_size=48), "power of two"), (dict(block=3), "block"),
    (dict(periods=(12,)), "periods"), (dict(hole_cells=(5,)), "hole_cells")])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    args = dict(n=4, image_size=64, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        CopyTask(**args)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        CopyTask(3, 64)[3]


def test_preset_builds_train_and_held_out_sets():
    p = get_preset("copytask")
    train, held = build_dataset(p.data, "train"), build_dataset(p.data, "eval")
    assert isinstance(train, CopyTask) and isinstance(held, CopyTask)
    assert train.seed != held.seed  # held-out samples come from another seed
    assert p.loss.lambda_d == 0 and p.model.image_size == 128 and held.kind == "twin"
    twin = get_preset("copytask_identity")
    assert twin.model.attention == "identity" and twin.train.attention_warmup_steps == 0 and twin.train.freeze == ()
    assert (twin.data, twin.train.steps, twin.model.base_channels) == (p.data, p.train.steps, p.model.base_channels)
    assert get_preset("copytask_periodic").data.copy_kind == "periodic"


def test_data_config_sets_every_task_field():
    p = get_preset("copytask", **{"data.image_size": 128, "model.image_size": 128, "data.copy_kind": "twin",
                                  "data.copy_ring": 16, "data.copy_hole_cells": (2,)})
    ds = build_dataset(p.data, "eval")
    assert (ds.image_size, ds.kind, ds.ring, ds.hole_cells, ds.seed) == (128, "twin", 16, (2,), p.data.eval_seed)
    assert all(ds.item(i).hole[2:] == (16, 16) for i in range(10))
    with pytest.raises(ValueError, match="data.copy_ring must be a positive integer"):
        get_preset("copytask", **{"data.copy_ring": 0})


def test_twin_kind_has_one_copy_with_the_same_ring():
    ds = CopyTask(30, 64, seed=4, block=8, kind="twin")
    for i in range(30):
        image, mask = ds[i]
        assert torch.equal(oracle_fill(ds, i), image)
        (top, left, h, w), (dy, dx) = ds.item(i).hole, ds.offset(i)
        r = ds.ring
        y0, y1 = max(top - r, -dy, 0), min(top + h + r, 64 - dy, 64)
        x0, x1 = max(left - r, -dx, 0), min(left + w + r, 64 - dx, 64)
        assert torch.equal(image[:, y0:y1, x0:x1], image[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx])
        hole, _ = copy_source_cells(ds, i)
        assert all(len(copies_of_cell(ds, i, p)) == 1 for p in hole.tolist())
    with pytest.raises(ValueError, match="kind"):
        CopyTask(3, 64, kind="spiral")


def test_lattice_kind_copies_along_a_sheared_period():
    """kind="lattice": periods (0, P_x) and (P_y, shear); every listed copy of a hole cell holds its colour,
    the oracle is exact, and the offsets are not only horizontal or vertical (what a few fixed
    convolution shifts could learn)."""
    ds = CopyTask(60, 64, seed=5, block=8, kind="lattice", periods=(16, 24, 32, 40, 48))
    diagonal = 0
    for i in range(len(ds)):
        image, mask = ds[i]
        it = ds.item(i)
        assert 0 <= it.shear < it.period[1] and it.shear % 8 == 0
        py, px = it.period
        assert torch.equal(image[:, py:, it.shear:], image[:, :-py, :64 - it.shear])  # the sheared period
        assert torch.equal(oracle_fill(ds, i), image)
        cells = image[:, ::8, ::8].reshape(3, -1)
        hole, _ = copy_source_cells(ds, i)
        for cell in hole.tolist():
            copies = copies_of_cell(ds, i, cell)
            assert len(copies) and all(torch.equal(cells[:, c], cells[:, cell]) for c in copies.tolist())
        diagonal += all(it.offset)
    assert diagonal >= 5
    assert CopyTask(4, 64, seed=5, kind="periodic")[0][0].shape == (3, 64, 64)
    assert build_dataset(get_preset("copytask", **{"data.copy_kind": "lattice", "data.copy_periods": (16, 32)}).data,
                         "eval").kind == "lattice"

