"""Focus-measure selection: per pixel, the plane with the highest local sharpness.

The classical depth-from-focus pipeline: a focus measure per plane (Laplacian energy by default),
argmax over planes with a sub-plane parabolic refinement, a median filter on the index map, and a
soft blend between planes where the choice changes (so seams do not show). Confidence is how far
the best plane's sharpness stands above the mean over planes.
"""
from __future__ import annotations

import numpy as np

from ..core.colour import gather
from ..core.focus import MEASURES, flat_crop, laplacian_energy_flat, measure_radius, measure_valid
from ..core.lazy import LazyModule
from ..core.select import median3
from ._registry import MethodSpec, Param, register

ndi = LazyModule("scipy.ndimage")


def _halo(p: dict) -> int:
    extra = p.get("consistency", 0) + (p.get("edge_refine", 0) + 1 if p.get("edge_refine", 0) else 0)
    return measure_radius(p["measure"], p["radius"], p["step"]) + p["smooth"] + p["blend"] + extra


LOWTEXTURE = ("off", "nearest", "blend", "mask")
TIES = ("none", "near", "far")


SPEC = MethodSpec(
    name="focus-select",
    summary="Per-pixel sharpest plane by a focus measure, median-smoothed index, soft seams (fast).",
    family="classical",
    params=(
        Param("measure", str, "laplacian", label="Focus measure", help="focus measure", choices=MEASURES),
        Param("radius", int, 4, label="Window radius", help="focus-measure window radius (pixels)", min=0, max=32),
        Param("step", int, 1, label="SML step", advanced=True,
              help="sum-modified-Laplacian step (sml only)", min=1, max=8),
        Param("threshold", float, 0.0, label="SML threshold", advanced=True,
              help="sum-modified-Laplacian threshold, in image units (sml only)", min=0.0),
        Param("smooth", int, 1, label="Smooth the index",
              help="median filter radius on the index map (0: off)", min=0, max=8),
        Param("blend", int, 1, label="Blend radius",
              help="soft-blend radius at plane transitions (0: hard selection)", min=0, max=8),
        Param("lowtexture", str, "off", label="Low-texture areas", advanced=True,
              help="never-in-focus pixels (best focus measure within the noise): off; nearest: the nearest sharp "
              "pixel's plane; blend: the index interpolated smoothly; mask: index NaN (confidence 0 in all three)",
              choices=LOWTEXTURE),
        Param("noise_k", float, 4.0, label="Never in focus below (x noise)", advanced=True,
              help="never in focus: best focus measure below noise_k x that of the noise alone",
              min=0.5, max=1000.0),
        Param("noise", float, 0.0, label="Noise level", advanced=True,
              help="image noise standard deviation, in image units (0: estimated from the stack)",
              min=0.0),
        Param("tie", str, "none", label="Ties prefer", advanced=True,
              help="when planes are within tie_tol of the sharpest: prefer the near (first, lowest "
              "index) or the far (last) plane", choices=TIES),
        Param("tie_tol", float, 0.1, label="Tie tolerance", advanced=True,
              help="relative tolerance of a tie (0.1: within 10% of the sharpest)", min=0.0, max=0.9),
        Param("edge_refine", int, 0, label="Refine depth edges (px)", advanced=True,
              help="re-decide pixels within this many pixels of a depth edge with a 3x3-window "
              "measure, between the planes on either side (reduces halos; 0: off)", min=0, max=16),
        Param("consistency", int, 0, label="Outlier filter radius", advanced=True,
              help="outlier filter radius on the index: pixels more than one plane away from "
              "their neighbourhood's median take it (0: off)", min=0, max=8),
    ),
    halo=_halo,
    citation="Nayar & Nakagawa, 'Shape from focus', IEEE TPAMI 16(8), 1994 (sum-modified-Laplacian).",
)


def select_planes(guide: np.ndarray, p: dict, *, want_best: bool = False):
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
    tie = p.get("tie", "none")
    if tie != "none":  # the first (near) or last (far) plane within tie_tol of the best
        thr = best * np.float32(1 - p.get("tie_tol", 0.1))
        order = range(n) if tie == "near" else range(n - 1, -1, -1)
        chosen = np.zeros(P, bool)
        for k in order:
            hit = (vol[k] >= thr) & ~chosen
            idx[hit] = k
            chosen |= hit
    pos = np.arange(P)
    i = idx.astype(np.intp)
    left = np.take(vol, np.maximum(i - 1, 0) * P + pos)
    right = np.take(vol, np.minimum(i + 1, n - 1) * P + pos)
    if tie != "none":  # the parabola is about the chosen plane's own neighbours
        best = np.take(vol, i * P + pos)
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
    if want_best:
        return np.ascontiguousarray(idx), off, conf, vol, best
    return np.ascontiguousarray(idx), off, conf, vol


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


