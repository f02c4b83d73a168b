"""The CSA generator (coarse U-Net + refinement U-Net with the CSA layer) and the two discriminators.

Layer sizes follow the official code (KumapowerLIU/CSA-inpainting, ``models/networks.py``) at the paper
setting (256 px, ``base_channels=64``); ``image_size`` and ``base_channels`` shrink the same design for
CPU runs. Shapes below use ``S`` = image size, ``C`` = base channels, ``n = log2(S)``.

- :class:`CoarseNet`: pix2pix U-Net with ``n`` levels of 4x4 stride-2 convs so the bottleneck is 1x1
  (8 levels at 256), channels ``C, 2C, 4C, 8C, 8C, ...``; Tanh output.
- :class:`RefineNet`: U-Net on 6 channels. A 3x3 stem conv at full resolution, then ``n`` levels; every
  level but the innermost is ``LReLU, 4x4/2 conv (dilation 2), IN, LReLU, 3x3 conv, IN``; the 3x3 conv
  doubles the channels on the first three levels (C -> 2C -> 4C -> 8C). The attention layer sits on
  level 3 (1/8 resolution, 8C channels) between the 3x3 conv and its IN, so it sees signed features.
  The output has **no Tanh** (as in the official code): values may leave [-1, 1].
- :class:`BorderHead` (optional, ``ModelConfig.border_head``; not in the paper): a few 3x3 convs at full
  resolution on [refined output, known pixels, mask] whose output is added to the refined output.
- :class:`PatchDiscriminator`: the 70x70 PatchGAN. :class:`FeaturePatchDiscriminator`: three 4x4
  stride-2 convs on VGG16 pool3 features (the frozen VGG lives in the loss, see ``csa_lib.losses``).
- :class:`CSAInpainter`: both generators; per-image masks, any batch size (the official code needs
  batch 1 with one shared mask).

A detail for anyone comparing with the official code: its in-place LeakyReLU at the start of each block
also rewrites the tensor that the block later concatenates as its skip, so the official skip carries
LReLU(x) instead of x. The decoder applies ReLU to the concatenation first and ReLU(LReLU(x)) = ReLU(x),
so the outputs are the same; here the skip is simply x.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import ATTENTIONS, FEATURE_LEVELS, FEATURE_THRESHOLD, ModelConfig, check_choice, check_image_size
from .masks import feature_mask

#: Colour put into the hole before the coarse net, in [-1, 1] units. The official code writes
#: (123, 104, 117)/255 into channels (0, 1, 2): the ImageNet mean (123.68, 116.78, 103.94) with the
#: last two channels swapped (a BGR/RGB slip). Kept as in the official code; it is only a constant.
FILL_OFFICIAL = tuple(2 * v / 255 - 1 for v in (123.0, 104.0, 117.0))


def _levels(image_size: int) -> int:
    check_image_size("image_size", image_size)
    return int(round(math.log2(image_size)))


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Official initialisation: conv weights ~ N(0, 0.02), biases 0 (InstanceNorm keeps 1/0)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not m.weight.is_meta:  # meta: shapes only
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def _norm(c: int) -> nn.InstanceNorm2d:
    # affine=True as in the official get_norm_layer('instance'); no running stats, so every image is
    # normalised by its own statistics in train and eval alike.
    return nn.InstanceNorm2d(c, affine=True)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------
# Coarse network
# ----------------------------------------------------------------------------------------------------
class CoarseNet(nn.Module):
    """pix2pix U-Net: ``forward(image_filled [B,3,S,S] in [-1,1]) -> [B,3,S,S] in (-1, 1)``.

    ``image_filled`` is the image with the hole painted a constant colour (:data:`FILL_OFFICIAL`);
    there is no mask channel, the network has to recognise the hole by its colour.
    """

    def __init__(self, base_channels: int = 64, image_size: int = 256):
        super().__init__()
        n = _levels(image_size)
        ch = [min(base_channels * 2**i, 8 * base_channels) for i in range(n)]
        self.channels = ch
        # Encoder level i maps ch[i-1] -> ch[i] and halves the resolution.
        self.down = nn.ModuleList([nn.Conv2d(3, ch[0], 4, 2, 1)])
        for i in range(1, n):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2), nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1)]
            if i < n - 1:  # no norm on the 1x1 bottleneck (as in pix2pix)
                layers.append(_norm(ch[i]))
            self.down.append(nn.Sequential(*layers))
        # Decoder level i undoes encoder level i; all but the innermost receive [up, skip] (2x channels).
        self.up = nn.ModuleList()
        for i in range(n - 1, 0, -1):
            c_in = ch[i] if i == n - 1 else 2 * ch[i]
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, ch[i - 1], 4, 2, 1),
                                         _norm(ch[i - 1])))
        self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * ch[0], 3, 4, 2, 1), nn.Tanh()))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        x = self.up[0](x)
        for layer in self.up[1:]:
            x = layer(torch.cat([x, skips.pop()], dim=1))
        return x


# ----------------------------------------------------------------------------------------------------
# Refinement network
# ----------------------------------------------------------------------------------------------------
class _Identity(nn.Module):
    """Ablation: no attention at all (the refinement net is then a plain U-Net)."""

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False):
        return (x, None) if return_attention else x


class _ShiftFused(nn.Module):
    """Shift-Net's layer concatenates [x, shifted] (2C channels); a 1x1 conv fuses it back to C so the
    rest of the refinement net is unchanged. (Shift-Net instead widens the following layers.)"""

    def __init__(self, channels: int):
        super().__init__()
        from .peers import ShiftAttention

        self.shift = ShiftAttention()
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False):
        y = self.shift(x, hole, return_attention=return_attention)
        y, att = y if return_attention else (y, None)
        y = self.fuse(y)
        return (y, att) if return_attention else y


def make_attention(kind: str, channels: int, csa_semantics: str = "paper",
                   csa_backward: str = "autograd", contextual_ksize: int = 3) -> nn.Module:
    """The layer at the CSA position: ``forward(x [B,C,h,w], hole bool [B,1,h,w], return_attention)``.

    ``contextual_ksize``: patch size of contextual attention (3 = DeepFill; at a 64-px image's 8x8 grid a
    large hole often leaves no complete known 3x3 window, and the layer is then the identity: use 1)."""
    check_choice("attention", kind, ATTENTIONS)
    if kind == "csa":
        from .csa import CoherentSemanticAttention

        return CoherentSemanticAttention(semantics=csa_semantics, backward=csa_backward)
    if kind == "identity":
        return _Identity()
    if kind == "contextual":
        from .peers import ContextualAttention

        return ContextualAttention(ksize=contextual_ksize)
    return _ShiftFused(channels)  # kind == "shift"


#: Parameter-name prefixes of everything that computes the attention layer's input: the coarse net (the
#: refinement net sees its composite), the stem, and the encoder of the levels down to and including the
#: attention level (its ``down_norm`` comes after the layer). ``train.freeze`` with these keeps the features
#: the CSA search compares fixed (the copy task's round 4, benchmarks/RESULTS.md).
ATTENTION_INPUT_PREFIXES = ("coarse_net.", "refine_net.stem.",
                            *(f"refine_net.levels.{i}.down" for i in range(FEATURE_LEVELS - 1)),
                            f"refine_net.levels.{FEATURE_LEVELS - 1}.down.")


def attention_level(model: nn.Module) -> "_RefineLevel":
    """The refinement level of a :class:`CSAInpainter` that holds the attention layer (``.attention``)."""
    levels = [lvl for lvl in model.refine_net.levels if getattr(lvl, "attention", None) is not None]
    if len(levels) != 1:
        raise ValueError(f"expected one attention layer in generator.refine_net, found {len(levels)}")
    return levels[0]


#: The attention layers without parameters: any of them can replace another in a trained network.
SWAPPABLE_ATTENTIONS = ("csa", "identity", "contextual")


def swap_attention(model: "CSAInpainter", kind: str, contextual_ksize: int | None = None) -> None:
    """Put a fresh attention layer of ``kind`` ("csa" | "identity" | "contextual") in ``model``'s CSA
    position, in place. These three layers have no parameters, so the network's weights and its
    ``state_dict`` stay exactly as they are: what changes is how the 1/8 features are matched. Used by the
    attention curriculum (``train.attention_warmup_steps``: contextual 1x1 first, CSA after) and to score a
    trained network under another attention at inference. ``contextual_ksize`` defaults to the model's.
    ``model.cfg.attention`` is left as built (what a checkpoint of the model records)."""
    check_choice("attention", kind, ATTENTIONS)
    level = attention_level(model)
    if kind not in SWAPPABLE_ATTENTIONS or any(True for _ in level.attention.parameters()):
        raise ValueError(f"swap_attention: only the parameter-free layers (csa, identity, contextual) can be "
                         f"swapped, not {model.refine_net.attention_kind!r} -> {kind!r}")
    cfg = model.cfg
    ksize = cfg.contextual_ksize if contextual_ksize is None else contextual_ksize
    level.attention = make_attention(kind, level.down[-1].out_channels, cfg.csa_semantics, cfg.csa_backward, ksize).to(
        next(model.parameters()).device)
    model.refine_net.attention_kind = kind


class _RefineLevel(nn.Module):
    """One encoder level and its decoder mirror. ``c_in`` -> ``c_out`` channels, resolution halved.

    Encoder: LReLU, 4x4/2 conv dilation 2 (c_in -> c_in), IN, LReLU, 3x3 conv (c_in -> c_out),
    [attention], IN. Decoder (gets [inner output, this level's encoder output], 2*c_out channels):
    ReLU, 3x3 tconv (-> c_in), IN, ReLU, 4x4/2 tconv (c_in -> c_in), IN.
    """

    def __init__(self, c_in: int, c_out: int, attention: nn.Module | None = None):
        super().__init__()
        self.down = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_in, 4, 2, padding=3, dilation=2),
                                  _norm(c_in), nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.attention = attention
        self.down_norm = _norm(c_out)
        self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * c_out, c_in, 3, 1, 1), _norm(c_in),
                                nn.ReLU(), nn.ConvTranspose2d(c_in, c_in, 4, 2, 1), _norm(c_in))


class RefineNet(nn.Module):
    """Refinement U-Net with the attention layer at 1/8 resolution.

    ``forward(x [B,6,S,S], feature_hole bool [B,1,S/8,S/8], return_attention=False)`` returns a dict:
    ``out`` [B,3,S,S] (no Tanh: unbounded, trained towards [-1,1]), ``csa_out`` [B,8C,S/8,S/8] (the
    attention layer's output, signed, before IN), ``decoder_feat`` [B,8C,S/8,S/8] (the decoder feature
    at the same resolution: output of the level below, as the official InnerCos2 taps it) and
    ``attention`` (the layer's attention record, or None).
    """

    def __init__(self, base_channels: int = 64, image_size: int = 256, attention: str = "csa",
                 csa_semantics: str = "paper", csa_backward: str = "autograd", contextual_ksize: int = 3):
        super().__init__()
        n = _levels(image_size)
        if n < FEATURE_LEVELS + 1:
            raise ValueError(f"image_size {image_size} too small for the attention level")
        C = base_channels
        self.attention_kind = attention
        self.stem = nn.Conv2d(6, C, 3, 1, 1)  # full resolution, no norm or activation
        levels, c = [], C
        for i in range(1, n):  # levels 1..n-1; the innermost level n is built below
            c_out = 2 * c if i <= FEATURE_LEVELS else c
            att = (make_attention(attention, c_out, csa_semantics, csa_backward, contextual_ksize)
                   if i == FEATURE_LEVELS else None)
            levels.append(_RefineLevel(c, c_out, att))
            c = c_out
        self.levels = nn.ModuleList(levels)
        # Innermost: LReLU + dilated 4x4/2 conv to 1x1 (no 3x3 conv, no norm), then back up.
        self.inner_down = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(c, c, 4, 2, padding=3, dilation=2))
        self.inner_up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c, c, 4, 2, 1), _norm(c))
        self.head = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * C, 3, 3, 1, 1))  # no Tanh (official)
        init_weights(self)

    def forward(self, x: Tensor, feature_hole: Tensor, return_attention: bool = False) -> dict[str, Any]:
        x = self.stem(x)
        skips, csa_in, csa_out, att = [], None, None, None
        for level in self.levels:
            skips.append(x)  # the level's input is concatenated to its decoder output
            x = level.down(x)
            if level.attention is not None:
                if tuple(feature_hole.shape[-2:]) != tuple(x.shape[-2:]):
                    raise ValueError(f"feature_hole is {tuple(feature_hole.shape)}, the attention level "
                                     f"is {tuple(x.shape)}")
                # fp32 even under autocast (bf16 on CUDA): the argmax search and the chain recurrence
                # need the precision, and the compiled CPU kernels take fp32 only.
                csa_in = x
                with torch.autocast(x.device.type, enabled=False):
                    y = level.attention(x.float(), feature_hole, return_attention=return_attention)
                x, att = y if return_attention else (y, None)
                csa_out = x
            x = level.down_norm(x)
        skips.append(x)
        x = torch.cat([self.inner_up(self.inner_down(x)), skips.pop()], dim=1)
        decoder_feat = None
        for level in reversed(self.levels):
            if level.attention is not None:
                # The first 8C channels entering this level's decoder: the decoder feature at 1/8.
                decoder_feat = x[:, : x.shape[1] // 2]
            x = torch.cat([level.up(x), skips.pop()], dim=1)
        return {"out": self.head(x), "csa_in": csa_in, "csa_out": csa_out, "decoder_feat": decoder_feat,
                "attention": att}


class BorderHead(nn.Module):
    """A full-resolution residual correction of the refined output (``ModelConfig.border_head``).

    ``forward(refined [B,3,S,S], known [B,3,S,S] (hole zeroed), mask [B,1,S,S] 1=hole) -> [B,3,S,S]``,
    ``refined`` plus a correction. Why: in :class:`RefineNet` the only full-resolution path from the
    input to the output is the stem conv, a ReLU and the head conv, and the input carries no mask channel,
    so a pixel one step inside the hole is mostly predicted from 1/2-resolution decoder features. This head
    sees the mask and the known pixels in a window of ``2 * layers + 1`` px (``layers`` 3x3 convs with C
    channels: 7x7 by default, 11x11 in the shipped face model), enough to continue the known neighbours into
    the first rings of the hole. The last conv starts at zero: the head begins as the identity, so it can be
    added to trained weights (``train.init_from``) without changing them. The hidden convs keep PyTorch's
    default initialisation: with the N(0, 0.02) of the rest of the network their features start about 6x
    smaller (std 0.015 vs 0.094 on random inputs), and in 500 fine-tuning steps the head barely moved.
    """

    def __init__(self, channels: int, layers: int = 3):
        super().__init__()
        widths = [7] + [channels] * (layers - 1) + [3]
        convs = [nn.Conv2d(a, b, 3, 1, 1) for a, b in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*[m for conv in convs[:-1] for m in (conv, nn.LeakyReLU(0.2))], convs[-1])
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, refined: Tensor, known: Tensor, mask: Tensor) -> Tensor:
        return refined + self.body(torch.cat([refined, known, mask], dim=1))


#: Parameter-name prefix of the optional :class:`BorderHead` (weights saved without it load with the head at
#: its identity start: ``train.init_generator``).
BORDER_HEAD_PREFIX = "border_head."


# ----------------------------------------------------------------------------------------------------
# Discriminators
# ----------------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN (pix2pix ``n_layers=3``): ``[B,3,S,S]`` -> patch scores ``[B,1,S/8-2,S/8-2]``.

    Raw scores (no sigmoid): the RaLSGAN loss works on them directly.
    """

    def __init__(self, base_channels: int = 64, in_channels: int = 3):
        super().__init__()
        C = base_channels
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, C, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(C, 2 * C, 4, 2, 1), _norm(2 * C), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * C, 4 * C, 4, 2, 1), _norm(4 * C), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * C, 8 * C, 4, 1, 1), _norm(8 * C), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * C, 1, 4, 1, 1))
        init_weights(self)

    def forward(self, img: Tensor) -> Tensor:
        return self.model(img)


