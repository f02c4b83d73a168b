"""Evaluation: L1, L2, PSNR, SSIM, FID and the inpainting evaluation protocol.

Conventions (docs/method.md, "Evaluation"): metrics are computed on the *composited* output (the network's
prediction inside the hole, the known pixels elsewhere) unless asked otherwise, over a fixed split with
fixed masks, optionally per hole-ratio bin ("10-20%", ...). Every table says which output, which masks,
which split and how many images.

All image arguments are float tensors in [-1, 1] of shape ``[B, 3, H, W]``; they are mapped to [0, 1]
(and clamped there, as saving to an 8-bit image would) before any metric, so PSNR uses a data range of 1
and the numbers match ``skimage.metrics`` on [0, 1] images. Per-image values come back with
``reduction="none"`` (shape ``[B]``); ``reduction="mean"`` averages them (a 0-d tensor).
"""
from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .masks import border_distance

METRICS = ("l1", "l2", "psnr", "ssim")


# --------------------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------------------
def to_unit(x: Tensor, clamp: bool = True) -> Tensor:
    """[-1, 1] -> [0, 1] (float32 at least); ``clamp`` cuts overshoot like an 8-bit save would."""
    x = x if x.dtype == torch.float64 else x.float()
    x = (x + 1) / 2
    return x.clamp(0, 1) if clamp else x


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must both be [B, C, H, W] of the same shape; "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


def _reduce(per_image: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def l1(pred: Tensor, target: Tensor, reduction: str = "mean", clamp: bool = True) -> Tensor:
    """Mean absolute error on the [0, 1] scale, per image over all C*H*W values. Inputs [B,C,H,W] in [-1,1]."""
    _check_pair(pred, target)
    err = (to_unit(pred, clamp) - to_unit(target, clamp)).abs().flatten(1).mean(1)
    return _reduce(err, reduction)


def l2(pred: Tensor, target: Tensor, reduction: str = "mean", clamp: bool = True) -> Tensor:
    """Mean squared error (the literature's "L2") on the [0, 1] scale, per image. Inputs [B,C,H,W] in [-1,1]."""
    _check_pair(pred, target)
    err = (to_unit(pred, clamp) - to_unit(target, clamp)).pow(2).flatten(1).mean(1)
    return _reduce(err, reduction)


def psnr(pred: Tensor, target: Tensor, reduction: str = "mean", clamp: bool = True) -> Tensor:
    """Peak signal-to-noise ratio in dB, data range 1: ``10 log10(1 / MSE)`` per image.

    Identical images give ``inf`` (no cap): an average over images that contains a perfect one is
    ``inf`` too, which is the honest answer. The mean is over per-image PSNRs, as in the literature.
    """
    mse = l2(pred, target, reduction="none", clamp=clamp)
    return _reduce(10 * torch.log10(1.0 / mse), reduction)


def hole_l1(pred: Tensor, target: Tensor, mask: Tensor, clamp: bool = True) -> Tensor:
    """Mean absolute error on the [0, 1] scale over the hole pixels only, per image: ``[B]``.

    pred, target ``[B,C,H,W]`` in [-1, 1]; mask ``[B,1,H,W]`` (1 = hole). An image without hole pixels
    gives ``nan`` (there is nothing to score), never 0 or ``inf``.
    """
    _check_pair(pred, target)
    m = mask.float().expand_as(pred)
    err = (to_unit(pred, clamp) - to_unit(target, clamp)).abs() * m
    n = m.flatten(1).sum(1)
    return torch.where(n > 0, err.flatten(1).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))


