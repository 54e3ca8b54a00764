"""Guide images (what focus is measured on) and gathering colour from the source planes."""
from __future__ import annotations

import numpy as np

from .errors import StackError

#: BT.601 luma, the Y of YCbCr (the CTMFusion paper fuses on it).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def resolve_guide(guide, n_channels: int, rgb: bool):
    """Normalise the ``guide`` option: "luminance", "mean" or a channel number."""
    if guide in (None, "auto"):
        if n_channels == 1:
            return 0
        return "luminance" if rgb and n_channels in (3, 4) else "mean"
    if guide == "luminance":
        if n_channels not in (3, 4):
            raise StackError(f"guide='luminance' needs RGB(A) data; this stack has {n_channels} channel(s)")
        return guide
    if guide == "mean":
        return guide
    try:
        g = int(guide)
    except (TypeError, ValueError):
        raise StackError(f"guide must be 'auto', 'luminance', 'mean' or a channel number, not {guide!r}") from None
    if not 0 <= g < n_channels:
        raise StackError(f"guide channel {g} does not exist: the stack has channels 0..{n_channels - 1}")
    return g


def make_guide(planes: np.ndarray, guide, *, integers: bool = False) -> np.ndarray:
    """(Z, Y, X, C) planes of any dtype -> (Z, Y, X) float32 guide. With ``integers`` (a method
    that reads them itself: ``MethodSpec.integer_guide``), the guide of one channel of 8- or 16-bit
    integers is that channel as it is, a view (every value exact in float32), not a copy."""
    if planes.shape[-1] == 1 and integers and planes.dtype.kind in "ui" and planes.dtype.itemsize <= 2:
        return planes[..., 0]
    if isinstance(guide, int):
        return planes[..., guide].astype(np.float32)
    if guide == "luminance":
        g = planes[..., 0].astype(np.float32) * LUMA[0]
        g += planes[..., 1].astype(np.float32) * LUMA[1]
        g += planes[..., 2].astype(np.float32) * LUMA[2]
        return g
    return planes.astype(np.float32).mean(axis=-1)


def gather(planes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Pick, per pixel, the plane ``index`` ((Y, X) ints) from (Z, Y, X, C) planes -> (Y, X, C)."""
    idx = index.astype(np.intp, copy=False)[None, :, :, None]
    return np.take_along_axis(planes, idx, axis=0)[0]