class FeaturePatchDiscriminator(nn.Module):
    """Three trainable convs on frozen VGG16 pool3 features ``[B,256,S/8,S/8]`` -> ``[B,8C,s,s]``.

    The frozen VGG is applied outside (by ``csa_lib.losses.InpaintingLoss``), so this module holds only
    trainable weights and checkpoints stay small. As in the official ``PFDiscriminator`` the last conv
    keeps 8C channels: every channel of every cell is a separate patch score, and the middle conv is
    followed by a non-affine InstanceNorm. At 256 px: 32 -> 16 -> 8 -> 4. Small images (pool3 below
    4x4 at some level) switch that conv to 3x3 stride 1 so the output never vanishes (documented
    deviation, only for sizes < 128).
    """

    def __init__(self, in_channels: int = 256, base_channels: int = 64, image_size: int = 256):
        super().__init__()
        c, size, layers = 8 * base_channels, image_size // 8, []
        for k in range(3):
            conv_in = in_channels if k == 0 else c
            if size >= 4:
                layers.append(nn.Conv2d(conv_in, c, 4, 2, 1))
                size //= 2
            else:
                layers.append(nn.Conv2d(conv_in, c, 3, 1, 1))
            if k == 1:
                layers.append(nn.InstanceNorm2d(c))
            if k < 2:
                layers.append(nn.LeakyReLU(0.2))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, feat: Tensor) -> Tensor:
        return self.model(feat)


