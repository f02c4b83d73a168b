"""Shipped weights: export, sha256 check, one-line errors, and the shipped CelebA-64 model on real faces."""
import json
import shutil
import warnings

import pytest
import torch

from csa_lib.config import SHARED_ROOT, get_preset
from csa_lib.pretrained import (WEIGHTS_DIR, PretrainedError, export_generator, list_pretrained,
                                load_pretrained, read_card, sha256_file)

SHIPPED = (WEIGHTS_DIR / "csa_celeba64.json").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="weights/csa_celeba64.json not in this checkout")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A smoke run exported as a shipped model: ``(weights_dir, trainer)``."""
    from csa_lib.train import Trainer
    from csa_lib.vgg import VGG16Features

    root = tmp_path_factory.mktemp("pretrained")
    preset = get_preset("smoke", **{"train.out_dir": str(root / "run"), "train.steps": 1,
                                    "train.tensorboard": False, "train.device": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(preset, vgg=VGG16Features("none"), progress=False)
    trainer.fit()
    card = export_generator(root / "run", root / "weights" / "csa_celeba64.pt",
                            {"licence": "test", "command": "pytest"})
    assert card["sha256"] == sha256_file(root / "weights" / "csa_celeba64.pt")
    assert card["dtype"] == "float16" and card["trained_steps"] == 1 and card["licence"] == "test"
    return root / "weights", trainer


def test_export_then_load_round_trip(exported):
    weights_dir, trainer = exported
    G = load_pretrained("celeba64", weights_dir=weights_dir)
    assert not G.training and G.card["model"]["base_channels"] == 8
    state = torch.load(weights_dir / "csa_celeba64.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    for (k, a), b in zip(G.state_dict().items(), trainer.G.state_dict().values()):
        # fp16 storage: the weights come back to float32 within half precision
        torch.testing.assert_close(a, b.half().float(), msg=k)
    image, mask = torch.rand(1, 3, 32, 32) * 2 - 1, torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    out = G(image, mask)
    assert out.refined.shape == (1, 3, 32, 32) and torch.isfinite(out.refined).all()


def test_corrupt_or_missing_weights_name_the_file(exported, tmp_path):
    weights_dir, _ = exported
    bad = tmp_path / "w"
    shutil.copytree(weights_dir, bad)
    data = bytearray((bad / "csa_celeba64.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "csa_celeba64.pt").write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match=r"csa_celeba64\.pt is corrupt"):
        load_pretrained("celeba64", weights_dir=bad)
    (bad / "csa_celeba64.pt").unlink()
    with pytest.raises(PretrainedError, match=r"weights file not found: .*csa_celeba64\.pt"):
        load_pretrained("celeba64", weights_dir=bad)
    with pytest.raises(PretrainedError, match="model card not found"):
        load_pretrained("celeba64", weights_dir=tmp_path / "nothing")
    with pytest.raises(PretrainedError, match="unknown pretrained model 'nope'"):
        load_pretrained("nope")
    card = json.loads((weights_dir / "csa_celeba64.json").read_text())
    del card["sha256"]
    (bad / "csa_celeba64.json").write_text(json.dumps(card))
    with pytest.raises(PretrainedError, match="has no 'sha256'"):
        read_card("celeba64", bad)


def test_a_pickle_payload_does_not_run(exported, tmp_path):
    # A weights file whose sha256 matches its card but which holds a pickled callable: weights_only refuses.
    weights_dir, _ = exported
    bad = tmp_path / "w"
    shutil.copytree(weights_dir, bad)

    class Payload:
        def __reduce__(self):
            return (print, ("PAYLOAD RAN",))

    torch.save({"x": Payload()}, bad / "csa_celeba64.pt")
    card = json.loads((bad / "csa_celeba64.json").read_text())
    card["sha256"] = sha256_file(bad / "csa_celeba64.pt")
    (bad / "csa_celeba64.json").write_text(json.dumps(card))
    with pytest.raises(PretrainedError, match="cannot read weights file"):
        load_pretrained("celeba64", weights_dir=bad)


@needs_shipped
def test_shipped_model_fills_a_real_face_better_than_a_flat_fill():
    from csa_lib.baselines import mean_fill
    from csa_lib.data import astronaut_face

    assert "celeba64" in list_pretrained(available_only=True)
    G = load_pretrained("celeba64")
    card = G.card
    assert card["size_bytes"] <= 40 * 2**20 and card["model"]["image_size"] == 64
    face = astronaut_face(64)[None]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1  # the centre: eyes, nose and mouth
    with torch.no_grad():
        out = G(face, mask)
    err_model = ((out.composite - face).abs() * mask).sum() / (3 * mask.sum())
    err_flat = ((mean_fill(face, mask) - face).abs() * mask).sum() / (3 * mask.sum())
    assert torch.equal(out.composite * (1 - mask), face * (1 - mask))
    assert err_model < 0.8 * err_flat, (float(err_model), float(err_flat))


def _held_out_large_holes(n_per_bin: int = 12):
    from csa_lib.metrics import held_out_faces

    return held_out_faces(n=3 * n_per_bin, bins=("30-40%", "40-50%", "50-60%"))


def _held_out_large_hole_batch(n_per_bin: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N,3,64,64], masks [N,1,64,64]) of :func:`_held_out_large_holes`, stacked."""
    protocol = _held_out_large_holes(n_per_bin)
    return (torch.stack([protocol[j][0] for j in range(len(protocol))]),
            torch.stack([protocol[j][1] for j in range(len(protocol))]))


