"""The focus map as a 3D surface (Qt-free): a triangle mesh of the focus index in physical units,
its texture coordinates, and the fused image as its texture (the focus inspector shows them)."""
from __future__ import annotations

import math

import numpy as np

from .errors import EdofError

#: the most vertices per side of a height surface (the grid is subsampled beyond)
MAX_SURFACE_SIDE = 256


def height_mesh(index, *, pixel_size=(1.0, 1.0), z_step=1.0, exaggeration=1.0,
                max_side: int = MAX_SURFACE_SIDE):
    """A triangle mesh of a focus-index map in physical units.

    Parameters
    ----------
    index : (Y, X) array
        Focus index (0-based plane, may be fractional).
    pixel_size : (py, px)
    z_step : float
        Distance between planes; the height of a vertex is ``index * z_step * exaggeration``.
    max_side : int
        The grid is subsampled (every ``s``-th row and column, the last one always kept) so that
        neither side has more than ``max_side`` vertices.

    Returns
    -------
    vertices : (N, 3) float32, ordered (z, y, x) like napari's dims
        ``(index * z_step * exaggeration, row * py, col * px)``.
    faces : (M, 3) int32, two triangles per grid cell.
    rows, cols : 1D int arrays, the source rows and columns of the vertex grid.
    """
    index = np.asarray(index, dtype=np.float32)
    if index.ndim != 2:
        raise EdofError(f"a height map must be 2D (Y, X), got shape {index.shape}")
    Y, X = index.shape
    if Y < 2 or X < 2:
        raise EdofError(f"a {Y}x{X} focus map is too small for a surface")
    s = max(1, math.ceil(max(Y, X) / max_side))
    rows = np.unique(np.r_[np.arange(0, Y, s), Y - 1])
    cols = np.unique(np.r_[np.arange(0, X, s), X - 1])
    while len(rows) > max_side or len(cols) > max_side:  # the kept last row/col can tip it over
        s += 1
        rows = np.unique(np.r_[np.arange(0, Y, s), Y - 1])
        cols = np.unique(np.r_[np.arange(0, X, s), X - 1])
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    h, w = rr.shape
    py, px = (float(v) for v in pixel_size)
    z = index[rr, cc] * np.float32(z_step * exaggeration)
    vertices = np.stack([z.ravel(), (rr * py).ravel(), (cc * px).ravel()], axis=1).astype(np.float32)
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    a, b = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()
    c, d = ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)]).astype(np.int32)
    return vertices, faces, rows, cols


def surface_texcoords(rows, cols, shape) -> np.ndarray:
    """Texture coordinates (u, v) in [0, 1] of the vertex grid ``rows`` x ``cols`` of an image.

    napari flips a Surface's texture upside down for OpenGL, so v runs from the bottom row
    (v=0) to the top row (v=1) of the image as napari shows it (checked on screen).
    """
    Y, X = shape
    rr, cc = np.meshgrid(np.asarray(rows), np.asarray(cols), indexing="ij")
    u = (cc.ravel() + 0.5) / X
    v = 1.0 - (rr.ravel() + 0.5) / Y
    return np.stack([u, v], axis=1).astype(np.float32)


def texture_image(fused, contrast_limits=None) -> np.ndarray:
    """The fused image as a float32 texture in [0, 1] (grey or RGB)."""
    f = np.asarray(fused)
    if f.ndim == 3 and f.shape[-1] in (3, 4):
        f = f[..., :3]
        if f.dtype.kind in "iu":
            return (f.astype(np.float32) / np.float32(np.iinfo(f.dtype).max)).clip(0, 1)
        lo, hi = float(f.min()), float(f.max())
    elif contrast_limits is not None:
        lo, hi = (float(v) for v in contrast_limits)
    else:
        lo, hi = float(np.min(f)), float(np.max(f))
    g = (f.astype(np.float32) - lo) / np.float32(max(hi - lo, 1e-12))
    return np.clip(g, 0, 1)


__all__ = ["MAX_SURFACE_SIDE", "height_mesh", "surface_texcoords", "texture_image"]
