"""No-reference fusion metrics on hand-computable cases, symmetry, N sources and monotonicity."""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_edof as ne
from napari_edof import metrics as M
from napari_edof.metrics import fusion as FU


def sig(x, g, k, s):
    return g / (1 + math.exp(k * (x - s)))


QS = lambda x: sig(x, 0.9994, -15, 0.5)  # noqa: E731  strength sigmoid
QA = lambda x: sig(x, 0.9879, -22, 0.8)  # noqa: E731  orientation sigmoid

# a 4x4 vertical step edge: on the 2x2 interior, Sobel gx = (1 - 0) * (1 + 2 + 1) = 4, gy = 0
STEP = np.array([[0, 0, 1, 1]] * 4, float)
FLAT = np.full((4, 4), 0.5)


@pytest.fixture(scope="module")
def textured():
    rng = np.random.default_rng(3)
    a = ndi.gaussian_filter(rng.random((48, 48)), 1.0)
    b = ndi.gaussian_filter(rng.random((48, 48)), 1.0)
    return (a - a.min()) / np.ptp(a), (b - b.min()) / np.ptp(b)


# --- Q^AB/F ------------------------------------------------------------------------------------

def test_qabf_maximum_is_the_sigmoid_product():
    assert M.QABF_MAX == pytest.approx(QS(1) * QA(1))
    assert M.QABF_MAX == pytest.approx(0.97479, abs=1e-5)


def test_qabf_sobel_by_hand():
    gx, gy = FU.sobel_valid(STEP)
    np.testing.assert_array_equal(gx, np.full((2, 2), 4.0))
    np.testing.assert_array_equal(gy, np.zeros((2, 2)))


def test_qabf_step_edge_cases_by_hand():
    d = dict(data_range=1.0)
    # F keeps A's edge exactly; B (flat) has no edges, so weight 0: Q = Q_g(1) Q_a(1)
    assert M.qabf((STEP, FLAT), STEP, **d) == pytest.approx(QS(1) * QA(1), rel=1e-12)
    # half the contrast: g_F = 2, G = 2/4 = 0.5, orientation kept
    assert M.qabf((STEP, FLAT), STEP * 0.5, **d) == pytest.approx(QS(0.5) * QA(1), rel=1e-12)
    # the edge turned by 90 degrees: same strength, A = 1 - (pi/2)/(pi/2) = 0
    assert M.qabf((STEP, FLAT), STEP.T.copy(), **d) == pytest.approx(QS(1) * QA(0), rel=1e-9)
    # a constant fused image: G = 0; a zero gradient has orientation 0 like the source's (A = 1)
    assert M.qabf((STEP, FLAT), FLAT, **d) == pytest.approx(QS(0) * QA(1), rel=1e-12)
    assert M.qabf((STEP, FLAT), FLAT, **d) < 6e-4
    # the same edge with the opposite polarity is the same line: A = 1
    assert M.qabf((STEP, FLAT), 1 - STEP, **d) == pytest.approx(QS(1) * QA(1), rel=1e-12)


def test_qabf_diagonal_by_hand():
    i, j = np.mgrid[0:4, 0:4].astype(float)
    a = (i + j) / 6  # gx = gy = 8/6: g = 8 sqrt(2)/6, orientation 45 degrees
    f = 2 * j / 6    # gx = 16/6, gy = 0
    g_a, g_f = 8 * math.sqrt(2) / 6, 16 / 6
    expect = QS(g_a / g_f) * QA(0.5)  # |45 - 0| degrees: A = 1 - (pi/4)/(pi/2) = 0.5
    assert M.qabf((a, FLAT), f, data_range=1.0) == pytest.approx(expect, rel=1e-9)
    # two sources with edges: weights g_A and g_B
    qa_term, qb_term = expect, QS(1) * QA(1)  # B = F itself
    want = (qa_term * g_a + qb_term * g_f) / (g_a + g_f)
    assert M.qabf((a, f), f, data_range=1.0) == pytest.approx(want, rel=1e-9)


