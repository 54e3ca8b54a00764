"""Looking at decisions after the fact: focus curves per pixel and re-rendering from edited labels."""
from __future__ import annotations

import numpy as np

from .colour import gather, make_guide, resolve_guide
from .errors import EdofError, StackError
from .focus import measure_radius, measure_valid
from .spec import get_method
from .stack import as_stack
from .tiling import read_window
from .values import to_int

#: the focus measure the inspector shows for methods without one of their own
DEFAULT_MEASURE = "laplacian"
DEFAULT_RADIUS = 4


def _frame(stack, t: int):
    canon = stack.canonical()
    if not 0 <= t < canon.shape[0]:
        raise StackError(f"time point {t} does not exist: the stack has {canon.shape[0]}")
    return canon[t]


def focus_curve(stack, y: int, x: int, *, t: int = 0, measure: str = "laplacian", radius: int = 4,
                step: int = 1, threshold: float = 0.0, guide="auto", axes: str | None = None) -> np.ndarray:
    """The focus measure of every plane at pixel (y, x): a (Z,) float32 curve.

    Reads only a small window around the pixel (lazy stacks stay lazy).
    """
    stack = as_stack(stack, axes=axes)
    Y, X = stack.yx_shape
    y, x, t = to_int(y, "y", StackError), to_int(x, "x", StackError), to_int(t, "t", StackError)
    if not (0 <= y < Y and 0 <= x < X):
        raise StackError(f"pixel ({y}, {x}) is outside the {Y}x{X} image")
    r = measure_radius(measure, radius, step)
    frame = _frame(stack, t)
    win = (y - r, y + r + 1, x - r, x + r + 1)
    planes = read_window(frame, win) if not hasattr(frame, "compute") else _read_lazy(frame, win, Y, X)
    g = make_guide(np.asarray(planes), resolve_guide(guide, stack.n_channels, stack.rgb))
    m = measure_valid(g, measure, radius=radius, step=step, threshold=threshold)
    return m[:, 0, 0].astype(np.float32)


def _read_lazy(frame, win, Y, X):
    y0, y1, x0, x1 = win
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, Y), max(x0, 0), min(x1, X)
    block = np.asarray(frame[:, cy0:cy1, cx0:cx1])
    # reflect the clipped block back out to the window (numpy 'reflect' at the image border)
    return np.pad(block, ((0, 0), (cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0)), mode="reflect")


def _check_labels(labels, stack) -> np.ndarray:
    """Labels as recompose reads them: whole numbers 0 (erased) .. planes (plane + 1)."""
    try:
        lab = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise StackError(f"labels are not an array of whole numbers: {exc}") from None
    if lab.dtype.kind not in "biuf":
        raise StackError(f"labels must be whole numbers (plane + 1, 0: erased), not {lab.dtype} values")
    if lab.dtype.kind == "f":
        if not np.isfinite(lab).all():
            raise StackError("labels contain NaN or infinite values; labels are whole numbers: plane + 1, "
                             "or 0 where erased")
        if (lab != np.rint(lab)).any():
            bad = lab[lab != np.rint(lab)].flat[0]
            raise StackError(f"label {bad} is not a whole number; labels are plane + 1, or 0 where erased")
    if lab.size and lab.min() < 0:
        raise StackError(f"label {lab.min():g} is negative; labels are plane + 1, or 0 where erased")
    if lab.size and lab.max() > stack.n_planes:
        raise StackError(f"label {lab.max():g} names a plane that does not exist (the stack has "
                         f"{stack.n_planes}; labels are plane + 1)")
    return lab


def recompose(stack, labels, *, fill=None, axes: str | None = None) -> np.ndarray:
    """Re-render the fused image from a decision map without recomputing focus measures.

    ``labels`` is ([T,] Y, X) with label = source plane + 1 (what napari's Labels layer edits);
    label 0 (erased) takes ``fill`` (e.g. the previous fused image) or plane 0 when ``fill`` is None.
    Returns ([T,] Y, X[, C]) in the stack's dtype.
    """
    stack = as_stack(stack, axes=axes)
    labels = _check_labels(labels, stack)
    T = stack.n_times
    lab = labels if labels.ndim == 3 else labels[None]
    want = f"{f'({T}, ' if T > 1 else '('}{stack.yx_shape[0]}, {stack.yx_shape[1]})"
    if lab.shape[1:] != stack.yx_shape or lab.shape[0] != T:
        raise StackError(f"labels of shape {labels.shape} do not match the stack's {want}")
    if fill is not None:
        fl = np.asarray(fill)
        if fl.dtype.kind not in "biuf" or fl.size != T * stack.yx_shape[0] * stack.yx_shape[1] * stack.n_channels:
            raise StackError(f"fill of shape {fl.shape} ({fl.dtype}) does not match the stack's image "
                             f"{want[:-1]}{f', {stack.n_channels}' if 'C' in stack.axes else ''})")
    out = []
    for t in range(T):
        frame = np.asarray(_frame(stack, t))
        idx = np.maximum(lab[t].astype(np.intp) - 1, 0)
        f = gather(frame, idx)
        if fill is not None:
            fl = np.asarray(fill)
            fl = fl if (T > 1) else fl[None]
            fl = fl[t].reshape(f.shape)
            f = np.where((lab[t] == 0)[..., None], fl, f)
        out.append(f)
    res = np.stack(out)
    if "C" not in stack.axes:
        res = res[..., 0]
    return res if "T" in stack.axes else res[0]


def measure_settings(method: str | None, params: dict | None) -> tuple[dict, str]:
    """focus_curve keyword arguments for a result made by ``method`` with ``params``.

    The method's own focus measure and radius when it has them, else the default Laplacian.
    Returns (kwargs, a short description for the plot).
    """
    params = dict(params or {})
    try:
        spec = get_method(method)[0] if method else None
    except EdofError:
        spec = None
    names = {p.name: p for p in spec.params} if spec is not None else {}
    if "measure" in names:
        kw = {"measure": params.get("measure", names["measure"].default)}
        for key in ("radius", "step", "threshold"):
            if key in names:
                kw[key] = params.get(key, names[key].default)
        return kw, f"{kw['measure']} (r={kw.get('radius', DEFAULT_RADIUS)}, as {method} used)"
    kw = {"measure": DEFAULT_MEASURE, "radius": int(params.get("radius", DEFAULT_RADIUS))
          if isinstance(params.get("radius"), (int, float)) else DEFAULT_RADIUS}
    why = f"{method} has no focus measure of its own" if method else "method unknown"
    return kw, f"{DEFAULT_MEASURE} (r={kw['radius']}, default: {why})"
