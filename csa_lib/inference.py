"""Inpaint your own photos: load a model, fill a hole, get a picture back.

    >>> from PIL import Image
    >>> from csa_lib.inference import load_model, inpaint, generate_mask
    >>> model = load_model("celeba64")                      # a shipped model, or a checkpoint path
    >>> photo = Image.open("face.jpg")                      # doctest: +SKIP
    >>> mask = generate_mask("center", photo.height, photo.width, model)   # or your own mask
    >>> filled = inpaint(model, photo, mask)                # a PIL image, photo.size, RGB
    >>> filled, details = model(photo, mask, return_details=True)   # + the attention record

This is the one place where a photo of any size meets a network trained at one size; the ``csa
inpaint`` command, notebook 09 and ``make demo`` all call it. What it does, and promises:

- **Inputs** (validated; a wrong one is a ``ValueError`` with one sentence naming it): the image as a
  PIL image (any mode; converted to RGB), a numpy array ``[H, W, 3]`` or ``[H, W]`` (uint8 0..255, or
  float 0..1) or a tensor ``[3, H, W]`` / ``[1, 3, H, W]`` (float in [-1, 1], the library's convention,
  or uint8 0..255); the mask as a PIL image, array or tensor of the image's size, one channel,
  **white / 1 / True = hole**: 8-bit masks are thresholded (> 127 = hole, so anti-aliased and JPEG
  masks work; a mask of only 0 and 1 means 1 = hole), float masks must lie in [0, 1] (> 0.5 = hole).
  Files: :func:`read_image`, :func:`read_mask` (EXIF orientation applied, as a photo viewer shows it).
- **The model's view** (its card's ``preprocessing``, like torchvision's ``weights.transforms()``): the
  square centre crop for ``resize="center_crop"`` (vertically at ``crop_top`` of the spare rows), or
  the whole image stretched for ``"square"``, resized to the training size ``S`` (the shipped face
  model: 64 px). The fill is computed at ``S x S`` and resized back to the crop, so a crop much larger
  than ``S`` gets a soft fill (a warning above :data:`MAX_UPSCALE` times).
- **Output**: an RGB PIL image of the input's size in which only hole pixels changed: known pixels are
  the input's 8-bit values, bit for bit (float inputs are rounded to 8 bits first).
- Expected conditions (an empty hole, a hole covering everything or most of the image, faint strokes in
  a mask, a large upscale) are ``warnings.warn`` with one sentence; ``csa`` prints them as
  ``csa: warning: ...``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .runfiles import load_checkpoint

#: The smallest image side :func:`inpaint` takes (a hole needs pixels around it to be filled from).
MIN_SIDE = 8

#: Above this ratio of crop side to network side the fill is visibly soft: :func:`inpaint` warns.
MAX_UPSCALE = 4.0

#: A hole covering more than this fraction of the image is probably an inverted mask: warned.
LARGE_HOLE = 0.7


# --------------------------------------------------------------------------------------------------
# The model and its pre-processing
# --------------------------------------------------------------------------------------------------
@dataclass
class InpaintModel:
    """A generator in eval mode with the pre-processing it was trained with: what :func:`inpaint` needs.

    ``preprocessing``: ``{"image_size": S, "resize": "center_crop" | "square", "crop_top": float | None}``
    (a model card's, or :func:`checkpoint_preprocessing`); ``card``: the shipped model's card, else None.
    Calling it is :func:`inpaint`: ``model(image, mask)``.
    """

    generator: torch.nn.Module
    preprocessing: dict
    description: str = "a generator"
    card: dict | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    def __call__(self, image, mask, return_details: bool = False, border_blend: bool = False):
        return inpaint(self, image, mask, return_details=return_details, border_blend=border_blend)


def checkpoint_preprocessing(preset) -> dict:
    """The pre-processing a checkpoint's generator was trained with, as in a model card."""
    return {"image_size": preset.data.image_size, "resize": preset.data.resize, "crop_top": preset.data.crop_top}


def _as_preprocessing(model_or_pre) -> dict:
    """An :class:`InpaintModel`, a preprocessing dict or a training size (int, whole image stretched)."""
    if isinstance(model_or_pre, InpaintModel):
        return model_or_pre.preprocessing
    if isinstance(model_or_pre, int):
        return {"image_size": model_or_pre, "resize": "square"}
    return model_or_pre


def load_model(source: str | Path = "celeba64", device: str | torch.device = "cpu") -> InpaintModel:
    """A shipped model by name (``"celeba64"``, see :func:`csa_lib.pretrained.list_pretrained`) or a
    training checkpoint (a file or a run folder; a ``Path`` is always a checkpoint), in eval mode.

    Raises ``FileNotFoundError`` (no such checkpoint, or a shipped model's files missing) or
    ``ValueError`` (corrupt or unusable weights, NaN weights), each one sentence naming the file.
    """
    from .pretrained import PRETRAINED, PretrainedError, load_pretrained

    if isinstance(source, str) and source in PRETRAINED:
        try:
            generator = load_pretrained(source, device=device)
        except FileNotFoundError:
            raise
        except PretrainedError as e:
            raise ValueError(str(e)) from None
        check_finite_weights(generator, f"shipped model {source}")
        return InpaintModel(generator, dict(generator.card["preprocessing"]),
                            f"shipped model {source} ({generator.card.get('file')})", generator.card)
    path = Path(source)
    if not path.exists():
        known = ", ".join(sorted(PRETRAINED))
        raise FileNotFoundError(f"checkpoint {path}: no such file" +
                                ("" if isinstance(source, Path) else f" (nor a shipped model name: {known})"))
    from .train import load_generator

    generator, preset = load_generator(path, device=device)
    check_finite_weights(generator, f"checkpoint {path}")
    step = int(load_checkpoint(path)["step"])
    return InpaintModel(generator, checkpoint_preprocessing(preset), f"checkpoint {path} ({preset.name}, step {step})")


def check_finite_weights(generator: torch.nn.Module, what: str) -> None:
    """``ValueError`` naming the first parameter or buffer that holds a NaN or Inf: such a model turns
    whole images, known pixels included, into NaN."""
    for name, t in [*generator.named_parameters(), *generator.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what} holds non-finite weights (NaN or Inf in {name}); it cannot inpaint; "
                             "use an earlier checkpoint (e.g. checkpoints/prev.pt)")


