"""Axes and physical scale from TIFF metadata (OME, ImageJ, tifffile's own JSON), and units.

Nothing here reads pixels. The functions take an open :class:`tifffile.TiffFile` (or plain
values) and return plain Python values; errors are :class:`~napari_edof.core.errors.StackError`
whose message names the file.
"""
from __future__ import annotations

import math
from typing import Any

from ..core.errors import StackError

#: Letters tifffile uses for axes napari-edof has no name for; one of them may be the focus axis.
#: (I: image sequence, Q: unknown, and the rarer E, R, H, A, P, L, V, M, O ...)
_KNOWN = set("TCZYXS")

#: Lengths in metres, for bringing OME's per-axis units to one unit.
_METRES = {
    "pm": 1e-12,
    "Å": 1e-10,
    "nm": 1e-9,
    "µm": 1e-6,
    "mm": 1e-3,
    "cm": 1e-2,
    "dm": 1e-1,
    "m": 1.0,
    "km": 1e3,
}

_UNIT_ALIASES = {
    "micron": "µm",
    "microns": "µm",
    "micrometer": "µm",
    "micrometre": "µm",
    "micrometers": "µm",
    "micrometres": "µm",
    "um": "µm",
    "µm": "µm",  # U+00B5 micro sign
    "μm": "µm",  # U+03BC greek mu
    "\\u00b5m": "µm",  # ImageJ writes the micro sign escaped
    "nanometer": "nm",
    "nanometre": "nm",
    "nanometers": "nm",
    "millimeter": "mm",
    "millimetre": "mm",
    "angstrom": "Å",
    "Å": "Å",
    "meter": "m",
    "metre": "m",
}


def normalise_unit(unit: Any) -> str | None:
    """A unit string in one spelling (``"micron"``, ``"um"``, ``"\\u00B5m"`` -> ``"µm"``).

    Returns None for no unit ("", "pixel", "pixels", None).
    """
    if unit is None:
        return None
    u = str(unit).strip()
    if not u or u.lower() in ("pixel", "pixels", "px", "none", "unknown"):
        return None
    return _UNIT_ALIASES.get(u.lower(), _UNIT_ALIASES.get(u, u))


def imagej_unit(unit: str | None) -> str | None:
    """The unit as ImageJ's ASCII description wants it (µm -> "micron")."""
    u = normalise_unit(unit)
    if u is None:
        return None
    if u == "µm":
        return "micron"
    if u == "Å":
        return "angstrom"
    return u.encode("ascii", "backslashreplace").decode("ascii")


def _convert(value: float, unit: str | None, to: str | None) -> float | None:
    if unit == to:
        return value
    if unit in _METRES and to in _METRES:
        return value * _METRES[unit] / _METRES[to]
    return None


