"""Ablations that say whether they measured anything: scores inside the hole, paired confidence intervals
and the activity check of every row.

An ablation row ("CSA replaced by X") is a result only if the replaced layer was active on the images it
was scored on; :func:`csa_lib.attention_stats.activity` says so per image, and :func:`ablation_row`
puts it next to the score. On the copy task (:mod:`csa_lib.copytask`) the hole's content is known
exactly, so the same functions also give the oracle's ceiling and the attention's hit rate.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .attention_stats import activity, measure_attention, replaced_attention
from .baselines import biharmonic_inpaint, mean_fill
from .copytask import CopyTask, copies_of_cell, oracle_fill
from .metrics import hole_l1, hole_psnr

#: The 97.5 % quantile of the normal distribution (two-sided 95 % intervals over hundreds of images).
Z95 = 1.959964


def copytask_batch(dataset: CopyTask, n: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` items of ``dataset`` as ``(images [n,3,S,S], masks [n,1,S,S], targets [n,K,h*w])``:
    ``targets[i, :, p]`` lists every known cell holding the content of hole cell ``p`` (-1 padding)."""
    n = len(dataset) if n is None else min(n, len(dataset))
    images, masks = zip(*(dataset[i] for i in range(n)))
    cells = (dataset.image_size // 8) ** 2
    per_image = []
    for i in range(n):
        hole = masks[i][0, ::8, ::8].flatten().nonzero().flatten().tolist()
        per_image.append({p: copies_of_cell(dataset, i, p) for p in hole})
    K = max((len(v) for d in per_image for v in d.values()), default=1)
    targets = torch.full((n, K, cells), -1, dtype=torch.long)
    for i, d in enumerate(per_image):
        for p, t in d.items():
            targets[i, : len(t), p] = t
    return torch.stack(images), torch.stack(masks), targets


@torch.no_grad()
def generator_fill(generator: nn.Module, images: Tensor, masks: Tensor, batch_size: int = 32) -> Tensor:
    """The generator's composite output (refined in the hole, input outside), ``[N,3,S,S]`` on the CPU."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    try:
        for lo in range(0, images.shape[0], batch_size):
            o = generator(images[lo:lo + batch_size].to(device), masks[lo:lo + batch_size].to(device))
            out.append(o.composite.float().cpu())
    finally:
        generator.train(was_training)
    return torch.cat(out)


def hole_scores(fill: Tensor, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per-image ``{"psnr": [N] dB, "l1": [N] in %}`` inside the hole (:func:`csa_lib.metrics.hole_psnr`)."""
    return {"psnr": hole_psnr(fill, images, masks), "l1": 100 * hole_l1(fill, images, masks)}


def paired_difference(a: Tensor, b: Tensor) -> dict[str, float]:
    """Mean of ``a - b`` over paired values (the same images) with a normal 95 % interval:
    ``{"mean", "lo", "hi", "n"}``. Pairs with a non-finite value are left out (and counted out of n)."""
    d = (a.double() - b.double())
    d = d[torch.isfinite(d)]
    n = int(d.numel())
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(d.mean())
    half = Z95 * float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def baseline_fills(dataset: CopyTask, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Fills that need no training: the oracle (paste the true copy: exact), the mean known colour and
    biharmonic continuation (the best a method without the copy can do locally)."""
    n = images.shape[0]
    return {"oracle (paste the copy)": torch.stack([oracle_fill(dataset, i) for i in range(n)]),
            "mean colour": mean_fill(images, masks),
            "biharmonic": biharmonic_inpaint(images, masks)}


def ablation_row(generator: nn.Module, images: Tensor, masks: Tensor, ksize: int | None = None) -> dict[str, Any]:
    """Scores of one trained generator with its activity check: per-image ``psnr``/``l1`` tensors plus
    ``activity`` (:func:`csa_lib.attention_stats.activity`; ``changed`` is the share of images on which
    the attention layer changed the output). A layer that changed nothing makes the row a copy of the
    identity's, and :func:`format_ablation` marks it *inactive*. ``ksize`` (the window whose presence
    ``has_window`` reports) defaults to the model's contextual patch size, 3 for other layers."""
    fill = generator_fill(generator, images, masks)
    row: dict[str, Any] = hole_scores(fill, images, masks)
    kind = getattr(generator.cfg, "attention", "csa")
    if ksize is None:
        ksize = getattr(generator.cfg, "contextual_ksize", 3) if kind == "contextual" else 3
    row["activity"] = None if kind == "identity" else activity(generator, images, masks, ksize=ksize)
    return row


def replaced_row(generator: nn.Module, images: Tensor, masks: Tensor, kind: str = "identity", **kwargs) -> dict[str, Any]:
    """Scores of ``generator`` with its attention layer replaced by ``kind`` at inference (the same trained
    weights everywhere else; :func:`csa_lib.attention_stats.replaced_attention`): "CSA removed at inference"."""
    with replaced_attention(generator, kind, **kwargs):
        return {**hole_scores(generator_fill(generator, images, masks), images, masks), "activity": None}


def mean_psnr(psnr: Tensor) -> float:
    """Mean of per-image PSNRs; ``inf`` when every image is exact (the oracle), else the mean of the finite ones."""
    finite = psnr[torch.isfinite(psnr)]
    if finite.numel() == 0:
        return float("inf") if bool((psnr == float("inf")).any()) else float("nan")
    return float(finite.mean())


def summarize(rows: Mapping[str, list[dict[str, Any]]], reference: str | None = None) -> list[dict[str, Any]]:
    """One line per method from per-seed rows (``{method: [row of seed 0, row of seed 1, ...]}``).

    Each line: ``method``, ``seeds``, ``psnr``/``l1`` (mean over seeds of the per-seed mean) and their
    spread (``psnr_sd``, ``l1_sd``: standard deviation over seeds; 0 with one seed), ``active`` (mean
    share of images on which the layer changed the output; None for identity and baselines) and, with
    ``reference``, the paired difference to it in dB (``vs_ref``: images and seeds paired one to one) and
    in L1 percentage points (``vs_ref_l1``).
    """
    out = []
    for name, seed_rows in rows.items():
        psnr = torch.tensor([mean_psnr(r["psnr"]) for r in seed_rows])
        l1 = torch.tensor([float(r["l1"].mean()) for r in seed_rows])
        acts = [r["activity"]["changed"] for r in seed_rows if r.get("activity")]
        line = {"method": name, "seeds": len(seed_rows), "psnr": float(psnr.mean()), "l1": float(l1.mean()),
                "psnr_sd": float(psnr.std()) if len(psnr) > 1 else 0.0,
                "l1_sd": float(l1.std()) if len(l1) > 1 else 0.0,
                "active": sum(acts) / len(acts) if acts else None}
        if reference is not None and reference in rows and name != reference:
            ref = rows[reference]
            k = min(len(ref), len(seed_rows))
            line["vs_ref"] = paired_difference(torch.cat([r["psnr"] for r in seed_rows[:k]]),
                                               torch.cat([r["psnr"] for r in ref[:k]]))
            line["vs_ref_l1"] = paired_difference(torch.cat([r["l1"] for r in seed_rows[:k]]),
                                                  torch.cat([r["l1"] for r in ref[:k]]))
        out.append(line)
    return out


def rows_subset(rows: Mapping[str, list[dict[str, Any]]], keep: Tensor) -> dict[str, list[dict[str, Any]]]:
    """The same per-seed rows restricted to the images where ``keep`` ([N] bool) is true, with each row's
    activity recomputed from its per-image booleans (a hole-ratio bin, a framing's subset, ...)."""
    keep = keep.bool()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, seed_rows in rows.items():
        sub = []
        for r in seed_rows:
            s = {k: (v[keep] if isinstance(v, Tensor) else v) for k, v in r.items() if k != "activity"}
            act = r.get("activity")
            if act:
                per = {k: v[keep] for k, v in act.items() if k.startswith("per_image_")}
                n = int(keep.sum())
                shares = {k.removeprefix("per_image_"): (float(v.float().mean()) if n else float("nan"))
                          for k, v in per.items()}
                act = {"n": n, **shares, **per}
            s["activity"] = act
            sub.append(s)
        out[name] = sub
    return out


def summarize_by_group(rows: Mapping[str, list[dict[str, Any]]], labels: list[str],
                       reference: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize` per group of images (``labels[i]`` is image i's group, e.g. its hole-ratio bin)
    and over all of them (key ``"all"``); groups in order of first appearance."""
    groups = list(dict.fromkeys(labels))
    out = {}
    for g in groups + ["all"]:
        keep = torch.tensor([g == "all" or lab == g for lab in labels])
        if keep.any():
            out[g] = summarize(rows_subset(rows, keep), reference)
    return out


def format_ablation(lines: list[dict[str, Any]], reference: str | None = None) -> str:
    """Markdown table of :func:`summarize`'s lines. A row whose layer changed the output on no image is
    marked *inactive* instead of being reported as a result."""
    ref = f" vs {reference} (dB, 95 % CI)" if reference else ""
    table = [f"| method | seeds | hole PSNR (dB) | hole L1 (%) | layer active |{ref} |".replace("| |", "|"),
             "|---|---|---|---|---|" + ("---|" if reference else "")]
    for ln in lines:
        act = "-" if ln["active"] is None else f"{100 * ln['active']:.0f} % of images"
        if ln["active"] == 0:
            act = "**inactive** (not a result)"
        psnr = "inf (exact)" if math.isinf(ln["psnr"]) else f"{ln['psnr']:.2f} ± {ln['psnr_sd']:.2f}"
        if ln["seeds"] == 1 and not math.isinf(ln["psnr"]):
            psnr = f"{ln['psnr']:.2f}"
        cells = [ln["method"], str(ln["seeds"]), psnr, f"{ln['l1']:.2f} ± {ln['l1_sd']:.2f}", act]
        if reference:
            v = ln.get("vs_ref")
            cells.append("-" if v is None or math.isnan(v["mean"]) else f"{v['mean']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]")
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join(table)


def copytask_attention(generator: nn.Module, dataset: CopyTask, n: int = 128) -> dict[str, dict]:
    """:func:`csa_lib.attention_stats.measure_attention` on the first ``n`` items of a copy-task set,
    with every periodic copy of a hole cell counted as its true source."""
    images, masks, targets = copytask_batch(dataset, n)
    return measure_attention(generator, images, masks, targets=targets)


def fill_function(generator: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """``fill(images, masks) -> composite``: a trained generator as a plain fill function."""
    return lambda images, masks: generator_fill(generator, images, masks)