# ----------------------------------------------------------------------------------------------------
# The whole generator
# ----------------------------------------------------------------------------------------------------
@dataclass
class InpaintOutput:
    """Everything one generator pass produces (shapes for image size S, base channels C).

    coarse, refined: raw outputs [B,3,S,S] (coarse in (-1,1), refined unbounded);
    composite: refined inside the hole, the input outside [B,3,S,S] (what evaluation scores);
    csa_out, decoder_feat: [B,8C,S/8,S/8], the two features the consistency loss compares to VGG;
    feature_hole: bool [B,1,S/8,S/8]; attention: the attention layer's record (CSAAttention for "csa",
    the score/source tensor for "contextual"/"shift") when requested, else None;
    csa_in: [B,8C,S/8,S/8], the attention layer's input (the features its search compares).
    """

    coarse: Tensor
    refined: Tensor
    composite: Tensor
    csa_out: Tensor
    decoder_feat: Tensor
    feature_hole: Tensor
    attention: Any = None
    csa_in: Tensor | None = None


def fill_hole(image: Tensor, mask: Tensor, colour=FILL_OFFICIAL) -> Tensor:
    """Image ``[B,3,H,W]`` with the hole (mask ``[B,1,H,W]``, 1 = hole) painted ``colour``."""
    fill = image.new_tensor(colour).view(1, 3, 1, 1)
    return image * (1 - mask) + fill * mask