def hole_psnr(pred: Tensor, target: Tensor, mask: Tensor, clamp: bool = True) -> Tensor:
    """PSNR in dB (data range 1) over the hole pixels only, per image: ``[B]``; ``nan`` without a hole,
    ``inf`` for an exact fill (the oracle)."""
    _check_pair(pred, target)
    m = mask.float().expand_as(pred)
    sq = (to_unit(pred, clamp) - to_unit(target, clamp)).pow(2) * m
    n = m.flatten(1).sum(1)
    mse = sq.flatten(1).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, 10 * torch.log10(1.0 / mse), torch.full_like(n, float("nan")))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> Tensor:
    """1-D normalised Gaussian of ``size`` taps (the separable SSIM window), shape ``[size]``."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` per channel, 'valid' only: ``[B, C, H-k+1, W-k+1]``.

    scikit-image blurs with reflected borders and then crops ``(k-1)/2`` pixels from every side before
    averaging; the cropped result never touches the padding, so a valid convolution gives the same numbers.
    """
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(pred: Tensor, target: Tensor, reduction: str = "mean", clamp: bool = True,
         win_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image, averaged over channels and valid positions.

    Gaussian window 11 x 11, sigma 1.5, population (co)variances, K1 = 0.01, K2 = 0.03, data range 1:
    the same numbers as ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`` on the [0, 1] images.
    Inputs ``[B, C, H, W]`` in [-1, 1] with H, W >= ``win_size``; returns ``[B]`` or the mean.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}; got {tuple(pred.shape[-2:])}")
    x, y = to_unit(pred, clamp), to_unit(target, clamp)
    g = gaussian_window(win_size, sigma, x.dtype, x.device)
    mu_x, mu_y = _blur_valid(x, g), _blur_valid(y, g)
    var_x = _blur_valid(x * x, g) - mu_x**2
    var_y = _blur_valid(y * y, g) - mu_y**2
    cov = _blur_valid(x * y, g) - mu_x * mu_y
    c1, c2 = k1**2, k2**2  # (K * data_range)^2 with data_range = 1
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _reduce(s.flatten(1).double().mean(1).to(x.dtype), reduction)


