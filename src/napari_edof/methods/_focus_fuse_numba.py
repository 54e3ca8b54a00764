"""Compiled kernels of ``focus-fuse`` (numba; imported by :func:`._focus_fuse_kernels.kernels`).

Each kernel computes, in one pass over its rows, what a chain of the numpy building blocks in
:mod:`napari_edof.methods.focus_fuse` computes in several: the finest detail (``bin2``, ``up2``,
the difference) and its binned energy, the weighted sum of the planes' detail, the Wiener shrink,
one pyramid level (band and energy), the sub-plane argmax over the focus measure plus its
weighted neighbourhood evidence, the focus measure's minimum, maximum and mean over the planes,
the soft weights' smoothing, maximum and scaling, their normalisation (with the neighbour blend)
and normalised band sums, and the last step (up-sampling, shrunk detail, range clip) on the kept
rows and columns. The formulas and grids are the numpy path's, so the results agree with it to
float32 rounding (``tests/methods/test_focus_fuse.py`` compares them), and every window sum is
direct, so tiles still agree with the whole image. Full-resolution maps are made row by row and
never stored whole (the detail volume, Z x H x W, is not kept: the bins are, and the detail is
made again when it is weighted). Where numba was no faster than numpy (the box-mean focus measure:
27-30 ms against numpy's 9-10 ms for 16 planes of 476^2 with the engine's allocator tuning), numpy
stays. The soft weights' exponentials are compiled (:func:`_exp_row`): numpy's ``exp`` is not
vectorised in its x86-64-v3 build (about 3 ns a value against 0.7). Two rules for the loops to run
on vector instructions here: each term of a window sum or a shifted read is its own slice of a row
(2-D indexing or ``a[j - 1]`` kept loops scalar), and a running maximum or minimum over the planes
writes to a second buffer, swapped after each plane (``best[j] = v if v > best[j] else best[j]``
becomes a conditional store in LLVM, which it does not vectorise: 2-3x slower).

numba is optional: without it (or with ``NAPARI_EDOF_NUMBA=0``) focus-fuse runs its numpy path.
The kernels are compiled at first use and cached on disk (``cache=True``); they release the GIL,
so the engine's tile threads run them in parallel.
"""
from __future__ import annotations

import numba
import numpy as np

_F = np.float32
jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
q1 = np.float32(0.25)
q3 = np.float32(0.75)

@jit
def _bin_rows(g, gb):
    h, w = gb.shape
    for i in range(h):
        for j in range(w):
            a = _F(g[2 * i, 2 * j]) + _F(g[2 * i + 1, 2 * j])  # the order of bin2's sums (integers: as float32)
            b = _F(g[2 * i, 2 * j + 1]) + _F(g[2 * i + 1, 2 * j + 1])
            gb[i, j] = (a + b) * q1

@jit
def _up_x(a, i, row):
    """Row ``i`` of ``a`` (h, w) up-sampled along x into ``row`` (2w): as ``up2``'s first step (the
    same products and sums). Both columns of a bin are written in one iteration from slices, so the
    loop runs on vector instructions (interleaved stores): 3x faster than one loop per phase."""
    w = a.shape[1]
    r = a[i]
    row[0] = r[0]
    row[2 * w - 1] = r[w - 1]
    if w > 1:
        row[1] = q3 * r[0] + q1 * r[1]
        row[2 * w - 2] = q3 * r[w - 1] + q1 * r[w - 2]
    c, lf, rt = r[1 : w - 1], r[0 : w - 2], r[2:w]
    o = row[2 : 2 * w - 2]
    for j in range(w - 2):
        t = q3 * c[j]
        o[2 * j] = t + q1 * lf[j]
        o[2 * j + 1] = t + q1 * rt[j]

