"""Compose a fused image from the planes with per-plane probabilities (a network's decision).

Two compositors for the methods whose network gives a probability per plane and pixel
(StackMFF-V2's ``compose`` parameter; the pair networks' index becomes one with :func:`index_prob`):

- :func:`soft_compose`: per pixel, the planes averaged with the probabilities;
- :func:`pyramid_compose`: a Laplacian pyramid (the :mod:`.focus_fuse` building blocks
  :func:`~.focus_fuse.bin2` / :func:`~.focus_fuse.up2`, on a grid aligned to the window). Per level, a
  plane's weight is its probability (binned to that level) to the power ``prior`` times
  ``exp(-(best band energy - its band energy) / (softness x noise energy))``: where the network
  is sure and the detail agrees, that plane; where several planes hold detail of the same strength
  within the noise they are averaged (noise goes down instead of being copied), and detail of
  structures at different depths that overlap (emitters, transparent specimens) is gathered from
  each plane, which no per-pixel choice can do. The noise energy is estimated per pixel as
  focus-fuse's: the floor over planes of the finest detail's local energy (the most defocused
  planes hold only noise there), carried to each level by white noise's gain there. Where a
  pixel's band energy has a second separate peak over the planes (focus-fuse's second depth:
  overlapping emitters, a layer showing through another), that plane's band is added too (weight
  ``overlap``), less its local mean. The finest band is shrunk by a local Wiener factor
  ``1 - detail_k x noise / energy``; the base is the average of the planes' bases weighted by the
  probabilities to the power ``base_power`` (3: the network's most likely planes; the plain
  probabilities, spread over many planes of a deep stack, blurred the base: weak-noise brightfield
  lost up to 10 dB). The result is clipped per pixel to the range of the planes' values there.

Every filter is local (reflected at the window's border) and the pyramid's grid is the window's,
so a window whose origin is a multiple of ``2 ** levels`` with a halo beyond :func:`pyramid_reach`
gives the whole image's result inside (tiles agree). numpy only.
"""
from __future__ import annotations

import numpy as np

from ._registry import Param, context_halo
from .focus_fuse import _NOISE_K, bin2, noise_gains, second_peak, up2, z_smooth

_F = np.float32


_NOISE_R = 2  # the noise floor's window radius (5 x 5, as focus-fuse's default)


