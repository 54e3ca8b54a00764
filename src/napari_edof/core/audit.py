"""The audit of a fusion: where the fused image holds values that no source plane holds.

A method that only *selects* source pixels (focus-select, the hybrid's confident pixels) puts in
every output pixel a value one of the planes has at that pixel. A network that *synthesises* the
image (vaeedof, fmb-fn with ``output="network"``) may invent values. The audit shows where, per
pixel, from the fused image and the (registered) source planes the method saw:

``audit`` (float32, the fused image's units)
    the distance of the fused value from the nearest source-plane value at that pixel,
    ``min_z |fused(y, x) - plane_z(y, x)|``, per channel, then the largest over the channels
    (so a pixel lights up when any of its channels was invented). 0: the value is one of the
    planes' values there (a pure selection is 0 everywhere); a blend of planes is within their
    range but usually not 0.

``audit_mask`` (bool)
    True where the fused value lies outside every source's *local range*: below the smallest
    or above the largest value of all planes over the ``(2 r + 1)^2`` neighbourhood of the pixel
    (``r`` = :data:`AUDIT_RADIUS` = 1, 3 x 3; clamped at the image border), by more than a
    tolerance, in any channel. The tolerance is one quantisation step for integer images (1) and
    a few float rounding steps of the local range's magnitude for floats. A blend of the planes
    (a weighted mean) never leaves that range; values a network made up often do.

Both depend only on the pixel and its 3 x 3 neighbourhood, so they are computed in stripes of
rows with one row of halo, identically for a whole image, its tiles, the streamed and the lazy
paths (``audit_image`` of a stripe of rows equals the same rows of the whole image's audit).
"""
from __future__ import annotations

import numpy as np

