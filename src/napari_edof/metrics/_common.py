"""Shared input handling for the metrics: grey float images on a common, documented scale.

Every metric works on 2D grey images of float64. Colour images (a last axis of 3 or 4) are
reduced to their BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` (the Y of YCbCr, on which
the CTMFusion paper fuses; alpha is ignored); other multi-channel images (a last axis that is not
3 or 4 while the sources have one more axis than a grey plane) to the mean of the channels.

Intensities are divided by ``data_range`` so that every metric sees values in [0, 1]:

* ``data_range=None`` and integer inputs: the range of the dtype, as in scikit-image
  (255 for uint8, 65535 for uint16, 65535 for int16 ...);
* ``data_range=None`` and float inputs: 1.0 when every value already lies in [0, 1], else the
  spread (max - min) of all the images passed together;
* when any value is negative, the smallest value of all the images passed is subtracted first.

The same scale is used for the sources, the fused image and the truth, so that a fusion that
changes the brightness or the contrast of the sources is penalised (the MATLAB toolboxes
normalise each image to 0..255 on its own, which hides such changes).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: BT.601 luma weights (the Y of YCbCr).
LUMA = np.array([0.299, 0.587, 0.114])


def grey(img, *, colour: bool | None = None) -> np.ndarray:
    """(Y, X) or (Y, X, C) -> (Y, X) float64 (luminance for 3/4 channels, else the channel mean)."""
    a = np.asarray(img)
    if a.ndim == 2:
        return a.astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected a 2D image or a 2D colour image (Y, X, C), got shape {a.shape}")
    if colour is None:
        colour = a.shape[-1] in (3, 4)
    if colour and a.shape[-1] in (3, 4):
        return a[..., :3].astype(np.float64) @ LUMA
    return a.astype(np.float64).mean(axis=-1)


def default_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """(offset, data_range) for arrays of one dtype family (see the module docstring)."""
    dts = [np.asarray(a).dtype for a in arrays]
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    offset = lo if lo < 0 else 0.0
    if all(d.kind in "iub" for d in dts):
        info = [np.iinfo(d) if d.kind != "b" else None for d in dts]
        rng = max((float(i.max) - float(i.min)) if i is not None else 1.0 for i in info)
        return offset, rng
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    return offset, max(hi - lo, np.finfo(np.float64).tiny)


def _describe(shape) -> str:
    shape = tuple(shape)
    if len(shape) == 2:
        return f"{shape[0]}x{shape[1]} grey"
    if len(shape) == 3:
        kind = {3: "RGB", 4: "RGBA"}.get(shape[2], f"with {shape[2]} channels")
        return f"{shape[0]}x{shape[1]} {kind}"
    return f"shape {shape}"


def _check_like(a: np.ndarray, f: np.ndarray, what: str) -> None:
    """``a`` can be compared with the fused image ``f``: the same size, and the same channels,
    or one of them grey and the other colour (both are then compared on luminance)."""
    if a.ndim not in (2, 3) or tuple(a.shape[:2]) != tuple(f.shape[:2]):
        raise ValueError(f"{what} ({_describe(a.shape)}) does not match the fused image ({_describe(f.shape)}): "
                         "they must have the same size")
    if a.shape == f.shape:
        return
    colour = {a.ndim == 3 and a.shape[2] in (3, 4), f.ndim == 3 and f.shape[2] in (3, 4)}
    grey_ = {a.ndim == 2, f.ndim == 2}
    if True in colour and True in grey_:
        return  # one grey, one colour: both on luminance (the metrics work on grey images)
    raise ValueError(f"{what} ({_describe(a.shape)}) does not match the fused image ({_describe(f.shape)}): "
                     "they must have the same channels (or one be grey and the other colour)")


def prepare(sources, fused, truth=None, *, data_range=None):
    """-> (planes (N, Y, X) float64, fused (Y, X) float64, truth or None) scaled to [0, 1].

    ``sources``: a sequence of 2D (or 2D colour) images, or one array of N planes
    (N, Y, X) or (N, Y, X, C). ``fused`` and ``truth``: (Y, X) or (Y, X, C). A grey image
    and colour ones (a fused RGB image of grey planes, a grey fused image of RGB planes) are
    compared on luminance, like two colour images.
    """
    f_raw = np.asarray(fused)
    if f_raw.ndim not in (2, 3):
        raise ValueError(f"the fused image must be (Y, X) or (Y, X, C), got shape {f_raw.shape}")
    yx = f_raw.shape[:2]
    if isinstance(sources, np.ndarray) or hasattr(sources, "shape"):
        s_raw = np.asarray(sources)
        if s_raw.ndim == f_raw.ndim + 1:
            planes_raw = list(s_raw)
        elif s_raw.ndim == 3 and f_raw.ndim == 3 and tuple(s_raw.shape[1:]) == yx:
            planes_raw = list(s_raw)  # grey planes, a colour fused image
        elif s_raw.ndim == 4 and f_raw.ndim == 2 and tuple(s_raw.shape[1:3]) == yx:
            planes_raw = list(s_raw)  # colour planes, a grey fused image
        elif s_raw.ndim == f_raw.ndim:
            raise ValueError(f"the sources ({_describe(s_raw.shape)}) look like one image, not a stack of planes; "
                             "give at least two")
        else:
            raise ValueError(f"the sources (shape {s_raw.shape}) do not match the fused image "
                             f"({_describe(f_raw.shape)})")
    else:
        planes_raw = [np.asarray(p) for p in sources]
    if len(planes_raw) < 1:
        raise ValueError("no source images given")
    for p in planes_raw:
        _check_like(p, f_raw, "a source plane")
    t_raw = None
    if truth is not None:
        t_raw = np.asarray(truth)
        _check_like(t_raw, f_raw, "the truth")
    everything = planes_raw + [f_raw] + ([t_raw] if t_raw is not None else [])
    if data_range is None:
        offset, rng = default_range(everything)
    else:
        rng = float(data_range)
        if not rng > 0:
            raise ValueError(f"data_range must be positive, not {data_range!r}")
        lo = min(float(np.min(a)) for a in everything)
        offset = lo if lo < 0 else 0.0

    def scale(a):  # colour (3 or 4 channels) -> luminance, other channels -> their mean
        g = grey(a)
        if offset:
            g -= offset
        g /= rng
        return g

    planes = np.stack([scale(p) for p in planes_raw]) if planes_raw else np.empty((0,) + yx)
    return planes, scale(f_raw), (scale(t_raw) if t_raw is not None else None)