@jit
def plane_detail(g, ef):
    """One plane ``g`` (2h, 2w; float32, or 8/16-bit integers read as float32): returns its bins
    (h, w) (``bin2``) and writes the binned 3 x 3 energy of its finest detail ``g - up2(bins)``
    (``_binned_box3(detail**2)``) into ``ef`` (h, w). The detail itself is made a row at a time and
    not kept."""
    H, W = g.shape
    h, w = H // 2, W // 2
    gb = np.empty((h, w), np.float32)
    _bin_rows(g, gb)
    r0 = np.empty(W, np.float32)  # x-up-sampled bins: rows i - 1, i, i + 1
    r1 = np.empty(W, np.float32)
    r2 = np.empty(W, np.float32)
    v = np.empty((h, W), np.float32)  # the squared detail summed [1 2 2 1] over rows, per bin row
    sq_prev = np.empty(W, np.float32)  # row 2i - 1 of the squared detail
    sq_a = np.empty(W, np.float32)  # rows 2i and 2i + 1
    sq_b = np.empty(W, np.float32)
    _up_x(gb, 0, r1)
    r0[:] = r1
    for i in range(h):
        if i + 1 < h:
            _up_x(gb, i + 1, r2)
        else:
            r2[:] = r1
        mid = 0 < i < h - 1  # the first and last bin rows get no neighbour rows (as _binned_box3)
        # up2 along y: row 2i mixes bin rows i and i - 1, row 2i + 1 rows i and i + 1
        g0 = g[2 * i]
        g1 = g[2 * i + 1]
        vi = v[i]
        for j in range(W):
            a = _F(g0[j]) - (q3 * r1[j] + q1 * r0[j])
            b = _F(g1[j]) - (q3 * r1[j] + q1 * r2[j])
            sq_a[j] = a * a
            sq_b[j] = b * b
        for j in range(W):
            vi[j] = (sq_a[j] + sq_b[j]) * _F(2)
        if mid:
            for j in range(W):
                vi[j] += sq_prev[j]  # row 2i - 1
        if i >= 2:
            vp = v[i - 1]
            for j in range(W):
                vp[j] += sq_a[j]  # row 2i is row 2(i - 1) + 2 of bin row i - 1
        sq_prev, sq_b = sq_b, sq_prev
        r0, r1, r2 = r1, r2, r0
    for i in range(h):
        for j in range(1, w - 1):
            ef[i, j] = ((v[i, 2 * j] + v[i, 2 * j + 1]) * _F(2) + v[i, 2 * j - 1] + v[i, 2 * j + 2]) * _F(1 / 36)
        ef[i, 0] = ef[i, 1]
        ef[i, w - 1] = ef[i, w - 2]
    return gb

_INV25 = _F(1.0 / 25)


@jit
def _ends(src, dst, st, N, r):
    """For a flattened window sum of ``2r + 1`` terms ``st`` apart: copies the ends (``r * st`` values
    each side; everything when the window is longer than the map, as ``_win``) and returns the
    number of sums to make (<= 0: none)."""
    L = N - 2 * r * st
    if L <= 0:
        dst[:N] = src[:N]
        return L
    for i in range(r * st):
        dst[i] = src[i]
    for i in range(r * st + L, N):
        dst[i] = src[i]
    return L


@jit
def _sum5(src, dst, st, N):
    """``_win(src, 5, st)`` of a flattened map (the window sums of ``box_mean``'s radius 2), exactly:
    each sum in ``_flat_box``'s order of additions for five terms (``a0 + ((a1 + a2) + (a3 + a4))``),
    the ends copied. The five terms are separate slices, so the loop runs on vector instructions."""
    L = _ends(src, dst, st, N, 2)
    if L <= 0:
        return
    a, b, c = src[0:L], src[st : st + L], src[2 * st : 2 * st + L]
    d, e = src[3 * st : 3 * st + L], src[4 * st : 4 * st + L]
    o = dst[2 * st : 2 * st + L]
    for i in range(L):
        o[i] = a[i] + ((b[i] + c[i]) + (d[i] + e[i]))


@jit
def _sum3(src, dst, st, N):
    """``_win(src, 3, st)`` exactly (``a0 + (a1 + a2)``, ``_flat_box``'s order for three terms)."""
    L = _ends(src, dst, st, N, 1)
    if L <= 0:
        return
    a, b, c = src[0:L], src[st : st + L], src[2 * st : 2 * st + L]
    o = dst[st : st + L]
    for i in range(L):
        o[i] = a[i] + (b[i] + c[i])


@jit
def _sum9(src, dst, st, N):
    """``_win(src, 9, st)`` exactly (``a0 + (((a1 + a2) + (a3 + a4)) + ((a5 + a6) + (a7 + a8)))``,
    ``_flat_box``'s order for nine terms)."""
    L = _ends(src, dst, st, N, 4)
    if L <= 0:
        return
    a0, a1, a2 = src[0:L], src[st : st + L], src[2 * st : 2 * st + L]
    a3, a4, a5 = src[3 * st : 3 * st + L], src[4 * st : 4 * st + L], src[5 * st : 5 * st + L]
    a6, a7, a8 = src[6 * st : 6 * st + L], src[7 * st : 7 * st + L], src[8 * st : 8 * st + L]
    o = dst[4 * st : 4 * st + L]
    for i in range(L):
        o[i] = a0[i] + (((a1[i] + a2[i]) + (a3[i] + a4[i])) + ((a5[i] + a6[i]) + (a7[i] + a8[i])))


@jit
def _box_sum(src, dst, tmp, n, w, N):
    """The (n x n) window sums (n = 3, 5 or 9) of a flattened (N / w, w) map, exactly as
    ``box_mean``'s before its scaling: along x into ``tmp``, then along y into ``dst``."""
    if n == 3:
        _sum3(src, tmp, 1, N)
        _sum3(tmp, dst, w, N)
    elif n == 5:
        _sum5(src, tmp, 1, N)
        _sum5(tmp, dst, w, N)
    else:
        _sum9(src, tmp, 1, N)
        _sum9(tmp, dst, w, N)