def _positive(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


# --- axes ----------------------------------------------------------------------------------


def map_axes(
    file_axes: str,
    shape: tuple[int, ...],
    *,
    photometric_rgb: bool,
    axes: str | None = None,
    label: str = "",
) -> tuple[str, bool, str, tuple[int, ...]]:
    """Turn tifffile's series axes into napari-edof axes (letters from "TCZYX").

    Parameters
    ----------
    file_axes : str
        tifffile's axes for the series, one letter per dimension of ``shape`` (for example
        ``"IYXS"``, ``"TZCYX"``, ``"QYX"``).
    shape : tuple of int
    photometric_rgb : bool
        True when the samples ("S") of the file are red, green, blue (and alpha).
    axes : str, optional
        The caller's axes; one letter per dimension, from "TCZYX" ("S" is taken as "C" holding
        RGB(A) samples).
    label : str
        The file, named in error messages.

    Returns
    -------
    axes : str
    rgb : bool
        True when the C axis holds RGB(A) samples.
    note : str
        How the axes were decided (for ``Stack.metadata``).
    drop : tuple of int
        Dimensions of ``shape`` (all of length 1) with no meaning for a focus stack; the caller
        indexes them away. ``axes`` has no letter for them.
    """
    prefix = f"{label}: " if label else ""
    if axes is not None:
        ax = str(axes).upper()
        if len(ax) != len(shape):
            raise StackError(
                f"{prefix}axes={axes!r} has {len(ax)} letters but the image data has "
                f"{len(shape)} dimensions {tuple(shape)} (the file's own axes are {file_axes!r})"
            )
        rgb = False
        if "S" in ax and "C" in ax:
            i = ax.index("S")
            if shape[i] != 1:
                raise StackError(f"{prefix}axes={axes!r} has both S and C; use one of them for the channels")
            return ax[:i] + ax[i + 1 :], False, "given", (i,)
        if "S" in ax:
            i = ax.index("S")
            rgb = shape[i] in (3, 4)
            ax = ax.replace("S", "C")
        elif "C" in ax:
            i = ax.index("C")
            rgb = (
                photometric_rgb
                and i < len(file_axes)
                and file_axes[i] == "S"
                and shape[i] in (3, 4)
            )
        return ax, rgb, "given", ()

    letters = list(file_axes.upper())
    note = "file"
    rgb = False
    if "S" in letters:
        i = letters.index("S")
        rgb = photometric_rgb and shape[i] in (3, 4)
        if "C" in letters:
            j = letters.index("C")
            if rgb and "Z" not in letters and all(a in _KNOWN for a in letters):
                # an RGB stack written as "channels" of RGB images (tifffile's ImageJ/OME writers
                # do this when no axes are given): the channels are the planes
                letters[j] = "Z"
                note = "file (C of RGB images taken as Z)"
            else:
                raise StackError(
                    f"{prefix}the file has both channels (C) and samples (S) in axes {file_axes!r} "
                    f"of shape {tuple(shape)}; pass axes= to say which axis is the focus (Z) axis"
                )
        letters[i] = "C"
    free = [k for k, a in enumerate(letters) if a not in _KNOWN]
    if free and "Z" not in letters:
        big = [k for k in free if shape[k] > 1]
        if len(free) == 1 or len(big) == 1:
            k = free[0] if len(free) == 1 else big[0]
            letters[k] = "Z"
            note = f"file ({file_axes[k]} taken as Z)"
            free.remove(k)
    if any(shape[k] > 1 for k in free):
        raise StackError(
            f"{prefix}cannot tell which axis is the focus (Z) axis of axes {file_axes!r} "
            f"(shape {tuple(shape)}): pass axes=, for example axes='TZYX'"
        )
    drop = tuple(free)
    kept = "".join(a for k, a in enumerate(letters) if k not in drop)
    return kept, rgb, note, drop


# --- physical scale ----------------------------------------------------------------------


def tiff_scale(tf, series_index: int = 0) -> tuple[tuple[float, float] | None, float | None, str | None]:
    """(pixel_size (y, x), z_step, unit) from OME, ImageJ or tifffile JSON metadata, else Nones.

    A plain TIFF's resolution tags (usually 72 dpi from image editors) are not taken as a
    physical pixel size.
    """
    try:
        if tf.is_ome:
            return _ome_scale(tf, series_index)
        if tf.is_imagej:
            return _imagej_scale(tf)
        if tf.is_shaped:
            return _shaped_scale(tf, series_index)
    except Exception:  # metadata we cannot interpret is not a reason to refuse the pixels
        pass
    return None, None, None


def _ome_scale(tf, series_index: int):
    import tifffile

    ome = tifffile.xml2dict(tf.ome_metadata).get("OME", {})
    images = ome.get("Image", [])
    if isinstance(images, dict):
        images = [images]
    if not images:
        return None, None, None
    image = images[min(series_index, len(images) - 1)]
    px = image.get("Pixels", {})

    def get(axis):
        v = _positive(px.get(f"PhysicalSize{axis}"))
        u = normalise_unit(px.get(f"PhysicalSize{axis}Unit", "µm")) or "µm"
        return v, u

    (x, ux), (y, uy), (z, uz) = get("X"), get("Y"), get("Z")
    unit = ux if x is not None else (uy if y is not None else uz)
    pixel_size = None
    if x is not None or y is not None:
        xx = _convert(x, ux, unit) if x is not None else None
        yy = _convert(y, uy, unit) if y is not None else None
        xx = xx if xx is not None else yy
        yy = yy if yy is not None else xx
        pixel_size = (yy, xx) if xx is not None else None
    z_step = _convert(z, uz, unit) if z is not None else None
    if pixel_size is None and z_step is None:
        return None, None, None
    return pixel_size, z_step, unit


def _rational(tag) -> float | None:
    if tag is None:
        return None
    v = tag.value
    if isinstance(v, tuple) and len(v) == 2:
        num, den = v
        return _positive(num / den) if den else None
    return _positive(v)


def _imagej_scale(tf):
    ij = tf.imagej_metadata or {}
    unit = normalise_unit(ij.get("unit"))
    if unit is None:
        return None, None, None
    page = tf.pages.first
    xres = _rational(page.tags.get("XResolution"))
    yres = _rational(page.tags.get("YResolution"))
    pixel_size = None
    if xres is not None:
        yres = yres if yres is not None else xres
        pixel_size = (1.0 / yres, 1.0 / xres)
    z_step = _positive(ij.get("spacing"))
    return pixel_size, z_step, unit


def _shaped_scale(tf, series_index: int):
    metas = tf.shaped_metadata or ()
    if not metas:
        return None, None, None
    m = metas[min(series_index, len(metas) - 1)] or {}
    unit = normalise_unit(m.get("unit"))
    ps = m.get("pixel_size")
    pixel_size = None
    if isinstance(ps, (list, tuple)) and len(ps) == 2:
        y, x = _positive(ps[0]), _positive(ps[1])
        if y is not None and x is not None:
            pixel_size = (y, x)
    z_step = _positive(m.get("z_step"))
    if unit is None or (pixel_size is None and z_step is None):
        return None, None, None
    return pixel_size, z_step, unit


# --- declared sizes against the data ------------------------------------------------------
#
# The one place where what a file's metadata declares is reconciled with the pixels it really
# holds. A mismatch is either refused (StackError) or resolved to what is really there, with a
# message that the reader reports as an EdofWarning (napari shows it, the CLI prints it) and
# keeps in ``Stack.metadata["reconciled"]`` (and so in provenance.json).


def _declared(shape, axes: str) -> tuple[int, str, int]:
    """(images declared, "Z=50, T=2", how many of those dimensions are longer than 1)."""
    dims = [(a, int(n)) for a, n in zip(axes, shape) if a not in "YXS"]
    count = 1
    for _, n in dims:
        count *= n
    text = ", ".join(f"{a}={n}" for a, n in dims) or "1 image"
    return count, text, sum(1 for _, n in dims if n > 1)


def reconcile_tiff_pages(tf, all_series, fmt: str, label: str) -> str | None:
    """Compare the planes an OME or ImageJ TIFF's metadata declares with the pages it holds.

    Returns None when they agree (or the file cannot tell), else the message to report when
    the file's own pages are to be read as the planes (metadata ignored for the plane count);
    raises :class:`StackError` when the pages cannot be matched to planes (the metadata declares
    several dimensions, e.g. T and Z).
    """
    if fmt not in ("ome-tiff", "imagej-tiff") or not all_series:
        return None
    s0 = all_series[0]
    declared, text, multi = _declared(s0.shape, s0.axes)
    pages_in_file = len(tf.pages)
    if fmt == "ome-tiff":
        series_pages = list(s0.pages)
        present = sum(p is not None for p in series_pages)
        missing = len(series_pages) - present
        extra = pages_in_file - present if len(all_series) == 1 else 0
        if missing <= 0 and extra <= 0:
            return None
        held = present + max(extra, 0)
    else:
        if pages_in_file <= 1:  # one page with contiguous data: the extent check covers it
            return None
        held = pages_in_file
        if held == declared:
            return None
    kind = "OME" if fmt == "ome-tiff" else "ImageJ"
    what = "planes that are not in the file (they would read as zeros)" if held < declared else \
        "fewer planes than the file holds (the others would be dropped)"
    if multi > 1:
        raise StackError(
            f"{label}: the {kind} metadata declares {declared} images ({text}) but the file holds "
            f"{held} pages, so it cannot be told which page is which plane; fix the metadata or "
            "save the stack again"
        )
    return (f"{label}: the {kind} metadata declares {declared} images ({text}), {what}, but the file "
            f"holds {held} pages: the {held} pages are read as the planes")


def reconcile_zarr_chunks(arr, axes: str, label: str) -> tuple[list[int] | None, str | None]:
    """Compare a zarr array's chunk grid with the chunk files its store really holds.

    A missing chunk reads as the fill value: planes whose chunks are all missing are not in the
    store and are left out (returned: the Z indices to keep), and chunks missing inside other
    planes are reported. Returns ``(keep or None, message or None)``.
    """
    try:
        if arr.nchunks_initialized >= arr.nchunks:
            return None, None
        total = int(arr.nchunks)
        root = getattr(arr.store, "root", None)
        if root is None or getattr(arr, "shards", None) is not None or "Z" not in axes:
            return None, (f"{label}: {total - int(arr.nchunks_initialized)} of {total} chunks are missing "
                          f"from the store; they read as the fill value {arr.fill_value}")
        import os

        import numpy as np

        folder = os.path.join(os.fspath(root), arr.path or "")
        stored = set()
        for d, _, files in os.walk(folder):
            rel = os.path.relpath(d, folder)
            for f in files:
                stored.add(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
        grid = tuple(int(n) for n in arr.cdata_shape)
        present = np.zeros(grid, bool)
        for c in np.ndindex(*grid):
            present[c] = arr.metadata.encode_chunk_key(c) in stored
    except StackError:
        raise
    except Exception:  # a store we cannot list: nothing to reconcile
        return None, None
    if present.all():
        return None, None
    z = axes.index("Z")
    cz = int(arr.chunks[z])
    nz = int(arr.shape[z])
    z_present = present.any(axis=tuple(k for k in range(present.ndim) if k != z))
    keep = [i for i in range(nz) if z_present[i // cz]]
    gone = [i for i in range(nz) if not z_present[i // cz]]
    partial = int((~present).sum()) - int((~z_present).sum()) * (present.size // grid[z])
    if gone and len(keep) < 2:
        raise StackError(f"{label}: planes {_ranges(gone)} of {nz} have no chunk in the store (their chunk files "
                         "are missing), which leaves fewer than 2 planes with data")
    parts = []
    if gone:
        parts.append(f"planes {_ranges(gone)} of {nz} have no chunk in the store and are left out "
                     f"(the {len(keep)} planes that hold data are fused, numbered 0..{len(keep) - 1})")
    if partial:
        parts.append(f"{partial} chunk(s) of the other planes are missing and read as the fill value "
                     f"{arr.fill_value}")
    return (keep if gone else None), f"{label}: " + "; ".join(parts)


def _ranges(idx: list[int]) -> str:
    out, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)
