"""Registration before fusion: align every plane of a focus stack to a reference plane.

Real stacks move between planes: a hand-held camera shifts, a focusing lens "breathes" (the
magnification changes with focus), a stage drifts. :func:`register_stack` estimates one transform
per plane and resamples every channel with it, before fusion.

* Each plane is registered to its **neighbour** (neighbours differ least in blur), and the
  pairwise transforms are **chained** to the reference plane (by default the middle one).
* ``mode``: ``"translation"`` (phase correlation, sub-pixel), ``"similarity"`` (Fourier-Mellin:
  phase correlation of log-polar magnitude spectra for rotation and scale, then phase correlation
  for the translation) or ``"affine"`` (ORB features matched between neighbours, a RANSAC
  affine fit; falls back to similarity where too few features match). The degrees of freedom can
  be switched off one by one (``scale=False`` for microscopes, ``rotation=False``).
* Estimation runs on the focus guide (luminance for RGB), downscaled to at most ``max_size``
  pixels per side; the transform found is applied to every channel at full resolution.
* ``edges``: after warping, ``"crop"`` (default) keeps the largest rectangle valid in every plane;
  ``"edge"`` pads by repeating the border pixels, ``"zero"`` pads with 0 (both keep the size).
* The :class:`RegistrationReport` gives each plane's shift, scale, rotation, the pairwise
  phase-correlation error and the residual shift measured again after registration; fusion puts
  it in ``FusionResult.provenance["registration"]``.

Only scikit-image and scipy building blocks are used (``phase_cross_correlation``,
``warp_polar``, ``ORB``, ``ransac``, ``ndimage.affine_transform``): no home-made optimiser.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import StackError
from .stack import Stack, as_stack, is_dask

MODES = ("translation", "similarity", "affine")
#: Rotation and scale are refined on planes downscaled to at most this many pixels per side.
REFINE_SIZE = 256
EDGES = ("crop", "edge", "zero")


@dataclass
class PlaneTransform:
    """Where one plane sat relative to the reference plane, and how well it was registered.

    ``dy``/``dx``: shift of the plane's content relative to the reference (pixels, full
    resolution); ``scale``: its magnification relative to the reference; ``rotation``: degrees;
    ``pair_error``: phase-correlation error (0 perfect .. 1 unrelated) against its neighbour;
    ``residual``: shift (pixels) still measured against the registered neighbour afterwards.
    """

    plane: int
    dy: float = 0.0
    dx: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0
    pair_error: float = 0.0
    residual: float = 0.0
    method: str = "reference"
    matrix: list = field(default_factory=list)


@dataclass
class RegistrationReport:
    mode: str
    reference: int
    edges: str
    crop_box: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) kept in the input's pixels
    planes: list[PlaneTransform]
    downscale: float = 1.0

    @property
    def max_residual(self) -> float:
        return max((p.residual for p in self.planes), default=0.0)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["max_residual"] = self.max_residual
        return d

    def table(self) -> str:
        lines = [f"{'plane':>5} {'dy':>8} {'dx':>8} {'scale':>8} {'rot':>7} {'error':>6} {'resid':>6}  how"]
        for p in self.planes:
            lines.append(f"{p.plane:>5} {p.dy:8.2f} {p.dx:8.2f} {p.scale:8.4f} {p.rotation:7.3f} "
                         f"{p.pair_error:6.3f} {p.residual:6.2f}  {p.method}")
        return "\n".join(lines)


# --- estimation of one pair ---------------------------------------------------------------------
def _prep(img: np.ndarray) -> np.ndarray:
    """Zero-mean, Hann-windowed, mildly band-passed image for Fourier methods."""
    from scipy import ndimage as ndi
    from skimage.filters import window

    a = img.astype(np.float32)
    a = ndi.gaussian_filter(a, 1.0) - ndi.gaussian_filter(a, 8.0)
    return a * window("hann", a.shape).astype(np.float32)


def _translation(ref: np.ndarray, mov: np.ndarray, upsample: int = 20) -> tuple[np.ndarray, float]:
    """Shift (dy, dx) of ``mov``'s content relative to ``ref`` (mov(x) ~ ref(x - shift))."""
    from skimage.registration import phase_cross_correlation

    a, b = _prep(ref), _prep(mov)
    shift, error, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
    return -np.asarray(shift, np.float64), float(np.clip(error, 0, 1))