@jit
def coarse_measure9(fm, out):
    """``box_mean(bin2(fm), 4)`` of the focus measure (Z, h, w) into ``out`` (Z, h / 2, w / 2): the
    same values as numpy's (the same float32 operations in the same order), one plane at a time."""
    Z = fm.shape[0]
    hc, wc = out.shape[1], out.shape[2]
    N = hc * wc
    b = np.empty((hc, wc), np.float32)
    tmp = np.empty(N, np.float32)
    inv = _F(1.0 / 81)
    for z in range(Z):
        _bin_rows(fm[z], b)
        o = out[z].reshape(N)
        _box_sum(b.reshape(N), o, tmp, 9, wc, N)
        for i in range(N):
            o[i] *= inv
    return out


@jit
def add_less_mean(acc, x, ov, n):
    """``acc += ov * (x - box_mean(x, n // 2))`` on (H, W) maps (n = 3, 5 or 9), the same float32
    operations in the same order as numpy's ``acc + ov * _less_mean(x, n // 2)`` (``x`` is left as
    it is)."""
    H, W = x.shape
    N = H * W
    s = np.empty(N, np.float32)
    tmp = np.empty(N, np.float32)
    f = x.reshape(N)
    _box_sum(f, s, tmp, n, W, N)
    inv = _F(1.0 / (n * n))
    a = acc.reshape(N)
    for i in range(N):
        a[i] = a[i] + ov * (f[i] - s[i] * inv)


@jit
def selected_band(b, k2, found, out):
    """``out`` (C, h, w) = the band ``b`` (Z, C, h, w) of plane ``k2`` (h, w) times ``found`` (numpy's
    ``take_along_axis(b, k2, 0) * found``: 0 where nothing was found)."""
    Z, C, h, w = b.shape
    for c in range(C):
        for i in range(h):
            o = out[c, i]
            kr = k2[i]
            fr = found[i]
            for j in range(w):
                o[j] = b[kr[j], c, i, j] * _F(fr[j])
    return out


@jit
def focus_measure5(gb, ef, fm, nf_min, first):
    """For the focus measure's default window (radius 2), one plane's measure and noise energy,
    exactly as the numpy path makes them (the same float32 operations in the same order):
    ``fm = box_mean(laplacian_energy(gb), 2)`` (the squared 4-neighbour Laplacian of the bins on
    the flattened map, zero on the first and last rows) and ``nf_min`` the minimum over planes of
    ``box_mean(ef, 2)`` (``first``: the plane's own). 0.44 ms against numpy's 4.6 for 456^2."""
    h, w = gb.shape
    N = h * w
    g = gb.reshape(N)
    lap = np.zeros(N, np.float32)
    M = N - 2 * w
    if M > 0:
        c0, lf, rt = g[w : w + M], g[w - 1 : w - 1 + M], g[w + 1 : w + 1 + M]
        up, dn = g[0:M], g[2 * w : 2 * w + M]
        o = lap[w : w + M]
        for i in range(M):
            v = c0[i] * _F(4)
            v = v - lf[i]
            v = v - rt[i]
            v = v - up[i]
            v = v - dn[i]
            o[i] = v * v
    tmp = np.empty(N, np.float32)
    f = fm.reshape(N)
    _box_sum(lap, f, tmp, 5, w, N)
    for i in range(N):
        f[i] *= _INV25
    _box_sum(ef.reshape(N), lap, tmp, 5, w, N)  # (lap reused)
    m = nf_min.reshape(N)
    if first:
        for i in range(N):
            m[i] = lap[i] * _INV25
    else:
        for i in range(N):
            m[i] = min(m[i], lap[i] * _INV25)


@jit
def add_weighted_detail(p, pb, wk, acc):
    """``acc += wk (one weight per 2 x 2 block) x (p - up2(pb))``: one plane's (or channel's)
    finest detail, made row by row from the plane ``p`` (2h, 2w) and its bins ``pb`` (h, w)."""
    h, w = pb.shape
    W = 2 * w
    r0 = np.empty(W, np.float32)
    r1 = np.empty(W, np.float32)
    r2 = np.empty(W, np.float32)
    wr = np.empty(W, np.float32)  # the row's block weights, each for both of its columns
    _up_x(pb, 0, r1)
    r0[:] = r1
    for i in range(h):
        if i + 1 < h:
            _up_x(pb, i + 1, r2)
        else:
            r2[:] = r1
        wi = wk[i]
        for j in range(w):
            wr[2 * j] = wi[j]
            wr[2 * j + 1] = wi[j]
        p0 = p[2 * i]
        p1 = p[2 * i + 1]
        a0 = acc[2 * i]
        a1 = acc[2 * i + 1]
        for j in range(W):
            a0[j] += wr[j] * (_F(p0[j]) - (q3 * r1[j] + q1 * r0[j]))
            a1[j] += wr[j] * (_F(p1[j]) - (q3 * r1[j] + q1 * r2[j]))
        r0, r1, r2 = r1, r2, r0


