"""Generator and discriminators: shapes, official layer sizes, detached coarse input, per-image masks."""
import pytest
import torch

from csa_lib.config import ModelConfig
from csa_lib.masks import center_mask, feature_mask, random_rect_mask
from csa_lib.networks import (FILL_OFFICIAL, CoarseNet, CSAInpainter, FeaturePatchDiscriminator,
                              PatchDiscriminator, RefineNet, build_models, count_parameters, fill_hole)


def _batch(size, gen, b=2):
    img = torch.rand(b, 3, size, size, generator=gen) * 2 - 1
    masks = [center_mask(size)] + [random_rect_mask(size, generator=gen) for _ in range(b - 1)]
    return img, torch.stack(masks)


@pytest.mark.parametrize("size,base", [(32, 8), (64, 8), (128, 4), (256, 2)])
def test_generator_shapes(size, base, gen):
    G, D, FD = build_models(ModelConfig(image_size=size, base_channels=base, attention="csa"))
    img, mask = _batch(size, gen)
    with torch.no_grad():
        out = G(img, mask)
    for t in (out.coarse, out.refined, out.composite):
        assert t.shape == (2, 3, size, size)
    h = size // 8
    assert out.csa_out.shape == out.decoder_feat.shape == (2, 8 * base, h, h)
    assert out.feature_hole.shape == (2, 1, h, h) and out.feature_hole.dtype == torch.bool
    assert out.coarse.abs().max() < 1  # Tanh
    assert D(img).shape == (2, 1, h - 2, h - 2)
    feats = torch.randn(2, 256, h, h, generator=gen)
    assert FD(feats).shape[:2] == (2, 8 * base) and min(FD(feats).shape[2:]) >= 1


def test_depth_adapts_to_size():
    with torch.device("meta"):
        assert CoarseNet(64, 256).channels == [64, 128, 256, 512, 512, 512, 512, 512]
    assert len(CoarseNet(8, 256).down) == 8 and len(CoarseNet(8, 64).down) == 6
    with pytest.raises(ValueError, match="power of two"):
        CoarseNet(8, 96)


def test_paper_size_parameter_counts():
    """Counts of the official layer sizes at 256 px, base 64 (computed from the official layer list)."""
    with torch.device("meta"):  # shapes only: no memory, no time
        assert count_parameters(CoarseNet(64, 256)) == 54_419_459  # pix2pix unet_256 with affine IN
        assert count_parameters(RefineNet(64, 256, attention="identity")) == 77_692_291
        assert count_parameters(PatchDiscriminator(64)) == 2_766_529
        # PFDiscriminator: 256->512, 512->512, 512->512, all 4x4 with bias.
        assert count_parameters(FeaturePatchDiscriminator(256, 64, 256)) == 3 * 512 + 16 * 512 * (256 + 512 + 512)


def test_refine_layer_layout():
    with torch.device("meta"):
        net = RefineNet(64, 256, attention="identity")
    lvl = net.levels[0]
    dil = lvl.down[1]
    assert (dil.kernel_size, dil.stride, dil.padding, dil.dilation) == ((4, 4), (2, 2), (3, 3), (2, 2))
    assert [lv.down[4].out_channels for lv in net.levels] == [128, 256, 512, 512, 512, 512, 512]
    assert [lv.attention is not None for lv in net.levels] == [False, False, True] + [False] * 4
    assert not any(isinstance(m, torch.nn.Tanh) for m in net.modules())  # official: no Tanh


def test_attention_sees_signed_features_at_one_eighth(gen):
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, hole, return_attention=False):
            seen["x"], seen["hole"] = x, hole
            return x

    net = RefineNet(8, 64, attention="identity")
    net.levels[2].attention = Spy()
    hole = feature_mask(center_mask(64)[None])
    net(torch.randn(1, 6, 64, 64, generator=gen), hole)
    assert seen["x"].shape == (1, 64, 8, 8)
    assert (seen["x"] < 0).any()  # before the IN/ReLU: signed


