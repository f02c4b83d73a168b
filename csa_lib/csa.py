"""The Coherent Semantic Attention (CSA) layer of Liu et al., ICCV 2019.

Two implementations of the same computation:

* :func:`csa_reference` -- a plain per-image loop that follows the paper line by line (the teaching
  version and the test oracle; it works in float64 and is differentiable, but slow).
* :class:`CoherentSemanticAttention` -- the fast layer used by the networks: one batched similarity
  matmul, a masked argmax and gathers, then the sequential T-step chain run by a compiled kernel
  (numba on CPU, Triton on CUDA, a plain torch loop when neither is available).

The algorithm (features F with N = H*W positions, known set K, holes p_1 < ... < p_T in raster order):

    search:    c(p) = argmax_{q in K} D_max(p, q),   s_t = D_max(p_t, c(p_t)),   k_t = f_{c(p_t)}
    generate:  m_1 = k_1
               m_t = a_t m_{t-1} + b_t k_t   with   d_t = D_ad(m_{t-1}, f_{p_t})
    output:    y_p = f_p on known positions, y_{p_t} = m_t on holes

``semantics="official"`` reproduces the official code (KumapowerLIU/CSA-inpainting) exactly:
    D_max(p, q) = <f_p, f_q> / (||f_q|| + 1e-8)              (the query f_p is not normalised)
    D_ad        = <m_{t-1}, f_{p_t} / (||f_{p_t}|| + 1e-8)>   (the generated vector is not normalised)
    a_t = d_t / (d_t + s_t),  b_t = s_t / (d_t + s_t)          (no guard: may explode or be NaN)

``semantics="paper"`` uses cosine similarities for both scores, as the paper describes, plus a guard
(the official code has none; signed features make d_t + s_t reach 0, official issue #26):
    d' = max(d_t, 0),  s' = max(s_t, 0) + GUARD_EPS,  a_t = d' / (d' + s'),  b_t = s' / (d' + s')
a_t + b_t = 1 exactly, so m_t is always a convex blend of m_{t-1} and k_t; when the previous vector
points away from the current feature (d_t <= 0) the layer copies k_t; when both scores are <= 0 it
also copies k_t (a = 0, b = 1). Never NaN, never larger than the largest input vector.

Conventions shared by both implementations:
* argmax ties go to the known position with the smallest raster index (torch.argmax's rule);
* known positions are returned unchanged (the official code writes f_{c(p)} there, c(p) being the
  best known match of the known position p: by Cauchy-Schwarz that is p itself, except when another
  known vector is an exact positive multiple of f_p, which does not happen with real features);
* an image without holes is returned unchanged (count 0); an image without any known position has
  nothing to copy from: it is returned unchanged and its attention reports count 0;
* every image of a batch has its own mask and its own T (the official code shares one mask).

Backward: ``backward="autograd"`` is the true gradient of the forward (through D_max, D_ad, the
coefficients and the gathered k_t; the argmax is piecewise constant, so it has no gradient).
``backward="official"`` is the official custom rule grad_x = grad_y + W^T grad_y with W the N x N
attention matrix truncated to integers (see :class:`_OfficialBackward`): holes get their own gradient
unchanged, known positions twice theirs (plus the first hole's at its source), nothing flows through
the argmax, the scores or the coefficients.

Cost: the search is one batched [T x C] @ [C x N] matmul, the floor of the layer (the numba path
compacts the known columns first, so it is [T x C] @ [C x K] with K = N - T known positions); the
chain is T dependent steps of a dot product and an axpy over C floats per image, run by a compiled
kernel (numba on CPU, Triton on CUDA) with a hand-written reverse recurrence for the backward. On CPU
everything else is one streaming pass over F per kernel, the images of a batch in parallel and a
single image split over the threads by channels (see :mod:`csa_lib._csa_kernels`). With neither numba
nor Triton the chain runs as T small torch ops per step (correct but slow, slower still under autograd).
Which back-end runs, on how many threads, with which scratch memory, and the fall-back when a Triton
kernel fails at its first launch: :mod:`csa_lib._csa_backend` (nothing there changes a number).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from . import _csa_backend as backend
from ._csa_backend import available_chains  # public here: csa.available_chains
from .config import CSA_BACKWARDS as BACKWARDS
from .config import CSA_SEMANTICS as SEMANTICS
from .config import check_choice

# Old names of two back-end helpers, still read by benchmarks/bench_csa.py and benchmarks/gpu_check.py.
_cores_busy, _pick_chain = backend.cores_busy, backend.pick_chain

__all__ = ["CoherentSemanticAttention", "CSAAttention", "csa_reference", "available_chains",
           "NORM_EPS", "GUARD_EPS"]

NORM_EPS = 1e-8  # added to norms before dividing (the official code's value)
GUARD_EPS = 1e-6  # paper mode: added to max(s, 0) so that d' + s' > 0 always
CHAINS = ("auto", "torch", "numba", "triton")


# ----------------------------------------------------------------------------------------------------
# Attention record
# ----------------------------------------------------------------------------------------------------
@dataclass
class CSAAttention:
    """What the layer did, padded per batch (T_max = max holes over the images of the batch).

    count:      LongTensor [B]            number of generated hole positions T of each image
    hole_index: LongTensor [B, T_max]     flat raster index h*W+w of the t-th hole (-1 = padding)
    source:     LongTensor [B, T_max]     flat index of the chosen known position c(p_t) (-1 = padding)
    d_max:      Tensor [B, T_max]         s_t, the search score of the chosen source
    d_ad:       Tensor [B, T_max]         d_t, similarity of m_{t-1} and f_{p_t} (0 at t = 1)
    a, b:       Tensor [B, T_max]         chain coefficients (a = 0, b = 1 at t = 1)
    rows:       Tensor [B, T_max, H*W]    dense attention rows w_t (only with return_rows=True):
                                          w_1 = e_{c(p_1)}, w_t = a_t w_{t-1} + b_t e_{c(p_t)}, m_t = w_t F
    size:       (H, W)
    Padded entries of the float tensors are 0. All tensors are detached.
    """

    count: Tensor
    hole_index: Tensor
    source: Tensor
    d_max: Tensor
    d_ad: Tensor
    a: Tensor
    b: Tensor
    rows: Tensor | None
    size: tuple[int, int]

    def image(self, i: int) -> dict:
        """Unpadded tensors of image i: keys hole_index, source, d_max, d_ad, a, b (and rows), count, size."""
        T = int(self.count[i])
        out = {"count": T, "size": self.size}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and f.name != "count":
                out[f.name] = v[i, :T]
        return out


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------
def _check_inputs(x: Tensor, hole: Tensor) -> tuple[Tensor, Tensor]:
    """Validate x [B,C,H,W] (float) and hole [B or 1,1,H,W] (bool or 0/1); return hole as bool [B,1,H,W]."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"CSA: x must be a 4-D tensor [B, C, H, W], got {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"CSA: x must be a floating tensor, got dtype {x.dtype}")
    if not isinstance(hole, Tensor) or hole.dim() != 4 or hole.shape[1] != 1:
        raise ValueError(f"CSA: hole must be a 4-D tensor [B, 1, H, W], got {_shape(hole)}")
    B, _, H, W = x.shape
    if hole.shape[2:] != (H, W) or hole.shape[0] not in (1, B):
        raise ValueError(f"CSA: hole {tuple(hole.shape)} does not match x {tuple(x.shape)} "
                         f"(expected [{B} or 1, 1, {H}, {W}])")
    if hole.device != x.device:
        raise ValueError(f"CSA: hole is on {hole.device} but x is on {x.device}")
    if hole.dtype != torch.bool:
        if hole.is_complex() or not ((hole == 0) | (hole == 1)).all():
            raise ValueError("CSA: hole must be bool or contain only 0 and 1 (1 = hole); "
                             f"got dtype {hole.dtype} with other values")
        hole = hole != 0
    return x, hole.expand(B, 1, H, W)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_semantics(semantics: str) -> bool:
    """Return True for the paper semantics; raise on unknown names."""
    check_choice("CSA: semantics", semantics, SEMANTICS)
    return semantics == "paper"


