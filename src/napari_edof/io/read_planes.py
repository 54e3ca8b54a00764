"""Folders, globs and lists of 2D images (TIFF, PNG, JPEG) opened lazily as stacks
(:mod:`napari_edof.io.readers`): one ``dask.delayed`` read per file, stacked along Z; shapes and
dtypes come from the headers (Pillow's ``Image.open`` and ``tifffile.TiffFile`` read no pixels).
"""
from __future__ import annotations

import glob as _glob
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ReadError, StackError
from ..core.stack import Stack
from ._read_common import (
    IMAGE_SUFFIXES,
    _as_path,
    _check_dtype,
    _make_stack,
    _oserror,
    _report,
    _sniff,
    _stat_key,
    _token,
    _why,
    natural_key,
)
from .metadata import (
    Rendering,
    as_orientation,
    describe_dims,
    orientation_note,
    tiff_rendering,
    tiff_scale,
)
from .read_tiff import _check_extent, _is_photometric_rgb, _tiff_structure, _tifffile_log

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


#: file names in a folder that are results, not planes (case-insensitive): napari-edof's own
#: outputs (``fused.tif``, ``focus_index.tif``/``.png``, ``decision.tif``, ``masks.tif``,
#: ``confidence.tif``, ``audit.tif``, ``audit_mask.tif``, also with a prefix such as ``name_``),
#: and the all-in-focus images example stacks keep beside their frames (``expected.jpg`` in
#: focus-stack's examples, ``ground_truth.png``)
_OUR_OUTPUTS = re.compile(r"^(?:.*[_.\- ])?(?:fused|focus_index(?:_t\d+)?|decision|masks|confidence|audit|audit_mask)"
                          r"\.(?:ome\.)?(?:tiff?|png)$", re.IGNORECASE)
_REFERENCES = re.compile(r"^(?:expected|ground[_\- ]?truth|truth|gt|all[_\- ]?in[_\- ]?focus|aif)"
                         r"\.(?:tiff?|png|jpe?g)$", re.IGNORECASE)


def not_a_plane(name: str) -> str | None:
    """Why the image file ``name`` in a folder of planes is not taken as a plane (None: it is one)."""
    if _OUR_OUTPUTS.match(name):
        return "a napari-edof output"
    if _REFERENCES.match(name):
        return "a reference image, not a plane"
    return None


def _list_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The folder's images in natural order, and the images left out as not planes (with why)."""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise ReadError(f"{folder}: cannot list the folder ({_oserror(e)})") from None
    files, skipped, others = [], [], 0
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
            why = not_a_plane(e.name)
            if why:
                skipped.append((Path(e.path), why))
            else:
                files.append(Path(e.path))
        else:
            others += 1
    skipped.sort(key=lambda x: natural_key(x[0]))
    if not files and skipped:
        raise ReadError(f"{folder}: the folder holds no planes, only {_skipped_text(skipped)}; to fuse these "
                        "anyway, give them as a list of files or a glob pattern")
    if not files:
        extra = f" (it holds {others} other file{'s' if others != 1 else ''})" if others else " (it is empty)"
        raise ReadError(f"{folder}: the folder holds no TIFF, PNG or JPEG images{extra}")
    return sorted(files, key=natural_key), skipped


_PLURAL = {"a napari-edof output": "napari-edof outputs",
           "a reference image, not a plane": "reference images, not planes"}


def _skipped_text(skipped: list[tuple[Path, str]]) -> str:
    whys: dict[str, list[str]] = {}
    for p, why in skipped:
        whys.setdefault(why, []).append(p.name)
    return "; ".join(f"{', '.join(names)} ({_PLURAL.get(why, why) if len(names) > 1 else why})"
                     for why, names in whys.items())


