"""Compiled CPU kernels (numba) for the sequential part of CSA: the T-step chain, its hand-written
backward and the dense attention rows. Imported lazily by :mod:`csa_lib.csa`; numba is optional.

Shapes (one padded batch, arrays are C-contiguous numpy views of torch tensors):
    q, k:  [B, T, C]   hole feature q_t = f_{p_t} and its best known feature k_t = f_{c(p_t)}
    count: int64 [B]   number of valid steps of each image (steps t >= count are padding, left 0)
    m:     [B, T, C]   generated vectors;  s, d, a, b: [B, T]  D_max, D_ad and the chain coefficients

With g_t = q_t / (||q_t|| + eps), the scores and the chain (t >= 2) are, paper mode (cosines + guard)
and official mode (the official code's raw scores, no guard):
    s_t = <g_t, k_t> / (||k_t|| + eps)                       s_t = <q_t, k_t> / (||k_t|| + eps)
    d_t = <m_{t-1}, g_t> / (||m_{t-1}|| + eps)               d_t = <m_{t-1}, g_t>
    A = max(d_t, 0), B = max(s_t, 0) + geps                  A = d_t, B = s_t
    a_t = A / (A + B), b_t = B / (A + B),   m_t = a_t m_{t-1} + b_t k_t,   m_1 = k_1
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
def chain_forward(q, k, count, paper, neps, geps, m, s, d, a, b):
    """Fill s, m, d, a, b (zero-initialised by the caller) from the gathered hole features q and their
    best known features k [B,T,C]: s_t = <q, k> / (||k|| + eps) [/ (||q|| + eps) in the paper mode],
    then the chain with g_t = q_t / (||q_t|| + eps). Serial over the batch: on 2 busy cores numba threads
    cost more than they save."""
    B, T, C = k.shape
    for i in range(B):
        n = count[i]
        for t in range(n):
            qq = 0.0
            kk = 0.0
            qk = 0.0
            mq = 0.0
            sq = 0.0
            for c in range(C):
                qv = q[i, t, c]
                kv = k[i, t, c]
                qq += qv * qv
                kk += kv * kv
                qk += qv * kv
                if t > 0:
                    mv = m[i, t - 1, c]
                    mq += mv * qv
                    sq += mv * mv
            iq = 1.0 / (np.sqrt(qq) + neps)
            st = qk / (np.sqrt(kk) + neps)
            if paper:
                st = st * iq
            s[i, t] = st
            if t == 0:                                      # m_1 = k_1
                for c in range(C):
                    m[i, 0, c] = k[i, 0, c]
                b[i, 0] = 1.0
                continue
            dt = mq * iq / (np.sqrt(sq) + neps) if paper else mq * iq
            A, Bs = _scores(dt, st, paper, geps)
            at = A / (A + Bs)
            bt = Bs / (A + Bs)
            for c in range(C):
                m[i, t, c] = at * m[i, t - 1, c] + bt * k[i, t, c]
            d[i, t] = dt
            a[i, t] = at
            b[i, t] = bt


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


@njit(**_JIT)
def chain_backward(gm, q, k, s, m, d, a, b, count, paper, neps, geps, dq, dk):
    """Reverse recurrence of chain_forward: from dL/dm [B,T,C] fill dL/dq and dL/dk [B,T,C]
    (zero-initialised) for the gathered hole features q_t = f_{p_t} and source features k_t = f_{c(p_t)}.

    G holds the total dL/dm_t. Step t (t >= 2) sends b_t G to k_t, a_t G to m_{t-1}, and through
    dL/da_t = <G, m_{t-1}>, dL/db_t = <G, k_t> the score gradients dL/dA = (La - Lb) B / (A+B)^2,
    dL/dB = (Lb - La) A / (A+B)^2 to d_t, s_t (the paper clamps pass them only where d, s > 0, as
    torch.clamp does), then d_t's gradient to m_{t-1} and g_t. With iq = 1/(||q|| + eps),
    ik = 1/(||k|| + eps), dot = <q, k>, dL/dg_t = gd m_{t-1} [/ (||m_{t-1}|| + eps)] and dL/ds_t:
        g = q iq:                dq += iq dL/dg - iq^2 <dL/dg, q> q / ||q||
        s = dot ik (official):   dq += dL/ds ik k,        dk += dL/ds ik (q - dot ik k / ||k||)
        s = dot ik iq (paper):   dq += dL/ds ik iq (k - dot iq q / ||q||),  dk += dL/ds iq ik (q - dot ik k / ||k||)
    (the 1/||v|| terms are 0 for v = 0, as torch.norm's gradient).
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
            dot_mg = 0.0
            sq_m = 0.0
            mq = 0.0
            qk = 0.0
            qq = 0.0
            kk = 0.0
            for c in range(C):
                mv = m[i, t - 1, c]
                qv = q[i, t, c]
                kv = k[i, t, c]
                La += G[c] * mv
                Lb += G[c] * kv
                sq_m += mv * mv
                mq += mv * qv
                qk += qv * kv
                qq += qv * qv
                kk += kv * kv
            nq = np.sqrt(qq)
            iq = 1.0 / (nq + neps)
            dot_mg = mq * iq                                    # <m_{t-1}, g_t>
            A, Bs = _scores(d[i, t], s[i, t], paper, geps)
            den2 = (A + Bs) * (A + Bs)
            gA = (La - Lb) * Bs / den2
            gB = (Lb - La) * A / den2
            if paper:
                gd = gA if d[i, t] > 0.0 else 0.0
                gs = gB if s[i, t] > 0.0 else 0.0
                nrm = np.sqrt(sq_m)
                inv = 1.0 / (nrm + neps)
                cg = gd * inv                                   # dL/dg_t = cg m_{t-1}
                cm = -gd * dot_mg * inv * inv / nrm if nrm > 0.0 else 0.0
            else:
                gd = gA
                gs = gB
                inv = 1.0
                cg = gd
                cm = 0.0
            nk = np.sqrt(kk)
            ik = 1.0 / (nk + neps)
            rq = 1.0 / nq if nq > 0.0 else 0.0
            rk = 1.0 / nk if nk > 0.0 else 0.0
            # dq = cg iq m - cg <m, q> iq^2 rq q + score terms;  dk = b G + score terms
            cq_m = cg * iq
            cq_q = -cg * mq * iq * iq * rq
            if paper:
                cq_k = gs * ik * iq
                cq_q -= gs * ik * iq * qk * iq * rq
                ck_q = gs * iq * ik
                ck_k = -gs * iq * ik * qk * ik * rk
            else:
                cq_k = gs * ik
                ck_q = gs * ik
                ck_k = -gs * ik * qk * ik * rk
            at = a[i, t]
            bt = b[i, t]
            for c in range(C):
                mv = m[i, t - 1, c]
                qv = q[i, t, c]
                kv = k[i, t, c]
                dq[i, t, c] = cq_m * mv + cq_q * qv + cq_k * kv
                dk[i, t, c] = bt * G[c] + ck_q * qv + ck_k * kv
                if paper:
                    G[c] = at * G[c] + gd * inv * iq * qv + cm * mv + gm[i, t - 1, c]
                else:
                    G[c] = at * G[c] + gd * iq * qv + gm[i, t - 1, c]
        for c in range(C):
            dk[i, 0, c] = G[c]


@njit(**_JIT)
def masked_argmax(sim, F, hole, neps, source):
    """source[b, t] = argmax over known n of sim[b, t, n] / (||F[b, :, n]|| + eps) (the official D_max
    from the raw scores sim = <f_p, f_n> [B,T,N]; F [B,C,N], hole bool [B,N]); the first maximum wins.
    Fuses the column norms, the scaling, the mask and the argmax into one pass over sim."""
    B, T, N = sim.shape
    C = F.shape[1]
    acc = np.empty(N, dtype=np.float64)
    inv = np.empty(N, dtype=sim.dtype)                  # same precision as torch's scaled scores
    for i in range(B):
        acc[:] = 0.0
        for c in range(C):                              # row-wise, so it vectorises
            for n in range(N):
                v = F[i, c, n]
                acc[n] += v * v
        for n in range(N):
            inv[n] = 1.0 / (np.sqrt(acc[n]) + neps)
        for t in range(T):
            best = -np.inf
            arg = 0
            for n in range(N):
                if not hole[i, n]:
                    v = sim[i, t, n] * inv[n]
                    if v > best:
                        best = v
                        arg = n
            source[i, t] = arg


@njit(**_JIT)
def gather_columns(F, idx, out):
    """out[b, t, :] = F[b, :, idx[b, t]]: gather feature columns of F [B,C,N] into rows of out [B,T,C].
    Blocks of 16 channels: the 16 rows of F being read and the T short runs being written stay in L1
    (2.5x faster than a plain loop, and several times faster than torch's gather + transpose copy)."""
    B, C, N = F.shape
    T = idx.shape[1]
    for i in range(B):
        for c0 in range(0, C, 16):
            c1 = min(c0 + 16, C)
            for t in range(T):
                p = idx[i, t]
                for c in range(c0, c1):
                    out[i, t, c] = F[i, c, p]


@njit(**_JIT)
def put_columns(out, idx, vals, count, add):
    """out[b, :, idx[b, t]] = vals[b, t, :] (or += with add=True) for t < count[b], in place on
    out [B,C,N]; vals [B,T,C]. Setting uses gather_columns's blocking; adding (indices may repeat)
    is 3x faster row by row of out."""
    B, C, N = out.shape
    for i in range(B):
        n = count[i]
        if add:
            for c in range(C):
                for t in range(n):
                    out[i, c, idx[i, t]] += vals[i, t, c]
        else:
            for c0 in range(0, C, 16):
                c1 = min(c0 + 16, C)
                for t in range(n):
                    p = idx[i, t]
                    for c in range(c0, c1):
                        out[i, c, p] = vals[i, t, c]
