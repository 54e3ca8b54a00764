"""focus-fuse, the default: quality floors on small realistic stacks, noise-aware averaging, unknown
pixels, channels and tiling."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

import napari_edof as ne
from napari_edof.training.realistic import Config, render


def _psnr(fused, truth):
    m = float(np.iinfo(truth.dtype).max)
    return peak_signal_noise_ratio(truth / m, np.asarray(fused, np.float64) / m, data_range=1.0)


def _index_error(index, truth, informative):
    idx = np.asarray(index, np.float64)
    ok = informative & np.isfinite(idx)
    return float(np.abs(idx - truth)[ok].mean())


# (stack, PSNR floor dB, index error ceiling in planes); the previous default (focus-select) measured
# 26.86 dB / 1.21, 34.80 dB / 0.68 and 23.83 dB / 1.41 on the first three stacks, below every floor
FLOORS = [
    (Config(seed=11, scene="fluorescence", colour="grey", noise="strong", bits=16, n_planes=8, shape=(96, 128)),
     27.7, 1.10),
    (Config(seed=12, scene="photo", colour="rgb", noise="moderate", bits=8, n_planes=6, shape=(96, 128)), 36.0, 0.50),
    (Config(seed=13, scene="brightfield", colour="grey", noise="moderate", bits=16, n_planes=6, shape=(96, 128)),
     28.0, 0.80),
    # few planes far apart (2.5 px of blur per plane) in a textured photograph: with the noise
    # energy taken from the binned Laplacian's floor (which keeps texture there), focus-fuse made
    # 36.94 dB (focus-select 29.99); from the finest detail's floor, 37.27
    (Config(seed=24, scene="photo", colour="grey", noise="moderate", bits=8, n_planes=6, shape=(96, 128)), 37.1, 0.25),
]


@pytest.fixture(scope="module", params=range(len(FLOORS)), ids=[c.label for c, _, _ in FLOORS])
def realistic(request):
    cfg, floor, ceiling = FLOORS[request.param]
    return render(cfg), floor, ceiling


def test_quality_floors_on_realistic_stacks(realistic):
    s, floor, ceiling = realistic
    r = ne.fuse(s.planes)  # the default
    assert r.provenance["method"] == "focus-fuse"
    assert r.fused.dtype == s.planes.dtype and r.fused.shape == s.truth.shape
    assert _psnr(r.fused, s.truth) >= floor
    assert _index_error(r.index, s.index, s.informative) <= ceiling
    # the same floors separate it from plain selection
    old = ne.fuse(s.planes, method="focus-select")
    assert _psnr(old.fused, s.truth) < floor


def test_flat_noisy_region_is_averaged_not_copied():
    """Where no plane is sharper than the noise, the planes are averaged: the fused noise is about
    1/sqrt(N) of one plane's, where selection would copy one plane's noise."""
    rng = np.random.default_rng(0)
    n = 8
    a = (1000 + 20 * rng.standard_normal((n, 96, 96))).astype(np.float32)
    r = ne.fuse(a)
    sd = float(r.fused[16:-16, 16:-16].std())
    assert sd < 20 / np.sqrt(n) * 1.5
    assert float(ne.fuse(a, method="focus-select").fused[16:-16, 16:-16].std()) > 15
    # nothing is in focus: unknown everywhere, confidence 0
    assert np.isnan(r.index).mean() > 0.95 and (r.confidence[np.isnan(r.index)] == 0).all()


def test_unknown_marked_only_where_no_plane_is_in_focus():
    """Left third: a textured object sharp in plane 2; the rest flat with noise. The index is 2 on
    the object, NaN (confidence 0) far from it; near it (within the neighbourhood evidence's reach,
    about 40 pixels) the object's plane. Policies 'keep' and 'fill' keep numbers."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(1)
    tex = ndi.gaussian_filter(rng.standard_normal((96, 224)), 1.0) * 300 + 2000
    planes = []
    for k in range(6):
        p = ndi.gaussian_filter(tex, 0.01 + 1.5 * abs(k - 2))
        p[:, 64:] = 2000
        planes.append(p + 5 * rng.standard_normal(p.shape))
    a = np.stack(planes).astype(np.float32)
    r = ne.fuse(a)
    left, far = r.index[8:-8, 8:52], r.index[8:-8, 128:-8]
    assert np.isfinite(left).all() and np.abs(left - 2).mean() < 0.3
    assert np.isnan(far).mean() > 0.97 and (r.confidence[np.isnan(r.index)] == 0).all()
    near = r.index[8:-8, 66:90]
    assert np.abs(near[np.isfinite(near)] - 2).mean() < 0.5
    keep = ne.fuse(a, params={"unknown": "keep"})
    assert np.isfinite(keep.index).all() and (keep.confidence[np.isnan(r.index)] == 0).all()
    fill = ne.fuse(a, params={"unknown": "fill"})
    # filled from the known pixels within reach (16 pixels), NaN beyond
    edge = next(c for c in range(64, 224) if np.isnan(r.index[8:-8, c]).mean() > 0.5)  # where unknown starts
    band = fill.index[8:-8, edge : edge + 8]
    assert np.isfinite(band).mean() > 0.9 and np.abs(band[np.isfinite(band)] - 2).mean() < 0.5
    # (noise alone passes the test at 0.5% of pixels, by its construction: fill spreads those a little)
    assert np.isnan(fill.index[8:-8, edge + 48 :]).mean() > 0.75
    # labels and masks: unknown pixels belong to no plane
    assert (r.labels()[np.isnan(r.index)] == 0).all() and not r.masks()[:, np.isnan(r.index)].any()


