"""Stationary-wavelet fusion: spec, tile-exactness, halo, parameters (accuracy, dtypes and colour of both
multiscale methods: test_multiscale.py)."""
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.errors import MethodError
from napari_edof.methods import get_method
from napari_edof.methods.wavelet import WAVELETS, _reach

from ..conftest import psnr

METHOD = "wavelet"
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
