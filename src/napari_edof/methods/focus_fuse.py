"""Noise-aware depth-guided fusion: the default method.

Real stacks are noisy, continuously defocused, and have regions where no plane is sharp. Hard
per-pixel selection copies one plane's noise, speckles wherever the focus measure is decided by
noise, and cannot reproduce emitters at different depths that overlap (fluorescence). This method
works at two scales, with every decision weighed against the noise measured where it is made.

**Half resolution** (2 x 2 bins: a quarter of the work, half the noise).

- *Focus measure*: the local energy of the binned planes' Laplacian (a band-pass just below the
  finest scale, where detail still beats the noise; a full-resolution Laplacian is mostly noise).
- *Noise floor*: the measure's minimum over planes. The most defocused plane keeps no detail, only
  noise, so this gives the local, signal-dependent (Poisson) noise level with no global estimate.
  It decides where a plane is in focus at all (below). The *noise energy* that weighs detail
  against noise (the fusion's weights, the second depth, the Wiener shrink) is measured the same
  way one scale finer: the minimum over planes of the finest detail's local energy (the same
  window), which a defocused plane's remaining structure barely reaches. The binned Laplacian
  still holds some of it where few planes are far apart (6 planes, 4 pixels of blur per plane:
  up to 1.5x the noise in textured regions), and the weights there came out too soft.
- *Index*: the argmax of the measure plus ``coarse_w`` times its ``coarse_r`` box mean, where the
  pixel's own evidence is weak (a weak region takes the decision of strong evidence nearby instead
  of the spill of a blurred edge; the neighbourhood's weight fades as the fourth power of the
  in-focus threshold over the pixel's best-to-floor ratio, so a pixel with clear evidence of its
  own keeps its decision and depth edges stay sharp),
  with a parabolic sub-plane refinement and a 3 x 3 median. A pixel whose best measure does not
  stand above its noise floor by more than noise alone reaches (the 99.5th percentile of that
  ratio over as many planes of pure noise, times ``unknown_k``), at the pixel or in its
  ``coarse_r`` neighbourhood (then the majority of its 3 x 3 neighbours: no lone specks of either),
  is *unknown*: no plane is in focus there. Its confidence is 0 and its
  index NaN (``unknown="nan"``, the default), interpolated from the known pixels near it
  (``"fill"``, for height views) or the argmax as it came (``"keep"``).
- *Consistency of the map*: that test assumes the floor is the noise every plane shows there.
  Where some plane is cleaner than an integer image's rounding alone makes it (JPEG: a block holds
  a single value in one plane and the block edges of another; noise-free flat areas quantised to
  one value), it is not: the weak evidence of a flat background passes the test and the index there
  is the argmax of the compression's noise, blotches. So within about 50 pixels of such a place, a
  pixel whose own evidence is not strong (its best measure below 16 x the in-focus threshold times
  the floor, the floor taken at least at the rounding) shows its index only if the index around it
  follows a smooth surface: at quarter resolution, the index's variance about a plane fitted over
  the 52 x 52 window (or, where strong evidence lies in that window, a depth edge, over the best of
  its four halves, one of which lies on the pixel's side of the edge) below ``consistency`` (0.15)
  times the variance of a random index. Elsewhere it is unknown. This changes only the map (index,
  confidence): the fusion's base follows the test above, so the fused image does not change. A
  camera's own noise is always above its rounding, so on such stacks the map does not change.
- *Impulses*: every energy is smoothed [1 2 1] over z first: detail in focus persists over
  neighbouring planes, a hot or dead pixel is in one plane only.
- *Fusion*: a Laplacian pyramid. Per level, each plane's weight is ``exp(-(best energy - its
  energy) / (softness x the noise's energy at that level))``: a plane with clearly more detail is
  selected, planes whose differences are within the noise are averaged (flat regions lose noise
  instead of copying it), and detail of emitters at different depths is gathered from each. The
  base is interpolated from the planes around the index (filled from known pixels within
  ``fill``; the plane average beyond), since a small object's base changes with defocus.
- *A second depth*: where emitters at different depths overlap (fluorescence: they add up) or a
  layer shows through another, every plane holds one depth sharp and the other blurred, and a
  convex combination of planes keeps only one of them. Where the (z-smoothed) energy has a second
  peak over the planes, at least two planes from the first, with a dip below half of it in
  between and far above the noise, that plane's band is added (weight ``overlap``), less its 3 x 3
  mean (it adds detail, not a local level: without that, weak-noise photographs lost up to 0.3 dB).

**Full resolution.** The finest detail (each plane minus its up-sampled bins) is weighed the same
way by its own local energy (3 x 3, binned: one weight per 2 x 2 block), then shrunk by a local
Wiener factor ``1 - detail_k x noise / energy`` where it is as weak as the noise. Where the planes
just before and after the sharpest one keep nearly its detail energy (little defocus per plane, as
in microscope stacks of many planes), they are blended in up to ``z_blend``: the same detail with
less noise; a second depth (above) adds its plane's finest detail, less its 5 x 5 mean. The
fused image
is the up-sampled half-resolution fusion plus that detail, clipped per pixel to the range of the
planes' values there (no overshoot at edges, no colour that no plane has); index and confidence
are up-sampled.

All filters are local and position-independent on grids aligned to the image
(``tile_multiple``), and the halo covers their reach, so tiles agree with the whole image. The
work is done one plane at a time where it can be (each plane's maps stay in the CPU's caches), and
the windowed sums run on flattened arrays. Where numba is installed the heaviest passes run as
compiled kernels (:mod:`._focus_fuse_numba`: the same formulas, the same result to float32
rounding); ``NAPARI_EDOF_NUMBA=0`` keeps this module's numpy path.
"""
from __future__ import annotations

import numpy as np

from ..core.focus import _flat_box
from ..core.select import median3
from ._focus_fuse_kernels import built, kernels, numpy_note, wanted
from ._registry import MethodSpec, Param, register

UNKNOWN = ("nan", "fill", "keep")
_F = np.float32
#: a pixel whose best measure stands this many times above the in-focus threshold shows its index
#: whatever the index around it does (depth edges, isolated sharp objects)
_STRONG = _F(16.0)
#: the consistency window's radius (quarter-resolution pixels: 52 x 52 full-resolution pixels, its halves 52 x 28)
_CONSIST_R = 6