def _normalise(v: Tensor) -> Tensor:
    """v / (||v|| + NORM_EPS) along the last dim."""
    return v / (v.norm(dim=-1, keepdim=True) + NORM_EPS)


def _coefficients(d: Tensor, s: Tensor, paper: bool) -> tuple[Tensor, Tensor]:
    """(a, b) of the chain from d = D_ad and s = D_max; the paper mode applies the guard."""
    if paper:
        d = d.clamp(min=0)
        s = s.clamp(min=0) + GUARD_EPS
    return d / (d + s), s / (d + s)


# ----------------------------------------------------------------------------------------------------
# The reference: a per-image loop that reads like the paper
# ----------------------------------------------------------------------------------------------------
def csa_reference(x: Tensor, hole: Tensor, semantics: str = "paper", return_attention: bool = False,
                  return_rows: bool = False):
    """CSA by the book, one image and one hole at a time (slow; the oracle for tests).

    x: [B, C, H, W] float features (any sign), hole: bool [B, 1, H, W] (True = hole).
    Returns y [B, C, H, W] (differentiable w.r.t. x), or (y, CSAAttention) with return_attention or
    return_rows. See the module docstring for both semantics and the paper-mode guard.
    """
    paper = _check_semantics(semantics)
    x, hole = _check_inputs(x, hole)
    B, C, H, W = x.shape
    N = H * W
    outputs, records = [], []
    for i in range(B):
        f = x[i].reshape(C, N).t()                    # f[p] = feature vector at raster position p
        is_hole = hole[i, 0].reshape(N).tolist()
        holes = [p for p in range(N) if is_hole[p]]   # raster order p_1 < p_2 < ...
        known = [q for q in range(N) if not is_hole[q]]
        y = f.clone()
        rec = dict(hole_index=[], source=[], d_max=[], d_ad=[], a=[], b=[], rows=[])
        if holes and known:
            f_known = f[known]                        # [K, C]
            # 1. Search: the best known match of every hole, a hard argmax.
            sources, scores = [], []
            for p in holes:
                query = _normalise(f[p]) if paper else f[p]
                sim = _normalise(f_known) @ query     # D_max(p, q) for all known q, [K]
                j = int(torch.argmax(sim))            # first maximum wins ties
                sources.append(known[j])
                scores.append(sim[j])
            # 2. Generate: the chain in raster order, each step blends the previous output and k_t.
            m_prev, w_prev = None, None
            for t, p in enumerate(holes):
                k_t, s_t = f[sources[t]], scores[t]
                if t == 0:
                    d_t, a_t, b_t = torch.zeros_like(s_t), torch.zeros_like(s_t), torch.ones_like(s_t)
                    m_t = k_t
                else:
                    m_ad = _normalise(m_prev) if paper else m_prev
                    d_t = m_ad @ _normalise(f[p])     # D_ad(m_{t-1}, f_{p_t})
                    a_t, b_t = _coefficients(d_t, s_t, paper)
                    m_t = a_t * m_prev + b_t * k_t
                y[p] = m_t
                if return_rows:                       # w_t: m_t as a combination of the known features
                    w_t = torch.zeros(N, dtype=x.dtype, device=x.device)
                    if w_prev is not None:
                        w_t = a_t.detach() * w_prev
                    w_t[sources[t]] += b_t.detach()
                    rec["rows"].append(w_t)
                    w_prev = w_t
                m_prev = m_t
                for key, v in zip(("hole_index", "source", "d_max", "d_ad", "a", "b"),
                                  (p, sources[t], s_t, d_t, a_t, b_t)):
                    rec[key].append(v)
        outputs.append(y.t().reshape(C, H, W))
        records.append(rec)
    y = torch.stack(outputs)
    if not (return_attention or return_rows):
        return y
    return y, _pack_records(records, x, return_rows)


