"""Losses: formulas, paper vs official gradient paths, one full G/D step."""
import warnings

import pytest
import torch

from csa_lib.config import LossConfig, ModelConfig
from csa_lib.losses import InpaintingLoss, consistency_loss, l1_loss, match_channels, ralsgan_d, ralsgan_g
from csa_lib.masks import center_mask, random_rect_mask
from csa_lib.networks import build_models
from csa_lib.vgg import VGG16Features


@pytest.fixture(scope="module")
def vgg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGG16Features("none")


def _setup(gen, attention="csa", size=32, base=8):
    G, D, FD = build_models(ModelConfig(image_size=size, base_channels=base, attention=attention))
    img = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    mask = torch.stack([center_mask(size), random_rect_mask(size, generator=gen)])
    return G, D, FD, img, mask


def test_l1_and_ralsgan_values():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert l1_loss(a, b).item() == pytest.approx(0.5)
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([1.0, -1.0])  # E[r] = 1, E[f] = 0
    # D: ((r - 0 - 1)^2 mean = (1 + 1)/2 = 1, (f - 1 + 1)^2 mean = (1 + 1)/2 = 1) / 2 = 1
    assert ralsgan_d(r, f).item() == pytest.approx(1.0)
    # G: ((r + 1)^2 mean = (9 + 1)/2 = 5, (f - 2)^2 mean = (1 + 9)/2 = 5) / 2 = 5
    assert ralsgan_g(r, f).item() == pytest.approx(5.0)
    # At the D optimum (real scores = fake scores + 1 on average) the D loss is 0.
    assert ralsgan_d(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])).item() == 0


def test_consistency_variants_on_a_hand_made_example():
    # Two images, C = 2 channels, 2x2 features. Image 0 has one hole position (0, 1), image 1 has two,
    # (1, 0) and (1, 1). Every number below is worked out by hand from these values.
    feat = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 1.], [0., 0.]]],
                         [[[0., 0.], [2., 1.]], [[0., 0.], [1., 3.]]]])
    target = torch.tensor([[[[0., 0.], [0., 0.]], [[0., 3.], [0., 0.]]],
                           [[[1., 1.], [0., 0.]], [[0., 0.], [1., 1.]]]])
    hole = torch.tensor([[[[0, 1], [0, 0]]], [[[0, 0], [1, 1]]]], dtype=torch.bool)
    # Squared distances at the hole positions: image 0 at (0,1): (2-0)^2 + (1-3)^2 = 8;
    # image 1 at (1,0): (2-0)^2 + (1-1)^2 = 4; at (1,1): (1-0)^2 + (3-1)^2 = 5. Sum 17, T = 3, C = 2.
    assert consistency_loss(feat, target, hole, "paper_sum").item() == pytest.approx(17 / 2)  # / B
    assert consistency_loss(feat, target, hole, "hole_mean").item() == pytest.approx(17 / 6)  # / (T C)
    # target^2 over the hole: image 0: 0 + 9; image 1: (0 + 1) + (0 + 1) -> 11 / 6.
    assert consistency_loss(feat, target, hole, "hole_mean_scaled").item() == pytest.approx(17 / 11)
    # Official: (feat * m - target)^2 over all 16 elements. Image 0: hole element feat (2, 1) vs (0, 3)
    # -> 4 + 4; known elements give target^2 = 0. Image 1: holes give 4 + 0 + 1 + 4 = 9; known
    # elements give target^2 = 1 + 1 (channel 0, row 0). Total 8 + 9 + 2 = 19 over 16 elements.
    assert consistency_loss(feat, target, hole, "official_mean").item() == pytest.approx(19 / 16)
    with pytest.raises(ValueError, match="consistency variant"):
        consistency_loss(feat, target, hole, "paper")


