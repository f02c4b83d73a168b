"""The CSA layer's closest peers, written in the same framework so they can run beside it.

- :class:`ContextualAttention` (DeepFill v1/v2, Yu et al. 2018/2019): soft attention over 3x3 patches.
  Every known 3x3 patch is a *filter*; the cosine similarity of each position's window with each filter,
  optionally "propagated" along diagonals, goes through a softmax with scale 10; the hole is then
  repainted by pasting the known patches weighted by that attention (a transposed convolution).
- :class:`ShiftAttention` (Shift-Net, Yan et al. 2018): hard attention over single feature vectors.
  Every hole position takes a copy of its most similar known vector (argmax of cosine similarity), and
  the copies are *concatenated* to the input instead of replacing it.

CSA (``csa_lib.csa``) sits between the two: a hard argmax like the shift, plus a sequential blend with
the previously generated hole vector. All three take the same inputs: features ``x [B, C, H, W]`` and a
bool hole mask ``hole [B, 1, H, W]`` (True = hole), each image with its own mask.

Written from the papers' descriptions, not from the DeepFill or Shift-Net code. Differences from DeepFill
that are deliberate (each one documented where it happens):

1. the query window is normalised too (true cosine similarity); DeepFill normalises only the filters,
   so the query's norm acts as a per-position softmax temperature (``normalize_query=False`` restores it);
2. hole sources get a score of -inf before the softmax, so the weights sum to exactly 1 over valid
   sources (DeepFill multiplies the scores by the mask, which leaves hole sources a share of the softmax
   mass that is then zeroed, so its weights sum to less than 1);
3. propagation works on the 2-D grid (no wrap-around from the end of one row to the start of the next,
   which flattening the score map to 1-D introduces in DeepFill);
4. overlapping pasted patches are averaged by the actual number of overlaps (fewer at the image border),
   not by a fixed constant.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ContextualAttention", "ShiftAttention", "valid_sources", "attention_argmax"]

_EPS = 1e-8  # keeps normalisation of all-zero vectors finite (their cosine similarity is then 0)


def _check_inputs(x: Tensor, hole: Tensor) -> Tensor:
    """Validate ``x [B,C,H,W]`` and ``hole [B,1,H,W]``; return the hole as bool ``[B,1,H,W]``."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    B, _, H, W = x.shape
    if hole.shape != (B, 1, H, W):
        raise ValueError(f"hole must be [B, 1, H, W] = {(B, 1, H, W)}, got {tuple(hole.shape)}")
    if hole.dtype != torch.bool:
        # A float 0/1 mask is accepted, but anything else is almost certainly a mistake (e.g. an image).
        if not torch.all((hole == 0) | (hole == 1)):
            raise ValueError("hole must be bool or hold only 0/1 values (1 = hole)")
        hole = hole > 0.5
    return hole.to(x.device)


