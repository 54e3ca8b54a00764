"""Axes and physical scale from TIFF metadata (OME, ImageJ, tifffile's own JSON), and units.

Nothing here reads pixels. The functions take an open :class:`tifffile.TiffFile` (or plain
values) and return plain Python values; errors are :class:`~napari_edof.core.errors.StackError`
whose message names the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
                f"{len(shape)} dimensions: {describe_dims(file_axes, shape)}"
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
                    f"{prefix}the file has both channels and colour samples ({describe_dims(file_axes, shape)}); "
                    "pass axes= (--axes) with one letter per dimension from TZCYX to say which is the focus (Z) axis"
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
            f"{prefix}cannot tell which dimension is the focus (Z) axis of the file's "
            f"{describe_dims(file_axes, shape)}: pass axes= (--axes) with one letter per dimension from TZCYX, "
            f"for example {_example_axes(len(shape))!r}"
        )
    drop = tuple(free)
    kept = "".join(a for k, a in enumerate(letters) if k not in drop)
    return kept, rgb, note, drop


def _example_axes(n: int) -> str:
    return {3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(n, "TZYX")


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


# --- channel names and colours -------------------------------------------------------------


def tiff_channels(tf, series_index: int = 0) -> list[dict] | None:
    """The file's channels as ``[{"name": str | None, "color": (r, g, b) | None}, ...]``, or None.

    OME: each ``Channel``'s ``Name`` and ``Color`` (a packed RGBA integer). ImageJ: a name per
    channel from ``ChannelNames`` (in the properties) or from the slice ``Labels`` when every
    plane of a channel carries the same label; a colour from each channel's lookup table (its
    brightest entry). Metadata that cannot be read gives None (never a reason to refuse pixels).
    """
    try:
        if tf.is_ome:
            return _ome_channels(tf, series_index)
        if tf.is_imagej:
            return _imagej_channels(dict(tf.imagej_metadata or {}))
    except Exception:  # noqa: BLE001 - names are a nicety; the pixels do not depend on them
        pass
    return None


def _ome_channels(tf, series_index: int) -> list[dict] | None:
    import tifffile

    images = tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image", [])
    if isinstance(images, dict):
        images = [images]
    if not images:
        return None
    chans = images[min(series_index, len(images) - 1)].get("Pixels", {}).get("Channel", [])
    if isinstance(chans, dict):
        chans = [chans]
    out = [{"name": _text(c.get("Name")), "color": ome_color(c.get("Color"))} for c in chans if isinstance(c, dict)]
    return out if any(c["name"] or c["color"] for c in out) else None


def ome_color(value) -> tuple[float, float, float] | None:
    """An OME ``Color`` (a signed 32-bit RGBA integer) as (r, g, b) in 0..1; white and black
    (OME's default, and no colour at all) give None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    rgb = ((v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255)
    if rgb in ((255, 255, 255), (0, 0, 0)):
        return None
    return tuple(round(c / 255, 4) for c in rgb)


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _imagej_channels(ij: dict) -> list[dict] | None:
    n = int(ij.get("channels") or 1)
    if n < 2:
        return None
    names: list = [None] * n
    props = ij.get("Properties") if isinstance(ij.get("Properties"), dict) else {}
    given = ij.get("ChannelNames", props.get("ChannelNames"))
    if isinstance(given, str):
        given = [t.strip() for t in given.replace(";", ",").split(",")]
    labels = ij.get("Labels")
    if isinstance(given, (list, tuple)) and len(given) == n:
        names = [_text(t) for t in given]
    elif isinstance(labels, (list, tuple)) and labels and len(labels) % n == 0:
        # ImageJ orders the planes C fastest, then Z, then T: channel c's labels are labels[c::n]
        for c in range(n):
            own = {_text(t) for t in labels[c::n]}
            if len(own) == 1:
                names[c] = own.pop()
        if len(set(names)) < n:  # the same label on every channel names nothing
            names = [None] * n
    colors: list = [None] * n
    luts = ij.get("LUTs")
    if isinstance(luts, (list, tuple)) and len(luts) == n:
        for c, lut in enumerate(luts):
            try:
                top = [int(v) for v in lut[:3, -1]]
            except Exception:  # noqa: BLE001
                continue
            if len(set(top)) > 1 and max(top) > 0:  # a grey LUT says nothing
                colors[c] = tuple(round(v / 255, 4) for v in top)
    out = [{"name": a, "color": b} for a, b in zip(names, colors)]
    return out if any(c["name"] or c["color"] for c in out) else None


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


# --- how stored pixels become the image a viewer shows --------------------------------------
#
# The one place where a file's photometric metadata is reconciled with its pixels, for every
# reader (multi-page TIFFs, and the TIFF, PNG and JPEG planes of a folder, glob or list):
#
# * EXIF / TIFF orientation (tag 274; a phone's portrait JPEG is stored landscape with
#   orientation 6): the pixels are turned and mirrored as the tag says, so that the planes are
#   read as every viewer shows them, and the results are written in that orientation (with no
#   orientation tag, i.e. the default, "top left");
# * photometric ``miniswhite`` (0 is white): the values are inverted on read (``v -> 2**bits - 1
#   - v`` for unsigned integers, ``-1 - v`` for signed, ``-v`` for floats) so that 0 is black
#   everywhere after, and the results are written ``minisblack``: they look like the input in
#   every viewer (napari ignores the tag, so it would show the raw values inverted);
# * photometric ``palette``: the palette is applied (fusing colour indices would mean nothing):
#   a palette of greys gives a grey image, others an RGB image; 8-bit when every palette entry
#   is an 8-bit value scaled to 16 bits (as writers store them), else 16-bit.
#
# Each change made is said in ``Stack.metadata["reconciled"]`` (and so in provenance.json) and
# warned about (the CLI prints it, napari shows it).

#: EXIF orientation -> (swap Y and X, then flip Y, then flip X) giving the displayed image.
_ORIENT = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}
ORIENTATION_WORDS = {
    1: "top left (as stored)",
    2: "mirrored left to right",
    3: "turned 180 degrees",
    4: "mirrored top to bottom",
    5: "mirrored along the diagonal (transposed)",
    6: "turned 90 degrees clockwise",
    7: "mirrored along the other diagonal (transversed)",
    8: "turned 90 degrees anticlockwise",
}


