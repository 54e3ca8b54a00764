"""Realistic focus stacks with exact ground truth: continuous defocus, occlusion, noise.

What real stacks have and the layered model of :mod:`.synth` lacks:

- **continuous depth**: every pixel's depth is a real number (tilted, curved surfaces, fibres that
  run through the volume); nothing is quantised into bins, so most pixels are sharp in no plane
  exactly and a little blurred in two;
- **thin-lens defocus**: the blur of a point at depth ``d`` in the plane focused at ``z`` grows
  linearly with ``|d - z|``: a disc (camera lens) or a Gaussian (microscope), rendered per pixel from
  a bank of blurred copies;
- **occlusion** (camera and bright-field scenes): objects in front of others, composited back to
  front with their own blurred coverage, so a defocused foreground edge spills over a sharp
  background, as in real photographs; **emission** (fluorescence): blurred emitters add up;
- **flat and low-contrast regions**: sky-like gradients, uniform objects, dark fluorescence
  background, faint textures, where no plane can be told in focus;
- **Poisson-Gaussian noise** at a given number of photo-electrons at full scale (a few hundred:
  strong; a few thousand: moderate; tens of thousands: weak), then the camera's offset, gain and
  8- or 16-bit quantisation.

The ground truth is the all-in-focus image (the same scene rendered with no defocus and no noise,
quantised the same way), the true focus index (the continuous plane coordinate of the visible
surface: 0 is the first plane, ``N - 1`` the last) and an ``informative`` mask (pixels whose
neighbourhood has enough contrast for the plane to be decidable at all; index errors are scored
there). Same :class:`Config`, same arrays.

:func:`benchmark_configs` lists the fixed stacks of the quality benchmark
(``benchmarks/bench_quality.py``): noise level x colour classes, natural photographs and
microscopy-like textures (cells, fibres, vessels), 5 to 32 planes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .scenes import LUMA, cells_texture, noise_texture, photo_texture, vessels_texture

NOISE = {"strong": (200.0, 500.0), "moderate": (1500.0, 4000.0), "weak": (15000.0, 40000.0)}
COLOURS = ("grey", "rgb")
SCENES = ("photo", "brightfield", "fluorescence")
#: Blur levels of the bank (pixels: Gaussian sigma, or disc radius); the blur of a pixel is
#: interpolated linearly between the two levels around it.
LEVELS = np.array([0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 22.0, 32.0, 45.0])


@dataclass(frozen=True)
class Config:
    """One stack: what it shows and how it was imaged."""

    seed: int
    scene: str = "photo"            # photo | brightfield | fluorescence
    colour: str = "grey"            # grey | rgb
    noise: str = "moderate"         # strong | moderate | weak (photons at full scale, see NOISE)
    bits: int = 16                  # 8 | 16
    n_planes: int = 10
    shape: tuple = (256, 320)
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.scene}-{self.colour}-{self.noise}-{self.seed}"


@dataclass
class RealisticStack:
    """A rendered stack and its truth; arrays in the camera's dtype (uint8 or uint16)."""

    planes: np.ndarray          # (Z, Y, X) or (Z, Y, X, 3)
    truth: np.ndarray           # (Y, X) or (Y, X, 3): all in focus, noise-free
    index: np.ndarray           # (Y, X) float32: true continuous plane coordinate
    informative: np.ndarray     # (Y, X) bool: enough contrast for the plane to be decidable
    config: Config
    meta: dict = field(default_factory=dict)

    @property
    def dtype_max(self) -> float:
        return float(np.iinfo(self.planes.dtype).max)


# ---------------------------------------------------------------------------------- blurring
def _disc(radius: float) -> np.ndarray:
    """An anti-aliased disc kernel of the given radius (sums to 1)."""
    R = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-R : R + 1, -R : R + 1]
    # coverage of each pixel by the disc, from the distance of its centre to the rim
    k = np.clip(radius + 0.5 - np.sqrt(yy * yy + xx * xx), 0, 1).astype(np.float64)
    return k / k.sum()


def _blur(img: np.ndarray, level: float, psf: str) -> np.ndarray:
    """Blur a (Y, X, C) float image by one bank level (reflected borders)."""
    if level <= 0:
        return img.copy()
    if psf == "gauss":
        return ndi.gaussian_filter(img, (level, level, 0), mode="reflect", truncate=3.5)
    from scipy.signal import fftconvolve

    k = _disc(level)
    R = k.shape[0] // 2
    pad = np.pad(img, ((R, R), (R, R), (0, 0)), mode="reflect")
    out = fftconvolve(pad, k[:, :, None], mode="same", axes=(0, 1))
    return out[R:-R, R:-R]


