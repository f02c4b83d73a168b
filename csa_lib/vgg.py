"""Frozen VGG16 feature taps for the consistency loss and the feature discriminator.

CSA uses an ImageNet VGG16 twice (docs/method.md, "Losses"):

- ``relu4_3`` (512 channels at 1/8 resolution) of the ground truth is the *target* of the consistency loss;
- ``pool3`` (256 channels at 1/8 resolution) feeds the feature patch discriminator. The official code
  calls this tap ``relu3_3``, but its slice ends with the third max-pool (``features[16]``), so it is
  really pool3: 256 x 32 x 32 for a 256 image.

Only blocks 1-4 (``features.0`` .. ``features.22``, torchvision numbering) are needed, so this module
builds just that part and loads weights into it.

Where the weights come from (the ``weights`` / ``spec`` string):

==============================  ===============================================================
``"torchvision"``               ``VGG16_Weights.IMAGENET1K_V1`` through torchvision's cache; downloads
                                once when the machine has internet, else :class:`VGGWeightsUnavailable`.
``"PATH"``, ``"PATH:torchvision"``  a local state dict in torchvision's input convention.
``"PATH:caffe"``                a local state dict in the Caffe convention (RGB 0..255 minus the mean
                                ``[123.68, 116.779, 103.939]``, no std), e.g. the team's shared file.
``"none"``                      random weights (seeded), for smoke runs only; warns loudly.
``"auto"``                      torchvision cache if present, else ``$CSA_VGG_WEIGHTS`` (same syntax),
                                else the shared Caffe file beside the repository, else ``"none"``.
==============================  ===============================================================

Difference from the official code: it feeds the [-1, 1] images to torchvision's VGG *without* the
ImageNet normalisation. Here every input goes through the preprocessing that matches the weights.
"""
from __future__ import annotations

import os
import urllib.error
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import SHARED_ROOT
from .runfiles import sha256_file

#: The team's shared Caffe-convention weights (blocks 1-4, float16); used by ``"auto"`` when present.
SHARED_VGG_FILE = SHARED_ROOT / "weights" / "vgg16_caffe_rgb_conv1-4_fp16.pth"

# Blocks 1-4 of VGG16 in torchvision's layer numbering: "M" is a 2x2 max-pool.
_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
_TAPS = {"pool3": 16, "relu4_3": 22}  # index of the layer whose output is the tap

# Input conventions. torchvision: pixels in 0..1, minus mean, divided by std.
# Caffe (the original VGG release): RGB pixels in 0..255 minus the mean, no std.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN = (123.68, 116.779, 103.939)
CONVENTIONS = ("torchvision", "caffe")


class VGGWeightsUnavailable(RuntimeError):
    """The requested VGG16 weights cannot be found locally nor downloaded."""


class VGGWeights(NamedTuple):
    """What :func:`load_vgg16` resolved: the state dict (``None`` = random), its convention, and where
    it came from (a human-readable line for logs)."""

    state_dict: dict[str, Tensor] | None
    convention: str
    source: str


def _torchvision_weights():
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1


def torchvision_cache_file() -> Path:
    """Where torchvision keeps ``vgg16-397923af.pth`` (it may not exist)."""
    url = _torchvision_weights().url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download_torchvision_state_dict() -> dict[str, Tensor]:
    """torchvision's weights: its cache file, or downloaded once into the cache (needs internet).

    torchvision's own ``get_state_dict`` unpickles with ``weights_only=False``, so a crafted file in the
    cache would run code. Here the file is checked against the SHA-256 prefix in its name
    (``vgg16-397923af.pth``: the hash starts with ``397923af``) and loaded with ``weights_only=True``.
    """
    cache = torchvision_cache_file()
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(_torchvision_weights().url, str(cache),
                                       hash_prefix=torchvision_hash_prefix(cache), progress=True)
    return read_torchvision_cache(cache)


def torchvision_hash_prefix(path: str | Path) -> str | None:
    """The SHA-256 prefix that torchvision's weight file names carry: ``vgg16-397923af.pth`` -> ``397923af``
    (None for a name without one). ``torch.hub.download_url_to_file`` and :func:`read_torchvision_cache`
    check a file against it; ``csa weights`` uses it for the Inception-v3 file as well."""
    stem = Path(path).name.split(".")[0]
    prefix = stem.rpartition("-")[2]
    return prefix if len(prefix) >= 8 and all(c in "0123456789abcdef" for c in prefix) else None


