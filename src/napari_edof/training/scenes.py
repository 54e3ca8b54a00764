"""Procedural scenes for training: an all-in-focus image and a depth map, both in [0, 1].

Every generator takes ``(shape, rng)`` with ``rng`` a :class:`numpy.random.Generator` and is a
pure function of them (same seed, same arrays). Images are float32 ``(H, W, 3)``; depth maps are
float32 ``(H, W)`` normalised to [0, 1] (0 nearest, 1 farthest).

Textures
    ``photo_texture`` (scikit-image's bundled photographs, offline), ``noise_texture``
    (band-pass / 1/f noise), ``cells_texture`` (cell-like blobs: rims, nuclei, granules),
    ``vessels_texture`` (branching tubes and ridge networks), ``fundus_image``.
Depth maps
    ``smooth_depth`` (tilted planes, bumps, low-frequency noise), ``bowl_depth`` (the eye's
    curvature), and the occluding steps of ``dead_leaves``.
Scenes (:data:`SCENES`)
    ``dead_leaves``, ``surface``, ``photo``, ``cells``, ``vessels``, ``fundus``, ``fundus_view``
    (a zoomed part of the fundus), ``retina_photo`` (scikit-image's CC0 fundus photo),
    ``colour_noise`` (independent noise per colour channel): each returns
    ``(image, depth)``; :func:`make_scene` picks one by name.
"""
from __future__ import annotations

from functools import cache

import numpy as np
from scipy import ndimage as ndi

# scikit-image's bundled images that need no download (checked on 0.21-0.26)
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "rocket", "page", "text", "clock",
          "microaneurysms", "retina")