def as_orientation(value) -> int:
    """An orientation tag's value as 1..8 (1 for a missing or invalid value)."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        return 1
    return v if v in _ORIENT else 1


@dataclass(frozen=True, eq=False)
class Rendering:
    """How the pixels a file stores become the image its viewers show (see above).

    ``apply`` works on numpy and dask arrays alike (lazily on dask) with the Y and X axes at
    the positions given; a palette adds a last (colour) axis unless it is grey.
    """

    orientation: int = 1
    invert: float | None = None  # miniswhite: the value that 0 becomes (None: no inversion)
    lut: Any = None  # palette: (n, 3) or, for greys, (n,) table indexed by the stored values
    notes: tuple = ()  # what is changed, in words (without the file's name)

    @property
    def identity(self) -> bool:
        return self.orientation == 1 and self.invert is None and self.lut is None

    @property
    def swaps(self) -> bool:
        return _ORIENT[self.orientation][0]

    @property
    def colour(self) -> bool:
        return self.lut is not None and self.lut.ndim == 2

    def dtype(self, stored):
        import numpy as np

        return np.dtype(self.lut.dtype) if self.lut is not None else np.dtype(stored)

    @property
    def key(self) -> tuple:
        """What identifies the rendering (for dask task names)."""
        return (self.orientation, self.invert, None if self.lut is None else self.lut.tobytes())

    def shape(self, shape, y: int, x: int) -> tuple:
        s = list(shape)
        if self.swaps:
            s[y], s[x] = s[x], s[y]
        if self.colour:
            s.append(self.lut.shape[1])
        return tuple(s)

    def apply(self, a, y: int, x: int):
        import numpy as np

        if self.invert is not None:
            a = _invert(a, self.invert)
        if self.lut is not None:
            lut = self.lut
            if hasattr(a, "dask"):
                a = a.map_blocks(lambda b: np.take(lut, b, axis=0, mode="clip"), dtype=lut.dtype,
                                 **({"new_axis": a.ndim} if lut.ndim == 2 else {}),
                                 **({"chunks": a.chunks + ((lut.shape[1],),)} if lut.ndim == 2 else {}))
            else:
                a = np.take(lut, np.asarray(a), axis=0, mode="clip")
        swap, fy, fx = _ORIENT[self.orientation]
        if swap:
            a = a.swapaxes(y, x)
        if fy or fx:
            idx = [slice(None)] * a.ndim
            if fy:
                idx[y] = slice(None, None, -1)
            if fx:
                idx[x] = slice(None, None, -1)
            a = a[tuple(idx)]
        return a


def _invert(a, top):
    import numpy as np

    dt = np.dtype(a.dtype)
    if dt.kind == "f":
        return -a
    if dt.kind == "i":
        return (-1 - a).astype(dt)
    return (dt.type(top) - a).astype(dt)


def tiff_rendering(page, label: str) -> Rendering:
    """The :class:`Rendering` of a TIFF page (the first page of a series: its key frame)."""
    import numpy as np

    tags = page.tags
    notes = []
    o_tag = tags.get(274)
    orientation = as_orientation(o_tag.value if o_tag is not None else 1)
    invert = None
    lut = None
    has_photometric = tags.get(262) is not None  # tifffile reports 0 (miniswhite) when it is missing
    photometric = int(page.photometric) if has_photometric else -1
    dt = np.dtype(page.dtype) if page.dtype is not None else None
    if photometric == 0 and dt is not None and int(page.samplesperpixel) == 1:
        bits = int(page.bitspersample)
        if dt.kind == "u":
            invert = float(2 ** min(bits, dt.itemsize * 8) - 1)
            how = f"v -> {int(invert)} - v"
        elif dt.kind == "i":
            invert, how = -1.0, "v -> -1 - v"
        else:
            invert, how = 0.0, "v -> -v"
        notes.append(f"photometric miniswhite (0 is white): the values are inverted on read ({how}) "
                     "so that the planes look as they do in viewers; the results are written minisblack")
    elif photometric == 3:
        cmap = page.colormap
        if cmap is None:
            raise StackError(f"{label}: a palette (colour-mapped) TIFF without its palette (no ColorMap tag); "
                             "it may be corrupt")
        cmap = np.asarray(cmap)
        if cmap.ndim == 1:
            cmap = np.stack([cmap] * 3)
        table = cmap.T  # (n, 3)
        eight = table.dtype.itemsize > 1 and (
            bool(np.all(table % 257 == 0)) or bool(np.all(table % 256 == 0)))
        if table.dtype.itemsize == 1:
            table = table.astype(np.uint8)
        elif eight:
            table = (table // (257 if np.all(table % 257 == 0) else 256)).astype(np.uint8)
        else:
            table = table.astype(np.uint16)
        grey = bool(np.all(table[:, 0] == table[:, 1]) and np.all(table[:, 1] == table[:, 2]))
        lut = np.ascontiguousarray(table[:, 0] if grey else table)
        notes.append(f"a palette (colour-mapped) TIFF: its palette of {len(table)} entries is applied, "
                     f"giving a {'grey' if grey else 'RGB'} {lut.dtype} image (the stored values are colour "
                     "indices, not intensities)")
    if orientation != 1:
        notes.append(orientation_note(orientation, "TIFF"))
    return Rendering(orientation=orientation, invert=invert, lut=lut, notes=tuple(notes))


def orientation_note(orientation: int, kind: str) -> str:
    return (f"{kind} orientation {orientation} ({ORIENTATION_WORDS[orientation]}) is applied: the planes "
            "are read as viewers show them, and the results are written in that orientation")


# --- axes in words --------------------------------------------------------------------------

_AXIS_WORDS = {
    "T": "time", "Z": "focus planes", "C": "channels", "S": "colour samples", "Y": "height",
    "X": "width", "I": "images", "Q": "unnamed", "R": "tiles", "E": "lambda", "H": "phase",
    "P": "position", "A": "angle", "L": "exposure", "V": "views", "M": "mosaic", "O": "other",
}


def describe_dims(axes: str, shape) -> str:
    """``"4 (unnamed) x 64 (height) x 64 (width)"``: a file's dimensions in words, for messages
    (tifffile's letters such as ``Q`` or ``I`` mean nothing to a user)."""
    parts = []
    for k, n in enumerate(shape):
        a = axes[k].upper() if k < len(axes) else "?"
        parts.append(f"{n} ({_AXIS_WORDS.get(a, 'unnamed')})")
    return " x ".join(parts)
