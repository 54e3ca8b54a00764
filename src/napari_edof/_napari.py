"""npe2 contributions that need no Qt: the reader, the TIFF writer and the sample data.

Everything here returns napari *layer-data tuples* ``(data, kwargs, layer_type)``; neither Qt nor
napari is imported at module level (the widgets live in :mod:`napari_edof._qt`).

Layer metadata convention: every layer made here carries ``metadata["napari_edof"]`` with
``"axes"`` (and ``"layer_axes"``, the same string) naming the layer's own dimensions from
"TCZYX" (a trailing ``C`` for RGB layers), ``"z_step"``, ``"pixel_size"`` (y, x), ``"unit"`` and,
for files, ``"source"`` (the paths read) and ``"file_axes"`` (the axes of the file before napari
split its channels). The fusion widget reads ``axes`` to pick its z and channel axes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import api

#: File endings the reader claims (folders of such files are read as one stack).
READ_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Units napari (pint) understands, from the spellings readers write.
_UNITS = {
    "µm": "µm", "μm": "µm", "um": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm",
    "micrometre": "µm", "nm": "nm", "nanometer": "nm", "nanometre": "nm", "mm": "mm",
    "millimeter": "mm", "millimetre": "mm", "cm": "cm", "m": "m", "meter": "m", "metre": "m",
}

LayerData = tuple  # (data, kwargs, layer_type)


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
def _paths(path) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    try:
        return [os.fspath(p) for p in path]
    except TypeError:
        return []


def _claims(p: str) -> bool:
    pp = Path(p)
    if pp.is_dir():
        try:
            return any(c.suffix.lower() in READ_EXTENSIONS for c in pp.iterdir() if c.is_file())
        except OSError:
            return False
    return pp.suffix.lower() in READ_EXTENSIONS


#: The most pixel data the reader decodes to check a file when napari asks (the first plane).
CHECK_BYTES = 64 << 20


def _refuse(source, reason: str) -> None:
    """Say why napari-edof does not open ``source`` (napari shows warnings as notifications)."""
    import logging
    import warnings

    from .core.errors import EdofWarning

    text = f"napari-edof cannot open {source}: {reason}"
    logging.getLogger("napari_edof").warning(text)
    warnings.warn(text, EdofWarning, stacklevel=3)


def _check_pixels(stack) -> None:
    """Decode the stack's first chunk (a plane, an image of a folder) when it is small, so that
    pixel data that cannot be decoded is found when napari asks, not when the layer is drawn."""
    data = stack.data
    if not hasattr(data, "blocks") or data.size == 0:
        return
    first = data.blocks[(0,) * data.ndim]
    if first.nbytes <= CHECK_BYTES:
        first.compute()


def get_reader(path) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader function for a focus stack, or None when this is not one.

    Accepts a TIFF / OME-TIFF / ImageJ file, a PNG/JPEG, a folder of images or a list of files.
    The file is checked right away (headers, the codec, the declared against the stored sizes,
    the first plane decoded): a single 2D image is left to other readers (None, quietly); a file
    napari-edof cannot read gives None with the reason as a warning (a napari notification) and
    in the ``napari_edof`` log, never a reader that fails later.
    """
    paths = _paths(path)
    if not paths or not all(_claims(p) for p in paths):
        return None
    source = paths[0] if len(paths) == 1 else paths
    import logging
    import warnings

    from .core.errors import EdofError, EdofWarning
    from .io.readers import SingleImageError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EdofWarning)
            stack = api.open_stack(source)
            _check_pixels(stack)
    except SingleImageError as e:  # one 2D image: another reader's (napari's own) to open
        logging.getLogger("napari_edof").info("napari-edof leaves %s to other readers: %s", source, e)
        return None
    except EdofError as e:
        _refuse(source, str(e))
        return None
    except Exception as e:  # noqa: BLE001 - napari must get None, and the user the reason
        _refuse(source, f"{type(e).__name__}: {e}")
        return None
    said = list(caught)

    def read_focus_stack(_path) -> list[LayerData]:
        for w in said:  # e.g. metadata reconciled with the data: napari shows these as notifications
            warnings.warn(w.message, stacklevel=2)
        return stack_to_layer_data(stack)

    return read_focus_stack


def _unit(unit: str | None) -> str | None:
    if not unit:
        return None
    return _UNITS.get(str(unit).strip(), _UNITS.get(str(unit).strip().lower()))