def test_consistency_loss_hole_only(gen):
    feat = torch.randn(2, 512, 4, 4, generator=gen)
    target = torch.randn(2, 512, 4, 4, generator=gen)
    hole = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    hole[0, 0, 1, 2] = hole[1, 0, 3, 3] = True
    expected = ((feat[0, :, 1, 2] - target[0, :, 1, 2]) ** 2).sum() + ((feat[1, :, 3, 3] - target[1, :, 3, 3]) ** 2).sum()
    torch.testing.assert_close(consistency_loss(feat, target, hole, "hole_mean"), expected / (2 * 512))
    torch.testing.assert_close(consistency_loss(feat, target, hole, "paper_sum"), expected / 2)
    # Known positions do not matter at all in the hole variants...
    feat2 = torch.where(hole, feat, torch.randn(feat.shape, generator=gen))
    for variant in ("paper_sum", "hole_mean", "hole_mean_scaled"):
        torch.testing.assert_close(consistency_loss(feat2, target, hole, variant),
                                   consistency_loss(feat, target, hole, variant))
    # ...but the official formula compares 0 with the target there.
    official = ((feat * hole - target) ** 2).mean()
    torch.testing.assert_close(consistency_loss(feat, target, hole, "official_mean"), official)
    for variant in ("paper_sum", "hole_mean", "hole_mean_scaled"):  # no hole, no loss
        assert consistency_loss(feat, target, torch.zeros_like(hole), variant).item() == 0


def test_match_channels():
    t = torch.arange(512.0).view(1, 512, 1, 1)
    assert match_channels(t, 512) is t
    torch.testing.assert_close(match_channels(t, 64)[0, :2, 0, 0], torch.tensor([3.5, 11.5]))
    with pytest.raises(ValueError, match="divisor"):
        match_channels(t, 96)


def _encoder_grad(cfg, vgg, gen, which):
    """Gradient of one term (or the total) w.r.t. the 3x3 conv feeding the CSA layer."""
    G, D, FD, img, mask = _setup(gen)
    loss = InpaintingLoss(cfg, vgg)
    out = G(img, mask)
    w = G.refine_net.levels[2].down[4].weight
    if which == "total":
        total, _ = loss.generator(out, img, mask, D, FD)
        total.backward()
        return w.grad
    term = loss.generator_terms(out, img, mask, D, FD)[which]
    if not term.requires_grad:
        return None
    (g,) = torch.autograd.grad(term, w, allow_unused=True)
    return g


@pytest.mark.parametrize("term", ["cons_csa", "cons_decoder"])
def test_consistency_gradient_paper_vs_official(term, vgg, gen):
    g = _encoder_grad(LossConfig(mode="paper"), vgg, gen, term)
    assert g is not None and g.abs().sum() > 0
    assert _encoder_grad(LossConfig(mode="official"), vgg, gen, term) is None


def test_only_consistency_weight_reaches_encoder(vgg, gen):
    """With lambda_r = lambda_d = 0 the total is lambda_c * consistency: live in paper mode only."""
    paper = _encoder_grad(LossConfig(mode="paper", lambda_r=0, lambda_d=0), vgg, gen, "total")
    official = _encoder_grad(LossConfig(mode="official", lambda_r=0, lambda_d=0), vgg, gen, "total")
    assert paper.abs().sum() > 0
    assert official is None or official.abs().sum() == 0


def test_feature_gan_term_paper_vs_official(vgg, gen):
    """The feature discriminator's generator term reaches G in paper mode only (official detaches)."""
    for mode, live in (("paper", True), ("official", False)):
        G, D, FD, img, mask = _setup(gen)
        out = G(img, mask)
        t = InpaintingLoss(LossConfig(mode=mode), vgg).generator_terms(out, img, mask, D, FD)["g_feature"]
        (g,) = torch.autograd.grad(t, out.refined, allow_unused=True)
        assert (g is not None and g.abs().sum() > 0) == live, mode


def test_generator_total_is_weighted_sum(vgg, gen):
    G, D, FD, img, mask = _setup(gen)
    cfg = LossConfig(lambda_r=1.0, lambda_c=0.01, lambda_d=0.002)
    with torch.no_grad():
        out = G(img, mask)
        total, logs = InpaintingLoss(cfg, vgg).generator(out, img, mask, D, FD)
    expect = (logs["l1_coarse"] + logs["l1_refined"] + 0.01 * (logs["cons_csa"] + logs["cons_decoder"])
              + 0.002 * (logs["g_image"] + logs["g_feature"]))
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert logs["g_total"] == pytest.approx(expect, rel=1e-5)


