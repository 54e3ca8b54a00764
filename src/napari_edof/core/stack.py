"""The `Stack` type: a focus stack's data, its axes and its physical scale."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import StackError

#: Axis letters napari-edof understands: time, channel, z (focus), y, x.
VALID_AXES = "TCZYX"
#: The internal order every stack is brought to (lazily) before fusion.
CANONICAL = "TZYXC"
SUPPORTED_DTYPES = (
    np.uint8,
    np.uint16,
    np.int8,
    np.int16,
    np.uint32,
    np.int32,
    np.float16,
    np.float32,
    np.float64,
)


def check_axes_text(axes) -> str | None:
    """``axes`` as given to the API: None or text (upper-cased); anything else is a StackError."""
    if axes is None:
        return None
    if not isinstance(axes, str):
        raise StackError(f"axes must be text of letters from {VALID_AXES} (for example 'ZYX' or 'TZYX'), "
                         f"not {axes!r}")
    return axes.upper()


def _unknown_shape(shape) -> bool:
    return any(not isinstance(s, (int, np.integer)) or s != s for s in shape)


def is_dask(a: Any) -> bool:
    """True for a dask array (checked without importing dask)."""
    return type(a).__module__.split(".")[0] == "dask"


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axes for an array without metadata: ZYX, ZYX + RGB(A) in the last axis, or TZYX."""
    if len(shape) == 3:
        return "ZYX"
    if len(shape) == 4 and shape[-1] in (3, 4):
        return "ZYXC"
    if len(shape) == 4:
        raise StackError(
            f"cannot tell the axes of a 4D array of shape {shape}: pass axes= "
            "(for example 'TZYX' for a time-lapse or 'CZYX' for channels)"
        )
    if len(shape) == 2:
        raise StackError(
            f"a 2D image of shape {shape} is not a focus stack: give at least 2 planes along z"
        )
    raise StackError(f"cannot tell the axes of a {len(shape)}D array of shape {shape}: pass axes=")


@dataclass(frozen=True)
class Stack:
    """A focus stack.

    Attributes
    ----------
    data : numpy or dask array
        The pixels, in the order given by ``axes``. Never modified by napari-edof.
    axes : str
        One letter per dimension of ``data`` from ``"TCZYX"``; must contain Z, Y and X.
    pixel_size : (float, float) or None
        Physical (y, x) pixel size in ``unit``.
    z_step : float or None
        Physical distance between planes in ``unit``.
    unit : str
        Unit of ``pixel_size`` and ``z_step`` (for example ``"µm"``).
    rgb : bool
        True when C holds the red, green, blue (and alpha) of colour images.
    name : str
        A label for the stack (file name, layer name).
    source : tuple of str
        The files it was read from, if any.
    """

    data: Any
    axes: str
    pixel_size: tuple[float, float] | None = None
    z_step: float | None = None
    unit: str = "pixel"
    rgb: bool = False
    name: str = "stack"
    source: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        shape = tuple(self.data.shape)
        if _unknown_shape(shape):
            raise StackError(_unknown_shape_text(shape))
        axes = check_axes_text(self.axes)
        object.__setattr__(self, "axes", axes)
        if len(axes) != len(shape):
            raise StackError(f"axes {axes!r} do not match the {len(shape)}D data of shape {shape}")
        bad = set(axes) - set(VALID_AXES)
        if bad:
            raise StackError(f"unknown axis letter(s) {''.join(sorted(bad))!r} in {axes!r}; use {VALID_AXES}")
        if len(set(axes)) != len(axes):
            raise StackError(f"repeated axis letter in {axes!r}")
        for a in "ZYX":
            if a not in axes:
                if a == "Z" and len(shape) == 2:
                    raise StackError(
                        f"a 2D image of shape {shape} is not a focus stack: give at least 2 planes along z"
                    )
                raise StackError(f"axes {axes!r} have no {a} axis; a focus stack needs Z, Y and X")
        dt = np.dtype(self.data.dtype)
        if dt == np.bool_ or dt.kind in "cOUSV" or dt.itemsize > 8 or dt in (np.int64, np.uint64):
            raise StackError(
                f"unsupported pixel type {dt}: use 8/16/32-bit integers or float16/32/64"
            )
        if self.n_planes < 2:
            raise StackError(f"a focus stack needs at least 2 planes along Z, this one has {self.n_planes}")
        if shape[axes.index("Y")] < 2 or shape[axes.index("X")] < 2:
            raise StackError(f"planes of {shape[axes.index('Y')]}x{shape[axes.index('X')]} pixels are too small")

    # --- shape helpers -------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def _size(self, a: str) -> int:
        return self.shape[self.axes.index(a)] if a in self.axes else 1

    @property
    def n_planes(self) -> int:
        return self._size("Z")

    @property
    def n_channels(self) -> int:
        return self._size("C")

    @property
    def n_times(self) -> int:
        return self._size("T")

    @property
    def yx_shape(self) -> tuple[int, int]:
        return (self._size("Y"), self._size("X"))

    @property
    def is_lazy(self) -> bool:
        return is_dask(self.data)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def canonical(self):
        """The data as (T, Z, Y, X, C) (a view or a lazy transpose; nothing is copied)."""
        a = self.data
        axes = self.axes
        for letter in CANONICAL:
            if letter not in axes:
                a = a[..., None]
                axes = axes + letter
        order = [axes.index(letter) for letter in CANONICAL]
        return a.transpose(order)

    def with_data(self, data, axes: str | None = None) -> Stack:
        return replace(self, data=data, axes=axes or self.axes)

    def describe(self) -> str:
        kind = "RGB" if self.rgb else (f"{self.n_channels} channels" if self.n_channels > 1 else "grey")
        t = f", {self.n_times} time points" if self.n_times > 1 else ""
        return f"{self.n_planes} planes of {self.yx_shape[0]}x{self.yx_shape[1]} {self.dtype} {kind}{t}"