#: the neighbourhood radius of the local range (3 x 3)
AUDIT_RADIUS = 1
#: rows per block when a whole image is audited (memory: a few (Z, rows, X, C) temporaries)
BLOCK_ROWS = 256


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The float type that holds every value of ``dtype`` exactly (and the distances)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 or (dtype.kind in "iu" and dtype.itemsize >= 4):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def tolerance(dtype, magnitude=None):
    """How far outside the local range a value may lie before it is flagged: one quantisation step
    (1) for integer dtypes; for floats, 4 rounding steps (eps) of ``magnitude`` (the local range's
    largest absolute value, per pixel) or of 1."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return 1.0
    eps = 4 * float(np.finfo(dtype).eps)
    if magnitude is None:
        return eps
    return eps * np.maximum(magnitude, 1.0)


def audit_rows(planes: np.ndarray, fused: np.ndarray, *, offset: int, radius: int = AUDIT_RADIUS):
    """The audit of ``fused`` (S, X, C) against source rows ``planes`` (Z, R, X, C).

    ``planes`` holds the image rows ``a .. a + R`` and ``fused`` the rows ``a + offset .. a +
    offset + S``; the rows of ``planes`` beyond the fused ones are the halo of the local range
    (at least ``radius`` rows, or up to the image border, where the range is clamped).
    Returns (distance (S, X) float32, outside (S, X) bool).
    """
    from scipy import ndimage as ndi

    planes = np.asarray(planes)
    fused = np.asarray(fused)
    if planes.ndim == 3:
        planes = planes[..., None]
    if fused.ndim == 2:
        fused = fused[..., None]
    S = fused.shape[0]
    wt = _work_dtype(np.promote_types(planes.dtype, fused.dtype) if fused.dtype.kind == "f" else planes.dtype)
    f = fused.astype(wt, copy=False)
    core = planes[:, offset:offset + S]
    dist = None
    for z in range(core.shape[0]):
        d = np.abs(f - core[z].astype(wt, copy=False))
        dist = d if dist is None else np.minimum(dist, d, out=dist)
    distance = dist.max(axis=-1).astype(np.float32)
    k = 2 * int(radius) + 1
    lo = ndi.minimum_filter(planes.min(axis=0), size=(k, k, 1), mode="nearest")[offset:offset + S]
    hi = ndi.maximum_filter(planes.max(axis=0), size=(k, k, 1), mode="nearest")[offset:offset + S]
    lo, hi = lo.astype(wt, copy=False), hi.astype(wt, copy=False)
    dt = planes.dtype
    tol = tolerance(dt, np.maximum(np.abs(lo), np.abs(hi)) if dt.kind == "f" else None)
    outside = ((f < lo - tol) | (f > hi + tol)).any(axis=-1)
    return distance, outside


def audit_image(planes: np.ndarray, fused: np.ndarray, *, radius: int = AUDIT_RADIUS,
                rows: tuple[int, int] | None = None, block_rows: int = BLOCK_ROWS):
    """The audit of one image: ``planes`` (Z, Y, X[, C]) the sources, ``fused`` the fused rows
    ``rows = (s0, s1)`` of the image (default all: (Y, X[, C])). Computed in blocks of
    ``block_rows`` rows, each with ``radius`` rows of halo. Returns (distance, outside), (s1 - s0, X)."""
    planes = np.asarray(planes)
    Y = planes.shape[1]
    s0, s1 = (0, Y) if rows is None else rows
    fused = np.asarray(fused)
    dist = np.empty((s1 - s0, planes.shape[2]), np.float32)
    mask = np.empty((s1 - s0, planes.shape[2]), bool)
    for b0 in range(s0, s1, max(1, int(block_rows))):
        b1 = min(s1, b0 + block_rows)
        a, b = max(0, b0 - radius), min(Y, b1 + radius)
        d, m = audit_rows(planes[:, a:b], fused[b0 - s0:b1 - s0], offset=b0 - a, radius=radius)
        dist[b0 - s0:b1 - s0], mask[b0 - s0:b1 - s0] = d, m
    return dist, mask


def audit_frames(canon, fused) -> tuple[np.ndarray, np.ndarray]:
    """The audit of every time point: ``canon`` (T, Z, Y, X, C) sources (numpy or dask: read one
    time point at a time), ``fused`` (T, Y, X, C). Returns (T, Y, X) float32 and bool."""
    T = fused.shape[0]
    dist = np.empty(fused.shape[:3], np.float32)
    mask = np.empty(fused.shape[:3], bool)
    for t in range(T):
        dist[t], mask[t] = audit_image(np.asarray(canon[t]), np.asarray(fused[t]))
    return dist, mask


def audit_summary(distance, mask) -> dict:
    """The numbers a provenance keeps: the share of pixels flagged (outside the local range) and the
    largest and mean distance."""
    distance = np.asarray(distance)
    mask = np.asarray(mask)
    return {"radius": AUDIT_RADIUS, "outside_fraction": float(mask.mean()) if mask.size else 0.0,
            "outside_pixels": int(mask.sum()), "max_distance": float(distance.max()) if distance.size else 0.0,
            "mean_distance": float(distance.mean(dtype=np.float64)) if distance.size else 0.0}


def audit_note(prov: dict) -> str:
    """The audit in a one-line summary ("" when the run has none)."""
    a = prov.get("audit")
    if not isinstance(a, dict) or "outside_fraction" not in a:
        return ""
    return (f"; audit: {100 * a['outside_fraction']:.2f}% of pixels outside the sources' local range, "
            f"largest distance from a source value {a['max_distance']:.4g}")


def audit(stack, fused, *, axes: str | None = None):
    """The audit of any fused image against its source stack (see the module's docstring).

    ``stack``: a :class:`~napari_edof.Stack` or an array (with ``axes``); ``fused``: the fused image
    in the stack's axes without Z (as :attr:`FusionResult.fused`). Numpy in, numpy out; a lazy
    stack or fused image gives dask arrays (computed per time point and block of rows). Returns
    (distance, outside) shaped like the result's focus index.
    """
    from .errors import StackError
    from .stack import as_stack, is_dask

    st = as_stack(stack, axes=axes)
    canon = st.canonical()
    f = fused
    if "C" not in st.axes:
        f = f[..., None]
    if "T" not in st.axes:
        f = f[None]
    want = (st.n_times,) + tuple(st.yx_shape) + (st.n_channels,)
    if tuple(f.shape) != want:
        raise StackError(f"the fused image {tuple(np.shape(fused))} does not match the stack {st.shape} "
                         f"(axes {st.axes})")
    if is_dask(canon) or is_dask(f):
        import dask.array as da

        d, m = lazy_audit(canon, f)
        dist, mask = da.stack(d), da.stack(m)
    else:
        dist, mask = audit_frames(canon, f)
    if "T" not in st.axes:
        dist, mask = dist[0], mask[0]
    return dist, mask


def _audit_task(planes, fused, offset: int):
    return audit_rows(np.asarray(planes), np.asarray(fused), offset=offset)


def lazy_audit(canon, fused, spans=None, radius: int = AUDIT_RADIUS):
    """Dask arrays of the audit: per time point, a list of (Y, X) arrays built from one task per
    span of rows ``spans`` ([(s0, s1, fused_part)] per time point, ``fused_part`` a delayed or
    array of those rows; default: blocks of :data:`BLOCK_ROWS` rows of ``fused``). Returns
    ([distance per time point], [outside per time point])."""
    import dask
    import dask.array as da

    T, Y, X = fused.shape[:3]
    if spans is None:
        spans = [[(s0, min(Y, s0 + BLOCK_ROWS), fused[t, s0:min(Y, s0 + BLOCK_ROWS)])
                  for s0 in range(0, Y, BLOCK_ROWS)] for t in range(T)]
    dists, masks = [], []
    for t in range(T):
        dparts, mparts = [], []
        for s0, s1, part in spans[t]:
            a, b = max(0, s0 - radius), min(Y, s1 + radius)
            task = dask.delayed(_audit_task, pure=True, nout=2)(canon[t][:, a:b], part, s0 - a)
            dparts.append(da.from_delayed(task[0], (s1 - s0, X), np.float32))
            mparts.append(da.from_delayed(task[1], (s1 - s0, X), bool))
        dists.append(da.concatenate(dparts, axis=0))
        masks.append(da.concatenate(mparts, axis=0))
    return dists, masks


__all__ = ["AUDIT_RADIUS", "audit", "audit_frames", "audit_image", "audit_note", "audit_rows", "audit_summary",
           "lazy_audit", "tolerance"]
