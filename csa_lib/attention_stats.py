"""Measuring what an attention layer does: which cell each hole cell copies, against chance and controls.

A statement such as "the masked eye copies the other eye" is only worth something next to numbers that
could have shown the opposite. Everything here works on the attention level's grid (``h x w`` cells,
1/8 of the image) with flat raster indices ``y * w + x``, ``-1`` = no source:

- :func:`run_with_attention_input`: run a generator and catch its attention record and what its
  attention layer saw (the features and the feature hole).
- :func:`layer_sources`: the source a layer chose for every hole cell (CSA's argmax ``c(p)``,
  contextual attention's most-weighted source, Shift-Net's nearest neighbour; ``-1`` for identity).
- :func:`nearest_known_sources`: the trivial rule "copy the nearest known cell" (a control).
- :func:`source_statistics`: for the hole cells of a batch, the share whose source is *adjacent*
  (Chebyshev distance 1), the *true* source (exactly and within +-1 cell; the copy task knows it), the
  *mirror* cell (faces: ``(y, w-1-x)``), each next to its **chance level** (the share of a uniformly
  random known cell that would satisfy the same test) and, for the true/mirror tests, a
  **distance-matched** chance (a random known cell *at the same distance* as the target).
- :func:`measure_attention`: those statistics for a trained model, for a random-init network of the
  same architecture and for the nearest-known rule, in one table.
- :func:`activity`: did the layer change the output at all? Per image, the output with the layer
  against the output with the layer replaced by the identity, plus how many images have at least one
  hole cell and at least one complete known ``k x k`` window (without which contextual attention is
  exactly the identity). An ablation row whose layer was inactive is not a result.
- :func:`feature_cosine_by_distance`: how similar the features of two known cells are as a function of
  their distance: smooth features make "copy a neighbour" the argmax, whatever the image.

Nothing here trains; every function runs under ``torch.no_grad``. Reading one attention record
(sources, offsets, rows, the chain's balance) is :mod:`csa_lib.attention_maps`; drawing it is
:mod:`csa_lib.viz`.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .networks import attention_level, build_models, make_attention
from .peers import attention_argmax, valid_sources

__all__ = ["attention_layer", "replaced_attention", "run_with_attention_input", "layer_sources", "nearest_known_sources",
           "source_statistics", "measure_attention", "activity", "feature_cosine_by_distance",
           "mirror_sources", "format_statistics"]


# ----------------------------------------------------------------------------------------------------
# The layer inside a generator
# ----------------------------------------------------------------------------------------------------
def attention_layer(generator: nn.Module) -> nn.Module:
    """The attention layer of a :class:`csa_lib.networks.CSAInpainter` (CSA, identity, contextual, ...)."""
    return attention_level(generator).attention


@contextmanager
def replaced_attention(generator: nn.Module, kind: str = "identity", **kwargs) -> Iterator[nn.Module]:
    """Swap the generator's attention layer for ``make_attention(kind)`` inside the ``with`` block (the
    same trained weights everywhere else), e.g. "CSA replaced by identity at inference"."""
    level = attention_level(generator)
    old = level.attention
    channels = level.down[-1].out_channels  # 8C: what the layer at this level sees
    level.attention = make_attention(kind, channels, **kwargs).to(next(generator.parameters()).device)
    try:
        yield level.attention
    finally:
        level.attention = old


@torch.no_grad()
def run_with_attention_input(generator: nn.Module, image: Tensor, mask: Tensor):
    """Run a ``CSAInpainter`` and also catch what its attention layer saw.

    ``image [B,3,H,W]`` in [-1,1] and ``mask [B,1,H,W]`` (1 = hole) may be on any device: they are moved to
    the generator's. Returns ``(out, features, hole)`` on that device: the ``InpaintOutput`` (with
    ``.attention``), the features entering the attention layer ``[B, 8C, h, w]`` (signed, before
    InstanceNorm) and the feature hole ``bool [B, 1, h, w]``. Feeding the same ``features, hole`` to
    another layer (e.g. ``peers.ContextualAttention``) compares the two attentions on the same input.
    """
    layer = attention_layer(generator)
    seen = {}

    def grab(module, args):  # forward pre-hook: args = (x, hole, ...)
        seen["x"], seen["hole"] = args[0].detach(), args[1].detach()

    # The inputs go to the generator's device (a CPU image and a CUDA model is the usual notebook case).
    device = next(generator.parameters()).device
    handle = layer.register_forward_pre_hook(grab)
    try:
        out = generator(image.to(device), mask.to(device), return_attention=True)
    finally:
        handle.remove()
    return out, seen["x"], seen["hole"]


# ----------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def layer_sources(generator: nn.Module, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Any]:
    """Run ``generator`` and read its attention layer's choices.

    ``image [B,3,S,S]`` in [-1,1], ``mask [B,1,S,S]`` (1 = hole). Returns ``(sources, hole, out)``:
    ``sources`` long ``[B, h*w]`` (the chosen source of every hole cell, ``-1`` at known cells and for a
    layer that copies nothing), ``hole`` bool ``[B, 1, h, w]`` and the ``InpaintOutput``.
    """
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    try:
        out = generator(image.to(device), mask.to(device), return_attention=True)
    finally:
        generator.train(was_training)
    hole = out.feature_hole.bool()
    B, _, h, w = hole.shape
    sources = torch.full((B, h * w), -1, dtype=torch.long, device=hole.device)
    att = out.attention
    if att is None:  # identity: no source
        return sources.cpu(), hole.cpu(), out
    if hasattr(att, "hole_index"):  # CSAAttention
        for i in range(B):
            T = int(att.count[i])
            sources[i, att.hole_index[i, :T].long()] = att.source[i, :T].long()
    elif torch.is_tensor(att) and att.dim() == 4:  # contextual scores [B, h*w, h, w]
        sources = attention_argmax(att, hole)
    elif torch.is_tensor(att) and att.dim() == 2:  # shift: sources [B, h*w]
        sources = torch.where(hole.flatten(1), att.long(), -1)
    else:
        raise TypeError(f"unknown attention record {type(att).__name__}")
    return sources.cpu(), hole.cpu(), out


def nearest_known_sources(hole: Tensor) -> Tensor:
    """The trivial rule: every hole cell copies its nearest known cell (Euclidean distance on the grid;
    ties to the smaller raster index). ``hole`` bool ``[B,1,h,w]`` -> long ``[B, h*w]`` (-1 at known
    cells and in an image without any known cell)."""
    hole = hole.bool()
    B, _, h, w = hole.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()  # [N, 2]
    d = torch.cdist(pos, pos)  # [N, N]
    out = torch.full((B, h * w), -1, dtype=torch.long)
    for i in range(B):
        flat = hole[i, 0].flatten().cpu()
        if flat.all() or not flat.any():
            continue
        di = d.clone()
        di[:, flat] = float("inf")
        # argmin returns the first minimum: ties go to the smaller raster index
        out[i] = torch.where(flat, di.argmin(1), -1)
    return out


def mirror_sources(hole: Tensor) -> Tensor:
    """The horizontal mirror of every hole cell, ``(y, w-1-x)``: ``[B, h*w]`` long, -1 at known cells."""
    B, _, h, w = hole.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mirror = (yy * w + (w - 1 - xx)).flatten()
    return torch.where(hole.bool().flatten(1).cpu(), mirror.expand(B, -1), -1)


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------
def _cheb(a: Tensor, b: Tensor, w: int) -> Tensor:
    """Chebyshev distance between flat grid indices (broadcasting)."""
    return torch.maximum((a // w - b // w).abs(), (a % w - b % w).abs())


def source_statistics(sources: Tensor, hole: Tensor, targets: Tensor | None = None,
                      mirror: bool = False) -> dict[str, float]:
    """Shares of hole cells by where their source lies, with chance levels.

    Args:
        sources: long ``[B, h*w]``, the chosen source per cell (-1 = none).
        hole: bool ``[B, 1, h, w]``.
        targets: optional long ``[B, K, h*w]`` (or ``[B, h*w]``): up to K equally correct sources of every
            hole cell (-1 = padding), e.g. every periodic copy on the copy task.
        mirror: also test the horizontal mirror cell (faces).

    Returns (floats; ``nan`` where nothing was counted):
        ``cells`` hole cells with a source; ``no_source`` share of hole cells without one;
        ``adjacent`` share at Chebyshev distance 1, ``chance_adjacent`` its chance level;
        with targets: ``true`` (exactly a target), ``true_pm1`` (within 1 cell of one), their chance levels
        and ``dm_true`` (a random known cell at the same distance as the nearest target);
        with mirror: ``mirror``, ``mirror_pm1``, ``chance_mirror``, ``chance_mirror_pm1``, ``dm_mirror``;
        for both, ``<name>_far`` (within 1 cell of a target *and* not adjacent to the hole cell) and its
        chance: on a face the mirror of an inner eye cell may touch the hole, where "mirror" and "adjacent"
        cannot be told apart.
    Chance levels are averages over the hole cells of "the share of the image's known cells that pass
    the test", i.e. what a layer choosing a uniformly random known cell would score.
    """
    hole = hole.bool().cpu()
    B, _, h, w = hole.shape
    sources = sources.cpu().long()
    if targets is not None:
        targets = targets.cpu().long()
        if targets.dim() == 2:
            targets = targets.unsqueeze(1)
    mirrors = mirror_sources(hole) if mirror else None
    cells = torch.arange(h * w)
    acc: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        acc.setdefault(key, []).append(value)

    n_hole = n_none = 0
    for i in range(B):
        flat = hole[i, 0].flatten()
        known = cells[~flat]
        if known.numel() == 0:
            continue
        for p in cells[flat].tolist():
            n_hole += 1
            s = int(sources[i, p])
            if s < 0:
                n_none += 1
                continue
            d_known = _cheb(known, torch.tensor(p), w)
            add("adjacent", float(_cheb(torch.tensor(s), torch.tensor(p), w) == 1))
            add("chance_adjacent", float((d_known == 1).float().mean()))
            groups = []
            if targets is not None:
                t = targets[i, :, p]
                t = t[t >= 0]
                if t.numel():
                    groups.append(("true", t))
            if mirrors is not None:
                m = int(mirrors[i, p])
                if m >= 0 and bool((known == m).any()):
                    groups.append(("mirror", torch.tensor([m])))
            for name, t in groups:
                d_src = _cheb(torch.tensor(s), t, w)
                add(name, float((d_src == 0).any()))
                add(f"{name}_pm1", float((d_src <= 1).any()))
                d_kt = _cheb(known[:, None], t[None, :], w)  # [K_known, n_targets]
                add(f"chance_{name}", float((d_kt == 0).any(1).float().mean()))
                add(f"chance_{name}_pm1", float((d_kt <= 1).any(1).float().mean()))
                # the same test among sources that do not touch the hole cell: near a target *and* not
                # adjacent (on a face the mirror of an inner eye cell can itself touch the hole)
                far_k = d_known > 1
                add(f"{name}_far", float(bool((d_src <= 1).any()) and int(_cheb(torch.tensor(s), torch.tensor(p), w)) > 1))
                add(f"chance_{name}_far", float(((d_kt <= 1).any(1) & far_k).float().mean()))
                # distance-matched: a random known cell at the distance of the nearest target
                r = int(_cheb(t, torch.tensor(p), w).min())
                same = (d_known == r)
                hits = (d_kt == 0).any(1) & same
                add(f"dm_{name}", float(hits.sum()) / max(int(same.sum()), 1))
    out = {"cells": float(n_hole - n_none), "no_source": n_none / n_hole if n_hole else float("nan")}
    for k, v in acc.items():
        out[k] = sum(v) / len(v)
    return out


@torch.no_grad()
def measure_attention(generator: nn.Module, images: Tensor, masks: Tensor, targets: Tensor | None = None,
                      mirror: bool = False, control_seed: int = 0, batch_size: int = 16) -> dict[str, dict]:
    """:func:`source_statistics` of three rows on the same images and masks:

    - ``"trained"``: ``generator``'s own attention layer;
    - ``"random_init"``: a network of the same architecture (``generator.cfg``) at a seeded random
      initialisation: what the layer picks before any learning (smooth random features already favour
      neighbours);
    - ``"nearest_known"``: the trivial rule "copy the nearest known cell".

    ``images [N,3,S,S]``, ``masks [N,1,S,S]``; ``targets`` long ``[N, K, h*w]`` as in
    :func:`source_statistics`. Returns ``{row: statistics}``.
    """
    torch.manual_seed(control_seed)
    random_net = build_models(copy.deepcopy(generator.cfg))[0].to(next(generator.parameters()).device)
    rows: dict[str, list] = {"trained": [], "random_init": [], "nearest_known": []}
    holes = []
    for lo in range(0, images.shape[0], batch_size):
        img, msk = images[lo:lo + batch_size], masks[lo:lo + batch_size]
        src, hole, _ = layer_sources(generator, img, msk)
        rows["trained"].append(src)
        rows["random_init"].append(layer_sources(random_net, img, msk)[0])
        rows["nearest_known"].append(nearest_known_sources(hole))
        holes.append(hole)
    hole = torch.cat(holes)
    return {name: source_statistics(torch.cat(s), hole, targets, mirror) for name, s in rows.items()}


@torch.no_grad()
def activity(generator: nn.Module, images: Tensor, masks: Tensor, ksize: int = 3, tol: float = 1e-6,
             batch_size: int = 16) -> dict[str, Any]:
    """Was the attention layer active on these images?

    Returns ``changed`` (share of images whose composite output changes by more than ``tol`` anywhere
    when the layer is replaced by the identity), ``has_hole_cell`` (share with at least one hole cell
    at the attention level), ``has_window`` (share with at least one hole cell *and* one complete known
    ``ksize x ksize`` window, contextual attention's condition for doing anything), ``n`` and the
    per-image booleans (``per_image_changed``, ``per_image_has_hole_cell``, ``per_image_has_window``), so
    that shares per subset (e.g. per hole-ratio bin) need no second pass.
    """
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    changed, has_hole, has_window = [], [], []
    try:
        for lo in range(0, images.shape[0], batch_size):
            img = images[lo:lo + batch_size].to(device)
            msk = masks[lo:lo + batch_size].to(device)
            out = generator(img, msk)
            with replaced_attention(generator, "identity"):
                ref = generator(img, msk)
            diff = (out.composite.float() - ref.composite.float()).abs().flatten(1).amax(1)
            changed.append(diff > tol)
            hole = out.feature_hole.bool()
            any_hole = hole.flatten(1).any(1)
            has_hole.append(any_hole)
            has_window.append(any_hole & valid_sources(hole, ksize).any(1))
    finally:
        generator.train(was_training)
    changed_t, hole_t, window_t = (torch.cat(v).cpu() for v in (changed, has_hole, has_window))
    n = int(changed_t.numel())
    return {"n": n, "changed": float(changed_t.float().mean()), "has_hole_cell": float(hole_t.float().mean()),
            "has_window": float(window_t.float().mean()), "per_image_changed": changed_t,
            "per_image_has_hole_cell": hole_t, "per_image_has_window": window_t}


def feature_cosine_by_distance(features: Tensor, hole: Tensor, max_distance: int | None = None) -> dict[int, float]:
    """Mean cosine similarity between the features of two *known* cells, by their Chebyshev distance.

    ``features [B,C,h,w]`` (e.g. what entered the attention layer, from
    :func:`run_with_attention_input`), ``hole`` bool ``[B,1,h,w]``. Returns ``{distance: mean cosine}``.
    """
    B, C, h, w = features.shape
    f = features.float().flatten(2).transpose(1, 2)  # [B, N, C]
    f = f / (f.norm(dim=-1, keepdim=True) + 1e-8)
    idx = torch.arange(h * w)
    dist = _cheb(idx[:, None], idx[None, :], w)
    max_distance = max_distance or max(h, w) - 1
    sums = torch.zeros(max_distance + 1)
    counts = torch.zeros(max_distance + 1)
    for i in range(B):
        known = ~hole[i, 0].bool().flatten().cpu()
        cos = (f[i] @ f[i].T).cpu()
        pair = known[:, None] & known[None, :]
        for d in range(1, max_distance + 1):
            sel = pair & (dist == d)
            sums[d] += cos[sel].sum()
            counts[d] += sel.sum()
    return {d: float(sums[d] / counts[d]) for d in range(1, max_distance + 1) if counts[d] > 0}


def format_statistics(rows: dict[str, dict], keys: Sequence[str] | None = None) -> str:
    """A Markdown table of :func:`measure_attention`'s rows (shares in %)."""
    keys = list(keys or [k for k in next(iter(rows.values())) if k != "cells"])
    lines = ["| row | cells | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, r in rows.items():
        vals = [("-" if k not in r or r[k] != r[k] else f"{100 * r[k]:.1f}") for k in keys]
        lines.append(f"| {name} | {int(r.get('cells', 0))} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