def _unknown_shape_text(shape) -> str:
    shown = "(" + ", ".join("?" if not isinstance(s, (int, np.integer)) or s != s else str(s) for s in shape) + ")"
    return (f"the size of the array is not known (shape {shown}: a dask array with unknown chunk sizes, "
            "for example after boolean indexing); call .compute_chunk_sizes() on it first")


def _from_planes(items) -> Any:
    """A list or tuple of planes (arrays of one shape) stacked along a new first axis."""
    if any(isinstance(p, (str, bytes, os.PathLike)) for p in items):
        raise StackError("fuse takes arrays or a Stack, not file names: open the files with "
                         "napari_edof.open_stack(...) first")
    shapes = []
    for k, p in enumerate(items):
        try:
            shape = tuple(p.shape) if hasattr(p, "shape") else np.shape(p)
        except ValueError:  # a ragged nested list
            raise StackError(f"plane {k} is not an array: its rows have different lengths") from None
        if _unknown_shape(shape):
            raise StackError(f"plane {k}: " + _unknown_shape_text(shape))
        shapes.append(shape)
        if shape != shapes[0]:
            raise StackError(f"plane {k} has shape {shape} but plane 0 has {shapes[0]}; all planes must have "
                             "the same size")
    if any(is_dask(p) for p in items):
        import dask.array as da

        return da.stack(list(items))
    return np.stack([np.asarray(p) for p in items]) if items else np.asarray(items)


def as_stack(data, *, axes: str | None = None, rgb: bool | None = None, name: str = "stack", **meta) -> Stack:
    """Wrap an array (numpy or dask) or return a Stack unchanged (axes= may re-label it).

    A list or tuple of planes is stacked along a new first axis (planes of different shapes are a
    StackError naming the odd plane). Every problem with the input is a StackError.
    """
    axes = check_axes_text(axes)
    if isinstance(data, Stack):
        if axes is not None and axes != data.axes:
            return replace(data, axes=axes)
        return data
    if isinstance(data, (str, bytes, os.PathLike)):
        raise StackError(f"fuse takes arrays or a Stack, not a file name ({data!r}): open it with "
                         "napari_edof.open_stack(...) first")
    if isinstance(data, (list, tuple)):
        data = _from_planes(data)
    elif not hasattr(data, "shape") or not hasattr(data, "dtype"):
        try:
            data = np.asarray(data)
        except (TypeError, ValueError) as exc:
            raise StackError(f"cannot read a focus stack from {type(data).__name__}: {exc}") from None
    shape = tuple(data.shape)
    if _unknown_shape(shape):
        raise StackError(_unknown_shape_text(shape))
    if axes is None:
        axes = guess_axes(shape)
    if rgb is None:
        rgb = axes.endswith("C") and shape[-1] in (3, 4)
    return Stack(data=data, axes=axes, rgb=bool(rgb), name=name, **meta)