def _decision_reach(p: dict) -> int:
    """Half-resolution pixels from which the index and the known mask are read."""
    coarse = 2 * ((p["coarse_r"] + 1) // 2) + 3 if p["coarse_r"] else 0  # a quarter-resolution box
    return 1 + p["radius"] + coarse + 1 + 1  # (+1: the known mask's 3 x 3 majority)


def _index_reach(p: dict) -> int:
    """Half-resolution pixels from which the index (and the base's filled index) is read."""
    return _decision_reach(p) + p["fill"]


def _shown_reach(p: dict) -> int:
    """Half-resolution pixels from which the shown index (the consistency test, the map's fill) is read:
    the consistency window's reach at quarter resolution is 2 r + 1 half-resolution pixels."""
    extra = 2 * _CONSIST_R + 1 + (p["fill"] if p["unknown"] == "fill" else 0) if p.get("consistency", 0) > 0 else 0
    return _decision_reach(p) + extra


def _pyramid_reach(levels: int, extra: int = 0) -> int:
    """Half-resolution pixels of contamination of a ``levels``-level pyramid fusion (bins and
    up-samplings read one pixel of the next level; the energy window adds one, and ``extra`` per
    level: the second depth's 3 x 3 mean)."""
    c = 0
    for _ in range(levels):
        c = 2 * (c + 2) + 2 + extra
    return c


def _base_reach(p: dict) -> int:
    """Half-resolution pixels of contamination of the pyramid's base: the index's, binned down to
    the base's level (a bin is contaminated if any of its pixels is), then up-sampled back level by
    level (each up-sampling reads one pixel of the coarser level)."""
    c, levels = _index_reach(p), p["levels"] - 1
    for _ in range(levels):
        c = -(-c // 2)
    for _ in range(levels):
        c = 2 * c + 1
    return c


def _halo(p: dict) -> int:
    """The index reaches the fused image only through the base, the bands only through their own
    energies and the noise floor (the focus measure's window): the two paths run side by side, so
    the reach is the larger of the two, not their sum (which made the halo 96 pixels instead of 64
    at the defaults, 66 with the second depth: 1.56x the work of a 768-pixel tile instead of 1.37x;
    tiled == untiled is tested exactly at this halo, and 56 pixels already gave identical results on
    realistic stacks before the second depth)."""
    second = 1 if p.get("overlap", 0) > 0 else 0
    bands = _pyramid_reach(p["levels"] - 1, second) + 1 + p["radius"]
    half = max(_base_reach(p), bands, _shown_reach(p)) + 2
    return 2 * half + 2 + p["detail_window"] + 2 + _SECOND_FINE_R * second


def _multiple(p: dict) -> int:
    return max(4, 2 ** p["levels"])  # the neighbourhood evidence is binned twice


def _warm_stack(dtype, rgb: bool) -> np.ndarray:
    """A tiny (5, 176, 176[, 3]) stack that takes every pass of focus-fuse: detail in one plane and,
    weaker, two planes away (a second depth), and a plane flatter than its rounding (the
    consistency test's gate)."""
    rng = np.random.default_rng(0)
    x = rng.integers(100, 140, (5, 176, 176)).astype(np.float32)
    x[1, :, ::3] += 400
    x[4, :, ::3] += 300
    x[0, 60:120, 60:120] = 7
    if np.dtype(dtype) == np.uint8:
        x *= 0.25
    if rgb:
        x = np.stack([x, 0.8 * x, 0.6 * x], axis=-1)
    return x.astype(dtype)


#: the stacks a build compiles the kernels for (dtype, RGB): the common ones; another dtype compiles
#: the few kernels that read its planes at its first use
_BUILD_FOR = ((np.uint16, False), (np.uint8, False), (np.float32, False), (np.uint8, True), (np.uint16, True))


def build_kernels(*, force: bool = False) -> bool:
    """focus-fuse's kernels made ready before the first real tile needs them. Built already
    (:func:`._focus_fuse_kernels.built`) and not ``force``: one tiny 16-bit grey stack through every
    pass loads them from numba's disk cache (about 0.8 s on 2 cores; a stack of another dtype then
    loads only the few kernels that read its planes). Not built yet (the first run after
    installing): a child process builds them first (:func:`._focus_fuse_kernels.start_build`), then
    they load as above; a process that ends meanwhile does not wait for it. ``force``
    (``napari-edof build-kernels``, and that child itself), or no child to be had: they are compiled
    (or loaded) here for the common stacks (:data:`_BUILD_FOR`, each as a whole tile and as a
    strided window of a larger image: about 55 s of one core from nothing), then recorded as built.
    Returns whether the kernels are there."""
    import threading

    from ..core.colour import make_guide
    from ._focus_fuse_kernels import mark_built, start_build

    if kernels() is None:
        return False
    build = force or not built()
    if build and not force:  # the child builds them; waited for here, unless the process is ending
        waiter = start_build()
        while waiter is not None and waiter.is_alive():
            waiter.join(0.25)
            if not threading.main_thread().is_alive():  # (interpreter shutdown: leave it to the child)
                return False
        build = not built()  # (a failed child, or none to be had: compiled here)
    m = FocusFuse(SPEC.defaults(), compiled=True)
    for dtype, rgb in _BUILD_FOR if build else _BUILD_FOR[:1]:
        x = _warm_stack(dtype, rgb)
        planes = x if rgb else x[..., None]
        for p in (planes, planes[:, 4:-4, 4:-4]) if build else (planes,):
            m.fuse_tile(p, make_guide(p, "luminance" if rgb else 0, integers=True), halo=72)
    if build:
        mark_built()
    return True


def _warm() -> bool:
    """``MethodSpec.warm`` (run in a thread by ``core.warmup``): :func:`build_kernels`."""
    return build_kernels()


SPEC = MethodSpec(
    name="focus-fuse",
    summary="Noise-aware depth-guided fusion: planes averaged where none is sharper than the noise, detail "
            "from the sharpest, index marked unknown where no plane is in focus.",
    family="classical",
    params=(
        Param("radius", int, 2, label="Window radius",
              help="focus-measure window radius, in half-resolution pixels", min=1, max=16),
        Param("coarse_r", int, 8, label="Neighbourhood radius", advanced=True,
              help="radius of the neighbourhood evidence added to the focus measure "
              "(half-resolution pixels; 0: off)", min=0, max=32),
        Param("coarse_w", float, 2.0, label="Neighbourhood weight", advanced=True,
              help="weight of the neighbourhood evidence where the pixel's own is at the noise level "
              "(it fades where the pixel's own evidence is clear)", min=0.0, max=100.0),
        Param("levels", int, 3, label="Scales", advanced=True,
              help="scales of the fusion (the tile alignment is 2**levels)", min=1, max=5),
        Param("softness", float, 1.0, label="Softness",
              help="how readily planes are averaged: the weights' temperature in units "
              "of the noise energy (0.05: nearly hard selection)", min=0.05, max=100.0),
        Param("fill", int, 8, label="Fill distance", advanced=True,
              help="the base's index is filled from known pixels this near (half-resolution "
              "pixels; beyond, the plane average)", min=0, max=32),
        Param("detail_k", float, 0.5, label="Fine-detail threshold", advanced=True,
              help="finest detail shrinks where its energy is below detail_k x the "
              "noise's (0: keep all detail, noise included)", min=0.0, max=100.0),
        Param("detail_window", int, 2, label="Fine-detail window", advanced=True,
              help="window radius of the finest detail's energy (pixels)", min=1, max=8),
        Param("z_blend", float, 0.5, label="Blend near-identical neighbours", advanced=True,
              help="the finest detail of the planes just before and after the sharpest one is blended in, up "
              "to this weight, where they keep nearly its energy (little defocus per plane: their average "
              "has less noise); 0: off", min=0.0, max=10.0),
        Param("overlap", float, 1.0, label="Overlapping depths", advanced=True,
              help="detail of a second depth at the same pixel (a second peak of the detail's energy over "
              "the planes, well apart from the first: overlapping emitters, semi-transparent layers) is "
              "added with this weight; 0: one depth per pixel", min=0.0, max=1.0),
        Param("unknown", str, "nan", label="Never-in-focus pixels",
              help="pixels where no plane is in focus: index NaN; fill: interpolated from "
              "the known pixels within 'fill' (NaN beyond); keep: the argmax as it came (confidence is 0 in all "
              "three)", choices=UNKNOWN),
        Param("consistency", float, 0.15, label="Index consistency", advanced=True,
              help="near planes cleaner than the image's rounding (JPEG blocks, flat quantised areas), a pixel "
              "with weak evidence shows its index only if the index around it (52 x 52 px) follows a smooth "
              "surface, within this fraction of a random index's variance; unknown otherwise. The image does "
              "not change; 0: off", min=0.0, max=1.0),
        Param("unknown_k", float, 1.0, label="In-focus threshold", advanced=True,
              help="a pixel is in focus in some plane when its best focus measure stands "
              "above its noise floor by unknown_k x what noise alone reaches (0.5 marks less unknown)",
              min=0.1, max=100.0),
    ),
    halo=_halo,
    tile_multiple=_multiple,
    # the halo is 64 pixels (66 with the second depth); on 16 x 2048 x 2048, 768-pixel tiles ran faster than 1024 (whose
    # working volumes fall out of the caches) and 512 (whose halos are 1.9x their area); memory
    # grows with the planes, so fewer planes per tile get larger tiles
    default_tile=lambda p, n: 768 if n <= 16 else (512 if n <= 32 else 384),
    # a grey 8/16-bit stack's guide is read in its own dtype: the float32 copy of every tile's window was
    # 12 % of a 16 x 904 x 904 tile's time (and its page faults)
    integer_guide=True,
    warm=_warm,
    instance_key=built,  # (a lazy computation after the kernels are built gets an instance that takes them)
    citation="Burt & Adelson, 'The Laplacian pyramid as a compact image code', IEEE Trans. Commun. 31(4), "
             "1983; Nayar & Nakagawa, 'Shape from focus', IEEE TPAMI 16(8), 1994.",
)


# --------------------------------------------------------------------------------------------
# position-independent building blocks on (..., h, w) float32 arrays (h, w even where binned)
# --------------------------------------------------------------------------------------------
def bin2(a: np.ndarray) -> np.ndarray:
    """Mean of 2 x 2 blocks on the array's own grid: (..., 2h, 2w) -> (..., h, w) float32."""
    s = np.add(a[..., 0::2, :], a[..., 1::2, :], dtype=_F)
    out = s[..., 0::2] + s[..., 1::2]
    out *= _F(0.25)
    return out


def up2(a: np.ndarray) -> np.ndarray:
    """Bilinear up-sampling by 2 onto the grid of :func:`bin2` (each bin sits between two pixels:
    weights 3/4 and 1/4), edges replicated: (..., h, w) -> (..., 2h, 2w) float32.

    Along x first, on the small array (the two phases written as one interleaved array), then
    along y, whole rows at a time."""
    h, w = a.shape[-2:]
    lead = a.shape[:-2]
    t = a * _F(0.75)
    q = a * _F(0.25)
    r = np.empty(lead + (h, w, 2), _F)
    ev, od = r[..., 0], r[..., 1]
    np.add(t[..., 1:], q[..., :-1], out=ev[..., 1:])
    ev[..., 0] = a[..., 0]
    np.add(t[..., :-1], q[..., 1:], out=od[..., :-1])
    od[..., -1] = a[..., -1]
    r = r.reshape(lead + (h, 2 * w))
    out = np.empty(lead + (h, 2, 2 * w), _F)
    t = r * _F(0.75)
    r *= _F(0.25)
    np.add(t[..., 1:, :], r[..., :-1, :], out=out[..., 1:, 0, :])
    np.add(t[..., 0, :], r[..., 0, :], out=out[..., 0, 0, :])
    np.add(t[..., :-1, :], r[..., 1:, :], out=out[..., :-1, 1, :])
    np.add(t[..., -1, :], r[..., -1, :], out=out[..., -1, 1, :])
    return out.reshape(lead + (2 * h, 2 * w))


# Windowed sums below run on the flattened array (contiguous shifts by 1 along x and by a row
# along y), so the ``r`` outer rows and columns of their results mix unrelated pixels: every
# caller's halo covers that reach, and those pixels never reach a tile's output.
def _win(f: np.ndarray, n: int, step: int) -> np.ndarray:
    """1D ``f``: ``out[c] = sum(f[c + j * step] for j in -r..r)`` (n = 2r + 1) where that is inside
    ``f``, ``f[c]`` elsewhere."""
    r = n // 2
    L = f.shape[0] - (n - 1) * step
    if L <= 0 or n <= 1:
        return f.copy()
    out = np.empty_like(f)  # (only the ends are copied: the middle is written by the sum)
    a, b = r * step, r * step + L
    out[:a] = f[:a]
    out[b:] = f[b:]
    _flat_box(f, n, step, out=out[a:b])
    return out


def box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Same-size mean over a (2r+1)^2 window of the last two axes (the ``r`` outer rows and
    columns are not meaningful: see above)."""
    if r == 0:
        return a
    w = a.shape[-1]
    n = 2 * r + 1
    o = _win(_win(np.ascontiguousarray(a, _F).reshape(-1), n, 1), n, w)
    o *= _F(1.0 / (n * n))
    return o.reshape(a.shape)


def box3(a: np.ndarray) -> np.ndarray:
    """``box_mean(a, 1)``."""
    return box_mean(a, 1)


def _binned_box3(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``bin2(box3(x))`` of a (2h, 2w) map in one go: weights [1 2 2 1] / 6 along each axis at
    stride 2 (the outer bins are not meaningful)."""
    v = np.add(x[0::2], x[1::2])  # rows 2i, 2i+1
    v *= _F(2)
    v[1:-1] += x[1:-3:2]  # row 2i - 1
    v[1:-1] += x[4::2]  # row 2i + 2
    o = out[:, 1:-1]
    np.add(v[:, 2:-3:2], v[:, 3:-2:2], out=o)
    o *= _F(2)
    o += v[:, 1:-4:2]
    o += v[:, 4::2]
    out[:, 0] = out[:, 1]
    out[:, -1] = out[:, -2]
    out *= _F(1 / 36)
    return out


def laplacian_energy(a: np.ndarray) -> np.ndarray:
    """Same-size squared 4-neighbour Laplacian (the outer rows and columns are not meaningful)."""
    w = a.shape[-1]
    f = np.ascontiguousarray(a, _F).reshape(-1)
    out = np.zeros_like(f)
    s = out[w:-w]
    np.multiply(f[w:-w], _F(4), out=s)
    s -= f[w - 1 : -w - 1]
    s -= f[w + 1 : f.shape[0] - w + 1]
    s -= f[: -2 * w]
    s -= f[2 * w :]
    np.multiply(out, out, out=out)
    return out.reshape(a.shape)


def _majority3(mask: np.ndarray) -> np.ndarray:
    """The 3 x 3 majority of a boolean map (its median, from the windowed count: a tenth of the
    sorting network's time; the outer rows and columns are not meaningful)."""
    return box3(mask.astype(_F)) > _F(0.5)


def _median3(a: np.ndarray, kern=None) -> np.ndarray:
    """The same-size 3 x 3 median (edges replicated); compiled with ``kern`` (the same values)."""
    p = np.pad(a, 1, mode="edge")
    return median3(p) if kern is None else kern.median3(p, np.empty(a.shape, p.dtype))


_NOISE: dict = {}
#: The finest detail's energy floor over planes, as the noise's energy: times this (the minimum of a
#: few windowed energies lies below their mean). Chosen on the tuning stacks (seeds 9100 and 9300 of
#: the realistic generator, never the benchmark's): 0.6 / 0.8 / 1.0 gave 38.46 / 38.53 / 38.46 dB
#: against 38.35 for the binned Laplacian's floor.
_NOISE_K = 0.8


def noise_gains(levels: int, radius: int) -> tuple[float, float, np.ndarray]:
    """For white noise of unit variance at full resolution: the mean focus measure, the energy of
    the finest detail (a plane minus its up-sampled bins) and of each half-resolution pyramid
    level's coefficients."""
    key = (levels, radius)
    if key not in _NOISE:
        g = np.random.default_rng(0).standard_normal((1, 256, 256)).astype(_F)
        b = bin2(g)
        fm = float(box_mean(laplacian_energy(b), radius)[:, 16:-16, 16:-16].mean())
        fine = float(((g - up2(b))[:, 16:-16, 16:-16] ** 2).mean())
        gains, cur = [], b
        for _ in range(levels):
            nxt = bin2(cur)
            gains.append(float(((cur - up2(nxt))[:, 8:-8, 8:-8] ** 2).mean()))
            cur = nxt
        _NOISE[key] = (fm, fine, np.array(gains, _F))
    return _NOISE[key]


_NOISE_RATIO: dict = {}


def noise_ratio(n: int, radius: int, coarse: int = 0) -> float:
    """How far the best of ``n`` planes of pure noise stands above their minimum, in the focus
    measure (the 99.5th percentile of best / floor over pixels, by simulation; cached). With
    ``coarse``, for the measure's quarter-resolution box mean of that radius (the neighbourhood
    evidence): many more samples, so a much smaller ratio."""
    key = (n, radius, coarse)
    if key not in _NOISE_RATIO:
        size = 192 if not coarse else 64 * coarse + 128
        g = np.random.default_rng(1).standard_normal((n, size, size)).astype(_F)
        fm = box_mean(laplacian_energy(bin2(g)), radius)
        if coarse:
            fm = box_mean(bin2(fm), coarse)
        m = 2 * coarse + 8
        fm = fm[:, m:-m, m:-m]
        _NOISE_RATIO[key] = float(np.quantile(fm.max(axis=0) / fm.min(axis=0), 0.995))
    return _NOISE_RATIO[key]


def _ramp(f: np.ndarray, r: int, step: int) -> np.ndarray:
    """1D ``f``: ``out[c] = sum(j * f[c + j * step] for j in -r..r)`` (the ends are not meaningful)."""
    out = np.zeros_like(f)
    a, b = r * step, f.shape[0] - r * step
    if b <= a:
        return out
    o = out[a:b]
    for j in range(1, r + 1):
        t = np.subtract(f[a + j * step : b + j * step], f[a - j * step : b - j * step])
        t *= _F(j)
        o += t
    return out


def _fit_residual(d: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Per pixel, the variance of ``d`` (h, w) about the plane fitted to it by least squares over the
    (2 ry + 1) x (2 rx + 1) window centred there (the outer ``ry`` rows and ``rx`` columns are not
    meaningful). Windowed sums on the flattened map, as :func:`box_mean`."""
    w = d.shape[-1]
    n = _F(1.0 / ((2 * rx + 1) * (2 * ry + 1)))
    f = np.ascontiguousarray(d, _F).reshape(-1)

    def box(x):
        return _win(_win(x, 2 * rx + 1, 1), 2 * ry + 1, w)

    m = box(f) * n
    v = box(f * f) * n
    v -= m * m
    cx = _win(_ramp(f, rx, 1), 2 * ry + 1, w) * n  # covariance with the column offset
    cy = _win(_ramp(f, ry, w), 2 * rx + 1, 1) * n  # and with the row offset
    v -= cx * cx * _F(3.0 / (rx * (rx + 1)))  # (the offsets' variance is r (r + 1) / 3)
    v -= cy * cy * _F(3.0 / (ry * (ry + 1)))
    np.maximum(v, 0, out=v)
    return v.reshape(d.shape)


def consistent_index(d: np.ndarray, n: int, r: int = _CONSIST_R) -> tuple[np.ndarray, np.ndarray]:
    """How far the (h, w) sub-plane index ``d`` of ``n`` planes departs from a smooth surface around
    each pixel: the index's variance about the plane fitted to it over the (2r + 1)^2 window, over
    the variance of an index drawn at random ((n^2 - 1) / 12): about 1 where the index is noise, near 0
    on smooth and tilted surfaces. Returns that and the same over the best of the window's four
    halves (left, right, upper, lower: a pixel beside a depth edge has one on its side, not across
    it). The outer ``r`` rows and columns are not meaningful."""
    a = r // 2
    k = _F(12.0 / (n * n - 1))
    full = _fit_residual(d, r, r)
    full *= k
    h1 = _fit_residual(d, r, a).reshape(-1)  # the halves' windows, shifted to either side below
    h2 = _fit_residual(d, a, r).reshape(-1)
    w = d.shape[-1]
    half = np.full(h1.shape, np.inf, _F)
    for f, s in ((h1, a), (h2, a * w)):
        np.minimum(half[s:], f[:-s], out=half[s:])  # the window to the left (above) of the pixel
        np.minimum(half[:-s], f[s:], out=half[:-s])  # to the right (below)
    half *= k
    return full, half.reshape(d.shape)


def _fill_from(d: np.ndarray, known: np.ndarray, r: int) -> np.ndarray:
    """``d`` where ``known``, elsewhere the mean of the known values within ``r`` (NaN where under 2 %
    of that window is known, or everywhere off it with ``r`` 0)."""
    out = np.where(known, d, np.nan).astype(_F)
    if r:
        num = box_mean(np.where(known, d, 0).astype(_F), r)
        den = box_mean(known.astype(_F), r)
        with np.errstate(divide="ignore", invalid="ignore"):
            near = np.where(den > 0.02, num / den, np.nan).astype(_F)
        out = np.where(known, d, near).astype(_F)
    return out


def sub_plane(vol) -> np.ndarray:
    """Argmax over planes with a parabolic refinement: the sub-plane index, float32.

    ``vol`` is a (Z, h, w) array or a sequence of Z callables giving each plane's (h, w) map (made
    one at a time, so that the maps stay in the caches)."""
    n = len(vol)
    get = (lambda k: vol[k]()) if callable(vol[0]) else (lambda k: vol[k])
    v = np.array(get(0), _F)
    best, left, right, prev = v, v.copy(), v.copy(), v
    k = np.zeros(v.shape, np.int16 if n < 32768 else np.int32)
    just = np.zeros(v.shape, bool)
    for z in range(1, n):
        v = get(z)
        upd = v > best  # the first maximum wins, as in argmax
        np.copyto(right, v, where=just & ~upd)  # the plane after the best one
        np.copyto(left, prev, where=upd)
        np.copyto(best, v, where=upd)
        np.copyto(k, z, where=upd, casting="unsafe")
        just = upd
        prev = v
    den = left - 2 * best + right
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, _F(0.5) * (left - right) / den, _F(0)).astype(_F)
    off[(k == 0) | (k == n - 1)] = 0
    np.clip(off, -0.49, 0.49, out=off)
    return k.astype(_F) + off


def neighbourhood_weight(floor: np.ndarray, best: np.ndarray, kq) -> np.ndarray:
    """How much a pixel's index leans on its neighbourhood's evidence: ``min(1, t)**4`` with ``t =
    kq x floor / best``, the in-focus threshold over the pixel's own best-to-floor ratio. 1 where
    the pixel's own evidence is at the noise level (unknown: the neighbourhood decides); it fades
    fast above it (a pixel with clear evidence of its own keeps it: a depth edge's sharp side does
    not spread over the pixels beside it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(best > 0, kq * floor / best, _F(1)).astype(_F)
    np.minimum(t, _F(1), out=t)
    t *= t
    t *= t
    return t


def interp_planes(p: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(Z, C, h, w) planes interpolated linearly at the (h, w) sub-plane index (NaN: the mean)."""
    n = p.shape[0]
    bad = ~np.isfinite(index)
    d = np.clip(np.where(bad, 0, index), 0, n - 1)
    lo = np.floor(d).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    t = (d - lo).astype(_F)
    a = np.take_along_axis(p, lo[None, None], 0)[0]
    b = np.take_along_axis(p, hi[None, None], 0)[0]
    out = a + (b - a) * t
    if bad.any():
        out[:, bad] = p.mean(axis=0)[:, bad]
    return out


def z_smooth(e: np.ndarray) -> np.ndarray:
    """[1 2 1] / 4 along the planes (ends replicated), in place: detail that is in focus persists
    over neighbouring planes, an impulse (a hot or dead pixel, a photon spike) is in one only."""
    if e.shape[0] < 2:
        return e
    o = e.copy()
    e *= _F(2)
    e[1:] += o[:-1]
    e[0] += o[0]
    e[:-1] += o[1:]
    e[-1] += o[-1]
    e *= _F(0.25)
    return e


def soft_weights(e: np.ndarray, noise: np.ndarray, best: np.ndarray | None = None) -> np.ndarray:
    """exp(-(max energy - energy) / noise) over planes, normalised, in place of ``e``: (Z, h, w)
    (``best``: the maximum over the planes, when known)."""
    if best is None:
        best = e.max(axis=0)
    inv = _F(1) / (noise + _F(1e-30))
    e -= best
    with np.errstate(over="ignore"):  # noise-free pixels: -inf, a weight of 0
        e *= inv
    np.exp(e, out=e)
    e *= _F(1) / e.sum(axis=0)
    return e


_SECOND_DIP = _F(0.5)  # a second peak: the energy between it and the first falls below half of it
_SECOND_SNR = _F(9.0)  # and it stands this many times above the noise's energy
_SECOND_FINE_R = 2  # the finest detail of the second depth loses its 5 x 5 mean (3 x 3 per pyramid level)


def second_peak(ez: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A second, separate depth at each pixel: the plane of the highest other local maximum of the
    (z-smoothed) energy ``ez`` (Z, h, w) at least two planes from the highest, where the energy
    between the two falls below half of it and it stands well above the ``noise``'s energy (h, w).
    Returns that plane (h, w) and where there is one (h, w, bool).

    Where emitters at different depths overlap (fluorescence) or a layer shows through another,
    every plane holds one depth's detail sharp and the other's blurred: the soft weights, a convex
    combination, keep only one of them (or an average of both at reduced contrast)."""
    Z = ez.shape[0]
    k2 = np.zeros(ez.shape[1:], np.intp)
    found = np.zeros(ez.shape[1:], bool)
    if Z < 3:
        return k2, found
    kb = ez.argmax(axis=0)
    top = np.full(ez.shape[1:], -np.inf, _F)  # the energy of the best second peak so far
    floor = noise * _SECOND_SNR
    for order in (range(Z), range(Z - 1, -1, -1)):
        up = order.step == 1
        run = np.full(ez.shape[1:], np.inf, _F)  # the minimum strictly between kb and k
        for k in order:
            e = ez[k]
            beyond = kb < k - 1 if up else kb > k + 1
            ok = beyond & (run < _SECOND_DIP * e) & (e > floor) & (e > top)
            if k > 0:
                ok &= e >= ez[k - 1]
            if k < Z - 1:
                ok &= e >= ez[k + 1]
            np.copyto(top, e, where=ok)
            np.copyto(k2, k, where=ok)
            found |= ok
            np.minimum(run, e, out=run, where=(kb < k) if up else (kb > k))
    return k2, found


def _soft_compiled(kern, e: np.ndarray, out: np.ndarray, noise: np.ndarray, peak_noise=None, blend=None):
    """The compiled soft weights of ``z_smooth(e)`` (unnormalised, into ``out``, which may be ``e``)
    and, with ``peak_noise``, its :func:`second_peak` (k2, found) in the same pass, else None, None;
    with ``blend`` (noise, weight; ``out`` not ``e``), normalised and blended as
    :func:`blend_neighbours` with ``e`` as the energies (``weight`` 0: only normalised)."""
    if peak_noise is None:
        k2, found, peak_noise = np.empty((0, 0), np.intp), np.empty((0, 0), bool), _NONE
    else:
        k2, found = np.empty(e.shape[1:], np.intp), np.empty(e.shape[1:], bool)
    bn, bw = blend if blend is not None else (_NONE, _F(0))
    kern.soft_weights(e, out, noise, peak_noise, _SECOND_SNR, _SECOND_DIP, k2, found, blend is not None, bn, _F(bw),
                      _BLEND_FROM)
    return out, (k2 if k2.size else None), (found if k2.size else None)


def _second_peak_compiled(kern, e: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`second_peak` of ``z_smooth(e)`` by the compiled kernel (``e`` is left as it is)."""
    _, k2, found = _soft_compiled(kern, e, np.empty_like(e), np.ones(e.shape[1:], _F), noise)
    return k2, found


def _second_detail(FG, PB, planes, k2, found):
    """numpy: the finest detail of each 2 x 2 block's second-depth plane (``k2``, where ``found``; 0
    elsewhere): the guide's (H, W) from its detail ``FG`` (Z, H, W) and, with the channels' bins
    ``PB`` (Z, C, h, w), every channel's (C, H, W) (made again for the planes that are chosen)."""
    kf = np.repeat(np.repeat(k2, 2, 0), 2, 1)
    keep = np.repeat(np.repeat(found, 2, 0), 2, 1)
    dl = np.take_along_axis(FG, kf[None], 0)[0]
    dl *= keep
    if PB is None:
        return dl, None
    d = np.zeros((PB.shape[1],) + dl.shape, _F)
    for k in np.unique(k2[found]):
        np.copyto(d, np.moveaxis(planes[k], -1, 0) - up2(PB[k]), where=keep & (kf == k))
    return dl, d


def _less_mean(x: np.ndarray, r: int) -> np.ndarray:
    """``x`` less its (2r+1)^2 box mean, in place (the second depth's detail adds no local mean)."""
    x -= box_mean(x, r)
    return x


_NONE = np.empty((0, 0), _F)  # "no energy" / "no neighbourhood evidence" for the compiled kernels
_NONE3 = np.empty((0, 0, 0), _F)


_BLEND_FROM = _F(0.7)  # a neighbour keeping 70 % of the sharpest plane's detail energy starts to blend in


def blend_neighbours(w: np.ndarray, energy: np.ndarray, noise: np.ndarray, weight: float) -> np.ndarray:
    """In place on normalised (Z, h, w) weights: the planes just before and after each pixel's
    most-weighted plane gain ``weight x clip((r - 0.7) / 0.3, 0, 1)``, where ``r`` is their share of
    that plane's detail energy above the noise (``energy``, ``noise``), and the weights are
    normalised again. With little defocus per plane (many planes, microscope stacks) neighbouring
    planes hold the same detail and their average has less noise; with more defocus per plane
    their energy drops and nothing changes."""
    Z = w.shape[0]
    kb = w.argmax(axis=0)[None]
    eb = np.take_along_axis(energy, kb, 0)[0] - noise
    total = np.ones(eb.shape, _F)
    for dk in (-1, 1):
        kn = kb + dk
        inside = (kn >= 0) & (kn < Z)
        kn = np.clip(kn, 0, Z - 1)
        en = np.take_along_axis(energy, kn, 0)[0] - noise
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(eb > 0, (en / eb - _BLEND_FROM) * (1 / (1 - _BLEND_FROM)), 0)
        g = (np.clip(g, 0, 1) * weight).astype(_F)
        g[~inside[0]] = 0
        np.put_along_axis(w, kn, np.take_along_axis(w, kn, 0) + g[None], 0)
        total += g
    w *= _F(1) / total
    return w


def _weighted_detail(FG, PB, planes, wf):
    """numpy: the planes' finest detail weighted by ``wf`` (one weight per 2 x 2 block): the
    guide's (H, W) and every channel's (C, H, W) (the guide's itself for one channel)."""
    Z, H, W = FG.shape
    h, w = H // 2, W // 2
    rgb = PB is not None
    dl = np.zeros((h, 2, W), _F)
    tmp = np.empty((h, 2, W), _F)
    acc = np.zeros((planes.shape[-1], h, 2, W), _F) if rgb else None
    rep = np.empty((h, w, 2), _F)
    wk = rep.reshape(h, 1, W)  # a block's weight for both of its columns (and, broadcast, rows)
    for k in range(Z):
        rep[..., 0] = wf[k]
        rep[..., 1] = wf[k]
        np.multiply(FG[k].reshape(h, 2, W), wk, out=tmp)
        dl += tmp
        if rgb:
            fk = np.moveaxis(planes[k], -1, 0) - up2(PB[k])
            fk = fk.reshape(-1, h, 2, W)
            fk *= wk
            acc += fk
    dl = dl.reshape(H, W)
    return dl, (dl[None] if not rgb else acc.reshape(-1, H, W))


@register(SPEC)
class FocusFuse:
    def __init__(self, params: dict, *, device: str = "cpu", compiled: bool | None = None):
        self.p = params
        # decided where the instance is made (see _focus_fuse_kernels.wanted and one_shot); ``compiled``
        # True: the kernels whatever (compiled now if need be: the build itself), False: numpy
        self.compiled = wanted() if compiled is None else compiled
        #: why this instance takes the numpy path where the kernels would pay (the run's summary says it)
        self.run_note = numpy_note() if compiled is None and not self.compiled else None

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        p = self.p
        Z, H, W = guide.shape
        C = planes.shape[-1]
        h, w = H // 2, W // 2
        L = p["levels"] - 1  # pyramid levels at half resolution
        fm_gain, fine_gain, gains = noise_gains(max(L, 1), p["radius"])
        rgb = C > 1

        kern = kernels() if self.compiled else None  # compiled passes (numba), or None: numpy
        g_in, p_in = guide, None
        if kern is not None:  # the planes as (Z, C, H, W), every channel's rows contiguous: a tile inside the
            # image is a strided view into it, and the channels of an RGB stack interleave; the kernels' loops
            # run on vector instructions only on contiguous rows (one copy: 18 -> 11 ns a voxel, 16 x 912^2 grey).
            # Copied a plane at a time just before its first pass, which then reads it from the caches (a
            # 16 x 912^2 grey tile alone: 0.114-0.123 -> 0.102-0.111 s, minima of 6 alternating)
            if not guide.flags.c_contiguous:
                guide = np.empty(guide.shape, guide.dtype)
            if C == 1 and guide.dtype == planes.dtype:  # (the guide is the one channel)
                src = guide[:, None]
            else:
                src, p_in = np.empty((Z, C, H, W), planes.dtype), planes

        # ---- one plane at a time (its maps stay in the caches): the finest detail and its energy,
        # the focus measure, and the half-resolution pyramid's bands and energies
        if kern is None:  # the finest detail of the guide: each plane minus its up-sampled bins
            FG = np.empty((Z, H, W), _F)
        else:  # compiled: only the bins are kept, the detail is made again row by row when weighted
            GB = np.empty((Z, h, w), _F)
        EF = np.empty((Z, h, w), _F)  # its 3 x 3 energy, binned: one weight per 2 x 2 block
        FM = np.empty((Z, h, w), _F)  # the focus measure
        E = [np.empty((Z, h >> lvl, w >> lvl), _F) for lvl in range(L)]
        B = [np.empty((Z, C, h >> lvl, w >> lvl), _F) for lvl in range(L)]
        BASE = np.empty((Z, C, h >> L, w >> L), _F)
        PB = np.empty((Z, C, h, w), _F) if rgb else None
        noise_fine = None  # the finest detail's energy floor over planes (the noise's, below)
        for k in range(Z):
            if guide is not g_in:
                np.copyto(guide[k], g_in[k])
            if p_in is not None:
                np.copyto(src[k], np.moveaxis(p_in[k], -1, 0))
            g = guide[k]
            if kern is None:
                gb = bin2(g)
                fg = FG[k]
                np.subtract(g, up2(gb), out=fg)
                _binned_box3(fg * fg, out=EF[k])
            else:
                GB[k] = gb = kern.plane_detail(g, EF[k])
            cg = gb
            if rgb and kern is not None:
                kern.bin_planes(src[k], PB[k])
                cp = PB[k]
            elif rgb:
                PB[k] = cp = bin2(np.moveaxis(planes[k], -1, 0))
            if kern is not None and p["radius"] == 2:  # (the same values, a fifth of the time)
                if noise_fine is None:
                    noise_fine = np.empty((h, w), _F)
                kern.focus_measure5(gb, EF[k], FM[k], noise_fine, k == 0)
            else:
                FM[k] = box_mean(laplacian_energy(gb), p["radius"])
                nf = box_mean(EF[k], p["radius"])  # the finest detail's energy in the measure's window
                # (box_mean makes a new array: the radius is at least 1)
                noise_fine = nf if noise_fine is None else np.minimum(noise_fine, nf, out=noise_fine)
            if kern is not None:
                for lvl in range(L):
                    if rgb:
                        cg = kern.band(cg, np.empty(cg.shape, _F), E[lvl][k])
                        cp = np.stack([kern.band(cp[c], B[lvl][k, c], _NONE) for c in range(C)])
                    else:
                        cg = kern.band(cg, B[lvl][k, 0], E[lvl][k])
                BASE[k] = cp if rgb else cg
                continue
            for lvl in range(L):
                ng = bin2(cg)
                bg = cg - up2(ng)
                E[lvl][k] = box3(bg * bg)
                if rgb:
                    ncp = bin2(cp)
                    np.subtract(cp, up2(ncp), out=B[lvl][k])
                    cp = ncp
                else:
                    B[lvl][k, 0] = bg
                cg = ng
            BASE[k] = cp if rgb else cg

        # ---- half resolution: noise floor, index, known pixels
        kq = _F(p["unknown_k"] * noise_ratio(Z, p["radius"]))
        cw = _F(p["coarse_w"])
        if p["coarse_r"]:  # the neighbourhood's measure at quarter resolution: the same reach, a quarter of the work
            cr = (p["coarse_r"] + 1) // 2
            if kern is not None and cr == 4:  # (the default: the same values, compiled)
                fc = kern.coarse_measure9(FM, np.empty((Z, h // 2, w // 2), _F))
            else:
                fc = box_mean(bin2(FM), cr)
        coarse = p["coarse_r"] and p["coarse_w"]
        if kern is not None:  # the index, and the measure's minimum, maximum and mean over the planes, in one pass
            floor, best, mean = np.empty((h, w), _F), np.empty((h, w), _F), np.empty((h, w), _F)
            d = _median3(kern.sub_plane(FM, fc if coarse else _NONE3, cw, floor, best, mean, kq), kern)
        else:
            floor, best, mean = FM.min(axis=0), FM.max(axis=0), FM.mean(axis=0)
            if coarse:
                cwm = cw * neighbourhood_weight(floor, best, kq)
                d = _median3(sub_plane([lambda z=z, fm=FM: fm[z] + cwm * up2(fc[z]) for z in range(Z)]))
            else:
                d = _median3(sub_plane(FM))
        # local noise variance, full-resolution units (see the module's docstring)
        sigma2 = noise_fine
        sigma2 *= _F(_NOISE_K / fine_gain)
        # in focus somewhere: the best plane stands above the floor by more than noise alone reaches,
        # at the pixel or in its neighbourhood (a flat stack, all zeros, is unknown everywhere)
        known = best > kq * floor
        if p["coarse_r"]:
            kc = _F(p["unknown_k"] * noise_ratio(Z, p["radius"], cr))
            known |= up2(fc.max(axis=0) > kc * fc.min(axis=0)) > 0.5
        known = _majority3(known)  # no lone specks either way
        del FM
        shown = known  # where the index is shown (the fusion's base uses ``known``)
        d_shown = None
        # where some plane is cleaner than an integer image's rounding alone makes it (uniform error, 1/12
        # per channel: a JPEG block or a noise-free flat area quantised to one value has no energy at all),
        # the floor does not measure the noise and the test above passes on the compression's noise: there
        # the index is shown only where the evidence is strong or the index around it is consistent
        qf = _F(fm_gain / (12.0 * C)) if planes.dtype.kind in "ui" else _F(0)
        clean = floor < qf
        m = p["radius"] + 2  # (the measure's outer rows and columns are not meaningful: zeros)
        if p["consistency"] > 0 and Z > 2 and clean[m:-m, m:-m].any():
            suspect = box_mean(bin2(clean.astype(_F)), _CONSIST_R) > 0  # (quarter resolution)
            suspect = np.repeat(np.repeat(suspect, 2, 0), 2, 1)
            strong = best > kq * _STRONG * np.maximum(floor, qf)
            full, half = consistent_index(bin2(d), Z)  # at quarter resolution (a tenth of the work)
            c = _F(p["consistency"])
            edge = box_mean(bin2(strong.astype(_F)), _CONSIST_R) > 0  # strong evidence in the window
            smooth = (full < c) | ((half < c) & edge)
            smooth = np.repeat(np.repeat(smooth, 2, 0), 2, 1)
            drop = _majority3(suspect & ~strong & ~smooth)  # (no lone specks of either)
            shown = known & ~drop
            if p["unknown"] == "fill":  # the map is filled from the shown pixels near (as the base from the known)
                d_shown = _fill_from(d, shown, p["fill"])
        with np.errstate(divide="ignore", invalid="ignore"):
            conf = np.where(best > 0, (best - mean) / (best * _F(1 - 1 / Z)), 0).astype(_F)
        conf[~shown] = 0
        base_index = _fill_from(d, known, p["fill"])

        # ---- half-resolution fusion of every channel (one channel: the guide is that channel)
        bands, s2, bi = [], sigma2, base_index
        ov = _F(p["overlap"])
        for lvl in range(L):
            noise = s2 * _F(p["softness"] * gains[lvl])
            if kern is None:
                ez = z_smooth(E[lvl])
                if ov:
                    k2, found = second_peak(ez, s2 * _F(gains[lvl]))
                wl = soft_weights(ez, noise)
                bands.append(np.einsum("zchw,zhw->chw", B[lvl], wl))
            else:  # the weights (exponentials and second depth included) and the normalised sum compiled
                ex, k2, found = _soft_compiled(kern, E[lvl], E[lvl], noise, s2 * _F(gains[lvl]) if ov else None)
                bands.append(kern.weighted_bands(B[lvl], ex, np.empty((C,) + ex.shape[1:], _F)))
            if ov and kern is not None:  # the second depth's band, less its local mean (the same values)
                x = kern.selected_band(B[lvl], k2, found, np.empty(B[lvl].shape[1:], _F))
                kern.add_less_mean(bands[-1].reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]), ov, 3)
            elif ov:
                x = np.take_along_axis(B[lvl], k2[None, None], 0)[0]
                x *= found
                bands[-1] += ov * _less_mean(x, 1)
            s2, bi = bin2(s2), bin2(bi)  # NaN where any of the four is unknown
        half = interp_planes(BASE, bi)
        for band in bands[::-1]:
            half = up2(half) + band
        del E, B, BASE

        # ---- full resolution: the finest detail, weighted by its own energy, Wiener-shrunk
        blend = p["z_blend"] > 0 and Z > 1
        noise = sigma2 * _F(p["softness"] * fine_gain)
        if kern is None:
            EF0 = EF.copy() if blend else None  # before the smoothing over planes
            ez = z_smooth(EF)
            if ov:
                k2, found = second_peak(ez, sigma2 * _F(fine_gain))
            wf = soft_weights(ez, noise)
            if blend:
                blend_neighbours(wf, EF0, sigma2 * _F(fine_gain), _F(p["z_blend"]))
                del EF0
        else:  # the smoothing, maximum, normalisation and blend compiled (EF is kept unsmoothed)
            wf, k2, found = _soft_compiled(kern, EF, np.empty_like(EF), noise, sigma2 * _F(fine_gain) if ov else None,
                                           blend=(sigma2 * _F(fine_gain), p["z_blend"] if blend else 0))
        del EF
        second = ov and found.any()
        if kern is None:
            dl, detail = _weighted_detail(FG, PB, planes, wf)
            if second:
                dl2, detail2 = _second_detail(FG, PB, planes, k2, found)
            del FG
        else:
            dl = np.zeros((H, W), _F)
            for k in range(Z):
                kern.add_weighted_detail(guide[k], GB[k], wf[k], dl)
            detail = dl[None]
            if rgb:
                detail = np.zeros((C, H, W), _F)
                for k in range(Z):
                    for c in range(C):
                        kern.add_weighted_detail(src[k, c], PB[k, c], wf[k], detail[c])
            if second:
                dl2 = np.empty((H, W), _F)
                kern.selected_detail(guide, GB, k2, found, dl2)
                detail2 = np.empty((C, H, W), _F) if rgb else None
                for c in range(C if rgb else 0):
                    kern.selected_detail(src[:, c], PB[:, c], k2, found, detail2[c])
        del wf
        if second and kern is not None:  # the second depth's finest detail, less its local mean, in every
            # channel (compiled: the same values, in place; the grey detail is ``dl`` itself)
            kern.add_less_mean(dl, dl2, ov, 2 * _SECOND_FINE_R + 1)
            if rgb:
                kern.add_less_mean(detail.reshape(-1, W), detail2.reshape(-1, W), ov, 2 * _SECOND_FINE_R + 1)
            del dl2, detail2
        elif second:
            dl = dl + ov * _less_mean(dl2, _SECOND_FINE_R)
            detail = detail + ov * _less_mean(detail2, _SECOND_FINE_R) if rgb else dl[None]
            del dl2, detail2
        if p["detail_k"] > 0:  # on the guide: one decision for every channel
            gk = _F(fine_gain * p["detail_k"])
            if kern is None:
                e = box_mean(dl * dl, p["detail_window"])
                noise = up2(sigma2)
                noise *= gk
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    beta = 1 - noise / e
                beta = np.nan_to_num(np.clip(beta, 0, 1), nan=0.0).astype(_F)
            else:
                beta = kern.wiener_beta(dl, sigma2, gk, p["detail_window"])
        # never outside what the planes hold there: no overshoot at edges, no invented colour
        c = (slice(halo, H - halo), slice(halo, W - halo))
        if kern is None:
            if p["detail_k"] > 0:
                detail = detail * beta
            fused = up2(half)
            fused += detail
            fused = np.moveaxis(fused, 0, -1)[c]
            src = planes[:, c[0], c[1]]
            np.clip(fused, src.min(axis=0), src.max(axis=0), out=fused)
        else:  # the same steps on the kept rows and columns only
            fused = np.moveaxis(kern.compose(half, detail, beta if p["detail_k"] > 0 else _NONE, src, halo), 0, -1)

        # ---- outputs (cropped by the halo)
        ch = (slice(halo // 2, (H - halo) // 2), slice(halo // 2, (W - halo) // 2))
        if p["unknown"] == "fill":
            out_index = base_index if d_shown is None else d_shown
        else:
            out_index = d
        index = up2(out_index[ch[0].start - 1 : ch[0].stop + 1, ch[1].start - 1 : ch[1].stop + 1])[2:-2, 2:-2]
        conf_f = up2(conf[ch[0].start - 1 : ch[0].stop + 1, ch[1].start - 1 : ch[1].stop + 1])[2:-2, 2:-2]
        kn = np.repeat(np.repeat(shown[ch], 2, 0), 2, 1)
        conf_f[~kn] = 0
        np.clip(conf_f, 0, 1, out=conf_f)
        np.clip(index, 0, Z - 1, out=index)
        if p["unknown"] == "nan":
            index[~kn] = np.nan
        elif p["unknown"] == "fill":  # the up-sampling spreads NaN by one pixel: only where nothing is near
            index[~kn & ~np.repeat(np.repeat(np.isfinite(out_index[ch]), 2, 0), 2, 1)] = np.nan
        return {"fused": fused, "index": index, "confidence": conf_f}
