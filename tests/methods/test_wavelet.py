"""Stationary-wavelet fusion: accuracy on ground truth, tile-exactness, dtypes, colour, parameters.

Floors were set a few points / dB below what the method measured on the same stacks
(8 planes, 128x128): index accuracy 0.951-0.969 (within one plane 0.989-0.994), PSNR
36.8-38.4 dB grey and 36.2-36.7 dB RGB. Always taking plane 0 scores below 25 dB.
"""
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.errors import MethodError
from napari_edof.methods import get_method
from napari_edof.methods.wavelet import WAVELETS, _reach

from ..conftest import psnr

METHOD = "wavelet"
PEAK = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 60000, np.dtype(np.float32): 1.0}


def _scores(r, s):
    exact = float(np.mean(np.rint(r.index) == s.index))
    near = float(np.mean(np.abs(r.index - s.index) <= 1))
    return exact, near, psnr(r.fused, s.all_in_focus, PEAK[np.dtype(s.stack.dtype)])


def test_spec():
    spec = ne.get_method(METHOD)
    assert spec.family == "classical" and spec.summary and "Forster" in spec.citation
    names = {p.name for p in spec.params}
    assert {"wavelet", "levels", "window", "consistency", "approx", "bands"} <= names
    halos = [spec.halo(spec.resolve({"levels": n})) for n in range(1, 7)]
    assert halos == sorted(halos) and len(set(halos)) == 6  # more levels read further
    for n in range(1, 7):
        assert spec.tile_multiple(spec.resolve({"levels": n})) == 2**n
    assert spec.halo(spec.resolve({"wavelet": "db4"})) > spec.halo(spec.defaults())  # longer filters


def test_reach_of_the_haar_transform():
    # Haar level j averages/differences 2**j samples to the right; synthesis reads them back
    ana, syn = _reach("haar", 3, True)
    assert ana == {1: (0, 1), 2: (0, 3), 3: (0, 7)}
    assert syn == {1: (-1, 0), 2: (-3, 0), 3: (-7, 0)}


@pytest.mark.parametrize("seed", [11, 12])
def test_accuracy_uint16(seed):
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=seed)
    r = ne.fuse(s.stack, method=METHOD, tile=None)
    exact, near, db = _scores(r, s)
    assert exact > 0.92, f"index exact {exact:.3f}"
    assert near > 0.97, f"index within one plane {near:.3f}"
    assert db > 34, f"PSNR {db:.2f} dB"
    assert psnr(s.stack.data[0], s.all_in_focus, 60000) < 25  # what a blind choice gets
    assert r.index.dtype == np.float32 and r.confidence.dtype == np.float32
    assert r.index.min() >= 0 and r.index.max() <= 7
    assert 0 <= r.confidence.min() and r.confidence.max() <= 1
    assert r.confidence.mean() > 0.3  # the finest level separates the planes well here


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_round_trip(dtype):
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=13, dtype=dtype)
    r = ne.fuse(s.stack, method=METHOD)
    assert r.fused.dtype == np.dtype(dtype) and r.fused.shape == (128, 128)
    exact, near, db = _scores(r, s)
    assert exact > 0.92 and near > 0.97
    assert db > 34, f"{np.dtype(dtype).name}: PSNR {db:.2f} dB"


@pytest.mark.parametrize("seed", [12, 13])
def test_rgb(seed):
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=seed, rgb=True, dtype=np.uint8)
    r = ne.fuse(s.stack, method=METHOD)
    assert r.fused.dtype == np.uint8 and r.fused.shape == (128, 128, 3)
    exact, near, db = _scores(r, s)
    assert exact > 0.92 and near > 0.97
    assert db > 33, f"PSNR {db:.2f} dB"
    for c in range(3):  # every channel, not just the guide's luminance
        assert psnr(r.fused[..., c], s.all_in_focus[..., c], 255) > 31