def _rotation_scale(ref: np.ndarray, mov: np.ndarray, *, scale: bool, rotation: bool) -> tuple[float, float]:
    """Fourier-Mellin: (scale, rotation in degrees) of ``mov``'s content relative to ``ref``."""
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    h, w = ref.shape
    radius = min(h, w) // 2
    shape = (720, 2 * radius)

    def logpolar(img):
        f = np.abs(np.fft.fftshift(np.fft.fft2(_prep(img))))
        # the centre (lowest frequencies) is dominated by the window; high frequencies by blur
        f = np.log1p(f)
        return warp_polar(f, radius=radius, output_shape=shape, scaling="log", order=1)[: shape[0] // 2]

    lp_ref, lp_mov = logpolar(ref), logpolar(mov)
    # keep the mid-frequency band, where neighbouring planes share most energy
    lo, hi = int(shape[1] * 0.25), int(shape[1] * 0.9)
    shift, _, _ = phase_cross_correlation(lp_ref[:, lo:hi], lp_mov[:, lo:hi], upsample_factor=20,
                                          normalization=None)
    rot = (360.0 / shape[0]) * shift[0] if rotation else 0.0
    klog = shape[1] / math.log(radius)
    # content magnified by s -> its spectrum shrinks by s: columns move by -klog * ln s
    s = math.exp(shift[1] / klog) if scale else 1.0
    return s, rot


def _refine(ref, mov, s0: float, rot0: float, centre: np.ndarray, *, scale: bool, rotation: bool,
            span: float = 0.03, rot_span: float = 1.5) -> tuple[float, float]:
    """Refine rotation, then scale: natural images have nearly scale-invariant (1/f) spectra, so
    the Fourier-Mellin peaks are weak and biased towards no motion. ``scipy.optimize.minimize_scalar``
    finds the value whose warp leaves the smallest phase-correlation error (translation-invariant)."""
    from scipy.optimize import minimize_scalar
    from skimage.registration import phase_cross_correlation
    from skimage.transform import downscale_local_mean

    f = max(1, int(math.ceil(max(ref.shape) / REFINE_SIZE)))
    if f > 1:  # scale and rotation do not change with the sampling: refine on smaller planes
        ref, mov = downscale_local_mean(ref, (f, f)), downscale_local_mean(mov, (f, f))
        centre = (np.array(ref.shape, np.float64) - 1) / 2
    a = _prep(ref)

    def cost(s, r):
        w = _warp(mov, _similarity_matrix(s, r, np.zeros(2), centre))
        return phase_cross_correlation(a, _prep(w), upsample_factor=4, normalization=None)[1]

    def search(fn, x0, lo, hi, tol):
        res = minimize_scalar(fn, bounds=(lo, hi), method="bounded", options={"xatol": tol, "maxiter": 25})
        return float(res.x) if res.success and fn(res.x) <= fn(x0) else x0

    s, r = s0, rot0
    if scale:
        s = search(lambda v: cost(v, r), s, s * (1 - span), s * (1 + span), 2e-4)
    if rotation:
        r_new = search(lambda v: cost(s, v), r, r - rot_span, r + rot_span, 0.01)
        if scale and abs(r_new - r) > 0.1:
            s = search(lambda v: cost(v, r_new), s, s * (1 - span / 3), s * (1 + span / 3), 2e-4)
        r = r_new
    return s, r


def _similarity_matrix(s: float, rot_deg: float, t: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Map (row, col) of the reference to (row, col) of a plane magnified by ``s``, rotated by
    ``rot_deg`` about ``centre`` and shifted by ``t``: x_plane = c + s R (x_ref - c) + t."""
    th = math.radians(rot_deg)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    M = np.eye(3)
    M[:2, :2] = s * R
    M[:2, 2] = centre - s * R @ centre + t
    return M


def _warp(img: np.ndarray, M: np.ndarray, *, order: int = 1, mode: str = "nearest", cval: float = 0.0):
    """``out(x) = img(M x)``: ``M`` maps the output's (reference's) (row, col) to ``img``'s."""
    from scipy import ndimage as ndi

    return ndi.affine_transform(img, M, order=order, mode=mode, cval=cval)


def _pair_similarity(ref, mov, *, scale: bool, rotation: bool):
    """Matrix mapping ref (row, col) to mov (row, col), and the pair's phase-correlation error."""
    centre = (np.array(ref.shape, np.float64) - 1) / 2
    s, rot = _rotation_scale(ref, mov, scale=scale, rotation=rotation)
    if scale or rotation:
        s, rot = _refine(ref, mov, s, rot, centre, scale=scale, rotation=rotation)
    if abs(s - 1) < 1e-4 and abs(rot) < 1e-3:
        s, rot = 1.0, 0.0
    # undo the rotation/scale on mov, then find the remaining translation
    A = _similarity_matrix(s, rot, np.zeros(2), centre)
    mov_rs = _warp(mov, A)
    t, err = _translation(ref, mov_rs)
    # mov_rs(x) = mov(A x) and mov_rs(x) ~ ref(x - t)  =>  ref(y) ~ mov(A (y + t))
    T = np.eye(3)
    T[:2, 2] = t
    return A @ T, err, "fourier-mellin"


def _pair_affine(ref, mov, *, scale: bool, rotation: bool):
    """ORB features + RANSAC affine fit (falls back to similarity with too few matches)."""
    from skimage.feature import ORB, match_descriptors
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    def norm(a):
        a = a.astype(np.float64)
        lo, hi = np.percentile(a, (0.5, 99.5))
        return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)

    try:
        orb = ORB(n_keypoints=800, fast_threshold=0.05)
        orb.detect_and_extract(norm(ref))
        k1, d1 = orb.keypoints, orb.descriptors
        orb.detect_and_extract(norm(mov))
        k2, d2 = orb.keypoints, orb.descriptors
        matches = match_descriptors(d1, d2, cross_check=True, max_ratio=0.8)
    except (RuntimeError, ValueError, IndexError):  # too few keypoints in a blurred plane
        matches = np.empty((0, 2), int)
    if len(matches) >= 12:
        src, dst = k1[matches[:, 0]], k2[matches[:, 1]]  # (row, col)
        model, inliers = ransac((src, dst), AffineTransform, min_samples=3, residual_threshold=1.5,
                                max_trials=500, rng=0)
        if model is not None and inliers is not None and inliers.sum() >= 8:
            M = np.asarray(model.params, np.float64)  # ref (row, col) -> mov (row, col)
            warped = _warp(mov, M)
            _, err = _translation(ref, warped)
            return M, err, f"orb+ransac ({int(inliers.sum())} inliers)"
    M, err, _ = _pair_similarity(ref, mov, scale=scale, rotation=rotation)
    return M, err, "fourier-mellin (too few feature matches)"


