"""The audit (issue 18): where a fusion holds values no source plane has.

Zero for a method that only selects source pixels; non-zero, and flagged, exactly where a test
network invents values; the same tiled, untiled, lazy and computed in blocks of rows; on by
default only for the methods that synthesise."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core import audit as A
from napari_edof.core.plan import plan_fusion
from napari_edof.methods._registry import MethodSpec, Param, register, unregister
from napari_edof.training.realistic import Config, render

REGION = (slice(20, 36), slice(8, 40))  # where the test network invents values


@pytest.fixture(scope="module")
def grey16():
    return render(Config(seed=21, scene="fluorescence", colour="grey", noise="moderate", bits=16, n_planes=8,
                         shape=(64, 64))).planes


@pytest.fixture(scope="module")
def rgb8():
    return render(Config(seed=22, scene="photo", colour="rgb", noise="moderate", bits=8, n_planes=6,
                         shape=(64, 64))).planes


class _Inventor:
    """A test "network": the sharpest plane's pixels (hard selection on the guide's local contrast),
    plus ``offset`` inside REGION of the image (run it untiled: the window is the image)."""

    def __init__(self, params, *, device="cpu"):
        self.offset = float(params["offset"])

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        from scipy import ndimage as ndi

        sharp = np.stack([ndi.uniform_filter(ndi.laplace(g.astype(np.float32)) ** 2, 5) for g in guide])
        idx = sharp.argmax(axis=0)
        fused = np.take_along_axis(planes, idx[None, ..., None], axis=0)[0].astype(np.float64)
        fused[REGION] += self.offset
        return {"fused": fused, "index": idx.astype(np.float32), "confidence": np.ones(idx.shape, np.float32)}


@pytest.fixture(scope="module")
def inventor():
    spec = MethodSpec(name="_inventor", summary="test network that invents values in a known region",
                      family="learned", params=(Param("offset", float, 0.0),), synthesises=lambda p: True)
    register(spec)(_Inventor)
    yield "_inventor"
    unregister("_inventor")


def test_zero_for_a_pure_selection(grey16, rgb8):
    for planes in (grey16, rgb8):
        r = ne.fuse(planes, method="focus-select", params={"blend": 0}, audit=True, tile=32)
        assert r.audit.shape == r.index.shape and r.audit.dtype == np.float32
        assert r.audit_mask.shape == r.index.shape and r.audit_mask.dtype == bool
        assert np.all(r.audit == 0) and not r.audit_mask.any()
        assert r.provenance["audit"]["outside_pixels"] == 0 and r.provenance["audit"]["max_distance"] == 0
        # each fused pixel is one of the planes' values there: the audit measured that
        fused = r.fused.reshape(r.fused.shape[:2] + (-1,))
        src = planes.reshape(planes.shape[:3] + (-1,))
        assert np.all((src == fused[None]).all(axis=-1).any(axis=0))


def test_a_blend_is_not_zero_but_never_outside_the_local_range(grey16):
    r = ne.fuse(grey16, method="focus-select", audit=True)  # soft seams (blend 1): a weighted mean
    assert r.audit.max() > 0 and not r.audit_mask.any()


def test_non_zero_exactly_where_a_network_invents_values(grey16, inventor):
    planes = grey16.astype(np.float32) / 65535
    r = ne.fuse(planes, method=inventor, params={"offset": 1.5}, tile=None)  # audited by default: it synthesises
    region = np.zeros(r.index.shape, bool)
    region[REGION] = True
    assert r.audit is not None
    np.testing.assert_array_equal(r.audit_mask, region)
    assert np.all(r.audit[~region] == 0)
    assert np.all(r.audit[region] >= 1.5 - (planes.max() - planes.min()) - 1e-6) and r.audit[region].min() > 0.4
    assert r.provenance["audit"]["outside_pixels"] == region.sum()
    assert "audit: " in r.summary()


def test_integer_network_output_below_the_sources_is_flagged(grey16, inventor):
    r = ne.fuse(grey16, method=inventor, params={"offset": -70000.0}, tile=None)  # clipped to 0 (uint16)
    assert r.fused.dtype == np.uint16 and np.all(r.fused[REGION] == 0)
    region = np.zeros(r.index.shape, bool)
    region[REGION] = True
    np.testing.assert_array_equal(r.audit_mask, region)
    np.testing.assert_array_equal(r.audit[region], np.min(grey16, axis=0)[region].astype(np.float32))
    assert np.all(r.audit[~region] == 0)


def test_one_quantisation_step_is_tolerated():
    planes = np.full((3, 8, 8), 100, np.uint16)
    planes[1] = 110
    fused = np.full((8, 8), 111, np.uint16)  # one step above the local maximum
    fused[2, 3] = 112  # two steps
    fused[5, 5] = 99  # one below the minimum
    fused[6, 1] = 98
    d, m = A.audit_image(planes, fused)
    assert d[0, 0] == 1 and d[2, 3] == 2 and d[5, 5] == 1
    assert set(zip(*np.nonzero(m))) == {(2, 3), (6, 1)}


def test_the_local_range_is_a_3x3_neighbourhood():
    planes = np.zeros((2, 9, 9), np.float32)
    planes[1, 4, 4] = 1.0  # one bright source pixel
    fused = np.full((9, 9), 0.5, np.float32)
    d, m = A.audit_image(planes, fused)
    inside = np.zeros((9, 9), bool)
    inside[3:6, 3:6] = True  # within one pixel of the bright one, 0.5 is within the planes' range
    np.testing.assert_array_equal(m, ~inside)
    assert np.all(d == 0.5)


def test_blocks_of_rows_tiles_and_lazy_runs_agree(grey16, rgb8):
    rng = np.random.default_rng(3)
    for planes in (grey16, rgb8):
        fused = np.clip(planes[0].astype(np.int32) + rng.integers(-40, 40, planes.shape[1:]), 0,
                        np.iinfo(planes.dtype).max).astype(planes.dtype)
        whole = A.audit_image(planes, fused)
        assert whole[1].any() and not whole[1].all()
        for rows in (1, 5, 17):
            part = A.audit_image(planes, fused, block_rows=rows)
            np.testing.assert_array_equal(part[0], whole[0])
            np.testing.assert_array_equal(part[1], whole[1])
        lazy = A.audit(da.from_array(planes, chunks=(2, 16, 32) + planes.shape[3:]), da.from_array(fused))
        np.testing.assert_array_equal(lazy[0].compute(), whole[0])
        np.testing.assert_array_equal(lazy[1].compute(), whole[1])
    # whole runs: pyramid flags overshoots; its tiles are exact, so tiled == untiled == lazy
    untiled = ne.fuse(grey16, method="pyramid", audit=True, tile=None)
    tiled = ne.fuse(grey16, method="pyramid", audit=True, tile=32)
    lazy = ne.fuse(da.from_array(grey16, chunks=(8, 16, 64)), method="pyramid", audit=True, tile=32).compute()
    np.testing.assert_array_equal(tiled.fused, untiled.fused)
    assert untiled.audit_mask.any()
    for r in (tiled, lazy):
        np.testing.assert_array_equal(r.audit, untiled.audit)
        np.testing.assert_array_equal(r.audit_mask, untiled.audit_mask)
    assert lazy.provenance["audit"] == untiled.provenance["audit"]


def test_time_points_and_channels(grey16):
    stack = np.stack([grey16, grey16[::-1]])  # (T, Z, Y, X)
    r = ne.fuse(stack, axes="TZYX", method="focus-select", params={"blend": 0}, audit=True)
    assert r.audit.shape == (2, 64, 64) and np.all(r.audit == 0)
    two = np.stack([grey16, grey16 // 2], axis=1)  # (Z, C, Y, X)
    r = ne.fuse(two, axes="ZCYX", method="pyramid", audit=True)
    assert r.audit.shape == (64, 64)
    d, m = A.audit(two, r.fused, axes="ZCYX")
    np.testing.assert_array_equal(d, r.audit)


def test_on_by_default_only_for_methods_that_synthesise(grey16):
    assert ne.fuse(grey16, method="focus-select").audit is None
    assert not plan_fusion(grey16, method="focus-fuse").audit
    assert plan_fusion(grey16, method="focus-fuse", audit=True).audit
    pytest.importorskip("torch")
    assert plan_fusion(grey16, method="vaeedof").audit
    assert plan_fusion(grey16, method="vaeedof", params={"mode": "latent"}).audit
    assert not plan_fusion(grey16, method="fmb-fn").audit  # the default composes the planes (output=pyramid)
    assert plan_fusion(grey16, method="fmb-fn", params={"output": "network"}).audit
    assert not plan_fusion(grey16, method="fmb-fn", params={"output": "snap"}).audit
    assert not plan_fusion(grey16, method="vaeedof", audit=False).audit
    with pytest.raises(ne.EdofError, match="audit"):
        plan_fusion(grey16, method="focus-fuse", audit="maybe")