needs_shared = pytest.mark.skipif(not (SHARED_ROOT / "data" / "celeba_10k").is_dir(), reason="needs ../shared/data")


@needs_shipped
@pytest.mark.shared_data
@needs_shared
def test_shipped_model_beats_biharmonic_deep_inside_large_holes():
    # Where learning must help: hole pixels 5 or more pixels from any known pixel, where a smooth
    # continuation of the border has nothing left to continue. (Measured on 499 faces: 3.82 vs 4.99 % MSE.)
    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.metrics import error_by_border_distance

    image, mask = _held_out_large_hole_batch()
    with torch.no_grad():
        out = load_pretrained("celeba64")(image, mask)
    model = error_by_border_distance(out.composite, image, mask)["5+"]
    floor = error_by_border_distance(biharmonic_inpaint(image, mask), image, mask)["5+"]
    coarse = error_by_border_distance(image * (1 - mask) + out.coarse * mask, image, mask)["5+"]
    assert model[1] > 1000 and model[0] < floor[0] and model[0] <= coarse[0], (model, floor, coarse)


@needs_shipped
@pytest.mark.shared_data
@needs_shared
def test_shipped_model_beats_biharmonic_next_to_the_known_pixels():
    # Issue 25: one and two pixels inside the hole a smooth continuation is nearly exact; version 2 lost
    # there (0.59 vs 0.47 % on 499 faces), version 3's border head wins (0.39 %). Its head is trained.
    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.metrics import error_by_border_distance

    image, mask = _held_out_large_hole_batch()
    G = load_pretrained("celeba64")
    assert G.border_head is not None and G.border_head.body[-1].weight.abs().sum() > 0
    with torch.no_grad():
        out = G(image, mask)
    model = error_by_border_distance(out.composite, image, mask)
    floor = error_by_border_distance(biharmonic_inpaint(image, mask), image, mask)
    for band in ("1", "2"):
        assert model[band][1] > 1000 and model[band][0] < floor[band][0], (band, model, floor)


@needs_shipped
@pytest.mark.shared_data
@needs_shared
def test_shipped_model_beats_biharmonic_on_held_out_faces():
    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.metrics import evaluate

    # The per-bin bar (every one of the 30-60 % bins, all 1,000 faces) is checked by the benchmark and
    # recorded in the model card; 12 faces per bin are too few for a 0.3 dB margin per bin, so this test
    # pools 40 faces of each large-hole bin and asks for the margin on the pool.
    protocol = _held_out_large_holes(n_per_bin=40)
    kw = dict(batch_size=40, progress=False)
    model = evaluate(load_pretrained("celeba64"), protocol, **kw).summary()["all"]
    floor = evaluate(biharmonic_inpaint, protocol, **kw).summary()["all"]
    assert model["n"] == floor["n"] == 120
    assert model["psnr"] > floor["psnr"] and model["l1"] < floor["l1"], (model, floor)


@needs_shipped
def test_model_card_records_the_bar_as_measured():
    """The card's evaluation is what the benchmark measured, and its status says what the numbers say."""
    card = json.loads((WEIGHTS_DIR / "csa_celeba64.json").read_text())
    r = card["evaluation"]["results"]
    won = all(r["CSA"][b]["psnr"] > r["biharmonic"][b]["psnr"] and r["CSA"][b]["l1"] < r["biharmonic"][b]["l1"]
              for b in ("30-40%", "40-50%", "50-60%"))
    assert card["evaluation"]["protocol"]["n"] == 1000
    assert card["status"].startswith("beats biharmonic") == won


def test_demo_shows_the_shipped_model(exported, tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import csa_lib.pretrained as pretrained
    from csa_lib.cli import shipped_model_demo

    weights_dir, _ = exported
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dir)
    paths = shipped_model_demo(tmp_path)
    assert paths["shipped"].is_file() and paths["shipped"].stat().st_size > 1000
    assert "CSA (shipped)" in capsys.readouterr().out
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "none")
    assert shipped_model_demo(tmp_path) == {}
