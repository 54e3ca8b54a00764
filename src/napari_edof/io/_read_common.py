"""What the stack readers share (:mod:`napari_edof.io.readers`): telling files apart by their first
bytes, error texts, paths, the checks of a Stack's dtype, and making the Stack."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import ReadError, StackError
from ..core.stack import SUPPORTED_DTYPES, Stack
from ._common import report_reconciled


class SingleImageError(StackError):
    """The file is one 2D image, readable but not a focus stack (other readers may take it)."""


#: File name endings a folder or a glob is searched for (case-insensitive; ".ome.tif" included).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GLOB_CHARS = "*?["
_SUPPORTED = {np.dtype(d) for d in SUPPORTED_DTYPES}


def _as_path(p) -> Path:
    try:
        return Path(os.path.expanduser(os.fspath(p)))
    except TypeError:
        raise ReadError(
            f"cannot open {p!r} (a {type(p).__name__}): give a file, a folder, a glob pattern "
            "or a list of image files"
        ) from None


def _folder_name(path: Path) -> str:
    return path.resolve().name or str(path)


def _list_name(paths: Sequence[Path]) -> str:
    parents = {p.parent.resolve() for p in paths}
    if len(parents) == 1:
        return next(iter(parents)).name or str(next(iter(parents)))
    return f"{paths[0].name} (+{len(paths) - 1} files)"


def _list_label(paths: Sequence[Path]) -> str:
    return f"the list of {len(paths)} files starting with {paths[0]}"


def natural_key(path) -> tuple:
    """Sort key putting ``img2`` before ``img10`` (case-insensitive, digits compared as numbers)."""
    name = Path(path).name
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if p.isdigit() else p for p in parts), name


# --- small helpers ----------------------------------------------------------------------------


def _oserror(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) < 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _sniff(path: Path) -> tuple[str, int]:
    """('tiff' | 'png' | 'jpeg', size in bytes) from the file's first bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except OSError as e:
        raise ReadError(f"{path}: cannot read the file ({_oserror(e)})") from None
    if path.is_dir():
        raise ReadError(f"{path} is a folder, not an image file")
    if st.st_size == 0:
        raise ReadError(f"{path}: the file is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ReadError(f"{path}: cannot read the file ({_oserror(e)})") from None
    if head[:4] in _TIFF_MAGIC:
        return "tiff", st.st_size
    if head[:8] == _PNG_MAGIC:
        return "png", st.st_size
    if head[:3] == _JPEG_MAGIC:
        return "jpeg", st.st_size
    raise ReadError(
        f"{path}: not a TIFF, PNG or JPEG image (the file starts with {head[:8]!r}, "
        f"{st.st_size} bytes)"
    )


def _token(*parts) -> str:
    from dask.base import tokenize

    return tokenize(*parts)


def _stat_key(path: Path) -> tuple:
    try:
        st = path.stat()
        return (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path),)


def _make_stack(data, axes: str, *, label: str, rgb: bool, name: str, source, scale, metadata) -> Stack:
    pixel_size, z_step, unit = scale
    shape = tuple(data.shape)
    if "Z" not in axes and set(axes) <= set("YXC"):
        y, x = shape[axes.index("Y")], shape[axes.index("X")]
        n_c = shape[axes.index("C")] if "C" in axes else 0
        kind = (" RGBA" if n_c == 4 else " RGB") if rgb else (f", {n_c} channels" if n_c else "")
        hint = (f"; if its {n_c} {'colour samples' if rgb else 'channels'} are really {n_c} focus planes, pass "
                "axes='ZYX' (--axes ZYX) (tifffile writes a (3 or 4, Y, X) array as an RGB(A) image unless "
                "given photometric='minisblack')") if n_c > 1 else ""
        raise SingleImageError(
            f"{label}: a single 2D image ({y}x{x}{kind}) is not a focus stack: give a file with at "
            f"least 2 planes, or a folder, glob or list of 2D images{hint}"
        )
    try:
        return Stack(
            data=data,
            axes=axes,
            pixel_size=pixel_size,
            z_step=z_step,
            unit=unit or "pixel",
            rgb=bool(rgb),
            name=name,
            source=tuple(source),
            metadata=metadata,
        )
    except StackError as e:
        raise StackError(f"{label}: {e}") from None


_report = report_reconciled  # (in io/_common: the OME-Zarr reader reports the same way)


def _check_dtype(dtype, label) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.newbyteorder("=") not in _SUPPORTED:
        raise StackError(
            f"{label}: unsupported pixel type {dt.newbyteorder('=')}: use 8/16/32-bit integers or "
            "float16/32/64"
        )
    return dt.newbyteorder("=")
