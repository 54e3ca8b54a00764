"""A fusion result added to a viewer by the layer convention (shared by the inspector and
retouch tests; imported as a plain module: tests/_qt has no __init__.py)."""
from __future__ import annotations

from napari_edof import api


def add_result(viewer, data, *, axes="ZYX", name="stack", method="focus-select", params=None,
               scale=None):
    """Fuse ``data`` and add the source and the four output layers by the layer convention."""
    stack = api.as_stack(data, axes=axes)
    res = api.fuse(stack, method=method, params=params, tile=None)
    rgb = stack.rgb
    src = viewer.add_image(data, name=name, rgb=rgb, scale=scale)
    z_axis = axes.index("Z")
    out_scale = None if scale is None else tuple(s for i, s in enumerate(scale) if i != z_axis)
    meta = dict(source=name, n_planes=stack.n_planes, z_axis=z_axis, axes=axes, method=method,
                params=dict(res.provenance.get("params", params or {})),
                z_step=None if scale is None else float(scale[z_axis]),
                pixel_size=None if scale is None else tuple(float(s) for s in scale[-2:]))

    def m(role):
        return {"napari_edof": dict(meta, role=role)}

    layers = {
        "fused": viewer.add_image(res.fused, name=f"{name} fused", rgb=rgb, scale=out_scale, metadata=m("fused")),
        "index": viewer.add_image(res.index, name=f"{name} focus index", colormap="viridis",
                                  scale=out_scale, metadata=m("index")),
        "decision": viewer.add_labels(res.labels(), name=f"{name} decision", scale=out_scale,
                                      metadata=m("decision")),
        "confidence": viewer.add_image(res.confidence, name=f"{name} confidence", scale=out_scale,
                                       metadata=m("confidence")),
    }
    return src, layers, res