def test_full_training_step(vgg, gen):
    """One D step then one G step changes the weights and gives finite losses (batch 2, per-image masks)."""
    G, D, FD, img, mask = _setup(gen, base=4)
    loss = InpaintingLoss(LossConfig(), vgg)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(D.parameters()) + list(FD.parameters()), 2e-4, betas=(0.5, 0.999))
    out = G(img, mask)
    d_total, d_logs = loss.discriminator(out, img, D, FD)
    opt_d.zero_grad()
    d_total.backward()
    assert all(p.grad is None for p in G.parameters())  # D step does not touch G
    before_d = D.model[0].weight.detach().clone()
    opt_d.step()
    g_total, g_logs = loss.generator(out, img, mask, D, FD)
    opt_g.zero_grad()
    g_total.backward()
    before_g = G.refine_net.stem.weight.detach().clone()
    opt_g.step()
    assert not torch.equal(before_d, D.model[0].weight) and not torch.equal(before_g, G.refine_net.stem.weight)
    assert all(torch.isfinite(torch.tensor(v)) for v in {**d_logs, **g_logs}.values())
    assert set(g_logs) >= {"l1_coarse", "l1_refined", "cons_csa", "cons_decoder", "g_image", "g_feature", "g_total"}
    assert set(d_logs) == {"d_image", "d_feature", "d_total"}


def test_bad_mode_raises(vgg):
    with pytest.raises(ValueError, match="mode"):
        InpaintingLoss(LossConfig(mode="nope"), vgg)


def test_hole_mean_scaled_is_scale_free():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 8, 4, 4, generator=g)
    target = torch.randn(2, 8, 4, 4, generator=g) * 50
    hole = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    hole[:, :, 1:3, 1:3] = True
    raw = consistency_loss(feat, target, hole, "hole_mean")
    rel = consistency_loss(feat, target, hole, "hole_mean_scaled")
    torch.testing.assert_close(rel, raw / (target ** 2 * hole).sum() * (hole.sum() * 8))
    torch.testing.assert_close(consistency_loss(feat * 1000, target * 1000, hole, "hole_mean_scaled"), rel)
    assert consistency_loss(feat * 1000, target * 1000, hole, "hole_mean") > raw * 1e5


def test_bad_consistency_variant_raises(vgg):
    with pytest.raises(ValueError, match="consistency"):
        InpaintingLoss(LossConfig(consistency="paper"), vgg)


def test_official_mode_feeds_vgg_the_raw_image(vgg):
    # Official: VGG sees the [-1, 1] image as it is; paper mode applies the weights' preprocessing.
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, img, taps=("pool3", "relu4_3"), raw=False):
            calls.append(raw)
            return vgg(img, taps=taps, raw=raw)

    img = torch.rand(1, 3, 16, 16) * 2 - 1
    assert not torch.allclose(vgg(img, raw=True)["relu4_3"], vgg(img)["relu4_3"])
    for mode, expect in (("official", True), ("paper", False)):
        calls.clear()
        loss = InpaintingLoss(LossConfig(mode=mode), Spy())
        loss._vgg(img, ("pool3",))
        assert calls == [expect]
    assert InpaintingLoss(LossConfig(mode="official", consistency="paper_sum"), vgg).consistency_variant == "official_mean"


def test_old_checkpoint_consistency_norm_maps_to_variant():
    from csa_lib.config import Preset, get_preset

    d = get_preset("smoke").to_dict()
    del d["loss"]["consistency"]
    d["loss"]["consistency_norm"] = "target"
    assert Preset.from_dict(d).loss.consistency == "hole_mean_scaled"
    d["loss"]["consistency_norm"] = "none"
    assert Preset.from_dict(d).loss.consistency == "hole_mean"


def test_l1_hole_weight_counts_hole_pixels_w_times():
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.ones(1, 3, 2, 2)
    target[..., 0, 0] = 3.0  # error 3 at the one hole pixel, 1 elsewhere
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, 0] = 1
    assert l1_loss(pred, target).item() == pytest.approx((3 + 1 + 1 + 1) / 4)
    assert l1_loss(pred, target, mask, 1.0).item() == pytest.approx((3 + 1 + 1 + 1) / 4)
    assert l1_loss(pred, target, mask, 6.0).item() == pytest.approx((6 * 3 + 1 + 1 + 1) / 4)
    with pytest.raises(ValueError, match="need the mask"):
        l1_loss(pred, target, None, 6.0)