@pytest.mark.parametrize("shape, rgb", [((101, 133), True), ((90, 75), False)])
def test_tiles_agree_with_the_whole_image(shape, rgb):
    cfg = Config(seed=3, scene="photo", colour="rgb" if rgb else "grey", noise="moderate", bits=8, n_planes=5,
                 shape=shape)
    a = render(cfg).planes
    whole = ne.fuse(a, tile=None)
    for tile, overlap in ((32, None), (40, 8)):
        tiled = ne.fuse(a, tile=tile, overlap=overlap)
        assert tiled.provenance["tiles"] >= 4
        assert np.abs(whole.fused.astype(np.int64) - tiled.fused).max() <= 1
        np.testing.assert_array_equal(np.isnan(whole.index), np.isnan(tiled.index))
        np.testing.assert_allclose(whole.index, tiled.index, atol=1e-3)
        np.testing.assert_allclose(whole.confidence, tiled.confidence, atol=1e-3)


@pytest.mark.parametrize("params", [{}, {"levels": 4}, {"fill": 24, "coarse_r": 16, "unknown": "fill"}], ids=str)
def test_halo_covers_the_reach(params):
    """Tiles much smaller than the image (windows of tile + 2 x halo well inside it) give exactly the
    whole image's result: the halo (the larger of the base's and the bands' reach) is enough (on this
    stack 8 pixels less than the default's halo already changed fused values by up to 5 of 65535,
    16 pixels less by 44)."""
    from napari_edof.methods.focus_fuse import SPEC

    a = render(Config(seed=21, scene="brightfield", colour="grey", noise="strong", bits=16, n_planes=6,
                      shape=(352, 320))).planes
    p = dict(SPEC.defaults(), **params)
    tile = 96
    assert 2 * SPEC.halo(p) + tile < min(a.shape[1:]) or SPEC.halo(p) > 100  # the windows are not the image
    whole = ne.fuse(a, tile=None, params=params)
    tiled = ne.fuse(a, tile=tile, overlap=0, params=params)
    assert tiled.provenance["tiles"] >= 9
    np.testing.assert_array_equal(whole.fused, tiled.fused)
    np.testing.assert_array_equal(whole.index, tiled.index)
    np.testing.assert_array_equal(whole.confidence, tiled.confidence)