def noise_measure(p: dict, sigma: float) -> float:
    """The mean focus measure (as :func:`select_planes` computes it) of white Gaussian noise of
    standard deviation ``sigma``: the level a never-in-focus pixel cannot be told from."""
    key = (p["measure"], p["radius"], p["step"], p["threshold"])
    unit = _NOISE_UNIT.get(key)
    if unit is None:
        g = np.random.default_rng(0).standard_normal((1, 96, 96)).astype(np.float32)
        q = dict(p, tie="none")
        best = select_planes(np.concatenate([g, g]), q, want_best=True)[4]
        unit = _NOISE_UNIT[key] = float(best.mean())
    if p["measure"] == "sml" and p["threshold"] > 0:  # thresholded: not quadratic in sigma
        g = np.random.default_rng(0).standard_normal((1, 96, 96)).astype(np.float32) * np.float32(sigma)
        return float(select_planes(np.concatenate([g, g]), dict(p, tie="none"), want_best=True)[4].mean())
    power = 1 if p["measure"] == "sml" else 2  # sml is linear in the image, the others quadratic
    return unit * float(sigma) ** power


_NOISE_UNIT: dict = {}
_MAD = 0.6744897501960817  # median of |N(0, 1)|
#: Side of the blocks the noise level is estimated on.
NOISE_BLOCK = 64


def _haar_sigma(p: np.ndarray) -> float:
    """Noise standard deviation from the finest diagonal Haar detail of a 2D block (MAD)."""
    h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return float("inf")
    q = p[:h, :w]
    d = (q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) * np.float32(0.5)
    return float(np.median(np.abs(d))) / _MAD


def _fill_nearest(low: np.ndarray, *maps):
    """Each flagged pixel takes the values of the nearest unflagged pixel (in the tile)."""
    if not low.any() or low.all():
        return maps
    iy, ix = ndi.distance_transform_edt(low, return_distances=False, return_indices=True)
    return tuple(m[iy, ix] for m in maps)


