"""Compiled CPU kernels (numba) for CSA: the search's column splitting and argmax, the gathers and
scatters, the T-step chain, its hand-written backward and the dense attention rows. Imported lazily by
:mod:`csa_lib.csa`; numba is optional. Each kernel loops over the images of a batch with prange (the
thread count is set by use_threads from torch's); within an image everything is sequential.

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
from numba import config, njit, prange, set_num_threads

_JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy", parallel=True)
# the C-long dot products may be reassociated (and fused), so LLVM vectorises them; no other fast-math
# flag: NaN and inf keep their IEEE meaning (the official mode's 0/0 = NaN must stay NaN)
_JIT_SUM = dict(_JIT, fastmath={"reassoc", "contract"})


def use_threads(n: int) -> None:
    """Run the kernels' image loops (prange over the batch) on n threads (at most NUMBA_NUM_THREADS);
    the caller passes torch.get_num_threads(), so torch.set_num_threads governs both."""
    set_num_threads(max(1, min(int(n), config.NUMBA_NUM_THREADS)))


@njit(**dict(_JIT, parallel=False))
def _scores(d, s, paper, geps):
    """(A, B) of the coefficient formula a = A / (A + B), b = B / (A + B)."""
    if paper:
        return (d if d > 0.0 else 0.0), (s if s > 0.0 else 0.0) + geps
    return d, s


@njit(**_JIT_SUM)
def chain_forward(q, k, count, paper, neps, geps, m, s, d, a, b):
    """Fill s, m, d, a, b (zero-initialised by the caller) from the gathered hole features q and their
    best known features k [B,T,C]: s_t = <q, k> / (||k|| + eps) [/ (||q|| + eps) in the paper mode],
    then the chain with g_t = q_t / (||q_t|| + eps). Images run in parallel (prange) on
    the threads set by use_threads."""
    B, T, C = k.shape
    for i in prange(B):
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
    for i in prange(B):
        for t in range(count[i]):
            if t > 0:
                at = a[i, t]
                for q in range(N):
                    rows[i, t, q] = at * rows[i, t - 1, q]
            rows[i, t, source[i, t]] += b[i, t]


@njit(**_JIT_SUM)
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
    for i in prange(B_):
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
def gather_columns(F, idx, out):
    """out[b, t, :] = F[b, :, idx[b, t]]: gather feature columns of F [B,C,N] into rows of out [B,T,C].
    Blocks of 16 channels: the 16 rows of F being read and the T short runs being written stay in L1
    (2.5x faster than a plain loop, and several times faster than torch's gather + transpose copy)."""
    B, C, N = F.shape
    T = idx.shape[1]
    for i in prange(B):
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
    for i in prange(B):
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


@njit(**_JIT_SUM)
def split_columns(F, hole, count, neps, q, Fk, kidx, kcount):
    """One pass over F [B,C,N] (hole bool [B,N]) for the search: the hole columns go, in raster order,
    to the rows of q [B,T,C] (only for images with count[b] > 0; other rows are 0); the known columns,
    scaled by 1/(||f_n|| + eps), are compacted into Fk [B,C,K] (zero beyond kcount[b]), and
    kidx[b, j] is the raster index of the j-th known column (0 on padding). The search matmul then runs
    over the known columns only (T x K instead of T x N) and gives the official D_max directly.
    Norms accumulate in float64, as torch's reductions do."""
    B, C, N = F.shape
    T = q.shape[1]
    K = Fk.shape[2]
    for i in prange(B):
        acc = np.empty(N, dtype=np.float64)
        inv = np.empty(N, dtype=F.dtype)
        j = 0
        for n in range(N):
            if not hole[i, n]:
                kidx[i, j] = n
                j += 1
        kcount[i] = j
        for n in range(j, K):
            kidx[i, n] = 0
        acc[:] = 0.0
        for c in range(C):
            for n in range(N):
                v = F[i, c, n]
                acc[n] += v * v
        for n in range(N):
            inv[n] = 1.0 / (np.sqrt(acc[n]) + neps)
        fill = count[i] > 0
        for c in range(C):
            jk = 0
            jt = 0
            for n in range(N):
                v = F[i, c, n]
                if hole[i, n]:
                    if fill:
                        q[i, jt, c] = v
                    jt += 1
                else:
                    Fk[i, c, jk] = v * inv[n]
                    jk += 1
            for jj in range(jk, K):
                Fk[i, c, jj] = 0.0
            for tt in range(jt if fill else 0, T):
                q[i, tt, c] = 0.0

@njit(**_JIT)
def known_argmax(sim, kidx, kcount, count, source):
    """source[b, t] = kidx[b, argmax_{j < kcount[b]} sim[b, t, j]] for t < count[b] (0 elsewhere);
    sim [B,T,K_max] holds the scores against the compacted known columns (raster order, so the first
    maximum is the known position with the smallest raster index)."""
    B, T, K = sim.shape
    for i in prange(B):
        nk = kcount[i]
        for t in range(T):
            if t >= count[i] or nk == 0:
                source[i, t] = 0
                continue
            best = sim[i, t, 0]
            arg = 0
            for j in range(1, nk):
                v = sim[i, t, j]
                if v > best:
                    best = v
                    arg = j
            source[i, t] = kidx[i, arg]