@jit
def wiener_beta(dl, noise_half, k, r):
    """The finest detail's shrink ``clip(1 - k x up2(noise_half) / box_mean(dl**2, r), 0, 1)``
    (NaN: 0); the ``r`` outer rows and columns are not meaningful (as ``box_mean``'s). The
    window sums are direct (no running sums), so every pixel's value is independent of where
    the tile starts; each is added term after term, left to right and top to bottom. Every loop
    runs along a row on contiguous slices and the clip is two selects (vector instructions)."""
    H, W = dl.shape
    n = 2 * r + 1
    inv = _F(1.0 / (n * n))
    sx = np.zeros((H, W), np.float32)  # sums along x
    sq = np.empty(W, np.float32)
    m = W - 2 * r
    for i in range(H):
        d = dl[i]
        for j in range(W):
            sq[j] = d[j] * d[j]
        if m <= 0:
            continue
        o = sx[i, r : W - r]
        for t in range(-r, r + 1):
            a = sq[r + t : W - r + t]
            for j in range(m):
                o[j] += a[j]
    beta = np.zeros((H, W), np.float32)
    h = noise_half.shape[0]
    up0 = np.empty(W, np.float32)
    up1 = np.empty(W, np.float32)
    up2_ = np.empty(W, np.float32)
    e = np.empty(W, np.float32)
    for i in range(h):
        _up_x(noise_half, i, up1)
        _up_x(noise_half, max(i - 1, 0), up0)
        _up_x(noise_half, min(i + 1, h - 1), up2_)
        for half in range(2):
            y = 2 * i + half
            if y < r or y >= H - r or m <= 0:
                continue
            nb = up0 if half == 0 else up2_
            e[:] = sx[y - r]
            for t in range(-r + 1, r + 1):
                a = sx[y + t]
                for j in range(W):
                    e[j] += a[j]
            ec, u1, u2, br = e[r : W - r], up1[r : W - r], nb[r : W - r], beta[y, r : W - r]
            for j in range(m):
                b = _F(1) - k * (q3 * u1[j] + q1 * u2[j]) / (ec[j] * inv)
                b = b if b > 0 else _F(0)  # NaN too
                br[j] = b if b <= 1 else _F(1)
    return beta

@jit
def band(cg, B, E):
    """One pyramid level of a map ``cg`` (2h, 2w): returns its bins (``bin2``), writes the band
    ``cg - up2(bins)`` into ``B`` and, unless ``E`` is empty, the band's ``box3`` energy into
    ``E`` (direct 3 x 3 sums; the outer rows and columns are not meaningful)."""
    H, W = cg.shape
    h, w = H // 2, W // 2
    ng = np.empty((h, w), np.float32)
    _bin_rows(cg, ng)
    r0 = np.empty(W, np.float32)
    r1 = np.empty(W, np.float32)
    r2 = np.empty(W, np.float32)
    _up_x(ng, 0, r1)
    r0[:] = r1
    for i in range(h):
        if i + 1 < h:
            _up_x(ng, i + 1, r2)
        else:
            r2[:] = r1
        b0, b1, c0, c1 = B[2 * i], B[2 * i + 1], cg[2 * i], cg[2 * i + 1]  # (rows: vector instructions)
        for j in range(W):
            b0[j] = _F(c0[j]) - (q3 * r1[j] + q1 * r0[j])
            b1[j] = _F(c1[j]) - (q3 * r1[j] + q1 * r2[j])
        r0, r1, r2 = r1, r2, r0
    if E.shape[0] == 0:
        return ng
    sq = np.empty((H, W), np.float32)
    for i in range(H):
        bi = B[i]
        qi = sq[i]
        for j in range(W):
            qi[j] = bi[j] * bi[j]
    sx = np.zeros((H, W), np.float32)  # 3-sums along x (the outer columns: 0)
    for i in range(H):
        a, b, c = sq[i, 0 : W - 2], sq[i, 1 : W - 1], sq[i, 2:W]  # (each term its own slice: vector instructions)
        si = sx[i, 1 : W - 1]
        for j in range(W - 2):
            si[j] = a[j] + b[j] + c[j]
    for i in range(H):
        ei = E[i]
        if 0 < i < H - 1:
            s0 = sx[i - 1]
            s1 = sx[i]
            s2 = sx[i + 1]
            for j in range(W):
                ei[j] = (s0[j] + s1[j] + s2[j]) * _F(1 / 9)
        else:
            qi = sq[i]
            for j in range(W):
                ei[j] = qi[j]
    return ng

@jit
def _argmax_rows(v, best, k, best2, k2):
    """Per column of ``v`` (Z, w), the highest row and its index (the first maximum wins, as
    ``argmax``), row by row across the columns: each step is a select into the other pair of
    buffers (``best2``, ``k2``), the pairs swapped after each row (a select that updates its own
    buffer compiles to a scalar loop). Returns the pair (values, index) that holds the result."""
    Z, w = v.shape
    best[:] = v[0]
    k[:] = 0
    for z in range(1, Z):
        vz = v[z]
        for j in range(w):
            up = vz[j] > best[j]
            best2[j] = vz[j] if up else best[j]
            k2[j] = z if up else k[j]
        best, best2, k, k2 = best2, best, k2, k
    return best, k