def _fill_blend(low: np.ndarray, idx: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """A smooth index in the flagged pixels: the nearest unflagged pixels' index, Gaussian-smoothed
    (so the flagged region interpolates between the planes around it without steps)."""
    out = idx.astype(np.float32)
    if not low.any() or low.all():
        return out
    (filled,) = _fill_nearest(low, out)
    smooth = ndi.gaussian_filter(filled, sigma, mode="nearest")
    out[low] = smooth[low]
    return out


def _edge_refine(guide: np.ndarray, idx: np.ndarray, r: int, width: int) -> np.ndarray:
    """Halo reduction: near jumps of at least 2 planes in ``idx``, choose between the planes seen on
    either side (the neighbourhood's min..max) by a 3x3-window Laplacian energy, which reaches 2
    pixels instead of ``r``. ``idx`` is the guide's grid cropped by ``r``."""
    lo = ndi.minimum_filter(idx, size=3, mode="nearest")
    hi = ndi.maximum_filter(idx, size=3, mode="nearest")
    band = ndi.binary_dilation((hi - lo) >= 2, iterations=width)
    if not band.any():
        return idx
    size = 2 * width + 3
    lo = ndi.minimum_filter(idx, size=size, mode="nearest")[band]
    hi = ndi.maximum_filter(idx, size=size, mode="nearest")[band]
    rs = measure_radius("laplacian", 1)
    h, w = idx.shape
    e = r - rs  # the small measure's grid is larger by r - rs on each side
    ys, xs = np.nonzero(band)
    n = guide.shape[0]
    vals = np.empty((n, len(ys)), np.float32)
    for k in range(n):
        m = measure_valid(guide[k], "laplacian", radius=1)
        vals[k] = m[ys + e, xs + e]
    z = np.arange(n)[:, None]
    vals[(z < lo[None]) | (z > hi[None])] = -np.inf
    out = idx.copy()
    out[ys, xs] = vals.argmax(axis=0).astype(idx.dtype)
    return out


def _consistency(idx: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Outlier filter: where ``idx`` is more than one plane from its (2c+1)^2 median, take the median.
    Returns the valid part (cropped by ``c``) and the mask of replaced pixels."""
    med = ndi.median_filter(idx, size=2 * c + 1)[c:-c, c:-c]
    core = idx[c:-c, c:-c]
    bad = np.abs(core.astype(np.int32) - med) > 1
    return np.where(bad, med, core).astype(idx.dtype), bad


@register(SPEC)
class FocusSelect:
    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params
        lt = params.get("lowtexture", "off")
        self.policies = lt != "off" or params.get("edge_refine", 0) or params.get("consistency", 0)
        self.first_pass = ("noise",) if lt != "off" and not params.get("noise", 0) else ()

    #: the noise level is a whole-image statistic, estimated in a first pass only when a
    #: never-in-focus policy is on and no ``noise`` is given (set per instance in ``__init__``)
    first_pass: tuple[str, ...] = ()

    def pass1(self, planes, guide, *, halo):
        """The noise level of each 64-pixel block of the tile: the smallest, over planes, of the
        robust (median absolute) standard deviation of the finest diagonal Haar detail. At any
        place most planes are out of focus, and blur removes that detail, so the most blurred
        plane's value is the noise's. The global median over blocks (:meth:`reduce`) follows."""
        g = guide[:, halo : guide.shape[1] - halo, halo : guide.shape[2] - halo] if halo else guide
        Z, h, w = g.shape
        out = np.empty((h, w), np.float32)
        B = NOISE_BLOCK
        for y in range(0, h, B):
            for x in range(0, w, B):
                out[y : y + B, x : x + B] = min(_haar_sigma(g[k, y : y + B, x : x + B]) for k in range(Z))
        return {"noise": out}

    def reduce(self, maps):
        return {"noise_sigma": float(np.median(maps["noise"]))}

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        if self.policies or p.get("tie", "none") != "none":
            return self._fuse_tile_policies(planes, guide, halo=halo, stats=stats)
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

    def _fuse_tile_policies(self, planes, guide, *, halo, stats=None):
        """The same pipeline with the robustness options: tie preference (in select_planes), halo
        reduction at depth edges, the never-in-focus policy, the outlier filter."""
        p = self.p
        r = measure_radius(p["measure"], p["radius"], p["step"])
        idx, off, conf, _, best = select_planes(guide, p, want_best=True)
        er, cons, lt = p.get("edge_refine", 0), p.get("consistency", 0), p.get("lowtexture", "off")
        if er:
            new = _edge_refine(guide, idx, r, er)
            off[new != idx] = 0
            idx = new
        low = None
        smooth_idx = None
        if lt != "off":
            sigma = p.get("noise", 0) or (stats or {}).get("noise_sigma", 0.0)
            low = best < np.float32(p["noise_k"] * noise_measure(p, sigma))
            conf[low] = 0
            off[low] = 0
            if lt == "nearest":
                idx, off = _fill_nearest(low, idx, off)
            elif lt == "blend":
                smooth_idx = _fill_blend(low, idx)
                idx = np.rint(smooth_idx).astype(idx.dtype)
                off = np.where(low, smooth_idx - idx, off).astype(np.float32)
        maps = [off, conf] + [m for m in (low,) if m is not None]
        s, b = p["smooth"], p["blend"]
        if s:
            sm = median_valid(idx, s)
            changed = sm != idx[s:-s, s:-s]
            maps = [m[s:-s, s:-s] for m in maps]
            keep = ~changed
            if low is not None and lt == "blend":  # keep the interpolated sub-plane index
                keep |= maps[2]
            maps[0] = np.where(keep, maps[0], 0).astype(np.float32)
            idx = sm
        if cons:
            idx2, bad = _consistency(idx, cons)
            maps = [m[cons:-cons, cons:-cons] for m in maps]
            maps[0] = np.where(bad, 0, maps[0]).astype(np.float32)
            idx = idx2
        extra = halo - (r + s + b + cons)  # the halo also covers edge_refine's reach, and engine rounding
        if extra:
            e = extra
            idx = idx[e:-e, e:-e]
            maps = [m[e:-e, e:-e] for m in maps]
        c = b
        crop = lambda a: a[c : a.shape[0] - c, c : a.shape[1] - c]  # noqa: E731
        fused = soft_gather(planes, idx, b, halo)
        index = crop(idx).astype(np.float32) + crop(maps[0])
        conf = crop(maps[1])
        if lt == "mask":
            index[crop(maps[2])] = np.nan
        return {"fused": fused, "index": index, "confidence": conf}
