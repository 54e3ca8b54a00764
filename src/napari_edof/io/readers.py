"""Open focus stacks lazily: multi-page TIFF (plain, OME, ImageJ), folders, globs and lists of images.

Nothing here reads pixels before they are computed: :func:`open_stack` reads file headers only
and returns a :class:`~napari_edof.core.stack.Stack` whose ``data`` is a dask array.

* A TIFF becomes ``dask.array.from_array`` over the file's zarr view (``TiffPageSeries.aszarr``,
  one chunk per page). The file is opened to read the headers and closed again before
  :func:`open_stack` returns; the first computation opens it once more and keeps that handle
  until the dask array (the last object holding it) is garbage-collected. A dask graph of such
  an array pickles without its handle and reopens the file where it is computed.
* A folder, glob or list of 2D images (TIFF, PNG, JPEG, told apart by their first bytes, not by
  their names) becomes one ``dask.delayed`` read per file, stacked along Z; shapes and dtypes
  come from the headers (Pillow's ``Image.open`` and ``tifffile.TiffFile`` read no pixels).

Errors are :class:`~napari_edof.core.errors.ReadError` (cannot read the file) or
:class:`~napari_edof.core.errors.StackError` (readable, but not a focus stack); their messages
name the file. Pixel data that turns out unreadable when computed (a JPEG truncated in its
entropy-coded data, a file changed on disk) raises a ``ReadError`` naming the file at that time.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import logging
import os
import re
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import EdofError, ReadError, StackError
from ..core.stack import SUPPORTED_DTYPES, Stack, check_axes_text
from ._common import report_reconciled
from .metadata import (
    Rendering,
    as_orientation,
    describe_dims,
    map_axes,
    orientation_note,
    reconcile_tiff_pages,
    tiff_rendering,
    tiff_scale,
)

__all__ = ["IMAGE_SUFFIXES", "SingleImageError", "open_stack", "natural_key", "read_image"]


class SingleImageError(StackError):
    """The file is one 2D image, readable but not a focus stack (other readers may take it)."""

#: File name endings a folder or a glob is searched for (case-insensitive; ".ome.tif" included).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GLOB_CHARS = "*?["
_SUPPORTED = {np.dtype(d) for d in SUPPORTED_DTYPES}

#: Pillow mode -> (mode to convert to or None, dtype, channels (0: grey, no C axis)).
_PIL_MODES: dict[str, tuple[str | None, Any, int]] = {
    "L": (None, np.uint8, 0),
    "RGB": (None, np.uint8, 3),
    "RGBA": (None, np.uint8, 4),
    "I;16": (None, np.uint16, 0),
    "I;16L": (None, np.uint16, 0),
    "I;16B": (None, np.uint16, 0),
    "I;16N": (None, np.uint16, 0),
    "I": (None, np.int32, 0),
    "F": (None, np.float32, 0),
    "1": ("L", np.uint8, 0),
    "LA": ("L", np.uint8, 0),
    "La": ("L", np.uint8, 0),
    "PA": ("RGBA", np.uint8, 4),
    "RGBa": ("RGBA", np.uint8, 4),
    "RGBX": ("RGB", np.uint8, 3),
    "CMYK": ("RGB", np.uint8, 3),
    "YCbCr": ("RGB", np.uint8, 3),
    "LAB": ("RGB", np.uint8, 3),
    "HSV": ("RGB", np.uint8, 3),
}


# --- public -----------------------------------------------------------------------------------


def open_stack(source, *, axes: str | None = None, name: str | None = None) -> Stack:
    """Open a focus stack lazily from files.

    Parameters
    ----------
    source : str, path-like, or list/tuple of them
        * a multi-page TIFF, OME-TIFF or ImageJ hyperstack;
        * a folder of 2D images (TIFF, PNG, JPEG; other files such as ``ReadMe.txt`` and hidden
          files are ignored), taken in natural order (``img2`` before ``img10``). Every image in
          it is a plane: a result saved beside the frames (such as ``expected.jpg`` in
          focus-stack's ``pcb`` example) becomes one too; select the frames with a glob;
        * a glob pattern such as ``"dir/*.png"`` (matches in natural order);
        * a list or tuple of 2D image files, taken in the order given.
        Every image in a folder, glob or list must have the same size, channels and dtype.
    axes : str, optional
        One letter per dimension, from ``"TCZYX"`` (``"S"`` means RGB(A) samples, read as a C
        axis with ``rgb=True``). For a TIFF: the dimensions of tifffile's series (singleton
        dimensions may be left out); for images: ``(Z, Y, X)`` or ``(Z, Y, X, C)``. By default the
        axes come from OME or ImageJ metadata, else they are guessed (a multi-page TIFF is ZYX;
        colour images are ZYXC with ``rgb=True``).
    name : str, optional
        ``Stack.name``; by default the file's or the folder's name.

    Returns
    -------
    Stack
        ``data`` is a dask array (nothing read yet) in the native byte order and the file's dtype
        (uint8/16/32, int8/16/32 or float16/32/64); ``axes`` from ``"TCZYX"``; ``pixel_size``
        (y, x), ``z_step`` and ``unit`` from OME (PhysicalSize*) or ImageJ (resolution tags,
        ``spacing``, ``unit``) metadata when present; ``source`` the files read.

    Raises
    ------
    ReadError
        A file or folder is missing, empty, not a TIFF/PNG/JPEG, truncated or corrupt, or a
        pattern matches no image.
    StackError
        The images do not make a focus stack: planes of different sizes, channels or dtypes,
        fewer than 2 planes, a single 2D image, an unsupported dtype, axes that cannot be told.
    """
    axes = check_axes_text(axes)
    if isinstance(source, Stack):
        return source
    if isinstance(source, (list, tuple)):
        paths = [_as_path(p) for p in source]
        if not paths:
            raise ReadError("an empty list of files is not a focus stack: give at least 2 images")
        if len(paths) == 1:
            return _open_file(paths[0], axes=axes, name=name)
        return _open_planes(paths, axes=axes, name=name or _list_name(paths), label=_list_label(paths))
    path = _as_path(source)
    text = os.fspath(path)
    if path.is_dir():
        from .zarr_io import is_zarr, open_zarr

        if is_zarr(path):
            return open_zarr(path, axes=axes, name=name)
        files = _list_folder(path)
        return _open_planes(files, axes=axes, name=name or _folder_name(path), label=str(path))
    if path.exists() or path.is_symlink():
        return _open_file(path, axes=axes, name=name)
    if any(c in text for c in _GLOB_CHARS):
        files = _expand_glob(text)
        return _open_planes(files, axes=axes, name=name or path.name, label=repr(text))
    if not path.parent.exists() and str(path.parent) not in ("", "."):
        raise ReadError(f"{path}: no such file or folder (the folder {path.parent} does not exist)")
    raise ReadError(f"{path}: no such file or folder")


def natural_key(path) -> tuple:
    """Sort key putting ``img2`` before ``img10`` (case-insensitive, digits compared as numbers)."""
    name = Path(path).name
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if p.isdigit() else p for p in parts), name


# --- sources ----------------------------------------------------------------------------------


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


def _list_folder(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise ReadError(f"{folder}: cannot list the folder ({_oserror(e)})") from None
    files, others = [], 0
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            is_file = e.is_file()
        except OSError:
            is_file = False
        if not is_file:
            continue
        if e.name.lower().endswith(IMAGE_SUFFIXES):
            files.append(Path(e.path))
        else:
            others += 1
    if not files:
        extra = f" (it holds {others} other file{'s' if others != 1 else ''})" if others else " (it is empty)"
        raise ReadError(f"{folder}: the folder holds no TIFF, PNG or JPEG images{extra}")
    return sorted(files, key=natural_key)


def _expand_glob(pattern: str) -> list[Path]:
    matches = [Path(m) for m in _glob.glob(pattern, recursive=True) if os.path.isfile(m)]
    if not matches:
        raise ReadError(f"no files match the pattern {pattern!r}")
    files = [m for m in matches if m.name.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ReadError(
            f"the pattern {pattern!r} matches {len(matches)} file(s) but none is a TIFF, PNG or JPEG "
            f"image by its name (for example {matches[0].name})"
        )
    return sorted(files, key=natural_key)


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


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_log():
    """Collect tifffile's warnings (it logs them) instead of letting them reach stderr."""
    log = logging.getLogger("tifffile")
    h = _LogCapture()
    log.addHandler(h)
    try:
        yield h.messages
    finally:
        log.removeHandler(h)