@jit
def sub_plane(fm, fc, cw, floor, top, mean, kq):
    """Argmax over planes of ``fm[z] + cw x neighbourhood_weight(floor, top, kq) x up2(fc[z])``
    (``fc`` empty: of ``fm[z]``) with the parabolic sub-plane refinement of the numpy path's
    ``sub_plane``: (h, w) float32. ``floor``, ``top`` and ``mean`` (h, w) are written here first,
    row by row: the minimum, maximum and mean of ``fm`` over the planes (numpy's ``min``, ``max``,
    ``mean(axis=0)``), so the focus measure is read once for both."""
    Z, h, w = fm.shape
    out = np.empty((h, w), np.float32)
    a2, b2 = np.empty(w, np.float32), np.empty(w, np.float32)
    coarse = fc.shape[0] > 0
    vals = np.empty((Z, w), np.float32)
    ra = np.empty(w, np.float32)
    rb = np.empty(w, np.float32)
    cwr = np.empty(w, np.float32)
    hc = fc.shape[1] if coarse else 1
    best, best2 = np.empty(w, np.float32), np.empty(w, np.float32)  # the argmax's row buffers
    kk, kk2 = np.empty(w, np.int32), np.empty(w, np.int32)
    for i in range(h):
        _stats_row(fm, i, floor[i], top[i], mean[i], a2, b2)
        if coarse:  # the numpy path's neighbourhood_weight, times cw
            for j in range(w):
                t = _F(1)
                if top[i, j] > 0:
                    t = kq * floor[i, j] / top[i, j]
                t = min(t, _F(1))
                t = t * t
                t = t * t
                cwr[j] = cw * t
        for z in range(Z):
            if coarse:  # row i of up2(fc[z]): bin rows i // 2 and its neighbour, along x first
                ci = i // 2
                cn = max(ci - 1, 0) if i % 2 == 0 else min(ci + 1, hc - 1)
                _up_x(fc[z], ci, ra)
                _up_x(fc[z], cn, rb)
                for j in range(w):
                    vals[z, j] = fm[z, i, j] + cwr[j] * (q3 * ra[j] + q1 * rb[j])
            else:
                for j in range(w):
                    vals[z, j] = fm[z, i, j]
        # the highest plane, plane by plane across the row (vector instructions; a branch per pixel and
        # plane kept the loop scalar), then each pixel's parabola through its neighbours
        bv, kb = _argmax_rows(vals, best, kk, best2, kk2)
        o = out[i]
        for j in range(w):
            k = kb[j]
            off = _F(0)
            if 0 < k < Z - 1:
                left = vals[k - 1, j]
                right = vals[k + 1, j]
                den = left - _F(2) * bv[j] + right
                if den < 0:
                    off = _F(0.5) * (left - right) / den
                    off = min(max(off, _F(-0.49)), _F(0.49))
            o[j] = _F(k) + off
    return out



@jit
def bin_planes(p, out):
    """``bin2`` of every channel of one plane ``p`` (C, 2h, 2w), any dtype, into ``out`` (C, h, w)
    float32 (the numpy path's order of sums)."""
    for c in range(out.shape[0]):
        _bin_rows(p[c], out[c])


_EXP_LO = _F(-87.0)  # exp(-87) = 1.6e-38, still a normal float32; below it the weights are 0


@jit
def _exp_row(x, o, ib):
    """``o = exp(x)`` for a row ``x`` of exponents <= 0 (Cephes' ``expf``: range reduction by ln 2 in
    two parts, a degree-6 polynomial, the power of two made in the exponent bits of ``ib``, int32
    scratch of the row's length); within 1.5 float32 ulp of the exact value, 0 below -87. numpy's
    ``exp`` is not vectorised in this numpy build (3 ns a value); this loop is (about 0.7)."""
    n = x.shape[0]
    for j in range(n):
        v = max(x[j], _EXP_LO)
        fx = np.floor(v * _F(1.44269504088896341) + _F(0.5))
        r = v - fx * _F(0.693359375)
        r = r + fx * _F(2.12194440e-4)
        p = _F(1.9875691500e-4)
        p = p * r + _F(1.3981999507e-3)
        p = p * r + _F(8.3334519073e-3)
        p = p * r + _F(4.1665795894e-2)
        p = p * r + _F(1.6666665459e-1)
        p = p * r + _F(5.0000001201e-1)
        p = p * (r * r) + r + _F(1)
        o[j] = p if x[j] >= _EXP_LO else _F(0)
        ib[j] = (np.int32(fx) + np.int32(127)) << 23
    two = ib.view(np.float32)
    for j in range(n):
        o[j] = o[j] * two[j]


