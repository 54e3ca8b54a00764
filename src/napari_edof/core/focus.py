"""Focus measures, in numpy and in torch, that agree.

Every measure maps a 2D float32 plane (or a batch ``(..., Y, X)``) to a sharpness map. The
``*_valid`` forms return only the pixels whose whole window lies inside the input (the output is
smaller by :func:`measure_radius` on every side): that is what tiles with halos need, and it keeps
the hot loop free of padding copies. :func:`focus_measure` gives the same-size map with reflected
borders.

Measures
--------
``laplacian``  energy of the 4-neighbour Laplacian, averaged over a (2r+1)^2 window.
``sml``        sum-modified-Laplacian (the FMB + FN paper's): ``|2I - I(x-s) - I(x+s)| + |2I - I(y-s) - I(y+s)|``,
               values below ``threshold`` set to 0, summed over a (2r+1)^2 window.
``tenengrad``  Sobel gradient energy ``gx^2 + gy^2``, averaged over the window.
``variance``   local variance over the window.
"""
from __future__ import annotations

import numpy as np

MEASURES = ("laplacian", "sml", "tenengrad", "variance")


def measure_radius(measure: str, radius: int, step: int = 1) -> int:
    """How many pixels a measure reads on each side of a pixel."""
    if measure == "laplacian":
        return 1 + radius
    if measure == "sml":
        return step + radius
    if measure == "tenengrad":
        return 1 + radius
    if measure == "variance":
        return radius
    raise ValueError(f"unknown focus measure {measure!r}; choose one of {', '.join(MEASURES)}")


# --------------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------------
def box_sum_valid(a: np.ndarray, radius: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sum over a (2r+1)x(2r+1) window, valid part only (last two axes shrink by 2r)."""
    if radius == 0:
        if out is None:
            return a
        out[...] = a
        return out
    n = 2 * radius + 1
    return _sum_axis(_sum_axis(a, n, a.ndim - 2), n, a.ndim - 1, out=out)


def _sum_axis(a: np.ndarray, n: int, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of ``n`` consecutive samples along ``axis`` (valid part), by doubling partial sums."""
    L = a.shape[axis] - n + 1

    def sl(start, stop):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, stop)
        return tuple(idx)

    res = None
    cur, span, offset, rem = a, 1, 0, n
    while rem:  # cur[i] holds the sum of `span` samples starting at i
        if rem & 1:
            piece = cur[sl(offset, offset + L)]
            if res is None:
                if out is not None and rem == 1:
                    np.copyto(out, piece)
                    res = out
                else:
                    res = piece.copy()
            else:
                np.add(res, piece, out=out if (out is not None and rem == 1) else res)
                if out is not None and rem == 1:
                    res = out
            offset += span
        rem >>= 1
        if rem:
            m = cur.shape[axis]
            cur = cur[sl(0, m - span)] + cur[sl(span, m)]
            span *= 2
    return res


def _flat_box(a: np.ndarray, n: int, stride: int, out: np.ndarray | None = None) -> np.ndarray:
    """out[i] = sum(a[i + j * stride] for j < n) on a 1D contiguous array, by doubling.

    Working on the flattened image keeps every operation a contiguous 1D numpy loop (2D views
    shifted along x are several times slower); out-of-row terms only reach pixels that the
    caller crops away. With ``out`` (at most as long as the result), the leading part of the
    result is written there.
    """
    L = a.shape[0] - (n - 1) * stride
    res = None
    cur, span, offset, rem = a, 1, 0, n
    while rem:
        if rem & 1:
            piece = cur[offset * stride : offset * stride + L]
            last = rem == 1
            if res is None:
                res = piece.copy() if not (last and out is not None) else np.copyto(out, piece[: len(out)]) or out
            elif last and out is not None:
                M = len(out)
                np.add(res[:M], piece[:M], out=out)
                res = out
            else:
                res += piece
            offset += span
        rem >>= 1
        if rem:
            m = cur.shape[0]
            cur = cur[: m - span * stride] + cur[span * stride :]
            span *= 2
    return res


def laplacian_energy_flat(g: np.ndarray, radius: int, out: np.ndarray | None = None) -> np.ndarray:
    """Window sums of the squared Laplacian of a 2D plane, in the flat layout.

    Returns a 1D array of length ``(H - n) * W`` (n = 2r + 1): reshaped to ``(H - n, W)``, its
    ``[1:, 1 : W - n]`` part is the valid measure (see :func:`flat_crop`); the other columns are
    scratch. Keeping this layout through the argmax saves a strided copy per plane.
    """
    g = np.ascontiguousarray(g, dtype=np.float32)
    H, W = g.shape
    n = 2 * radius + 1
    f = g.ravel()
    HW = H * W
    lo, hi = W + 1, HW - W - 1
    e = np.empty(HW, np.float32)
    seg = e[lo:hi]
    np.multiply(f[lo:hi], np.float32(4), out=seg)
    seg -= f[lo - 1 : hi - 1]
    seg -= f[lo + 1 : hi + 1]
    seg -= f[lo - W : hi - W]
    seg -= f[lo + W : hi + W]
    np.multiply(seg, seg, out=seg)
    e[:lo] = 0
    e[hi:] = 0
    M = (H - n) * W
    if n == 1:
        b = e[:M]
        return b if out is None else (np.copyto(out, b) or out)
    return _flat_box(_flat_box(e, n, 1), n, W, out=out)[:M]