def _decompose(M: np.ndarray, centre: np.ndarray) -> tuple[float, float, float, float]:
    """(dy, dx, scale, rotation degrees) of a ref -> plane matrix, about the image centre."""
    A = M[:2, :2]
    s = math.sqrt(abs(np.linalg.det(A)))
    rot = math.degrees(math.atan2(A[1, 0], A[0, 0]))
    t = M[:2, :2] @ centre + M[:2, 2] - centre
    return float(t[0]), float(t[1]), float(s), float(rot)


# --- whole stack --------------------------------------------------------------------------------
def _guide_planes(frame: np.ndarray, stack: Stack, guide) -> np.ndarray:
    from .colour import make_guide, resolve_guide

    g = resolve_guide(guide, stack.n_channels, stack.rgb)
    return make_guide(frame, g)


def _downscale(planes: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    from skimage.transform import downscale_local_mean

    f = max(1, int(math.ceil(max(planes.shape[1:]) / max_size)))
    if f == 1:
        return planes.astype(np.float32), 1
    return np.stack([downscale_local_mean(p, (f, f)).astype(np.float32) for p in planes]), f


NO_SIGNAL = "no signal: not registered"


def has_signal(planes: np.ndarray) -> np.ndarray:
    """Per plane: True when it has structure to register on. A blank or constant plane (its
    band-passed content at rounding level of its values, or below 1e-4 of the stack's strongest)
    has none: a phase correlation on it finds shifts in rounding noise."""
    sig = np.array([float(np.std(_prep(p))) for p in planes])
    peak = np.array([float(np.max(np.abs(p))) if p.size else 0.0 for p in planes])
    strongest = float(sig.max()) if sig.size else 0.0
    return np.isfinite(sig) & (sig > np.maximum(1e-5 * peak, 1e-4 * strongest))


def estimate_transforms(guide: np.ndarray, *, mode: str = "translation", reference: int | None = None,
                        scale: bool = True, rotation: bool = True, max_size: int = 1024):
    """Matrices mapping the reference plane's (row, col) to each plane's, at full resolution.

    ``guide``: (Z, Y, X) float. Returns (list of 3x3 matrices, list of (pair_error, how), the
    reference plane, the downscale factor used).
    """
    if mode not in MODES:
        raise StackError(f"registration mode {mode!r} is not one of {', '.join(MODES)}")
    Z = guide.shape[0]
    ref = Z // 2 if reference is None else int(reference)
    if not 0 <= ref < Z:
        raise StackError(f"registration reference plane {reference} is outside 0..{Z - 1}")
    small, f = _downscale(guide, max_size)
    if min(small.shape[1:]) < 16:
        raise StackError(f"planes of {guide.shape[1]}x{guide.shape[2]} pixels are too small to register")

    def pair(a, b):
        if mode == "translation":
            t, err = _translation(small[a], small[b])
            M = np.eye(3)
            M[:2, 2] = t
            return M, err, "phase correlation"
        if mode == "similarity":
            return _pair_similarity(small[a], small[b], scale=scale, rotation=rotation)
        return _pair_affine(small[a], small[b], scale=scale, rotation=rotation)

    mats: list[np.ndarray] = [np.eye(3)] * Z
    info: list[tuple[float, str]] = [(0.0, "reference")] * Z
    signal = has_signal(small)
    asked = ref
    if not signal[ref] and signal.any():  # a reference without signal: its nearest plane with signal
        ref = min(np.flatnonzero(signal), key=lambda k: (abs(k - asked), k))
        info[ref] = (0.0, f"reference (plane {asked}, asked for, has no signal)")
    for side in (range(ref + 1, Z), range(ref - 1, -1, -1)):  # above, then below the reference
        prev = ref  # each plane registered to its nearest neighbour (towards the reference) with signal
        for k in side:
            if not signal[k]:  # a blank or constant plane: nothing to register on, left where it is
                info[k] = (0.0, NO_SIGNAL)
                continue
            B, err, how = pair(prev, k)
            mats[k] = B @ mats[prev]
            info[k] = (err, how)
            prev = k
    if not signal[asked]:
        info[asked] = (0.0, NO_SIGNAL)
    # back to full resolution: x_small = x_full / f  (pixel centres: (x + 0.5) / f - 0.5)
    S = np.diag([1.0 / f, 1.0 / f, 1.0])
    S[:2, 2] = 0.5 / f - 0.5
    S_inv = np.linalg.inv(S)
    full = [S_inv @ M @ S for M in mats]
    return full, info, ref, f


def _valid_box(masks: np.ndarray) -> tuple[int, int, int, int]:
    """The largest-ish axis-aligned rectangle inside ``masks.all(0)``, shrunk from the borders."""
    ok = masks.all(axis=0)
    y0, y1, x0, x1 = 0, ok.shape[0], 0, ok.shape[1]
    while y1 - y0 > 1 and x1 - x0 > 1:
        sub = ok[y0:y1, x0:x1]
        bad = [(~sub[0]).sum(), (~sub[-1]).sum(), (~sub[:, 0]).sum(), (~sub[:, -1]).sum()]
        k = int(np.argmax(bad))
        if bad[k] == 0:
            break
        if k == 0:
            y0 += 1
        elif k == 1:
            y1 -= 1
        elif k == 2:
            x0 += 1
        else:
            x1 -= 1
    return y0, y1, x0, x1


def _residuals(planes: np.ndarray, ref: int, max_size: int) -> list[float]:
    small, f = _downscale(planes, max_size)
    signal = has_signal(small)
    out = [0.0] * len(small)
    for k in range(len(small)):
        if k == ref or not signal[k]:
            continue
        step = -1 if k > ref else 1
        nb = k + step  # the nearest neighbour towards the reference that has signal
        while nb != ref and not signal[nb]:
            nb += step
        if not signal[nb]:
            continue
        t, _ = _translation(small[nb], small[k], upsample=10)
        out[k] = float(np.hypot(*t)) * f
    return out


def register_stack(stack, *, mode: str = "translation", reference: int | None = None, scale: bool = True,
                   rotation: bool = True, edges: str = "crop", guide="auto", max_size: int = 1024,
                   order: int = 3, axes: str | None = None) -> tuple[Stack, RegistrationReport]:
    """Align every plane of ``stack`` to a reference plane; returns (registered Stack, report).

    Parameters
    ----------
    stack : Stack, numpy or dask array
    mode : "translation", "similarity" or "affine"
    reference : int, optional
        The plane the others are aligned to (default: the middle plane).
    scale, rotation : bool
        Degrees of freedom of "similarity" (and of affine's fallback); ``False`` fixes them.
    edges : "crop", "edge" or "zero"
        What happens to pixels that leave the frame: crop to the area valid in every plane, or
        pad them by repeating the border or with zeros (the size is kept).
    guide : what registration is measured on for colour data (as in fusion).
    max_size : int
        Estimation runs on planes downscaled to at most this many pixels per side.
    order : int
        Spline order of the resampling (3: cubic, keeps fine detail; 1: bilinear, softer).

    With a T axis each time point is registered on its own (the crop box is the one valid for
    all of them). The data is read into memory (numpy) in the input's dtype.
    """
    from scipy import ndimage as ndi  # (imported here: ``import napari_edof`` stays without scipy)

    from .policy import check_memory, registration_memory

    stack = as_stack(stack, axes=axes)
    check_memory(stack, what="registering", need=registration_memory(stack))
    if edges not in EDGES:
        raise StackError(f"registration edges={edges!r} is not one of {', '.join(EDGES)}")
    canon = stack.canonical()  # (T, Z, Y, X, C)
    T, Z, C = stack.n_times, stack.n_planes, stack.n_channels
    Y, X = stack.yx_shape
    dtype = stack.dtype
    out = np.empty((T, Z, Y, X, C), dtype)
    valid = np.ones((Z, Y, X), bool) if edges == "crop" else None
    reports = []
    mode_nd = "constant" if edges in ("zero", "crop") else "nearest"
    for t in range(T):
        frame = canon[t]
        if is_dask(frame):
            frame = frame.compute()
        frame = np.asarray(frame)
        gd = _guide_planes(frame, stack, guide)
        if not np.isfinite(gd).all():
            raise StackError(f"{stack.name}: the stack contains NaN or infinite values; cannot register it")
        mats, info, ref, f = estimate_transforms(gd, mode=mode, reference=reference, scale=scale,
                                                 rotation=rotation, max_size=max_size)
        centre = (np.array([Y, X], np.float64) - 1) / 2
        for k in range(Z):
            M = mats[k]
            identity = np.allclose(M, np.eye(3), atol=1e-6)
            for c in range(C):
                if identity:
                    out[t, k, :, :, c] = frame[k, :, :, c]
                    continue
                w = ndi.affine_transform(frame[k, :, :, c].astype(np.float32), M, order=order, mode=mode_nd,
                                         cval=0.0)
                out[t, k, :, :, c] = _cast(w, dtype)
            if valid is not None and not identity:
                valid[k] &= ndi.affine_transform(np.ones((Y, X), np.float32), M, order=1, mode="constant",
                                                 cval=0.0) > 0.999
        gd_reg = _guide_planes(out[t], stack, guide)
        res = _residuals(gd_reg, ref, max_size)
        planes = []
        for k in range(Z):
            dy, dx, s, rot = _decompose(mats[k], centre)
            planes.append(PlaneTransform(plane=k, dy=dy, dx=dx, scale=s, rotation=rot, pair_error=info[k][0],
                                         residual=res[k], method=info[k][1],
                                         matrix=np.round(mats[k], 6).tolist()))
        reports.append((planes, ref, f))
    box = None
    if valid is not None:
        box = _valid_box(valid)
        y0, y1, x0, x1 = box
        if (y1 - y0) < 16 or (x1 - x0) < 16:
            raise StackError(f"{stack.name}: after registration only {y1 - y0}x{x1 - x0} pixels are valid in every "
                             "plane; the planes do not overlap enough (try edges='edge')")
        out = out[:, :, y0:y1, x0:x1]
    # back to the stack's own axis order
    data = _from_canonical(out, stack.axes)
    meta = dict(stack.metadata)
    planes, ref, f = reports[0]
    report = RegistrationReport(mode=mode, reference=ref, edges=edges, crop_box=box, planes=planes,
                                downscale=float(f))
    meta["registration"] = report.as_dict()
    if T > 1:
        meta["registration_per_time"] = [[asdict(p) for p in r[0]] for r in reports]
    from dataclasses import replace

    return replace(stack, data=data, metadata=meta), report


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(a), info.min, info.max).astype(dtype)
    return a.astype(dtype)