def test_l1_border_weight_counts_the_hole_edge_v_times():
    """A 6x6 hole in a 10x10 image: its first two rings (distance 1-2, 32 pixels) count v times, the
    2x2 core (distance 3) and the known pixels once; border_px=1 weights only the 20 pixels of ring 1."""
    pred = torch.zeros(1, 3, 10, 10)
    target = torch.ones(1, 3, 10, 10)
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., 2:8, 2:8] = 1
    assert l1_loss(pred, target, mask, border_weight=1.0).item() == pytest.approx(1.0)
    assert l1_loss(pred, target, mask, border_weight=5.0).item() == pytest.approx((100 + 4 * 32) / 100)
    assert l1_loss(pred, target, mask, border_weight=5.0, border_px=1).item() == pytest.approx((100 + 4 * 20) / 100)
    # on top of the hole weight: ring pixels 1 + (6 - 1) + (5 - 1) = 10, core 6, known 1
    assert l1_loss(pred, target, mask, 6.0, 5.0).item() == pytest.approx((64 + 6 * 4 + 10 * 32) / 100)
    with pytest.raises(ValueError, match="need the mask"):
        l1_loss(pred, target, None, border_weight=2.0)


@pytest.mark.parametrize("field,value", [("l1_border_px", 0), ("l1_border_weight", -1.0),
                                         ("l1_hole_weight", float("nan")), ("tv_weight", "big")])
def test_loss_config_refuses_bad_weights(field, value):
    with pytest.raises(ValueError, match=f"loss.{field}"):
        LossConfig(**{field: value})


def test_l1_hole_weight_reaches_the_generator_terms():
    from csa_lib.config import get_preset
    from csa_lib.networks import build_models

    preset = get_preset("smoke")
    G, D, F = build_models(preset.model)
    torch.manual_seed(0)
    image = torch.rand(2, 3, preset.model.image_size, preset.model.image_size) * 2 - 1
    mask = torch.zeros(2, 1, preset.model.image_size, preset.model.image_size)
    mask[..., 8:20, 8:20] = 1
    out = G(image, mask)
    vgg = InpaintingLoss(preset.loss).vgg
    plain = InpaintingLoss(preset.loss, vgg).generator_terms(out, image, mask, D, F)
    preset.loss.l1_hole_weight = 6.0
    weighted = InpaintingLoss(preset.loss, vgg).generator_terms(out, image, mask, D, F)
    expected = l1_loss(out.refined, image, mask, 6.0)
    torch.testing.assert_close(weighted["l1_refined"], expected)
    assert weighted["l1_refined"] > plain["l1_refined"]
    preset.loss.l1_border_weight = 4.0
    bordered = InpaintingLoss(preset.loss, vgg).generator_terms(out, image, mask, D, F)
    torch.testing.assert_close(bordered["l1_coarse"], l1_loss(out.coarse, image, mask, 6.0, 4.0))
    assert bordered["l1_refined"] > weighted["l1_refined"]


def test_self_consistency_target_pulls_the_search_input_towards_the_ground_truth(gen):
    """consistency_target="self": cons_csa compares the attention layer's input at the hole with the same
    network's input feature on the ground truth; no VGG is built; the term reaches the encoder."""
    G, D, FD, img, mask = _setup(gen)
    cfg = LossConfig(lambda_c=1.0, lambda_d=0.0, consistency_target="self", vgg_weights="none")
    loss = InpaintingLoss(cfg)
    assert loss.vgg is None and loss.needs_self_target and not loss.needs_vgg
    out = G(img, mask)
    with torch.no_grad():
        target = G(img, torch.zeros_like(mask)).csa_in
    assert out.csa_in.shape == target.shape == out.csa_out.shape
    terms = loss.generator_terms(out, img, mask, D, FD, self_target=target)
    manual = consistency_loss(out.csa_in, target, out.feature_hole, cfg.consistency)
    torch.testing.assert_close(terms["cons_csa"], manual)
    assert float(terms["cons_decoder"]) == 0.0 and float(terms["cons_csa"].detach()) > 0
    w = G.refine_net.stem.weight
    (g,) = torch.autograd.grad(terms["cons_csa"], w, allow_unused=True)
    assert g is not None and g.abs().sum() > 0
    # a perfect feature scores 0: the ground truth's own pass against itself
    with torch.no_grad():
        same = G(img, torch.zeros_like(mask))
    hole = out.feature_hole
    assert float(consistency_loss(same.csa_in, target, hole, cfg.consistency)) == 0.0
    with pytest.raises(ValueError, match="needs self_target"):
        loss.generator_terms(out, img, mask, D, FD)
    with pytest.raises(ValueError, match="loss.consistency_target"):
        LossConfig(consistency_target="imagenet")