def crop_box(height: int, width: int, preprocessing) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: the part of an ``height x width`` image the network sees, by the model's
    pre-processing (as ``data.prepare_image`` crops training images): the whole image for
    ``resize="square"``, the square of the short side for ``"center_crop"`` (centred horizontally, at
    ``crop_top`` of the spare rows vertically, 0.5 when None)."""
    pre = _as_preprocessing(preprocessing)
    if pre.get("resize", "square") == "square":
        return 0, 0, height, width
    s = min(height, width)
    crop_top = pre.get("crop_top")
    return round((0.5 if crop_top is None else crop_top) * (height - s)), (width - s) // 2, s, s


def upscale_factor(height: int, width: int, preprocessing) -> float:
    """How many times the fill, computed at the network's size, is enlarged to the image's crop."""
    pre = _as_preprocessing(preprocessing)
    _, _, h, w = crop_box(height, width, pre)
    return max(h, w) / int(pre["image_size"])


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def generate_mask(kind: str, height: int, width: int, preprocessing, seed: int = 0) -> torch.Tensor:
    """A generated hole ``[1, H, W]`` (float, 1 = hole) inside the part the network sees
    (:func:`crop_box`): ``"center"`` (the official centre square, 120/256 of the side) or
    ``"irregular"`` (free-form strokes, hole ratio 10-60 %, a pure function of ``seed``).

    ``preprocessing``: an :class:`InpaintModel`, its ``preprocessing`` dict, or a training size (int).
    """
    from .masks import center_mask, irregular_mask

    if kind not in ("center", "irregular"):
        raise ValueError(f"mask kind {kind!r}: expected 'center' or 'irregular'")
    top, left, h, w = crop_box(height, width, preprocessing)
    inner = center_mask((h, w)) if kind == "center" else irregular_mask((h, w), generator=seed)
    mask = torch.zeros(1, height, width)
    mask[:, top:top + h, left:left + w] = inner
    return mask


def mask_to_pil(mask) -> Image.Image:
    """A hole mask (``[1, H, W]`` / ``[H, W]`` tensor or array, 1 = hole) as a greyscale PIL image,
    white (255) = hole, black = known: what :func:`read_mask` reads back unchanged."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[0] != 1):
        raise ValueError(f"mask must be [1, H, W] or [H, W], got shape {arr.shape}")
    return Image.fromarray(np.where(arr.reshape(arr.shape[-2:]) > 0.5, 255, 0).astype(np.uint8), "L")