def _from_canonical(a: np.ndarray, axes: str) -> np.ndarray:
    """(T, Z, Y, X, C) -> the order of ``axes`` (dropping T / C when ``axes`` has none)."""
    have = "TZYXC"
    if "C" not in axes:
        a = a[..., 0]
        have = "TZYX"
    if "T" not in axes:
        a = a[0]
        have = have[1:]
    return np.ascontiguousarray(np.transpose(a, [have.index(c) for c in axes]))


#: a shift (pixels of the full image) from which :func:`planes_look_shifted` suggests registering
SHIFT_HINT_PX = 1.5


# --- the shift check in numpy alone (issue 17) -------------------------------------------------
# The check runs before every command-line fusion and every widget run; importing scipy.ndimage
# and scikit-image's registration, filters and transform for it took about 0.5 s. These are the
# same steps with numpy alone: the band-pass by FFT on the reflected image (scipy's Gaussian
# filters, mode "reflect", to rounding), scikit-image's radial Hann window, the cross-correlation
# by FFT, its peak refined on a 10x finer grid by a matrix-multiply DFT (scikit-image's way), and
# the same error. (Not BLAS: a 256 x 256 matrix product took 50 ms on the loaded 2-core machine.)


def _gauss_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian kernel: radius ``int(truncate * sigma + 0.5)``, weights summing to 1."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum()


