"""The training synthesiser: determinism, ground truth, perturbation ranges, dataset shapes."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edof.data import layered_defocus, sample_stack
from napari_edof.training import scenes, synth
from napari_edof.training.datasets import PairDataset, StackDataset, validation_set


def _sharpness(stack):
    """Local energy of the Laplacian (5x5), per plane: (N, H, W)."""
    return np.stack([ndi.uniform_filter(ndi.laplace(p.astype(np.float64)) ** 2, 5) for p in stack])


@pytest.mark.parametrize("name", list(scenes.SCENES))
def test_scenes_deterministic_and_in_range(name):
    a = scenes.make_scene(name, (48, 56), np.random.default_rng(3))
    b = scenes.make_scene(name, (48, 56), np.random.default_rng(3))
    c = scenes.make_scene(name, (48, 56), np.random.default_rng(4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    img, depth = a
    assert img.shape == (48, 56, 3) and img.dtype == np.float32 and depth.shape == (48, 56)
    assert 0 <= img.min() and img.max() <= 1 and depth.min() == 0 and depth.max() == pytest.approx(1)


def test_datasets_deterministic():
    ds = StackDataset(seed=5, crop=(32, 32), n_range=(3, 6))
    for i in (0, 7):
        a, b = ds[i], StackDataset(seed=5, crop=(32, 32), n_range=(3, 6))[i]
        for k in ("stack", "aif", "index", "depth"):
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(ds[0]["aif"], StackDataset(seed=6, crop=(32, 32))[0]["aif"])
    b1, b2 = ds.batch(2, 3), ds.batch(2, 3)
    np.testing.assert_array_equal(b1["stack"], b2["stack"])
    p1, p2 = PairDataset(seed=1, crop=(32, 32))[4], PairDataset(seed=1, crop=(32, 32))[4]
    np.testing.assert_array_equal(p1["near"], p2["near"])
    np.testing.assert_array_equal(p1["mask"], p2["mask"])


def test_layered_gt_pixels_equal_the_all_in_focus_image():
    rng = np.random.default_rng(0)
    img, depth = scenes.make_scene("dead_leaves", (64, 64), rng)
    cfg = synth.SynthConfig(models={"layered": 1}, flicker=0, noise_p=0)  # exposure/colour stay on
    for rgb in (False, True):
        s = synth.synthesize(img, depth, 7, np.random.default_rng(1), cfg, rgb=rgb)
        assert s.stack.shape == ((7, 64, 64, 3) if rgb else (7, 64, 64))
        picked = np.take_along_axis(s.stack, s.index[None, ..., None] if rgb else s.index[None], 0)[0]
        np.testing.assert_array_equal(picked, s.aif)
        np.testing.assert_array_equal(s.index, synth.depth_bins(depth, 7))


def test_layered_default_schedule_unchanged():
    """``sigmas`` generalises ``sigma_step`` (the built-in sample keeps its arrays)."""
    rng = np.random.default_rng(2)
    img = rng.random((40, 40)).astype(np.float32)
    depth = rng.random((40, 40)).astype(np.float32)
    a, ia = layered_defocus(img, depth, 5, sigma_step=1.5)
    b, ib = layered_defocus(img, depth, 5, sigmas=1.5 * np.arange(5))
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError):
        layered_defocus(img, depth, 5, sigmas=[1, 2, 3, 4, 5])
    s = sample_stack(n_planes=4, shape=(32, 32), seed=0)  # public behaviour: exact in its plane
    assert s.stack.shape == (4, 32, 32)


@pytest.mark.parametrize("model", synth.MODELS)
def test_gt_plane_is_the_sharpest(model):
    rng = np.random.default_rng(11)
    tex = scenes.noise_texture((96, 96), rng)
    depth = scenes.smooth_depth((96, 96), rng)
    img = scenes.luminance(tex)
    stack, index = synth.render_stack(img, depth, 6, model=model, sigmas=synth.paper_sigmas(6), blur=1.5)
    np.testing.assert_array_equal(index, synth.depth_bins(depth, 6))
    best = _sharpness(stack).argmax(0)
    inner = (slice(4, -4), slice(4, -4))
    assert (best == index)[inner].mean() > 0.8
    assert (np.abs(best - index)[inner] <= 1).mean() > 0.98
    # blur grows with the distance to the true plane
    err = [np.abs(np.take_along_axis(stack, np.clip(index + d, 0, 5)[None], 0)[0] - img)
           [(index + d >= 0) & (index + d <= 5)].mean() for d in (0, 1, 2, 3)]
    assert err[0] <= err[1] < err[2] < err[3]


def test_thin_lens_is_exact_at_the_focal_plane():
    rng = np.random.default_rng(1)
    img = rng.random((32, 32)).astype(np.float32)
    depth = np.full((32, 32), 2.5 / 5, np.float32)  # the centre of bin 2 of 5
    stack, index = synth.thin_lens_defocus(img, depth, 5, blur=2.0)
    assert (index == 2).all()
    np.testing.assert_allclose(stack[2], img, atol=1e-6)
    assert np.abs(stack[0] - img).mean() > np.abs(stack[1] - img).mean() > 0.01


def test_paper_sigmas():
    np.testing.assert_allclose(synth.paper_sigmas(4), [0, 0.8, 1.1, 1.4])
    s = synth.random_sigmas(8, np.random.default_rng(0))
    assert s[0] == 0 and np.all(np.diff(s) > 0)


def test_poisson_gaussian_noise_statistics():
    x = np.full((200, 200), 0.5, np.float32)
    y = synth.poisson_gaussian(x, np.random.default_rng(0), peak=100.0, read=0.01)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert abs(y.mean() - 0.5) < 0.005
    assert y.std() == pytest.approx(np.sqrt(0.5 / 100 + 0.01 ** 2), rel=0.05)
    z = synth.poisson_gaussian(np.zeros((50, 50), np.float32), np.random.default_rng(0), peak=50.0, read=0.0)
    assert (z == 0).all()


def test_exposure_and_colour_jitter_ranges():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3)).astype(np.float32)
    for seed in range(20):
        r = np.random.default_rng(seed)
        e = synth.jitter_exposure(img, r, gain=(0.9, 1.1), gamma=(1.0, 1.0), offset=(0.0, 0.0))
        assert e.min() >= 0 and e.max() <= 1
        ratio = e[img > 0.1] / img[img > 0.1]
        assert ratio.min() >= 0.9 - 1e-5 and ratio[e[img > 0.1] < 1].max() <= 1.1 + 1e-5
        c = synth.jitter_colour(img, r)
        assert c.dtype == np.float32 and c.min() >= 0 and c.max() <= 1
    same = synth.jitter_colour(img, rng, channel_gain=(1, 1), saturation=(1, 1))
    np.testing.assert_allclose(same, img, atol=1e-6)


def test_stack_dataset_shapes():
    ds = StackDataset(seed=0, crop=(40, 48), n_range=(3, 5))
    for i in range(4):
        it = ds[i]
        n = it["n"]
        assert 3 <= n <= 5 and it["stack"].shape == (n, 40, 48) and it["stack"].dtype == np.float32
        assert 0 <= it["stack"].min() and it["stack"].max() <= 1
        assert it["aif"].shape == (40, 48) and it["index"].shape == (40, 48) and it["depth"].shape == (40, 48)
        assert it["index"].dtype == np.int64 and 0 <= it["index"].min() and it["index"].max() < n
        assert 0 <= it["depth"].min() and it["depth"].max() <= 1
    rgb = StackDataset(seed=0, crop=(32, 32), n_range=(4, 4), rgb=True)[0]
    assert rgb["stack"].shape == (4, 32, 32, 3) and rgb["aif"].shape == (32, 32, 3)
    b = ds.batch(0, 3)
    assert b["stack"].shape == (3, b["n"], 40, 48) and b["index"].shape == (3, 40, 48)
    with pytest.raises(ValueError):
        StackDataset(scenes={"nope": 1})
    val = validation_set(count=2, crop=(32, 32))
    assert len(val) == 2 and all(v["scene"] in ("cells", "vessels") for v in val)


def test_pair_dataset():
    ds = PairDataset(seed=0, crop=(48, 48))
    for i in range(3):
        p = ds[i]
        assert p["near"].shape == p["far"].shape == p["aif"].shape == (48, 48, 3)
        assert set(np.unique(p["mask"])) <= {0.0, 1.0} and p["mask"].dtype == np.float32
    grey = PairDataset(seed=0, crop=(32, 32), rgb=False, synth=synth.SynthConfig(
        models={"layered": 1}, flicker=0, noise_p=0))[1]
    m = grey["mask"] > 0
    np.testing.assert_array_equal(grey["near"][m], grey["aif"][m])
    np.testing.assert_array_equal(grey["far"][~m], grey["aif"][~m])


def test_dataset_ground_truth_is_consistent():
    """Crops, flips and far-to-near reversal keep stack, index, depth and aif together."""
    cfg = synth.SynthConfig(models={"layered": 1}, flicker=0, noise_p=0)
    ds = StackDataset(seed=2, crop=(40, 40), n_range=(4, 7), synth=cfg)
    for i in range(8):
        it = ds[i]
        np.testing.assert_array_equal(np.take_along_axis(it["stack"], it["index"][None], 0)[0], it["aif"])
        # the index runs with the depth (either stack order): monotone, within its bin
        lo, hi = it["index"] / it["n"], (it["index"] + 1) / it["n"]
        assert ((it["depth"] >= lo - 1e-6) & (it["depth"] <= hi + 1e-6)).all()
