"""Fusion results as napari layers, added beside the input and updated in place on a re-run.

Four layers per source layer ``src``:

=========================  =======  ==========================================================
name                       type     content
=========================  =======  ==========================================================
``"{src} fused"``          Image    the all-in-focus image (input dtype; ``rgb`` when the input
                                    is RGB). A multichannel (channel-axis) input gives ONE
                                    layer that keeps the channel axis where the input had it
                                    (a slider, like the input), not one layer per channel.
``"{src} focus index"``    Image    the 0-based (sub-)plane each pixel came from, float32,
                                    colormap viridis, contrast limits (0, N-1). When the z-step
                                    is known, ``metadata["napari_edof"]["height"]`` holds the
                                    physical height (index * z_step) in ``"height_unit"``.
``"{src} decision"``       Labels   label = source plane + 1 (uint16), the map retouching edits.
``"{src} confidence"``     Image    0..1, float32.
``"{src} audit"``          Image    only for audited runs (methods that synthesise values, or
                                    ``audit=True``): the distance of each fused value from the
                                    nearest source value there, float32, colormap magma,
                                    contrast limits 0..its largest value; hidden.
``"{src} audit mask"``     Labels   audited runs: 1 (magenta) where the fused value lies outside
                                    the sources' 3 x 3 local range (invented), 0 (transparent)
                                    elsewhere; shown over the fused image when any pixel is
                                    flagged. A re-run without an audit removes both layers.
=========================  =======  ==========================================================

Each output has the input's dimensions minus Z (and minus the channel axis for index, decision
and confidence), with the input's scale, translate, units and axis labels for those dimensions.
When an axis comes before Z in the input (a time-lapse T, Z, Y, X or channels C, Z, Y, X), the
outputs keep Z as one plane stretched over the input's whole z range (T, 1, Y, X), because
napari aligns layers by their trailing dimensions: without it, T would sit on the Z slider.
:func:`squeeze_z` gives the data without that axis.

Every output carries ``layer.metadata["napari_edof"]``::

    {"role": "fused" | "index" | "decision" | "confidence" | "audit" | "audit_mask",
     "source": <input layer name>, "n_planes": N, "z_axis": <z axis in the input's data>,
     "axes": <axes string of the stack, in the input's data order, e.g. "ZYX", "TZYX", "ZYXC">,
     "layer_axes": <axes of this output layer, e.g. "YX", "TYX", "YXC", "CYX">,
     "channel_axis": <input data axis holding non-RGB channels, or None>, "rgb": bool,
     "method": name, "params": {...}, "z_step": float | None, "pixel_size": (y, x) | None,
     "unit": str, "provenance": {...}}

Layers are found again by ``role`` + ``source`` (not by name), so a re-run updates the same layer
objects with new data. The input layer is never changed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer

#: the roles every result has
ROLES = ("fused", "index", "decision", "confidence")
#: the roles of an audited result's two more layers
AUDIT_ROLES = ("audit", "audit_mask")
ALL_ROLES = ROLES + AUDIT_ROLES
_SUFFIX = {"fused": "fused", "index": "focus index", "decision": "decision", "confidence": "confidence",
           "audit": "audit", "audit_mask": "audit mask"}
#: the audit mask's colours: invented pixels magenta, the rest transparent
AUDIT_MASK_COLOURS = {None: "transparent", 0: "transparent", 1: "magenta"}


def unwrap(obj):
    """The object behind napari's ``PublicOnlyProxy`` (what plugins are handed as the viewer; every
    attribute read through it is a new proxy, so identity checks fail on proxies)."""
    while True:
        inner = getattr(obj, "__wrapped__", None)
        if inner is None or inner is obj:
            return obj
        obj = inner


def result_layer_name(source_name: str, role: str) -> str:
    return f"{source_name} {_SUFFIX[role]}"


def guess_axes(ndim: int, rgb: bool, z_axis: int, channel_axis: int | None = None) -> str:
    """Axes of a layer's data from its non-colour ``ndim``, ``rgb`` and the chosen z/channel axes.

    The last two dimensions are Y and X; ``z_axis`` is Z; ``channel_axis`` (non-RGB) is C; one
    remaining leading dimension is T. RGB layers get a trailing C.
    """
    from napari_edof.api import EdofError

    if ndim < 3:
        raise EdofError(
            f"a {ndim}D image is not a focus stack: the layer needs a z axis plus Y and X (at least 3 dimensions)"
        )
    lead = ndim - 2
    if not 0 <= z_axis < lead:
        raise EdofError(f"z axis {z_axis} is not one of the layer's leading axes 0..{lead - 1}")
    letters = [None] * lead
    letters[z_axis] = "Z"
    if channel_axis is not None:
        if rgb:
            raise EdofError("an RGB layer keeps its colour in the last axis: choose no channel axis")
        if not 0 <= channel_axis < lead or channel_axis == z_axis:
            raise EdofError(f"channel axis {channel_axis} must be a leading axis other than the z axis {z_axis}")
        letters[channel_axis] = "C"
    rest = [i for i, a in enumerate(letters) if a is None]
    if len(rest) > 1:
        raise EdofError(
            f"the layer has {ndim} dimensions: besides z{' and channel' if channel_axis is not None else ''} "
            f"only one more (time) axis can be fused; axes {rest} are left over "
            "(choose a channel axis, or slice the layer first)"
        )
    for i in rest:
        letters[i] = "T"
    return "".join(letters) + "YX" + ("C" if rgb else "")


def _to_layer_order(arr, have: str, want: str):
    """Transpose ``arr`` whose axes are ``have`` into the order ``want`` (same letters, except a
    "Z" in ``want`` only, which becomes a new axis of size 1)."""
    arr = np.asarray(arr)
    if "Z" in want and "Z" not in have:
        return np.expand_dims(_to_layer_order(arr, have, want.replace("Z", "")), want.index("Z"))
    if have == want:
        return arr
    return np.transpose(arr, [have.index(a) for a in want])


def squeeze_z(layer, data=None):
    """A result layer's data without the single-plane Z axis it may keep for alignment (a view).

    Other layers' data is returned as it is.
    """
    data = layer.data if data is None else data
    md = getattr(layer, "metadata", None)
    md = md.get("napari_edof") if isinstance(md, dict) else None
    la = (md or {}).get("layer_axes")
    role = (md or {}).get("role")
    if isinstance(la, str) and "Z" in la and len(la) == np.ndim(data) and role in ALL_ROLES + ("mask",):
        zi = la.index("Z")
        if np.shape(data)[zi] == 1:
            return data[(slice(None),) * zi + (0,)]
    return data


def _pick(seq, dims: str, keep: str):
    if seq is None:
        return None
    seq = tuple(seq)
    if len(seq) != len(dims):
        return None
    return tuple(seq[i] for i, a in enumerate(dims) if a in keep)


def find_result_layers(viewer, source_name: str) -> dict[str, Layer]:
    """The result layers made from the layer named ``source_name``, by role."""
    out = {}
    for layer in viewer.layers:
        md = layer.metadata.get("napari_edof") if isinstance(layer.metadata, dict) else None
        if md and md.get("source") == source_name and md.get("role") in ALL_ROLES:
            out.setdefault(md["role"], layer)
    return out


def is_result_layer(layer) -> bool:
    md = getattr(layer, "metadata", None)
    md = md.get("napari_edof") if isinstance(md, dict) else None
    return bool(md) and md.get("role") in ALL_ROLES


def add_or_update_result_layers(viewer, source_layer, result, *, z_axis: int, axes: str | None = None,
                                channel_axis: int | None = None, roles=ALL_ROLES,
                                extra_meta: dict | None = None) -> dict[str, Layer]:
    """Show a :class:`~napari_edof.api.FusionResult` as layers beside ``source_layer``.

    Parameters
    ----------
    viewer : napari.Viewer
    source_layer : napari.layers.Image
        The layer that was fused (left unchanged).
    result : FusionResult
    z_axis : int
        The z axis in ``source_layer.data``.
    axes : str, optional
        The axes of ``source_layer.data`` used for the stack ("ZYX", "TZYX", "CZYX", "ZYXC", ...);
        guessed from ``z_axis``, ``channel_axis`` and the layer's rgb flag when not given.
    channel_axis : int, optional
        The input axis holding non-RGB channels (only used when ``axes`` is not given).
    roles : the outputs to show (default all: the audit's where the result has one; the other
        channels of a channel group show only their fused image: they share the first channel's index).
    extra_meta : more entries for every layer's ``metadata["napari_edof"]``.

    Returns
    -------
    dict role -> layer ("fused", "index", "decision", "confidence"; "audit", "audit_mask" for an
    audited result); existing layers for the same source are updated in place (same objects), new
    ones are inserted just above the source; audit layers of an earlier run are removed when the
    new result has no audit.
    """
    rgb = bool(getattr(source_layer, "rgb", False))
    if axes is None:
        axes = guess_axes(source_layer.ndim, rgb, z_axis, channel_axis)
    axes = axes.upper()
    if "C" in axes and not rgb:
        channel_axis = axes.index("C")
    else:
        channel_axis = None
    layer_dims = axes[:-1] if rgb else axes  # the source layer's (non-colour) dimensions
    src = source_layer.name
    n = int(result.n_planes)
    prov = dict(result.provenance or {})

    # engine order of the result arrays
    eng_img = ("T" if "T" in axes else "") + "YX" + ("C" if "C" in axes else "")
    eng_map = ("T" if "T" in axes else "") + "YX"
    # napari aligns layers by their trailing dimensions: when an axis comes before Z in the input
    # (TZYX, CZYX), outputs without Z would put their leading axis on the input's Z slider. They
    # then keep Z as a single plane stretched over the whole z range (scale N x dz), so that they
    # show at every z and move with the input's T / C sliders.
    before_z = layer_dims[: layer_dims.index("Z")]
    fused_axes = axes if before_z else axes.replace("Z", "")
    map_axes = (axes if before_z.replace("C", "") else axes.replace("Z", "")).replace("C", "")
    fused_dims = fused_axes[:-1] if rgb else fused_axes

    scale = tuple(source_layer.scale)
    translate = tuple(source_layer.translate)
    units = getattr(source_layer, "units", None)
    labels = getattr(source_layer, "axis_labels", None)

    crop = (prov.get("registration") or {}).get("crop_box")  # a registered run cropped to (y0, y1, x0, x1)

    def geometry(dims: str) -> dict:
        g = {"scale": _pick(scale, layer_dims, dims), "translate": _pick(translate, layer_dims, dims)}
        if crop and g["scale"] is not None and g["translate"] is not None:
            t = list(g["translate"])
            for ax, off in (("Y", crop[0]), ("X", crop[2])):
                if ax in dims:
                    t[dims.index(ax)] += off * g["scale"][dims.index(ax)]
            g["translate"] = tuple(t)
        if "Z" in dims and g["scale"] is not None and g["translate"] is not None:
            zi, dz = dims.index("Z"), scale[layer_dims.index("Z")]
            g["scale"] = tuple(v * n if i == zi else v for i, v in enumerate(g["scale"]))
            g["translate"] = tuple(v + (n - 1) / 2 * dz if i == zi else v for i, v in enumerate(g["translate"]))
        u = _pick(units, layer_dims, dims)
        if u is not None:
            g["units"] = tuple(str(x) for x in u)
        al = _pick(labels, layer_dims, dims)
        if al is not None:
            g["axis_labels"] = al
        return {k: v for k, v in g.items() if v is not None}

    base_meta: dict[str, Any] = {
        "source": src,
        "n_planes": n,
        "z_axis": int(z_axis),
        "axes": axes,
        "channel_axis": channel_axis,
        "rgb": rgb,
        "method": prov.get("method"),
        "params": dict(prov.get("params") or {}),
        "z_step": result.z_step,
        "pixel_size": tuple(result.pixel_size) if result.pixel_size is not None else None,
        "unit": result.unit,
        "provenance": prov,
        **(extra_meta or {}),
    }

    fused = _to_layer_order(result.fused, eng_img, fused_axes)
    index = _to_layer_order(result.index, eng_map, map_axes).astype(np.float32, copy=False)
    decision = _to_layer_order(result.labels(), eng_map, map_axes)
    conf = _to_layer_order(result.confidence, eng_map, map_axes).astype(np.float32, copy=False)

    index_meta = {}
    if result.z_step is not None:
        index_meta = {
            "height": _to_layer_order(result.height(), eng_map, map_axes),
            "height_unit": result.unit,
            "height_note": f"physical height = index x z_step ({result.z_step} {result.unit}) in 'height'",
        }

    src_cl = getattr(source_layer, "contrast_limits", None)
    src_colormap = getattr(source_layer, "colormap", None)  # the object: a custom channel colour too
    src_cmap = src_colormap if getattr(src_colormap, "name", None) else None
    blending = getattr(source_layer, "blending", None)
    specs = {
        "fused": dict(
            kind=Image, data=fused, dims=fused_dims, layer_axes=fused_axes, visible=True,
            extra={"rgb": rgb} if rgb else {
                **({"contrast_limits": tuple(src_cl)} if src_cl is not None and channel_axis is None else {}),
                **({"colormap": src_cmap} if src_cmap is not None and channel_axis is None else {}),
                **({"blending": blending} if blending in ("additive", "translucent_no_depth") else {}),
            },
        ),
        "index": dict(kind=Image, data=index, dims=map_axes, layer_axes=map_axes, visible=False,
                      extra={"colormap": "viridis", "contrast_limits": (0.0, float(max(n - 1, 1)))},
                      meta=index_meta),
        "decision": dict(kind=Labels, data=decision, dims=map_axes, layer_axes=map_axes, visible=False, extra={}),
        "confidence": dict(kind=Image, data=conf, dims=map_axes, layer_axes=map_axes, visible=False,
                           extra={"colormap": "magma", "contrast_limits": (0.0, 1.0)}),
    }

    audited = getattr(result, "audit", None) is not None
    if audited:
        dist = _to_layer_order(result.audit, eng_map, map_axes).astype(np.float32, copy=False)
        mask = _to_layer_order(result.audit_mask, eng_map, map_axes).astype(np.uint8)
        top = float(np.max(dist)) if dist.size else 0.0
        flagged = bool(mask.any())
        specs["audit"] = dict(kind=Image, data=dist, dims=map_axes, layer_axes=map_axes, visible=False,
                              extra={"colormap": "magma", "contrast_limits": (0.0, top if top > 0 else 1.0)})
        specs["audit_mask"] = dict(kind=Labels, data=mask, dims=map_axes, layer_axes=map_axes, visible=flagged,
                                   extra={"opacity": 0.8}, colours=AUDIT_MASK_COLOURS)

    existing = find_result_layers(viewer, src)
    if not audited:  # an earlier run's audit would describe another fused image
        for role in AUDIT_ROLES:
            old = existing.pop(role, None)
            if old is not None and old in viewer.layers:
                viewer.layers.remove(old)
    out: dict[str, Layer] = {}
    # insert in reverse so the final order above the source is fused, index, decision, confidence
    for role in reversed(ALL_ROLES):
        if role not in roles or role not in specs:
            continue
        s = specs[role]
        meta = {**base_meta, "role": role, "layer_axes": s["layer_axes"], **s.get("meta", {})}
        geo = geometry(s["dims"])
        layer = existing.get(role)
        ok = (
            layer is not None
            and isinstance(layer, s["kind"])
            and layer in viewer.layers
            and np.ndim(layer.data) == np.ndim(s["data"])
            and bool(getattr(layer, "rgb", False)) == bool(s["extra"].get("rgb", False))
        )
        if ok:
            _update(layer, s, geo, meta)
        else:
            new = s["kind"](s["data"], name=result_layer_name(src, role), visible=s["visible"],
                            metadata={"napari_edof": meta}, **geo, **s["extra"])
            if layer is not None and layer in viewer.layers:  # wrong kind/shape: replace in place
                pos = viewer.layers.index(layer)
                viewer.layers.remove(layer)
            else:
                pos = viewer.layers.index(source_layer) + 1 if source_layer in viewer.layers else len(viewer.layers)
            viewer.layers.insert(pos, new)
            layer = new
        if "colours" in s:
            _set_label_colours(layer, s["colours"])
        out[role] = layer
    return {r: out[r] for r in ALL_ROLES if r in out}


def _set_label_colours(layer, colours: dict) -> None:
    """Fixed colours for a Labels layer's values (napari's direct label colormap)."""
    from napari.utils.colormaps import DirectLabelColormap

    try:
        layer.colormap = DirectLabelColormap(color_dict=colours)
    except (TypeError, ValueError):  # (another napari: its default colours then)
        pass


def _update(layer, s: dict, geo: dict, meta: dict) -> None:
    """New data, geometry and metadata for an existing result layer (visibility is the user's)."""
    md = dict(layer.metadata)
    md["napari_edof"] = meta
    layer.metadata = md
    for k in ("scale", "translate", "units", "axis_labels"):
        if k in geo:
            try:
                setattr(layer, k, geo[k])
            except (AttributeError, ValueError):
                pass
    layer.data = s["data"]
    cl = s["extra"].get("contrast_limits")
    if isinstance(layer, Image) and not layer.rgb:
        if cl is not None:
            layer.contrast_limits_range = cl
            layer.contrast_limits = cl
        else:
            layer.reset_contrast_limits()