def _transfer(n: int, w: np.ndarray, real: bool) -> np.ndarray:
    """The DFT (length ``n``) of the centred kernel ``w``: circular convolution with it."""
    k = np.zeros(n)
    r = len(w) // 2
    k[: r + 1] = w[r:]
    k[n - r:] = w[:r]
    return np.fft.rfft(k) if real else np.fft.fft(k)


def _bandpass(a: np.ndarray) -> np.ndarray:
    """``gaussian_filter(a, 1) - gaussian_filter(a, 8)`` as scipy.ndimage computes it (mode "reflect":
    ``d c b a | a b c d``), with numpy's FFT: the image padded by the larger kernel's radius
    (reflected), both kernels applied at once in the Fourier domain, the padding cut off again."""
    w1, w8 = _gauss_weights(1.0), _gauss_weights(8.0)
    r = len(w8) // 2
    p = np.pad(a, r, mode="symmetric")
    h, w = p.shape
    t1 = _transfer(h, w1, False)[:, None] * _transfer(w, w1, True)[None, :]
    t8 = _transfer(h, w8, False)[:, None] * _transfer(w, w8, True)[None, :]
    out = np.fft.irfft2(np.fft.rfft2(p) * (t1 - t8), s=p.shape)
    return out[r:r + a.shape[0], r:r + a.shape[1]].astype(np.float32)