def test_fill_hole_and_refine_input(gen):
    img, mask = _batch(32, gen)
    filled = fill_hole(img, mask)
    inside = filled.permute(1, 0, 2, 3)[:, mask[:, 0] > 0]
    torch.testing.assert_close(inside, torch.tensor(FILL_OFFICIAL)[:, None].expand_as(inside))
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=4, attention="identity"))
    coarse = torch.randn(2, 3, 32, 32, generator=gen)
    x6 = G.refine_input(img, mask, coarse)
    torch.testing.assert_close(x6[:, :3], coarse * mask + img * (1 - mask))
    torch.testing.assert_close(x6[:, 3:], img * (1 - mask))


def test_coarse_enters_refinement_detached(gen):
    """Refinement losses must not reach the coarse net: only its own L1 trains it (official)."""
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=4, attention="csa"))
    img, mask = _batch(32, gen)
    out = G(img, mask)
    (out.refined.sum() + out.csa_out.sum() + out.decoder_feat.sum()).backward()
    assert all(p.grad is None for p in G.coarse_net.parameters())
    assert G.refine_net.stem.weight.grad.abs().sum() > 0
    out = G(img, mask)
    out.coarse.sum().backward()
    assert G.coarse_net.down[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", ["csa", "identity", "contextual", "shift"])
def test_per_image_masks_match_one_by_one(attention, gen):
    """Eval mode: a batch with different masks equals running every image alone (IN is per image)."""
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=8, attention=attention)).eval()
    img, _ = _batch(32, gen, b=3)
    mask = torch.stack([center_mask(32), center_mask(32, 8), random_rect_mask(32, generator=gen)])
    with torch.no_grad():
        full = G(img, mask)
        for i in range(3):
            one = G(img[i:i + 1], mask[i:i + 1])
            for name in ("coarse", "refined", "composite", "csa_out", "decoder_feat"):
                torch.testing.assert_close(getattr(one, name)[0], getattr(full, name)[i],
                                           rtol=1e-3, atol=1e-4, msg=f"{attention} {name} image {i}")
    assert not torch.equal(full.feature_hole[0], full.feature_hole[1])  # the masks really differ


@pytest.mark.parametrize("attention", ["csa", "identity", "contextual", "shift"])
def test_ablation_variants_train_step(attention, gen):
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=4, attention=attention))
    img, mask = _batch(32, gen)
    out = G(img, mask, return_attention=True)
    assert (out.attention is None) == (attention == "identity")
    torch.testing.assert_close(out.composite * (1 - mask), img * (1 - mask))
    out.refined.abs().mean().backward()
    assert torch.isfinite(G.refine_net.stem.weight.grad).all()


def test_csa_output_replaces_hole_only(gen):
    """With the CSA layer, known positions of csa_out are the conv features; holes are changed."""
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=8, attention="csa")).eval()
    img, mask = _batch(32, gen, b=1)
    with torch.no_grad():
        out = G(img, mask)
        ident = CSAInpainter(ModelConfig(image_size=32, base_channels=8, attention="identity")).eval()
        ident.load_state_dict(G.state_dict())
        ref = ident(img, mask)
    known = ~out.feature_hole.expand_as(out.csa_out)
    torch.testing.assert_close(out.csa_out[known], ref.csa_out[known])
    assert not torch.allclose(out.csa_out[~known], ref.csa_out[~known])


@pytest.mark.parametrize("semantics,backward", [("official", "official"), ("official", "autograd"),
                                                ("paper", "official")])
def test_csa_options_pass_through(semantics, backward, gen):
    """ModelConfig's CSA options reach the layer, and every combination trains the encoder."""
    cfg = ModelConfig(image_size=32, base_channels=4, csa_semantics=semantics, csa_backward=backward)
    G = CSAInpainter(cfg)
    layer = G.refine_net.levels[2].attention
    assert (layer.semantics, layer.backward) == (semantics, backward)
    img, mask = _batch(32, gen)
    G(img, mask).csa_out.pow(2).mean().backward()
    assert G.refine_net.levels[2].down[4].weight.grad.abs().sum() > 0


def test_bad_inputs_raise():
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=4, attention="identity"))
    with pytest.raises(ValueError, match="mask"):
        G(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="attention"):
        build_models(ModelConfig(image_size=32, base_channels=4, attention="nope"))