def test_halo_covers_the_second_depth():
    """The same on a stack of many planes whose emitters overlap at different depths (a second
    depth at many pixels: its band's and finest detail's local means reach further)."""
    from napari_edof.methods.focus_fuse import SPEC

    a = render(Config(seed=5, scene="fluorescence", colour="grey", noise="weak", bits=16, n_planes=24,
                      shape=(288, 288))).planes
    assert 2 * SPEC.halo(SPEC.defaults()) + 96 < 288
    whole = ne.fuse(a, tile=None)
    tiled = ne.fuse(a, tile=96, overlap=0)
    assert tiled.provenance["tiles"] >= 9
    np.testing.assert_array_equal(whole.fused, tiled.fused)


def test_overlapping_emitters_at_two_depths():
    """Emitters that add up (fluorescence), at two depths, overlapping: every plane holds one sharp
    and the other blurred, so one depth per pixel (overlap 0) loses the other's detail; the second
    depth's detail brings the fused image closer to the sum of both in focus."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    em = [np.clip(ndi.gaussian_filter(rng.standard_normal((160, 160)), 1.5), 0, None) * 40000 for _ in range(2)]
    depth = (3, 12)
    planes = [1000 + sum(ndi.gaussian_filter(e, 0.05 + 0.6 * abs(k - d)) for e, d in zip(em, depth)) for k in range(16)]
    a = np.clip(rng.poisson(np.stack(planes)), 0, 65535).astype(np.uint16)
    truth = 1000 + em[0] + em[1]
    c = (slice(16, -16), slice(16, -16))

    def err(overlap):
        f = ne.fuse(a, params={"overlap": overlap}).fused.astype(np.float64)
        return float(np.sqrt(np.mean((f - truth)[c] ** 2)))

    assert err(1.0) < 0.9 * err(0.0)


def test_every_channel_follows_the_guide():
    """A channel fused beside others (guide = that channel) equals the channel fused alone."""
    s = render(Config(seed=4, scene="fluorescence", colour="grey", noise="moderate", bits=16, n_planes=6,
                      shape=(64, 80))).planes
    both = ne.fuse(np.stack([s // 3, s]), axes="CZYX", guide=1)
    alone = ne.fuse(s)
    np.testing.assert_array_equal(both.fused[..., 1], alone.fused)
    np.testing.assert_array_equal(both.index, alone.index)


@pytest.fixture
def numpy_path(monkeypatch):
    """focus-fuse on its numpy path (the compiled kernels switched off) for the test's duration."""
    from napari_edof.methods import _focus_fuse_kernels as k

    monkeypatch.setattr(k, "_KERNELS", [None])
    return k


@pytest.mark.parametrize("cfg", [FLOORS[0][0], FLOORS[1][0]], ids=["grey16", "rgb8"])
def test_compiled_kernels_agree_with_numpy(cfg, numpy_path, monkeypatch):
    """The compiled passes give the numpy path's result (to float32 rounding: at most one grey
    level), tiled and whole."""
    pytest.importorskip("numba")
    s = render(cfg)
    ref = ne.fuse(s.planes, tile=64)
    monkeypatch.setattr(numpy_path, "_KERNELS", [])  # compiled again (numba is installed)
    assert numpy_path.kernels() is not None
    for tile in (64, 4096):
        r = ne.fuse(s.planes, tile=tile)
        assert np.abs(r.fused.astype(np.int64) - ref.fused).max() <= 1
        assert np.mean(r.fused != ref.fused) < 1e-3
        np.testing.assert_allclose(r.index, ref.index, atol=1e-5)  # NaN where NaN
        np.testing.assert_allclose(r.confidence, ref.confidence, atol=1e-5)