def _hann_radial(shape: tuple[int, int]) -> np.ndarray:
    """scikit-image's ``window("hann", shape)``: a symmetric Hann window of the longer side, turned
    around the centre (0 beyond its radius)."""
    m = max(shape)
    centre = m / 2 - 0.5
    ys = np.arange(shape[0], dtype=np.float64) * (m / shape[0]) - centre
    xs = np.arange(shape[1], dtype=np.float64) * (m / shape[1]) - centre
    c = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) + centre
    w = 0.5 - 0.5 * np.cos(2 * np.pi * c / max(m - 1, 1))
    return np.where(c <= m - 1, w, 0.0).astype(np.float32)


def _prep_np(img: np.ndarray) -> np.ndarray:
    """:func:`_prep` (zero-mean band-pass, Hann window) with numpy alone."""
    a = _bandpass(np.asarray(img, np.float32))
    return a * _hann_radial(a.shape)


def _upsampled_dft(data: np.ndarray, size: int, factor: float, offsets) -> np.ndarray:
    """The inverse DFT of ``data`` on a ``size`` x ``size`` grid ``factor`` times finer than the
    pixels, from ``offsets`` (matrix-multiply DFT, as in scikit-image's phase correlation)."""
    for n, off in zip(data.shape[::-1], offsets[::-1]):
        kernel = np.exp(-2j * np.pi * (np.arange(size) - off)[:, None] * np.fft.fftfreq(n, factor)[None, :])
        data = np.tensordot(kernel, data, axes=(1, -1))
    return data