def skipped_note(folder, skipped: list[tuple[Path, str]]) -> str:
    """The warning for images a folder's stack left out."""
    n = len(skipped)
    return (f"{folder}: {n} image{'s' if n != 1 else ''} in the folder left out, not taken as "
            f"plane{'s' if n != 1 else ''}: {_skipped_text(skipped)}; to include "
            f"{'them' if n != 1 else 'it'}, give the files as a list or a glob pattern")


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
    with _tifffile_log() as messages, _tiff_structure(path, size, messages) as t:
        series = t.series
        s = series[0]
        _check_extent(s, path)
        shape, axes, dtype = tuple(s.shape), s.axes, np.dtype(s.dtype)
        rgb_file = _is_photometric_rgb(s)
        scale = tiff_scale(t.tf, 0)
        render = tiff_rendering(s.keyframe, str(path))
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


def _jpeg_turbo(info: _PlaneInfo) -> np.ndarray | None:
    """A grey or RGB JPEG decoded by imagecodecs (libjpeg-turbo, the library Pillow decodes with,
    at the same full quality: the same pixels), about twice as fast as through Pillow, which
    copies the decoded image once more into numpy. None where that is not possible (imagecodecs
    missing, the file not ending with its end-of-image marker, the decoder refused, another
    shape): Pillow reads it then, and names a truncated or corrupt file."""
    try:
        from imagecodecs import jpeg8_decode

        data = info.path.read_bytes()
        if not data.endswith(b"\xff\xd9"):  # no end-of-image marker last: truncated (libjpeg-turbo would
            return None                      # fill the rest in grey; Pillow says so) or trailing bytes
        a = jpeg8_decode(data)
    except Exception:  # noqa: BLE001 - Pillow decodes it (and names any problem)
        return None
    h, w = info.shape[:2]
    if info.render.swaps:  # (the file's pixels before the EXIF orientation turns them)
        h, w = w, h
    if a.dtype != np.uint8 or a.shape[:2] != (h, w) or a.ndim != (3 if info.mode == "RGB" else 2):
        return None
    return a


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
            a = _jpeg_turbo(info) if info.kind == "jpeg" and info.mode in ("L", "RGB") else None
            if a is None:
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


def _open_planes(paths: Sequence[Path], *, axes, name: str, label: str, skipped=(), eager: bool = False,
                 workers: int | None = None) -> Stack:
    """The images ``paths`` as the planes of a stack (``skipped``: images of the folder left out,
    reported as a warning and in the stack's metadata). ``eager``: read the pixels now, straight
    into one array (planes decoded in ``workers`` threads), when the stack fits in memory."""
    infos = []
    for p in paths:
        kind, size = _sniff(p)
        info = _image_header(p, kind, size)
        _check_dtype(info.dtype, str(p))
        infos.append(info)
    if len(infos) < 2:
        left_out = f" and {_skipped_text(skipped)}, left out" if skipped else ""
        raise StackError(
            f"{label}: a focus stack needs at least 2 planes, but there is only 1 image "
            f"({infos[0].path.name}){left_out}"
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
    from .read_memory import fill_planes, fits_in_memory

    shape = (len(infos),) + tuple(ref.shape)
    if eager and fits_in_memory(int(np.prod(shape, dtype=np.int64)) * ref.dtype.itemsize):
        data = fill_planes(np.empty(shape, ref.dtype), lambda i: _read_plane(infos[i]), len(infos), workers)
    else:
        data = _planes_dask(infos)
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
    if skipped:
        metadata["skipped"] = [str(p.absolute()) for p, _ in skipped]
        _report(metadata, skipped_note(label, skipped))
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


def _planes_dask(infos: list[_PlaneInfo]):
    """One dask task per plane, stacked along Z (and how to read them all at once, for
    :func:`~napari_edof.io.read_memory.materialise`)."""
    import dask
    import dask.array as da

    from .read_memory import fill_planes, register_filler

    parts = []
    for info in infos:
        key = "edof-read-" + _token(info.stat, info.kind, info.shape, str(info.dtype), info.convert, info.planar,
                                    info.render.key, info.decoder)
        d = dask.delayed(_read_plane, pure=True)(info, dask_key_name=key)
        parts.append(da.from_delayed(d, shape=info.shape, dtype=info.dtype))
    data = da.stack(parts, axis=0)
    register_filler(data, lambda out, workers: fill_planes(out, lambda i: _read_plane(infos[i]), len(infos),
                                                           workers))
    return data


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