def _pack_records(records: list[dict], x: Tensor, with_rows: bool) -> CSAAttention:
    """Pad the per-image lists of csa_reference into a CSAAttention."""
    B, _, H, W = x.shape
    T_max = max(len(r["hole_index"]) for r in records)
    count = torch.tensor([len(r["hole_index"]) for r in records], dtype=torch.long)
    out = {"count": count.to(x.device)}
    for key, dtype, pad in (("hole_index", torch.long, -1), ("source", torch.long, -1), ("d_max", x.dtype, 0),
                            ("d_ad", x.dtype, 0), ("a", x.dtype, 0), ("b", x.dtype, 0)):
        t = torch.full((B, T_max), pad, dtype=dtype, device=x.device)
        for i, r in enumerate(records):
            if r[key]:
                t[i, :len(r[key])] = torch.stack([torch.as_tensor(v) for v in r[key]]).detach().to(t)
        out[key] = t
    rows = None
    if with_rows:
        rows = torch.zeros(B, T_max, H * W, dtype=x.dtype, device=x.device)
        for i, r in enumerate(records):
            if r["rows"]:
                rows[i, :len(r["rows"])] = torch.stack(r["rows"])
    return CSAAttention(rows=rows, size=(H, W), **out)


# ----------------------------------------------------------------------------------------------------
# The fast layer
# ----------------------------------------------------------------------------------------------------
def _hole_order(holeflat: Tensor):
    """Raster order of the holes of each image: holeflat bool [B, N] ->
    count [B], order [B, T] (flat hole index, 0 on padding), valid bool [B, T], (bi, ti) of valid steps.
    Images without a known position get count 0 (nothing to copy from)."""
    B, N = holeflat.shape
    holeflat = holeflat & ~holeflat.all(1, keepdim=True)
    count = holeflat.sum(1)
    bi, pi = holeflat.nonzero(as_tuple=True)            # row-major: raster order within each image
    ti = pi - (~holeflat).cumsum(1)[bi, pi]            # t = p - (known positions before p)
    T = int(count.max()) if B else 0                    # host synchronisation, once per call
    order = torch.zeros(B, T, dtype=torch.long, device=holeflat.device)
    order[bi, ti] = pi
    valid = torch.arange(T, device=holeflat.device) < count[:, None]
    return count, order, valid, bi, ti


