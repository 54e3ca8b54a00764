"""Glue between the package's types (Stack, FusionResult, files) and :mod:`napari_edof.metrics`.

Used by :func:`napari_edof.api.evaluate` and ``napari-edof evaluate``; imported on first use.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .core.errors import EdofError, ReadError


def read_image(path) -> np.ndarray:
    """One 2D image (Y, X) or colour image (Y, X, C) from a TIFF, PNG or JPEG file, decoded as
    the stack readers decode a plane (:func:`napari_edof.io.readers.read_image`)."""
    from .io.readers import read_image as _read

    p = Path(path)
    if not p.is_file():
        raise ReadError(f"{p} is not a file")
    a = np.asarray(_read(p))
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] > 4):
        raise ReadError(f"{p} holds an array of shape {a.shape}, not one 2D (or 2D colour) image")
    return a


def _fused_array(x) -> np.ndarray:
    from .core.result import FusionResult

    if isinstance(x, FusionResult):
        x = x.fused  # a lazy (dask) result computes its fused image only
    elif isinstance(x, (str, Path)):
        return read_image(x)
    return np.asarray(x)


def _planes(stack) -> np.ndarray:
    """A stack (Stack, file, or array of planes) -> (N, Y, X) or (N, Y, X, C) numpy array."""
    from .core.stack import Stack

    if isinstance(stack, (str, Path)) or (isinstance(stack, (list, tuple)) and stack
                                           and isinstance(stack[0], (str, Path))):
        from .io import open_stack

        stack = open_stack(stack)
    if isinstance(stack, Stack):
        if stack.n_times > 1:
            raise EdofError(f"evaluate takes one time point; this stack has {stack.n_times}")
        a = np.asarray(stack.canonical()[0])  # (Z, Y, X, C)
        return a[..., 0] if a.shape[-1] == 1 else a
    if isinstance(stack, (list, tuple)):
        return [np.asarray(p) for p in stack]  # checked plane by plane against the fused image
    return np.asarray(stack)


def evaluate(result_or_fused, stack, truth=None, *, metrics=None, data_range=None) -> dict:
    from . import metrics as M

    fused = _fused_array(result_or_fused)
    planes = _planes(stack)
    t = None if truth is None else (read_image(truth) if isinstance(truth, (str, Path)) else np.asarray(truth))
    try:
        return M.evaluate(fused, planes, t, metrics=metrics, data_range=data_range)
    except ValueError as e:
        if isinstance(e, EdofError):
            raise
        raise EdofError(str(e)) from None


def json_value(v: float):
    """inf -> "inf", -inf -> "-inf", nan -> None (strict JSON has neither)."""
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
