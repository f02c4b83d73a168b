"""Framing augmentation (data.framed_crop / jitter_colour), train.init_from, the border TV term and the
loss terms that are skipped when their weight is 0."""
import pytest
import torch
from PIL import Image

from csa_lib.config import LossConfig, ModelConfig, get_preset
from csa_lib.data import InpaintingDataset, framed_crop, jitter_colour, prepare_image, to_tensor
from csa_lib.losses import InpaintingLoss, border_tv_loss
from csa_lib.networks import CSAInpainter, build_models
from csa_lib.train import Trainer, init_generator


def _photo(w=89, h=109):
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def test_framed_crop_without_shift_is_the_centre_crop():
    img = _photo()
    a = to_tensor(framed_crop(img, 64, 0.75))
    b = to_tensor(prepare_image(img, 64, "center_crop", 0.75))
    assert torch.equal(a, b)


def test_framed_crop_shift_moves_the_content():
    # a vertical ramp: moving the crop down shows brighter rows
    arr = torch.linspace(0, 255, 109).view(109, 1, 1).expand(109, 89, 3).to(torch.uint8).numpy()
    img = Image.fromarray(arr)
    base = to_tensor(framed_crop(img, 64, 0.5)).mean()
    down = to_tensor(framed_crop(img, 64, 0.5, shift=(0.1, 0.0))).mean()
    zoom_in = to_tensor(framed_crop(img, 64, 0.5, zoom=1.5))
    assert down > base
    assert zoom_in[:, 0].mean() > to_tensor(framed_crop(img, 64, 0.5))[:, 0].mean()  # top row nearer the centre
    out = framed_crop(img, 64, 0.5, zoom=0.7)  # zoom out beyond the photo: mirrored, no black bars
    assert out.size == (64, 64) and min(out.getextrema()[0]) >= 0
    with pytest.raises(ValueError, match="zoom"):
        framed_crop(img, 64, zoom=0)


def test_colour_jitter():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 8, 8) * 2 - 1
    assert torch.equal(jitter_colour(x, 0.0, g), x)
    y = jitter_colour(x, 0.2, g)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)


def test_dataset_augmentation_is_seeded_and_validated(tmp_path):
    for k in range(3):
        _photo().save(tmp_path / f"{k}.png")
    mask = torch.zeros(1, 32, 32)
    kw = dict(resize="center_crop", crop_top=0.75, seed=5, augment=(0.08, 0.15, 0.1))
    a = InpaintingDataset(tmp_path, 32, mask, **kw)
    b = InpaintingDataset(tmp_path, 32, mask, **kw)
    plain = InpaintingDataset(tmp_path, 32, mask, resize="center_crop", crop_top=0.75, seed=5)
    assert torch.equal(a[0][0], b[0][0]) and not torch.equal(a[0][0], plain[0][0])
    with pytest.raises(ValueError, match="augment"):
        InpaintingDataset(tmp_path, 32, mask, augment=(0.6, 0, 0), resize="center_crop")
    with pytest.raises(ValueError, match="center_crop"):
        InpaintingDataset(tmp_path, 32, mask, augment=(0.1, 0, 0))
    plain.framing = (0.05, 0.0, 1.1)
    assert not torch.equal(plain[0][0], InpaintingDataset(tmp_path, 32, mask, resize="center_crop",
                                                          crop_top=0.75, seed=5)[0][0])


def test_init_generator_from_weights_and_checkpoint(tmp_path):
    cfg = ModelConfig(image_size=32, base_channels=8)
    torch.manual_seed(0)
    src = CSAInpainter(cfg)
    torch.save({k: v.half() for k, v in src.state_dict().items()}, tmp_path / "w.pt")
    torch.save({"generator": src.state_dict()}, tmp_path / "ckpt.pt")
    for f in ("w.pt", "ckpt.pt"):
        torch.manual_seed(1)
        dst = CSAInpainter(cfg)
        init_generator(dst, tmp_path / f)
        k = "coarse_net.down.0.weight"
        assert torch.allclose(dst.state_dict()[k], src.state_dict()[k], atol=1e-3)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        init_generator(dst, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="does not fit"):
        init_generator(CSAInpainter(ModelConfig(image_size=32, base_channels=16)), tmp_path / "w.pt")