@jit
def soft_weights(e, out, noise, pnoise, snr, dip, k2, found, norm, bnoise, weight, lo):
    """The soft weights, unnormalised: ``out = exp((s - max_z s) / (noise + 1e-30))`` where ``s`` is
    ``e`` (Z, h, w) smoothed [1 2 1] / 4 over the planes (the numpy path's ``z_smooth``, ends
    replicated) and ``noise`` is (h, w); ``out`` may be ``e`` itself. Unless ``k2`` is empty, also
    the numpy path's ``second_peak`` of ``s`` with the noise ``pnoise`` (the same float32 operations
    in the same order, so the same planes) into ``k2`` (h, w, int) and ``found`` (h, w, bool): the
    smoothing and the maximum are shared. Row by row, so a row of every plane stays in the caches
    between the smoothing, the maximum, the second peak, the scaling and the exponential
    (:func:`_exp_row`: the numpy path's ``np.exp`` to 1.5 float32 ulp). With ``norm`` (``out`` not
    ``e``), the weights are then normalised and blended (:func:`_normalise_blend_row`: ``e`` the
    energies, ``bnoise``, ``weight``, ``lo``)."""
    Z, h, w = e.shape
    second = k2.shape[0] > 0
    if second:
        k2[:] = 0
        found[:] = False
    s = np.empty((Z, w), np.float32)
    bv, bv2 = np.empty(w, np.float32), np.empty(w, np.float32)  # the highest plane's buffers (two pairs)
    kbs, kb2 = np.empty(w, np.int32), np.empty(w, np.int32)
    inv = np.empty(w, np.float32)
    x = np.empty(w, np.float32)
    ib = np.empty(w, np.int32)
    ns = np.empty(w, np.float32)  # normalise_blend's scratch
    kb = np.zeros(w, np.int32)
    top = np.empty(w, np.float32)
    kb3 = np.zeros(w, np.int32)
    top3 = np.empty(w, np.float32)
    for i in range(h):
        ni = noise[i]
        for j in range(w):
            inv[j] = _F(1) / (ni[j] + _F(1e-30))
        if Z < 2:
            o = out[0, i]
            for j in range(w):
                o[j] = _F(1)
            continue  # (normalised: one plane)
        for z in range(Z):
            sz = s[z]
            el = e[z - 1 if z > 0 else 0, i]
            ec = e[z, i]
            er = e[z + 1 if z < Z - 1 else Z - 1, i]
            for j in range(w):
                sz[j] = (ec[j] * _F(2) + el[j] + er[j]) * q1
        top_s, kbr = _argmax_rows(s, bv, kbs, bv2, kb2)  # the highest plane, across the row
        if second and Z >= 3:  # (fewer: no plane two away from the best with one between)
            _second_row(s, kbr, pnoise[i], snr, dip, k2[i], found[i], ns, kb)
        for z in range(Z):
            sz = s[z]
            for j in range(w):
                x[j] = (sz[j] - top_s[j]) * inv[j]
            _exp_row(x, out[z, i], ib)
        if norm:
            _normalise_blend_row(out, i, e, bnoise[i], weight, lo, ns, kb, top, kb3, top3)
    return out


@jit
def _second_row(s, kbr, noise, snr, dip, k2, found, fl, cnt):
    """One row of the numpy path's ``second_peak``: ``s`` (Z, w) the smoothed energies, ``kbr`` the
    plane of their maximum (``fl``, ``cnt``: scratch of the row's length). First, across
    the row and plane by plane (vector instructions), the pixels that may have a second peak at all:
    a plane two or more from the highest that is a local maximum over the planes (as the search asks,
    ends one-sided) above the floor. Only those are searched, pixel by pixel, as the numpy path."""
    Z, w = s.shape
    for j in range(w):
        fl[j] = noise[j] * snr
        cnt[j] = 0
    for z in range(Z):
        sz, sl, sr = s[z], s[max(z - 1, 0)], s[min(z + 1, Z - 1)]
        for j in range(w):
            v = sz[j]
            far = (z - kbr[j] >= 2) | (kbr[j] - z >= 2)
            cnt[j] += np.int32(far & (v >= sl[j]) & (v >= sr[j]) & (v > fl[j]))
    for j in range(w):
        if cnt[j] == 0:  # no candidate (most pixels: one peak, or nothing above the floor)
            continue
        fl_ = fl[j]
        kb = kbr[j]
        top = -np.inf
        run = np.inf  # upward: the minimum strictly between kb and z
        for z in range(kb + 1, Z):
            v = s[z, j]
            if (z > kb + 1 and run < dip * v and v > fl_ and v > top and v >= s[z - 1, j]
                    and (z == Z - 1 or v >= s[z + 1, j])):
                top = v
                k2[j] = z
                found[j] = True
            run = min(run, v)
        run = np.inf
        for z in range(kb - 1, -1, -1):
            v = s[z, j]
            if (z < kb - 1 and run < dip * v and v > fl_ and v > top and v >= s[z + 1, j]
                    and (z == 0 or v >= s[z - 1, j])):
                top = v
                k2[j] = z
                found[j] = True
            run = min(run, v)