def _translation_np(ref: np.ndarray, mov: np.ndarray, upsample: int = 10) -> tuple[np.ndarray, float]:
    """:func:`_translation` with numpy alone: the shift (dy, dx) of ``mov``'s content against
    ``ref``, to 1 / ``upsample`` pixel, and the error of scikit-image's ``phase_cross_correlation``
    (0 for the same content, 1 for nothing in common)."""
    a, b = _prep_np(ref), _prep_np(mov)
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    product = fa * np.conj(fb)
    xc = np.fft.ifft2(product)  # circular cross-correlation
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(xc))), xc.shape), np.float64)
    shape = np.array(xc.shape, np.float64)
    peak = np.where(peak > np.trunc(shape / 2), peak - shape, peak)
    # refine on a grid `upsample` times finer, 1.5 pixels around the peak
    shift = np.round(peak * upsample) / upsample
    size = int(np.ceil(upsample * 1.5))
    centre = np.trunc(size / 2.0)
    fine = _upsampled_dft(product.conj(), size, upsample, centre - shift * upsample).conj()
    top = np.unravel_index(int(np.argmax(np.abs(fine))), fine.shape)
    shift = shift + (np.array(top, np.float64) - centre) / upsample
    amp = float(np.sum(np.abs(fa) ** 2) * np.sum(np.abs(fb) ** 2))
    err = 1.0 - float(np.abs(fine[top]) ** 2) / amp if amp > 0 else 1.0
    return -shift, float(np.clip(np.sqrt(abs(err)), 0, 1))