def _bank(img: np.ndarray, levels: np.ndarray, psf: str) -> list[np.ndarray]:
    return [_blur(img, float(s), psf) for s in levels]


def _gather(bank: list[np.ndarray], levels: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """Per pixel, the bank interpolated linearly at ``blur`` (Y, X)."""
    b = np.clip(blur, 0, levels[-1])
    j = np.clip(np.searchsorted(levels, b, side="right") - 1, 0, len(levels) - 2)
    t = ((b - levels[j]) / (levels[j + 1] - levels[j]))[..., None]
    out = np.zeros(bank[0].shape, np.float64)
    for i in np.unique(j):
        m = j == i
        out[m] = (1 - t[m]) * bank[i][m] + t[m] * bank[i + 1][m]
    return out


# ---------------------------------------------------------------------------------- scene parts
def _smooth_field(shape, rng, *, lo: float, hi: float, bumps: int = 2) -> np.ndarray:
    """A smooth surface spanning [lo, hi]: a tilt, a few broad bumps."""
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X] / max(Y, X)
    d = rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx
    for _ in range(bumps):
        cy, cx = rng.uniform(-0.2, 1.2, 2)
        w = rng.uniform(0.15, 0.5)
        d = d + rng.uniform(-0.8, 0.8) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    d = (d - d.min()) / max(float(np.ptp(d)), 1e-9)
    return lo + (hi - lo) * d


def _shape_mask(shape, rng) -> np.ndarray:
    """A hard-edged object: an ellipse, a rounded rectangle or a polygon (anti-aliased by 4x
    supersampling)."""
    from skimage.draw import polygon

    Y, X = shape
    S = 4
    big = np.zeros((Y * S, X * S), np.float32)
    cy, cx = rng.uniform(0.15, 0.85) * Y * S, rng.uniform(0.15, 0.85) * X * S
    ry, rx = rng.uniform(0.12, 0.35) * Y * S, rng.uniform(0.12, 0.35) * X * S
    kind = rng.integers(3)
    th = rng.uniform(0, np.pi)
    if kind == 0:  # ellipse
        t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        py, px = ry * np.sin(t), rx * np.cos(t)
    elif kind == 1:  # rounded rectangle (superellipse)
        t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        e = 0.25
        py = ry * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** e
        px = rx * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** e
    else:  # irregular polygon
        k = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.6, 1.0, k)
        py, px = ry * r * np.sin(t), rx * r * np.cos(t)
    qy = cy + py * np.cos(th) - px * np.sin(th)
    qx = cx + py * np.sin(th) + px * np.cos(th)
    rr, cc = polygon(qy, qx, big.shape)
    big[rr, cc] = 1
    return big.reshape(Y, S, X, S).mean(axis=(1, 3))


def _flat(shape, rng) -> np.ndarray:
    """A textureless surface: one colour with a faint, smooth gradient (sky, a painted object)."""
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X] / max(Y, X)
    base = rng.uniform(0.15, 0.9, 3)
    g = 0.06 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    return np.clip(base[None, None, :] + g[..., None], 0, 1)


def _faint(img: np.ndarray, rng) -> np.ndarray:
    """The same texture at low contrast."""
    m = img.mean(axis=(0, 1), keepdims=True)
    return np.clip(m + (img - m) * rng.uniform(0.08, 0.25), 0, 1)


def _texture(shape, rng, kind: str) -> np.ndarray:
    if kind == "photo":
        return photo_texture(shape, rng).astype(np.float64)
    if kind == "noise":
        return noise_texture(shape, rng).astype(np.float64)
    if kind == "cells":
        return cells_texture(shape, rng).astype(np.float64)
    if kind == "vessels":
        return vessels_texture(shape, rng).astype(np.float64)
    if kind == "flat":
        return _flat(shape, rng)
    raise ValueError(kind)


def _fibres(shape, rng, n: int) -> np.ndarray:
    """Thin bright curves (microtubules, neurites); the layer's smooth depth field makes each
    fibre's depth vary continuously along it."""
    from skimage.draw import line_aa

    Y, X = shape
    canvas = np.zeros(shape, np.float64)
    for _ in range(n):
        p = np.array([rng.uniform(0, Y), rng.uniform(0, X)])
        a = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(20, 60))):
            a += rng.normal(0, 0.15)
            q = p + 5 * np.array([np.sin(a), np.cos(a)])
            rr, cc, val = line_aa(int(p[0]), int(p[1]), int(q[0]), int(q[1]))
            ok = (rr >= 0) & (rr < Y) & (cc >= 0) & (cc < X)
            canvas[rr[ok], cc[ok]] = np.maximum(canvas[rr[ok], cc[ok]], val[ok] * rng.uniform(0.5, 1))
            p = q
    return ndi.gaussian_filter(canvas, 0.7)