def _search(Fc: Tensor, holeflat: Tensor, order: Tensor, paper: bool):
    """Batched search. Fc: features [B, C, N], holeflat bool [B, N], order [B, T] (hole positions).

    Returns source [B, T] (argmax, no graph) and, differentiable w.r.t. Fc, the gathered
    q [B,T,C] (hole features f_{p_t}) and k [B,T,C] (best known features f_{c(p_t)}).
    The argmax is the same for both semantics: paper's cosine is official's score divided by the
    positive ||f_p|| + eps of the row.
    """
    B, C, N = Fc.shape
    T = order.shape[1]
    q_cols = torch.gather(Fc, 2, order[:, None, :].expand(B, C, T))   # [B, C, T] hole features
    with torch.no_grad():
        inv_norm = 1.0 / (Fc.square().sum(1).sqrt() + NORM_EPS)        # [B, N] (10x faster than .norm(dim=1))
        sim = torch.bmm(q_cols.detach().transpose(1, 2), Fc.detach())   # [B, T, N] = <f_p, f_q>
        sim.mul_(inv_norm[:, None, :])                                  # official D_max
        sim.masked_fill_(holeflat[:, None, :], float("-inf"))           # sources must be known
        source = sim.argmax(dim=2)                                      # first maximum wins ties
    q = q_cols.transpose(1, 2).contiguous()                             # [B, T, C]
    k = torch.gather(Fc, 2, source[:, None, :].expand(B, C, T)).transpose(1, 2).contiguous()
    return source, q, k


def _scores(q: Tensor, k: Tensor, paper: bool):
    """g = q / (||q|| + eps) [B,T,C] and s = D_max(p_t, c(p_t)) [B,T] from q, k [B,T,C] (torch ops)."""
    q_inv = 1.0 / (q.norm(dim=-1) + NORM_EPS)
    g = q * q_inv[..., None]
    s = (q * k).sum(-1) / (k.norm(dim=-1) + NORM_EPS)
    return g, (s * q_inv if paper else s)


def _chain_torch(k: Tensor, g: Tensor, s: Tensor, valid: Tensor, paper: bool):
    """The generate step as plain torch ops over the batch (autograd handles its backward).

    k, g: [B,T,C] (best known features, normalised hole features), s: [B,T], valid: bool [B,T].
    Returns m [B,T,C] and d, a, b [B,T]. Padded steps keep m unchanged and report 0.
    """
    B, T, C = k.shape
    if T == 0:
        z = s.new_zeros(B, 0)
        return k.new_zeros(B, 0, C), z, z, z
    m = k[:, 0]
    zero = torch.zeros_like(s[:, 0])
    ms, ds, as_, bs = [m], [zero], [zero], [valid[:, 0].to(s.dtype)]    # m_1 = k_1: a = 0, b = 1
    for t in range(1, T):
        v = valid[:, t]
        m_ad = _normalise(m) if paper else m
        d = (m_ad * g[:, t]).sum(-1)
        a, b = _coefficients(d, s[:, t], paper)
        m_new = a[:, None] * m + b[:, None] * k[:, t]
        m = torch.where(v[:, None], m_new, m)
        ms.append(m)
        ds.append(torch.where(v, d, zero))
        as_.append(torch.where(v, a, zero))
        bs.append(torch.where(v, b, zero))
    return torch.stack(ms, 1), torch.stack(ds, 1), torch.stack(as_, 1), torch.stack(bs, 1)


def _sanitise_padding(k: Tensor, g: Tensor, s: Tensor, valid: Tensor):
    """Padded steps get k = g = 0, s = 1 so that no 0/0 appears there (NaN * 0 = NaN in backward)."""
    v = valid[..., None]
    return (torch.where(v, k, torch.zeros_like(k)), torch.where(v, g, torch.zeros_like(g)),
            torch.where(valid, s, torch.ones_like(s)))


def _rows(source: Tensor, a: Tensor, b: Tensor, count: Tensor, N: int, chain: str = "torch") -> Tensor:
    """Dense attention rows w_t [B,T,N] by the recurrence w_t = a_t w_{t-1} + b_t e_{c(p_t)}."""
    B, T = source.shape
    if chain == "numba":
        backend.numba_threads(B)
        rows = a.new_zeros(B, T, N)
        backend.kernels().attention_rows(_np(source), _np(a), _np(b), _np(count), rows.numpy())
        return rows
    rows = a.new_zeros(B, T, N)
    w = a.new_zeros(B, N)
    for t in range(T):
        w = w * a[:, t, None]
        w = w.scatter_add(1, source[:, t, None].clamp(min=0), b[:, t, None])
        rows[:, t] = w
    valid = (torch.arange(T, device=a.device) < count[:, None])[..., None]
    return torch.where(valid, rows, torch.zeros_like(rows))