def test_qabf_symmetry_identity_and_stacks(textured):
    a, b = textured
    f = np.where(np.arange(48) < 24, a, b)
    assert M.qabf((a, b), f) == pytest.approx(M.qabf((b, a), f), rel=1e-12)
    assert M.qabf((a, a), a) == pytest.approx(M.QABF_MAX, rel=1e-12)
    assert M.qabf(np.stack([a, b]), f) == pytest.approx(M.qabf([a, b], f), rel=1e-12)
    # N sources: the weighted form over all of them
    assert M.qabf((a, a, a), a) == pytest.approx(M.QABF_MAX, rel=1e-12)
    assert math.isnan(M.qabf((FLAT, FLAT), FLAT, data_range=1.0))  # no edges anywhere: undefined


# --- NMI ---------------------------------------------------------------------------------------

def test_nmi_by_hand():
    a = np.array([[0, 0], [255, 255]], np.uint8)  # H = 1 bit
    assert M.nmi((a, a), a) == pytest.approx(2.0)
    # a checkerboard is independent of the half/half image: MI = 0
    f = np.array([[0, 255], [0, 255]], np.uint8)
    assert M.nmi((a, a), f) == pytest.approx(0.0, abs=1e-12)
    # A a function of F with H(F) = 2 bits: MI = H(A) = 1 and 2 MI/(H(A) + H(F)) = 2/3
    f4 = np.array([[0, 85], [170, 255]], np.uint8)
    assert M.nmi((a, a), f4) == pytest.approx(2 * 2 / 3)
    assert M.nmi((a, f4), f4) == pytest.approx(2 / 3 + 1)


def test_nmi_noise_constant_and_skimage(textured):
    rng = np.random.default_rng(0)
    a, b, f = (rng.integers(0, 256, (256, 256), dtype=np.uint8) for _ in range(3))
    assert M.nmi((a, b), f, bins=16) < 0.01  # independent: near 0 (the estimate's bias is tiny)
    assert M.nmi((a, b), np.full_like(f, 7)) == 0.0
    # agrees with scikit-image's (Studholme) NMI Y = (H(A) + H(F)) / H(A, F): 2 MI/(H+H) = 2 (1 - 1/Y)
    from skimage.metrics import normalized_mutual_information

    a[0, 0], a[0, 1], f[0, 0], f[0, 1] = 0, 255, 0, 255  # both span 0..255: the same 256 bins
    y = normalized_mutual_information(a, f, bins=256)
    assert M.nmi((a, a), f) == pytest.approx(2 * 2 * (1 - 1 / y), rel=1e-9)


# --- FMI ---------------------------------------------------------------------------------------

def test_fmi_window_by_hand():
    w = np.arange(1.0, 10.0)[None]
    assert FU.fast_fmi_windows(w, w)[0] == 1.0
    # min-max normalisation makes 2w + 3 the same distribution: the Frechet upper bound (phi = 1)
    # puts the joint pdf on the diagonal, H(joint) = H, FMI = 2 H / 2 H = 1
    assert FU.fast_fmi_windows(w, 2 * w + 3)[0] == pytest.approx(1.0, abs=1e-12)
    # a flat window is uniform and uncorrelated with anything: c = 0, MI = 0
    assert FU.fast_fmi_windows(w, np.full_like(w, 5.0))[0] == 0.0


def test_fmi_extremes_and_symmetry(textured):
    a, b = textured
    f = np.where(np.arange(48) < 24, a, b)
    assert M.fmi((a, a), a) == 1.0
    assert M.fmi((a, b), np.full_like(a, 0.3)) == pytest.approx(0.0, abs=1e-9)
    assert M.fmi((a, b), f) == pytest.approx(M.fmi((b, a), f), rel=1e-12)
    # the pair value is the mean of the two terms (Haghighat's fmi.m)
    both = M.fmi((a, b), f)
    assert both == pytest.approx((M.fmi((a,), f) + M.fmi((b,), f)) / 2, rel=1e-12)


# --- Q_Y ---------------------------------------------------------------------------------------

def test_qy_by_hand():
    a = np.full((16, 16), 0.5)
    # flat sources (SSIM(A, B) = 1 >= 0.75, lambda = 1/2) and a flat F: only luminance counts,
    # (2 a f + C1) / (a^2 + f^2 + C1) with C1 ~ 1e-12
    assert M.qy((a, a), np.full((16, 16), 0.25), data_range=1.0) == pytest.approx(0.25 / 0.3125, rel=1e-9)


