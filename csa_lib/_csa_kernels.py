"""Compiled CPU kernels (numba) for the CSA layer. Imported lazily by :mod:`csa_lib.csa`; numba is
optional. Three parallel kernels do the whole layer around the one similarity matmul (done by torch):

    search_inputs   F -> hole order, known columns Fk (compacted) and their inverse norms, hole
                    features q, and y = F (one pass over F)
    (torch.bmm)     sim = q @ Fk: <f_p, f_q> of every hole against every known position
    generate        argmax of sim / (||f_q|| + eps) -> k, the T-step chain -> m, written into y
    backward        dL/dy -> the reverse recurrence -> dL/dx

Each runs the images of a batch in parallel (prange; the thread count comes from torch's, see
use_threads) by calling the serial per-image functions below. When the batch is smaller than the
thread count (B = 1 on 2 cores), the streaming passes over F of each image are split into S channel
ranges too; the chain stays one thread per image, since each step needs the previous one.

Shapes (arrays are numpy views of torch tensors):
    F, y, gy, grad:   [B, C, N]    features / gradients, channel-major (NCHW with H*W = N)
    q, k, m, gm, dq, dk: [B, T, Cp]  one row per hole step (first C entries used, see row_stride)
    count: int64 [B]   number of valid steps of each image (steps t >= count are padding)
    order, source: int64 [B, T]  raster index of the t-th hole and of its chosen known source (-1 = pad)
    s, d, a, b: [B, T]  D_max, D_ad and the chain coefficients (0 on padding)

With g_t = q_t / (||q_t|| + eps), the scores and the chain (t >= 2) are, paper mode (cosines + guard)
and official mode (the official code's raw scores, no guard):
    s_t = <g_t, k_t> / (||k_t|| + eps)                       s_t = <q_t, k_t> / (||k_t|| + eps)
    d_t = <m_{t-1}, g_t> / (||m_{t-1}|| + eps)               d_t = <m_{t-1}, g_t>
    A = max(d_t, 0), B = max(s_t, 0) + geps                  A = d_t, B = s_t
    a_t = A / (A + B), b_t = B / (A + B),   m_t = a_t m_{t-1} + b_t k_t,   m_1 = k_1
error_model="numpy" keeps the official mode's 0/0 = NaN instead of raising. Sums accumulate in float64.

Memory layout, which decides the speed (B = 1, C = 512, 32 x 32, T = 252): moving a column of F into a
row of q means writing C values one row apart. The rows of F are N floats apart (4 KB at 32 x 32) and
rows of C = 512 floats 2 KB apart: with such power-of-two strides all those cache lines fall into a few
L1 sets and evict each other. The step rows therefore get Cp >= C entries, Cp * itemsize an odd number
of 64-byte lines (row_stride): one pass over a row of F then scatters into the T step rows with each
line in its own set, all within L1. Measured on a 2-core EPYC VM, this made the gathers and scatters
2-4x faster than 16-channel blocked copies into unpadded rows, and lets every kernel read F in a single
streaming pass (the layer is bound by memory traffic apart from the matmul).
"""
import numpy as np
from numba import config, njit, prange, set_num_threads

_JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_PAR = dict(_JIT, parallel=True)
# the C-long dot products may be reassociated (and fused), so LLVM vectorises them; no other fast-math
# flag: NaN and inf keep their IEEE meaning (the official mode's 0/0 = NaN must stay NaN)
_SUM = dict(_JIT, fastmath={"reassoc", "contract"})


def use_threads(n: int) -> None:
    """Run the kernels' parallel loops on n threads (at most NUMBA_NUM_THREADS); the caller passes
    torch.get_num_threads(), so torch.set_num_threads governs both."""
    set_num_threads(max(1, min(int(n), config.NUMBA_NUM_THREADS)))