def test_compiled_focus_measure_is_numpys_exactly():
    """The compiled focus measure (radius 2) and noise energy are the numpy path's, bit for bit (the
    same additions in the same order: the index's argmax must not change), maps of any size."""
    numba_kernels = pytest.importorskip("napari_edof.methods._focus_fuse_numba")
    from napari_edof.methods import focus_fuse as ff

    rng = np.random.default_rng(5)
    for h, w in ((64, 48), (9, 7), (5, 6), (3, 4), (2, 2)):
        gbs = [(rng.random((h, w)) ** 3 * 1000).astype(np.float32) for _ in range(3)]
        efs = [(rng.random((h, w)) * 50).astype(np.float32) for _ in range(3)]
        nf = np.empty((h, w), np.float32)
        ref_nf = None
        for k, (gb, ef) in enumerate(zip(gbs, efs)):
            fm = np.empty((h, w), np.float32)
            numba_kernels.focus_measure5(gb, ef, fm, nf, k == 0)
            np.testing.assert_array_equal(fm, ff.box_mean(ff.laplacian_energy(gb), 2))
            e = ff.box_mean(ef, 2)
            ref_nf = e if ref_nf is None else np.minimum(ref_nf, e)
            np.testing.assert_array_equal(nf, ref_nf)


def test_compiled_second_peak_is_numpys():
    """The compiled second-depth search (smoothing over the planes included) picks the numpy
    path's planes, and the compiled second-depth detail is the numpy path's."""
    numba_kernels = pytest.importorskip("napari_edof.methods._focus_fuse_numba")
    from napari_edof.methods import focus_fuse as ff

    rng = np.random.default_rng(2)
    for Z in (2, 3, 7, 16):
        e = (rng.random((Z, 40, 48)) ** 4 * 100).astype(np.float32)
        noise = (rng.random((40, 48)) * 2).astype(np.float32)
        k2, found = ff.second_peak(ff.z_smooth(e.copy()), noise)
        ck, cf = ff._second_peak_compiled(numba_kernels, e, noise)
        np.testing.assert_array_equal(cf, found)
        np.testing.assert_array_equal(ck[found], k2[found])
        assert found.any() == (Z >= 7)  # (three planes: only the two ends, rarely)
    for zt in (3, 4, 5, 8, 16, 31):  # energies in a few levels: ties everywhere (the first maximum wins)
        for q in (3, 8):
            e = np.round((rng.random((zt, 30, 37)) ** 4) * q).astype(np.float32)
            noise = (rng.random((30, 37)) * 0.2).astype(np.float32)
            k2t, ft = ff.second_peak(ff.z_smooth(e.copy()), noise)
            ck, cf = ff._second_peak_compiled(numba_kernels, e, noise)
            np.testing.assert_array_equal(cf, ft)
            np.testing.assert_array_equal(ck[ft], k2t[ft])
    g = rng.random((Z, 80, 96)).astype(np.float32) * 1000
    gb = ff.bin2(g)
    out = np.empty((80, 96), np.float32)
    numba_kernels.selected_detail(g, gb, k2, found, out)
    ref, _ = ff._second_detail(g - ff.up2(gb), None, None, k2, found)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_compiled_median_is_numpys():
    """The compiled 3 x 3 median of the index (its sorting network pixel by pixel) gives numpy's
    values exactly, ties included."""
    from napari_edof.core.select import median3
    from napari_edof.methods._focus_fuse_kernels import kernels

    kern = kernels()
    if kern is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7)
    for shape in ((61, 47), (5, 9), (1, 1)):
        for step in (0, 1.0):  # continuous values, and quantised ones with many ties
            a = (rng.random(shape) * 15).astype(np.float32)
            if step:
                a = np.round(a / step).astype(np.float32) * np.float32(step)
            p = np.pad(a, 1, mode="edge")
            np.testing.assert_array_equal(kern.median3(p, np.empty(a.shape, np.float32)), median3(p))