def _check_log(messages: list[str], path: Path, size: int) -> None:
    for m in messages:
        found = re.search(r"invalid page offset (\d+)", m)
        if found and int(found.group(1)) >= size:
            raise ReadError(
                f"{path}: the file is truncated or corrupt (a page is expected at byte "
                f"{found.group(1)} but the file has {size} bytes)"
            )


#: The most a TIFF compression can shrink pixel data (uncompressed bytes per stored byte), with
#: a margin: PackBits 128/2, LZW about 4096 bytes from one 12-bit code, Deflate 1032, JPEG a few
#: bits per 8x8 block, Zstandard 32768. Compressions not listed are not checked.
_MAX_RATIO = {1: 1.0, 32773: 64.0, 5: 4096.0, 8: 1100.0, 32946: 1100.0, 6: 2000.0, 7: 2000.0,
              50000: 40000.0}  # Zstandard: an RLE block of 128 KiB in 4 bytes
_COMPRESSION_NAMES = {5: "LZW", 6: "old-style JPEG", 7: "JPEG", 8: "Deflate", 32946: "Deflate",
                      32773: "PackBits", 34925: "LZMA", 50000: "Zstandard", 34887: "LERC", 50001: "WebP",
                      33003: "JPEG 2000", 33005: "JPEG 2000", 34712: "JPEG 2000", 34892: "lossless JPEG",
                      50002: "JPEG XL", 52546: "JPEG XL"}


