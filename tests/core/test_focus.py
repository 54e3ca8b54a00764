"""Focus measures: numpy and torch agree, and each measure prefers the sharp plane."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edof.core.focus import MEASURES, box_sum_valid, focus_measure, measure_radius, measure_valid


@pytest.fixture
def plane():
    rng = np.random.default_rng(0)
    return (rng.random((40, 48)) * 200).astype(np.float32)


@pytest.mark.parametrize("radius", [0, 1, 4])
def test_box_sum_matches_scipy(plane, radius):
    n = 2 * radius + 1
    ref = ndi.uniform_filter(plane.astype(np.float64), n, mode="constant") * n * n
    got = box_sum_valid(plane, radius)
    crop = ref[radius : radius + got.shape[0], radius : radius + got.shape[1]]
    np.testing.assert_allclose(got, crop, rtol=1e-5)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("radius", [1, 3])
def test_numpy_and_torch_agree(plane, measure, radius):
    torch = pytest.importorskip("torch")
    from napari_edof.core.focus import measure_valid_torch

    kw = dict(radius=radius, step=2 if measure == "sml" else 1, threshold=5.0 if measure == "sml" else 0.0)
    a = measure_valid(plane, measure, **kw)
    b = measure_valid_torch(torch.from_numpy(plane), measure, **kw).numpy()
    assert a.shape == b.shape
    r = measure_radius(measure, radius, kw["step"])
    assert a.shape == (plane.shape[0] - 2 * r, plane.shape[1] - 2 * r)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(np.abs(a).max()))


def test_sml_formula_by_hand():
    # a single bright pixel: ML at that pixel is |2v| + |2v| = 4v, its 4 neighbours see v each
    p = np.zeros((7, 7), np.float32)
    p[3, 3] = 10
    ml = measure_valid(p, "sml", radius=0, step=1)
    assert ml[2, 2] == 40  # (3, 3) in the valid frame shrunk by 1
    assert ml[1, 2] == 10 and ml[2, 1] == 10
    # threshold removes the weak neighbours but not the centre
    mlt = measure_valid(p, "sml", radius=0, step=1, threshold=11)
    assert mlt[2, 2] == 40 and mlt[1, 2] == 0
    # window sum over 3x3 around the centre: 40 + 4 * 10
    assert measure_valid(p, "sml", radius=1, step=1)[1, 1] == 80


@pytest.mark.parametrize("measure", MEASURES)
def test_measure_prefers_sharp(plane, measure):
    sharp = plane
    blurred = ndi.gaussian_filter(plane, 2)
    a = focus_measure(sharp, measure, radius=2)
    b = focus_measure(blurred, measure, radius=2)
    assert a.shape == plane.shape
    assert (a > b).mean() > 0.95


def test_same_size_measure_small_input():
    p = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert focus_measure(p, "laplacian", radius=2).shape == (3, 3)


def test_unknown_measure():
    with pytest.raises(ValueError, match="unknown focus measure"):
        measure_valid(np.zeros((9, 9), np.float32), "nope")
