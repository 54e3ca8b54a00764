"""The realistic stack generator: deterministic, continuous depth, noise as asked."""
import numpy as np

from napari_edof.training.realistic import Config, benchmark_configs, render


def test_same_config_same_arrays_and_truth_in_range():
    cfg = Config(seed=5, scene="photo", colour="rgb", noise="moderate", bits=8, n_planes=6, shape=(64, 80))
    a, b = render(cfg), render(cfg)
    np.testing.assert_array_equal(a.planes, b.planes)
    np.testing.assert_array_equal(a.truth, b.truth)
    assert a.planes.shape == (6, 64, 80, 3) and a.planes.dtype == np.uint8 and a.truth.shape == (64, 80, 3)
    assert -0.31 <= a.index.min() and a.index.max() <= 6 - 0.69
    # continuous depth: most pixels lie between planes, not on one
    assert np.mean(np.abs(a.index - np.rint(a.index)) > 0.05) > 0.5
    assert 0.05 < a.informative.mean() < 1


def test_photon_level_sets_the_noise():
    """The same scene with fewer photons is noisier (relative to the signal)."""
    def residual(noise):
        s = render(Config(seed=8, scene="brightfield", colour="grey", noise=noise, bits=16, n_planes=5,
                          shape=(64, 64)))
        p = s.planes.astype(np.float64)
        d = p[:, 0::2, 0::2] - p[:, 0::2, 1::2] - p[:, 1::2, 0::2] + p[:, 1::2, 1::2]  # finest Haar detail
        return float(np.median(np.abs(d))) / float(np.median(p)), s

    strong, s1 = residual("strong")
    weak, s2 = residual("weak")
    assert strong > 4 * weak
    assert s1.planes.dtype == np.uint16


def test_benchmark_set_covers_every_class():
    cfgs = benchmark_configs(2)
    assert len(cfgs) == 12 and len({c.label for c in cfgs}) == 12
    assert {(c.noise, c.colour) for c in cfgs} == {(n, c) for n in ("strong", "moderate", "weak")
                                                    for c in ("grey", "rgb")}
    assert {c.bits for c in cfgs} == {8, 16} and min(c.n_planes for c in cfgs) >= 5