def test_one_index_for_every_channel():
    """With guide=0, channel 0 fuses exactly as the grey stack does, and a channel that is a
    linear function of it comes out as the same function of the fused channel 0: every channel
    takes its coefficients from the planes the guide chose."""
    s = ne.sample_stack(n_planes=6, shape=(96, 80), seed=5, dtype=np.float32)
    other = ne.sample_stack(n_planes=6, shape=(96, 80), seed=6, dtype=np.float32)
    g = np.asarray(s.stack.data)
    rgb = np.stack([g, 2 * g + 0.1, np.asarray(other.stack.data)], axis=-1)
    grey = ne.fuse(g, method=METHOD, tile=None)
    col = ne.fuse(rgb, method=METHOD, tile=None, guide=0)
    np.testing.assert_array_equal(col.index, grey.index)
    np.testing.assert_allclose(col.fused[..., 0], grey.fused, atol=1e-5)
    np.testing.assert_allclose(col.fused[..., 1], 2 * grey.fused + 0.1, atol=2e-5)
    assert np.abs(col.fused[..., 2] - col.fused[..., 0]).mean() > 0.01  # channel 2 is its own


@pytest.mark.parametrize("params", [{"approx": "variance"}, {"approx": "average"}, {"bands": "finest"},
                                    {"wavelet": "db2", "levels": 2}])
def test_identical_planes_give_the_image_back(params):
    """Perfect reconstruction: whatever is selected, equal planes invert to the plane."""
    s = ne.sample_stack(n_planes=2, shape=(80, 72), seed=7, dtype=np.float32)
    img = s.all_in_focus
    r = ne.fuse(np.stack([img] * 4), method=METHOD, params=params, tile=None)
    np.testing.assert_allclose(r.fused, img, atol=1e-5)
    assert (r.index == 0).all()  # ties go to the first plane
    assert (r.confidence == 0).all()  # and nothing separates the planes


@pytest.mark.parametrize("params", [{}, {"wavelet": "db2", "levels": 3, "window": 3, "approx": "variance"},
                                    {"levels": 5, "window": 0, "consistency": False, "approx": "average"},
                                    {"wavelet": "bior2.2", "bands": "finest"}])
@pytest.mark.parametrize("tile,overlap", [(64, None), (48, 0), (32, 16)])
def test_tiled_equals_untiled(params, tile, overlap):
    s = ne.sample_stack(n_planes=6, shape=(128, 120), seed=4, dtype=np.float32)
    whole = ne.fuse(s.stack, method=METHOD, params=params, tile=None)
    tiled = ne.fuse(s.stack, method=METHOD, params=params, tile=tile, overlap=overlap)
    assert tiled.provenance["tiles"] >= 4
    if not tiled.provenance["overlap"]:  # no blending: the very same numbers
        np.testing.assert_array_equal(tiled.fused, whole.fused)
        np.testing.assert_array_equal(tiled.index, whole.index)
        np.testing.assert_array_equal(tiled.confidence, whole.confidence)
    else:  # feathered blending of equal values: float round-off only
        np.testing.assert_allclose(tiled.fused, whole.fused, atol=1e-5)
        np.testing.assert_allclose(tiled.index, whole.index, atol=1e-4)
        np.testing.assert_allclose(tiled.confidence, whole.confidence, atol=1e-5)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_every_wavelet_tiles_exactly(wavelet):
    s = ne.sample_stack(n_planes=4, shape=(72, 64), seed=10, dtype=np.float32)
    params = {"wavelet": wavelet, "levels": 2}
    whole = ne.fuse(s.stack, method=METHOD, params=params, tile=None)
    tiled = ne.fuse(s.stack, method=METHOD, params=params, tile=32, overlap=0)
    np.testing.assert_array_equal(tiled.fused, whole.fused)
    np.testing.assert_array_equal(tiled.index, whole.index)
    assert psnr(whole.fused, s.all_in_focus, 1.0) > 26