def _csa_forward(x: Tensor, hole: Tensor, paper: bool, chain: str, want_rows: bool):
    """The fast forward: returns y [B,C,H,W] (differentiable) and a CSAAttention.

    chain "torch": everything in torch ops, autograd differentiates it (slow chain, no compiled code).
    Compiled chains: one autograd.Function for the whole layer with a hand-written backward
    (:class:`_NumbaCSA` on CPU, :class:`_TritonCSA` with the Triton chain).
    """
    B, C, H, W = x.shape
    N = H * W
    holeflat = hole.reshape(B, N)
    if chain == "numba":                      # the kernels pad order and source with -1, s with 0
        y, count, order, source, s, d, a, b = _NumbaCSA.apply(x, holeflat, paper)
        att = CSAAttention(count=count, hole_index=order, source=source, d_max=s, d_ad=d, a=a, b=b,
                           rows=None, size=(H, W))
    else:
        if chain == "torch":
            y, count, order, source, s, d, a, b = _csa_torch(x, holeflat, paper)
        else:
            y, count, order, source, s, d, a, b = _TritonCSA.apply(x, holeflat, paper)
        valid = torch.arange(order.shape[1], device=x.device) < count[:, None]
        zero = torch.zeros_like(s)
        att = CSAAttention(count=count, hole_index=torch.where(valid, order, -1),
                           source=torch.where(valid, source, -1), d_max=torch.where(valid, s, zero).detach(),
                           d_ad=d.detach(), a=a.detach(), b=b.detach(), rows=None, size=(H, W))
    if want_rows:
        att.rows = _rows(att.source, att.a, att.b, count, N, chain)
    return y, att


def _csa_torch(x: Tensor, holeflat: Tensor, paper: bool):
    """CSA in plain torch ops (differentiable by autograd). Returns y and the attention tensors."""
    B, C, H, W = x.shape
    Fc = x.reshape(B, C, H * W)                                       # a view for NCHW-contiguous x
    count, order, valid, bi, ti = _hole_order(holeflat)
    source, q, k = _search(Fc, holeflat, order, paper)
    g, s = _scores(q, k, paper)
    m, d, a, b = _chain_torch(*_sanitise_padding(k, g, s, valid), valid, paper)
    y = Fc.clone()
    y[bi, :, order[bi, ti]] = m[bi, ti]                               # holes <- m_t, known unchanged
    return y.view(B, C, H, W), count, order, source, s, d, a, b


