"""Compiled CPU kernels (numba) for the sequential part of CSA: the T-step chain, its hand-written
backward and the dense attention rows. Imported lazily by :mod:`csa_lib.csa`; numba is optional.

Shapes (one padded batch, arrays are C-contiguous numpy views of torch tensors):
    k, g:  [B, T, C]   best known feature k_t, normalised hole feature g_t = f_{p_t} / (||f_{p_t}|| + eps)
    s:     [B, T]      D_max of step t;  count: int64 [B], number of valid steps of each image
    m:     [B, T, C]   generated vectors;  d, a, b: [B, T]  D_ad and the chain coefficients

The chain (t >= 2), with paper = cosine D_ad and the guard, official = the raw score and no guard:
    d_t = <m_{t-1}, g_t> / (||m_{t-1}|| + eps)   (paper)      d_t = <m_{t-1}, g_t>   (official)
    A = max(d_t, 0), B = max(s_t, 0) + geps      (paper)      A = d_t, B = s_t       (official)
    a_t = A / (A + B), b_t = B / (A + B),   m_t = a_t m_{t-1} + b_t k_t
error_model="numpy" keeps the official mode's 0/0 = NaN instead of raising. Sums accumulate in float64.
"""
import numpy as np
from numba import njit

_JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


@njit(**_JIT)
def _scores(d, s, paper, geps):
    """(A, B) of the coefficient formula a = A / (A + B), b = B / (A + B)."""
    if paper:
        return (d if d > 0.0 else 0.0), (s if s > 0.0 else 0.0) + geps
    return d, s


@njit(**_JIT)
def chain_forward(k, g, s, count, paper, neps, geps, m, d, a, b):
    """Fill m, d, a, b (zero-initialised by the caller) for every image (serial: on 2 busy cores numba threads cost more than they save)."""
    B, T, C = k.shape
    for i in range(B):
        n = count[i]
        if n == 0:
            continue
        for c in range(C):
            m[i, 0, c] = k[i, 0, c]
        b[i, 0] = 1.0
        for t in range(1, n):
            dot = 0.0
            sq = 0.0
            for c in range(C):
                mv = m[i, t - 1, c]
                dot += mv * g[i, t, c]
                sq += mv * mv
            dt = dot / (np.sqrt(sq) + neps) if paper else dot
            A, Bs = _scores(dt, s[i, t], paper, geps)
            at = A / (A + Bs)
            bt = Bs / (A + Bs)
            for c in range(C):
                m[i, t, c] = at * m[i, t - 1, c] + bt * k[i, t, c]
            d[i, t] = dt
            a[i, t] = at
            b[i, t] = bt


@njit(**_JIT)
def chain_backward(gm, k, g, s, m, d, a, b, count, paper, neps, geps, gk, gg, gs):
    """Reverse recurrence: from dL/dm [B,T,C] fill dL/dk, dL/dg [B,T,C] and dL/ds [B,T] (zero-initialised).

    G holds the total dL/dm_t. Step t (t >= 2) sends b_t G to k_t, a_t G to m_{t-1}, and through
    dL/da_t = <G, m_{t-1}>, dL/db_t = <G, k_t> the score gradients dL/dA = (La - Lb) B / (A+B)^2,
    dL/dB = (Lb - La) A / (A+B)^2 to d_t, s_t (the paper clamps pass them only where d, s > 0, as
    torch.clamp does), and d_t's gradient to m_{t-1} and g_t.
    """
    B_, T, C = k.shape
    for i in range(B_):
        n = count[i]
        if n == 0:
            continue
        G = np.empty(C, dtype=np.float64)
        for c in range(C):
            G[c] = gm[i, n - 1, c]
        for t in range(n - 1, 0, -1):
            La = 0.0
            Lb = 0.0
            dot = 0.0
            sq = 0.0
            bt = b[i, t]
            for c in range(C):
                mv = m[i, t - 1, c]
                La += G[c] * mv
                Lb += G[c] * k[i, t, c]
                dot += mv * g[i, t, c]
                sq += mv * mv
                gk[i, t, c] = bt * G[c]
            A, Bs = _scores(d[i, t], s[i, t], paper, geps)
            den2 = (A + Bs) * (A + Bs)
            gA = (La - Lb) * Bs / den2
            gB = (Lb - La) * A / den2
            if paper:
                gd = gA if d[i, t] > 0.0 else 0.0
                gs[i, t] = gB if s[i, t] > 0.0 else 0.0
            else:
                gd = gA
                gs[i, t] = gB
            at = a[i, t]
            if paper:
                nrm = np.sqrt(sq)
                inv = 1.0 / (nrm + neps)
                # d = dot * inv(||m||): dd/dm = g inv - dot inv^2 m / ||m||  (0 for m = 0, as torch.norm)
                cm = -gd * dot * inv * inv / nrm if nrm > 0.0 else 0.0
                for c in range(C):
                    mv = m[i, t - 1, c]
                    gg[i, t, c] = gd * inv * mv
                    G[c] = at * G[c] + gd * inv * g[i, t, c] + cm * mv + gm[i, t - 1, c]
            else:
                for c in range(C):
                    gg[i, t, c] = gd * m[i, t - 1, c]
                    G[c] = at * G[c] + gd * g[i, t, c] + gm[i, t - 1, c]
        for c in range(C):
            gk[i, 0, c] = G[c]


@njit(**_JIT)
def attention_rows(source, a, b, count, rows):
    """Dense rows [B,T,N] (zero-initialised): w_1 = e_{c_1}, w_t = a_t w_{t-1} + b_t e_{c_t}."""
    B, T, N = rows.shape
    for i in range(B):
        for t in range(count[i]):
            if t > 0:
                at = a[i, t]
                for q in range(N):
                    rows[i, t, q] = at * rows[i, t - 1, q]
            rows[i, t, source[i, t]] += b[i, t]
