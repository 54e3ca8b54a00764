"""The per-pixel selection helpers shared by the multiscale methods."""
import numpy as np
from scipy import ndimage as ndi

from napari_edof.core.select import RunningArgmax, box_sum, local_variance, majority


def test_box_sum_matches_a_uniform_filter():
    a = np.random.default_rng(0).random((2, 20, 30))
    np.testing.assert_allclose(box_sum(a, 2), ndi.uniform_filter(a, (1, 5, 5), mode="reflect") * 25, rtol=1e-10)
    assert box_sum(a, 0) is a


def test_local_variance():
    a = np.random.default_rng(1).random((16, 16))
    v = local_variance(a, 1)
    pad = np.pad(a, 1, mode="symmetric")
    want = np.array([[pad[y:y + 3, x:x + 3].var() for x in range(16)] for y in range(16)])
    np.testing.assert_allclose(v, want, atol=1e-12)


def test_majority_removes_isolated_labels_and_keeps_ties():
    sel = np.zeros((7, 7), np.int16)
    sel[3, 3] = 5  # an isolated pixel: outvoted
    sel[:, 5:] = 2  # a straight edge: kept
    out = majority(sel)
    assert out[3, 3] == 0
    np.testing.assert_array_equal(out[:, 5:], 2)
    np.testing.assert_array_equal(out[:, :4], 0)
    # a checkerboard: each 3x3 holds the centre's label 5 times (centre and diagonals): kept
    cb = (np.indices((6, 6)).sum(0) % 2).astype(np.int16)
    np.testing.assert_array_equal(majority(cb), cb)
    # a tie (a 3-3-3 split of labels) keeps the pixel's own label when it is among the most frequent
    tie = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], np.int16)
    assert majority(np.pad(tie, 0))[1, 1] == 2


def test_running_argmax_matches_numpy():
    vol = np.random.default_rng(2).random((6, 9, 11)).astype(np.float32)
    vol[:, 0, 0] = 0.5  # a tie: the first plane wins, as np.argmax
    r = RunningArgmax()
    for z, e in enumerate(vol):
        r.update(e, z)
    np.testing.assert_array_equal(r.arg, np.argmax(vol, axis=0))
    s = np.sort(vol, axis=0)
    np.testing.assert_allclose(r.confidence(), 1 - s[-2] / s[-1], rtol=1e-6)
    assert r.confidence()[0, 0] == 0
