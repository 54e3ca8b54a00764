"""No-reference quality figures of a fusion (used by the robustness benchmarks and tests).

* :func:`tenengrad` — mean squared Sobel gradient magnitude of an image: higher is sharper.
* :func:`laplacian_energy` — mean squared Laplacian: higher is sharper.
* :func:`index_roughness` — fraction of pixels whose focus index differs from their 3x3 median
  by more than half a plane: lower is a smoother, more consistent focus map.
* :func:`index_tv` — mean absolute difference between neighbouring index values (total
  variation per pixel): lower is smoother.
* :func:`alignment` — mean normalised cross-correlation of band-passed neighbouring planes at
  zero shift: higher is better aligned (blur differences lower it equally with or without
  registration).
* :func:`band_around_edges` — pixels within ``width`` of a jump of at least ``jump`` planes in a
  ground-truth index (where halos appear).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _grey(img) -> np.ndarray:
    a = np.asarray(img, np.float64)
    if a.ndim == 3:  # (Y, X, C)
        a = a[..., :3].mean(axis=-1)
    return a


def tenengrad(img) -> float:
    a = _grey(img)
    gy, gx = ndi.sobel(a, 0), ndi.sobel(a, 1)
    return float(np.mean((gy * gy + gx * gx)[1:-1, 1:-1]))


def laplacian_energy(img) -> float:
    a = _grey(img)
    return float(np.mean(ndi.laplace(a)[1:-1, 1:-1] ** 2))


def index_roughness(index, mask=None) -> float:
    a = np.asarray(index, np.float32)
    ok = np.isfinite(a)
    a = np.where(ok, a, 0)
    med = ndi.median_filter(a, size=3, mode="nearest")
    if mask is not None:
        ok &= np.asarray(mask, bool)
    return float(np.mean((np.abs(a - med) > 0.5)[ok])) if ok.any() else 0.0


def index_tv(index) -> float:
    a = np.asarray(index, np.float64)
    dy = np.abs(np.diff(a, axis=0))
    dx = np.abs(np.diff(a, axis=1))
    return float((np.nanmean(dy) + np.nanmean(dx)) / 2)


def band_around_edges(gt_index, width: int = 4, jump: int = 2) -> np.ndarray:
    g = np.asarray(gt_index, np.float32)
    rng = ndi.maximum_filter(g, size=3) - ndi.minimum_filter(g, size=3)
    edges = rng >= jump
    if width <= 0:
        return edges
    return ndi.binary_dilation(edges, iterations=width)


def alignment(planes) -> float:
    """Mean zero-shift normalised cross-correlation of band-passed neighbouring planes (Z, Y, X)."""
    p = np.asarray(planes, np.float32)
    m = 16 if min(p.shape[1:]) > 64 else 0
    vals = []
    prev = None
    for k in range(p.shape[0]):
        b = ndi.gaussian_filter(p[k], 1.0) - ndi.gaussian_filter(p[k], 4.0)
        if m:
            b = b[m:-m, m:-m]
        b = b - b.mean()
        b /= max(float(np.sqrt((b * b).mean())), 1e-12)
        if prev is not None:
            vals.append(float((b * prev).mean()))
        prev = b
    return float(np.mean(vals)) if vals else 1.0