def test_numba_switch(monkeypatch):
    """NAPARI_EDOF_NUMBA=0 selects the numpy path."""
    from napari_edof.methods import _focus_fuse_kernels as k

    monkeypatch.setattr(k, "_KERNELS", [])
    monkeypatch.setenv("NAPARI_EDOF_NUMBA", "0")
    assert k.kernels() is None


def test_blending_near_identical_neighbours_lowers_noise():
    """With little defocus per plane (neighbouring planes hold the same detail), blending the
    sharpest plane's neighbours into the finest detail leaves less noise; the blend is off at 0.
    (0.25 px of blur per plane: at 0.12 even the farthest planes keep fine detail above the noise,
    the weights average them all already, and the blend changes nothing measurable.)"""
    rng = np.random.default_rng(3)
    from scipy import ndimage as ndi

    truth = ndi.gaussian_filter(rng.standard_normal((128, 128)), 0.8) * 3000 + 20000
    planes = [ndi.gaussian_filter(truth, 0.05 + 0.25 * abs(k - 8)) for k in range(16)]  # 0.25 px per plane
    a = np.stack(planes) + rng.normal(0, 150, (16, 128, 128))
    a = np.clip(a, 0, 65535).astype(np.uint16)
    c = (slice(16, -16), slice(16, -16))

    def err(blend):
        f = ne.fuse(a, params={"z_blend": blend}).fused.astype(np.float64)
        return float(np.sqrt(np.mean((f - truth)[c] ** 2)))

    assert err(0.5) < 0.95 * err(0.0)


def test_blend_neighbours_only_where_neighbours_keep_the_detail():
    from napari_edof.methods.focus_fuse import blend_neighbours

    w = np.zeros((4, 1, 3), np.float32)
    w[1] = 1  # plane 1 is the sharpest everywhere
    e = np.zeros((4, 1, 3), np.float32)
    e[1] = 10
    e[0, 0] = [9.9, 5.0, 8.5]  # the plane before keeps 99 %, 50 %, 85 % of the energy
    e[2, 0] = [9.9, 5.0, 0.0]
    out = blend_neighbours(w.copy(), e, np.zeros((1, 3), np.float32), 0.5)
    np.testing.assert_allclose(out.sum(axis=0), 1, rtol=1e-6)
    assert out[0, 0, 0] > 0.2 and out[2, 0, 0] > 0.2  # near-identical: blended
    np.testing.assert_allclose(out[:, 0, 1], [0, 1, 0, 0])  # half the energy: untouched
    assert 0 < out[0, 0, 2] < out[0, 0, 0] and out[2, 0, 2] == 0
    np.testing.assert_allclose(blend_neighbours(w.copy(), e, np.zeros((1, 3), np.float32), 0.0), w)


def test_pure_noise_is_unknown_without_lone_specks():
    """Planes of nothing but Poisson noise: no plane is in focus anywhere. The per-pixel test lets
    about 1 % through by chance (0.8 % before the majority filter on this stack); the 3 x 3 majority
    of the known mask leaves at most a few small clusters."""
    a = np.random.default_rng(5).poisson(400, (8, 128, 128)).astype(np.uint16)
    r = ne.fuse(a)
    assert np.isfinite(r.index).mean() < 0.004
    assert (r.confidence[~np.isfinite(r.index)] == 0).all()