def test_qy_extremes_and_symmetry(textured):
    a, b = textured
    assert M.qy((a, a), a) == pytest.approx(1.0)
    # independent sources are nowhere similar: Q_Y = max(SSIM(A, F), SSIM(B, F)) = 1 for F = A
    assert M.qy((a, b), a) == pytest.approx(1.0)
    f = np.where(np.arange(48) < 24, a, b)
    assert M.qy((a, b), f) == pytest.approx(M.qy((b, a), f), rel=1e-12)
    assert abs(M.qy((a, b), np.full_like(a, 0.5))) < 0.01  # flat F keeps no structure


# --- Q_CB --------------------------------------------------------------------------------------

def test_qcb_extremes_and_symmetry(textured):
    a, b = textured
    a, b = 0.2 + 0.6 * a, 0.2 + 0.6 * b  # keep the local means away from 0
    assert M.qcb((a, a), a) == pytest.approx(1.0)
    assert M.qcb((a, np.full_like(a, 0.5)), a) == pytest.approx(1.0, abs=1e-6)  # B has no contrast
    assert M.qcb((a, b), np.full_like(a, 0.5)) == pytest.approx(0.0, abs=1e-6)
    f = np.where(np.arange(48) < 24, a, b)
    assert M.qcb((a, b), f) == pytest.approx(M.qcb((b, a), f), rel=1e-12)
    assert 0 < M.qcb((a, b), f) < 1


def test_qcb_masked_contrast_by_hand():
    # flat image: band-limited contrast 0 everywhere; masking: k C^3 / (h C^2 + Z)
    assert np.allclose(FU.masked_contrast(np.full((32, 32), 0.4)), 0, atol=1e-30)
    c = 0.1
    assert c**3 / (c**2 + 1e-4) == pytest.approx(0.1 / 1.01)


# --- all together ------------------------------------------------------------------------------

def test_evaluate_stack_forms_and_colour(textured):
    a, b = textured
    f = np.where(np.arange(48) < 24, a, b)
    v1 = M.evaluate(f, [a, b])
    v2 = M.evaluate(f, np.stack([a, b]))
    assert v1 == v2 and list(v1) == list(M.FUSION_METRICS)
    # colour: the metrics of the luminance
    rgb = lambda x: np.stack([x, x * 0.5, x * 0.25], -1)  # noqa: E731
    lum = lambda x: x * (0.299 + 0.587 * 0.5 + 0.114 * 0.25)  # noqa: E731
    vc = M.evaluate(rgb(f), np.stack([rgb(a), rgb(b)]), metrics="qabf,nmi")
    vg = M.evaluate(lum(f), np.stack([lum(a), lum(b)]), metrics="qabf,nmi", data_range=1.0)
    assert vc == pytest.approx(vg)
    with pytest.raises(ValueError, match="unknown metric"):
        M.evaluate(f, [a, b], metrics="qabf,bogus")
    with pytest.raises(ValueError, match="ground-truth"):
        M.evaluate(f, [a, b], metrics="psnr")
    with pytest.raises(ValueError, match="does not match"):
        M.evaluate(f[:10], [a, b])


