"""PSNR and SSIM against a ground truth (scikit-image's), scaled as documented."""
import math
import warnings

import numpy as np
import pytest

from napari_edof import metrics as M


def test_identical_images():
    t = np.random.default_rng(1).integers(0, 60000, (32, 32), dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning for inf
        assert M.psnr(t, t) == math.inf
    assert M.ssim(t, t) == pytest.approx(1.0)


def test_psnr_by_hand():
    t = np.zeros((4, 4), np.uint8)
    assert M.psnr(t, np.full_like(t, 255)) == pytest.approx(0.0)  # MSE = range^2
    f = t.copy()
    f[0, 0] = 255  # MSE = range^2 / 16
    assert M.psnr(t, f) == pytest.approx(10 * math.log10(16))
    # data_range: uint16 default is 65535; a 12-bit range makes the same error 16x as large
    t16, f16 = np.zeros((4, 4), np.uint16), np.zeros((4, 4), np.uint16)
    f16[0, 0] = 4095
    assert M.psnr(t16, f16, data_range=4095) == pytest.approx(10 * math.log10(16))
    assert M.psnr(t16, f16) == pytest.approx(10 * math.log10(16 * 65535**2 / 4095**2))
    # floats in [0, 1]: range 1
    assert M.psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)) == pytest.approx(20.0)


def test_ssim_matches_skimage_and_colour():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    t = rng.random((40, 40))
    f = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    want = structural_similarity(t, f, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert M.ssim(t, f) == pytest.approx(want)
    # colour: SSIM of the BT.601 luminance
    rgb = lambda x: np.stack([x, x, x], -1)  # noqa: E731
    assert M.ssim(rgb(t), rgb(f)) == pytest.approx(want)