#: How far outside [-1, 1] an image (and outside [0, 1] a mask) may reach before ``forward`` refuses it:
#: rounding and bf16, not a wrong scale.
RANGE_TOLERANCE = 1e-3


class CSAInpainter(nn.Module):
    """Coarse net + refinement net, with per-image masks (any batch size).

    ``forward(image [B,3,S,S] in [-1,1], mask [B,1,S,S] float 1=hole, return_attention=False)``
    -> :class:`InpaintOutput`.
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.coarse_net = CoarseNet(cfg.base_channels, cfg.image_size)
        self.refine_net = RefineNet(cfg.base_channels, cfg.image_size, cfg.attention,
                                    cfg.csa_semantics, cfg.csa_backward, cfg.contextual_ksize)
        self.border_head = BorderHead(cfg.base_channels, cfg.border_head_layers) if cfg.border_head else None

    def refine_input(self, image: Tensor, mask: Tensor, coarse: Tensor) -> Tensor:
        """6-channel refinement input: [coarse in the hole + known pixels, image with the hole zeroed].

        The coarse output is detached, as in the official code: the refinement losses do not train the
        coarse net; only its own L1 loss does.
        """
        known = image * (1 - mask)
        return torch.cat([coarse.detach() * mask + known, known], dim=1)

    def check_inputs(self, image: Tensor, mask: Tensor) -> None:
        """``ValueError`` with one sentence when ``forward`` cannot use its inputs.

        ``image``: a float tensor ``[B,3,S,S]`` in [-1, 1] (within :data:`RANGE_TOLERANCE`), ``S`` the
        model's ``image_size`` (square, a multiple of 8), on the model's device and of its dtype (outside
        autocast); ``mask``: ``[B,1,S,S]`` (float, bool or integer) with values in [0, 1], 1 = hole.
        Photos and masks in 0..255 are named as the likely cause; an image with every value in [0, 1]
        (a 0..1 photo, or a very bright one) gets a warning. One device sync (the value ranges).
        """
        if not isinstance(image, Tensor) or not isinstance(mask, Tensor):
            raise ValueError(f"image and mask must be tensors, got {type(image).__name__} and {type(mask).__name__}")
        if not image.is_floating_point():
            raise ValueError(f"image must be a float tensor in [-1, 1], got dtype {image.dtype} "
                             "(8-bit pixels: image.float() / 127.5 - 1)")
        S = self.cfg.image_size
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B,3,H,W] (RGB), got shape {tuple(image.shape)}")
        H, W = image.shape[-2:]
        if H != W or H % 8 or H != S:
            why = "not square" if H != W else "not a multiple of 8" if H % 8 else "another size"
            raise ValueError(f"image is {H}x{W} (height x width, {why}): this model takes {S}x{S} images "
                             "(ModelConfig.image_size)")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0] or mask.shape[-2:] != (H, W):
            raise ValueError(f"mask must be [B,1,H,W] = [{image.shape[0]},1,{H},{W}] like the image, got shape "
                             f"{tuple(mask.shape)}")
        if mask.is_complex():
            raise ValueError(f"mask must be float, bool or integer (1 = hole), got dtype {mask.dtype}")
        if image.shape[0] == 0:
            raise ValueError("image is an empty batch (B = 0)")
        weight = next(self.parameters(), None)
        if weight is not None and (image.device != weight.device or mask.device != weight.device):
            raise ValueError(f"image ({image.device}) and mask ({mask.device}) must be on the model's device "
                             f"({weight.device})")
        if (weight is not None and image.dtype != weight.dtype
                and not torch.is_autocast_enabled(image.device.type)):
            raise ValueError(f"image is {image.dtype} but the model's weights are {weight.dtype}: "
                             f"pass image.to({weight.dtype})")
        lo, hi, mlo, mhi = torch.stack([image.amin(), image.amax(), mask.amin().to(image.dtype),
                                        mask.amax().to(image.dtype)]).float().tolist()
        tol = RANGE_TOLERANCE
        if not (-1 - tol <= lo and hi <= 1 + tol):  # also NaN
            cause = ("they look like 0..255 pixel values: use image / 127.5 - 1" if lo >= -tol and hi > 1.5
                     else "map the image to [-1, 1] (0..1 values: image * 2 - 1)")
            raise ValueError(f"image values span [{lo:.4g}, {hi:.4g}], expected [-1, 1]: {cause}")
        if not (-tol <= mlo and mhi <= 1 + tol):
            cause = ": a 0..255 mask? use (mask > 127).float()" if mhi > 1.5 else ""
            raise ValueError(f"mask values span [{mlo:.4g}, {mhi:.4g}], expected [0, 1] (1 = hole){cause}")
        if lo >= 0 and hi > 0.5:  # every pixel at or above mid-grey: most likely 0..1 values
            warnings.warn(f"image values are all in [0, 1] ([{lo:.3g}, {hi:.3g}]) but CSAInpainter expects [-1, 1]: "
                          "if these are 0..1 pixel values, pass image * 2 - 1", stacklevel=3)

    def forward(self, image: Tensor, mask: Tensor, return_attention: bool = False) -> InpaintOutput:
        self.check_inputs(image, mask)
        mask = mask.to(image.dtype)
        coarse = self.coarse_net(fill_hole(image, mask))
        hole = feature_mask(mask, levels=FEATURE_LEVELS, threshold=FEATURE_THRESHOLD)
        r = self.refine_net(self.refine_input(image, mask, coarse), hole, return_attention)
        refined = r["out"]
        if self.border_head is not None:
            refined = self.border_head(refined, image * (1 - mask), mask)
        composite = refined * mask + image * (1 - mask)
        return InpaintOutput(coarse, refined, composite, r["csa_out"], r["decoder_feat"], hole,
                             r["attention"], csa_in=r["csa_in"])


def build_models(cfg: ModelConfig | None = None) -> tuple[CSAInpainter, PatchDiscriminator,
                                                           FeaturePatchDiscriminator]:
    """(generator, image discriminator, feature discriminator) for ``cfg``, freshly initialised."""
    cfg = cfg or ModelConfig()
    cfg.validate()  # a field assigned directly since the config was built
    return (CSAInpainter(cfg), PatchDiscriminator(cfg.base_channels),
            FeaturePatchDiscriminator(256, cfg.base_channels, cfg.image_size))