def test_trainer_starts_from_init_from(tmp_path):
    p = get_preset("smoke")
    p.train.device, p.train.out_dir = "cpu", str(tmp_path / "run")
    G = build_models(p.model)[0]
    torch.save(G.state_dict(), tmp_path / "g.pt")
    p.train.init_from = str(tmp_path / "g.pt")
    t = Trainer(p, progress=False)
    for k, v in G.state_dict().items():
        assert torch.equal(t.G.state_dict()[k], v)


def test_border_tv_loss_hand_example():
    comp = torch.zeros(1, 1, 4, 4)
    comp[..., 1, 1] = 1.0  # one generated pixel that jumps by 1 from its known neighbours
    comp = comp.expand(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1, 1] = 1
    # region = 3x3 block rows/cols 0..2: 6 horizontal + 6 vertical pairs, 4 of them touch the pixel
    assert torch.isclose(border_tv_loss(comp, mask), torch.tensor(4 / 12))
    assert border_tv_loss(torch.zeros(1, 3, 4, 4), mask) == 0


def test_zero_weight_terms_skip_vgg_and_discriminators():
    loss = InpaintingLoss(LossConfig(lambda_c=0, lambda_d=0, vgg_weights="none"))
    assert loss.vgg is None and not loss.needs_discriminators
    cfg = ModelConfig(image_size=32, base_channels=8)
    G, D, F = build_models(cfg)
    x, m = torch.rand(2, 3, 32, 32) * 2 - 1, torch.zeros(2, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    t = loss.generator_terms(G(x, m), x, m, D, F)
    assert t["cons_csa"] == 0 and t["g_image"] == 0 and t["l1_refined"] > 0


def test_copytask_trainer_skips_the_discriminator_step(tmp_path):
    p = get_preset("copytask_periodic", **{"train.device": "cpu", "train.steps": 2, "train.batch_size": 2,
                                  "train.out_dir": str(tmp_path), "model.image_size": 32,
                                  "data.image_size": 32, "model.base_channels": 8, "train.log_every": 1})
    t = Trainer(p, progress=False)
    d0 = {k: v.clone() for k, v in t.D.state_dict().items()}
    t.fit()
    assert all(torch.equal(d0[k], v) for k, v in t.D.state_dict().items())
    assert t.step == 2


def test_train_freeze_keeps_the_named_parameters_and_trains_the_rest(tmp_path):
    """train.freeze: the coarse net is not updated by a training step, the refinement net is."""
    p = get_preset("copytask_periodic", **{"train.device": "cpu", "train.steps": 1, "train.batch_size": 2,
                                  "train.out_dir": str(tmp_path / "run"), "train.tensorboard": False,
                                  "train.freeze": ("coarse_net.",)})
    t = Trainer(p, progress=False)
    before = {k: v.clone() for k, v in t.G.state_dict().items()}
    t.fit()
    after = t.G.state_dict()
    coarse = [k for k in before if k.startswith("coarse_net.") and before[k].is_floating_point()]
    refine = [k for k in before if k.startswith("refine_net.") and k.endswith("weight")]
    assert coarse and all(torch.equal(before[k], after[k]) for k in coarse)
    assert any(not torch.equal(before[k], after[k]) for k in refine)


def test_train_freeze_names_a_prefix_that_matches_nothing(tmp_path):
    p = get_preset("smoke", **{"train.device": "cpu", "train.out_dir": str(tmp_path / "run"),
                               "train.freeze": ("encoder.",)})
    with pytest.raises(ValueError, match="train.freeze: no generator parameter starts with 'encoder.'"):
        Trainer(p, progress=False)
    with pytest.raises(ValueError, match="train.freeze must be a tuple"):
        get_preset("smoke", **{"train.freeze": "coarse_net."})


def _image_and_mask(size=32, batch=2):
    torch.manual_seed(3)
    image = torch.rand(batch, 3, size, size) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[..., 8:20, 10:24] = 1
    return image, mask


def test_border_head_starts_as_the_identity_on_weights_saved_without_it(tmp_path):
    plain_cfg = ModelConfig(image_size=32, base_channels=8)
    torch.manual_seed(0)
    plain = CSAInpainter(plain_cfg).eval()
    torch.save({k: v.half() for k, v in plain.state_dict().items()}, tmp_path / "w.pt")
    init_generator(plain, tmp_path / "w.pt")  # the same fp16 rounding on both sides
    head = CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True)).eval()
    init_generator(head, tmp_path / "w.pt")
    assert any(k.startswith("border_head.") for k in head.state_dict())
    image, mask = _image_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(head(image, mask).composite, plain(image, mask).composite)
    # a file with the head loads it (not re-zeroed), and the head then changes the output
    with torch.no_grad():
        head.border_head.body[-1].bias.fill_(0.1)
    torch.save(head.state_dict(), tmp_path / "h.pt")
    again = CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True)).eval()
    init_generator(again, tmp_path / "h.pt")
    with torch.no_grad():
        out_head, out_plain = again(image, mask), plain(image, mask)
    hole = mask.bool().expand_as(image)
    torch.testing.assert_close(out_head.refined[hole], out_plain.refined[hole] + 0.1)
    torch.testing.assert_close(out_head.composite[~hole], image[~hole])  # known pixels stay the input
    # other missing names are still refused
    bad = {k: v for k, v in plain.state_dict().items() if not k.startswith("coarse_net.down.0")}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        init_generator(CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True)),
                       tmp_path / "bad.pt")