def stack_to_layer_data(stack, *, name: str | None = None, extra_metadata: dict | None = None) -> list[LayerData]:
    """A :class:`~napari_edof.api.Stack` as napari image layer-data tuples.

    RGB stacks become one ``rgb=True`` layer (colour last); other multichannel stacks are split
    into one layer per channel (``channel_axis``), each of the stack's other dimensions.
    Scale: the z-step on Z, the pixel size on Y and X, 1 on T.
    """
    data, axes = stack.data, stack.axes
    rgb = bool(stack.rgb and "C" in axes)
    if rgb and not axes.endswith("C"):  # napari wants colour last
        order = [i for i, a in enumerate(axes) if a != "C"] + [axes.index("C")]
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
    split = "C" in axes and not rgb
    dims = [a for a in axes if a != "C"]  # the layer's (non-colour, non-split) dimensions
    ps = stack.pixel_size
    scale = []
    for a in dims:
        if a == "Z":
            scale.append(float(stack.z_step) if stack.z_step else 1.0)
        elif a == "Y":
            scale.append(float(ps[0]) if ps else 1.0)
        elif a == "X":
            scale.append(float(ps[1]) if ps else 1.0)
        else:
            scale.append(1.0)
    unit = _unit(stack.unit)
    layer_axes = "".join(dims) + ("C" if rgb else "")
    meta = {
        "axes": layer_axes,
        "layer_axes": layer_axes,
        "file_axes": stack.axes,
        "z_step": stack.z_step,
        "pixel_size": tuple(ps) if ps else None,
        "unit": stack.unit,
        "source": list(stack.source),
    }
    if extra_metadata:
        meta.update(extra_metadata)
    name = name or stack.name
    kw: dict[str, Any] = {
        "name": name,
        "scale": tuple(scale),
        "axis_labels": tuple(a.lower() for a in dims),
        "rgb": rgb,
    }
    if unit:
        kw["units"] = tuple(unit if a in "ZYX" else "pixel" for a in dims)
    if not split:
        kw["metadata"] = {"napari_edof": meta}
        return [(data, kw, "image")]
    c_axis = axes.index("C")
    n = stack.n_channels
    kw["channel_axis"] = c_axis
    channels = channel_info(stack)
    kw["name"] = [f"{name} [{ch['name'] or f'c{i}'}]" for i, ch in enumerate(channels)]
    if any(ch["color"] for ch in channels):  # the file's colours, napari's defaults for the rest
        kw["colormap"] = [_channel_colormap(ch, i, n) for i, ch in enumerate(channels)]
    kw["scale"] = [tuple(scale)] * n
    kw["axis_labels"] = [kw["axis_labels"]] * n
    if "units" in kw:
        kw["units"] = [kw["units"]] * n
    kw["metadata"] = [{"napari_edof": {**meta, "channel": i, **({"channel_name": ch["name"]} if ch["name"] else {})}}
                      for i, ch in enumerate(channels)]
    kw.pop("rgb")
    return [(data, kw, "image")]


#: napari's colours for channels the file gives none (its own choice: magenta/green for 2, else CYMRGB).
_DEFAULT_COLOURS = {2: ("magenta", "green")}
_CYCLE = ("cyan", "yellow", "magenta", "red", "green", "blue")
#: Pure colours that have a napari colormap of their own name.
_NAMED = {(1.0, 0.0, 0.0): "red", (0.0, 1.0, 0.0): "green", (0.0, 0.0, 1.0): "blue", (0.0, 1.0, 1.0): "cyan",
          (1.0, 0.0, 1.0): "magenta", (1.0, 1.0, 0.0): "yellow"}


def channel_info(stack) -> list[dict]:
    """``[{"name": str | None, "color": (r, g, b) | None}]``, one per channel of a non-RGB stack
    with a C axis: what the file says (``stack.metadata["channels"]``), else Nones."""
    n = stack.n_channels if "C" in stack.axes else 0
    given = (stack.metadata or {}).get("channels")
    if isinstance(given, list) and len(given) == n:
        return [{"name": (str(c.get("name")) if c.get("name") else None), "color": c.get("color")} for c in given]
    return [{"name": None, "color": None} for _ in range(n)]


def _channel_colormap(ch: dict, i: int, n: int):
    """A napari colormap for channel ``i`` of ``n``: the file's colour, else napari's default."""
    colour = ch.get("color")
    if colour is None:
        return _DEFAULT_COLOURS.get(n, _CYCLE)[i % len(_DEFAULT_COLOURS.get(n, _CYCLE))]
    rgb = tuple(float(c) for c in colour)
    if rgb in _NAMED:
        return _NAMED[rgb]
    from napari.utils.colormaps import Colormap  # (only when napari reads the file)

    hex_ = "".join(f"{round(c * 255):02x}" for c in rgb)
    return Colormap([[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]], name=f"{ch.get('name') or f'c{i}'} #{hex_}")


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------
def _guess_layer_axes(ndim: int, rgb: bool) -> str:
    base = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(ndim)
    if base is None:
        raise api.EdofError(f"cannot write a {ndim}D layer to TIFF: napari-edof writes 2D to 5D images")
    return base + ("C" if rgb else "")


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray) or hasattr(v, "__array__") and not np.isscalar(v):
            continue  # arrays (the height map) are not written into the description
        if isinstance(v, dict):
            v = _jsonable(v)
        out[k] = v
    return out


