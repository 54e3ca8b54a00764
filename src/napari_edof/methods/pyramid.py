"""Laplacian-pyramid fusion (Burt & Adelson 1983; Burt & Kolczynski 1993).

Every plane of the guide, and of every channel, is decomposed into a Laplacian pyramid (5-tap
binomial filter ``[1 4 6 4 1] / 16``, decimation by 2, ``levels`` detail levels and a Gaussian
base). At each detail level the plane whose *guide* coefficient has the largest local energy
(squared coefficient summed over a ``(2 window + 1)^2`` neighbourhood; ``window=0`` is plain
max-absolute) is selected per pixel; a 3x3 majority filter makes the selection maps consistent
(an isolated choice takes its neighbours' plane). The base is the plane average (default) or the
plane of largest local variance. The guide's selections are applied to every channel: one plane
index per pixel and level, the coefficients copied from that source plane (colour is never
invented), and the fused pyramid is collapsed.

The focus index is the finest level's consistent selection map (0-based plane), the confidence
``1 - second / best`` of the finest level's local energy.

Two passes over the planes of a tile, one plane at a time: the guide's pyramids give the
selections (a running argmax per level), then every channel's pyramids are built again and the
selected coefficients copied. Memory is a few pyramids' worth, whatever the number of planes.

Tile-exact: all filters are position-independent direct sums (``scipy.ndimage.correlate1d``),
tile origins and window sizes are multiples of ``2**levels`` (``tile_multiple``), so the decimation
grid is the image's, and ``halo`` bounds how far the window's border reaches into the result
(computed level by level in :func:`_halo`).
"""
from __future__ import annotations

import numpy as np

from ..core.lazy import LazyModule
from ..core.select import RunningArgmax, box_sum, local_variance, majority
from ._registry import MethodSpec, Param, register

ndi = LazyModule("scipy.ndimage")

#: the 5-tap binomial kernel (Burt & Adelson's a = 0.375)
_K = np.array([1, 4, 6, 4, 1], np.float64) / 16.0
_K2 = _K * 2.0  # expansion: zero-inserted samples, gain 2 per axis


def _halo(p: dict) -> int:
    """How far (level-0 pixels) the window's border contaminates the result, per level.

    Margins are counted in each level's own pixels (worst side): a blur reads 2 pixels each side
    and decimation keeps the even ones (``c -> (c + 1) // 2 + 1``), an expansion doubles and reads
    one coarse sample each side (``m -> 2 m + 2``); the local-energy window, the majority filter
    and the base's variance window add their radii at their level. An upper bound: on the sample
    stack the border's influence was measured to reach 43 pixels of the default's 78, and all 5 of
    ``levels=1, consistency=False``.
    """
    L, w = p["levels"], p["window"]
    cons = 1 if p["consistency"] else 0
    c = [0] * (L + 1)  # contaminated margin of the Gaussian level k
    for k in range(L):
        c[k + 1] = (c[k] + 1) // 2 + 1
    s = [0] * (L + 1)  # margin of the fused (selected) level k
    for k in range(L):
        lap = max(c[k], 2 * c[k + 1] + 2)
        s[k] = lap + w + cons
    s[L] = c[L] + ((p["window"] + 1 + cons) if p["base"] == "variance" else 0)
    r = s[L]
    for k in range(L - 1, -1, -1):
        r = max(s[k], 2 * r + 2)
    return int(r)


SPEC = MethodSpec(
    name="pyramid",
    summary="Laplacian-pyramid fusion: per level, the plane with the largest local coefficient energy.",
    family="classical",
    params=(
        Param("levels", int, 4, label="Levels",
              help="detail levels of the pyramid (the tile alignment is 2**levels)", min=1, max=6),
        Param("window", int, 1, label="Window radius",
              help="local-energy window radius at each level (0: max absolute coefficient)",
              min=0, max=4),
        Param("consistency", bool, True, label="Majority filter", advanced=True,
              help="3x3 majority filter on every selection map"),
        Param("base", str, "average", label="Coarsest level", advanced=True,
              help="coarsest level: plane average, or the plane of largest local variance",
              choices=("average", "variance")),
    ),
    halo=_halo,
    tile_multiple=lambda p: 2 ** p["levels"],
    default_tile=512,  # the halo is 80 pixels by default: 256-pixel tiles would read 2.6x their area
    citation=(
        "Burt & Adelson, 'The Laplacian pyramid as a compact image code', IEEE Trans. Commun. 31(4), 1983; "
        "Burt & Kolczynski, 'Enhanced image capture through fusion', ICCV 1993."
    ),
)