def composite(pred: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Prediction inside the hole, ground truth elsewhere. ``pred, image [B,3,H,W]``, ``mask [B,1,H,W]`` (1 = hole)."""
    return pred * mask + image * (1 - mask)


_composite = composite  # evaluate() has a boolean argument of the same name


def all_metrics(pred: Tensor, target: Tensor, clamp: bool = True) -> dict[str, Tensor]:
    """The four pixel metrics per image: ``{"l1", "l2", "psnr", "ssim"} -> [B]``."""
    return {name: fn(pred, target, reduction="none", clamp=clamp)
            for name, fn in (("l1", l1), ("l2", l2), ("psnr", psnr), ("ssim", ssim))}


# --------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------
class InceptionWeightsUnavailable(RuntimeError):
    """Raised when FID is asked for but no local Inception-v3 weights can be found (we never download)."""


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (float64)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.

    ``tr((S1 S2)^{1/2})`` equals ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` (similar matrices share eigenvalues),
    and the latter is symmetric PSD, so two ``eigh`` calls give it stably even when the covariances are
    singular (fewer samples than feature dimensions). Accepts numpy arrays or tensors; computes in float64.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    r1 = _sqrtm_psd(s1)
    middle = r1 @ s2 @ r1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return float(d.clamp(min=0))


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N >= 2."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N, D] with N >= 2, got {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T)


def _torchvision_inception_path() -> Path:
    from torchvision.models import Inception_V3_Weights
    name = Inception_V3_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_inception_weights(weights: str | os.PathLike | None = "auto") -> Path:
    """Where the Inception-v3 state dict is, without any download.

    ``"auto"``: ``$CSA_INCEPTION_WEIGHTS`` if set, else torchvision's cache file
    (``<torch hub dir>/checkpoints/inception_v3_google-0cc3c7bd.pth``). ``"torchvision"``: that cache
    file only. Anything else: a path to a state dict for ``torchvision.models.inception_v3``.
    """
    if weights is None:
        weights = "auto"
    if weights == "auto" and os.environ.get("CSA_INCEPTION_WEIGHTS"):
        weights = os.environ["CSA_INCEPTION_WEIGHTS"]
    path = _torchvision_inception_path() if weights in ("auto", "torchvision") else Path(weights)
    if not path.is_file():
        raise InceptionWeightsUnavailable(
            f"FID needs Inception-v3 weights, and none were found at {path}. This project never downloads "
            "at run time. Provide them in one of these ways: (1) on a machine with internet, run "
            "`python -c \"import torchvision; torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"` "
            "once, which fills torchvision's cache; (2) copy a state dict for torchvision.models.inception_v3 "
            "somewhere and pass its path (fid(..., weights=PATH), evaluate(..., fid=PATH), `csa eval --fid PATH`) or set "
            "CSA_INCEPTION_WEIGHTS=PATH.")
    return path


def load_inception(weights: str | os.PathLike | None = "auto", device="cpu") -> torch.nn.Module:
    """torchvision Inception-v3 from a local state dict, classifier removed: ``[B,3,H,W] in [-1,1] -> [B, 2048]``.

    Inputs go in on the [-1, 1] scale without ImageNet normalisation: with ``transform_input=False`` this
    is what torchvision's pretrained model sees after its own input transform. Note: published FIDs use
    the TF-ported "pt_inception-2015-12-05" weights (pytorch-fid), so FIDs from torchvision's weights
    are comparable with each other, not with papers.
    """
    from torchvision.models import inception_v3

    path = resolve_inception_weights(weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise InceptionWeightsUnavailable(f"{path} does not hold a state dict (got {type(state).__name__})")
    aux = any(k.startswith("AuxLogits.") for k in state)
    # init_weights=False: the random init (a slow truncated normal) is overwritten by the state dict anyway.
    model = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InceptionWeightsUnavailable(f"{path} is not an Inception-v3 state dict: {e}") from e
    model.fc = torch.nn.Identity()  # keep the 2048-d pooled features ("pool3")
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_features(images: Tensor, model: torch.nn.Module, batch_size: int = 32) -> Tensor:
    """Pooled Inception features ``[N, 2048]`` of images ``[N,3,H,W]`` in [-1, 1] (resized to 299 x 299)."""
    device = _module_device(model)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device, torch.float32).clamp(-1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model(x).double().cpu())
    return torch.cat(out)


def fid(real_images: Tensor, fake_images: Tensor, weights: str | os.PathLike | None = "auto",
        batch_size: int = 32, device="cpu", model: torch.nn.Module | None = None) -> float:
    """Fréchet Inception Distance between two sets of images ``[N,3,H,W]`` in [-1, 1].

    ``weights`` as in :func:`resolve_inception_weights` (raises :class:`InceptionWeightsUnavailable`
    with instructions when absent); pass ``model`` to reuse a loaded network. With fewer images than
    2048 the covariances are singular and FID is strongly biased upwards: compare like with like only.
    """
    model = model if model is not None else load_inception(weights, device)
    s_real = gaussian_stats(inception_features(real_images, model, batch_size))
    s_fake = gaussian_stats(inception_features(fake_images, model, batch_size))
    return frechet_distance(*s_real, *s_fake)


# --------------------------------------------------------------------------------------------------
# The evaluation protocol
# --------------------------------------------------------------------------------------------------
def hole_ratio_bin(mask: Tensor) -> str:
    """Bin label of one mask ``[1,H,W]`` (1 = hole) by its hole fraction: "0-10%", "10-20%", ... (NVIDIA-style)."""
    from csa_lib.masks import hole_ratio, ratio_bin
    return ratio_bin(hole_ratio(mask))


def _bin_order(label: str) -> tuple:
    head = label.split("-", 1)[0]
    return (0, float(head)) if head.replace(".", "", 1).isdigit() else (1, label)


@dataclass
class EvalResult:
    """Per-image metrics of one evaluation and the facts a table must state.

    ``values[name]``: ``[N]`` per-image values (names in :data:`METRICS`); ``bins``: the bin label of each
    image ("all" when not binned); ``output``: "composited" or "raw"; ``stage``: which network output
    ("refined", "coarse" or "tensor"); ``masks`` / ``split``: free-text descriptions for the table.
    """

    values: dict[str, Tensor]
    bins: list[str]
    output: str = "composited"
    stage: str = "refined"
    masks: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.bins)

    def bin_names(self) -> list[str]:
        return sorted(set(self.bins), key=_bin_order)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{bin: {"n": count, metric: mean}}`` with an "all" row over every image."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, b in enumerate(self.bins):
            groups[b].append(i)
        rows = {}
        names = self.bin_names() if set(self.bins) != {"all"} else []
        for b in names + ["all"]:
            idx = torch.tensor(groups[b] if b != "all" else range(self.n), dtype=torch.long)
            rows[b] = {"n": len(idx), **{k: float(v[idx].double().mean()) for k, v in self.values.items()}}
        return rows


def _pick_output(out, stage: str) -> tuple[Tensor, str]:
    """The prediction ``[B,3,H,W]`` from a generator's return value (a tensor or an InpaintOutput)."""
    if isinstance(out, Tensor):
        return out, "tensor"
    if not hasattr(out, stage):
        raise TypeError(f"generator output {type(out).__name__} has no field {stage!r}; "
                        "return a tensor or an object with .refined / .coarse")
    return getattr(out, stage), stage


def _bin_function(masks_by_bin) -> Callable[[Tensor], str] | None:
    if isinstance(masks_by_bin, (list, tuple)):  # one label per sample, in dataset order
        labels = iter(masks_by_bin)
        return lambda mask: next(labels)
    if masks_by_bin is None or masks_by_bin is False:
        return None
    if masks_by_bin in (True, "hole_ratio"):
        return hole_ratio_bin
    if callable(masks_by_bin):
        return masks_by_bin
    raise ValueError(f"masks_by_bin must be None, 'hole_ratio' or a callable mask -> label; got {masks_by_bin!r}")


def _module_device(generator) -> torch.device:
    """Device of a module's first parameter (CPU for plain callables or parameter-free modules)."""
    params = getattr(generator, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(generator: Callable, dataset, batch_size: int = 8, device=None, masks_by_bin=None,
             composite: bool = True, stage: str = "refined", max_images: int | None = None,
             progress: bool = True, masks: str = "", split: str = "", fid=None) -> EvalResult:
    """Run ``generator(image, mask)`` over ``dataset`` and collect per-image L1, L2, PSNR and SSIM.

    ``dataset[i] -> (image [3,H,W] in [-1,1], mask [1,H,W])`` in a fixed order: build it with fixed masks
    (``csa_lib.data.build_dataset(cfg, "eval")`` seeds sample i's mask by ``cfg.eval_seed``), so two
    models evaluated on it see the same holes. ``generator`` returns a ``[B,3,H,W]`` tensor or an object
    with ``.refined``/``.coarse`` (``stage`` picks which). ``composite=True`` scores the composited image
    (prediction inside the hole only), ``False`` the raw output. ``masks_by_bin``: None (one "all" row),
    ``"hole_ratio"`` (10 % bins of each mask's hole ratio, as for the NVIDIA masks), a callable
    ``mask [1,H,W] -> label``, or a list of labels, one per sample in dataset order (e.g.
    :attr:`BinnedMaskProtocol.labels`). ``masks``/``split`` are descriptions copied into the result for the table.
    ``fid``: None (no FID), ``"auto"`` or a weights path (see :func:`load_inception`), or a loaded feature
    network; then ``result.extra["fid"]`` is the FID between the ground truth and the scored outputs of
    the whole set (one number, not per bin).
    """
    bin_fn = _bin_function(masks_by_bin)
    device = torch.device(device) if device is not None else _module_device(generator)
    inception = None
    if fid is not None:
        inception = fid if isinstance(fid, torch.nn.Module) else load_inception(fid, device)
    feats: dict[str, list[Tensor]] = {"real": [], "fake": []}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was_training = getattr(generator, "training", None)
    if was_training:
        generator.eval()  # dropout/batch-norm in inference mode; restored below
    values: dict[str, list[Tensor]] = defaultdict(list)
    bins: list[str] = []
    picked = stage
    total = len(dataset) if max_images is None else min(max_images, len(dataset))
    seen = no_hole = 0
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress)
    try:
        for image, mask in loader:
            image, mask = image[: total - seen], mask[: total - seen]
            if image.shape[0] == 0:
                break
            seen += image.shape[0]
            bar.update(image.shape[0])
            # An image without a hole has nothing to score (its composite is the input: PSNR inf).
            has_hole = mask.flatten(1).amax(1) > 0
            no_hole += int((~has_hole).sum())
            labels = [bin_fn(m) if bin_fn else "all" for m in mask.cpu()]  # a label list follows the dataset
            if not has_hole.any():
                continue
            image, mask = image[has_hole].to(device), mask[has_hole].to(device)
            pred, picked = _pick_output(generator(image, mask), stage)
            pred = _composite(pred.float(), image, mask) if composite else pred.float()
            for k, v in all_metrics(pred, image).items():
                values[k].append(v.cpu())
            if inception is not None:  # features only: the images themselves are not kept
                feats["real"].append(inception_features(image, inception))
                feats["fake"].append(inception_features(pred, inception))
            bins += [b for b, h in zip(labels, has_hole.tolist()) if h]
    finally:
        bar.close()
        if was_training:
            generator.train()
    if not bins:
        raise ValueError(f"all {seen} masks are empty (no hole pixel): nothing to score" if no_hole
                         else "evaluate() got an empty dataset")
    if no_hole:
        warnings.warn(f"{no_hole} of {seen} images have an empty mask (no hole pixel) and were not scored",
                      stacklevel=2)
    extra = {}
    if inception is not None:
        real, fake = torch.cat(feats["real"]), torch.cat(feats["fake"])
        extra["fid"] = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    return EvalResult(values={k: torch.cat(v) for k, v in values.items()}, bins=bins,
                      output="composited" if composite else "raw", stage=picked, masks=masks, split=split,
                      extra=extra)


def _fmt(v: float, scale: float = 1.0, digits: int = 4) -> str:
    return "inf" if math.isinf(v) else f"{v * scale:.{digits}f}"


def results_table(results: EvalResult | Mapping[str, EvalResult]) -> str:
    """A markdown table: one row per model and hole-ratio bin (plus "all"), with the image count N.

    L1 and L2 are in percent of the [0, 1] range (as in the inpainting literature), PSNR in dB, SSIM in
    [0, 1]. The output (composited/raw), masks and split are stated under the table, or as columns when
    the results differ in them. A FID column (whole set, so on the "all" rows only) appears when any
    result has ``extra["fid"]``.
    """
    if isinstance(results, EvalResult):
        results = {"model": results}
    if not results:
        raise ValueError("results_table() needs at least one EvalResult")
    facts = {name: (r.output + ("" if r.stage in ("refined", "tensor") else f" ({r.stage})"), r.masks, r.split)
             for name, r in results.items()}
    shared = len(set(facts.values())) == 1
    with_fid = any("fid" in r.extra for r in results.values())
    head = ["model", "bin", "N", "L1 (%)", "L2 (%)", "PSNR (dB)", "SSIM"] + (["FID"] if with_fid else [])
    if not shared:
        head += ["output", "masks", "split"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name, r in results.items():
        for b, row in r.summary().items():
            cells = [name, b, str(row["n"]), _fmt(row["l1"], 100, 3), _fmt(row["l2"], 100, 3),
                     _fmt(row["psnr"], 1, 2), _fmt(row["ssim"], 1, 4)]
            if with_fid:
                cells.append(_fmt(r.extra["fid"], 1, 2) if b == "all" and "fid" in r.extra else "")
            if not shared:
                cells += list(facts[name])
            lines.append("| " + " | ".join(cells) + " |")
    if shared:
        output, masks, split = next(iter(facts.values()))
        lines.append("")
        lines.append(f"Output: {output}; masks: {masks or 'unspecified'}; split: {split or 'unspecified'}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Describing data and evaluating a checkpoint (used by `csa eval`)
# --------------------------------------------------------------------------------------------------
def describe_masks(data_cfg) -> str:
    """Human-readable mask set of a DataConfig, e.g. "centre 30x30" or "folder nvidia_masks_256 (seed 1234)"."""
    kind = data_cfg.masks
    if kind == "center":
        h = data_cfg.hole_size if data_cfg.hole_size is not None else round(120 / 256 * data_cfg.image_size)
        return f"centre {h}x{h} on {data_cfg.image_size}"
    if kind == "folder":
        return f"folder {Path(str(data_cfg.mask_dir)).name} (fixed by seed {data_cfg.eval_seed})"
    lo, hi = data_cfg.hole_ratio
    return f"{kind} {lo:.0%}-{hi:.0%} (fixed by seed {data_cfg.eval_seed})"


def describe_split(data_cfg, n: int | None = None) -> str:
    """Human-readable eval split of a DataConfig, e.g. "celeba_10k [9000:10000]" or "embedded photos"."""
    if data_cfg.root is None:
        text = f"embedded scikit-image photos at {data_cfg.image_size} px"
    else:
        text = Path(str(data_cfg.root)).name
        if data_cfg.eval_range is not None:
            text += f" [{data_cfg.eval_range[0]}:{data_cfg.eval_range[1]}]"
        text += f" at {data_cfg.image_size} px"
    return text if n is None else f"{text}, {n} images"


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | None = None, mask_dir: str | None = None,
                        eval_range: tuple[int, int] | None = None, batch_size: int = 8, device: str = "cpu",
                        composite: bool = True, max_images: int | None = None, masks_by_bin="auto",
                        progress: bool = True, fid=None) -> EvalResult:
    """Evaluate a saved generator on its preset's eval split (or on ``data_dir`` / ``mask_dir``).

    ``data_dir`` replaces the image folder (its whole sorted list is used unless ``eval_range`` is
    given); ``mask_dir`` switches to a folder of masks (white = hole), binned by hole ratio. With
    ``masks_by_bin="auto"`` folder, irregular and rectangle masks are binned, centre masks are not.
    ``fid``: as in :func:`evaluate` (None = no FID; ``"auto"`` or a path needs local Inception weights).
    """
    from csa_lib.data import build_dataset
    from csa_lib.train import load_generator

    generator, preset = load_generator(checkpoint, device=device)
    cfg = preset.data
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {data_dir} is not a folder")
        cfg.root, cfg.eval_range = str(data_dir), None
    if mask_dir is not None:
        if not Path(mask_dir).is_dir():
            raise FileNotFoundError(f"mask_dir {mask_dir} is not a folder")
        cfg.masks, cfg.mask_dir = "folder", str(mask_dir)
    if eval_range is not None:
        cfg.eval_range = tuple(eval_range)
    if masks_by_bin == "auto":
        masks_by_bin = "hole_ratio" if cfg.masks in ("folder", "irregular", "rect") else None
    dataset = build_dataset(cfg, "eval")
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    return evaluate(generator, dataset, batch_size=batch_size, device=device, masks_by_bin=masks_by_bin,
                    composite=composite, max_images=max_images, progress=progress,
                    masks=describe_masks(cfg), split=describe_split(cfg, n), fid=fid)


# --------------------------------------------------------------------------------------------------
# Fixed masks per hole-ratio bin (the protocol of the trained-model results)
# --------------------------------------------------------------------------------------------------
NVIDIA_BINS = ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%")


class BinnedMaskProtocol(torch.utils.data.Dataset):
    """Fixed ``(image, mask)`` pairs with an equal share of images in every hole-ratio bin.

    Image ``j`` of ``images`` (a dataset yielding ``(image [3,H,W] in [-1,1], anything)``; its own masks
    are ignored) gets bin ``bins[j % len(bins)]`` and a mask file drawn without replacement from that
    bin of ``mask_folder`` (a :class:`csa_lib.masks.MaskFolder`, read as is: no flips, nearest-resized),
    by a generator seeded with ``seed``. So every model, and every baseline, sees exactly the same holes.
    The bin of a mask is its hole ratio at the file's own resolution (the NVIDIA convention).

    ``ds[j] -> (image [3,H,W], mask [1,H,W] float, 1 = hole)``; ``ds.labels[j]`` is the bin label and
    ``ds.mask_index[j]`` the mask file's index in the folder.
    """

    def __init__(self, images, mask_folder, bins=NVIDIA_BINS, seed: int = 1234):
        self.images, self.masks, self.bins = images, mask_folder, tuple(bins)
        g = torch.Generator().manual_seed(seed)
        n = len(images)
        pools = {}
        for b in self.bins:
            pool = mask_folder.indices_in_bin(b)
            need = len(range(self.bins.index(b), n, len(self.bins)))
            if len(pool) < need:
                raise ValueError(f"mask folder {mask_folder.root} has {len(pool)} masks in bin {b}, "
                                 f"the protocol needs {need}")
            pools[b] = [pool[int(k)] for k in torch.randperm(len(pool), generator=g)[:need]]
        self.labels = [self.bins[j % len(self.bins)] for j in range(n)]
        self.mask_index = [pools[b][j // len(self.bins)] for j, b in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, j: int):
        return self.images[j][0], self.masks[self.mask_index[j]]

    def describe(self) -> str:
        return (f"folder {Path(str(self.masks.root)).name}: {len(self) // len(self.bins)}+ fixed masks "
                f"per bin {', '.join(self.bins)} (file ratio bins)")


# --------------------------------------------------------------------------------------------------
# Where in the hole: errors by distance to the known region
# --------------------------------------------------------------------------------------------------
def error_by_border_distance(pred: Tensor, target: Tensor, mask: Tensor,
                             bands=((1, 1), (2, 2), (3, 4), (5, None))) -> dict[str, tuple[float, int]]:
    """Mean squared error (on [0, 1] images) of hole pixels grouped by their distance to the known region.

    pred, target ``[B,3,H,W]`` in [-1, 1]; mask ``[B,1,H,W]``. Returns ``{"1": (mse, n), "2": ..., "3-4": ...,
    "5+": ...}`` with ``n`` the number of hole pixels in each band (summed over the batch). Near the border
    a smooth continuation of the known pixels is hard to beat; deep inside a large hole only a model of
    the image content helps: the bands separate the two.
    """
    err = ((to_unit(pred) - to_unit(target)) ** 2).mean(dim=1, keepdim=True)
    dist = border_distance(mask)
    out = {}
    for lo, hi in bands:
        sel = (dist >= lo) & ((dist <= hi) if hi is not None else (dist > 0))
        name = f"{lo}" if hi == lo else (f"{lo}+" if hi is None else f"{lo}-{hi}")
        n = int(sel.sum())
        out[name] = (float(err[sel].mean()) if n else float("nan"), n)
    return out


def held_out_faces(start: int = 9000, n: int = 1000, bins=NVIDIA_BINS, seed: int = 1234,
                   data_dir=None, mask_dir=None, framing: tuple[float, float, float] | None = None
                   ) -> BinnedMaskProtocol:
    """The protocol of the shipped CelebA-64 model: held-out faces with fixed NVIDIA masks per bin.

    Faces ``[start, start + n)`` of the ``celeba64`` preset's sorted folder (capped at its evaluation
    range, 9,000-10,000), prepared as that preset prepares them (centre crop, 64 px), and a
    :class:`BinnedMaskProtocol` over the NVIDIA mask folder. ``data_dir`` / ``mask_dir`` default to the
    shared folders beside the repository. The benchmark script, notebook 07 and the tests all use this.
    ``framing = (dy, dx, zoom)`` frames the same faces differently (:func:`csa_lib.data.framed_crop`: the
    crop moved by ``dy, dx`` times its side, zoomed in by ``zoom``); the masks stay the same.
    """
    from csa_lib.config import SHARED_ROOT, get_preset
    from csa_lib.data import build_dataset
    from csa_lib.masks import MaskFolder

    cfg = get_preset("celeba64").data
    cfg.root = str(data_dir or cfg.root)
    cfg.masks, cfg.mask_dir = "center", None  # the images only; the masks come from the protocol
    cfg.eval_range = (start, min(start + n, cfg.eval_range[1]))
    masks = MaskFolder(mask_dir or SHARED_ROOT / "data" / "nvidia_masks_256", cfg.image_size, augment=False)
    faces = build_dataset(cfg, "eval")
    faces.framing = framing
    return BinnedMaskProtocol(faces, masks, bins=bins, seed=seed)
