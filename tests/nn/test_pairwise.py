"""Pairs to stacks (napari_edof.nn.pairwise): strategies, order independence, small-area filter."""
import subprocess
import sys

import numpy as np
import pytest

from napari_edof.nn.pairwise import contrast_decide, fuse_stack_pairwise, mean_composite, small_area_filter


def _stack(n=6, shape=(64, 64), seed=1):
    """A synthetic stack with ground truth (the project's synthesiser), guide in [0, 1]."""
    from napari_edof.training.datasets import StackDataset

    it = StackDataset(seed=seed, crop=shape, n_range=(n, n), scenes={"cells": 0.5, "dead_leaves": 0.5},
                      augment=False)[0]
    return it["stack"], it["index"]


def test_module_does_not_import_torch():
    code = ("import sys, napari_edof.nn.pairwise as p; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("strategy", ["reference", "sequential", "round-robin"])
def test_shapes_and_accuracy(strategy):
    planes, truth = _stack()
    idx, conf = fuse_stack_pairwise(planes, contrast_decide(), strategy=strategy)
    assert idx.shape == truth.shape and np.issubdtype(idx.dtype, np.integer)
    assert conf.dtype == np.float32 and 0 <= conf.min() and conf.max() <= 1
    assert 0 <= idx.min() and idx.max() < planes.shape[0]
    assert (np.abs(idx - truth) <= 1).mean() > 0.6


@pytest.mark.parametrize("kw", [{}, {"reference": "mean"}, {"symmetric": True, "refine": 1},
                                {"strategy": "round-robin"}])
def test_order_independence_exact(kw):
    planes, _ = _stack(n=7, seed=3)
    decide = contrast_decide()
    idx, conf = fuse_stack_pairwise(planes, decide, **kw)
    perm = np.random.default_rng(1).permutation(planes.shape[0])
    idx_p, conf_p = fuse_stack_pairwise(planes[perm], decide, **kw)
    np.testing.assert_array_equal(perm[idx_p], idx)  # the same plane, up to the permutation
    np.testing.assert_array_equal(conf_p, conf)


def test_mean_composite_is_order_free():
    planes = np.random.default_rng(0).random((9, 16, 16), dtype=np.float32)
    m = mean_composite(planes)
    assert np.array_equal(m, mean_composite(planes[::-1]))
    np.testing.assert_allclose(m, planes.mean(0), atol=1e-6)


def test_sequential_depends_on_order():
    planes, _ = _stack(n=7, seed=3)
    decide = contrast_decide(bias=0.5)
    idx, _ = fuse_stack_pairwise(planes, decide, strategy="sequential")
    perm = np.arange(7)[::-1]
    idx_p, _ = fuse_stack_pairwise(planes[perm], decide, strategy="sequential")
    assert (perm[idx_p] != idx).mean() > 0.01


def test_sequential_accumulates_error_reference_does_not():
    """Contrast rising by 10 % per plane and a model that prefers its first input (the running
    composite) by a margin of a few planes' worth: each sequential step keeps the composite until
    a plane beats it by that margin, so the result falls short of the sharpest plane, and the
    shortfall depends on where the chain happens to switch. Every plane scored against one
    common reference lands on the sharpest plane: the bias is the same for all and cancels."""
    rng = np.random.default_rng(0)
    tex = rng.standard_normal((48, 48)).astype(np.float32)
    n = 6
    planes = np.stack([0.5 + 0.02 * 1.1 ** k * tex for k in range(n)]).astype(np.float32)
    # log energy ratio of neighbours = 2 log 1.1 ~ 0.19; bias / gain = 0.5: a switch needs 3 planes
    decide = contrast_decide(gain=4.0, bias=2.0)
    seq, _ = fuse_stack_pairwise(planes, decide, strategy="sequential")
    ref, _ = fuse_stack_pairwise(planes, decide)
    assert (seq == 3).mean() > 0.95  # 0 -> 3, then 4 and 5 never beat 3 by the margin
    assert (ref == n - 1).mean() > 0.95  # the sharpest
    # the reversed stack (sharpest first) is kept by sequential: its answer depends on the order
    seq_r, _ = fuse_stack_pairwise(planes[::-1].copy(), decide, strategy="sequential")
    assert (seq_r == 0).mean() > 0.95
    # with an unbiased rule both agree
    seq0, _ = fuse_stack_pairwise(planes, contrast_decide(), strategy="sequential")
    assert (seq0 == n - 1).mean() > 0.95


def test_decide_is_batched():
    planes, _ = _stack(n=5)
    calls = []

    def decide(a, b):
        assert a.shape == b.shape and a.ndim == 3 and a.dtype == np.float32
        calls.append(a.shape[0])
        return contrast_decide()(a, b)

    fuse_stack_pairwise(planes, decide, batch=2)
    assert calls == [2, 2, 1]


def test_single_plane():
    idx, conf = fuse_stack_pairwise(np.zeros((1, 8, 8), np.float32), contrast_decide())
    assert (idx == 0).all() and (conf == 1).all()


def test_bad_arguments():
    with pytest.raises(ValueError):
        fuse_stack_pairwise(np.zeros((2, 8, 8), np.float32), contrast_decide(), strategy="nope")
    with pytest.raises(ValueError):
        fuse_stack_pairwise(np.zeros((8, 8), np.float32), contrast_decide())


# --------------------------------------------------------------------------- small-area filter
def test_small_area_filter_flips_small_islands():
    m = np.zeros((100, 100), np.uint8)
    m[:, 50:] = 1
    m[10:15, 10:15] = 1   # 25 px island of 1 in the 0 half: < 1 % (100 px) -> flipped
    m[60:65, 70:75] = 0   # a hole of 0 in the 1 half: flipped
    m[70:85, 10:25] = 1   # 225 px: kept
    out = small_area_filter(m, 0.01)
    assert out.dtype == m.dtype
    assert (out[10:15, 10:15] == 0).all() and (out[60:65, 70:75] == 1).all()
    assert (out[70:85, 10:25] == 1).all()
    assert (out[:, :50].sum() == 225) and (out[:, 50:] == 1).all()


def test_small_area_filter_n_labels_and_pixels():
    lab = np.zeros((40, 40), np.int16)
    lab[:, 20:] = 2
    lab[5:7, 5:7] = 1      # 4 px of plane 1 in plane 0's region -> 0
    lab[30:32, 30:32] = 1  # 4 px of plane 1 in plane 2's region -> 2
    out = small_area_filter(lab, 10)  # absolute pixel count
    assert (out[5:7, 5:7] == 0).all() and (out[30:32, 30:32] == 2).all()
    assert set(np.unique(out)) == {0, 2}
    # regions at or above the threshold stay
    assert np.array_equal(small_area_filter(lab, 4), lab)


def test_small_area_filter_all_small_is_unchanged():
    lab = (np.indices((20, 20)).sum(0) % 2).astype(np.uint8)  # a checkerboard: every region 1 px
    assert np.array_equal(small_area_filter(lab, 0.01), lab)


def test_reference_strategy_uses_a_decides_against_route():
    """A ``decide`` with ``against(planes, ref)`` answers the reference strategy in one call per
    round (symmetric scores and the other strategies keep ``decide``); same index as without."""
    rng = np.random.default_rng(3)
    planes = rng.random((5, 24, 20)).astype(np.float32)
    base = contrast_decide(smooth=2)
    calls = []

    def decide(a, b):
        return base(a, b)

    def against(p, ref):
        calls.append(p.shape)
        return base(p, np.broadcast_to(ref, p.shape))

    decide.against = against
    for kw in ({}, {"refine": 1}, {"symmetric": True}):
        calls.clear()
        i1, c1 = fuse_stack_pairwise(planes, decide, **kw)
        i0, c0 = fuse_stack_pairwise(planes, base, **kw)
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_array_equal(c1, c0)
        assert calls == [(5, 24, 20)] * (1 + kw.get("refine", 0))
    calls.clear()
    fuse_stack_pairwise(planes, decide, strategy="round-robin")
    assert calls == []