def soft_compose(src: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """(Z, h, w, C) planes averaged with (Z, h, w) per-pixel weights summing to 1 -> (h, w, C)
    float32, clipped to the range of the planes' values there."""
    out = np.zeros(src.shape[1:], _F)
    for k in range(src.shape[0]):
        out += src[k] * prob[k][..., None]
    np.clip(out, src.min(axis=0), src.max(axis=0), out=out)
    return out


def index_prob(index: np.ndarray, n: int, sigma: float | None = None) -> np.ndarray:
    """(Z, h, w) float32 weights summing to 1 per pixel from an (h, w) plane index of ``n`` planes: a
    Gaussian of ``sigma`` planes around it (default :data:`PAIR_SIGMA`; the pair networks' decision,
    which has no probability per plane, as :func:`pyramid_compose`'s prior: near planes stay in reach
    of the detail weights)."""
    sigma = PAIR_SIGMA if sigma is None else sigma
    z = np.arange(n, dtype=_F)[:, None, None]
    d = (z - np.asarray(index, _F)[None]) * _F(1 / sigma)
    p = np.exp(_F(-0.5) * d * d)
    p /= p.sum(axis=0)
    return p


def pyramid_reach(levels: int) -> int:
    """Full-resolution pixels of the window's border that a ``levels``-level composition reads
    (bins, up-samplings, energy windows and the Wiener window; generous)."""
    return 4 * 2 ** levels + 8


def _box(a: np.ndarray, r: int) -> np.ndarray:
    from scipy import ndimage as ndi  # (lazily: the CLI's start-up does not import scipy)

    return ndi.uniform_filter(a, size=(1,) * (a.ndim - 2) + (2 * r + 1, 2 * r + 1), mode="reflect")


def pyramid_compose(planes: np.ndarray, guide: np.ndarray, prob: np.ndarray, *, levels: int = 3,
                    softness: float = 1.0, prior: float = 1.0, detail_k: float = 0.5,
                    base_power: float = 3.0, overlap: float = 1.0) -> np.ndarray:
    """Fuse (Z, H, W, C) ``planes`` with (Z, H, W) ``prob`` (see the module docstring); ``guide``
    (Z, H, W) is the planes' luminance (or the planes themselves for one channel), whose band
    energies weigh the detail. Returns (H, W, C) float32. H and W are reflected up to a multiple of
    ``2 ** levels`` (at the end) and cropped back. With one channel the guide is not used (the
    channel is its own guide)."""
    Z, H, W = guide.shape
    m = 2 ** levels
    py, px = -H % m, -W % m
    P = np.moveaxis(np.asarray(planes, _F), -1, 1)  # (Z, C, H, W)
    G = np.asarray(guide, _F)
    pr = np.asarray(prob, _F)
    if py or px:
        P = np.pad(P, ((0, 0), (0, 0), (0, py), (0, px)), mode="reflect")
        G = np.pad(G, ((0, 0), (0, py), (0, px)), mode="reflect")
        pr = np.pad(pr, ((0, 0), (0, py), (0, px)), mode="reflect")
    one = P.shape[1] == 1  # one channel: the guide is that channel
    if one:
        G = P[:, 0]
    _, fine, coarse = noise_gains(max(levels - 1, 1), 2)
    gain = [fine, *coarse]  # white noise's band energy per level, for unit variance
    bands = []
    pl = pr
    cg, cp = G, P
    for lvl in range(levels):
        ng = bin2(cg)
        bg = cg - up2(ng)
        if one:
            ncp, bp = ng[:, None], bg[:, None]
        else:
            ncp = bin2(cp)
            bp = cp - up2(ncp)
        sq = bg * bg
        e = _box(sq, 1)
        if lvl == 0:  # the noise: the finest detail's energy floor over planes (as focus-fuse)
            white = _box(sq, _NOISE_R).min(axis=0) * _F(_NOISE_K / gain[0])
        else:
            white = bin2(white)
        noise = white * _F(gain[lvl])
        lw = (e - e.max(axis=0)) / (_F(softness) * noise + _F(1e-12))
        if prior:
            lw += np.log(np.maximum(pl, _F(1e-6))) * _F(prior)
        lw -= lw.max(axis=0)
        w = np.exp(lw)
        w /= w.sum(axis=0)
        band = np.einsum("zchw,zhw->chw", bp, w)
        if overlap:  # a second depth's band, less its local mean (as focus-fuse)
            k2, found = second_peak(z_smooth(e.copy()), noise)
            r = 2 if lvl == 0 else 1
            x = np.take_along_axis(bp, k2[None, None], 0)[0] * found
            band += _F(overlap) * (x - _box(x, r))
            if lvl == 0:
                x = np.take_along_axis(bg, k2[None], 0)[0] * found
                second_guide = _F(overlap) * (x - _box(x, r))
        if lvl == 0 and detail_k > 0:  # Wiener shrink of the finest detail, decided on the guide
            gd = np.einsum("zhw,zhw->hw", bg, w)
            if overlap:
                gd += second_guide
            ef = _box(gd * gd, 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                beta = np.clip(1 - _F(detail_k) * noise / ef, 0, 1)
            band *= np.nan_to_num(beta, nan=0.0).astype(_F)[None]
        bands.append(band)
        cg, cp, pl = ng, ncp, bin2(pl)
    if base_power != 1:  # the base follows the network's most likely planes
        pl = pl ** _F(base_power)
    pl = pl / np.maximum(pl.sum(axis=0), _F(1e-12))
    out = np.einsum("zchw,zhw->chw", cp, pl)
    for band in bands[::-1]:
        out = up2(out) + band
    out = np.moveaxis(out[:, :H, :W], 0, -1)
    src = np.asarray(planes, _F)
    np.clip(out, src.min(axis=0), src.max(axis=0), out=out)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# the methods that compose (stackmff-v2; the pair networks msas, ctmfusion: their index, composed)
# --------------------------------------------------------------------------------------------
LEVELS = 3  # the composition's pyramid levels (tiles aligned to 2 ** LEVELS)
#: the Gaussian around a pair network's index, in planes. Chosen on the tuning stacks (seeds 9100 and
#: 9300 of the realistic generator, 24 stacks): msas 0.5 / 1 / 2 / 3 planes gave 37.51 / 38.35 /
#: 38.46 / 38.33 dB, ctmfusion 1 / 2 / 3 gave 38.30 / 38.46 / 38.33 (their gathered pixels: 34.75, 34.48)
PAIR_SIGMA = 2.0
PAIR_SOFTNESS = 4.0


def pair_compose_param() -> Param:
    """The pair networks' ``compose`` parameter (one declaration for both methods)."""
    return Param("compose", str, "pyramid", label="Composition",
                 help="pyramid: multi-scale, the planes near the network's index weighed with each scale's "
                 "detail against the noise (noise averaged where no plane is sharper); select: the pixel of "
                 "the chosen plane (every fused pixel a source pixel)", choices=("pyramid", "select"))


def pair_params() -> tuple[Param, Param]:
    """The pair networks' ``compose`` and ``resolution`` parameters (one declaration for both methods)."""
    return pair_compose_param(), Param("resolution", str, "full", label="Network resolution", advanced=True,
                 help="where the network decides for more than two planes: full, or half (on 2 x 2 bins of the "
                 "guide, the index spread back over each bin's pixels: about 4x less network work; with "
                 "compose=pyramid the detail still comes from the planes at full resolution)",
                 choices=("full", "half"))


def pair_half(p: dict) -> bool:
    """Whether a pair network decides on 2 x 2 bins (``resolution="half"``)."""
    return p.get("resolution", "full") == "half"


def pair_decide(decide_window, x: np.ndarray, p: dict):
    """``decide_window`` ((N, H, W) -> (index, confidence)) on ``x``, or on its 2 x 2 bins with
    ``resolution="half"`` and more than two planes (:func:`binned`; two planes keep the paper's map)."""
    return binned(decide_window, x) if pair_half(p) and x.shape[0] > 2 else decide_window(x)


def pair_multiple(p: dict) -> int:
    """A pair network's tile multiple: the composition's grid, and whole bins at half resolution."""
    return max(compose_multiple(p), 2 if pair_half(p) else 1)


def binned(decide_window, x: np.ndarray):
    """``decide_window`` ((N, H, W) -> (index, confidence), each (H, W)) run on the 2 x 2 bins of ``x``
    (an odd side reflected by one row or column first), its maps spread back over each bin's pixels."""
    N, H, W = x.shape
    if H % 2 or W % 2:
        x = np.pad(x, ((0, 0), (0, H % 2), (0, W % 2)), mode="reflect" if min(H, W) > 1 else "edge")
    idx, conf = decide_window(bin2(x))
    up = lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)[:H, :W]  # noqa: E731
    return up(idx), up(conf)


def compose_halo(p: dict) -> int:
    """A composing method's halo: its context, and with ``compose="pyramid"`` at least what the
    composition reads."""
    h = context_halo(p)
    return max(h, pyramid_reach(LEVELS)) if p.get("compose") == "pyramid" else h


def compose_multiple(p: dict) -> int:
    return 2 ** LEVELS if p.get("compose") == "pyramid" else 1


def compose_index(planes: np.ndarray, guide: np.ndarray, index: np.ndarray, halo: int) -> np.ndarray:
    """A pair network's (Z, H, W) window composed with :func:`pyramid_compose` around its (H, W)
    ``index`` of the whole window: (H - 2 halo, W - 2 halo, C) float32 (the tile). ``planes``
    (Z, H, W, C) or (Z, H, W)."""
    p4 = planes if planes.ndim == 4 else planes[..., None]
    prob = index_prob(index, planes.shape[0])
    fused = pyramid_compose(p4, guide, prob, levels=LEVELS, softness=PAIR_SOFTNESS)
    if halo:
        fused = fused[halo:-halo, halo:-halo]
    return fused if planes.ndim == 4 else fused[..., 0]
