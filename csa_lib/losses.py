"""CSA training losses (docs/method.md, "Losses").

Generator:  lambda_r (L1_coarse + L1_refined)
          + lambda_c (consistency(csa_out) + consistency(decoder_feat))
          + lambda_d (RaLSGAN_G(image D) + RaLSGAN_G(feature D))
Discriminators: 0.5 RaLSGAN_D(image D) + 0.5 RaLSGAN_D(feature D)     (official weighting)

Paper weights: lambda_r = 1, lambda_c = 0.01, lambda_d = 0.002 (the official 100 : 1 : 0.2). The L1
is over the whole image; ``LossConfig.l1_hole_weight`` (default 1 = the paper) can count hole pixels
more, as partial-convolution inpainting does (not in the paper; an option for short CPU budgets).

The consistency term comes in four variants (``LossConfig.consistency``, formulas in
:func:`consistency_loss`): ``paper_sum`` (the paper's equation), ``hole_mean``, ``hole_mean_scaled``
(scale-free; what the presets use, chosen by measurement: benchmarks/RESULTS.md) and
``official_mean`` (the official code).

``LossConfig.mode``:
- ``"paper"`` (default): every term is live.
- ``"official"``: reproduces the official code: VGG sees the [-1, 1] image with no ImageNet
  normalisation, and the consistency terms (computed with ``official_mean``: MSE over *all* positions
  of ``feat * hole`` against the full VGG map) are added as detached values (a defect), and the feature discriminator's generator term sees detached VGG features. Both are
  still computed and logged but give no gradient, so the generator really trains on
  ``lambda_r * L1 + lambda_d * GAN_image``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# The consistency variants (LossConfig.consistency, formulas in consistency_loss) are listed in config;
# notebooks import CONSISTENCY_VARIANTS from here.
from .config import CONSISTENCY_VARIANTS, LossConfig, check_choice
# Under torchrun, the batch-coupled terms below sum over the global batch (identity in one process).
from .distributed import batch_mean, global_count, global_sum
from .masks import border_distance


def l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, hole_weight: float = 1.0,
            border_weight: float = 1.0, border_px: int = 2) -> Tensor:
    """Mean absolute error over all pixels (official: ``nn.L1Loss`` on the whole image).

    pred, target ``[B,3,H,W]``; mask ``[B,1,H,W]`` (1 = hole). With ``hole_weight`` w != 1 each hole
    pixel counts w times (Liu et al. 2018's partial-convolution loss uses valid 1 + hole 6); with
    ``border_weight`` v != 1 the hole pixels within ``border_px`` pixels of a known pixel (chessboard
    distance, :func:`csa_lib.masks.border_distance`; ring r_p = 1 there) count v - 1 times more:

        L1 = mean_p (1 + (w - 1) m_p + (v - 1) r_p) |pred_p - target_p|

    Why a border weight: one pixel into the hole the true value is nearly the known neighbour's, so a
    smooth interpolator is almost exact there, while a network trained on the plain L1 gives those few
    pixels no more weight than any other (benchmarks/RESULTS.md, "The first pixel inside the hole").
    w = v = 1 is the paper's plain L1 and takes the plain path (bit for bit the old value).
    """
    err = (pred.float() - target.float()).abs()
    if hole_weight == 1.0 and border_weight == 1.0:
        return err.mean()
    if mask is None:
        raise ValueError(f"l1_loss: hole_weight={hole_weight} / border_weight={border_weight} need the mask")
    weight = 1 + (hole_weight - 1) * mask.float()
    if border_weight != 1.0:
        dist = border_distance(mask)
        weight = weight + (border_weight - 1) * ((dist >= 1) & (dist <= border_px)).float()
    return (err * weight).mean()


def border_tv_loss(composite: Tensor, mask: Tensor) -> Tensor:
    """Total variation of the composite over the hole grown by one pixel (Liu et al. 2018's L_tv).

    composite ``[B,3,H,W]`` (generated in the hole, known outside), mask ``[B,1,H,W]`` (1 = hole). With
    ``R`` = the hole dilated by one pixel (3x3), the loss is the mean absolute difference between
    horizontally and vertically adjacent pixels that both lie in ``R``: it penalises a step between the
    first generated pixel and the known pixel beside it, which a whole-image L1 hardly sees.
    """
    region = torch.nn.functional.max_pool2d(mask.float(), 3, stride=1, padding=1)
    c = composite.float()
    wx = region[..., :, 1:] * region[..., :, :-1]
    wy = region[..., 1:, :] * region[..., :-1, :]
    dx = (c[..., :, 1:] - c[..., :, :-1]).abs() * wx
    dy = (c[..., 1:, :] - c[..., :-1, :]).abs() * wy
    n = (wx.sum() + wy.sum()) * c.shape[1]
    return (dx.sum() + dy.sum()) / n.clamp_min(1)


def match_channels(target: Tensor, channels: int) -> Tensor:
    """VGG relu4_3 has 512 channels; a narrow generator (8C < 512) is compared with channel-group means.

    ``target`` ``[B,512,h,w]`` -> ``[B,channels,h,w]``: consecutive groups of ``512 // channels`` channels
    averaged. Identity at the paper width (C = 64). Not in the paper: it only lets small CPU models
    use the same loss.
    """
    c = target.shape[1]
    if channels == c:
        return target
    if channels > c or c % channels:
        raise ValueError(f"cannot compare {channels} generator channels with {c} VGG channels "
                         f"(need a divisor of {c}; base_channels must divide 64)")
    return target.reshape(target.shape[0], channels, c // channels, *target.shape[2:]).mean(dim=2)


def consistency_loss(feat: Tensor, target: Tensor, hole: Tensor, variant: str = "hole_mean_scaled") -> Tensor:
    """Squared distance between a generator feature and VGG relu4_3 of the ground truth.

    feat ``[B,C,h,w]``; target ``[B,512,h,w]`` (reduced to C channels by :func:`match_channels`);
    hole bool/float ``[B,1,h,w]`` (1 = hole). Returns a scalar. With ``M_b`` the hole positions of image
    ``b``, ``T = sum_b |M_b|`` and ``d_byc = feat_byc - target_byc``:

    - ``"paper_sum"``: the paper's equation, a sum over hole positions of the squared L2 distance
      (over channels), averaged over the batch:
      ``L = (1/B) sum_b sum_{y in M_b} ||d_by||^2``. About ``T/B x C`` times ``hole_mean``.
    - ``"hole_mean"``: the same squared distances, averaged over hole positions and channels:
      ``L = sum_b sum_{y in M_b} sum_c d_byc^2 / (T C)``. Known positions are left out.
    - ``"hole_mean_scaled"``: ``hole_mean`` divided by the target's mean square over the same positions
      (a constant: the target carries no gradient), ``L = hole_mean / (sum_{M} sum_c target^2 / (T C))``.
      Scale-free: the size of relu4_3 depends on the VGG weights and their input convention (the
      caffe-convention ImageNet file gives values in the thousands, so ``0.01 * hole_mean`` is ~100
      against an L1 of ~0.5). In neither the paper nor the official code.
    - ``"official_mean"``: the official ``InnerCos`` formula, an MSE over *all* ``B x C x h x w``
      elements of ``feat * hole - target``: ``L = mean((feat * m - target)^2)``. Known positions
      contribute the constant ``target^2``.
    """
    check_choice("consistency variant", variant, CONSISTENCY_VARIANTS)
    target = match_channels(target.float(), feat.shape[1])
    m = hole.float()
    if variant == "official_mean":
        # mean over B*C*h*w of (feat * m - target)^2
        return ((feat.float() * m - target) ** 2).mean()
    # sum over hole positions and channels of (feat - target)^2; the sums run over the global batch
    # under torchrun (T is the hole area of all images, not of this rank's share)
    hole_sq = global_sum(((feat.float() - target) ** 2 * m).sum())
    if variant == "paper_sum":
        # (1/B) sum_b sum_{y in M_b} ||feat_y - target_y||^2
        return hole_sq / global_count(feat.shape[0])
    n = (global_sum(m.sum()) * feat.shape[1]).clamp_min(1)  # T * C
    loss = hole_sq / n
    if variant == "hole_mean":
        return loss
    # hole_mean / mean over the hole of target^2  (a constant scale)
    scale = global_sum((target.detach() ** 2 * m).sum()) / n
    return loss / scale.clamp_min(1e-8)


def ralsgan_d(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Relativistic average LSGAN, discriminator side: real should beat the average fake by 1 and vice
    versa. ``((r - E[f] - 1)^2 + (f - E[r] + 1)^2) / 2`` averaged over all patch scores. ``E`` is over
    the global batch under torchrun (:func:`csa_lib.distributed.batch_mean`)."""
    r, f = real_pred.float(), fake_pred.float()
    return (((r - batch_mean(f) - 1) ** 2).mean() + ((f - batch_mean(r) + 1) ** 2).mean()) / 2


def ralsgan_g(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """RaLSGAN, generator side: the targets swap. ``((r - E[f] + 1)^2 + (f - E[r] - 1)^2) / 2``."""
    r, f = real_pred.float(), fake_pred.float()
    return (((r - batch_mean(f) + 1) ** 2).mean() + ((f - batch_mean(r) - 1) ** 2).mean()) / 2


def needs_vgg(cfg: LossConfig) -> bool:
    """Whether a loss config uses VGG: the adversarial feature term (``lambda_d != 0``) or a consistency
    term with the paper's VGG target. False for the copy task (``lambda_c = lambda_d = 0``) and for
    ``consistency_target="self"`` without discriminators."""
    return cfg.lambda_d != 0 or (cfg.lambda_c != 0 and cfg.consistency_target == "vgg")


class InpaintingLoss(nn.Module):
    """All CSA losses. ``vgg`` is a :class:`csa_lib.vgg.VGG16Features` (frozen; moved with ``.to``).

    Use: ``d_total, d_logs = loss.discriminator(out, image, image_D, feature_D)`` then
    ``g_total, g_logs = loss.generator(out, image, mask, image_D, feature_D)``. The generator pass
    also puts gradients into the discriminators' ``.grad``: zero them before their next step.
    """

    def __init__(self, cfg: LossConfig | None = None, vgg: nn.Module | None = None):
        super().__init__()
        cfg = cfg or LossConfig()
        cfg.validate()  # loss.mode and loss.consistency, also after a direct assignment
        self.cfg = cfg
        if vgg is None and self.needs_vgg:
            from .vgg import VGG16Features

            vgg = VGG16Features(cfg.vgg_weights)
        self.vgg = vgg if self.needs_vgg else None

    @property
    def needs_vgg(self) -> bool:
        """False when no term uses VGG (:func:`needs_vgg`): then no VGG is built or run."""
        return needs_vgg(self.cfg)

    @property
    def needs_self_target(self) -> bool:
        """True when the consistency term needs the network's own feature of the ground truth
        (``consistency_target="self"``): the trainer passes it to :meth:`generator` as ``self_target``."""
        return self.cfg.lambda_c != 0 and self.cfg.consistency_target == "self"

    @property
    def needs_discriminators(self) -> bool:
        """False when ``lambda_d = 0``: the trainer then skips the discriminator step (they stay at init)."""
        return self.cfg.lambda_d != 0

    @property
    def official(self) -> bool:
        return self.cfg.mode == "official"

    @property
    def consistency_variant(self) -> str:
        """``official_mean`` in official mode (whatever ``cfg.consistency`` says), else ``cfg.consistency``."""
        return "official_mean" if self.official else self.cfg.consistency

    def _vgg(self, img: Tensor, taps: tuple[str, ...]) -> dict[str, Tensor]:
        # Official mode feeds VGG the [-1, 1] image as it is (no ImageNet normalisation), as the
        # official code does; paper mode applies the preprocessing that matches the weights.
        return self.vgg(img, taps=taps, raw=self.official)

    def generator_terms(self, out, image: Tensor, mask: Tensor, image_D: nn.Module,
                        feature_D: nn.Module, self_target: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted generator terms as tensors (dead ones detached in official mode).

        out: :class:`csa_lib.networks.InpaintOutput`; image ``[B,3,H,W]`` in [-1,1]; mask ``[B,1,H,W]``
        (the consistency terms use ``out.feature_hole``; the mask itself only weights the L1 terms when
        ``l1_hole_weight`` or ``l1_border_weight`` != 1). ``self_target`` ``[B,8C,S/8,S/8]``: with ``consistency_target="self"``,
        the attention layer's input on the ground truth (no hole), detached; ``cons_csa`` then compares
        ``out.csa_in`` with it at the hole and ``cons_decoder`` is 0.
        """
        c = self.cfg
        weights = dict(hole_weight=c.l1_hole_weight, border_weight=c.l1_border_weight, border_px=c.l1_border_px)
        terms = {"l1_coarse": l1_loss(out.coarse, image, mask, **weights),
                 "l1_refined": l1_loss(out.refined, image, mask, **weights)}
        zero = out.refined.new_zeros(()).float()
        # A term whose weight is 0 is logged as 0 and not computed (no VGG pass, no discriminator pass):
        # the copy task trains on L1 (+ consistency) alone. The paper's presets have every weight > 0.
        if self.needs_vgg:
            taps = ("pool3", "relu4_3") if self.cfg.lambda_d != 0 else ("relu4_3",)
            with torch.no_grad():
                real = self._vgg(image, taps)
        if self.needs_self_target:
            if self_target is None or out.csa_in is None:
                raise ValueError("loss.consistency_target='self' needs self_target (the attention input on the "
                                 "ground truth) and out.csa_in")
            terms["cons_csa"] = consistency_loss(out.csa_in, self_target.detach(), out.feature_hole,
                                                 self.consistency_variant)
            terms["cons_decoder"] = zero
        elif self.cfg.lambda_c != 0:
            variant = self.consistency_variant
            terms["cons_csa"] = consistency_loss(out.csa_out, real["relu4_3"], out.feature_hole, variant)
            terms["cons_decoder"] = consistency_loss(out.decoder_feat, real["relu4_3"], out.feature_hole,
                                                     variant)
        else:
            terms["cons_csa"] = terms["cons_decoder"] = zero
        if self.cfg.lambda_d != 0:
            with torch.no_grad():
                real_img_pred = image_D(image)
                real_feat_pred = feature_D(real["pool3"])
            fake = out.refined.detach() if self.official else out.refined  # official: VGG of fake_B.data
            fake_pool3 = self._vgg(fake, ("pool3",))["pool3"]
            terms["g_image"] = ralsgan_g(real_img_pred, image_D(out.refined))
            terms["g_feature"] = ralsgan_g(real_feat_pred, feature_D(fake_pool3))
        else:
            terms["g_image"] = terms["g_feature"] = zero
        if self.cfg.tv_weight:
            terms["tv"] = border_tv_loss(out.refined * mask + image * (1 - mask), mask)
        if self.official:
            # Official: Variable(loss.data, requires_grad=True) -- a value without a graph.
            terms["cons_csa"] = terms["cons_csa"].detach()
            terms["cons_decoder"] = terms["cons_decoder"].detach()
        return terms

    def generator(self, out, image: Tensor, mask: Tensor, image_D: nn.Module,
                  feature_D: nn.Module, self_target: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Weighted generator loss (scalar tensor) and a dict of float logs (terms and ``g_total``)."""
        t = self.generator_terms(out, image, mask, image_D, feature_D, self_target)
        c = self.cfg
        total = (c.lambda_r * (t["l1_coarse"] + t["l1_refined"])
                 + c.lambda_c * (t["cons_csa"] + t["cons_decoder"])
                 + c.lambda_d * (t["g_image"] + t["g_feature"]))
        if "tv" in t:
            total = total + c.tv_weight * t["tv"]
        logs = {k: float(v.detach()) for k, v in t.items()}
        logs["g_total"] = float(total.detach())
        return total, logs

    def discriminator(self, out, image: Tensor, image_D: nn.Module,
                      feature_D: nn.Module) -> tuple[Tensor, dict[str, float]]:
        """``0.5 RaLSGAN_D(image D) + 0.5 RaLSGAN_D(feature D)`` on the detached refined output."""
        fake = out.refined.detach()
        with torch.no_grad():
            real_pool3 = self._vgg(image, ("pool3",))["pool3"]
            fake_pool3 = self._vgg(fake, ("pool3",))["pool3"]
        d_image = ralsgan_d(image_D(image), image_D(fake))
        d_feature = ralsgan_d(feature_D(real_pool3), feature_D(fake_pool3))
        total = 0.5 * d_image + 0.5 * d_feature
        return total, {"d_image": float(d_image.detach()), "d_feature": float(d_feature.detach()),
                       "d_total": float(total.detach())}