def write_tiff(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: an image layer to a TIFF file, written atomically.

    Axes come from the layer's ``metadata["napari_edof"]["layer_axes"]`` (or ``"axes"`` when it
    matches the data), else from its dimensionality; pixel size, z-step and unit from its scale
    and units; napari-edof provenance (method, parameters) goes into the TIFF description.
    """
    from .io import writers  # lazy: the I/O room's atomic TIFF writer

    attributes = attributes or {}
    rgb = bool(attributes.get("rgb", False))
    ndim = len(np.shape(data))
    meta = dict((attributes.get("metadata") or {}).get("napari_edof") or {})
    la = meta.get("layer_axes")
    if (meta.get("role") in ("fused", "index", "decision", "confidence", "audit", "audit_mask") and isinstance(la, str)
            and "Z" in la and len(la) == ndim and np.shape(data)[la.index("Z")] == 1):
        # a time-lapse result keeps a single-plane Z axis for alignment in napari: not in the file
        zi = la.index("Z")
        data = np.take(np.asarray(data), 0, axis=zi)
        scale = attributes.get("scale")
        if scale is not None and len(scale) > zi:
            attributes = {**attributes, "scale": [v for i, v in enumerate(scale) if i != zi]}
        units = attributes.get("units")
        if units is not None and len(units) > zi:
            attributes = {**attributes, "units": [v for i, v in enumerate(units) if i != zi]}
        meta["layer_axes"] = la.replace("Z", "")
        ndim -= 1
    axes = None
    for key in ("layer_axes", "axes"):
        cand = meta.get(key)
        if isinstance(cand, str) and len(cand) == ndim and (cand.endswith("C") or not rgb):
            axes = cand
            break
    if axes is None:
        axes = _guess_layer_axes(ndim - (1 if rgb else 0), rgb)
    dims = axes[:-1] if rgb else axes
    scale = list(attributes.get("scale") or [1.0] * len(dims))
    scale = scale[-len(dims):] if len(scale) >= len(dims) else [1.0] * len(dims)
    units = attributes.get("units")
    unit = None
    if units:
        names = [_unit(str(u)) for u in units]
        unit = next((u for u in names[::-1] if u), None)
    unit = unit or _unit(meta.get("unit"))
    pixel_size = (float(scale[dims.index("Y")]), float(scale[dims.index("X")])) if "Y" in dims and "X" in dims else None
    if pixel_size == (1.0, 1.0) and unit is None:
        pixel_size = None
    z_step = float(scale[dims.index("Z")]) if "Z" in dims else None
    if z_step == 1.0 and unit is None:
        z_step = meta.get("z_step") if "Z" in dims else None
    description = json.dumps({"napari_edof": _jsonable(meta)}, default=str) if meta else None
    write_axes = axes[:-1] + "S" if rgb else axes  # the writer calls RGB samples S
    out = writers.write_tiff(path, data, axes=write_axes, pixel_size=pixel_size, z_step=z_step, unit=unit,
                             description=description)
    return [os.fspath(out)] if isinstance(out, (str, os.PathLike)) else [os.fspath(path)]


# --------------------------------------------------------------------------------------------
# sample data
# --------------------------------------------------------------------------------------------
def _sample(rgb: bool) -> list[LayerData]:
    s = api.sample_stack(n_planes=10, shape=(256, 256), rgb=rgb, dtype=np.uint8 if rgb else np.uint16, seed=0)
    st = s.stack
    name = "synthetic RGB stack" if rgb else "synthetic stack"
    layers = stack_to_layer_data(st, name=name, extra_metadata={"synthetic": True})
    ps = tuple(float(v) for v in st.pixel_size)
    unit = _unit(st.unit)
    units = {"units": (unit, unit)} if unit else {}
    gt = {"pixel_size": ps, "z_step": st.z_step, "unit": st.unit, "n_planes": st.n_planes, "source": name,
          "axes": "YX", "layer_axes": "YX"}
    layers.append((
        s.all_in_focus,
        {"name": f"{name} ground-truth all-in-focus", "scale": ps, "rgb": rgb, **units,
         "metadata": {"napari_edof": {**gt, "role": "ground_truth_fused",
                                      "layer_axes": "YXC" if rgb else "YX"}}},
        "image",
    ))
    layers.append((
        s.index.astype(np.float32),
        {"name": f"{name} ground-truth focus index", "scale": ps, **units, "colormap": "viridis",
         "contrast_limits": (0, st.n_planes - 1), "visible": False,
         "metadata": {"napari_edof": {**gt, "role": "ground_truth_index"}}},
        "image",
    ))
    return layers


def sample_grey() -> list[LayerData]:
    """The built-in synthetic grey focus stack (10 x 256 x 256, uint16) with its ground truth."""
    return _sample(rgb=False)


def sample_rgb() -> list[LayerData]:
    """The built-in synthetic RGB focus stack (10 x 256 x 256 x 3, uint8) with its ground truth."""
    return _sample(rgb=True)