class _NumbaCSA(torch.autograd.Function):
    """The whole layer on CPU: numba kernels around one torch matmul, and a hand-written backward
    (the true gradient). See :mod:`csa_lib._csa_kernels` for the kernels and their memory layout.

    forward(x [B,C,H,W], holeflat bool [B,N], paper) -> y [B,C,H,W] and, not differentiable,
    count [B], order [B,T], source [B,T] (-1 on padding), s, d, a, b [B,T] (0 on padding).
    backward: dL/dy at the holes -> the reverse recurrence (normalisations fused in) gives dL/dq and
    dL/dk -> dL/dx is dL/dy with the hole columns replaced by dL/dq (y does not contain x there) and
    dL/dk added at the source columns.
    """

    @staticmethod
    def forward(ctx, x, holeflat, paper):
        S = backend.numba_threads(x.shape[0])  # first: numba's thread call can reset torch's count
        with backend.torch_threads(x.shape[0]):  # one thread per image on a busy machine
            return _NumbaCSA._forward(ctx, x, holeflat, paper, S)

    @staticmethod
    def _forward(ctx, x, holeflat, paper, S):
        kern = backend.kernels()
        B, C, H, W = x.shape
        Fc = x.detach().reshape(B, C, H * W).contiguous()
        F, hole = Fc.numpy(), holeflat.contiguous().numpy()
        count, T, K = kern.hole_counts(hole)
        count = torch.from_numpy(count)
        K = -(-K // 8) * 8                                  # a multiple of 8 suits the matmul
        rows = (B, T, kern.row_stride(C, x.element_size()))  # step rows, padded (see _csa_kernels)
        order, kidx, kcount = (torch.empty(*shape, dtype=torch.long) for shape in ((B, T), (B, K), (B,)))
        q = torch.empty(rows, dtype=x.dtype)                # hole features f_{p_t}, raster order
        Fk = backend.workspace("Fk", (B, C, K), x.dtype)           # known columns, compacted
        inv = backend.workspace("inv", (B, K), x.dtype)            # their 1 / (||f|| + eps)
        y = torch.empty_like(Fc)
        kern.search_inputs(F, hole, count.numpy(), NORM_EPS, S, order.numpy(), q.numpy(), Fk.numpy(),
                           kidx.numpy(), inv.numpy(), kcount.numpy(), y.numpy(),
                           backend.workspace("acc", (B, S, H * W), torch.float64).numpy())
        sim = torch.bmm(q[:, :, :C], Fk, out=backend.workspace("sim", (B, T, K), x.dtype))  # <f_p, f_q>
        source = torch.empty(B, T, dtype=torch.long)
        k, m = torch.empty(rows, dtype=x.dtype), torch.empty(rows, dtype=x.dtype)
        s, d, a, b = (torch.empty(B, T, dtype=x.dtype) for _ in range(4))
        dots = torch.empty(B, T, 5, dtype=torch.float64)    # the chain's dot products, for backward
        kern.generate(sim.numpy(), inv.numpy(), kidx.numpy(), kcount.numpy(), count.numpy(), order.numpy(), F,
                      q.numpy(), paper, NORM_EPS, GUARD_EPS, S, source.numpy(), k.numpy(), m.numpy(), s.numpy(),
                      d.numpy(), a.numpy(), b.numpy(), dots.numpy(), y.numpy())
        ctx.save_for_backward(q, k, s, m, d, a, b, dots, count, order, source)
        ctx.paper, ctx.x_shape = paper, x.shape
        outs = (count, order, source, s, d, a, b)
        ctx.mark_non_differentiable(*outs)
        return (y.view(B, C, H, W),) + outs

    @staticmethod
    def backward(ctx, gy, *_):
        S = backend.numba_threads(ctx.x_shape[0])
        with backend.torch_threads(ctx.x_shape[0]):
            return _NumbaCSA._backward(ctx, gy, S)

    @staticmethod
    def _backward(ctx, gy, S):
        q, k, s, m, d, a, b, dots, count, order, source = ctx.saved_tensors
        kern = backend.kernels()
        B, C, H, W = ctx.x_shape
        G = gy.reshape(B, C, H * W).contiguous()
        grad = torch.empty_like(G)
        gm, dq, dk = (backend.workspace(name, q.shape, q.dtype) for name in ("gm", "dq", "dk"))
        kern.backward(G.numpy(), order.numpy(), source.numpy(), count.numpy(), q.numpy(), k.numpy(), m.numpy(),
                      s.numpy(), d.numpy(), a.numpy(), b.numpy(), dots.numpy(), ctx.paper, NORM_EPS, GUARD_EPS, S,
                      gm.numpy(), dq.numpy(), dk.numpy(), grad.numpy())
        return grad.view(B, C, H, W), None, None


class _TritonCSA(torch.autograd.Function):
    """The whole layer with the Triton chain (CUDA) and a hand-written backward (the true gradient).

    forward(x [B,C,H,W], holeflat bool [B,N], paper) -> y [B,C,H,W] and, not differentiable,
    count [B], order [B,T], source [B,T], s, d, a, b [B,T].
    backward: gm = dL/dy at the holes -> chain backward (Triton) -> dL/dk, dL/dg, dL/ds ->
    dL/dq, dL/dk through the normalisations (_score_grads) -> scattered into dL/dx, whose hole
    columns are replaced (y does not contain x there) and whose source columns accumulate dL/dk.
    """

    @staticmethod
    def forward(ctx, x, holeflat, paper):
        B, C, H, W = x.shape
        Fc = x.reshape(B, C, H * W)
        count, order, valid, bi, ti = _hole_order(holeflat)
        source, q, k = _search(Fc, holeflat, order, paper)
        m, s, d, a, b = _triton_chain_forward(q, k, count, paper)
        y = _put_columns(Fc.clone(), order, m, count)                  # holes <- m_t
        ctx.save_for_backward(q, k, s, m, d, a, b, count, order, source)
        ctx.paper, ctx.x_shape = paper, x.shape
        outs = (count, order, source, s, d, a, b)
        ctx.mark_non_differentiable(*outs)
        return (y.view(B, C, H, W),) + outs

    @staticmethod
    def backward(ctx, gy, *_):
        q, k, s, m, d, a, b, count, order, source = ctx.saved_tensors
        B, C, H, W = ctx.x_shape
        T = order.shape[1]
        G = gy.reshape(B, C, H * W)
        gm = torch.gather(G, 2, order[:, None, :].expand(B, C, T)).transpose(1, 2).contiguous()
        dq, dk = _triton_chain_backward(gm, q, k, s, m, d, a, b, count, ctx.paper)
        grad = G.clone(memory_format=torch.contiguous_format)
        _put_columns(grad, order, dq, count)                           # y_p = m_t does not contain f_p
        _put_columns(grad, source, dk, count, add=True)                # the sources accumulate dL/dk
        return grad.view(B, C, H, W), None, None


def _put_columns(base: Tensor, order: Tensor, vals: Tensor, count: Tensor, add: bool = False) -> Tensor:
    """base[b, :, order[b, t]] = vals[b, t] (+= with add) for t < count[b], in place on base [B, C, N].

    One scatter; with add, scatter_add (padded vals must be 0). For set, padded steps repeat the
    last valid step (the same value written twice) and images with count 0 rewrite their own column 0,
    which keeps the scatter deterministic without a boolean selection.
    """
    B, T, C = vals.shape
    if T == 0:
        return base
    if add:
        return base.scatter_add_(2, order[:, None, :].expand(B, C, T), vals.transpose(1, 2))
    t = torch.arange(T, device=base.device)
    if not bool((count == T).all()):
        tt = torch.minimum(t[None, :], (count - 1).clamp(min=0)[:, None])       # [B, T]
        order = order.gather(1, tt)
        vals = vals.gather(1, tt[..., None].expand(B, T, C))
        empty = (count == 0)[:, None, None]
        vals = torch.where(empty, base[:, :, :1].transpose(1, 2), vals)
    return base.scatter_(2, order[:, None, :].expand(B, C, T), vals.transpose(1, 2))


def _score_grads(q, k, gk, gg, gs, paper):
    """Gradients w.r.t. the gathered q (hole) and k (source) features [B,T,C], given those w.r.t.
    k, g = q iq and s = <q, k> ik (official) or <q, k> ik iq (paper), with iq = 1/(||q|| + eps),
    ik = 1/(||k|| + eps); d(1/(||v|| + eps))/dv = -iv^2 v / ||v|| (0 at v = 0, as torch.norm)."""
    nq, nk = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    iq, ik = 1.0 / (nq + NORM_EPS), 1.0 / (nk + NORM_EPS)
    rq = torch.where(nq > 0, 1.0 / nq, torch.zeros_like(nq))
    rk = torch.where(nk > 0, 1.0 / nk, torch.zeros_like(nk))
    dot = (q * k).sum(-1, keepdim=True)
    gs = gs[..., None]
    dq = gg * iq - ((gg * q).sum(-1, keepdim=True) * iq * iq * rq) * q
    if paper:                                                         # s = dot ik iq
        dq = dq + gs * ik * iq * (k - (dot * iq * rq) * q)
        dk = gk + gs * iq * ik * (q - (dot * ik * rk) * k)
    else:                                                             # s = dot ik
        dq = dq + (gs * ik) * k
        dk = gk + gs * ik * (q - (dot * ik * rk) * k)
    return dq, dk


def _np(t: Tensor):
    """A numpy view of a CPU tensor (made contiguous, detached) for the numba kernels."""
    return t.detach().contiguous().numpy()


def _triton_chain_forward(q, k, count, paper):
    """m [B,T,C], s, d, a, b [B,T] by the Triton chain; the torch chain if Triton fails at its first launch."""
    g, s = _scores(q, k, paper)
    tri, key = backend.triton(), ("forward", bool(paper), q.shape[-1], q.dtype, q.device.type)
    if tri is not None:
        def launch():
            m, d, a, b = tri.chain_forward(k, g, s, count, paper, NORM_EPS, GUARD_EPS)
            return m, d, a, b

        ok, out = backend.first_launch("forward", key, launch)
        if ok:
            m, d, a, b = out
            return m, s, d, a, b
    valid = torch.arange(q.shape[1], device=q.device) < count[:, None]
    m, d, a, b = _chain_torch(*_sanitise_padding(k, g, s, valid), valid, paper)
    return m, s, d, a, b


def _triton_chain_backward(gm, q, k, s, m, d, a, b, count, paper):
    """dL/dq, dL/dk [B,T,C] by the Triton reverse recurrence; autograd through the torch chain if Triton
    fails at its first backward launch (or failed in this layer's forward)."""
    tri, key = backend.triton(), ("backward", bool(paper), q.shape[-1], q.dtype, q.device.type)
    if tri is not None:
        def launch():
            g, _ = _scores(q, k, paper)
            gk, gg, gs = tri.chain_backward(gm, k, g, s, m, d, a, b, count, paper, NORM_EPS, GUARD_EPS)
            return gk, gg, gs

        ok, out = backend.first_launch("backward", key, launch)
        if ok:
            gk, gg, gs = out
            return _score_grads(q, k, gk, gg, gs, paper)
    return _chain_backward_torch(gm, q, k, count, paper)


def _chain_backward_torch(gm, q, k, count, paper):
    """The true dL/dq, dL/dk [B,T,C] of the chain from dL/dm [B,T,C], by autograd through the torch chain
    (the exact fallback of the Triton backward). Padded steps of gm are ignored, as the kernel does."""
    T = q.shape[1]
    if T == 0:
        return torch.zeros_like(q), torch.zeros_like(k)
    valid = torch.arange(T, device=q.device) < count[:, None]
    with torch.enable_grad():
        q_, k_ = q.detach().requires_grad_(), k.detach().requires_grad_()
        g, s = _scores(q_, k_, paper)
        m = _chain_torch(*_sanitise_padding(k_, g, s, valid), valid, paper)[0]
        dq, dk = torch.autograd.grad(m, (q_, k_), gm * valid[..., None])
    return dq, dk


class _OfficialBackward(torch.autograd.Function):
    """Forward = the given CSA output; backward = the official rule grad_in = grad_out + W^T grad_out.

    W is the N x N attention matrix of the official code, stored there in an int64 tensor, so every
    weight is truncated toward zero: known rows are e_p (identity), the first hole's row is e_{c(p_1)},
    later hole rows are trunc(w_t), which is 0 unless a weight reaches |w| >= 1 (the exploding case).
    Consequences: hole positions receive their own gradient unchanged (no column of W is a hole); known
    positions receive twice their gradient, plus grad_out[p_1] at c(p_1); no gradient flows through the
    argmax, the scores or the coefficients. Not the gradient of the forward.
    """

    @staticmethod
    def forward(ctx, x, y, rows_int, hole_index, holeflat):
        ctx.save_for_backward(rows_int, hole_index, holeflat)
        ctx.x_shape = x.shape
        return y.detach().clone()

    @staticmethod
    def backward(ctx, grad_out):
        rows_int, hole_index, holeflat = ctx.saved_tensors
        B, C, H, W = ctx.x_shape
        G = grad_out.flatten(2).transpose(1, 2)                        # [B,N,C]
        bi = torch.arange(B, device=G.device)[:, None]
        g_holes = G[bi, hole_index.clamp(min=0)]                       # [B,T,C]; padded rows of W are 0
        WtG = (~holeflat)[..., None] * G + torch.bmm(rows_int.transpose(1, 2), g_holes)
        grad = G + WtG
        return grad.transpose(1, 2).reshape(B, C, H, W), None, None, None, None


class CoherentSemanticAttention(nn.Module):
    """The CSA layer: holes are filled by the raster-order chain of best-matching known features.

    semantics: "paper" (cosine scores + guard, the default) or "official" (the official code's exact
    forward, no guard). backward: "autograd" (the true gradient) or "official" (the official custom
    rule, see :class:`_OfficialBackward`). chain: "auto" (Triton on CUDA, numba on CPU, else torch),
    "numba", "triton" or "torch" -- all give the same result.

    forward(x [B,C,H,W] float, hole bool [B,1,H,W] (True = hole; [1,1,H,W] is broadcast)) -> y [B,C,H,W]
    (known positions unchanged), or (y, CSAAttention) with return_attention=True or return_rows=True.
    Each image has its own mask and its own number of holes T.
    """

    def __init__(self, semantics: str = "paper", backward: str = "autograd", chain: str = "auto"):
        super().__init__()
        _check_semantics(semantics)
        check_choice("CSA: backward", backward, BACKWARDS)
        check_choice("CSA: chain", chain, CHAINS)
        self.semantics, self.backward, self.chain = semantics, backward, chain

    def extra_repr(self) -> str:
        return f"semantics={self.semantics!r}, backward={self.backward!r}, chain={self.chain!r}"

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False, return_rows: bool = False):
        x, hole = _check_inputs(x, hole)
        if x.dtype in (torch.float16, torch.bfloat16):
            # the ratios d / (d + s) are ill-conditioned in half precision: compute in float32
            out = self.forward(x.float(), hole, return_attention, return_rows)
            return (out[0].to(x.dtype), out[1]) if isinstance(out, tuple) else out.to(x.dtype)
        paper = self.semantics == "paper"
        chain = backend.pick_chain(self.chain, x)
        if self.backward == "autograd":
            y, att = _csa_forward(x, hole, paper, chain, return_rows)
        else:
            with torch.no_grad():
                y, att = _csa_forward(x, hole, paper, chain, True)
            rows_int = att.rows.trunc()                            # what an int64 tensor keeps
            y = _OfficialBackward.apply(x, y, rows_int, att.hole_index, hole.reshape(x.shape[0], -1))
            if not return_rows:
                att.rows = None
        if return_attention or return_rows:
            return y, att
        return y

