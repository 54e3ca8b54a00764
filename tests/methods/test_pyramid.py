"""Laplacian-pyramid fusion: spec, tile-exactness, halo, parameters (accuracy, dtypes and colour of both
multiscale methods: test_multiscale.py)."""
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.errors import MethodError
from napari_edof.methods import get_method

METHOD = "pyramid"
def test_spec():
    spec = ne.get_method(METHOD)
    assert spec.family == "classical" and spec.summary and spec.citation
    names = {p.name for p in spec.params}
    assert {"levels", "window", "consistency", "base"} <= names
    halos = [spec.halo(spec.resolve({"levels": n})) for n in range(1, 7)]
    assert halos == sorted(halos) and len(set(halos)) == 6  # deeper pyramids read further
    for n in range(1, 7):
        assert spec.tile_multiple(spec.resolve({"levels": n})) == 2**n
    assert spec.halo(spec.resolve({"window": 3})) > spec.halo(spec.defaults())


def test_identical_planes_give_the_image_back():
    """Perfect reconstruction: whatever is selected, equal planes collapse to the plane."""
    s = ne.sample_stack(n_planes=2, shape=(80, 72), seed=7, dtype=np.float32)
    img = s.all_in_focus
    r = ne.fuse(np.stack([img] * 4), method=METHOD, params={"base": "variance"}, tile=None)
    np.testing.assert_allclose(r.fused, img, atol=1e-5)
    assert (r.index == 0).all()  # ties go to the first plane
    assert (r.confidence == 0).all()  # and nothing separates the planes


@pytest.mark.parametrize("params", [{}, {"levels": 2, "window": 3, "base": "variance"},
                                    {"levels": 5, "window": 0, "consistency": False}])
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


def test_tiled_equals_untiled_uint16():
    s = ne.sample_stack(n_planes=8, shape=(100, 90), seed=8)
    whole = ne.fuse(s.stack, method=METHOD, tile=None)
    tiled = ne.fuse(s.stack, method=METHOD, tile=32, overlap=8)
    assert np.abs(whole.fused.astype(np.int64) - tiled.fused).max() <= 1  # rounding of a blend
    np.testing.assert_allclose(tiled.index, whole.index, atol=1e-4)


def _core(impl, data, y0, size, halo):
    win = data[:, y0 - halo : y0 + size + halo, y0 - halo : y0 + size + halo]
    return impl.fuse_tile(win[..., None], win.copy(), halo=halo)


@pytest.mark.parametrize("params", [{}, {"levels": 2, "window": 2, "base": "variance"}, {"levels": 1}])
def test_halo_covers_the_receptive_field(params):
    """A tile's result does not depend on anything beyond its halo; with too small a halo it does
    (so this comparison can fail)."""
    spec, cls = get_method(METHOD)
    p = spec.resolve(params)
    m = spec.tile_multiple(p)
    h = -(-spec.halo(p) // m) * m  # the engine rounds the halo up to the alignment
    data = np.asarray(ne.sample_stack(n_planes=5, shape=(160 + 2 * h, 160 + 2 * h), seed=9,
                                      dtype=np.float32).stack.data)
    impl = cls(p, device="cpu")
    y0, size = h + m, 3 * m
    ref = _core(impl, data, y0, size, h + m)
    out = _core(impl, data, y0, size, h)
    for k in ("fused", "index", "confidence"):
        np.testing.assert_array_equal(out[k], ref[k])
    assert h > m
    small = _core(impl, data, y0, size, m)  # aligned, but too short
    assert not np.allclose(small["fused"], ref["fused"], atol=1e-4)


@pytest.mark.parametrize("bad", [{"levels": 0}, {"levels": 7}, {"window": -1}, {"window": 5},
                                 {"base": "max"}, {"levels": "deep"}, {"stretch": 1}])
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