def test_sharp_fusion_beats_a_blurred_one_on_every_metric():
    s = ne.sample_stack(n_planes=8, shape=(96, 96), seed=5)
    aif = s.all_in_focus
    blurred = np.rint(ndi.gaussian_filter(aif.astype(np.float64), 1.5)).astype(aif.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sharp = M.evaluate(aif, s.stack.data, aif)
    soft = M.evaluate(blurred, s.stack.data, aif)
    assert sharp["psnr"] == float("inf") and sharp["ssim"] == pytest.approx(1.0)
    for name in M.METRICS:
        assert sharp[name] > soft[name], name


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, napari_edof; assert 'napari_edof.metrics' not in sys.modules; "
            "import napari_edof.metrics; assert 'torch' not in sys.modules and 'napari' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stack_forms_weight_the_planes_in_focus(textured):
    a, b = textured
    # three identical planes: every form gives the maximum
    assert M.nmi((a, a, a), a) == pytest.approx(2.0)
    assert M.fmi((a, a, a), a) == 1.0
    # weighting="mean" is the plain mean of the per-source terms
    f = np.where(np.arange(48) < 24, a, b)
    flat = np.full_like(a, 0.5)
    assert M.nmi((a, b, flat), f, weighting="mean") == pytest.approx(
        2 * np.mean([M.nmi((x,), f) / 2 for x in (a, b, flat)]))
    # a flat plane has no saliency, so under "auto" it does not count
    assert M.nmi((a, b, flat), f) == pytest.approx(M.nmi((a, b), f, weighting="saliency"))
    assert M.fmi((a, b, flat), f) == pytest.approx(M.fmi((a, b), f, weighting="saliency"))
    assert M.nmi((a, b, flat), f) > M.nmi((a, b, flat), f, weighting="mean")
    # shares sum to one per pixel
    w = FU.saliency_weights(np.stack([a, b, flat]))
    np.testing.assert_allclose(w.sum(0), 1.0)
    assert np.all(w[2] == 0)


def test_qabf_stack_weights(textured):
    a, b = textured
    f = np.where(np.arange(48) < 24, a, b)
    flat = np.full_like(a, 0.5)
    assert M.qabf((a, b), f) == pytest.approx(M.qabf((a, b), f, L=1))
    assert M.qabf((a, b, flat), f) == pytest.approx(M.qabf((a, b, flat), f, L=2))
    assert M.qabf((a, b, flat), f) == pytest.approx(M.qabf((a, b), f, L=2))  # a flat plane weighs 0
    assert M.qabf((a, b, flat), f) != pytest.approx(M.qabf((a, b), f))


def _fast_fmi_loop(a, f):
    """One window pair by the published Fast-FMI steps, written out with loops (slow, plain)."""
    n_pos = len(a)
    if np.array_equal(a, f):
        return 1.0

    def pdf(x):
        x = np.ones(n_pos) if x.max() == x.min() else (x - x.min()) / (x.max() - x.min())
        return x / x.sum()

    pa, pf = pdf(a), pdf(f)
    ca, cf = np.cumsum(pa), np.cumsum(pf)
    da, df = pa - pa.mean(), pf - pf.mean()
    c = 0.0 if (da * df).sum() == 0 else (da * df).sum() / math.sqrt((da * da).sum() * (df * df).sum())
    pos = np.arange(1, n_pos + 1)
    sda = math.sqrt(max((pos**2 * pa).sum() - (pos * pa).sum() ** 2, 0))
    sdf = math.sqrt(max((pos**2 * pf).sum() - (pos * pf).sum() ** 2, 0))
    bound = (lambda x, y: min(x, y)) if c >= 0 else (lambda x, y: max(x + y - 1, 0))
    if c == 0 or sda == 0 or sdf == 0:
        mix = 0.0
    else:
        cov = sum(bound(cf[i], ca[j]) - cf[i] * ca[j] for i in range(n_pos) for j in range(n_pos))
        mix = c / (cov / (sdf * sda))
    H = lambda i, j: 0.0 if i < 0 or j < 0 else bound(cf[i], ca[j])  # noqa: E731
    hj = 0.0
    for i in range(n_pos):
        for j in range(n_pos):
            jb = H(i, j) - H(i - 1, j) - H(i, j - 1) + H(i - 1, j - 1)
            p = mix * jb + (1 - mix) * pf[i] * pa[j]
            if p != 0:
                hj -= p * math.log2(abs(p))
    ent = lambda p: -sum(x * math.log2(x) for x in p if x > 0)  # noqa: E731
    mi = ent(pa) + ent(pf) - hj
    return 0.0 if mi == 0 else 2 * mi / (ent(pa) + ent(pf))


def test_fast_fmi_vectorised_matches_the_steps():
    rng = np.random.default_rng(11)
    a = rng.random((40, 9)) ** 3
    f = np.where(rng.random((40, 1)) < 0.5, a[::-1] + 0.1 * rng.random((40, 9)), rng.random((40, 9)))
    f[:5] = a[:5] * 3 + 1  # same distribution after normalisation
    f[5:8] = -a[5:8]  # negatively correlated: the Frechet lower bound
    f[8, :] = 0.7  # flat
    got = FU.fast_fmi_windows(a, f)
    want = [_fast_fmi_loop(a[k], f[k]) for k in range(len(a))]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_csf_keeps_a_fraction_of_the_mean():
    # the DoG CSF at zero frequency is 1 - a = 0.2378: a constant image is scaled by it
    out = FU.csf_filter(np.full((32, 48), 0.6))
    np.testing.assert_allclose(out, 0.6 * (1 - 0.7622), rtol=1e-12)