def row_stride(C: int, itemsize: int) -> int:
    """Floats per step row for C channels: C rounded up to whole 64-byte lines, plus one line when the
    number of lines is even, so that rows one apart never share an L1 set (see the module docstring)."""
    per_line = max(1, 64 // itemsize)
    lines = -(-C // per_line)
    return (lines + (lines % 2 == 0)) * per_line


# ---------------------------------------------------------------------------------------------------
# Per-image pieces (serial). The streaming passes over F take a channel range [c0, c1), so that one
# image can be split over several threads when the batch is smaller than the thread count.
# ---------------------------------------------------------------------------------------------------
@njit(**_JIT)
def _scores(d, s, paper, geps):
    """(A, B) of the coefficient formula a = A / (A + B), b = B / (A + B)."""
    if paper:
        return (d if d > 0.0 else 0.0), (s if s > 0.0 else 0.0) + geps
    return d, s


@njit(**_JIT)
def _index(hole, n, order, kidx, q):
    """One image (hole bool [N], n = its count): order [T] = raster indices of the holes (-1 on
    padding), kidx [K] = those of the known positions (0 on padding); rows t >= n of q [T,Cp] are
    zeroed. Returns the number of known positions."""
    N = hole.shape[0]
    T, K = order.shape[0], kidx.shape[0]
    nh = 0
    nk = 0
    for p in range(N):
        if hole[p]:
            if n > 0:
                order[nh] = p
                nh += 1
        else:
            kidx[nk] = p
            nk += 1
    for t in range(n, T):
        order[t] = -1
        for c in range(q.shape[1]):
            q[t, c] = 0.0
    for j in range(nk, K):
        kidx[j] = 0
    return nk


@njit(**_SUM)
def _split(F, c0, c1, order, n, kidx, nk, q, Fk, y, acc):
    """Channels [c0, c1) of one image in a single pass over F [C,N]: acc [N] += squares (for the
    norms), the hole columns into the rows of q [T,Cp], the known columns compacted in raster order
    into Fk [C,K] (0 beyond nk), and y = F (generate() overwrites its hole columns)."""
    N = F.shape[1]
    K = Fk.shape[1]
    for c in range(c0, c1):
        for p in range(N):
            v = F[c, p]
            acc[p] += v * v
            y[c, p] = v
        for t in range(n):
            q[t, c] = F[c, order[t]]
        for j in range(nk):
            Fk[c, j] = F[c, kidx[j]]
        for j in range(nk, K):
            Fk[c, j] = 0.0


@njit(**_JIT)
def _argmax(sim, inv, kidx, nk, n, t0, t1, source):
    """source[t] = kidx[argmax_{j < nk} sim[t, j] inv[j]] for t in [t0, t1) (-1 for t >= n): sim
    [T,K] holds <f_p, f_q> against the compacted known columns, inv [K] their 1/(||f_q|| + eps), so
    the product is the official D_max (the paper's cosine divides it by ||f_p|| + eps, which does not
    change the argmax). Raster order: the first maximum is the known position of smallest index."""
    for t in range(t0, t1):
        if t >= n or nk == 0:
            source[t] = -1
            continue
        best = sim[t, 0] * inv[0]
        arg = 0
        for j in range(1, nk):
            v = sim[t, j] * inv[j]
            if v > best:
                best = v
                arg = j
        source[t] = kidx[arg]


@njit(**_JIT)
def _gather(F, c0, c1, idx, n, out):
    """out[t, c] = F[c, idx[t]] for t < n, c in [c0, c1): rows of F [C,N] into the rows of out."""
    for c in range(c0, c1):
        for t in range(n):
            out[t, c] = F[c, idx[t]]


@njit(**_SUM)
def _chain_forward(q, k, n, C, paper, neps, geps, m, s, d, a, b, dots):
    """The chain of one image: rows q, k, m [T,Cp] (first C entries), s, d, a, b [T] (0 on padding).
    dots [T,5] keeps <q,q>, <k,k>, <q,k>, <m_{t-1},q>, <m_{t-1},m_{t-1}> of each step (float64) for
    the backward, which then needs only the two dot products with the incoming gradient."""
    T = s.shape[0]
    for t in range(n, T):
        s[t] = 0.0
        d[t] = 0.0
        a[t] = 0.0
        b[t] = 0.0
    for t in range(n):
        qq = 0.0
        kk = 0.0
        qk = 0.0
        mq = 0.0
        sq = 0.0
        if t == 0:
            for c in range(C):
                qv = q[0, c]
                kv = k[0, c]
                qq += qv * qv
                kk += kv * kv
                qk += qv * kv
        else:
            for c in range(C):
                qv = q[t, c]
                kv = k[t, c]
                mv = m[t - 1, c]
                qq += qv * qv
                kk += kv * kv
                qk += qv * kv
                mq += mv * qv
                sq += mv * mv
        dots[t, 0] = qq
        dots[t, 1] = kk
        dots[t, 2] = qk
        dots[t, 3] = mq
        dots[t, 4] = sq
        iq = 1.0 / (np.sqrt(qq) + neps)
        st = qk / (np.sqrt(kk) + neps)
        if paper:
            st = st * iq
        s[t] = st
        if t == 0:                                      # m_1 = k_1
            for c in range(C):
                m[0, c] = k[0, c]
            d[0] = 0.0
            a[0] = 0.0
            b[0] = 1.0
            continue
        dt = mq * iq / (np.sqrt(sq) + neps) if paper else mq * iq
        A, Bs = _scores(dt, st, paper, geps)
        at = A / (A + Bs)
        bt = Bs / (A + Bs)
        for c in range(C):
            m[t, c] = at * m[t - 1, c] + bt * k[t, c]
        d[t] = dt
        a[t] = at
        b[t] = bt


@njit(**_JIT)
def _put(y, c0, c1, order, n, m):
    """The hole columns of y [C,N] (a copy of F): y[c, order[t]] = m[t, c] for t < n, c in [c0, c1)."""
    for c in range(c0, c1):
        for t in range(n):
            y[c, order[t]] = m[t, c]


@njit(**_SUM)
def _chain_backward(gm, q, k, s, m, d, a, b, dots, n, C, paper, neps, geps, dq, dk):
    """Reverse recurrence of _chain_forward for one image: from dL/dm (rows gm [T,Cp]) fill the rows
    t < n of dL/dq and dL/dk [T,Cp] for the gathered hole features q_t = f_{p_t} and source features
    k_t = f_{c(p_t)} (dots: the forward's dot products).

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
    if n == 0:
        return
    G = np.empty(C, dtype=np.float64)
    for c in range(C):
        G[c] = gm[n - 1, c]
    for t in range(n - 1, 0, -1):
        La = 0.0
        Lb = 0.0
        for c in range(C):
            La += G[c] * m[t - 1, c]
            Lb += G[c] * k[t, c]
        qq, kk, qk, mq, sq_m = dots[t, 0], dots[t, 1], dots[t, 2], dots[t, 3], dots[t, 4]
        nq = np.sqrt(qq)
        iq = 1.0 / (nq + neps)
        dot_mg = mq * iq                                # <m_{t-1}, g_t>
        A, Bs = _scores(d[t], s[t], paper, geps)
        den2 = (A + Bs) * (A + Bs)
        gA = (La - Lb) * Bs / den2
        gB = (Lb - La) * A / den2
        if paper:
            gd = gA if d[t] > 0.0 else 0.0
            gs = gB if s[t] > 0.0 else 0.0
            nrm = np.sqrt(sq_m)
            inv = 1.0 / (nrm + neps)
            cg = gd * inv                               # dL/dg_t = cg m_{t-1}
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
        at = a[t]
        bt = b[t]
        cgq = gd * inv * iq                             # dL/dm_{t-1} through d_t: cgq q + cm m
        for c in range(C):
            mv = m[t - 1, c]
            qv = q[t, c]
            kv = k[t, c]
            g = G[c]
            dq[t, c] = cq_m * mv + cq_q * qv + cq_k * kv
            dk[t, c] = bt * g + ck_q * qv + ck_k * kv
            G[c] = at * g + cgq * qv + cm * mv + gm[t - 1, c]
    for c in range(C):
        dk[0, c] = G[c]
        dq[0, c] = 0.0                                  # m_1 = k_1 does not depend on q_1


@njit(**_JIT)
def _copy_gather(gy, c0, c1, order, n, grad, gm):
    """Channels [c0, c1): grad = gy [C,N] and gm[t, c] = gy[c, order[t]] (dL/dm_t) for t < n."""
    N = gy.shape[1]
    for c in range(c0, c1):
        for p in range(N):
            grad[c, p] = gy[c, p]
        for t in range(n):
            gm[t, c] = gy[c, order[t]]


@njit(**_JIT)
def _scatter_grads(c0, c1, order, source, n, dq, dk, grad):
    """Channels [c0, c1) of grad [C,N]: hole columns replaced by dL/dq (y there is m_t, which does
    not contain f_p), and dL/dk added at the source columns (known positions; they may repeat)."""
    for c in range(c0, c1):
        for t in range(n):
            grad[c, order[t]] = dq[t, c]
        for t in range(n):
            grad[c, source[t]] += dk[t, c]


@njit(**_JIT)
def _part(job, S, L):
    """Image i = job // S and its share [r0, r1) of L rows or channels (S parts per image)."""
    i = job // S
    step = -(-L // S)
    r0 = min(L, (job % S) * step)
    return i, r0, min(L, r0 + step)


# ---------------------------------------------------------------------------------------------------
# Batch kernels. Images run in parallel; with S > 1 (a batch smaller than the thread count) the
# streaming passes of each image are split into S channel ranges as well. The chains stay one thread
# per image: each step needs the previous one.
# ---------------------------------------------------------------------------------------------------
@njit(**_JIT)
def hole_counts(hole):
    """For hole bool [B,N]: count [B] (number of holes, 0 for an image without any known position:
    nothing to copy from), the largest count T and the most known positions K of an image."""
    B, N = hole.shape
    count = np.zeros(B, dtype=np.int64)
    T = 0
    K = 0
    for i in range(B):
        nh = 0
        for p in range(N):
            if hole[i, p]:
                nh += 1
        count[i] = nh if nh < N else 0
        T = max(T, count[i])
        K = max(K, N - nh)
    return count, T, K


@njit(**_PAR)
def search_inputs(F, hole, count, neps, S, order, q, Fk, kidx, inv, kcount, y, acc):
    """The search's inputs from F [B,C,N]: order [B,T], q [B,T,Cp], Fk [B,C,K] (see _split), kidx and
    inv [B,K] (1/(||f|| + eps) of the known columns), kcount [B], y [B,C,N] = F; acc [B,S,N] is
    float64 scratch for the partial sums of squares. The matmul q @ Fk then scores every hole against
    the known positions only (T x K instead of T x N)."""
    B, C, N = F.shape
    for i in prange(B):
        kcount[i] = _index(hole[i], count[i], order[i], kidx[i], q[i])
    for job in prange(B * S):
        i, c0, c1 = _part(job, S, C)
        acc[i, job % S, :] = 0.0
        _split(F[i], c0, c1, order[i], count[i], kidx[i], kcount[i], q[i], Fk[i], y[i], acc[i, job % S])
    for i in prange(B):
        for j in range(inv.shape[1]):
            if j < kcount[i]:
                p = kidx[i, j]
                sq = 0.0
                for r in range(S):
                    sq += acc[i, r, p]
                inv[i, j] = 1.0 / (np.sqrt(sq) + neps)
            else:
                inv[i, j] = 0.0


@njit(**_PAR)
def generate(sim, inv, kidx, kcount, count, order, F, q, paper, neps, geps, S, source, k, m, s, d, a, b, dots,
             y):
    """From the scores sim [B,T,K]: the sources, their features k, the chain (m, s, d, a, b and the
    dot products dots [B,T,5]) and the output y [B,C,N] (= F from search_inputs) with the hole
    columns replaced by m."""
    B, C, N = F.shape
    T = sim.shape[1]
    for job in prange(B * S):
        i, t0, t1 = _part(job, S, T)
        _argmax(sim[i], inv[i], kidx[i], kcount[i], count[i], t0, t1, source[i])
    for job in prange(B * S):
        i, c0, c1 = _part(job, S, C)
        _gather(F[i], c0, c1, source[i], count[i], k[i])
    for i in prange(B):
        _chain_forward(q[i], k[i], count[i], C, paper, neps, geps, m[i], s[i], d[i], a[i], b[i], dots[i])
    for job in prange(B * S):
        i, c0, c1 = _part(job, S, C)
        _put(y[i], c0, c1, order[i], count[i], m[i])


@njit(**_PAR)
def backward(gy, order, source, count, q, k, m, s, d, a, b, dots, paper, neps, geps, S, gm, dq, dk, grad):
    """dL/dx [B,C,N] into grad from dL/dy gy [B,C,N]; gm, dq, dk [B,T,Cp] are scratch."""
    B, C, N = gy.shape
    for job in prange(B * S):
        i, c0, c1 = _part(job, S, C)
        _copy_gather(gy[i], c0, c1, order[i], count[i], grad[i], gm[i])
    for i in prange(B):
        _chain_backward(gm[i], q[i], k[i], s[i], m[i], d[i], a[i], b[i], dots[i], count[i], C, paper, neps,
                        geps, dq[i], dk[i])
    for job in prange(B * S):
        i, c0, c1 = _part(job, S, C)
        _scatter_grads(c0, c1, order[i], source[i], count[i], dq[i], dk[i], grad[i])


@njit(**_PAR)
def attention_rows(source, a, b, count, rows):
    """Dense rows [B,T,N] (zero-initialised): w_1 = e_{c_1}, w_t = a_t w_{t-1} + b_t e_{c_t}."""
    B, T, N = rows.shape
    for i in prange(B):
        for t in range(count[i]):
            if t > 0:
                at = a[i, t]
                for p in range(N):
                    rows[i, t, p] = at * rows[i, t - 1, p]
            rows[i, t, source[i, t]] += b[i, t]
