"""focus-select's robustness options: never-in-focus policies (noise-level flagging), tie
preference, halo reduction at depth edges, the outlier filter, and their tiling behaviour."""
from __future__ import annotations

import numpy as np
import pytest

from napari_edof import api, sample_stack
from napari_edof.core.quality import band_around_edges
from napari_edof.methods.focus_select import SPEC, FocusSelect


@pytest.fixture(scope="module")
def half_flat():
    """Left half: the synthetic sample (texture in focus somewhere); right half: flat grey, only
    noise (sigma 40) in every plane, never in focus."""
    s = sample_stack(n_planes=6, shape=(160, 192), seed=2)
    a = np.asarray(s.stack.data).astype(np.float32)
    a[:, :, 96:] = 30000
    a += np.random.default_rng(0).normal(0, 40, a.shape)
    return np.clip(np.rint(a), 0, 65535).astype(np.uint16)


def test_policies_off_by_default_and_declared():
    d = SPEC.defaults()
    assert d["lowtexture"] == "off" and d["tie"] == "none" and d["edge_refine"] == 0 and d["consistency"] == 0
    assert FocusSelect(d).first_pass == ()
    assert FocusSelect(dict(d, lowtexture="mask")).first_pass == ("noise",)
    assert FocusSelect(dict(d, lowtexture="mask", noise=40.0)).first_pass == ()
    names = {p.name for p in SPEC.params}
    assert {"lowtexture", "noise_k", "noise", "tie", "tie_tol", "edge_refine", "consistency"} <= names


def test_noise_estimated_from_the_stack(half_flat):
    from napari_edof.core.engine import plan_fusion, run_region

    pl = plan_fusion(half_flat, method="focus-select", params={"lowtexture": "mask"}, tile=64)
    impl = pl.make_impl()
    assert pl.is_two_pass(impl)
    frame = np.asarray(pl.stack.canonical()[0])
    gen = run_region(pl, impl, frame, r0=0, s0=0, s1=160, tiles=pl.tiles, pass1=True)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        maps = stop.value
    sigma = impl.reduce(maps)["noise_sigma"]
    assert 32 < sigma < 52  # true 40


@pytest.mark.parametrize("policy", ["nearest", "blend", "mask"])
def test_never_in_focus_flagged_with_confidence_zero(half_flat, policy):
    r = api.fuse(half_flat, method="focus-select", params={"lowtexture": policy})
    conf, idx = np.asarray(r.confidence), np.asarray(r.index)
    assert (conf[:, 104:] == 0).mean() > 0.97  # the flat half is flagged
    assert (conf[:, :88] == 0).mean() < 0.02  # the textured half is not
    if policy == "mask":
        assert np.isnan(idx[:, 104:]).mean() > 0.97 and not np.isnan(idx[:, :88]).any()
        assert (r.labels()[:, 104:] == 0).mean() > 0.97  # napari's "no label" where masked
    else:
        assert np.isfinite(idx).all()
    if policy == "blend":  # a smooth index: no jumps of more than a plane between neighbours
        right = idx[:, 104:]
        assert np.abs(np.diff(right, axis=1)).max() < 1.0 and np.abs(np.diff(right, axis=0)).max() < 1.0
    if policy == "nearest":  # each row continues the plane of the sharp pixels at the border
        assert np.abs(idx[:, 110] - idx[:, 100]).mean() < 1.0
    plain = api.fuse(half_flat, method="focus-select")
    assert (np.asarray(plain.confidence)[:, 104:] > 0).mean() > 0.5  # off: the noise wins confidence


def test_flags_and_tie_edge_consistency_are_tile_exact(half_flat):
    """With a given noise level; an estimated one depends a little on the tiling (64-pixel blocks
    from each tile's origin)."""
    params = {"lowtexture": "mask", "noise": 40.0, "tie": "far", "edge_refine": 3, "consistency": 1}
    whole = api.fuse(half_flat, method="focus-select", params=params, tile=0)
    tiled = api.fuse(half_flat, method="focus-select", params=params, tile=48)
    assert tiled.provenance["tiles"] > 4
    np.testing.assert_array_equal(np.isnan(whole.index), np.isnan(tiled.index))
    np.testing.assert_array_equal(np.nan_to_num(whole.index), np.nan_to_num(tiled.index))
    np.testing.assert_array_equal(whole.fused, tiled.fused)
    np.testing.assert_array_equal(whole.confidence, tiled.confidence)


