"""Focus-measure selection: per pixel, the plane with the highest local sharpness.

The classical depth-from-focus pipeline: a focus measure per plane (Laplacian energy by default),
argmax over planes with a sub-plane parabolic refinement, a median filter on the index map, and a
soft blend between planes where the choice changes (so seams do not show). Confidence is
``1 - second best / best``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.colour import gather
from ..core.focus import MEASURES, box_sum_valid, measure_radius, measure_valid
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
    """Running argmax of the focus measure over planes.

    Returns (idx int16, offset float32 sub-plane in [-0.49, 0.49], confidence float32), each
    of the guide's shape cropped by the measure's radius.
    """
    kw = dict(radius=p["radius"], step=p["step"], threshold=p["threshold"])
    meas = p["measure"]
    best = measure_valid(guide[0], meas, **kw)
    shape = best.shape
    second = np.zeros(shape, np.float32)
    idx = np.zeros(shape, np.int16)
    left = np.zeros(shape, np.float32)
    right = np.zeros(shape, np.float32)
    prev, prev_upd = best, np.ones(shape, bool)
    keep = np.empty(shape, bool)
    for k in range(1, guide.shape[0]):
        m = measure_valid(guide[k], meas, **kw)
        upd = m > best
        np.greater(prev_upd, upd, out=keep)  # best was the previous plane and stays: m is its right
        np.copyto(right, m, where=keep)
        np.maximum(second, np.minimum(m, best), out=second)
        np.copyto(left, prev, where=upd)
        np.maximum(best, m, out=best)
        np.copyto(idx, k, where=upd)
        prev, prev_upd = m, upd
    # parabolic sub-plane refinement where both neighbours exist
    n = guide.shape[0]
    denom = left - 2 * best + right
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (left - right) / denom, 0).astype(np.float32)
    off[(idx == 0) | (idx == n - 1)] = 0
    np.clip(off, -0.49, 0.49, out=off)
    with np.errstate(divide="ignore", invalid="ignore"):
        conf = np.where(best > 0, 1 - second / best, 0).astype(np.float32)
    return idx, off, conf


def soft_gather(planes: np.ndarray, labels: np.ndarray, blend: int, crop: int) -> np.ndarray:
    """Blend source planes with weights = box-smoothed one-hot labels (radius ``blend``).

    ``labels`` is larger than the output by ``blend`` on each side; ``planes`` by ``crop``.
    Pixels whose neighbourhood has a single label are a plain gather.
    """
    h, w = labels.shape[0] - 2 * blend, labels.shape[1] - 2 * blend
    src = planes[:, crop : crop + h, crop : crop + w]
    core = labels[blend : blend + h, blend : blend + w]
    if blend == 0:
        return gather(src, core).astype(np.float32)
    lo = ndi.minimum_filter(labels, size=2 * blend + 1)[blend : blend + h, blend : blend + w]
    hi = ndi.maximum_filter(labels, size=2 * blend + 1)[blend : blend + h, blend : blend + w]
    out = gather(src, core).astype(np.float32)
    mixed = lo != hi
    if not mixed.any():
        return out
    ys, xs = np.nonzero(mixed)
    acc = np.zeros((len(ys), src.shape[-1]), np.float32)
    norm = np.float32((2 * blend + 1) ** 2)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=planes.shape[0]))
    for k in present:
        wk = box_sum_valid((labels == k).astype(np.float32), blend)[ys, xs] / norm
        sel = wk > 0
        if sel.any():
            acc[sel] += wk[sel, None] * src[k, ys[sel], xs[sel]].astype(np.float32)
    out[ys, xs] = acc
    return out


@register(SPEC)
class FocusSelect:
    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        r = measure_radius(p["measure"], p["radius"], p["step"])
        idx, off, conf = select_planes(guide, p)
        s, b = p["smooth"], p["blend"]
        if s:
            sm = ndi.median_filter(idx, size=2 * s + 1)[s:-s, s:-s]
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