def _threshold(raw: np.ndarray, what: str = "mask") -> np.ndarray:
    """bool ``[H, W]`` from an 8-bit greyscale mask (> 127 = hole; only 0 and 1: 1 = hole), warning about
    faint strokes."""
    hole = raw > 0 if raw.max(initial=0) == 1 else raw > 127
    faint = int(((raw > 32) & (raw <= 127)).sum())
    if faint > int(hole.sum()):  # red strokes on black are grey 76: drawn, but known by the rule
        warnings.warn(f"{what}: {faint} pixels are drawn at a grey value <= 127 (coloured strokes?) and "
                      "count as known; only pixels > 127 are holes, so draw holes in white", stacklevel=3)
    return hole


def _mask_array(mask, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """bool ``[H, W]`` (True = hole) from a PIL image, numpy array or tensor of the image's ``size``."""
    H, W = size
    if isinstance(mask, Image.Image):
        if mask.size != (W, H):
            raise ValueError(f"size mismatch: the image is {W}x{H} but the {what} is {mask.size[0]}x{mask.size[1]} "
                             "(width x height)")
        from .data import to_8bit

        return _threshold(np.asarray(to_8bit(mask).convert("L")), what)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{what} must be a PIL image, a numpy array or a tensor, got {type(mask).__name__}")
    arr = mask
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    elif arr.ndim == 4 and arr.shape[:2] == (1, 1):
        arr = arr[0, 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must have one channel ([H, W], [1, H, W] or [H, W, 1]), got shape {mask.shape}")
    if arr.shape != (H, W):
        raise ValueError(f"size mismatch: the image is {W}x{H} but the {what} is {arr.shape[1]}x{arr.shape[0]} "
                         "(width x height)")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"{what} values span [{arr.min()}, {arr.max()}]: expected 0..255 (white = hole) or 0/1")
        return _threshold(arr.astype(np.uint8), what)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be bool, integer or float, got dtype {arr.dtype}")
    lo, hi = float(np.nanmin(arr)) if arr.size else 0.0, float(np.nanmax(arr)) if arr.size else 0.0
    if np.isnan(arr).any() or lo < 0 or hi > 1:
        hint = ": a 0..255 mask? pass it as uint8, or use mask > 127" if hi > 1.5 else ""
        raise ValueError(f"{what} values span [{lo:.4g}, {hi:.4g}] (or hold NaN): a float mask must lie in "
                         f"[0, 1], 1 = hole{hint}")
    return arr > 0.5


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def _image_array(image) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB pixels from a PIL image, numpy array or tensor (conventions: module doc)."""
    if isinstance(image, Image.Image):
        from .data import to_8bit

        return np.asarray(to_8bit(image).convert("RGB"))
    if isinstance(image, torch.Tensor):
        return _tensor_pixels(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    arr = image
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # greyscale photo
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = " (channels first? numpy images are [H, W, 3])" if arr.ndim == 3 and arr.shape[0] == 3 else ""
        raise ValueError(f"image array must be [H, W, 3] RGB or [H, W] grey, got shape {image.shape}{hint}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image array must be uint8 (0..255) or float (0..1), got dtype {arr.dtype}")
    lo, hi = float(arr.min()), float(arr.max())
    if not (0 <= lo and hi <= 1):  # also NaN
        hint = ": 0..255 values? pass them as uint8" if hi > 1.5 else ""
        raise ValueError(f"float image values span [{lo:.4g}, {hi:.4g}], expected [0, 1]{hint}")
    return np.rint(arr * 255).astype(np.uint8)


def _tensor_pixels(image: torch.Tensor) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a tensor ``[3, H, W]`` / ``[1, 3, H, W]``: float in [-1, 1] or uint8."""
    x = image.detach().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        hint = " (channels last? tensors are [3, H, W])" if x.dim() == 3 and x.shape[-1] == 3 else ""
        raise ValueError(f"image tensor must be [3, H, W] or [1, 3, H, W], got shape {tuple(image.shape)}{hint}")
    if x.dtype == torch.uint8:
        return x.permute(1, 2, 0).contiguous().numpy()
    if not x.is_floating_point():
        raise ValueError(f"image tensor must be float in [-1, 1] or uint8, got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if not (-1 - 1e-3 <= lo and hi <= 1 + 1e-3):  # also NaN
        hint = ": 0..255 values? use image / 127.5 - 1" if lo >= 0 and hi > 1.5 else ""
        raise ValueError(f"image tensor values span [{lo:.4g}, {hi:.4g}], expected [-1, 1]{hint}")
    return to_pixels(x)


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] -> uint8 ``[H, W, 3]`` (rounded, clamped)."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] -> RGB PIL image."""
    return Image.fromarray(to_pixels(image), "RGB")


def _pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in [-1, 1] (as ``data.to_tensor``)."""
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def read_image(path) -> Image.Image:
    """An image file as an RGB PIL image, EXIF orientation applied (as a photo viewer shows it); a
    missing or unreadable file is ``FileNotFoundError`` / ``OSError`` naming it."""
    from .data import load_image

    return load_image(path)


def read_mask(path, size: tuple[int, int]) -> torch.Tensor:
    """``[1, H, W]`` float mask (1 = hole) from a file (thresholded, see the module doc) for an image of ``size``
    ``(H, W)``. A mask of another size but the same aspect ratio (within 1 %) is resized (nearest); any
    other size is a ``ValueError`` naming both sizes. EXIF orientation is applied."""
    from .data import load_image

    grey = load_image(path, mode="L", what="mask")
    H, W = size
    if grey.size != (W, H):
        if abs(grey.size[0] * H - grey.size[1] * W) > 0.01 * W * H:
            raise ValueError(f"size mismatch: the image is {W}x{H} but mask {path} is "
                             f"{grey.size[0]}x{grey.size[1]} (width x height)")
        grey = grey.resize((W, H), Image.NEAREST)
    hole = _threshold(np.asarray(grey), f"mask {path}")
    return torch.from_numpy(hole.astype(np.float32))[None]


def read_image_and_mask(image_path, mask_path) -> tuple[Image.Image, torch.Tensor]:
    """``(RGB PIL image, mask [1, H, W] in {0, 1})`` from two files (see :func:`read_mask`)."""
    image = read_image(image_path)
    return image, read_mask(mask_path, (image.height, image.width))


# --------------------------------------------------------------------------------------------------
# Inpainting
# --------------------------------------------------------------------------------------------------
@dataclass
class InpaintDetails:
    """What happened inside :func:`inpaint`, at the network's resolution ``S`` (tensors on the CPU).

    box: ``(top, left, h, w)`` of the crop the network saw; upscale: crop side / ``S``;
    network_image ``[3,S,S]`` in [-1,1] and network_mask ``[1,S,S]`` (1 = hole): its input;
    coarse, refined ``[3,S,S]``: its two raw outputs; attention: the CSA layer's record
    (``csa_lib.csa.CSAAttention``, see ``csa_lib.viz``), None for generators without one.
    """

    box: tuple[int, int, int, int]
    upscale: float
    network_image: torch.Tensor
    network_mask: torch.Tensor
    coarse: torch.Tensor | None
    refined: torch.Tensor
    attention: Any = None


def _check_hole(hole: torch.Tensor, image_size: tuple[int, int]) -> bool:
    """Warn about a hole that is empty, total or very large; returns whether there is anything to fill."""
    H, W = image_size
    if min(H, W) < MIN_SIDE:
        raise ValueError(f"the image is {W}x{H} px: too small to inpaint (each side needs at least {MIN_SIDE} px)")
    ratio = float(hole.float().mean())
    if ratio == 0:
        warnings.warn("the mask has no hole (no pixel > 127; white = hole): the output is the input unchanged",
                      stacklevel=3)
        return False
    if ratio == 1:
        warnings.warn("the mask covers the whole image: nothing is known to fill it from, so the output is "
                      "the model's guess", stacklevel=3)
    elif ratio > LARGE_HOLE:
        warnings.warn(f"the mask marks {ratio:.0%} of the image as hole (white / 1 = hole, black / 0 = known): "
                      "if it marks what to keep, invert it", stacklevel=3)
    return True


def inpaint_tensor(generator: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, preprocessing,
                   return_details: bool = False, border_blend: bool = False):
    """Fill the hole of one image of any size with a generator trained at a fixed size (tensors).

    image ``[3, H, W]`` in [-1, 1], mask ``[1, H, W]`` (1 = hole); ``preprocessing``: see
    :func:`crop_box`. The crop the network sees is resized to ``S`` (bilinear, antialiased), the mask
    by "any hole pixel under a network pixel makes it a hole" (area > 0: thin strokes survive the
    downscale), the refined output is resized back (bilinear) and only hole pixels are taken from it.
    Returns ``[3, H, W]`` in [-1, 1] with known pixels bit-exact, and :class:`InpaintDetails` when
    ``return_details``. A hole outside the crop, or a non-finite output, is a ``ValueError``.
    ``border_blend``: mix the network's fill with the biharmonic continuation in the first two hole rings
    at ``S`` px (:func:`csa_lib.baselines.border_blend`; off by default: it is post-processing).
    """
    pre = _as_preprocessing(preprocessing)
    S = int(pre["image_size"])
    H, W = image.shape[-2:]
    top, left, h, w = crop_box(H, W, pre)
    img, hole = image[:, top:top + h, left:left + w], mask[:, top:top + h, left:left + w]
    if float(hole.sum()) < float(mask.sum()):
        raise ValueError(f"the hole reaches outside the {w}x{h} square (left {left}, top {top}) that this "
                         "model sees; crop the photo around the face first, or move the hole")
    factor = max(h, w) / S
    if factor > MAX_UPSCALE:
        warnings.warn(f"the fill is computed at {S}x{S} px and upscaled {factor:.1f}x to this {w}x{h} crop, so "
                      f"it will look soft; downscale the photo to about {round(MAX_UPSCALE * S)} px on its short "
                      "side, or crop it closer around the face, for a sharper fill", stacklevel=2)
    x = F.interpolate(img[None], size=(S, S), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    m = (F.interpolate(hole[None].float(), size=(S, S), mode="area") > 0).float()
    device = next(generator.parameters()).device
    kwargs = {"return_attention": True} if return_details else {}
    with torch.no_grad(), warnings.catch_warnings():
        # The range was checked above; a bright crop is no sign of 0..1 pixels here.
        warnings.filterwarnings("ignore", message="image values are all in")
        out = generator(x.to(device), m.to(device), **kwargs)
    refined = out.refined.float().cpu()
    if not torch.isfinite(refined).all():
        raise ValueError("the model's output is not finite (NaN or Inf): its weights or this image break it")
    fill = refined
    if border_blend:
        from .baselines import border_blend as blend

        fill = blend(refined, x, m)
    back = F.interpolate(fill, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(-1, 1)
    result = image.clone()
    result[:, top:top + h, left:left + w] = torch.where(hole > 0, back, img)  # known pixels: the input's
    if not return_details:
        return result
    coarse = getattr(out, "coarse", None)
    return result, InpaintDetails((top, left, h, w), factor, x[0], m[0],
                                  None if coarse is None else coarse[0].float().cpu(), refined[0],
                                  getattr(out, "attention", None))


def inpaint(model: InpaintModel, image, mask, return_details: bool = False, border_blend: bool = False):
    """Fill the hole of ``image`` with ``model``: an RGB PIL image of the input's size.

    ``image``: PIL image, numpy array ``[H, W, 3]`` / ``[H, W]`` (uint8, or float in [0, 1]) or tensor
    ``[3, H, W]`` (float in [-1, 1], or uint8); ``mask``: PIL image, array or tensor of the same
    ``H x W``, one channel, white / 1 / True = hole (8-bit masks thresholded at 127). Only hole
    pixels change; known pixels keep the input's 8-bit values exactly. With ``return_details`` returns
    ``(image, InpaintDetails)``; ``details.attention`` is the CSA layer's attention record.
    ``border_blend``: see :func:`inpaint_tensor` (the named post-processing of the hole's first two rings).

    Raises ``ValueError`` (one sentence) for inputs it cannot use; warns (one sentence) about an empty,
    total or very large hole and about a fill upscaled more than :data:`MAX_UPSCALE` times.
    """
    if not isinstance(model, InpaintModel):
        raise ValueError(f"model must be an InpaintModel (csa_lib.inference.load_model), got {type(model).__name__}")
    pixels = _image_array(image)
    H, W = pixels.shape[:2]
    hole = torch.from_numpy(_mask_array(mask, (H, W)))
    if not _check_hole(hole, (H, W)):
        return (Image.fromarray(pixels, "RGB"), None) if return_details else Image.fromarray(pixels, "RGB")
    out = inpaint_tensor(model.generator, _pixels_to_tensor(pixels), hole[None].float(), model.preprocessing,
                         return_details=return_details, border_blend=border_blend)
    result, details = out if return_details else (out, None)
    filled = pixels.copy()
    filled[hole.numpy()] = to_pixels(result)[hole.numpy()]  # known pixels: the input's bytes, untouched
    return (Image.fromarray(filled, "RGB"), details) if return_details else Image.fromarray(filled, "RGB")