@jit
def weighted_bands(b, wt, out):
    """``out[c] = sum_z b[z, c] x wt[z] / sum_z wt[z]``: a pyramid level's bands (Z, C, h, w)
    weighed by the planes' unnormalised weights (Z, h, w), into ``out`` (C, h, w)."""
    Z, C, h, w = b.shape
    s = np.empty(w, np.float32)
    for i in range(h):
        s[:] = wt[0, i]
        for z in range(1, Z):
            wz = wt[z, i]
            for j in range(w):
                s[j] += wz[j]
        for j in range(w):
            s[j] = _F(1) / s[j]
        for c in range(C):
            o = out[c, i]
            for j in range(w):
                o[j] = _F(0)
            for z in range(Z):
                bz = b[z, c, i]
                wz = wt[z, i]
                for j in range(w):
                    o[j] += bz[j] * (wz[j] * s[j])
    return out


@jit
def _normalise_blend_row(wt, i, ef, ni, weight, lo, s, kb, top, kb2, top2):
    """Row ``i`` of unnormalised weights ``wt`` (Z, h, w), in place: normalised over the planes, then
    (``weight`` > 0) the numpy path's ``blend_neighbours``: the planes just before and after each
    pixel's most-weighted plane gain ``weight x clip((r - lo) / (1 - lo), 0, 1)``, ``r`` their share
    of its detail energy ``ef`` above the noise (``ni``: row ``i``), and the weights are normalised
    again (``s``, ``kb``, ``top``, ``kb2``, ``top2``: scratch of the row's length)."""
    Z, h, w = wt.shape
    scale = _F(1) / (_F(1) - lo)
    s[:] = wt[0, i]
    for z in range(1, Z):
        wz = wt[z, i]
        for j in range(w):
            s[j] += wz[j]
    for j in range(w):
        s[j] = _F(1) / s[j]
    for z in range(Z):
        wz = wt[z, i]
        for j in range(w):
            wz[j] *= s[j]
    if weight <= 0 or Z < 2:
        return
    top[:] = wt[0, i]
    kb[:] = 0
    for z in range(1, Z):
        wz = wt[z, i]
        for j in range(w):  # (selects into the other buffer, not branches: vector instructions)
            up = wz[j] > top[j]  # the first maximum wins, as argmax
            top2[j] = wz[j] if up else top[j]
            kb2[j] = z if up else kb[j]
        top, top2, kb, kb2 = top2, top, kb2, kb
    for j in range(w):
        k = kb[j]
        eb = ef[k, i, j] - ni[j]
        total = _F(1)
        for dk in (-1, 1):
            kn = k + dk
            if kn < 0 or kn >= Z:
                continue
            g = _F(0)
            if eb > 0:
                g = ((ef[kn, i, j] - ni[j]) / eb - lo) * scale
                g = min(max(g, _F(0)), _F(1)) * weight
            wt[kn, i, j] += g
            total += g
        s[j] = _F(1) / total
    for z in range(Z):
        wz = wt[z, i]
        for j in range(w):
            wz[j] *= s[j]


@jit
def _stats_row(fm, i, lo, hi, mean, a2, b2):
    """Row ``i`` of the minimum, maximum and mean over the planes of ``fm`` (Z, h, w) into the rows
    ``lo``, ``hi``, ``mean`` (the mean summed plane after plane and divided, as numpy's
    ``mean(axis=0)``; ``a2``, ``b2``: scratch rows). The running minimum and maximum go to the other
    buffer after each plane (an in-place update compiles to a scalar loop), the row's own at the end."""
    Z, w = fm.shape[0], fm.shape[2]
    a, b, m = lo, hi, mean
    f0 = fm[0, i]
    for j in range(w):
        a[j] = f0[j]
        b[j] = f0[j]
        m[j] = f0[j]
    for z in range(1, Z):
        f = fm[z, i]
        for j in range(w):
            v = f[j]
            a2[j] = min(a[j], v)
            b2[j] = max(b[j], v)
            m[j] += v
        a, a2, b, b2 = a2, a, b2, b
    if Z % 2 == 0:  # (the last plane's values are in the scratch rows)
        lo[:] = a
        hi[:] = b
    zf = _F(Z)
    for j in range(w):
        m[j] = m[j] / zf


