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