def flat_crop(flat: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """The valid (H - 2 - 2r, W - 2 - 2r) view of a :func:`laplacian_energy_flat` layout."""
    H, W = shape
    n = 2 * radius + 1
    return flat.reshape(flat.shape[:-1] + (H - n, W))[..., 1:, 1 : W - n]


def laplacian_energy_valid(g: np.ndarray, radius: int, out: np.ndarray | None = None) -> np.ndarray:
    """Window mean of the squared 4-neighbour Laplacian of a 2D plane, valid part.

    Same values as ``measure_valid(g, "laplacian", radius=radius)``, computed on the flattened
    plane (see :func:`laplacian_energy_flat`).
    """
    n = 2 * radius + 1
    view = flat_crop(laplacian_energy_flat(g, radius), g.shape, radius)
    if out is None:
        out = np.empty(view.shape, np.float32)
    np.multiply(view, np.float32(1.0 / (n * n)), out=out)
    return out


def laplacian_valid(p: np.ndarray) -> np.ndarray:
    c = p[..., 1:-1, 1:-1]
    lap = c * np.float32(4)
    lap -= p[..., :-2, 1:-1]
    lap -= p[..., 2:, 1:-1]
    lap -= p[..., 1:-1, :-2]
    lap -= p[..., 1:-1, 2:]
    return lap


def measure_valid(p: np.ndarray, measure: str = "laplacian", *, radius: int = 2, step: int = 1,
                  threshold: float = 0.0) -> np.ndarray:
    """A focus measure on ``p`` (float32, (..., Y, X)), valid part only.

    Windowed measures are window *means* (laplacian, tenengrad, variance) or *sums* (sml, as in
    the paper); either way the argmax over planes is the same.
    """
    p = np.asarray(p, dtype=np.float32)
    n = np.float32((2 * radius + 1) ** 2)
    if measure == "laplacian":
        if p.ndim == 2 and min(p.shape) > 2 * radius + 2:
            return laplacian_energy_valid(p, radius)
        e = laplacian_valid(p)
        np.multiply(e, e, out=e)
        out = box_sum_valid(e, radius)
        out /= n
        return out
    if measure == "sml":
        s = step
        c = p[..., s:-s, s:-s]
        c2 = c * np.float32(2)
        ml = np.abs(c2 - p[..., s:-s, : -2 * s] - p[..., s:-s, 2 * s :])
        ml += np.abs(c2 - p[..., : -2 * s, s:-s] - p[..., 2 * s :, s:-s])
        if threshold > 0:
            ml[ml < threshold] = 0
        return box_sum_valid(ml, radius)
    if measure == "tenengrad":
        # Sobel: gx = [1 2 1]^T (x) [-1 0 1], gy the transpose
        dx = p[..., :, 2:] - p[..., :, :-2]
        gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
        dy = p[..., 2:, :] - p[..., :-2, :]
        gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
        e = gx * gx
        e += gy * gy
        out = box_sum_valid(e, radius)
        out /= n
        return out
    if measure == "variance":
        m = box_sum_valid(p, radius) / n
        m2 = box_sum_valid(p * p, radius) / n
        out = m2 - m * m
        np.maximum(out, 0, out=out)
        return out
    raise ValueError(f"unknown focus measure {measure!r}; choose one of {', '.join(MEASURES)}")


def focus_measure(p, measure: str = "laplacian", *, radius: int = 2, step: int = 1,
                  threshold: float = 0.0) -> np.ndarray:
    """Same-size focus measure of ``p`` ((..., Y, X)) with reflected borders (float32)."""
    p = np.asarray(p, dtype=np.float32)
    r = measure_radius(measure, radius, step)
    if min(p.shape[-2:]) <= r:
        pad = [(0, 0)] * (p.ndim - 2) + [(r, r), (r, r)]
        p = np.pad(p, pad, mode="symmetric")
    else:
        pad = [(0, 0)] * (p.ndim - 2) + [(r, r), (r, r)]
        p = np.pad(p, pad, mode="reflect")
    return measure_valid(p, measure, radius=radius, step=step, threshold=threshold)


# --------------------------------------------------------------------------------------------
# torch (imported only when called)
# --------------------------------------------------------------------------------------------
def measure_valid_torch(p, measure: str = "laplacian", *, radius: int = 2, step: int = 1,
                        threshold: float = 0.0):
    """The torch twin of :func:`measure_valid` (input (..., Y, X) float tensor, any device)."""
    import torch
    import torch.nn.functional as F

    shape = p.shape
    x = p.reshape(-1, 1, shape[-2], shape[-1]).float()
    k = 2 * radius + 1

    def box(e, mean: bool):
        if radius == 0:
            return e
        out = F.avg_pool2d(e, k, stride=1)
        return out if mean else out * (k * k)

    if measure == "laplacian":
        w = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=x.dtype, device=x.device)
        e = F.conv2d(x, w.view(1, 1, 3, 3)) ** 2
        out = box(e, True)
    elif measure == "sml":
        s = step
        c = x[..., s:-s, s:-s]
        ml = (2 * c - x[..., s:-s, : -2 * s] - x[..., s:-s, 2 * s :]).abs()
        ml = ml + (2 * c - x[..., : -2 * s, s:-s] - x[..., 2 * s :, s:-s]).abs()
        if threshold > 0:
            ml = torch.where(ml < threshold, torch.zeros_like(ml), ml)
        out = box(ml, False)
    elif measure == "tenengrad":
        sx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
        gx = F.conv2d(x, sx.view(1, 1, 3, 3))
        gy = F.conv2d(x, sx.t().contiguous().view(1, 1, 3, 3))
        out = box(gx * gx + gy * gy, True)
    elif measure == "variance":
        m = box(x, True)
        m2 = box(x * x, True)
        out = (m2 - m * m).clamp_min(0)
    else:
        raise ValueError(f"unknown focus measure {measure!r}; choose one of {', '.join(MEASURES)}")
    return out.reshape(*shape[:-2], out.shape[-2], out.shape[-1])