def _compression_name(code: int) -> str:
    if code in _COMPRESSION_NAMES:
        return _COMPRESSION_NAMES[code]
    try:
        import tifffile

        return tifffile.COMPRESSION(code).name
    except Exception:
        return f"compression {code}"


def _check_codecs(page, path: Path) -> None:
    """Refuse at open, not when the pixels are read, a TIFF whose compression or predictor
    cannot be decoded here (naming it and the package that decodes it)."""
    import tifffile

    checks = ((int(page.compression), tifffile.TIFF.DECOMPRESSORS, "compressed with", 1),
              (int(page.predictor), tifffile.TIFF.UNPREDICTORS, "stored with the predictor", 1))
    for code, table, what, plain in checks:
        if code == plain:
            continue
        try:
            table[code]
        except KeyError as e:
            name = _compression_name(code) if "compress" in what else f"{code}"
            if "imagecodecs" in str(e):
                raise ReadError(
                    f"{path}: the TIFF is {what} {name}, which needs the imagecodecs package to decode: "
                    "install it (pip install imagecodecs; napari-edof depends on it, so the installation "
                    "is incomplete)"
                ) from None
            raise ReadError(f"{path}: the TIFF is {what} {name}, which cannot be decoded ({e})") from None


def _page_bytes(page) -> int:
    """The bytes of pixel data a page's header declares (uncompressed, rows padded to bytes)."""
    spp = int(page.samplesperpixel)
    planar = int(page.planarconfig) == 2
    row = -(-int(page.imagewidth) * int(page.bitspersample) * (1 if planar else spp) // 8)
    return row * int(page.imagelength) * max(int(getattr(page, "imagedepth", 1) or 1), 1) * (spp if planar else 1)


def _check_declared(page, path: Path, file_size: int) -> None:
    """Refuse a page whose stored data cannot hold the pixels its header declares (a tiny file
    that declares 100000 x 100000 pixels is corrupt, not a memory problem)."""
    kf = getattr(page, "keyframe", None) or page  # a TiffFrame has its header in its key frame
    counts = np.asarray(page.databytecounts, np.int64)
    held = int(counts.sum()) if counts.size else 0
    try:
        need = _page_bytes(kf)
        comp = int(kf.compression)
    except (AttributeError, TypeError, ValueError):
        return
    ratio = _MAX_RATIO.get(comp)
    if ratio is None or need <= 0 or held * ratio >= need:
        return
    how = "" if comp == 1 else f" ({_compression_name(comp)}-compressed, which cannot shrink it that much)"
    raise ReadError(
        f"{path}: the file is corrupt or truncated: page {page.index} declares "
        f"{kf.imagelength}x{kf.imagewidth} pixels ({need} bytes of pixel data) but holds {held} bytes of "
        f"data{how}; the file has {file_size} bytes"
    )


def _check_extent(series, path: Path) -> None:
    """Raise if the pixel data of ``series`` lies (partly) beyond the end of its file, or cannot
    hold the pixels its pages declare, or cannot be decoded here."""
    key = series.keyframe
    if key is not None:
        _check_codecs(key, path)
    if series.dataoffset is not None:
        fh = series.keyframe.parent.filehandle
        end = int(series.dataoffset) + int(series.nbytes)
        if end > fh.size:
            raise ReadError(
                f"{path}: the file is truncated or corrupt (its pixel data should end at byte {end} "
                f"but the file has {fh.size} bytes)"
            )
        return
    for page in series.pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        if offsets.size == 0:
            continue
        size = page.parent.filehandle.size
        _check_declared(page, path, size)
        end = int((offsets + counts).max())
        if end > size:
            raise ReadError(
                f"{path}: the file is truncated or corrupt (page {page.index} needs bytes up to {end} "
                f"but the file has {size} bytes)"
            )


def _is_photometric_rgb(series) -> bool:
    try:
        return int(series.keyframe.photometric) == 2  # PHOTOMETRIC.RGB
    except Exception:
        return False


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


# --- TIFF files -------------------------------------------------------------------------------


class _TiffArray:
    """One TIFF series as an array-like for ``dask.array.from_array`` (reads through zarr).

    The file is opened on the first read and closed when this object is garbage-collected (or
    :meth:`close` is called; a later read reopens it). Pickles without its handle.
    """

    def __init__(self, path: Path, series: int, shape: tuple[int, ...], dtype, squeeze: bool, flags=()):
        self.path = Path(path)
        self.flags = dict(flags)  # TiffFile(is_ome=False, ...) when the file's pages are read as they are
        self.series = int(series)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.ndim = len(self.shape)
        self.squeeze = bool(squeeze)
        self._lock = threading.Lock()
        self._z = None
        self._tf = None
        self._finalizer = None

    def _open(self):
        with self._lock:
            if self._z is None:
                import tifffile
                import zarr

                with _tifffile_log():
                    tf = tifffile.TiffFile(self.path, **self.flags)
                    try:
                        store = tf.series[self.series].aszarr(
                            chunkmode=2, squeeze=self.squeeze, multiscales=False
                        )
                        z = zarr.open_array(store, mode="r")
                    except BaseException:
                        tf.close()
                        raise
                if tuple(z.shape) != self.shape:
                    tf.close()
                    raise ReadError(
                        f"{self.path}: the file changed since it was opened (its data is now "
                        f"{tuple(z.shape)}, it was {self.shape})"
                    )
                self._tf, self._z = tf, z
                self._finalizer = weakref.finalize(self, tf.close)
            return self._z

    def __getitem__(self, key):
        try:
            a = np.asarray(self._open()[key])
        except EdofError:
            raise
        except Exception as e:
            raise ReadError(
                f"{self.path}: cannot read the pixels ({_why(e)}); the file may be truncated or corrupt"
            ) from None
        if a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return a

    def close(self) -> None:
        """Close the file (a later read opens it again)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._tf = self._z = self._finalizer = None

    def __getstate__(self):
        d = self.__dict__.copy()
        for k in ("_lock", "_z", "_tf", "_finalizer"):
            d.pop(k, None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()
        self._z = self._tf = self._finalizer = None

    def __repr__(self):
        return f"_TiffArray({str(self.path)!r}, series={self.series}, shape={self.shape}, dtype={self.dtype})"


@dataclass
class _SeriesInfo:
    index: int
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    squeeze: bool
    rgb: bool
    flags: tuple = ()


def _series_info(tf, k: int, path: Path, squeeze: bool, flags: tuple = ()) -> _SeriesInfo:
    import zarr

    s = tf.series[k]
    _check_extent(s, path)
    store = s.aszarr(chunkmode=2, squeeze=squeeze, multiscales=False)
    z = zarr.open_array(store, mode="r")
    axes = s.axes if squeeze else s.get_axes(False)
    if len(axes) != len(z.shape):
        raise ReadError(f"{path}: the TIFF's axes {axes!r} do not match its data of shape {tuple(z.shape)}")
    return _SeriesInfo(
        index=k,
        axes=axes,
        shape=tuple(int(v) for v in z.shape),
        chunks=tuple(int(v) for v in z.chunks),
        dtype=np.dtype(s.dtype),
        squeeze=squeeze,
        rgb=_is_photometric_rgb(s),
        flags=tuple(flags),
    )


def _tiff_dask(path: Path, info: _SeriesInfo):
    import dask.array as da

    arr = _TiffArray(path, info.index, info.shape, info.dtype, info.squeeze, info.flags)
    name = "edof-tiff-" + _token(_stat_key(path), info.index, info.squeeze, info.shape, info.flags)
    return da.from_array(
        arr,
        chunks=info.chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * len(info.shape), arr.dtype),
    )


def _open_file(path: Path, *, axes, name) -> Stack:
    kind, size = _sniff(path)
    if kind != "tiff":
        info = _image_header(path, kind, size)
        desc = _plane_desc(info)
        raise SingleImageError(
            f"{path}: a single 2D image ({info.shape[0]}x{info.shape[1]} {desc}) is not a focus "
            "stack: give a folder, a glob pattern or a list of at least 2 images"
        )
    return _open_tiff(path, size, axes=axes, name=name)


def _open_tiff(path: Path, size: int, *, axes, name) -> Stack:
    import tifffile

    label = str(path)
    with _tifffile_log() as messages:
        try:
            tf = tifffile.TiffFile(path)
        except Exception as e:
            _check_log(messages, path, size)
            raise ReadError(f"{path}: not a readable TIFF file ({_why(e)}); it may be truncated or corrupt") from None
        try:
            try:
                all_series = list(tf.series)
                _check_log(messages, path, size)
                if not all_series:
                    raise ReadError(f"{path}: the TIFF file holds no image; it may be truncated or corrupt")
                fmt = "ome-tiff" if tf.is_ome else ("imagej-tiff" if tf.is_imagej else "tiff")
                scale = tiff_scale(tf, 0)
                ij = dict(tf.imagej_metadata or {}) if tf.is_imagej else None
                reconciled = reconcile_tiff_pages(tf, all_series, fmt, label)
                flags: tuple = ()
                if reconciled:  # the metadata's plane count is wrong: read the pages as they are
                    flags = (("is_ome", False), ("is_imagej", False), ("is_shaped", False))
                    tf.close()
                    tf = tifffile.TiffFile(path, **dict(flags))
                    all_series = list(tf.series)
                    if len(all_series) != 1:
                        raise StackError(f"{reconciled}, but the pages differ in size or type; fix the metadata")
                    fmt = f"{fmt} (pages; metadata plane count ignored)"
                s0 = all_series[0]
                squeeze = True
                if axes is not None and len(axes) != len(s0.shape) and len(axes) == len(s0.get_shape(False)):
                    squeeze = False
                if fmt == "tiff" and len(all_series) > 1:
                    infos = [_series_info(tf, k, path, True) for k in range(len(all_series))]
                else:
                    infos = [_series_info(tf, 0, path, squeeze, flags)]
                render = tiff_rendering(tf.series[0].keyframe, label)
            except EdofError:
                raise
            except Exception as e:
                _check_log(messages, path, size)
                raise ReadError(f"{path}: cannot read the TIFF structure ({_why(e)}); it may be corrupt") from None
        finally:
            tf.close()
        _check_log(messages, path, size)
        warnings_ = list(messages)

    if len(infos) > 1:
        data, file_axes, rgb_file = _stack_series(path, infos)
    else:
        info = infos[0]
        _check_dtype(info.dtype, label)
        data, file_axes, rgb_file = _tiff_dask(path, info), info.axes, info.rgb
    _check_dtype(data.dtype, label)
    ax, rgb, note, drop = map_axes(file_axes, tuple(data.shape), photometric_rgb=rgb_file, axes=axes, label=label)
    if drop:
        data = data[tuple(0 if k in drop else slice(None) for k in range(data.ndim))]
    if not render.identity:  # orientation, miniswhite, palette (io/metadata.py)
        if render.colour and "C" in ax:
            raise StackError(f"{label}: a palette (colour-mapped) TIFF with channels ({describe_dims(ax, data.shape)}) "
                             "is not supported; save it as RGB or grey")
        data = render.apply(data, ax.index("Y"), ax.index("X"))
        if render.colour:
            ax, rgb = ax + "C", True
        _check_dtype(data.dtype, label)
    metadata = {"format": fmt, "file_axes": file_axes, "axes_from": note, "files": 1}
    if ij is not None:
        metadata["imagej"] = {k: v for k, v in ij.items() if isinstance(v, (str, int, float, bool))}
    if warnings_ and not reconciled:
        metadata["warnings"] = warnings_
    if reconciled:
        _report(metadata, reconciled)
    for text in render.notes:
        _report(metadata, f"{label}: {text}")
    return _make_stack(
        data,
        ax,
        label=label,
        rgb=rgb,
        name=name or path.name,
        source=(str(path.absolute()),),
        scale=scale,
        metadata=metadata,
    )


def _stack_series(path: Path, infos: list[_SeriesInfo]):
    """Several series in a plain TIFF (pages written one by one, or pages of different sizes)."""
    import dask.array as da

    planes = []  # (info, plane shape, n planes)
    for info in infos:
        ax = info.axes
        lead = 0
        while lead < len(ax) and ax[lead] not in "YXS":
            lead += 1
        if lead > 1 or ax[lead:] not in ("YX", "YXS", "SYX"):
            shapes = ", ".join(str(i.shape) for i in infos)
            raise StackError(
                f"{path}: the TIFF holds {len(infos)} image series of shapes {shapes}; "
                "napari-edof reads one stack per file (save the stack as one series)"
            )
        planes.append((info, info.shape[lead:], info.shape[0] if lead else 1, ax[lead:]))
    ref_info, ref_shape, _, ref_ax = planes[0]
    page = 0
    for info, shape, n, ax in planes:
        if shape != ref_shape or ax != ref_ax:
            raise StackError(
                f"{path}: the pages differ in size: page {page} is {_shape_text(shape, ax)} but page 0 "
                f"is {_shape_text(ref_shape, ref_ax)}; all planes must have the same size"
            )
        if info.dtype != ref_info.dtype:
            raise StackError(
                f"{path}: the pages differ in pixel type: page {page} is {info.dtype} but page 0 is "
                f"{ref_info.dtype}"
            )
        page += n
    _check_dtype(ref_info.dtype, str(path))
    parts = []
    for info, shape, n, _ax in planes:
        a = _tiff_dask(path, info)
        parts.append(a if n > 1 or len(info.shape) > len(shape) else a[None])
    data = da.concatenate(parts, axis=0)
    return data, "I" + ref_ax, ref_info.rgb


def _shape_text(shape, ax) -> str:
    y, x = shape[ax.index("Y")], shape[ax.index("X")]
    return f"{y}x{x}" + (f"x{shape[ax.index('S')]}" if "S" in ax else "")


# --- folders, globs and lists of 2D images ----------------------------------------------------


@dataclass(frozen=True)
class _PlaneInfo:
    path: Path
    kind: str  # tiff, png, jpeg
    shape: tuple[int, ...]  # (Y, X) or (Y, X, C)
    dtype: np.dtype
    channels: int  # 0 for grey (no C axis)
    rgb: bool
    convert: str | None = None  # Pillow mode to convert to
    planar: bool = False  # TIFF samples stored first (S, Y, X)
    mode: str = ""
    scale: tuple = (None, None, None)
    stat: tuple = ()
    render: Rendering = Rendering()  # orientation, miniswhite, palette: applied after decoding
    decoder: str = ""  # "imagecodecs-png": a 16-bit colour PNG (Pillow would drop it to 8 bits)
    png_colour: int = -1


def _turned(p: _PlaneInfo) -> str:
    o = p.render.orientation
    return f" (as shown: its orientation tag {o} turns the stored pixels)" if p.render.swaps else (
        f" (with orientation tag {o})" if o != 1 else "")


def _plane_desc(p: _PlaneInfo) -> str:
    if p.rgb:
        return "RGBA" if p.channels == 4 else "RGB"
    if p.channels:
        return f"{p.channels} channels"
    return "grey (1 channel)"


def _image_header(path: Path, kind: str, size: int) -> _PlaneInfo:
    if kind == "tiff":
        return _tiff_plane_header(path, size)
    from PIL import Image

    depth = colour = -1
    if kind == "png":
        depth, colour = _check_png(path, size)
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            transparency = "transparency" in im.info
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            orientation = _exif_orientation(im)
    except Exception as e:
        raise ReadError(f"{path}: not a readable {kind.upper()} image ({_why(e)})") from None
    if n_frames > 1:
        raise StackError(f"{path}: the {kind.upper()} holds {n_frames} frames; give single-frame images")
    render = Rendering(orientation=orientation, notes=(orientation_note(orientation, "EXIF"),)) \
        if orientation != 1 else Rendering()
    if kind == "png" and depth == 16 and colour in (2, 4, 6):
        # 16-bit colour (or grey + alpha): Pillow reads these as 8 bits; imagecodecs keeps 16
        _need_imagecodecs(path, "png_decode", "a 16-bit colour PNG")
        channels = {2: 3, 6: 4, 4: 0}[colour]
        shape = render.shape((h, w, channels) if channels else (h, w), 0, 1)
        return _PlaneInfo(path=path, kind=kind, shape=shape, dtype=np.dtype(np.uint16), channels=channels,
                          rgb=channels in (3, 4), mode=f"{mode} (16-bit)", stat=_stat_key(path), render=render,
                          decoder="imagecodecs-png", png_colour=colour)
    if mode == "P":
        entry = ("RGBA", np.uint8, 4) if transparency else ("RGB", np.uint8, 3)
    else:
        entry = _PIL_MODES.get(mode)
    if entry is None:
        raise ReadError(f"{path}: unsupported {kind.upper()} pixel mode {mode!r}")
    convert, dtype, channels = entry
    shape = render.shape((h, w, channels) if channels else (h, w), 0, 1)
    return _PlaneInfo(
        path=path,
        kind=kind,
        shape=shape,
        dtype=np.dtype(dtype),
        channels=channels,
        rgb=channels in (3, 4),
        convert=convert,
        mode=mode,
        stat=_stat_key(path),
        render=render,
    )


def _exif_orientation(im) -> int:
    """The EXIF orientation of an opened Pillow image, from the EXIF block its header holds
    (JPEG APP1, PNG eXIf; no pixels are decoded); 1 when it has none or it is unreadable."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        from PIL import Image

        exif = Image.Exif()
        exif.load(raw)
        return as_orientation(exif.get(0x0112, 1))
    except Exception:  # unreadable EXIF: the pixels as stored
        return 1


def _need_imagecodecs(path: Path, codec: str, what: str) -> None:
    try:
        import imagecodecs

        getattr(imagecodecs, codec)
    except (ImportError, AttributeError):
        raise ReadError(
            f"{path}: {what} needs the imagecodecs package to decode: install it (pip install imagecodecs; "
            "napari-edof depends on it, so the installation is incomplete)"
        ) from None


def _check_png(path: Path, size: int) -> tuple[int, int]:
    """Walk the PNG's chunk headers (no decompression): refuse truncated files. Returns the
    (bit depth, colour type) of its header."""
    try:
        with open(path, "rb") as f:
            f.seek(8)
            pos = 8
            first = True
            while True:
                head = f.read(8)
                if len(head) < 8:
                    raise ReadError(f"{path}: the PNG is truncated (it ends at byte {pos} before its IEND chunk)")
                length, ctype = struct.unpack(">I4s", head)
                if first:
                    if ctype != b"IHDR" or length < 13:
                        raise ReadError(f"{path}: not a valid PNG (no IHDR header chunk)")
                    ihdr = f.read(13)
                    if len(ihdr) < 13:
                        raise ReadError(f"{path}: the PNG is truncated (in its IHDR header)")
                    depth, colour = ihdr[8], ihdr[9]
                    f.seek(pos + 8)
                    first = False
                end = pos + 12 + length
                if end > size:
                    raise ReadError(
                        f"{path}: the PNG is truncated (its {ctype.decode('latin-1')} chunk needs bytes "
                        f"up to {end} but the file has {size} bytes)"
                    )
                if ctype == b"IEND":
                    return depth, colour
                f.seek(end)
                pos = end
    except OSError as e:
        raise ReadError(f"{path}: cannot read the file ({_oserror(e)})") from None


def _tiff_plane_header(path: Path, size: int) -> _PlaneInfo:
    import tifffile

    with _tifffile_log() as messages:
        try:
            tf = tifffile.TiffFile(path)
        except Exception as e:
            _check_log(messages, path, size)
            raise ReadError(f"{path}: not a readable TIFF file ({_why(e)}); it may be truncated or corrupt") from None
        try:
            try:
                series = list(tf.series)
                _check_log(messages, path, size)
                if not series:
                    raise ReadError(f"{path}: the TIFF file holds no image; it may be truncated or corrupt")
                s = series[0]
                _check_extent(s, path)
                shape, axes, dtype = tuple(s.shape), s.axes, np.dtype(s.dtype)
                rgb_file = _is_photometric_rgb(s)
                scale = tiff_scale(tf, 0)
                render = tiff_rendering(s.keyframe, str(path))
            except EdofError:
                raise
            except Exception as e:
                _check_log(messages, path, size)
                raise ReadError(f"{path}: cannot read the TIFF structure ({_why(e)}); it may be corrupt") from None
        finally:
            tf.close()
        _check_log(messages, path, size)
    if len(series) > 1 or axes not in ("YX", "YXS", "SYX"):
        raise StackError(
            f"{path}: the TIFF holds more than one plane ({describe_dims(axes, shape)}); a folder, "
            "glob or list must hold 2D images (open a multi-page TIFF on its own)"
        )
    planar = axes == "SYX"
    if planar:
        shape = shape[1:] + shape[:1]
    channels = shape[2] if len(shape) == 3 else 0
    rgb = rgb_file and channels in (3, 4)
    if render.colour:
        if channels:
            raise StackError(f"{path}: a palette (colour-mapped) TIFF with {channels} samples is not supported")
        channels, rgb = 3, True
    return _PlaneInfo(
        path=path,
        kind="tiff",
        shape=render.shape(shape, 0, 1),
        dtype=render.dtype(dtype.newbyteorder("=")),
        channels=channels,
        rgb=rgb,
        planar=planar,
        mode=axes,
        scale=scale,
        stat=_stat_key(path),
        render=render,
    )


def _read_plane(info: _PlaneInfo) -> np.ndarray:
    """Read one 2D image's pixels (runs when the dask array is computed)."""
    try:
        if info.kind == "tiff":
            import tifffile

            with _tifffile_log():
                a = tifffile.imread(info.path, series=0)
            if info.planar:
                a = np.moveaxis(a, 0, -1)
        elif info.decoder == "imagecodecs-png":
            import imagecodecs

            a = imagecodecs.png_decode(info.path.read_bytes())
            if info.png_colour == 4:  # grey + alpha: the grey (as Pillow's LA -> L)
                a = a[..., 0]
        else:
            from PIL import Image

            with Image.open(info.path) as im:
                if info.convert:
                    im = im.convert(info.convert)
                a = np.asarray(im)
        if not info.render.identity:
            a = info.render.apply(a, 0, 1)
    except Exception as e:
        raise ReadError(
            f"{info.path}: cannot read the pixels ({_why(e)}); the file may be truncated or corrupt"
        ) from None
    if tuple(a.shape) != info.shape:
        raise ReadError(
            f"{info.path}: the image changed since it was opened (it is now {tuple(a.shape)}, "
            f"it was {info.shape})"
        )
    return np.ascontiguousarray(a, dtype=info.dtype)


def _open_planes(paths: Sequence[Path], *, axes, name: str, label: str) -> Stack:
    import dask
    import dask.array as da

    infos = []
    for p in paths:
        kind, size = _sniff(p)
        info = _image_header(p, kind, size)
        _check_dtype(info.dtype, str(p))
        infos.append(info)
    if len(infos) < 2:
        raise StackError(
            f"{label}: a focus stack needs at least 2 planes, but there is only 1 image "
            f"({infos[0].path.name})"
        )
    ref = infos[0]
    for info in infos[1:]:
        if info.shape[:2] != ref.shape[:2]:
            raise StackError(
                f"{info.path}: the image is {info.shape[0]}x{info.shape[1]} pixels{_turned(info)} but "
                f"{ref.path.name} (the first plane) is {ref.shape[0]}x{ref.shape[1]}{_turned(ref)}; all planes "
                "must have the same size"
            )
        if info.channels != ref.channels or info.rgb != ref.rgb:
            raise StackError(
                f"{info.path}: the image is {_plane_desc(info)} but {ref.path.name} (the first plane) "
                f"is {_plane_desc(ref)}; all planes must have the same channels"
            )
        if info.dtype != ref.dtype:
            raise StackError(
                f"{info.path}: the pixel type is {info.dtype} but {ref.path.name} (the first plane) "
                f"is {ref.dtype}; all planes must have the same pixel type"
            )
    parts = []
    for info in infos:
        key = "edof-read-" + _token(info.stat, info.kind, info.shape, str(info.dtype), info.convert, info.planar,
                                    info.render.key, info.decoder)
        d = dask.delayed(_read_plane, pure=True)(info, dask_key_name=key)
        parts.append(da.from_delayed(d, shape=info.shape, dtype=info.dtype))
    data = da.stack(parts, axis=0)
    if axes is None:
        ax, rgb, note = ("ZYXC" if ref.channels else "ZYX"), ref.rgb, "images"
    else:
        ax = str(axes).upper()
        if len(ax) != data.ndim:
            raise StackError(
                f"{label}: axes={axes!r} has {len(ax)} letters but the {len(infos)} images make an "
                f"array of {data.ndim} dimensions {tuple(data.shape)} (planes, Y, X{', C' if ref.channels else ''})"
            )
        rgb = ref.rgb and (ax.find("S") == 3 or ax.find("C") == 3)
        ax = ax.replace("S", "C")
        note = "given"
    kinds = sorted({i.kind for i in infos})
    metadata = {
        "format": kinds[0] if len(kinds) == 1 else "mixed (" + ", ".join(kinds) + ")",
        "files": len(infos),
        "axes_from": note,
        "file_modes": sorted({i.mode for i in infos}),
    }
    notes: dict[str, list[Path]] = {}
    for info in infos:
        for text in info.render.notes:
            notes.setdefault(text, []).append(info.path)
    for text, where in notes.items():
        which = where[0].name if len(where) == 1 else f"{where[0].name} and {len(where) - 1} more"
        _report(metadata, f"{label}: {text} ({len(where)} of {len(infos)} planes: {which})")
    return _make_stack(
        data,
        ax,
        label=label,
        rgb=rgb,
        name=name,
        source=tuple(str(i.path.absolute()) for i in infos),
        scale=ref.scale,
        metadata=metadata,
    )


def read_image(path) -> np.ndarray:
    """One 2D image as its viewers show it: (Y, X) grey or (Y, X, C) colour, from a TIFF, PNG or
    JPEG file (the same decoding as the planes of a folder: EXIF orientation, miniswhite and
    palettes applied, 16-bit colour PNGs kept at 16 bits). Raises ``ReadError``/``StackError``."""
    p = _as_path(path)
    kind, size = _sniff(p)
    try:
        info = _image_header(p, kind, size)
    except StackError as e:
        found = re.search(r"holds more than one plane \((.*)\); a folder", str(e))
        if found:
            raise ReadError(f"{p}: not one 2D image: the TIFF holds {found.group(1)}") from None
        raise
    return _read_plane(info)