def test_explicit_noise_skips_the_first_pass(half_flat):
    r = api.fuse(half_flat, method="focus-select", params={"lowtexture": "nearest", "noise": 40.0})
    assert (np.asarray(r.confidence)[:, 104:] == 0).mean() > 0.97
    # tiny noise: little is flagged
    r2 = api.fuse(half_flat, method="focus-select", params={"lowtexture": "nearest", "noise": 1.0})
    assert (np.asarray(r2.confidence)[:, 104:] == 0).mean() < 0.5


def test_tie_preference_near_far():
    """Two planes equally sharp (the same texture), a third blurred: near takes the first of the
    tied planes, far the last, none the argmax."""
    rng = np.random.default_rng(1)
    tex = rng.normal(1000, 200, (64, 64)).astype(np.float32)
    from scipy import ndimage as ndi

    blur = ndi.gaussian_filter(tex, 3)
    stack = np.stack([blur, tex, tex * 1.02, blur]).astype(np.float32)  # plane 2 sharper by 4% in energy
    near = api.fuse(stack, method="focus-select", params={"tie": "near", "tie_tol": 0.1, "smooth": 0, "blend": 0})
    far = api.fuse(stack, method="focus-select", params={"tie": "far", "tie_tol": 0.1, "smooth": 0, "blend": 0})
    none = api.fuse(stack, method="focus-select", params={"smooth": 0, "blend": 0})
    assert np.median(np.rint(near.index)) == 1 and np.median(np.rint(far.index)) == 2
    assert np.median(np.rint(none.index)) == 2
    tight = api.fuse(stack, method="focus-select", params={"tie": "near", "tie_tol": 0.01, "smooth": 0, "blend": 0})
    assert np.median(np.rint(tight.index)) == 2  # 4% apart is no tie at 1%


def test_halo_reduced_at_depth_edges():
    """Against the ground truth of the synthetic sample, in a band around its depth edges: the edge
    refinement beats the naive argmax and the default in index accuracy and PSNR."""
    s = sample_stack(n_planes=8, shape=(256, 256), seed=5, scene="photo")
    band = band_around_edges(s.index, width=6, jump=2)
    aif = s.all_in_focus.astype(np.float64)

    def score(params):
        r = api.fuse(s.stack, method="focus-select", params=params)
        acc = (np.rint(r.index) == s.index)[band].mean()
        mse = np.mean((np.asarray(r.fused, np.float64) - aif)[band] ** 2)
        return acc, 10 * np.log10(60000.0**2 / mse)

    naive = score({"smooth": 0, "blend": 0})
    default = score({})
    refined = score({"edge_refine": 4})
    assert refined[0] > naive[0] + 0.02 and refined[0] > default[0] + 0.02
    assert refined[1] > naive[1] + 2 and refined[1] > default[1] + 2


def test_consistency_filter_removes_isolated_outliers():
    s = sample_stack(n_planes=6, shape=(96, 96), seed=4)
    a = np.asarray(s.stack.data).copy()
    # a few isolated noisy pixels made "sharp" in the last plane
    rng = np.random.default_rng(3)
    ys, xs = rng.integers(10, 86, 30), rng.integers(10, 86, 30)
    a[-1, ys, xs] = 65535
    plain = api.fuse(a, method="focus-select", params={"smooth": 0, "radius": 0})
    filt = api.fuse(a, method="focus-select", params={"smooth": 0, "radius": 0, "consistency": 1})
    err = lambda r: (np.rint(r.index) != s.index).mean()  # noqa: E731
    assert err(filt) < err(plain)


def test_unknown_policy_refused():
    from napari_edof.core.errors import MethodError

    with pytest.raises(MethodError, match="lowtexture='ignore' is not one of"):
        api.fuse(np.zeros((3, 32, 32), np.float32), method="focus-select", params={"lowtexture": "ignore"})
