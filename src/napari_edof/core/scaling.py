"""Input scaling of the networks: a window's planes mapped to [0, 1] (numpy only).

Every learned method offers the same two conventions (its ``normalise`` parameter):

- ``"range"``: a robust contrast stretch, the :data:`QUANTILES` of all the window's values (every
  4th pixel of large planes), clipped to [0, 1]; the min/max when those quantiles coincide; a
  constant window gives zeros. Dim data (12-bit in uint16, microscopy) then looks to a network
  as it did in training.
- ``"dtype"``: the authors' convention: integers divided by their maximum (from max(min, 0)),
  floats as given.
"""
from __future__ import annotations

import math

import numpy as np

QUANTILES = (0.0005, 0.9995)
MODES = ("range", "dtype")


def unit_range(planes: np.ndarray, dtype=None, mode: str = "range", q=QUANTILES) -> tuple[float, float]:
    """``(lo, hi)`` such that ``(x - lo) / (hi - lo)`` maps ``planes`` to about [0, 1] (``hi > lo``).

    ``dtype``: the data's type for ``mode="dtype"`` (default: the array's own).
    """
    planes = np.asarray(planes)
    dtype = np.dtype(planes.dtype if dtype is None else dtype)
    if mode == "dtype":
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo = max(int(info.min), 0)
            return float(lo), float(info.max)
        return 0.0, 1.0
    if mode != "range":
        raise ValueError(f"unknown scaling {mode!r}; choose one of {', '.join(MODES)}")
    sub = planes[:, ::4, ::4] if planes.ndim == 3 and planes[0].size > 1 << 16 else planes
    lo, hi = np.quantile(sub, q)
    if not hi > lo:
        lo, hi = float(np.min(planes)), float(np.max(planes))
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def to_unit(planes: np.ndarray, dtype=None, mode: str = "range", q=QUANTILES) -> np.ndarray:
    """``planes`` (any shape, input units) scaled to [0, 1] as float32 (see the module docstring)."""
    lo, hi = unit_range(planes, dtype, mode, q)
    if mode == "dtype":
        return ((planes - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)
    out = np.asarray((planes - np.float32(lo)) * np.float32(1.0 / (hi - lo)), np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


#: Float data whose magnitude lies outside [2**-SAFE_EXP, 2**SAFE_EXP] is scaled for fusion: focus
#: measures square and sum values, which overflows (to inf, NaN confidence) near 1e19 and
#: underflows (to 0, index 0 everywhere) near 1e-19 in float32.
SAFE_EXP = 40


def value_scale(stack) -> float:
    """A power of two ``s`` such that ``planes * s`` has magnitudes near 1, for float stacks whose
    values are extreme (see :data:`SAFE_EXP`); 1.0 otherwise (integers, ordinary floats: the run
    is unchanged). Multiplying by a power of two is exact, so the engine fuses ``planes * s`` and
    divides the fused image by ``s`` again. Measured on the centre (at most 2048 x 2048 pixels)
    of the first time point's middle plane (then its first and last, if that one is all zero)."""
    if stack.dtype.kind != "f":
        return 1.0
    canon = stack.canonical()  # (T, Z, Y, X, C)
    Z, Y, X = canon.shape[1:4]
    ys = slice(max(0, Y // 2 - 1024), Y // 2 + 1024)
    xs = slice(max(0, X // 2 - 1024), X // 2 + 1024)
    for z in dict.fromkeys((Z // 2, 0, Z - 1)):
        a = canon[0, z, ys, xs]
        a = np.asarray(a.compute() if hasattr(a, "compute") else a)
        a = np.abs(a[np.isfinite(a)])
        peak = float(a.max()) if a.size else 0.0
        if peak > 0:
            if 2.0 ** -SAFE_EXP <= peak <= 2.0 ** SAFE_EXP:
                return 1.0
            return math.ldexp(1.0, -math.frexp(peak)[1])
    return 1.0