@jit
def compose(half, detail, beta, src, m):
    """The fused image inside a margin ``m``: ``up2(half) + detail x beta`` (``beta`` (H, W) empty:
    1), clipped per pixel to the range of the planes' values there, ``src`` (Z, C, H, W) (each channel's
    rows contiguous: the loops run on vector instructions), as the numpy path's steps (the same
    formulas and order), but only on the rows and columns kept: (C, H - 2m, W - 2m) float32. ``half``
    is (C, H / 2, W / 2), ``detail`` (C, H, W)."""
    C, h, w = half.shape
    H, W = 2 * h, 2 * w
    Z = src.shape[0]
    n = W - 2 * m
    out = np.empty((C, H - 2 * m, n), np.float32)
    shrink = beta.shape[0] > 0
    rc = np.empty(W, np.float32)
    rn = np.empty(W, np.float32)
    lo = np.empty(n, np.float32)
    hi = np.empty(n, np.float32)
    lo_s = np.empty(n, src.dtype)  # the range in the planes' own type (integers: vector instructions), then
    hi_s = np.empty(n, src.dtype)  # as float32 (a monotonic conversion: the same range)
    for c in range(C):
        for y in range(m, H - m):
            i = y // 2
            nb = max(i - 1, 0) if y % 2 == 0 else min(i + 1, h - 1)
            _up_x(half[c], i, rc)
            _up_x(half[c], nb, rn)
            lo_s[:] = src[0, c, y, m : W - m]
            hi_s[:] = lo_s
            for z in range(1, Z):
                pz = src[z, c, y, m : W - m]
                for x in range(n):
                    lo_s[x] = min(lo_s[x], pz[x])
                for x in range(n):
                    hi_s[x] = max(hi_s[x], pz[x])
            for x in range(n):
                lo[x] = _F(lo_s[x])
                hi[x] = _F(hi_s[x])
            dr = detail[c, y, m : W - m]
            a, b = rc[m : W - m], rn[m : W - m]
            o = out[c, y - m]
            if shrink:
                br = beta[y, m : W - m]
                for x in range(n):
                    v = (q3 * a[x] + q1 * b[x]) + dr[x] * br[x]
                    o[x] = min(max(v, lo[x]), hi[x])
            else:
                for x in range(n):
                    v = (q3 * a[x] + q1 * b[x]) + dr[x]
                    o[x] = min(max(v, lo[x]), hi[x])
    return out


@jit
def selected_detail(p, pb, k2, found, out):
    """``out`` (2h, 2w) = the finest detail of plane ``k2`` (that of the pixel's 2 x 2 block) where
    ``found``, 0 elsewhere: ``p[k] - up2(pb[k])`` from the planes ``p`` (Z, 2h, 2w) and their bins
    ``pb`` (Z, h, w), the numpy path's ``up2`` formulas. Each output row is zeroed in one vector loop,
    then only the blocks found are made (a few per cent of the pixels, mostly)."""
    Z, h, w = pb.shape
    for y in range(2 * h):
        i, a = y // 2, y % 2
        i2 = (i - 1 if i > 0 else 0) if a == 0 else (i + 1 if i < h - 1 else h - 1)
        o = out[y]
        for x in range(2 * w):
            o[x] = _F(0)
        fr = found[i]
        kr = k2[i]
        for j in range(w):
            if not fr[j]:
                continue
            k = kr[j]
            b0, b1 = pb[k, i], pb[k, i2]
            # up2 along x of bin rows i and i2 at columns 2j (left neighbour) and 2j + 1 (right)
            l0 = b0[0] if j == 0 else q3 * b0[j] + q1 * b0[j - 1]
            l1 = b1[0] if j == 0 else q3 * b1[j] + q1 * b1[j - 1]
            r0 = b0[w - 1] if j == w - 1 else q3 * b0[j] + q1 * b0[j + 1]
            r1 = b1[w - 1] if j == w - 1 else q3 * b1[j] + q1 * b1[j + 1]
            pr = p[k, y]
            o[2 * j] = _F(pr[2 * j]) - (q3 * l0 + q1 * l1)
            o[2 * j + 1] = _F(pr[2 * j + 1]) - (q3 * r0 + q1 * r1)


@jit
def median3(a, out):
    """The 3 x 3 median of the (h + 2, w + 2) ``a`` (padded by the caller) into (h, w) ``out``: the
    19-comparison sorting network of :func:`napari_edof.core.select.median3`, pixel by pixel along
    each row (the same comparisons: the same values, for maps without NaN). 13.7 -> about 1 ms for a
    tile's 452 x 452 index."""
    h, w = out.shape
    for y in range(h):
        r0, r1, r2 = a[y], a[y + 1], a[y + 2]
        o = out[y]
        for x in range(w):
            v0, v1, v2 = r0[x], r0[x + 1], r0[x + 2]
            v3, v4, v5 = r1[x], r1[x + 1], r1[x + 2]
            v6, v7, v8 = r2[x], r2[x + 1], r2[x + 2]
            v1, v2 = min(v1, v2), max(v1, v2)
            v4, v5 = min(v4, v5), max(v4, v5)
            v7, v8 = min(v7, v8), max(v7, v8)
            v0, v1 = min(v0, v1), max(v0, v1)
            v3, v4 = min(v3, v4), max(v3, v4)
            v6, v7 = min(v6, v7), max(v6, v7)
            v1, v2 = min(v1, v2), max(v1, v2)
            v4, v5 = min(v4, v5), max(v4, v5)
            v7, v8 = min(v7, v8), max(v7, v8)
            v0, v3 = min(v0, v3), max(v0, v3)
            v5, v8 = min(v5, v8), max(v5, v8)
            v4, v7 = min(v4, v7), max(v4, v7)
            v3, v6 = min(v3, v6), max(v3, v6)
            v1, v4 = min(v1, v4), max(v1, v4)
            v2, v5 = min(v2, v5), max(v2, v5)
            v4, v7 = min(v4, v7), max(v4, v7)
            v4, v2 = min(v4, v2), max(v4, v2)
            v6, v4 = min(v6, v4), max(v6, v4)
            v4, v2 = min(v4, v2), max(v4, v2)
            o[x] = v4
    return out
