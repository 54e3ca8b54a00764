"""Accuracy, dtypes and colour of the multiscale methods (pyramid, wavelet), on ground truth.

Floors were set a few points / dB below what each method measured on the same stacks
(8 planes, 128x128): pyramid index accuracy 0.972-0.980 (within one plane 0.994-0.995), PSNR
37.0-38.5 dB grey and 36.9-37.3 dB RGB; wavelet 0.951-0.969 (0.989-0.994), 36.8-38.4 dB grey and
36.2-36.7 dB RGB. Always taking plane 0 scores below 25 dB.
"""
import numpy as np
import pytest

import napari_edof as ne

from ..conftest import psnr

PEAK = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 60000, np.dtype(np.float32): 1.0}
# method: (exact index, within one plane, PSNR dB, RGB PSNR dB, per-channel RGB PSNR dB)
FLOORS = {"pyramid": (0.94, 0.98, 34, 34, 32), "wavelet": (0.92, 0.97, 34, 33, 31)}
METHODS = pytest.mark.parametrize("method", sorted(FLOORS))


def _scores(r, s):
    exact = float(np.mean(np.rint(r.index) == s.index))
    near = float(np.mean(np.abs(r.index - s.index) <= 1))
    return exact, near, psnr(r.fused, s.all_in_focus, PEAK[np.dtype(s.stack.dtype)])


@METHODS
@pytest.mark.parametrize("seed", [11, 12])
def test_accuracy_uint16(method, seed):
    f_exact, f_near, f_db = FLOORS[method][:3]
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=seed)
    r = ne.fuse(s.stack, method=method, tile=None)
    exact, near, db = _scores(r, s)
    assert exact > f_exact, f"index exact {exact:.3f}"
    assert near > f_near, f"index within one plane {near:.3f}"
    assert db > f_db, f"PSNR {db:.2f} dB"
    assert psnr(s.stack.data[0], s.all_in_focus, 60000) < 25  # what a blind choice gets
    assert r.index.dtype == np.float32 and r.confidence.dtype == np.float32
    assert r.index.min() >= 0 and r.index.max() <= 7
    assert 0 <= r.confidence.min() and r.confidence.max() <= 1
    assert r.confidence.mean() > 0.3  # the finest level separates the planes well here


@METHODS
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_round_trip(method, dtype):
    f_exact, f_near, f_db = FLOORS[method][:3]
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=13, dtype=dtype)
    r = ne.fuse(s.stack, method=method)
    assert r.fused.dtype == np.dtype(dtype) and r.fused.shape == (128, 128)
    exact, near, db = _scores(r, s)
    assert exact > f_exact and near > f_near
    assert db > f_db, f"{np.dtype(dtype).name}: PSNR {db:.2f} dB"


@METHODS
@pytest.mark.parametrize("seed", [12, 13])
def test_rgb(method, seed):
    f_exact, f_near, _, f_db, f_chan = FLOORS[method]
    s = ne.sample_stack(n_planes=8, shape=(128, 128), seed=seed, rgb=True, dtype=np.uint8)
    r = ne.fuse(s.stack, method=method)
    assert r.fused.dtype == np.uint8 and r.fused.shape == (128, 128, 3)
    exact, near, db = _scores(r, s)
    assert exact > f_exact and near > f_near
    assert db > f_db, f"PSNR {db:.2f} dB"
    for c in range(3):  # every channel, not just the guide's luminance
        assert psnr(r.fused[..., c], s.all_in_focus[..., c], 255) > f_chan


@METHODS
def test_one_index_for_every_channel(method):
    """With guide=0, channel 0 fuses exactly as the grey stack does, and a channel that is a
    linear function of it comes out as the same function of the fused channel 0: every channel
    takes its coefficients from the planes the guide chose."""
    s = ne.sample_stack(n_planes=6, shape=(96, 80), seed=5, dtype=np.float32)
    other = ne.sample_stack(n_planes=6, shape=(96, 80), seed=6, dtype=np.float32)
    g = np.asarray(s.stack.data)
    rgb = np.stack([g, 2 * g + 0.1, np.asarray(other.stack.data)], axis=-1)
    grey = ne.fuse(g, method=method, tile=None)
    col = ne.fuse(rgb, method=method, tile=None, guide=0)
    np.testing.assert_array_equal(col.index, grey.index)
    np.testing.assert_allclose(col.fused[..., 0], grey.fused, atol=1e-5)
    np.testing.assert_allclose(col.fused[..., 1], 2 * grey.fused + 0.1, atol=2e-5)
    assert np.abs(col.fused[..., 2] - col.fused[..., 0]).mean() > 0.01  # channel 2 is its own
