"""Multi-page TIFF files (plain, OME, ImageJ) opened lazily as stacks (:mod:`napari_edof.io.readers`).

A TIFF becomes ``dask.array.from_array`` over the file's zarr view (``TiffPageSeries.aszarr``,
one chunk per page); its headers are checked (codecs, declared sizes, extents) before anything is
read. The plane-folder reader also reads single-plane TIFF headers with the checks here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EdofError, ReadError, StackError
from ..core.stack import Stack
from ._read_common import (
    _check_dtype,
    _make_stack,
    _report,
    _stat_key,
    _token,
    _why,
)
from .metadata import (
    describe_dims,
    map_axes,
    reconcile_tiff_pages,
    tiff_channels,
    tiff_rendering,
    tiff_scale,
)
from .read_memory import fits_in_memory


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


class _OpenTiff:
    """An open TIFF file (``tf``) and its series, as :func:`_tiff_structure` gives them."""

    def __init__(self, path: Path, tf):
        self.path, self.tf, self.series = path, tf, []

    def list_series(self) -> list:
        self.series = list(self.tf.series)
        return self.series

    def reopen(self, flags: tuple) -> list:
        """Open the file again with tifffile's ``flags`` (e.g. metadata switched off); its series."""
        import tifffile

        self.tf.close()
        self.tf = tifffile.TiffFile(self.path, **dict(flags))
        return self.list_series()


@contextlib.contextmanager
def _tiff_structure(path: Path, size: int, messages: list[str]):
    """Open a TIFF and list its series for a reader that then reads its structure, inside
    :func:`_tifffile_log` (``messages``), with the readers' errors: not a TIFF, truncated (from
    tifffile's log), holding no image, or failing while the caller reads the structure (anything
    but an :class:`EdofError` becomes a :class:`ReadError`). The file is closed afterwards."""
    import tifffile

    try:
        t = _OpenTiff(path, tifffile.TiffFile(path))
    except Exception as e:
        _check_log(messages, path, size)
        raise ReadError(f"{path}: not a readable TIFF file ({_why(e)}); it may be truncated or corrupt") from None
    try:
        try:
            t.list_series()
            _check_log(messages, path, size)
            if not t.series:
                raise ReadError(f"{path}: the TIFF file holds no image; it may be truncated or corrupt")
            yield t
        except EdofError:
            raise
        except Exception as e:
            _check_log(messages, path, size)
            raise ReadError(f"{path}: cannot read the TIFF structure ({_why(e)}); it may be corrupt") from None
    finally:
        t.tf.close()
    _check_log(messages, path, size)


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


def _series_info(tf, k: int, path: Path, squeeze: bool, flags: tuple = (), eager: bool = False) -> _SeriesInfo:
    """``eager``: the series will be read at once if it fits in memory; then no zarr view is made
    (``chunks`` is empty: the series must be read with :func:`_read_series`)."""
    s = tf.series[k]
    _check_extent(s, path)
    axes = s.axes if squeeze else s.get_axes(False)
    shape = tuple(int(v) for v in (s.shape if squeeze else s.get_shape(False)))
    chunks: tuple = ()
    if not (eager and len(axes) == len(shape)
            and fits_in_memory(int(np.prod(shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize)):
        import zarr

        store = s.aszarr(chunkmode=2, squeeze=squeeze, multiscales=False)
        z = zarr.open_array(store, mode="r")
        shape, chunks = tuple(int(v) for v in z.shape), tuple(int(v) for v in z.chunks)
    if len(axes) != len(shape):
        raise ReadError(f"{path}: the TIFF's axes {axes!r} do not match its data of shape {shape}")
    return _SeriesInfo(
        index=k,
        axes=axes,
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(s.dtype),
        squeeze=squeeze,
        rgb=_is_photometric_rgb(s),
        flags=tuple(flags),
    )


def _read_series(path: Path, info: _SeriesInfo, workers: int | None = None) -> np.ndarray:
    """The whole series read at once (tifffile decodes compressed pages in ``workers`` threads)."""
    import tifffile

    try:
        with _tifffile_log(), tifffile.TiffFile(path, **dict(info.flags)) as tf:
            a = tf.series[info.index].asarray(maxworkers=workers or os.cpu_count() or 1)
    except EdofError:
        raise
    except Exception as e:
        raise ReadError(f"{path}: cannot read the pixels ({_why(e)}); the file may be truncated or corrupt") from None
    if a.size != int(np.prod(info.shape, dtype=np.int64)):
        raise ReadError(f"{path}: the file changed since it was opened (its data is now {a.shape}, it was "
                        f"{info.shape})")
    return a.reshape(info.shape).astype(np.dtype(info.dtype).newbyteorder("="), copy=False)


def _tiff_dask(path: Path, info: _SeriesInfo):
    import dask.array as da

    from .read_memory import register_filler

    arr = _TiffArray(path, info.index, info.shape, info.dtype, info.squeeze, info.flags)
    name = "edof-tiff-" + _token(_stat_key(path), info.index, info.squeeze, info.shape, info.flags)
    data = da.from_array(
        arr,
        chunks=info.chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * len(info.shape), arr.dtype),
    )

    def fill(out, workers):
        out[...] = _read_series(path, info, workers)

    register_filler(data, fill)
    return data


def _open_tiff(path: Path, size: int, *, axes, name, eager: bool = False, workers: int | None = None) -> Stack:
    """``eager``: read the pixels now (one array) when the stack fits in memory."""

    label = str(path)
    with _tifffile_log() as messages:
        with _tiff_structure(path, size, messages) as t:
            tf, all_series = t.tf, t.series
            fmt = "ome-tiff" if tf.is_ome else ("imagej-tiff" if tf.is_imagej else "tiff")
            scale = tiff_scale(tf, 0)
            channels = tiff_channels(tf, 0)
            ij = dict(tf.imagej_metadata or {}) if tf.is_imagej else None
            reconciled = reconcile_tiff_pages(tf, all_series, fmt, label)
            flags: tuple = ()
            if reconciled:  # the metadata's plane count is wrong: read the pages as they are
                flags = (("is_ome", False), ("is_imagej", False), ("is_shaped", False))
                all_series = t.reopen(flags)
                tf = t.tf
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
                infos = [_series_info(tf, 0, path, squeeze, flags, eager=eager)]
            render = tiff_rendering(tf.series[0].keyframe, label)
        warnings_ = list(messages)

    if len(infos) > 1:
        data, file_axes, rgb_file = _stack_series(path, infos)
    else:
        info = infos[0]
        _check_dtype(info.dtype, label)
        if not info.chunks:  # (eager, and it fits: see _series_info)
            data = _read_series(path, info, workers)
        else:
            data = _tiff_dask(path, info)
        file_axes, rgb_file = info.axes, info.rgb
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
    if channels and not reconciled and not rgb and "C" in ax and len(channels) == data.shape[ax.index("C")]:
        metadata["channels"] = channels  # names and colours, one per channel (io/metadata.py)
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