def valid_sources(hole: Tensor, ksize: int = 3) -> Tensor:
    """Which positions may serve as a source patch: ``bool [B, H*W]``.

    A position is a valid source when its whole ``ksize x ksize`` window lies inside the image and holds
    no hole position. We require the *whole window* to be known (not only its centre) because the
    transposed convolution pastes the whole window: a window that touched the hole would copy hole
    content (garbage) back into the hole, and one that left the image would paste zero padding.
    ``hole`` is bool ``[B, 1, H, W]``; with ``ksize=1`` this is simply "known".
    """
    known = (~hole).to(torch.float32)
    # Zero padding counts as "not known", so windows that leave the image are never complete.
    ones = torch.ones(1, 1, ksize, ksize, device=hole.device)
    n_known = F.conv2d(known, ones, padding=ksize // 2)
    return (n_known > ksize * ksize - 0.5).flatten(1)


def attention_argmax(scores: Tensor, hole: Tensor) -> Tensor:
    """Most-attended source of each hole position: ``LongTensor [B, H*W]`` (flat index ``h*W + w``).

    ``scores [B, H*W, H, W]`` as returned by :class:`ContextualAttention`; ``hole`` bool ``[B,1,H,W]``.
    Known positions, and hole positions with no valid source (all-zero scores), get -1 — the same
    convention as :class:`ShiftAttention`'s sources, so the two can be compared and drawn the same way.
    """
    best_w, best = scores.flatten(2).max(dim=1)  # over sources -> [B, H*W]
    keep = hole.flatten(1) & (best_w > 0)
    return torch.where(keep, best, torch.full_like(best, -1))


def _diag_sum(s: Tensor, a: int, b: int) -> Tensor:
    """out[.., i, .., j, ..] = sum over o in {-1, 0, 1} of s[.., i+o, .., j+o, ..] along dims a and b
    (which must have the same size); terms that fall outside count as 0."""
    n = s.shape[a]
    out = s.clone()
    if n < 2:
        return out

    def idx(sl: slice) -> tuple:
        ix = [slice(None)] * s.dim()
        ix[a] = ix[b] = sl
        return tuple(ix)

    lo, hi = idx(slice(0, n - 1)), idx(slice(1, n))
    out[lo] += s[hi]  # o = +1
    out[hi] += s[lo]  # o = -1
    return out


def _propagate(s: Tensor, H: int, W: int) -> Tensor:
    """DeepFill's "attention propagation": s'(p, q) = sum over o in {-1,0,1}^2 of s(p + o, q + o).

    ``s [B, N, N]`` holds scores for (target p, source q) with N = H*W. DeepFill convolves the flattened
    [N, N] score matrix with a 3x3 identity kernel, which sums along its diagonals: the neighbour of p
    matched against the *same* neighbour of q. A good match whose neighbours also match (a coherent shift)
    is rewarded, which makes the attention map smoother. Terms that fall outside the image count as 0.
    The 3x3 sum is separable (rows, then columns), so two passes of 3 terms replace one of 9.
    """
    B = s.shape[0]
    s5 = s.reshape(B, H, W, H, W)  # (target y, target x, source y, source x)
    s5 = _diag_sum(s5, 1, 3)  # vertical neighbours: target y + o with source y + o
    s5 = _diag_sum(s5, 2, 4)  # horizontal neighbours: target x + o with source x + o
    return s5.reshape(B, H * W, H * W)


class ContextualAttention(nn.Module):
    """Contextual attention (DeepFill): fill the hole with known patches, softly weighted.

    For target position p and source position q (q a valid source, see :func:`valid_sources`):

        s(p, q)  = cos(window_k(p), window_k(q))           (k x k windows of all C channels, zero padded)
        s'(p, q) = sum_{o in 3x3} s(p+o, q+o)              (only with ``propagate=True``; all pairs,
                                                            before hole sources are masked, as DeepFill)
        w(p, q)  = softmax_q(scale * s'(p, q))             (over valid sources only; 0 on the others)
        y        = average over overlapping windows of  sum_q w(p, q) * window_k(q)  pasted at p
        y_p      = x_p at known positions (the layer only repaints the hole)

    The matching is the paper's "patches as convolution filters" and the paste is its transposed
    convolution; here both are written as one batched matrix product (``unfold`` then ``bmm``, and
    ``bmm`` then ``fold``), which is the same arithmetic. This lets each image of a batch use its own
    mask and its own filter bank without a Python loop over images; the cost is an [N, N] score matrix
    per image (N = H*W), the same memory the convolution's output needs anyway.

    Degenerate masks: no hole -> ``y == x`` exactly. No valid source (everything hole, or no complete
    k x k window of known positions) -> nothing to copy from, so the hole keeps its input values
    (``y == x``) and the scores are all 0; no NaN either way.

    Args:
        ksize: odd patch size (3 in DeepFill at the attention's resolution).
        scale: softmax temperature multiplier (DeepFill: 10).
        propagate: apply the 3x3 diagonal score fusion before the softmax.
        normalize_query: normalise the query window too (cosine); False = DeepFill's filter-only
            normalisation.
    """

    def __init__(self, ksize: int = 3, scale: float = 10.0, propagate: bool = True,
                 normalize_query: bool = True):
        super().__init__()
        if ksize < 1 or ksize % 2 == 0:
            raise ValueError(f"ksize must be a positive odd integer, got {ksize}")
        self.ksize, self.scale = ksize, float(scale)
        self.propagate, self.normalize_query = propagate, normalize_query

    def extra_repr(self) -> str:
        return (f"ksize={self.ksize}, scale={self.scale}, propagate={self.propagate}, "
                f"normalize_query={self.normalize_query}")

    def attention(self, x: Tensor, hole: Tensor) -> Tensor:
        """Softmax weights ``[B, N, N]`` indexed (target p, source q), N = H*W; rows sum to 1 where a
        valid source exists, else 0. ``x [B,C,H,W]``, ``hole`` bool ``[B,1,H,W]``."""
        hole = _check_inputs(x, hole)
        B, _, H, W = x.shape
        k = self.ksize
        windows = F.unfold(x, k, padding=k // 2)  # [B, C*k*k, N]: column q = window of position q
        filters = F.normalize(windows, dim=1, eps=_EPS)  # unit-norm source patches
        queries = filters if self.normalize_query else windows
        s = torch.bmm(queries.transpose(1, 2), filters)  # [B, N(target), N(source)]
        if self.propagate:
            s = _propagate(s, H, W)
        valid = valid_sources(hole, k)  # [B, N]
        has_source = valid.any(dim=1)[:, None, None]  # [B, 1, 1]
        # -inf (not 0) on invalid sources: they get exactly zero softmax mass and the rows sum to 1.
        # An image without any valid source would get all -inf rows (NaN, also in the backward pass),
        # so its rows are left unmasked here and zeroed after the softmax instead.
        blocked = ~valid[:, None, :] & has_source
        w = torch.softmax((self.scale * s).masked_fill(blocked, float("-inf")), dim=2)
        return torch.where(has_source, w, torch.zeros_like(w))

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False):
        """``x [B, C, H, W]`` (any real values), ``hole`` bool ``[B, 1, H, W]`` (True = hole).

        Returns ``y [B, C, H, W]`` (hole repainted, known positions bit-identical to ``x``), or
        ``(y, scores)`` with ``scores [B, H*W, H, W]``: channel q, pixel p = weight of source q for
        target p (DeepFill's layout: one channel per source patch), 0 on invalid sources.
        """
        hole = _check_inputs(x, hole)
        B, C, H, W = x.shape
        k = self.ksize
        w = self.attention(x, hole)  # [B, N(target), N(source)]
        windows = F.unfold(x, k, padding=k // 2)  # raw (unnormalised) patches are what gets pasted
        pasted = torch.bmm(windows, w.transpose(1, 2))  # [B, C*k*k, N(target)]: blended window per p
        summed = F.fold(pasted, (H, W), k, padding=k // 2)  # add overlapping windows = transposed conv
        # Each position is covered by up to k*k target windows (fewer at the border): average them.
        cover = F.fold(torch.ones(1, k * k, H * W, dtype=x.dtype, device=x.device), (H, W), k,
                       padding=k // 2)
        filled = summed / cover
        has_source = valid_sources(hole, k).any(dim=1)[:, None, None, None]  # [B,1,1,1]
        y = torch.where(hole & has_source, filled, x)
        if return_attention:
            return y, w.transpose(1, 2).reshape(B, H * W, H, W)
        return y


class ShiftAttention(nn.Module):
    """Shift-Net's shift connection: copy the best-matching known vector into each hole position.

    For every hole position p: c(p) = argmax over known q of cos(x_p, x_q) (1x1 "patches", hard argmax,
    ties go to the lowest raster index), shift_p = x_{c(p)}; shift is 0 at known positions. The output
    is ``cat([x, shift], dim=1)`` — Shift-Net *concatenates* the shifted features and lets the following
    convolution decide how to mix them, whereas CSA and contextual attention *replace* the hole.

    Degenerate masks: no hole -> the shift half is all 0. No known position -> nothing to copy: the
    shift half is 0 and every source is -1. A hole vector that is all 0 has cosine 0 with everything,
    so it takes the first known position.
    """

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False):
        """``x [B, C, H, W]``, ``hole`` bool ``[B, 1, H, W]`` (True = hole).

        Returns ``y [B, 2C, H, W]`` = ``[x, shifted]``, or ``(y, source)`` with ``source
        LongTensor [B, H*W]``: flat index ``h*W + w`` of the copied known position for hole positions,
        -1 at known positions (and everywhere when the image has no known position).
        """
        hole = _check_inputs(x, hole)
        B, C, H, W = x.shape
        f = x.flatten(2)  # [B, C, N]
        fn = F.normalize(f, dim=1, eps=_EPS)
        sim = torch.bmm(fn.transpose(1, 2), fn)  # [B, N(target), N(source)] cosine similarities
        is_hole = hole.flatten(1)  # [B, N]
        sim = sim.masked_fill(is_hole[:, None, :], float("-inf"))  # only known positions are sources
        best = sim.argmax(dim=2)  # [B, N]; first index among ties (an all -inf row gives 0, unused)
        has_known = (~is_hole).any(dim=1, keepdim=True)  # [B, 1]
        use = is_hole & has_known  # positions that actually receive a copy
        copied = torch.gather(f, 2, best[:, None, :].expand(B, C, H * W))  # [B, C, N]
        shift = torch.where(use[:, None, :], copied, torch.zeros_like(copied)).reshape(B, C, H, W)
        y = torch.cat([x, shift], dim=1)
        if return_attention:
            return y, torch.where(use, best, torch.full_like(best, -1))
        return y
