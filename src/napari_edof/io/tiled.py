"""Tiled TIFF output written from lazy arrays one row of tiles at a time (bounded memory)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def write_tiled_tiff(path, data, *, axes: str, rgb: bool = False, tile: int = 256, pixel_size=None,
                     unit: str | None = None, description: str | None = None) -> Path:
    """Write ``data`` (numpy, dask or zarr-backed; axes from "TCYX" plus a trailing RGB "C") as a
    tiled TIFF, reading one row of tiles at a time; atomic (a temporary file, then a rename).

    ``axes`` names ``data``'s dimensions, e.g. "YX", "TYX", "YXC" (with ``rgb=True``), "CYX".
    """
    import tifffile

    path = Path(path)
    shape = tuple(int(s) for s in data.shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match the shape {shape}")
    plane_axes = "YXC" if rgb else "YX"
    if not axes.endswith(plane_axes):
        raise ValueError(f"axes {axes!r} must end with {plane_axes}")
    lead = shape[: len(shape) - len(plane_axes)]
    Y, X = shape[len(lead)], shape[len(lead) + 1]
    th = tw = int(tile)

    def tiles():
        for page in np.ndindex(*lead) if lead else [()]:
            for y0 in range(0, Y, th):
                band = data[page + (slice(y0, min(y0 + th, Y)),)]
                band = band.compute() if hasattr(band, "compute") else np.asarray(band)
                for x0 in range(0, X, tw):
                    yield np.ascontiguousarray(band[:, x0:x0 + tw])

    res = {}
    if pixel_size:
        res = dict(resolution=(1.0 / float(pixel_size[1]), 1.0 / float(pixel_size[0])),
                   resolutionunit="NONE")
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=np.dtype(data.dtype), tile=(th, tw),
                         photometric="rgb" if rgb else "minisblack", description=description,
                         bigtiff=np.prod(shape) * np.dtype(data.dtype).itemsize > 2**31, metadata=None,
                         **res)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_result_tiled(result, outdir, *, axes: str, rgb: bool, tile: int = 256) -> dict[str, Path]:
    """The fused image, focus index and confidence of a (lazy) result as tiled TIFFs in ``outdir``
    (and ``audit.tif``, ``audit_mask.tif`` for an audited result).

    ``axes`` are the input stack's; the outputs keep its T (and C for the fused image).
    """
    import json

    from .writers import json_safe

    outdir = Path(outdir)
    lead = "T" if "T" in axes else ""
    desc = json.dumps({"napari_edof": json_safe(result.provenance)})
    ps = result.pixel_size
    files = {}
    fused = result.fused
    if "C" in axes and not rgb:  # channels as pages: (T,) Y, X, C -> (T,) C, Y, X
        fused = np.moveaxis(fused, -1, -3) if not hasattr(fused, "dask") else fused.transpose(
            *range(fused.ndim - 3), fused.ndim - 1, fused.ndim - 3, fused.ndim - 2)
        f_axes = lead + "CYX"
    else:
        f_axes = lead + ("YXC" if rgb else "YX")
    files["fused"] = write_tiled_tiff(outdir / "fused.tif", fused, axes=f_axes, rgb=rgb, tile=tile,
                                      pixel_size=ps, description=desc)
    files["index"] = write_tiled_tiff(outdir / "focus_index.tif", result.index, axes=lead + "YX", tile=tile,
                                      pixel_size=ps, description=desc)
    files["confidence"] = write_tiled_tiff(outdir / "confidence.tif", result.confidence, axes=lead + "YX",
                                           tile=tile, pixel_size=ps, description=desc)
    if getattr(result, "audit", None) is not None:  # an audited run (core/audit.py)
        files["audit"] = write_tiled_tiff(outdir / "audit.tif", result.audit, axes=lead + "YX", tile=tile,
                                          pixel_size=ps, description=desc)
        mask = result.audit_mask
        mask = (mask.astype(np.uint8) * np.uint8(255)) if hasattr(mask, "dask") else \
            np.asarray(mask, np.uint8) * np.uint8(255)
        files["audit_mask"] = write_tiled_tiff(outdir / "audit_mask.tif", mask, axes=lead + "YX", tile=tile,
                                               pixel_size=ps, description=desc)
    return files


__all__ = ["export_result_tiled", "write_tiled_tiff"]
