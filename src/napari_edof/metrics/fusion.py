"""No-reference fusion metrics: how much of the sources a fused image keeps (higher is better).

Each public function takes ``sources`` — the pair ``(A, B)``, any sequence of N source images,
or one array of N planes ``(N, Y, X[, C])`` — and the ``fused`` image, and returns a float.
Inputs are reduced to grey and scaled to [0, 1] by :func:`napari_edof.metrics._common.prepare`
(``data_range`` as in scikit-image). The definitions, constants, the N-source forms and the
references are in ``docs/metrics.md``; in short:

* :func:`qabf` — Xydeas & Petrovic (2000) edge-preservation Q^AB/F (Sobel strength and
  orientation, sigmoids (0.9994, -15, 0.5) and (0.9879, -22, 0.8), weights g^L with L = 1;
  L = 2 for N > 2 sources). Its maximum, reached when F keeps every edge of every source
  exactly, is 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4) = 0.97479, not 1 (see :data:`QABF_MAX`).
* :func:`nmi` — Hossny et al. (2008) normalised mutual information,
  2 [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))], in [0, 2]; 256-bin histograms.
* :func:`fmi` — Haghighat & Razian's (2014) Fast-FMI of Haghighat et al.'s (2011) feature
  mutual information on gradient-magnitude maps, 3 x 3 windows, in [0, 1].
* :func:`qy` — Yang et al. (2008) SSIM-based metric, in [-1, 1] (1 for a perfect fusion of
  identical sources).
* :func:`qcb` — Chen & Blum (2009) human-perception metric (DoG contrast-sensitivity filter,
  Peli band-limited contrast, contrast masking), in [0, 1].

For N > 2 sources (a focus stack) Q^AB/F, NMI and FMI weight each source by its squared local
saliency, since a plain mean over the planes rewards a blurred fusion (most planes are out of
focus at any pixel); Q_Y and Q_CB have their own weighted N-source forms (see each function).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._common import prepare

# --- Q^AB/F -----------------------------------------------------------------------------------

#: Sigmoid constants (Gamma, kappa, sigma) for edge strength and orientation (Xydeas & Petrovic 2000).
QABF_STRENGTH = (0.9994, -15.0, 0.5)
QABF_ORIENTATION = (0.9879, -22.0, 0.8)


def _sigmoid(x, consts):
    g, k, s = consts
    return g / (1.0 + np.exp(k * (x - s)))


#: The largest value Q^AB/F can take (every source edge kept with its strength and orientation).
QABF_MAX = float(_sigmoid(1.0, QABF_STRENGTH) * _sigmoid(1.0, QABF_ORIENTATION))


def sobel_valid(a: np.ndarray):
    """Sobel responses (gx, gy) on the pixels with a full 3 x 3 neighbourhood: (Y-2, X-2) each.

    gx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and gy its transpose, applied as correlations.
    """
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"Q^AB/F needs images of at least 3x3 pixels, got {a.shape}")
    gx = (a[:-2, 2:] + 2 * a[1:-1, 2:] + a[2:, 2:]) - (a[:-2, :-2] + 2 * a[1:-1, :-2] + a[2:, :-2])
    gy = (a[2:, :-2] + 2 * a[2:, 1:-1] + a[2:, 2:]) - (a[:-2, :-2] + 2 * a[:-2, 1:-1] + a[:-2, 2:])
    return gx, gy


def qabf_map(source: np.ndarray, fused: np.ndarray, *, f_grad=None):
    """Per-pixel Q^SF (edge preservation of one source in F) and its weight g_S, on the interior."""
    sx, sy = sobel_valid(source)
    fx, fy = f_grad if f_grad is not None else sobel_valid(fused)
    gs, gf = np.hypot(sx, sy), np.hypot(fx, fy)
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where(gs > gf, gf / gs, np.where(gf > gs, gs / gf, 1.0))
    d = np.abs(np.arctan2(sy, sx) - np.arctan2(fy, fx)) % np.pi
    d = np.minimum(d, np.pi - d)  # orientation of a line: modulo pi, in [0, pi/2]
    A = 1.0 - d / (np.pi / 2)
    return _sigmoid(G, QABF_STRENGTH) * _sigmoid(A, QABF_ORIENTATION), gs


def _qabf(planes: np.ndarray, f: np.ndarray, L="auto") -> float:
    if L == "auto":
        L = 1.0 if len(planes) <= 2 else 2.0
    fg = sobel_valid(f)
    num = den = 0.0
    for p in planes:
        q, g = qabf_map(p, f, f_grad=fg)
        w = g if L == 1 else g ** float(L)
        num += float((q * w).sum())
        den += float(w.sum())
    return num / den if den > 0 else float("nan")


def qabf(sources, fused, *, data_range=None, L="auto") -> float:
    """Xydeas & Petrovic's Q^AB/F: sum_n sum_px Q^{S_n F} w_n / sum_n sum_px w_n, w_n = g_n^L.

    ``L="auto"``: the paper's L = 1 for a pair; L = 2 for N > 2 sources, so that the planes in
    focus at a pixel count most (with L = 1 the many out-of-focus planes of a deep stack can
    make a blurred fusion score higher than a sharp one). Range [0, :data:`QABF_MAX`]; ``nan``
    when no source has any edge (all weights zero).
    """
    planes, f, _ = prepare(sources, fused, data_range=data_range)
    return _qabf(planes, f, L)


# --- NMI ----------------------------------------------------------------------------------------

def _bin_index(a: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.floor(a * bins), 0, bins - 1).astype(np.intp).ravel()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def symmetric_uncertainty(a_idx: np.ndarray, f_idx: np.ndarray, bins: int, weights=None) -> float:
    """2 MI(A, F) / (H(A) + H(F)) from bin indices (1 when both images are constant).

    ``weights``: per-pixel weights of the joint histogram (default: every pixel counts once).
    """
    joint = np.bincount(a_idx * bins + f_idx, weights=weights, minlength=bins * bins).astype(np.float64)
    total = joint.sum()
    if total <= 0:
        return 0.0
    joint /= total
    joint = joint.reshape(bins, bins)
    ha, hf, haf = _entropy(joint.sum(1)), _entropy(joint.sum(0)), _entropy(joint.ravel())
    if ha + hf == 0:
        return 1.0
    return max(2.0 * (ha + hf - haf) / (ha + hf), 0.0)


def _resolve_weighting(weighting: str, n: int) -> str:
    if weighting == "auto":
        return "mean" if n <= 2 else "saliency"
    if weighting not in ("mean", "saliency"):
        raise ValueError(f"weighting must be 'auto', 'mean' or 'saliency', not {weighting!r}")
    return weighting


def saliency_weights(planes: np.ndarray) -> np.ndarray:
    """Per-pixel share of each source, s_n^2 / sum_m s_m^2 with s_n the 3 x 3 mean of |grad S_n|
    (1/N where no source has any gradient): (N, Y, X), summing to 1 over the sources."""
    sal = np.stack([ndi.uniform_filter(fmi_feature(p, "gradient"), 3, mode="reflect") ** 2 for p in planes])
    tot = sal.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tot > 0, sal / np.where(tot > 0, tot, 1.0), 1.0 / len(planes))


def _nmi(planes: np.ndarray, f: np.ndarray, bins: int = 256, weighting: str = "auto") -> float:
    fi = _bin_index(f, bins)
    if _resolve_weighting(weighting, len(planes)) == "mean":
        return 2.0 * float(np.mean([symmetric_uncertainty(_bin_index(p, bins), fi, bins) for p in planes]))
    w = saliency_weights(planes)
    share = w.reshape(len(planes), -1).sum(1)
    su = [symmetric_uncertainty(_bin_index(p, bins), fi, bins, weights=w[n].ravel()) for n, p in enumerate(planes)]
    return 2.0 * float(np.dot(share, su) / share.sum())


def nmi(sources, fused, *, data_range=None, bins: int = 256, weighting: str = "auto") -> float:
    """Hossny et al.'s normalised mutual information, in [0, 2] (2 when F and the sources agree).

    For a pair: 2 [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))], i.e. ``2 * mean_n SU_n`` with
    SU = 2 MI / (H + H). For N > 2 sources (``weighting="auto"``) each SU_n comes from a joint
    histogram whose pixels are weighted by the source's saliency share (:func:`saliency_weights`)
    and the SU_n are averaged with the shares' totals, so that each plane is judged where it is
    in focus (``weighting="mean"``: the plain mean over the N terms, which rewards a blurred
    fusion of a deep stack). Histograms: ``bins`` equal bins over [0, 1] after scaling by
    ``data_range`` (values outside are clipped into the end bins).
    """
    planes, f, _ = prepare(sources, fused, data_range=data_range)
    return _nmi(planes, f, bins, weighting)


# --- FMI ----------------------------------------------------------------------------------------

def fmi_feature(a: np.ndarray, feature: str = "gradient") -> np.ndarray:
    """The feature map FMI compares: "gradient" (|grad| by central differences, np.gradient),
    "sobel" (Sobel gradient magnitude, reflected border) or "none" (the pixels themselves)."""
    if feature == "gradient":
        gy, gx = np.gradient(a)
        return np.hypot(gx, gy)
    if feature == "sobel":
        return np.hypot(ndi.sobel(a, 0), ndi.sobel(a, 1))
    if feature == "none":
        return a
    raise ValueError(f"feature must be 'gradient', 'sobel' or 'none', not {feature!r}")


def _windows(a: np.ndarray, w: int) -> np.ndarray:
    """Every w x w window, column-major inside the window (MATLAB's ``sub(:)``): (P, w*w)."""
    v = np.lib.stride_tricks.sliding_window_view(a, (w, w))
    return np.ascontiguousarray(v.swapaxes(-1, -2)).reshape(-1, w * w)


def _pdf(x: np.ndarray) -> np.ndarray:
    mn, mx = x.min(1, keepdims=True), x.max(1, keepdims=True)
    flat = mx == mn
    y = np.where(flat, 1.0, (x - mn) / np.where(flat, 1.0, mx - mn))
    return y / y.sum(1, keepdims=True)


def _xlog2x(p: np.ndarray) -> np.ndarray:
    """p log2|p| with 0 where p == 0 (MATLAB's real(p .* log2(p)) for p < 0 too)."""
    out = np.zeros_like(p)
    nz = p != 0
    out[nz] = p[nz] * np.log2(np.abs(p[nz]))
    return out


def fast_fmi_windows(a_win: np.ndarray, f_win: np.ndarray) -> np.ndarray:
    """Haghighat & Razian's Fast-FMI of each window pair ((P, l) features each) -> (P,) in [0, 1].

    Per window: min-max normalise each feature window (all ones when flat), divide by its sum to
    get a pdf over the l positions (column-major), take the cdfs; the joint pdf is Nelsen's
    mixture of the independence copula and the Frechet upper bound (lower bound when the
    Pearson correlation c of the pdfs is negative), weighted so that its correlation is c; the
    value is 2 MI / (H(a) + H(f)). Identical windows give 1.
    """
    P, n_pos = a_win.shape
    same = np.all(a_win == f_win, axis=1)
    ap, fp = _pdf(a_win), _pdf(f_win)
    ac, fc = np.cumsum(ap, 1), np.cumsum(fp, 1)
    at, ft = ap - ap.mean(1, keepdims=True), fp - fp.mean(1, keepdims=True)
    num = (at * ft).sum(1)
    den = np.sqrt((at * at).sum(1) * (ft * ft).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / den)
    pos = np.arange(1, n_pos + 1, dtype=np.float64)

    def sd(p):
        e, e2 = p @ pos, p @ (pos * pos)
        return np.sqrt(np.maximum(e2 - e * e, 0.0))

    asd, fsd = sd(ap), sd(fp)
    F, A = fc[:, :, None], ac[:, None, :]
    upper = c >= 0
    H = np.where(upper[:, None, None], np.minimum(F, A), np.maximum(F + A - 1.0, 0.0))
    indep = F * A
    cov = (H - indep).sum((1, 2))
    degenerate = (asd == 0) | (fsd == 0) | (c == 0) | (cov == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(degenerate, 0.0, c * fsd * asd / cov)
    Hp = np.zeros((P, n_pos + 1, n_pos + 1))
    Hp[:, 1:, 1:] = H
    bound_pdf = Hp[:, 1:, 1:] - Hp[:, :-1, 1:] - Hp[:, 1:, :-1] + Hp[:, :-1, :-1]
    jpdf = coef[:, None, None] * bound_pdf + (1.0 - coef[:, None, None]) * (fp[:, :, None] * ap[:, None, :])
    hj = -_xlog2x(jpdf).sum((1, 2))
    ha, hf = -_xlog2x(ap).sum(1), -_xlog2x(fp).sum(1)
    mi = ha + hf - hj
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.where((mi == 0) | (ha + hf == 0), 0.0, 2.0 * mi / (ha + hf))
    val[same] = 1.0
    return val


def _fmi(planes: np.ndarray, f: np.ndarray, feature: str = "gradient", window: int = 3,
         weighting: str = "auto", chunk: int = 8192) -> float:
    if f.shape[0] < window or f.shape[1] < window:
        raise ValueError(f"FMI needs images of at least {window}x{window} pixels, got {f.shape}")
    weighting = _resolve_weighting(weighting, len(planes))
    fw = _windows(fmi_feature(f, feature), window)
    num = np.zeros(len(fw))
    den = np.zeros(len(fw))
    for p in planes:
        pw = _windows(fmi_feature(p, feature), window)
        v = np.concatenate([fast_fmi_windows(pw[s:s + chunk], fw[s:s + chunk]) for s in range(0, len(fw), chunk)])
        if weighting == "mean":
            num += v
            den += 1.0
        else:  # the source's saliency in the window: squared mean gradient magnitude
            sal = _windows(fmi_feature(p, "gradient"), window).mean(1) ** 2
            num += sal * v
            den += sal
    with np.errstate(divide="ignore", invalid="ignore"):
        per_window = np.where(den > 0, num / den, 1.0)  # no source has any gradient: all flat
    return float(per_window.mean())


def fmi(sources, fused, *, feature: str = "gradient", window: int = 3, weighting: str = "auto",
        data_range=None) -> float:
    """Feature mutual information (Fast-FMI) averaged over windows and over the sources.

    For a pair: the mean over ``window`` x ``window`` windows of (FMI_AF + FMI_BF) / 2, as in
    Haghighat's ``fmi.m``. For N > 2 sources (``weighting="auto"``) each window's terms are
    averaged with weights s_n^2 / sum s_m^2, s_n the mean gradient magnitude of S_n in the
    window, so that the planes in focus there count most (``weighting="mean"``: the plain mean
    over the N terms, which rewards a blurred fusion of a deep stack, most of whose planes are
    out of focus at any pixel). Range [0, 1]. FMI does not depend on ``data_range`` (each
    window is min-max normalised); it is accepted for symmetry.
    """
    planes, f, _ = prepare(sources, fused, data_range=data_range)
    return _fmi(planes, f, feature, window, weighting)


# --- Q_Y ----------------------------------------------------------------------------------------

#: Yang et al.'s threshold on the sources' local similarity SSIM(A, B).
QY_THRESHOLD = 0.75
_SSIM_SIGMA, _SSIM_TRUNCATE = 1.5, 3.5  # scikit-image's Gaussian SSIM window (11 x 11)
#: SSIM constants of Q_Y: C1 = C2 = 1e-12 on [0, 1] images, standing in for the toolbox's
#: C1 = C2 = 2e-16 on 0..255 (practically zero: a flat fused image does not look similar to a
#: textured source however faint its texture, as it does with Wang's K = 0.01, 0.03)
QY_K = 1e-6


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from .reference import ssim_scaled

    return ssim_scaled(a, b, full=True, K1=QY_K, K2=QY_K)[1]


def _qy(planes: np.ndarray, f: np.ndarray, threshold: float = QY_THRESHOLD) -> float:
    n = len(planes)
    s_f = np.stack([_ssim_map(p, f) for p in planes])
    var = []
    for p in planes:
        mu = ndi.gaussian_filter(p, _SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode="reflect")
        var.append(np.maximum(ndi.gaussian_filter(p * p, _SSIM_SIGMA, truncate=_SSIM_TRUNCATE,
                                                  mode="reflect") - mu * mu, 0.0))
    var = np.stack(var)
    tot = var.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(tot > 0, var / tot, 1.0 / n)
    similar = np.ones(f.shape, bool)
    for i in range(n):
        for j in range(i + 1, n):
            similar &= _ssim_map(planes[i], planes[j]) >= threshold
    q = np.where(similar, (lam * s_f).sum(0), s_f.max(0))
    pad = (2 * int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5) + 1 - 1) // 2
    if q.shape[0] > 2 * pad and q.shape[1] > 2 * pad:
        q = q[pad:-pad, pad:-pad]
    return float(q.mean())


def qy(sources, fused, *, data_range=None) -> float:
    """Yang et al.'s Q_Y from local SSIM maps (scikit-image's Gaussian SSIM, sigma 1.5).

    Per pixel: where every pair of sources is locally similar (SSIM >= 0.75) the
    variance-weighted mean ``sum_n lambda_n SSIM(S_n, F)`` with ``lambda_n = var_n / sum var``,
    else ``max_n SSIM(S_n, F)``; averaged without the 5-pixel border. For a pair this is
    Yang's rule. Range [-1, 1]; 1 when F equals every source.
    """
    planes, f, _ = prepare(sources, fused, data_range=data_range)
    return _qy(planes, f)


# --- Q_CB ---------------------------------------------------------------------------------------

#: Chen & Blum (2009) constants as in Liu et al.'s toolbox (metricChenBlum.m): DoG CSF
#: S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2) (r in cycles/degree), Gaussian contrast filters of
#: sigma 2 and 4 pixels, masking C' = k |C|^p / (h |C|^q + Z).
QCB = dict(f0=15.3870, f1=1.3456, a=0.7622, sigma1=2.0, sigma2=4.0, k=1.0, h=1.0, p=3.0, q=2.0, Z=1e-4)


def csf_filter(img: np.ndarray, ppd=None) -> np.ndarray:
    """Filter by the DoG contrast sensitivity function in the frequency domain.

    ``ppd``: pixels per degree of visual angle (y, x); by default (rows/15, columns/15), the
    toolbox's viewing condition (its frequency grid spans +-rows/30 cycles/degree).
    """
    H, W = img.shape
    py, px = (H / 15.0, W / 15.0) if ppd is None else (ppd if np.ndim(ppd) else (ppd, ppd))
    fy = np.fft.fftfreq(H) * py
    fx = np.fft.fftfreq(W) * px
    r = np.hypot(fy[:, None], fx[None, :])
    S = np.exp(-((r / QCB["f0"]) ** 2)) - QCB["a"] * np.exp(-((r / QCB["f1"]) ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * S))


def masked_contrast(img: np.ndarray) -> np.ndarray:
    """Peli's band-limited contrast |G_2 * I / G_4 * I - 1| after contrast masking."""
    radius = 15  # the toolbox's 31 x 31 kernels
    b1 = ndi.gaussian_filter(img, QCB["sigma1"], truncate=radius / QCB["sigma1"], mode="reflect")
    b2 = ndi.gaussian_filter(img, QCB["sigma2"], truncate=radius / QCB["sigma2"], mode="reflect")
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(np.abs(b2) > 1e-12, b1 / b2 - 1.0, 0.0)
    c = np.abs(c)
    return QCB["k"] * c ** QCB["p"] / (QCB["h"] * c ** QCB["q"] + QCB["Z"])


def _qcb(planes: np.ndarray, f: np.ndarray, ppd=None) -> float:
    cf = masked_contrast(csf_filter(f, ppd))
    num = np.zeros_like(f)
    sal = np.zeros_like(f)
    for p in planes:
        cs = masked_contrast(csf_filter(p, ppd))
        with np.errstate(divide="ignore", invalid="ignore"):
            qsf = np.where(cs < cf, cs / cf, np.where(cs > cf, cf / cs, 1.0))
        s = cs * cs
        num += s * qsf
        sal += s
    # where no source has any contrast the weights are undefined: 1 if F has none either, else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(sal > 0, num / sal, np.where(cf == 0, 1.0, 0.0))
    return float(q.mean())


def qcb(sources, fused, *, data_range=None, ppd=None) -> float:
    """Chen & Blum's Q_CB: ``mean_px sum_n lambda_n Q_{S_n F}``, ``lambda_n = C'_n^2 / sum C'^2``.

    ``Q_SF = min(C'_S, C'_F) / max(C'_S, C'_F)`` (1 where both are zero). Range [0, 1].
    """
    planes, f, _ = prepare(sources, fused, data_range=data_range)
    return _qcb(planes, f, ppd)
