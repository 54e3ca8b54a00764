"""Full-reference metrics against a ground-truth all-in-focus image (scikit-image's own).

* :func:`psnr` — ``skimage.metrics.peak_signal_noise_ratio`` in dB; ``inf`` when the fused
  image equals the truth (no warning).
* :func:`ssim` — ``skimage.metrics.structural_similarity`` with Wang et al.'s (2004) settings:
  Gaussian window sigma 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, population covariances; the mean
  over the map without its 5-pixel border (scikit-image's convention).

Both compute on the grey (luminance) images scaled to [0, 1] as described in
:mod:`napari_edof.metrics._common`, so ``data_range`` means what it means in scikit-image.
"""
from __future__ import annotations

import numpy as np

from ._common import default_range, grey


def _pair(truth, fused, data_range):
    t, f = np.asarray(truth), np.asarray(fused)
    if t.shape != f.shape:
        raise ValueError(f"the truth of shape {t.shape} does not match the fused image {f.shape}")
    if data_range is None:
        offset, rng = default_range([t, f])
    else:
        rng = float(data_range)
        lo = min(float(t.min()), float(f.min()))
        offset = lo if lo < 0 else 0.0
    colour = f.ndim == 3
    return (grey(t, colour=colour) - offset) / rng, (grey(f, colour=colour) - offset) / rng


def psnr_scaled(t: np.ndarray, f: np.ndarray) -> float:
    """PSNR of grey images already scaled to [0, 1] (data range 1)."""
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    if mean_squared_error(t, f) == 0:
        return float("inf")
    return float(peak_signal_noise_ratio(t, f, data_range=1.0))


def ssim_scaled(t: np.ndarray, f: np.ndarray, *, full: bool = False, K1: float = 0.01, K2: float = 0.03):
    """Wang et al.'s SSIM of grey images already scaled to [0, 1] (``K1``, ``K2``: its constants)."""
    from skimage.metrics import structural_similarity

    return structural_similarity(t, f, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=full, K1=K1, K2=K2)


def psnr(truth, fused, *, data_range=None) -> float:
    """Peak signal-to-noise ratio of ``fused`` against ``truth`` in dB (``inf`` when equal)."""
    return psnr_scaled(*_pair(truth, fused, data_range))


def ssim(truth, fused, *, data_range=None) -> float:
    """Structural similarity of ``fused`` against ``truth`` (1 when equal)."""
    return float(ssim_scaled(*_pair(truth, fused, data_range)))
