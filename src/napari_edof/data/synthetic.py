"""A procedural focus stack with ground truth, made in the package (no download).

A scene (cell-like blobs over fine texture) and a depth map (a tilted smooth surface with
occluding discs) are rendered into a focus stack with the layered defocus model of the StackMFF-V2 paper
(StackMFF-V2, Algorithm 1): depth is quantised into N bins and plane k shows bin i blurred by a
Gaussian whose width grows with |i - k|. Every pixel is therefore sharp in exactly one plane,
which is the ground-truth focus index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.stack import Stack


@dataclass(frozen=True)
class Sample:
    """A synthetic stack and its ground truth.

    stack : Stack (Z, Y, X) or (Z, Y, X, 3)
    all_in_focus : (Y, X[, 3]) array of the stack's dtype, the exact fusion target
    index : (Y, X) int, the plane in which each pixel is sharp (0-based)
    depth : (Y, X) float32 in [0, 1], the continuous depth map before quantisation
    """

    stack: Stack
    all_in_focus: np.ndarray
    index: np.ndarray
    depth: np.ndarray


def _scene(shape, rng, channels):
    """Cell-like blobs with bright rims over band-pass texture, values in [0, 1]."""
    from scipy import ndimage as ndi  # (here: ``import napari_edof`` stays without scipy)

    Y, X = shape
    img = np.empty((Y, X, channels), np.float32)
    for c in range(channels):  # fine texture: band-pass noise
        n = rng.standard_normal((Y, X)).astype(np.float32)
        tex = ndi.gaussian_filter(n, 1.0) - ndi.gaussian_filter(n, 3.0)
        img[..., c] = 0.5 + 0.6 * tex
    n_cells = max(4, (Y * X) // 3000)
    colours = rng.uniform(-0.3, 0.3, (n_cells, channels)).astype(np.float32)
    rmax = max(6.0, min(Y, X) / 10, 1.0)
    rmax = min(rmax, 40.0)
    for i in range(n_cells):  # each cell drawn in its own bounding box
        cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
        r = rng.uniform(4, rmax)
        y0, y1 = max(int(cy - 1.5 * r), 0), min(int(cy + 1.5 * r) + 1, Y)
        x0, x1 = max(int(cx - 1.5 * r), 0), min(int(cx + 1.5 * r) + 1, X)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
        ring = np.exp(-((d - 1) ** 2) / 0.02) * 0.5 + (d < 1) * 0.2
        img[y0:y1, x0:x1] += ring[..., None] * colours[i]
    return np.clip(img, 0, 1)


_PHOTOS = ("camera", "brick", "grass", "gravel", "moon", "astronaut", "immunohistochemistry",
           "hubble_deep_field", "coffee", "rocket", "chelsea", "coins")


def _photo_scene(shape, rng, channels):
    """A mosaic of scikit-image's bundled photographs (no download), values in [0, 1]."""
    from skimage import data as skdata
    from skimage.color import gray2rgb, rgb2gray

    Y, X = shape
    t = 512
    img = np.empty((Y, X, channels), np.float32)
    order = rng.permutation(len(_PHOTOS))
    k = 0
    for y0 in range(0, Y, t):
        for x0 in range(0, X, t):
            a = getattr(skdata, _PHOTOS[order[k % len(order)]])()
            k += 1
            a = a.astype(np.float32) / 255.0
            if channels == 1 and a.ndim == 3:
                a = rgb2gray(a)
            if channels == 3 and a.ndim == 2:
                a = gray2rgb(a)
            a = a.reshape(a.shape[0], a.shape[1], -1)
            block = np.zeros((min(t, Y - y0), min(t, X - x0), channels), np.float32)
            reps = (-(-block.shape[0] // a.shape[0]), -(-block.shape[1] // a.shape[1]), 1)
            block[...] = np.tile(a, reps)[: block.shape[0], : block.shape[1]]
            img[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
    return img


def _depth(shape, rng):
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    a, b = rng.uniform(-1, 1, 2)
    d = a * yy / Y + b * xx / X + 0.3 * np.sin(2 * np.pi * yy / Y * rng.uniform(0.5, 1.5))
    for _ in range(3):  # occluding discs
        cy, cx = rng.uniform(0.2 * Y, 0.8 * Y), rng.uniform(0.2 * X, 0.8 * X)
        r = rng.uniform(0.1, 0.25) * min(Y, X)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        d[disc] = rng.uniform(d.min(), d.max())
    d -= d.min()
    d /= max(float(d.max()), 1e-6)
    return d.astype(np.float32)


def layered_defocus(image: np.ndarray, depth: np.ndarray, n_planes: int, *, sigma_step: float = 1.0,
                    sigmas=None, mode: str = "reflect"):
    """The StackMFF-V2 paper's layered defocus: (Y, X[, C]) float image + depth in [0, 1] -> stack.

    Returns (stack (Z, Y, X[, C]) float32, index (Y, X) int) with plane k showing depth bin i
    blurred by a Gaussian of sigma ``sigma_step * |i - k|``, or of ``sigmas[|i - k|]`` when a
    non-decreasing sequence of ``n_planes`` blur levels is given (``sigmas[0]`` must be 0, so that
    every pixel is exact in its own plane; see ``napari_edof.training.synth`` for schedules).
    """
    if image.ndim == 2:
        image = image[..., None]
        squeeze = True
    else:
        squeeze = False
    edges = np.linspace(0, 1, n_planes + 1)
    index = np.clip(np.digitize(depth, edges[1:-1]), 0, n_planes - 1)
    # blur levels incrementally: a Gaussian of sigma_j is one of sigma_{j-1} and sqrt(s_j^2 - s_{j-1}^2)
    if sigmas is not None:
        sigmas = np.asarray(sigmas, np.float64)
        if sigmas.shape != (n_planes,) or sigmas[0] != 0 or np.any(np.diff(sigmas) < 0):
            raise ValueError("sigmas must be n_planes non-decreasing blur levels starting at 0")
    from scipy import ndimage as ndi

    blurred = np.empty((n_planes,) + image.shape, np.float32)
    blurred[0] = image
    for j in range(1, n_planes):
        if sigmas is None:
            ds = sigma_step * np.sqrt(j * j - (j - 1) ** 2)
        else:
            ds = float(np.sqrt(max(sigmas[j] ** 2 - sigmas[j - 1] ** 2, 0.0)))
        if ds == 0:
            blurred[j] = blurred[j - 1]
            continue
        blurred[j] = ndi.gaussian_filter(blurred[j - 1], (ds, ds, 0), mode=mode)
    stack = np.empty((n_planes,) + image.shape, np.float32)
    for k in range(n_planes):
        dist = np.abs(index - k)[None, ..., None]
        stack[k] = np.take_along_axis(blurred, dist, axis=0)[0]
    if squeeze:
        stack = stack[..., 0]
    return stack, index


def sample_stack(*, n_planes: int = 8, shape: tuple[int, int] = (256, 256), rgb: bool = False,
                 dtype=np.uint16, seed: int = 0, sigma_step: float = 1.0, scene: str = "cells") -> Sample:
    """The built-in synthetic focus stack with its ground truth (deterministic for a seed).

    ``scene`` is "cells" (procedural cell-like blobs over texture) or "photo" (a mosaic of
    scikit-image's bundled photographs, as in the other tools' benchmark of ``specs/peers.md``).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if scene == "cells":
        img = _scene(shape, rng, 3 if rgb else 1)
    elif scene == "photo":
        img = _photo_scene(shape, rng, 3 if rgb else 1)
    else:
        raise ValueError(f"scene must be 'cells' or 'photo', not {scene!r}")
    depth = _depth(shape, rng)
    stack, index = layered_defocus(img if rgb else img[..., 0], depth, n_planes, sigma_step=sigma_step)
    aif = img if rgb else img[..., 0]
    if dtype.kind in "iu":
        scale = 255.0 if dtype.itemsize == 1 else 60000.0
        stack = np.rint(np.clip(stack, 0, 1) * scale).astype(dtype)
        aif = np.rint(np.clip(aif, 0, 1) * scale).astype(dtype)
    else:
        stack, aif = stack.astype(dtype), aif.astype(dtype)
    st = Stack(stack, "ZYXC" if rgb else "ZYX", rgb=rgb, name="synthetic", pixel_size=(0.5, 0.5),
               z_step=2.0, unit="µm")
    return Sample(st, aif, index, depth)