MICROSCOPY_PHOTOS = ("cell", "immunohistochemistry", "microaneurysms", "hubble_deep_field", "moon")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luminance of an (..., 3) image (the weights the StackMFF-V2 authors use)."""
    return img @ LUMA if img.ndim >= 3 and img.shape[-1] == 3 else img


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / max(hi - lo, 1e-6)


def _rgb(gray: np.ndarray, tint) -> np.ndarray:
    return np.clip(gray[..., None] * np.asarray(tint, np.float32), 0, 1).astype(np.float32)


@cache
def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    a = getattr(skdata, name)()
    a = a.astype(np.float32)
    a = a / 255.0 if a.max() > 1.5 else a
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    a.setflags(write=False)
    return a


# ------------------------------------------------------------------------------------ textures
def photo_texture(shape, rng, names=PHOTOS) -> np.ndarray:
    """A random crop of one of scikit-image's photographs, randomly zoomed, flipped, rotated."""
    from skimage.transform import resize

    Y, X = shape
    a = _photo(names[rng.integers(len(names))])
    zoom = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    h = int(np.clip(round(Y / zoom), 8, a.shape[0]))
    w = int(np.clip(round(X / zoom), 8, a.shape[1]))
    y0 = int(rng.integers(0, a.shape[0] - h + 1))
    x0 = int(rng.integers(0, a.shape[1] - w + 1))
    crop = a[y0:y0 + h, x0:x0 + w]
    k = int(rng.integers(4))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, k)
    out = resize(crop, (Y, X), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


def noise_texture(shape, rng) -> np.ndarray:
    """Band-pass or 1/f noise, grey or tinted, in [0, 1]."""
    Y, X = shape
    n = rng.standard_normal((Y, X)).astype(np.float32)
    if rng.random() < 0.5:  # band-pass
        s = rng.uniform(0.6, 3.0)
        t = ndi.gaussian_filter(n, s) - ndi.gaussian_filter(n, s * rng.uniform(2, 4))
    else:  # 1/f^beta
        fy = np.fft.fftfreq(Y)[:, None]
        fx = np.fft.rfftfreq(X)[None, :]
        f = np.sqrt(fy * fy + fx * fx)
        f[0, 0] = 1
        beta = rng.uniform(0.8, 1.6)
        t = np.fft.irfft2(np.fft.rfft2(n) / f ** beta, s=(Y, X)).astype(np.float32)
    t = _norm(t)
    contrast = rng.uniform(0.4, 1.0)
    t = 0.5 + (t - 0.5) * contrast
    tint = rng.uniform(0.6, 1.0, 3)
    return _rgb(t, tint)


def cells_texture(shape, rng) -> np.ndarray:
    """Cell-like blobs (bright rims or filled nuclei with granules) over a textured background.

    Bright-field (light background, dark cells) or fluorescence-like (dark background).
    """
    Y, X = shape
    bg = rng.standard_normal((Y, X)).astype(np.float32)
    bg = ndi.gaussian_filter(bg, 1.0) - ndi.gaussian_filter(bg, 3.0)
    img = 0.15 * bg / (bg.std() + 1e-6)
    n_cells = int(max(3, Y * X / rng.uniform(800, 4000)))
    rmax = float(np.clip(min(Y, X) / rng.uniform(5, 12), 5, 40))
    fine = rng.standard_normal((Y, X)).astype(np.float32)
    fine = ndi.gaussian_filter(fine, 0.7)
    fine /= fine.std() + 1e-6
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
        r = rng.uniform(3, rmax)
        ecc = rng.uniform(0.6, 1.0)
        th = rng.uniform(0, np.pi)
        y0, y1 = max(int(cy - 1.6 * r), 0), min(int(cy + 1.6 * r) + 1, Y)
        x0, x1 = max(int(cx - 1.6 * r), 0), min(int(cx + 1.6 * r) + 1, X)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
        v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
        d = np.sqrt(u * u + (v * ecc) ** 2) / r
        amp = rng.uniform(0.3, 0.9) * rng.choice([-1.0, 1.0], p=[0.3, 0.7])
        if rng.random() < 0.5:  # rim + faint body
            w = rng.uniform(0.01, 0.05)
            prof = np.exp(-((d - 1) ** 2) / w) + 0.25 * (d < 1)
        else:  # filled nucleus with granules
            prof = 1 / (1 + np.exp((d - 1) / 0.06)) * (0.7 + 0.3 * np.clip(fine[y0:y1, x0:x1], -2, 2))
        img[y0:y1, x0:x1] += amp * prof
    img = _norm(img)
    if rng.random() < 0.5:  # fluorescence-like: dark background, gamma
        img = img ** rng.uniform(1.5, 3.0)
    else:  # bright-field
        img = 1 - 0.8 * (1 - img)
    tint = rng.uniform(0.5, 1.0, 3)
    return _rgb(_norm(img) * rng.uniform(0.6, 1.0) + rng.uniform(0, 0.2), tint)


def _vessel_tree(shape, rng, start, angle, length, width, depth_levels=4, canvas=None):
    """Draw a branching tree of tubes (random walks) into per-width canvases; returns the canvas."""
    from skimage.draw import line_aa

    Y, X = shape
    if canvas is None:
        canvas = {}
    stack = [(np.asarray(start, float), angle, length, width, 0)]
    while stack:
        p, a, L, w, lvl = stack.pop()
        c = canvas.setdefault(round(w * 2) / 2, np.zeros(shape, np.float32))
        n_seg = max(2, int(L / 6))
        pts = [p.copy()]
        for _ in range(n_seg):
            a += rng.normal(0, 0.25)
            p = p + 6 * np.array([np.sin(a), np.cos(a)])
            pts.append(p.copy())
        for q0, q1 in zip(pts[:-1], pts[1:]):
            rr, cc, val = line_aa(int(q0[0]), int(q0[1]), int(q1[0]), int(q1[1]))
            ok = (rr >= 0) & (rr < Y) & (cc >= 0) & (cc < X)
            c[rr[ok], cc[ok]] = np.maximum(c[rr[ok], cc[ok]], val[ok])
        if lvl < depth_levels and w > 0.6:
            nb = int(rng.integers(1, 3))
            for _ in range(nb):
                q = pts[int(rng.integers(len(pts) // 3, len(pts)))]
                stack.append((q, a + rng.choice([-1, 1]) * rng.uniform(0.3, 1.0), L * rng.uniform(0.4, 0.8),
                              w * rng.uniform(0.55, 0.8), lvl + 1))
            stack.append((p, a + rng.normal(0, 0.2), L * rng.uniform(0.5, 0.9), w * rng.uniform(0.75, 0.95),
                           lvl + 1))
    return canvas


def _render_tubes(canvas: dict, shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for w, c in canvas.items():
        if w <= 0:
            continue
        t = ndi.gaussian_filter(c, max(w * 0.6, 0.5))
        t = t / max(float(t.max()), 1e-6)
        out = np.maximum(out, t)
    return out


def vessels_texture(shape, rng) -> np.ndarray:
    """Vessel-like microscopy: branching tubes (angiography, neurons) or a ridge network."""
    Y, X = shape
    if rng.random() < 0.6:
        canvas = {}
        for _ in range(int(rng.integers(2, 5))):
            side = rng.integers(4)
            start = [(0, rng.uniform(0, X)), (Y - 1, rng.uniform(0, X)), (rng.uniform(0, Y), 0),
                     (rng.uniform(0, Y), X - 1)][side]
            # the direction is (sin a, cos a) in (y, x): from the top edge down is a = pi/2
            a = {0: np.pi / 2, 1: -np.pi / 2, 2: 0.0, 3: np.pi}[int(side)] + rng.normal(0, 0.4)
            _vessel_tree(shape, rng, start, a, rng.uniform(0.4, 0.9) * max(Y, X), rng.uniform(1.5, 4.0),
                         canvas=canvas)
        tubes = _render_tubes(canvas, shape)
    else:  # ridge network: the zero set of band-pass noise
        n = rng.standard_normal((Y, X)).astype(np.float32)
        s = rng.uniform(2, 6)
        b = ndi.gaussian_filter(n, s) - ndi.gaussian_filter(n, 2 * s)
        b /= b.std() + 1e-6
        tubes = np.exp(-(b / rng.uniform(0.1, 0.3)) ** 2)
    fine = ndi.gaussian_filter(rng.standard_normal((Y, X)).astype(np.float32), 0.8)
    fine /= fine.std() + 1e-6
    bgl = rng.uniform(0.0, 0.3)
    img = bgl + 0.05 * fine + rng.uniform(0.5, 1.0) * tubes * (1 + 0.15 * fine)
    if rng.random() < 0.3:  # dark vessels on a light background (absorption)
        img = 1 - img
    tint = rng.uniform(0.5, 1.0, 3)
    return _rgb(np.clip(img, 0, 1), tint)


def fundus_image(shape, rng):
    """A fundus-like retinal image: curved orange background with vignetting, branching vessels
    from an optic-disc-like bright blob, a darker macula; returns (image, optic-disc centre)."""
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    s = float(max(Y, X))
    cy, cx = Y / 2 + rng.normal(0, 0.1) * Y, X / 2 + rng.normal(0, 0.1) * X
    R = s * rng.uniform(0.45, 0.7)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / R
    lum = np.clip(1 - 0.6 * r ** 2, 0, 1) * rng.uniform(0.6, 0.9)
    mottle = ndi.gaussian_filter(rng.standard_normal((Y, X)).astype(np.float32), s / 40)
    mottle /= mottle.std() + 1e-6
    lum = lum * (1 + 0.06 * mottle)
    # optic disc: bright blob off-centre, vessels radiate from it
    ang = rng.uniform(0, 2 * np.pi)
    dy, dx = cy + 0.3 * R * np.sin(ang), cx + 0.3 * R * np.cos(ang)
    rd = s * rng.uniform(0.05, 0.09)
    dd = np.sqrt((yy - dy) ** 2 + (xx - dx) ** 2) / rd
    disc = 1 / (1 + np.exp((dd - 1) / 0.12))
    cup = 1 / (1 + np.exp((dd - 0.45) / 0.1))
    # macula: dark spot on the other side
    my, mx = cy - 0.25 * R * np.sin(ang), cx - 0.25 * R * np.cos(ang)
    mac = np.exp(-((yy - my) ** 2 + (xx - mx) ** 2) / (2 * (s * 0.06) ** 2))
    canvas = {}
    for k in range(int(rng.integers(4, 7))):
        a = ang + np.pi + (k / 5.0 - 0.5) * 2.5 + rng.normal(0, 0.2)
        _vessel_tree(shape, rng, (dy, dx), a, rng.uniform(0.3, 0.6) * s, rng.uniform(1.5, 3.5) * s / 256,
                     depth_levels=4, canvas=canvas)
    tubes = _render_tubes(canvas, shape)
    base = np.stack([lum * 0.95, lum * 0.45, lum * 0.15], -1)  # orange-red
    base *= (1 - 0.35 * mac)[..., None]
    vessel_col = np.array([0.45, 0.1, 0.05], np.float32)
    img = base * (1 - 0.6 * tubes[..., None]) + 0.6 * tubes[..., None] * vessel_col * lum[..., None]
    disc_col = np.array([1.0, 0.85, 0.55], np.float32)
    img = img * (1 - disc[..., None]) + disc[..., None] * disc_col * (0.85 + 0.15 * cup[..., None])
    img = img * (1 - 0.5 * tubes[..., None] * disc[..., None])
    img = np.clip(img * (r < 1.05)[..., None] + 0.02, 0, 1)  # dark outside the fundus circle
    return img.astype(np.float32), (dy, dx)


TEXTURES = {
    "photo": photo_texture,
    "noise": noise_texture,
    "cells": cells_texture,
    "vessels": vessels_texture,
}


def random_texture(shape, rng, weights=None) -> np.ndarray:
    names = list(TEXTURES)
    p = np.array([1.0] * len(names) if weights is None else [weights.get(n, 0) for n in names], float)
    return TEXTURES[names[rng.choice(len(names), p=p / p.sum())]](shape, rng)


# -------------------------------------------------------------------------------------- depth
def smooth_depth(shape, rng) -> np.ndarray:
    """A smooth surface: tilted plane, a few broad bumps and low-frequency noise, in [0, 1]."""
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    yy /= max(Y, X)
    xx /= max(Y, X)
    a, b = rng.uniform(-1, 1, 2)
    d = a * yy + b * xx
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(-0.2, 1.2, 2)
        w = rng.uniform(0.1, 0.5)
        d = d + rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    if rng.random() < 0.5:
        n = ndi.gaussian_filter(rng.standard_normal((Y, X)).astype(np.float32), max(Y, X) / rng.uniform(4, 10))
        d = d + rng.uniform(0.2, 1.0) * n / (n.std() + 1e-6) * max(float(d.std()), 0.1)
    return _norm(d)


def bowl_depth(shape, rng, centre=None) -> np.ndarray:
    """The eye's curvature: a smooth bowl (paraboloid, slightly tilted), in [0, 1]."""
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    cy, cx = centre if centre is not None else (Y / 2, X / 2)
    cy += rng.normal(0, 0.15) * Y
    cx += rng.normal(0, 0.15) * X
    s = float(max(Y, X))
    d = ((yy - cy) ** 2 + (xx - cx) ** 2) / s ** 2
    d = -d + rng.uniform(-0.2, 0.2) * (yy / s) + rng.uniform(-0.2, 0.2) * (xx / s)  # centre farthest
    return _norm(d)


# ------------------------------------------------------------------------------------- scenes
def dead_leaves(shape, rng, texture_weights=None, n_leaves=None):
    """Occluding "dead leaves": textured shapes drawn from far to near over a textured
    background; depth is piecewise smooth with steps at the occluding edges."""
    Y, X = shape
    img = random_texture(shape, rng, texture_weights)
    depth = 0.7 + 0.3 * smooth_depth(shape, rng)  # the far background
    n = int(rng.integers(3, 12)) if n_leaves is None else n_leaves
    zs = np.sort(rng.uniform(0.0, 0.75, n))[::-1]  # far to near
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    s = float(min(Y, X))
    for z in zs:
        cy, cx = rng.uniform(-0.1, 1.1) * Y, rng.uniform(-0.1, 1.1) * X
        r = s * float(np.exp(rng.uniform(np.log(0.08), np.log(0.45))))
        kind = rng.integers(3)
        if kind == 0:  # ellipse
            th, e = rng.uniform(0, np.pi), rng.uniform(0.4, 1.0)
            u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
            v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
            m = (u / r) ** 2 + (v / (r * e)) ** 2 < 1
        elif kind == 1:  # rotated rectangle
            th = rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
            v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
            m = (np.abs(u) < r) & (np.abs(v) < r * rng.uniform(0.3, 1.0))
        else:  # blobby star
            th = np.arctan2(yy - cy, xx - cx)
            k = int(rng.integers(3, 7))
            rr = r * (1 + rng.uniform(0.1, 0.35) * np.sin(k * th + rng.uniform(0, 2 * np.pi)))
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < rr ** 2
        if not m.any():
            continue
        tex = random_texture(shape, rng, texture_weights)
        img[m] = tex[m]
        slope = rng.uniform(-0.1, 0.1, 2)
        depth[m] = (z + slope[0] * (yy[m] - cy) / s + slope[1] * (xx[m] - cx) / s)
    return img, _norm(depth)


def surface_scene(shape, rng):
    """A texture (photo or noise) on a smooth surface."""
    tex = random_texture(shape, rng, {"photo": 2, "noise": 1, "cells": 0.5, "vessels": 0.5})
    return tex, smooth_depth(shape, rng)


def photo_scene(shape, rng):
    """A scikit-image photograph on a smooth surface or cut into occluding leaves."""
    if rng.random() < 0.5:
        return photo_texture(shape, rng), smooth_depth(shape, rng)
    return dead_leaves(shape, rng, {"photo": 1})


def cells_scene(shape, rng):
    """Cell-like microscopy on a smooth (tilted, wavy) specimen, sometimes with occluding layers."""
    if rng.random() < 0.7:
        return cells_texture(shape, rng), smooth_depth(shape, rng)
    return dead_leaves(shape, rng, {"cells": 3, "noise": 1}, n_leaves=int(rng.integers(2, 6)))


def vessels_scene(shape, rng):
    """Vessel-like microscopy on a smooth surface, sometimes with occluding layers."""
    if rng.random() < 0.7:
        return vessels_texture(shape, rng), smooth_depth(shape, rng)
    return dead_leaves(shape, rng, {"vessels": 3, "noise": 1}, n_leaves=int(rng.integers(2, 6)))


def fundus_scene(shape, rng):
    """A procedural fundus-like retinal scene whose depth is a smooth bowl (issue 6)."""
    img, _ = fundus_image(shape, rng)
    return img, bowl_depth(shape, rng)


def fundus_view_scene(shape, rng):
    """Part of the fundus as a surgical microscope sees it (issue 6): the procedural fundus rendered
    1.3-3x larger than ``shape`` and cropped (vessels a few pixels wide even in small training
    crops), on a bowl centred near the middle of the rendered fundus (the eye's axis), so the depth
    is a smooth, slightly tilted section of the eye's curvature."""
    Y, X = shape
    z = float(rng.uniform(1.3, 3.0))
    big = (int(round(Y * z)), int(round(X * z)))
    img, _ = fundus_image(big, rng)
    depth = bowl_depth(big, rng)
    y0 = int(rng.integers(0, big[0] - Y + 1))
    x0 = int(rng.integers(0, big[1] - X + 1))
    return img[y0:y0 + Y, x0:x0 + X], _norm(depth[y0:y0 + Y, x0:x0 + X])


def retina_photo_scene(shape, rng):
    """A crop of scikit-image's fundus photograph (``skimage.data.retina``: Häggström 2014,
    CC0 1.0 public-domain dedication, per its docstring) on a bowl depth; crops of the black
    surround are redrawn (up to four times)."""
    for _ in range(4):
        img = photo_texture(shape, rng, names=("retina",))
        if img.mean() > 0.1:
            break
    return img, bowl_depth(shape, rng)


def colour_noise_scene(shape, rng):
    """Independent band-pass / 1/f noise in each colour channel (fine, saturated colour texture that
    no single grey guide describes) on a smooth surface or on the occluding steps of dead leaves."""
    img = np.stack([noise_texture(shape, rng)[..., k] for k in range(3)], axis=-1)
    img = _norm(img) if rng.random() < 0.5 else img
    depth = smooth_depth(shape, rng) if rng.random() < 0.5 else dead_leaves(shape, rng, {"noise": 1})[1]
    return img.astype(np.float32), depth


SCENES = {
    "dead_leaves": dead_leaves,
    "surface": surface_scene,
    "photo": photo_scene,
    "cells": cells_scene,
    "vessels": vessels_scene,
    "fundus": fundus_scene,
    "fundus_view": fundus_view_scene,
    "retina_photo": retina_photo_scene,
    "colour_noise": colour_noise_scene,
}


def make_scene(name: str, shape, rng):
    """(image (H, W, 3) float32, depth (H, W) float32), both in [0, 1], for a scene name."""
    try:
        fn = SCENES[name]
    except KeyError:
        raise ValueError(f"unknown scene {name!r}; one of {', '.join(SCENES)}") from None
    img, depth = fn(tuple(int(s) for s in shape), rng)
    return np.ascontiguousarray(np.clip(img, 0, 1), np.float32), np.ascontiguousarray(depth, np.float32)
