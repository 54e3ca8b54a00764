"""Focus stacks with ground truth, synthesised from an all-in-focus image and a depth map.

Two defocus models, one convention:

- depth is normalised to [0, 1] and cut into ``N`` equal bins; plane ``k`` is focused on the
  centre of bin ``k`` (``(k + 0.5) / N``), so the ground-truth focus index of a pixel is its bin
  ``clip(floor(depth * N), 0, N - 1)`` in both models, and ``depth`` itself is the continuous
  ("normalised depth") target of the StackMFF-V2 loss;
- ``model="layered"``: the StackMFF-V2 paper's Algorithm 1 (:func:`napari_edof.data.layered_defocus`):
  plane ``k`` shows bin ``i`` blurred by a Gaussian of sigma ``sigmas[|i - k|]``; every pixel is
  exactly the all-in-focus value in its own plane;
- ``model="thin_lens"``: a Gaussian PSF whose sigma varies per pixel,
  ``sigma_k(x) = blur * |depth(x) * N - (k + 0.5)|`` (thin-lens blur, linear in the distance to
  the focal plane; ``blur`` is the sigma one plane spacing away), rendered by blending a small
  bank of blurred copies of the image (linear interpolation in sigma between neighbours).

Then imaging perturbations: exposure (gain, gamma, offset: applied to the all-in-focus image as
well, so the target stays consistent), colour jitter (per-channel gains, saturation), optional
per-plane illumination flicker, and Poisson-Gaussian noise (stack only; the target is clean).

Everything takes a :class:`numpy.random.Generator`; same seed, same arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..data.synthetic import layered_defocus
from .scenes import luminance

MODELS = ("layered", "thin_lens")


# --------------------------------------------------------------------------- blur schedules
def paper_sigmas(n: int) -> np.ndarray:
    """Algorithm 1's blur levels: kernel size 2j + 1 with OpenCV's default sigma for that size,
    ``0.3 * ((ksize - 1) / 2 - 1) + 0.8 = 0.3 j + 0.5`` for level j >= 1; level 0 is sharp."""
    j = np.arange(n, dtype=np.float64)
    s = 0.3 * j + 0.5
    s[0] = 0.0
    return s


def random_sigmas(n: int, rng, *, first=(0.6, 2.0), power=(0.8, 1.4), cap: float = 12.0) -> np.ndarray:
    """Random increasing blur levels ``s1 * j ** p`` (capped); level 0 is sharp."""
    s1 = rng.uniform(*first)
    p = rng.uniform(*power)
    j = np.arange(n, dtype=np.float64)
    return np.minimum(s1 * j ** p, cap)


def depth_bins(depth: np.ndarray, n: int) -> np.ndarray:
    """The ground-truth focus index: the bin of each pixel among n equal bins of [0, 1]."""
    edges = np.linspace(0, 1, n + 1)
    return np.clip(np.digitize(depth, edges[1:-1]), 0, n - 1)


# ------------------------------------------------------------------------- defocus models
def blur_bank(image: np.ndarray, sigmas, *, mode: str = "reflect") -> np.ndarray:
    """(L, H, W, C) copies of an (H, W, C) image blurred by increasing ``sigmas`` (sigmas[0] may
    be 0), computed incrementally (a Gaussian of s_j is one of s_{j-1} and sqrt(s_j^2 - s_{j-1}^2))."""
    sigmas = np.asarray(sigmas, np.float64)
    bank = np.empty((len(sigmas),) + image.shape, np.float32)
    prev = 0.0
    cur = image.astype(np.float32)
    for j, s in enumerate(sigmas):
        ds = float(np.sqrt(max(s * s - prev * prev, 0.0)))
        if ds > 0:
            cur = ndi.gaussian_filter(cur, (ds, ds) + (0,) * (image.ndim - 2), mode=mode)
        bank[j] = cur
        prev = s
    return bank


def thin_lens_defocus(image: np.ndarray, depth: np.ndarray, n_planes: int, *, blur: float = 1.5,
                      max_sigma: float = 8.0, bank_step: float = 0.5, mode: str = "reflect"):
    """Spatially varying Gaussian defocus: (H, W[, C]) image + depth in [0, 1] -> (stack (N, H, W[, C])
    float32, index (H, W) int). Plane k has sigma ``blur * |depth * N - (k + 0.5)|`` per pixel
    (capped at ``max_sigma``), interpolated between copies blurred every ``bank_step``."""
    squeeze = image.ndim == 2
    img = image[..., None] if squeeze else image
    top = min(max_sigma, blur * n_planes)
    levels = np.arange(0.0, top + bank_step, bank_step)
    bank = blur_bank(img, levels, mode=mode)
    pos = depth.astype(np.float32) * n_planes
    stack = np.empty((n_planes,) + img.shape, np.float32)
    L = len(levels)
    for k in range(n_planes):
        s = np.minimum(blur * np.abs(pos - (k + 0.5)), levels[-1]) / bank_step
        lo = np.minimum(np.floor(s).astype(np.intp), L - 1)
        hi = np.minimum(lo + 1, L - 1)
        w = (s - lo).astype(np.float32)[..., None]
        a = np.take_along_axis(bank, lo[None, ..., None], axis=0)[0]
        b = np.take_along_axis(bank, hi[None, ..., None], axis=0)[0]
        stack[k] = a + w * (b - a)
    if squeeze:
        stack = stack[..., 0]
    return stack, depth_bins(depth, n_planes)


# ------------------------------------------------------------------------- perturbations
def jitter_exposure(img: np.ndarray, rng, *, gain=(0.7, 1.3), gamma=(0.7, 1.4), offset=(-0.05, 0.05)):
    """gain * img ** gamma + offset, clipped to [0, 1] (apply to the all-in-focus image)."""
    g, gm, o = rng.uniform(*gain), rng.uniform(*gamma), rng.uniform(*offset)
    return np.clip(g * np.power(np.clip(img, 0, 1), gm) + o, 0, 1).astype(np.float32)


def jitter_colour(img: np.ndarray, rng, *, channel_gain=(0.8, 1.2), saturation=(0.5, 1.5)):
    """Per-channel gains and a saturation change of an (H, W, 3) image, clipped to [0, 1]."""
    gains = rng.uniform(*channel_gain, 3).astype(np.float32)
    s = rng.uniform(*saturation)
    y = luminance(img)[..., None]
    out = y + s * (img * gains - y)
    return np.clip(out, 0, 1).astype(np.float32)


def poisson_gaussian(stack: np.ndarray, rng, *, peak: float, read: float) -> np.ndarray:
    """Shot noise for ``peak`` photons at 1.0 plus Gaussian read noise of std ``read``, in [0, 1].

    The variance at intensity x is about x / peak + read ** 2.
    """
    x = np.clip(stack, 0, 1)
    y = rng.poisson(x * peak).astype(np.float32) / np.float32(peak)
    if read > 0:
        y += rng.normal(0.0, read, size=x.shape).astype(np.float32)
    return np.clip(y, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------ one stack
@dataclass
class SynthConfig:
    """Random ranges for :func:`synthesize` (every draw comes from the Generator passed in)."""

    models: dict = field(default_factory=lambda: {"layered": 0.5, "thin_lens": 0.5})
    paper_sigma_p: float = 0.25          # layered: Algorithm 1's exact schedule this often
    first_sigma: tuple = (0.6, 2.0)      # layered: sigma of blur level 1
    sigma_power: tuple = (0.8, 1.4)      # layered: sigma_j = s1 * j ** p
    thin_blur: tuple = (0.8, 2.5)        # thin lens: sigma one plane spacing away
    max_sigma: float = 8.0
    exposure_p: float = 0.7
    colour_p: float = 0.5
    flicker: float = 0.02                # per-plane gain in 1 +- flicker (0: none)
    noise_p: float = 0.8
    peak: tuple = (60.0, 6000.0)         # photons at 1.0, log-uniform
    read: tuple = (0.0, 0.01)


@dataclass
class SynthStack:
    """A synthetic focus stack and its ground truth.

    stack : (N, H, W[, C]) float32 in [0, 1]
    aif : (H, W[, C]) float32 in [0, 1], the clean all-in-focus target
    index : (H, W) int64, 0-based ground-truth plane
    depth : (H, W) float32 in [0, 1], normalised depth (the proxy target of StackMFF-V2's loss)
    info : what was drawn (model, sigmas/blur, noise...)
    """

    stack: np.ndarray
    aif: np.ndarray
    index: np.ndarray
    depth: np.ndarray
    info: dict


def render_stack(image: np.ndarray, depth: np.ndarray, n_planes: int, *, model: str = "layered",
                 sigmas=None, blur: float = 1.5, max_sigma: float = 8.0):
    """Defocus only (no perturbation): (stack, index) for either model."""
    if model == "layered":
        if sigmas is None:
            sigmas = paper_sigmas(n_planes)
        return layered_defocus(image, depth, n_planes, sigmas=sigmas)
    if model == "thin_lens":
        return thin_lens_defocus(image, depth, n_planes, blur=blur, max_sigma=max_sigma)
    raise ValueError(f"model must be one of {MODELS}, not {model!r}")


def synthesize(image: np.ndarray, depth: np.ndarray, n_planes: int, rng, cfg: SynthConfig | None = None,
               *, rgb: bool = False, model: str | None = None) -> SynthStack:
    """All-in-focus (H, W, 3) image + depth (H, W) in [0, 1] -> a perturbed stack with ground truth.

    ``rgb=False`` gives grey stacks (BT.601 luminance), ``rgb=True`` (N, H, W, 3) ones.
    """
    cfg = cfg or SynthConfig()
    info: dict = {}
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if rng.random() < cfg.colour_p:
        img = jitter_colour(img, rng)
        info["colour"] = True
    if rng.random() < cfg.exposure_p:
        img = jitter_exposure(img, rng)
        info["exposure"] = True
    if not rgb:
        img = luminance(img).astype(np.float32)
    if model is None:
        names = list(cfg.models)
        p = np.array([cfg.models[k] for k in names], float)
        model = names[rng.choice(len(names), p=p / p.sum())]
    info["model"] = model
    if model == "layered":
        if rng.random() < cfg.paper_sigma_p:
            sig = paper_sigmas(n_planes)
        else:
            sig = random_sigmas(n_planes, rng, first=cfg.first_sigma, power=cfg.sigma_power, cap=cfg.max_sigma)
        info["sigmas"] = [round(float(s), 4) for s in sig]
        stack, index = render_stack(img, depth, n_planes, model="layered", sigmas=sig)
    else:
        b = rng.uniform(*cfg.thin_blur)
        info["blur"] = float(b)
        stack, index = render_stack(img, depth, n_planes, model="thin_lens", blur=b, max_sigma=cfg.max_sigma)
    if cfg.flicker > 0:
        g = rng.uniform(1 - cfg.flicker, 1 + cfg.flicker, n_planes).astype(np.float32)
        stack = stack * g.reshape((-1,) + (1,) * (stack.ndim - 1))
    if rng.random() < cfg.noise_p:
        peak = float(np.exp(rng.uniform(np.log(cfg.peak[0]), np.log(cfg.peak[1]))))
        read = float(rng.uniform(*cfg.read))
        stack = poisson_gaussian(stack, rng, peak=peak, read=read)
        info["peak"], info["read"] = peak, read
    stack = np.clip(stack, 0, 1).astype(np.float32)
    return SynthStack(stack, img, index.astype(np.int64), depth.astype(np.float32), info)