def _jpeg_like(seed=0, n=5, shape=(192, 256), sharp=2):
    """uint8 planes: a textured disc sharp in plane ``sharp`` on a flat background whose every plane is
    flattened block by block (the 8 x 8 means of the noisy plane, with a little jitter, rounded): JPEG's
    flat blocks, a level or two apart, a different pattern in each plane. Returns planes and the disc."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - H / 2) ** 2 + (xx - W / 4) ** 2 < (H / 4) ** 2
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 1.0) * 60 * disc
    slow = 3 * np.sin(xx / 23.0) * np.cos(yy / 17.0)
    near = ndi.binary_dilation(disc, iterations=12)
    out = []
    for k in range(n):
        p = 180 + ndi.gaussian_filter(tex, 0.01 + 2.0 * abs(k - sharp)) + slow + 1.2 * rng.standard_normal(shape)
        blocks = p.reshape(H // 8, 8, W // 8, 8).mean(axis=(1, 3)) + 0.7 * rng.standard_normal((H // 8, W // 8))
        p = np.where(near, p, np.repeat(np.repeat(blocks, 8, 0), 8, 1))
        out.append(np.clip(np.round(p), 0, 255).astype(np.uint8))
    return np.stack(out), disc


def test_compressed_flat_background_is_unknown_not_blotches():
    """JPEG-like planes: in the flat background some planes' blocks hold one value (no energy) and others
    the block edges, so the noise floor is not the noise and the in-focus test passes there (94 % of the
    background before the consistency test). The map shows the disc's plane and marks the background
    unknown; the fused image does not change."""
    a, disc = _jpeg_like()
    far = np.zeros(disc.shape, bool)
    far[8:-8, a.shape[2] // 2 + 40 : -8] = True
    before = ne.fuse(a, params={"consistency": 0})
    assert np.isfinite(before.index[far]).mean() > 0.8  # the blotches the test removes
    r = ne.fuse(a)  # the default
    assert np.isfinite(r.index[far]).mean() < 0.05
    assert np.isfinite(r.index[disc]).all() and np.abs(r.index[disc] - 2).max() < 0.5
    assert (r.confidence[~np.isfinite(r.index)] == 0).all()
    np.testing.assert_array_equal(r.fused, before.fused)


@pytest.mark.parametrize("params", [{}, {"unknown": "fill"}], ids=str)
def test_consistency_test_tiles_agree_with_the_whole_image(params):
    from napari_edof.methods.focus_fuse import SPEC

    a, _ = _jpeg_like(seed=1, shape=(320, 352))
    whole = ne.fuse(a, tile=None, params=params)
    tiled = ne.fuse(a, tile=96 if SPEC.halo(dict(SPEC.defaults(), **params)) < 100 else 128, overlap=0, params=params)
    assert tiled.provenance["tiles"] >= 6
    assert np.isnan(whole.index).mean() > 0.3  # the test did mark the background
    np.testing.assert_array_equal(whole.index, tiled.index)
    np.testing.assert_array_equal(whole.confidence, tiled.confidence)


def test_consistent_index_measures_departure_from_a_smooth_surface():
    from napari_edof.methods.focus_fuse import consistent_index

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :80].astype(np.float32)
    c = (slice(12, -12), slice(12, -12))
    tilted = 1 + 0.05 * xx + 0.03 * yy  # a tilted surface, 8 planes
    full, half = consistent_index(tilted, 8)
    assert full[c].max() < 1e-3 and half[c].max() < 1e-3
    noise = rng.integers(0, 8, (64, 80)).astype(np.float32)  # an index drawn at random
    full, half = consistent_index(noise, 8)
    assert 0.7 < np.median(full[c]) < 1.3 and half[c].min() > 0.3
    step = np.where(xx < 40, 1.0, 6.0).astype(np.float32)  # a depth edge: its sides are smooth, across it is not
    full, half = consistent_index(step, 8)
    assert full[c][:, 40 - 12 - 2 : 40 - 12 + 2].min() > 0.15  # (columns beside the edge, in c's frame)
    assert half[c].max() < 1e-3


def test_noisy_stacks_maps_do_not_change():
    """Where every plane shows at least its rounding's noise (a camera's 16 bits), the consistency test
    does not apply: the map is the in-focus test's. (8-bit stacks have flat planes where they saturate:
    there it does.)"""
    for cfg in (FLOORS[0][0], FLOORS[2][0]):  # 16-bit fluorescence and bright field
        a = render(cfg).planes
        np.testing.assert_array_equal(ne.fuse(a).index, ne.fuse(a, params={"consistency": 0}).index)


@pytest.mark.parametrize("work, loaded, env, numpy_path", [
    (10**6, False, None, True),  # a small one-shot job, numba not loaded: the numpy path
    (10**9, False, None, False),  # enough work to pay for loading numba
    (10**6, True, None, False),  # numba already loaded (the widget's warm-up, an earlier job)
    (10**6, False, "1", False),  # forced
])
def test_one_shot_jobs_take_the_numpy_path_when_numba_would_not_pay(work, loaded, env, numpy_path, monkeypatch):
    from napari_edof.methods import _focus_fuse_kernels as k
    from napari_edof.methods.focus_fuse import FocusFuse

    monkeypatch.setattr(k, "_numba_loaded", lambda: loaded)
    if env is None:
        monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    else:
        monkeypatch.setenv("NAPARI_EDOF_NUMBA", env)
    with k.one_shot(work) as chosen:
        assert chosen is numpy_path
        assert FocusFuse({}).compiled is (not numpy_path)
    assert FocusFuse({}).compiled  # outside: the kernels whenever they are there


def test_one_shot_numpy_path_gives_the_numpy_result(numpy_path, monkeypatch):
    """Inside ``one_shot`` a small job's result is the numpy path's, to the bit."""
    s = render(FLOORS[0][0]).planes
    ref = ne.fuse(s)  # numpy_path fixture: kernels switched off
    monkeypatch.setattr(numpy_path, "_KERNELS", [])
    monkeypatch.setattr(numpy_path, "_numba_loaded", lambda: False)
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    with numpy_path.one_shot(s.size):
        r = ne.fuse(s)
    np.testing.assert_array_equal(r.fused, ref.fused)
    np.testing.assert_array_equal(r.index, ref.index)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_integer_guide_is_read_in_place(dtype, compiled, numpy_path, monkeypatch):
    """A grey 8/16-bit stack's guide reaches fuse_tile as a view of the window in its own dtype (no
    float32 copy per tile), with the same result as the float32 guide, on both paths; float stacks
    and colour stacks still get a float32 guide."""
    import dataclasses

    from napari_edof.methods import focus_fuse as ff
    from napari_edof.methods._registry import get_method

    if compiled:
        pytest.importorskip("numba")
        monkeypatch.setattr(numpy_path, "_KERNELS", [])  # compiled again (numba is installed)
    cfg = Config(seed=11, scene="fluorescence", colour="grey", noise="strong", bits=16, n_planes=8, shape=(96, 128))
    a = render(cfg).planes
    if dtype == np.uint8:
        a = (a >> 8).astype(np.uint8)
    seen = []
    orig = ff.FocusFuse.fuse_tile

    def spy(self, planes, guide, **kw):
        seen.append((guide.dtype, np.shares_memory(guide, planes)))
        return orig(self, planes, guide, **kw)

    monkeypatch.setattr(ff.FocusFuse, "fuse_tile", spy)
    got = ne.fuse(a, tile=64)
    assert seen and all(d == dtype and shared for d, shared in seen)
    spec, _ = get_method("focus-fuse")
    assert spec.integer_guide
    import napari_edof.core.spec as reg

    monkeypatch.setitem(reg._REGISTRY, "focus-fuse", (dataclasses.replace(spec, integer_guide=False),
                                                       reg._REGISTRY["focus-fuse"][1]))
    seen.clear()
    ref = ne.fuse(a, tile=64)
    assert all(d == np.float32 and not shared for d, shared in seen)
    np.testing.assert_array_equal(got.fused, ref.fused)
    np.testing.assert_array_equal(got.index, ref.index)
    np.testing.assert_array_equal(got.confidence, ref.confidence)
    seen.clear()
    ne.fuse(a.astype(np.float32), tile=64)
    assert all(d == np.float32 for d, _ in seen)
