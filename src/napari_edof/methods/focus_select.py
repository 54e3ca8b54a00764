"""Focus-measure selection: per pixel, the plane with the highest local sharpness.

The classical depth-from-focus pipeline: a focus measure per plane (Laplacian energy by default),
argmax over planes with a sub-plane parabolic refinement, a median filter on the index map, and a
soft blend between planes where the choice changes (so seams do not show). Confidence is how far
the best plane's sharpness stands above the mean over planes.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.colour import gather
from ..core.focus import MEASURES, flat_crop, laplacian_energy_flat, measure_radius, measure_valid
from ._registry import MethodSpec, Param, register


def _halo(p: dict) -> int:
    return measure_radius(p["measure"], p["radius"], p["step"]) + p["smooth"] + p["blend"]


SPEC = MethodSpec(
    name="focus-select",
    summary="Per-pixel sharpest plane by a focus measure, median-smoothed index, soft seams (fast default).",
    family="classical",
    params=(
        Param("measure", str, "laplacian", "focus measure", choices=MEASURES),
        Param("radius", int, 4, "focus-measure window radius (pixels)", min=0, max=32),
        Param("step", int, 1, "sum-modified-Laplacian step (sml only)", min=1, max=8),
        Param("threshold", float, 0.0, "sum-modified-Laplacian threshold, in image units (sml only)", min=0.0),
        Param("smooth", int, 1, "median filter radius on the index map (0: off)", min=0, max=8),
        Param("blend", int, 1, "soft-blend radius at plane transitions (0: hard selection)", min=0, max=8),
    ),
    halo=_halo,
    citation="Nayar & Nakagawa, 'Shape from focus', IEEE TPAMI 16(8), 1994 (sum-modified-Laplacian).",
)


def select_planes(guide: np.ndarray, p: dict):
    """Argmax of the focus measure over planes, with sub-plane refinement and confidence.

    Returns (idx int16, offset float32 in [-0.49, 0.49], confidence float32, measures), each map
    of the guide's shape cropped by the measure's radius; ``measures`` is the (Z, P) volume in
    its working layout.
    Confidence is how far the peak stands above the mean over planes, scaled to [0, 1]
    (0: every plane equally sharp, 1: only one plane has any detail).
    """
    meas, radius = p["measure"], p["radius"]
    kw = dict(step=p["step"], threshold=p["threshold"])
    n = guide.shape[0]
    if meas == "laplacian":
        # the hot path: flat contiguous loops, no strided copies or masked writes per plane
        H, W = guide.shape[1:]
        P = (H - 2 * radius - 1) * W
        vol = np.empty((n, P), np.float32)
        for k in range(n):
            laplacian_energy_flat(guide[k], radius, out=vol[k])
        crop = lambda a: flat_crop(a, (H, W), radius)  # noqa: E731
    else:
        vol = np.stack([measure_valid(guide[k], meas, radius=radius, **kw) for k in range(n)])
        hw = vol.shape[1:]
        vol = vol.reshape(n, -1)
        crop = lambda a: a.reshape(a.shape[:-1] + hw)  # noqa: E731
    P = vol.shape[1]
    best = vol[0].copy()
    total = vol[0].copy()
    idx = np.zeros(P, np.int16)
    upd = np.empty(P, bool)
    for k in range(1, n):
        m = vol[k]
        total += m
        np.greater(m, best, out=upd)
        np.maximum(best, m, out=best)
        np.maximum(idx, upd * np.int16(k), out=idx)  # planes come in order: the last update wins
    pos = np.arange(P)
    i = idx.astype(np.intp)
    left = np.take(vol, np.maximum(i - 1, 0) * P + pos)
    right = np.take(vol, np.minimum(i + 1, n - 1) * P + pos)
    idx, best, total, left, right = (crop(a) for a in (idx, best, total, left, right))
    h, w = idx.shape
    # sub-plane refinement: a parabola through the best plane and its neighbours
    mean = total / np.float32(n)
    denom = left - 2 * best + right
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (left - right) / denom, 0).astype(np.float32)
        conf = np.where(best > 0, (best - mean) / (best * (1 - 1 / n)), 0).astype(np.float32)
    off[(idx == 0) | (idx == n - 1)] = 0
    np.clip(off, -0.49, 0.49, out=off)
    return np.ascontiguousarray(idx), off, conf, vol


def median3(a: np.ndarray) -> np.ndarray:
    """3x3 median, valid part, by a 19-comparison sorting network on shifted views."""
    h, w = a.shape[0] - 2, a.shape[1] - 2
    v = [a[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    mn, mx = np.minimum, np.maximum

    def s(i, j):
        v[i], v[j] = mn(v[i], v[j]), mx(v[i], v[j])

    for i, j in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
                 (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):
        s(i, j)
    return v[4]


def median_valid(a: np.ndarray, radius: int) -> np.ndarray:
    if radius == 1:
        return median3(a)
    return ndi.median_filter(a, size=2 * radius + 1)[radius:-radius, radius:-radius]


def soft_gather(planes: np.ndarray, labels: np.ndarray, blend: int, crop: int) -> np.ndarray:
    """Gather source pixels by ``labels``, blending planes where the label changes.

    Each output pixel is the mean of the source planes named by the labels in its
    (2 * blend + 1)^2 neighbourhood (box-smoothed one-hot weights), so a seam between two planes
    becomes a short ramp. ``labels`` is larger than the output by ``blend`` on each side and
    ``planes`` by ``crop``. Only pixels near a transition are touched by the blend.
    """
    h, w = labels.shape[0] - 2 * blend, labels.shape[1] - 2 * blend
    src = planes[:, crop : crop + h, crop : crop + w]
    core = labels[blend : blend + h, blend : blend + w]
    out = gather(src, core).astype(np.float32)
    if blend == 0:
        return out
    mixed = np.zeros((h, w), bool)
    offsets = [(dy, dx) for dy in range(2 * blend + 1) for dx in range(2 * blend + 1)]
    for dy, dx in offsets:
        mixed |= labels[dy : dy + h, dx : dx + w] != core
    ys, xs = np.nonzero(mixed)
    if len(ys) == 0:
        return out
    acc = np.zeros((len(ys), src.shape[-1]), np.float32)
    for dy, dx in offsets:
        acc += src[labels[ys + dy, xs + dx], ys, xs]
    out[ys, xs] = acc / np.float32(len(offsets))
    return out


@register(SPEC)
class FocusSelect:
    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        r = measure_radius(p["measure"], p["radius"], p["step"])
        idx, off, conf, _ = select_planes(guide, p)
        s, b = p["smooth"], p["blend"]
        if s:
            sm = median_valid(idx, s)
            changed = sm != idx[s:-s, s:-s]
            off = off[s:-s, s:-s]
            off[changed] = 0
            conf = conf[s:-s, s:-s]
            idx = sm
        # idx now covers the window cropped by r + s; the output is cropped by halo
        extra = halo - (r + s + b)  # the engine may round the halo up
        if extra:
            e = extra
            idx = idx[e:-e, e:-e]
            off, conf = off[e:-e, e:-e], conf[e:-e, e:-e]
        c = b
        fused = soft_gather(planes, idx, b, halo)
        index = idx[c : idx.shape[0] - c, c : idx.shape[1] - c].astype(np.float32)
        index += off[c : off.shape[0] - c, c : off.shape[1] - c]
        return {"fused": fused, "index": index, "confidence": conf[c : conf.shape[0] - c, c : conf.shape[1] - c]}