def _downscale_np(planes: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """:func:`_downscale` (block means, the last blocks padded with zeros) with numpy alone."""
    f = max(1, int(math.ceil(max(planes.shape[1:]) / max_size)))
    planes = np.asarray(planes, np.float32)
    if f == 1:
        return planes, 1
    z, y, x = planes.shape
    py, px = -y % f, -x % f
    if py or px:
        planes = np.pad(planes, ((0, 0), (0, py), (0, px)))
    ny, nx = (y + py) // f, (x + px) // f
    rows = planes.reshape(z, ny, f, x + px).sum(axis=2)  # (whole rows added: 8x less data for the next sum)
    return rows.reshape(z, ny, nx, f).sum(axis=3) * np.float32(1.0 / (f * f)), f


def _has_signal_np(planes: np.ndarray) -> np.ndarray:
    """:func:`has_signal` with :func:`_prep_np`."""
    sig = np.array([float(np.std(_prep_np(p))) for p in planes])
    peak = np.array([float(np.max(np.abs(p))) if p.size else 0.0 for p in planes])
    strongest = float(sig.max()) if sig.size else 0.0
    return np.isfinite(sig) & (sig > np.maximum(1e-5 * peak, 1e-4 * strongest))


def planes_look_shifted(stack, *, guide="auto", max_side: int = 256, t: int = 0,
                        threshold: float = SHIFT_HINT_PX) -> float | None:
    """A cheap check whether a stack's planes moved: the largest shift (in full-image pixels) of
    its first and last planes against the middle one, by phase correlation on a guide image
    downsampled to at most ``max_side`` pixels (three planes read). None below ``threshold`` (or
    when the planes have no structure to compare); the shift otherwise, to suggest registration.
    """
    stack = as_stack(stack)
    n = stack.n_planes
    if n < 2:
        return None
    picks = sorted({0, n // 2, n - 1})
    canon = stack.canonical()  # (T, Z, Y, X, C)
    frame = np.stack([np.asarray(canon[t, z]) for z in picks])  # (3, Y, X, C): three planes only
    gd = _guide_planes(frame, stack, guide)
    small, f = _downscale_np(gd, max_side)  # (numpy alone: no scipy or scikit-image to import)
    ok = _has_signal_np(small)
    mid = picks.index(n // 2)
    if not ok[mid]:
        return None
    worst = 0.0
    for i in range(len(picks)):
        if i == mid or not ok[i]:
            continue
        shift, err = _translation_np(small[mid], small[i])
        if err > 0.98:  # nothing in common: no reliable shift (very different focus)
            continue
        worst = max(worst, float(np.hypot(*shift)) * f)
    return worst if worst >= threshold else None


def parse_register(register) -> dict | None:
    """``register=`` of fuse: None/False/"none", a mode name, or a dict of register_stack options."""
    if register in (None, False, "", "none", "off"):
        return None
    if isinstance(register, str):
        if register not in MODES:
            raise StackError(f"register={register!r} is not one of none, {', '.join(MODES)}")
        return {"mode": register}
    if isinstance(register, dict):
        opts = dict(register)
        opts.setdefault("mode", "translation")
        known = {"mode", "reference", "scale", "rotation", "edges", "guide", "max_size", "order"}
        bad = sorted(set(opts) - known)
        if bad:
            raise StackError(f"unknown registration option(s) {', '.join(bad)}; use {', '.join(sorted(known))}")
        if opts["mode"] not in MODES:
            raise StackError(f"registration mode {opts['mode']!r} is not one of {', '.join(MODES)}")
        return opts
    raise StackError(f"register= takes None, a mode ({', '.join(MODES)}) or a dict of options, not {register!r}")
