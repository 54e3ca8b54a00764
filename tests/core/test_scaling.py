import numpy as np
import pytest

from napari_edof.core.scaling import to_unit, unit_range


def test_dtype_convention_divides_integers_by_their_maximum():
    a = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(to_unit(a.astype(np.float32), np.uint8, "dtype"), [[[0, 0.2, 1]]], atol=1e-7)
    assert unit_range(a, np.int16, "dtype") == (0.0, 32767.0)  # signed: from 0, not from the minimum
    f = np.array([[[-0.5, 2.0]]], np.float32)
    np.testing.assert_array_equal(to_unit(f, mode="dtype"), f)  # floats as given


def test_range_stretches_dim_data_robustly_and_clips():
    rng = np.random.default_rng(0)
    a = rng.integers(100, 4096, (3, 64, 64)).astype(np.uint16)  # 12-bit data in uint16
    a[0, 0, 0] = 65535  # one hot pixel does not set the scale
    u = to_unit(a.astype(np.float32), a.dtype, "range")
    assert u.dtype == np.float32 and u.min() == 0 and u.max() == 1
    assert np.median(u) == pytest.approx(0.5, abs=0.02)
    assert (u == 1).mean() < 0.002


def test_constant_window_gives_zeros_and_a_valid_range():
    c = np.full((2, 8, 8), 7, np.float32)
    lo, hi = unit_range(c)
    assert hi > lo
    np.testing.assert_array_equal(to_unit(c), np.zeros_like(c))


def test_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown scaling 'gamma'"):
        unit_range(np.zeros((1, 2, 2)), mode="gamma")