def read_torchvision_cache(path: str | Path) -> dict[str, Tensor]:
    """A torchvision weights file, after checking the SHA-256 prefix in its name; ``weights_only=True``.

    Raises ``ValueError`` naming the file when the hash does not match or the file is not a plain state
    dict (nothing in the file is executed either way).
    """
    path = Path(path)
    want = torchvision_hash_prefix(path)
    if want is not None:
        digest = sha256_file(path)
        if not digest.startswith(want):
            raise ValueError(f"{path}: SHA-256 {digest[:8]}... does not match the {want} in its name; "
                             "not torchvision's file (delete it and let torchvision fetch it again)")
    return _load_state_dict_file(path)


def _load_state_dict_file(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` of a state-dict file; every failure names the file."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read VGG16 weights from {path}: {' '.join(str(e).split())[:300]}") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (dict of tensors), got {type(sd).__name__}")
    return sd


_HOW_TO_PROVIDE = (
    "Provide VGG16 weights in one of these ways:\n"
    "  * a local file: weights spec 'PATH:torchvision' (torchvision's vgg16-397923af.pth) or "
    "'PATH:caffe' (Caffe convention, e.g. ../shared/weights/vgg16_caffe_rgb_conv1-4_fp16.pth);\n"
    "  * the environment variable CSA_VGG_WEIGHTS with the same syntax, used by the spec 'auto';\n"
    "  * run once on a machine with internet so torchvision caches the file (then copy "
    "{cache} to this machine);\n"
    "  * for smoke runs only: the spec 'none' (random weights, meaningless features)."
)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"PATH[:caffe|:torchvision]"`` into (path, convention); no suffix means torchvision."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in CONVENTIONS:
        return head, tail
    if "caffe" in Path(spec).name.lower():
        warnings.warn(f"VGG weights {spec!r}: the name says 'caffe' but no ':caffe' suffix was given; "
                      "loading it in torchvision's convention. Append ':caffe' if that is wrong.",
                      stacklevel=3)
    return spec, "torchvision"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Blocks 1-4 conv weights from a state-dict file, as float32 with torchvision key names.

    Accepts torchvision's full VGG16 file (classifier keys are ignored) or a file with only
    ``features.0`` .. ``features.21``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file not found: {path}")
    raw = _load_state_dict_file(path)
    needed = [f"features.{i}.{p}" for i in _CONV_INDICES for p in ("weight", "bias")]
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a VGG16 state dict, missing keys {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}")
    return {k: raw[k].float() for k in needed}


def load_vgg16(spec: str = "auto") -> VGGWeights:
    """Resolve a weights spec (see the module docstring) into a :class:`VGGWeights`.

    Raises :class:`VGGWeightsUnavailable` for ``"torchvision"`` when the file is neither cached nor
    downloadable, and ``FileNotFoundError`` / ``ValueError`` naming the file for a bad path.
    """
    if spec == "none":
        warnings.warn("VGG16 with RANDOM weights (spec 'none'): the consistency loss and the feature "
                      "discriminator see meaningless features. Use this for smoke runs only.",
                      stacklevel=2)
        return VGGWeights(None, "torchvision", "random (spec 'none')")
    if spec == "torchvision":
        cache = torchvision_cache_file()
        try:
            sd = _download_torchvision_state_dict()
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise VGGWeightsUnavailable(
                f"torchvision's VGG16 weights are not cached at {cache} and could not be downloaded "
                f"({type(e).__name__}: {e}).\n" + _HOW_TO_PROVIDE.format(cache=cache)) from e
        return VGGWeights({k: v.float() for k, v in sd.items() if k.startswith("features.")
                           and int(k.split(".")[1]) <= 21}, "torchvision", f"torchvision ({cache})")
    if spec == "auto":
        return _auto()
    path, convention = parse_spec(spec)
    return VGGWeights(read_state_dict(path), convention, f"{path} ({convention} convention)")


def _auto() -> VGGWeights:
    if torchvision_cache_file().is_file():
        return load_vgg16("torchvision")
    env = os.environ.get("CSA_VGG_WEIGHTS")
    if env:
        return load_vgg16(env)
    if SHARED_VGG_FILE.is_file():
        return load_vgg16(f"{SHARED_VGG_FILE}:caffe")
    warnings.warn("no VGG16 weights found (no torchvision cache, no $CSA_VGG_WEIGHTS, no shared file): "
                  "falling back to RANDOM weights.\n" + _HOW_TO_PROVIDE.format(cache=torchvision_cache_file()),
                  stacklevel=3)
    return VGGWeights(None, "torchvision", "random (spec 'auto' found no weights)")


def _build_features() -> nn.Sequential:
    """VGG16 ``features[0:23]`` (conv1_1 .. relu4_3) with torchvision's indices."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


def _random_init(features: nn.Sequential, seed: int = 0) -> None:
    # Seeded so that smoke runs and notebooks are reproducible even with random weights.
    g = torch.Generator().manual_seed(seed)
    for m in features:
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
                m.bias.zero_()


def caffe_to_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold the Caffe preprocessing into conv1_1 so the weights expect torchvision's input.

    Caffe's conv1 sees ``x_c = 255 v - m`` (v = pixel in 0..1); torchvision feeds ``u = (v - mu) / s``.
    Since ``x_c = 255 s u + (255 mu - m)``, scale the input channels of the weight by ``255 s`` and
    add ``W * (255 mu - m)`` summed over the kernel to the bias. Exact in the image interior; at the
    border, zero padding stands for a slightly different colour in the two conventions (m/255 vs mu,
    at most 0.004 apart), so features near the border differ a little.
    """
    out = dict(state_dict)
    w, b = state_dict["features.0.weight"].double(), state_dict["features.0.bias"].double()
    s = torch.tensor(TORCHVISION_STD, dtype=torch.float64)
    offset = 255 * torch.tensor(TORCHVISION_MEAN, dtype=torch.float64) - torch.tensor(CAFFE_MEAN, dtype=torch.float64)
    out["features.0.weight"] = (w * (255 * s).view(1, 3, 1, 1)).float()
    out["features.0.bias"] = (b + (w * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))).float()
    return out


def preprocess(img: Tensor, convention: str) -> Tensor:
    """[-1, 1] RGB images ``[B,3,H,W]`` -> the input the weights of ``convention`` expect."""
    v = (img + 1) / 2  # 0..1
    if convention == "torchvision":
        mean = img.new_tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)
        std = img.new_tensor(TORCHVISION_STD).view(1, 3, 1, 1)
        return (v - mean) / std
    if convention == "caffe":
        return 255 * v - img.new_tensor(CAFFE_MEAN).view(1, 3, 1, 1)
    raise ValueError(f"unknown VGG input convention {convention!r}; choose one of {CONVENTIONS}")


class VGG16Features(nn.Module):
    """Frozen VGG16 blocks 1-4 that returns the ``pool3`` and ``relu4_3`` taps.

    ``forward(img)``: ``img`` ``[B,3,H,W]`` in [-1, 1] (H, W multiples of 8) ->
    ``{"pool3": [B,256,H/8,W/8], "relu4_3": [B,512,H/8,W/8]}`` (only the taps asked for).
    Parameters never require grad and the module stays in eval mode, but gradients do flow to
    ``img`` (the feature discriminator's generator term needs them).
    """

    def __init__(self, weights: str | VGGWeights = "auto"):
        super().__init__()
        resolved = weights if isinstance(weights, VGGWeights) else load_vgg16(weights)
        if resolved.convention not in CONVENTIONS:
            raise ValueError(f"unknown VGG input convention {resolved.convention!r}")
        self.features = _build_features()
        if resolved.state_dict is None:
            _random_init(self.features)
        else:
            self.load_state_dict(resolved.state_dict, strict=True)
        self.convention = resolved.convention
        self.source = resolved.source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        # Always eval: this network is a fixed feature extractor.
        return super().train(False)

    def forward(self, img: Tensor, taps: tuple[str, ...] = ("pool3", "relu4_3"),
                raw: bool = False) -> dict[str, Tensor]:
        """``raw=True`` skips the preprocessing: the [-1, 1] image goes in as it is (the official code's
        convention, used by ``LossConfig.mode="official"``)."""
        unknown = set(taps) - set(_TAPS)
        if unknown:
            raise ValueError(f"unknown VGG taps {sorted(unknown)}; available: {sorted(_TAPS)}")
        last = max(_TAPS[t] for t in taps)
        wanted = {_TAPS[t]: t for t in taps}
        h = img.float() if raw else preprocess(img.float(), self.convention)
        out = {}
        for i, layer in enumerate(self.features[: last + 1]):
            h = layer(h)
            if i in wanted:
                out[wanted[i]] = h
        return out

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}, source={self.source!r}"
