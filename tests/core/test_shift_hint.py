"""Issue 17: the "planes look shifted" check with numpy alone (no scipy or scikit-image imported
for it): the same band-pass and window as the registration's, a known subpixel shift found (as
scikit-image's phase correlation finds it), no shift said for an aligned stack."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edof.core import registration as reg


@pytest.fixture(scope="module")
def scene():
    from skimage import data

    return data.camera().astype(np.float32)[:200, :232]  # (not square: the window and the FFT sizes differ)


def test_prep_is_the_registrations_prep(scene):
    """Band-pass (scipy's Gaussian filters, mode reflect) and scikit-image's radial Hann window."""
    want = reg._prep(scene)
    got = reg._prep_np(scene)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3 * float(np.abs(want).max()))


def test_downscale_is_the_registrations_downscale(scene):
    planes = np.stack([scene, scene[::-1], scene[:, ::-1]])
    want, fw = reg._downscale(planes, 64)  # 232 / 64 -> blocks of 4, the last ones padded with zeros
    got, fg = reg._downscale_np(planes, 64)
    assert fg == fw == 4
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shift", [(2.3, -1.6), (-4.75, 0.4), (0.0, 3.2)])
def test_known_shift_found(scene, shift):
    mov = ndi.shift(scene, shift, order=3, mode="nearest")
    found, err = reg._translation_np(scene, mov)
    np.testing.assert_allclose(found, shift, atol=0.11)
    assert err < 0.5
    sk, sk_err = reg._translation(scene, mov, upsample=10)  # scikit-image's phase correlation, same grid
    np.testing.assert_allclose(found, sk, atol=1e-3)
    assert err == pytest.approx(sk_err, abs=1e-3)


def test_no_common_content_has_a_high_error(scene):
    rng = np.random.default_rng(3)
    _, err = reg._translation_np(scene, rng.normal(size=scene.shape).astype(np.float32))
    assert err > 0.98  # (the check skips such pairs, as before)


def test_hint_finds_a_shift_and_none_on_an_aligned_stack(scene):
    planes = [ndi.shift(scene, (dy, dx), order=3, mode="nearest") for dy, dx in
              [(6.0, -3.0), (3.0, -1.5), (0.0, 0.0), (-2.0, 1.0), (-4.0, 2.0)]]
    big = np.stack([np.kron(p, np.ones((2, 2), np.float32)) for p in planes])  # 400 x 464: downscaled by 2
    found = reg.planes_look_shifted(big, max_side=256)
    assert found == pytest.approx(np.hypot(12.0, 6.0), abs=0.6)  # the first plane, in full-size pixels
    still = np.stack([np.kron(scene, np.ones((2, 2), np.float32))] * 5)
    assert reg.planes_look_shifted(still, max_side=256) is None
    blank = np.zeros((4, 64, 64), np.float32)
    assert reg.planes_look_shifted(blank) is None  # nothing to compare: no hint


def test_hint_imports_neither_scipy_nor_skimage(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from napari_edof.core.registration import planes_look_shifted\n"
        "rng = np.random.default_rng(0)\n"
        "img = rng.random((300, 300)).astype(np.float32)\n"
        "st = np.stack([np.roll(img, (k, -k), (0, 1)) for k in range(4)])\n"
        "print(planes_look_shifted(st))\n"
        "print(sorted(m for m in ('scipy', 'skimage') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert float(out[0]) == pytest.approx(np.hypot(2, 2), abs=0.3)  # planes 0 and 3 against plane 2
    assert out[1] == "[]"