# ---------------------------------------------------------------------------------- rendering
def _focal_blur(depth: np.ndarray, z: float, per_plane: float) -> np.ndarray:
    return per_plane * np.abs(depth - z)


def render(cfg: Config) -> RealisticStack:
    """Render one stack (deterministic in ``cfg``)."""
    rng = np.random.default_rng(cfg.seed)
    Y, X = cfg.shape
    N = cfg.n_planes
    shape = (Y, X)
    # blur at the far end of the range: a stack's planes cover its depth of field
    total_blur = rng.uniform(8.0, 22.0)
    per_plane = total_blur / max(N - 1, 1)
    lo, hi = -0.3, N - 0.7  # the scene's depth span in plane coordinates

    layers = []  # back to front: (colour (Y,X,3), alpha (Y,X), depth (Y,X))
    emitters = []  # fluorescence: (emission (Y,X,3), depth (Y,X))
    if cfg.scene == "photo":
        psf = "disc"
        bg = _texture(shape, rng, rng.choice(["photo", "photo", "noise"]))
        if rng.random() < 0.6:  # a flat region (sky, wall) over part of the background
            m = _shape_mask(shape, rng)
            bg = bg * (1 - m[..., None]) + _flat(shape, rng) * m[..., None]
        layers.append((bg, np.ones(shape), _smooth_field(shape, rng, lo=lo + 0.45 * (hi - lo), hi=hi)))
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.choice(["photo", "photo", "noise", "flat", "faint"])
            tex = _faint(_texture(shape, rng, "photo"), rng) if kind == "faint" else _texture(shape, rng, kind)
            d0 = rng.uniform(lo, lo + 0.7 * (hi - lo))
            layers.append((tex, _shape_mask(shape, rng),
                           _smooth_field(shape, rng, lo=d0, hi=d0 + rng.uniform(0.2, 0.3) * (hi - lo), bumps=1)))
    elif cfg.scene == "brightfield":
        psf = "gauss"
        light = np.clip(rng.uniform(0.7, 0.92) + 0.04 * _smooth_field(shape, rng, lo=-1, hi=1), 0, 1)
        layers.append((np.repeat(light[..., None], 3, -1), np.ones(shape), _smooth_field(shape, rng, lo=lo, hi=hi)))
        for _ in range(int(rng.integers(2, 5))):
            tex = _texture(shape, rng, rng.choice(["cells", "vessels", "noise"]))
            m = _shape_mask(shape, rng) * rng.uniform(0.5, 0.95)  # partly transparent specimens
            d0 = rng.uniform(lo, hi - 0.2 * (hi - lo))
            layers.append((tex * rng.uniform(0.4, 0.9), m,
                           _smooth_field(shape, rng, lo=d0, hi=d0 + rng.uniform(0.05, 0.3) * (hi - lo), bumps=1)))
    elif cfg.scene == "fluorescence":
        psf = "gauss"
        for _ in range(int(rng.integers(2, 4))):
            kind = rng.choice(["cells", "vessels", "fibres"])
            if kind == "fibres":
                em = _fibres(shape, rng, int(rng.integers(4, 12)))
                em = em[..., None] * rng.uniform(0.5, 1.0, 3)[None, None, :]
            else:
                t = _texture(shape, rng, kind)
                lum = t @ LUMA
                # emission: only the structure, on a dark background
                em = np.clip(lum - np.quantile(lum, rng.uniform(0.5, 0.8)), 0, None)[..., None]
                em = em / max(float(em.max()), 1e-6) * rng.uniform(0.3, 0.9, 3)[None, None, :]
            d0 = rng.uniform(lo, hi - 0.25 * (hi - lo))
            emitters.append((em, _smooth_field(shape, rng, lo=d0, hi=d0 + rng.uniform(0.1, 0.35) * (hi - lo))))
        bg_level = rng.uniform(0.01, 0.06)
    else:
        raise ValueError(f"unknown scene {cfg.scene!r}; choose one of {', '.join(SCENES)}")

    # ---- render every plane and the truth
    planes = np.zeros((N, Y, X, 3), np.float64)
    if layers:
        banks = [(_bank(c * a[..., None], LEVELS, psf), _bank(a[..., None], LEVELS, psf)) for c, a, _ in layers]
        for k in range(N):
            out = np.zeros((Y, X, 3))
            for (_, _, d), (bc, ba) in zip(layers, banks, strict=True):
                b = _focal_blur(d, k, per_plane)
                out = _gather(bc, LEVELS, b) + (1 - _gather(ba, LEVELS, b)) * out
            planes[k] = out
        truth = np.zeros((Y, X, 3))
        index = np.zeros((Y, X))
        for c, a, d in layers:
            truth = c * a[..., None] + (1 - a[..., None]) * truth
            front = a >= 0.5
            index[front] = d[front]
    else:
        banks = [_bank(e, LEVELS, psf) for e, _ in emitters]
        for k in range(N):
            planes[k] = bg_level + sum(_gather(b, LEVELS, _focal_blur(d, k, per_plane))
                                       for b, (_, d) in zip(banks, emitters, strict=True))
        truth = bg_level + sum(e for e, _ in emitters)
        lum = np.stack([e @ LUMA for e, _ in emitters])
        index = np.take_along_axis(np.stack([d for _, d in emitters]), lum.argmax(0)[None], 0)[0]
    scale = 1.0 / max(1.0, float(truth.max()), float(planes.max()))
    planes *= scale
    truth = truth * scale

    if cfg.colour == "grey":
        planes = planes @ LUMA
        truth = truth @ LUMA

    # ---- camera: photo-electrons, read noise, gain, offset, quantisation
    photons = float(np.exp(rng.uniform(*np.log(NOISE[cfg.noise]))))
    read = rng.uniform(1.0, 4.0)  # electrons
    vmax = 255 if cfg.bits == 8 else 65535
    offset = 0.0 if cfg.bits == 8 else float(rng.integers(100, 600))
    gain = (vmax - offset) * rng.uniform(0.85, 0.97) / photons  # ADU per electron: headroom above full scale
    e = rng.poisson(np.clip(planes, 0, None) * photons) + rng.normal(0, read, planes.shape)
    dtype = np.uint8 if cfg.bits == 8 else np.uint16
    planes_q = np.clip(np.rint(offset + gain * e), 0, vmax).astype(dtype)
    truth_q = np.clip(np.rint(offset + gain * truth * photons), 0, vmax).astype(dtype)

    # ---- where the plane is decidable: local contrast of the truth well above the noise
    lumt = truth @ LUMA if truth.ndim == 3 else truth
    m = ndi.gaussian_filter(lumt, 2.0)
    local_sd = np.sqrt(np.maximum(ndi.gaussian_filter(lumt * lumt, 2.0) - m * m, 0))
    noise_sd = np.sqrt(np.maximum(m, 0) * photons + read * read) / photons  # in [0, 1] units
    informative = (local_sd > 0.01) & (local_sd > 0.5 * noise_sd)

    meta = dict(asdict(cfg), label=cfg.label, photons=photons, read_noise=read, gain=gain, offset=offset,
                blur_per_plane=per_plane, psf=psf, informative=float(informative.mean()))
    meta["shape"] = list(cfg.shape)
    return RealisticStack(planes=planes_q, truth=truth_q, index=index.astype(np.float32),
                          informative=informative, config=cfg, meta=meta)