# --------------------------------------------------------------------------------------------
# pyramid helpers: arrays (..., h, w) float32, h and w even at every reduced level
# --------------------------------------------------------------------------------------------
def _reduce(g: np.ndarray) -> np.ndarray:
    g = ndi.correlate1d(g, _K, axis=-2, mode="reflect")[..., ::2, :]
    return ndi.correlate1d(g, _K, axis=-1, mode="reflect")[..., ::2]


def _expand(g: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    up = np.zeros(g.shape[:-2] + (h, g.shape[-1]), np.float32)
    up[..., ::2, :] = g
    up = ndi.correlate1d(up, _K2, axis=-2, mode="reflect")
    out = np.zeros(g.shape[:-2] + (h, w), np.float32)
    out[..., ::2] = up
    return ndi.correlate1d(out, _K2, axis=-1, mode="reflect")


def laplacian_pyramid(a: np.ndarray, levels: int) -> list[np.ndarray]:
    """[L_0 (finest detail), ..., L_{levels-1}, G_levels (base)] of (..., h, w) float32."""
    pyr = []
    g = a
    for _ in range(levels):
        nxt = _reduce(g)
        pyr.append(g - _expand(nxt, g.shape[-2:]))
        g = nxt
    pyr.append(g)
    return pyr


def collapse(pyr: list[np.ndarray]) -> np.ndarray:
    r = pyr[-1]
    for lap in pyr[-2::-1]:
        r = lap + _expand(r, lap.shape[-2:])
    return r


@register(SPEC)
class PyramidFusion:
    def __init__(self, params: dict, *, device: str = "cpu"):
        self.p = params

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        L, w = p["levels"], p["window"]
        Z, h, wd = guide.shape
        C = planes.shape[-1]
        g = np.asarray(guide, np.float32)

        # pass 1: the guide's pyramids, one plane at a time -> per-level argmax of local energy
        track = [RunningArgmax() for _ in range(L + 1)]
        for z in range(Z):
            pyr = laplacian_pyramid(g[z], L)
            for k in range(L):
                track[k].update(box_sum(pyr[k] * pyr[k], w), z)
            if p["base"] == "variance":
                track[L].update(local_variance(pyr[L], w + 1), z)
        n_sel = L + (p["base"] == "variance")
        sel = [majority(t.arg) if p["consistency"] else t.arg for t in track[:n_sel]]

        # pass 2: every channel's pyramids, one plane at a time; copy the selected coefficients
        fused = None
        for z in range(Z):
            if C == 1:  # the guide of a single-channel stack is that channel (make_guide)
                data = g[z][None]
            else:
                data = np.moveaxis(np.asarray(planes[z]), -1, 0).astype(np.float32)  # (C, h, w)
            pyr = laplacian_pyramid(data, L)
            if fused is None:
                fused = [np.zeros_like(a) for a in pyr]
            for k in range(n_sel):
                np.copyto(fused[k], pyr[k], where=(sel[k] == z)[None])
            if p["base"] == "average":
                fused[L] += pyr[L]
        if p["base"] == "average":
            fused[L] /= np.float32(Z)
        out = collapse(fused)  # (C, h, w)

        crop = (slice(halo, h - halo), slice(halo, wd - halo))
        return {
            "fused": np.moveaxis(out, 0, -1)[crop].astype(np.float32, copy=False),
            "index": sel[0][crop].astype(np.float32),
            "confidence": track[0].confidence()[crop],
        }
