"""Triton kernels for the CSA chain on CUDA: one program per image, the C-vector m_t (forward) or
dL/dm_t (backward) held in registers, T sequential steps. Same maths as the numba kernels in
:mod:`csa_lib._csa_kernels` (see there); imported lazily by :mod:`csa_lib.csa`, triton is optional.
With TRITON_INTERPRET=1 the kernels also run on CPU tensors (slowly), which the tests use.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _coefficient_scores(d, s, geps, PAPER: tl.constexpr):
    """(A, B) with a = A / (A + B), b = B / (A + B); the paper mode clamps and adds the guard."""
    if PAPER:
        return tl.maximum(d, 0.0), tl.maximum(s, 0.0) + geps
    else:
        return d, s


@triton.jit
def _chain_forward_kernel(k_ptr, g_ptr, s_ptr, count_ptr, m_ptr, d_ptr, a_ptr, b_ptr, T, C, neps, geps,
                          PAPER: tl.constexpr, BLOCK_C: tl.constexpr):
    i = tl.program_id(0)
    n = tl.load(count_ptr + i).to(tl.int32)
    offs = tl.arange(0, BLOCK_C)
    cmask = offs < C
    row = i * T * C
    m = tl.load(k_ptr + row + offs, mask=cmask, other=0.0)
    if n > 0:
        tl.store(m_ptr + row + offs, m, mask=cmask)
        tl.store(b_ptr + i * T, 1.0)
    for t in range(1, n):
        g = tl.load(g_ptr + row + t * C + offs, mask=cmask, other=0.0)
        k = tl.load(k_ptr + row + t * C + offs, mask=cmask, other=0.0)
        s = tl.load(s_ptr + i * T + t)
        dot = tl.sum(m * g, axis=0)
        if PAPER:
            d = dot / (tl.sqrt(tl.sum(m * m, axis=0)) + neps)
        else:
            d = dot
        A, B = _coefficient_scores(d, s, geps, PAPER)
        a = A / (A + B)
        b = B / (A + B)
        m = a * m + b * k
        tl.store(m_ptr + row + t * C + offs, m, mask=cmask)
        tl.store(d_ptr + i * T + t, d)
        tl.store(a_ptr + i * T + t, a)
        tl.store(b_ptr + i * T + t, b)


@triton.jit
def _chain_backward_kernel(gm_ptr, k_ptr, g_ptr, s_ptr, m_ptr, d_ptr, a_ptr, b_ptr, count_ptr,
                           gk_ptr, gg_ptr, gs_ptr, T, C, neps, geps,
                           PAPER: tl.constexpr, BLOCK_C: tl.constexpr):
    i = tl.program_id(0)
    n = tl.load(count_ptr + i).to(tl.int32)
    offs = tl.arange(0, BLOCK_C)
    cmask = offs < C
    row = i * T * C
    last = tl.maximum(n - 1, 0)
    G = tl.load(gm_ptr + row + last * C + offs, mask=cmask, other=0.0)   # dL/dm_t, running
    for j in range(0, n - 1):
        t = n - 1 - j
        mp = tl.load(m_ptr + row + (t - 1) * C + offs, mask=cmask, other=0.0)
        k = tl.load(k_ptr + row + t * C + offs, mask=cmask, other=0.0)
        g = tl.load(g_ptr + row + t * C + offs, mask=cmask, other=0.0)
        d = tl.load(d_ptr + i * T + t)
        s = tl.load(s_ptr + i * T + t)
        a = tl.load(a_ptr + i * T + t)
        b = tl.load(b_ptr + i * T + t)
        La = tl.sum(G * mp, axis=0)
        Lb = tl.sum(G * k, axis=0)
        tl.store(gk_ptr + row + t * C + offs, b * G, mask=cmask)
        A, B = _coefficient_scores(d, s, geps, PAPER)
        den2 = (A + B) * (A + B)
        gA = (La - Lb) * B / den2
        gB = (Lb - La) * A / den2
        if PAPER:
            gd = tl.where(d > 0.0, gA, 0.0)
            tl.store(gs_ptr + i * T + t, tl.where(s > 0.0, gB, 0.0))
            dot = tl.sum(mp * g, axis=0)
            nrm = tl.sqrt(tl.sum(mp * mp, axis=0))
            inv = 1.0 / (nrm + neps)
            cm = tl.where(nrm > 0.0, -gd * dot * inv * inv / tl.where(nrm > 0.0, nrm, 1.0), 0.0)
            tl.store(gg_ptr + row + t * C + offs, gd * inv * mp, mask=cmask)
            G = a * G + gd * inv * g + cm * mp
        else:
            gd = gA
            tl.store(gs_ptr + i * T + t, gB)
            tl.store(gg_ptr + row + t * C + offs, gd * mp, mask=cmask)
            G = a * G + gd * g
        G = G + tl.load(gm_ptr + row + (t - 1) * C + offs, mask=cmask, other=0.0)
    if n > 0:
        tl.store(gk_ptr + row + offs, G, mask=cmask)


def _block(C: int) -> int:
    return max(16, triton.next_power_of_2(C))


def chain_forward(k, g, s, count, paper, neps, geps):
    """m [B,T,C], d, a, b [B,T] (padding 0) from contiguous k, g [B,T,C], s [B,T], count [B]."""
    k, g, s, count = k.contiguous(), g.contiguous(), s.contiguous(), count.contiguous()
    B, T, C = k.shape
    m = torch.zeros_like(k)
    d, a, b = (torch.zeros_like(s) for _ in range(3))
    if B and T:
        _chain_forward_kernel[(B,)](k, g, s, count, m, d, a, b, T, C, neps, geps,
                                    PAPER=bool(paper), BLOCK_C=_block(C))
    return m, d, a, b


def chain_backward(gm, k, g, s, m, d, a, b, count, paper, neps, geps):
    """dL/dk, dL/dg [B,T,C], dL/ds [B,T] from dL/dm [B,T,C] (the reverse recurrence)."""
    gm = gm.contiguous()
    B, T, C = k.shape
    gk, gg, gs = torch.zeros_like(k), torch.zeros_like(g), torch.zeros_like(s)
    if B and T:
        _chain_backward_kernel[(B,)](gm, k, g, s, m, d, a, b, count, gk, gg, gs, T, C, neps, geps,
                                     PAPER=bool(paper), BLOCK_C=_block(C))
    return gk, gg, gs