def benchmark_configs(per_class: int = 4, *, seed: int = 7100, size: int = 1) -> list[Config]:
    """The quality benchmark's stacks: ``per_class`` per (noise x colour) class, fixed seeds.

    Grey stacks are mostly 16-bit microscopy (fluorescence, bright field) with some photographs;
    RGB stacks mostly 8-bit photographs with some bright field; 5 to 32 planes. ``size`` scales
    the image sides (1: about 256 x 320 to 384 x 512)."""
    rng = np.random.default_rng(seed)
    out = []
    for noise in NOISE:
        for colour in COLOURS:
            for i in range(per_class):
                if colour == "grey":
                    scene = ("fluorescence", "brightfield", "photo", "fluorescence")[i % 4]
                    bits = 16 if scene != "photo" or i % 2 else 8
                else:
                    scene = ("photo", "photo", "brightfield", "photo")[i % 4]
                    bits = 8 if i % 4 != 3 else 16
                n = int(rng.choice([5, 6, 8, 10, 12, 16, 24, 32]))
                h = int(rng.choice([256, 320, 384])) * size
                w = int(rng.choice([320, 384, 512])) * size
                s = int(rng.integers(1 << 30))
                out.append(Config(seed=s, scene=scene, colour=colour, noise=noise, bits=bits, n_planes=n,
                                  shape=(h, w), name=f"{noise}-{colour}-{i}-{scene}"))
    return out