def test_tiled_equals_untiled_uint16():
    s = ne.sample_stack(n_planes=8, shape=(100, 90), seed=8)
    whole = ne.fuse(s.stack, method=METHOD, tile=None)
    tiled = ne.fuse(s.stack, method=METHOD, tile=32, overlap=8)
    assert np.abs(whole.fused.astype(np.int64) - tiled.fused).max() <= 1  # rounding of a blend
    np.testing.assert_allclose(tiled.index, whole.index, atol=1e-4)


def _core(impl, data, y0, size, halo):
    win = data[:, y0 - halo : y0 + size + halo, y0 - halo : y0 + size + halo]
    return impl.fuse_tile(win[..., None], win.copy(), halo=halo)


@pytest.mark.parametrize("params", [{}, {"wavelet": "db2", "levels": 3, "approx": "variance"},
                                    {"wavelet": "sym4", "levels": 1, "window": 0},
                                    {"wavelet": "db2", "bands": "finest", "approx": "average"}])
def test_halo_covers_the_receptive_field(params):
    """A tile's result does not depend on anything beyond the declared halo (not rounded up: the
    stationary transform needs no aligned origin, only sizes divisible by 2**levels); with too
    small a halo it does (so this comparison can fail)."""
    spec, cls = get_method(METHOD)
    p = spec.resolve(params)
    m = spec.tile_multiple(p)
    h = spec.halo(p)
    size = -(-(32 + 2 * h) // m) * m - 2 * h  # window sizes divisible by m
    y0 = h + m
    data = np.asarray(ne.sample_stack(n_planes=5, shape=(y0 + size + h + m + 8,) * 2, seed=9,
                                      dtype=np.float32).stack.data)
    impl = cls(p, device="cpu")
    # a window size stays divisible by m when the halo changes by a multiple of m / 2
    ref = _core(impl, data, y0, size, h + m // 2)
    out = _core(impl, data, y0, size, h)
    np.testing.assert_array_equal(out["index"], ref["index"])
    np.testing.assert_array_equal(out["confidence"], ref["confidence"])
    # pywt's inverse averages its phases in an order set by the window's origin: round-off only
    np.testing.assert_allclose(out["fused"], ref["fused"], rtol=0, atol=1e-6)
    small = h % (m // 2)
    assert small < h
    short = _core(impl, data, y0, size, small)
    assert not np.allclose(short["fused"], ref["fused"], atol=1e-4)


@pytest.mark.parametrize("bad", [{"levels": 0}, {"levels": 7}, {"window": -1}, {"window": 5},
                                 {"approx": "max"}, {"wavelet": "db20"}, {"wavelet": "morl"},
                                 {"levels": "deep"}, {"stretch": 1}])
def test_out_of_bounds_parameters_are_refused(bad):
    s = ne.sample_stack(n_planes=3, shape=(32, 32), seed=0)
    with pytest.raises(MethodError):
        ne.fuse(s.stack, method=METHOD, params=bad)


def test_bounds_are_accepted():
    spec = ne.get_method(METHOD)
    for p in spec.params:
        if p.min is not None:
            assert spec.resolve({p.name: p.min})[p.name] == p.min
        if p.max is not None:
            assert spec.resolve({p.name: p.max})[p.name] == p.max
        if p.choices is not None:
            for c in p.choices:
                assert spec.resolve({p.name: c})[p.name] == c


def test_approximation_from_the_index_beats_the_plane_average_on_strong_depth_edges():
    s = ne.sample_stack(n_planes=12, shape=(192, 192), seed=3, scene="photo")
    gt = s.all_in_focus.astype(float)

    def psnr(params):
        f = ne.fuse(s.stack, method="wavelet", params=params).fused.astype(float)
        return 10 * np.log10(60000.0**2 / np.mean((f - gt) ** 2))

    avg, idx, fin = psnr({"approx": "average"}), psnr({}), psnr({"bands": "finest"})
    assert idx > avg + 1.0 and fin > idx