def test_border_head_sees_the_mask_and_learns():
    torch.manual_seed(0)
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True))
    image, mask = _image_and_mask()
    out = G(image, mask)
    (out.composite - image).abs().mean().backward()
    last = G.border_head.body[-1].weight
    assert last.grad is not None and last.grad.abs().sum() > 0  # zero-initialised, yet it gets a gradient
    first = G.border_head.body[0].weight
    assert first.shape[1] == 7  # refined (3) + known pixels (3) + mask (1)


def test_border_head_config_is_validated():
    with pytest.raises(ValueError, match="model.border_head"):
        ModelConfig(border_head="yes")
    assert CSAInpainter(ModelConfig(image_size=32, base_channels=8)).border_head is None
    with pytest.raises(ValueError, match="model.border_head_layers"):
        ModelConfig(border_head=True, border_head_layers=1)
    deep = CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True, border_head_layers=5))
    convs = [m for m in deep.border_head.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and convs[0].in_channels == 7 and convs[-1].out_channels == 3
    assert not convs[-1].weight.any() and convs[0].weight.std() > 0.05  # identity start, default init inside


def test_border_head_alone_on_a_frozen_generator(tmp_path):
    """The recipe of the shipped face model's version 3: start from weights without a head, freeze the
    generator, train the head with L1 only (no VGG, no discriminators): only the head changes."""
    base = get_preset("copytask_periodic", **{"train.device": "cpu", "train.batch_size": 2,
                                              "train.tensorboard": False})
    torch.manual_seed(0)
    torch.save(build_models(base.model)[0].state_dict(), tmp_path / "g.pt")
    p = get_preset("copytask_periodic", **{"train.device": "cpu", "train.steps": 2, "train.batch_size": 2,
                                  "train.out_dir": str(tmp_path / "run"), "train.tensorboard": False,
                                  "model.border_head": True, "train.freeze": ("coarse_net.", "refine_net."),
                                  "loss.lambda_c": 0.0, "loss.lambda_d": 0.0, "train.lr": 1e-3,
                                  "train.init_from": str(tmp_path / "g.pt")})
    t = Trainer(p, progress=False)
    before = {k: v.clone() for k, v in t.G.state_dict().items()}
    t.fit()
    after = t.G.state_dict()
    body = [k for k in before if not k.startswith("border_head.") and before[k].is_floating_point()]
    assert body and all(torch.equal(before[k], after[k]) for k in body)
    assert not torch.equal(before["border_head.body.4.weight"], after["border_head.body.4.weight"])
