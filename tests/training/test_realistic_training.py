"""Training StackMFF-V2 on the realistic generator: seeded data disjoint from the benchmark's, the
loss, and resumable runs (``napari-edof train stackmff-v2 --data realistic``)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.training import losses  # noqa: E402
from napari_edof.training.realistic import benchmark_configs  # noqa: E402
from napari_edof.training.realistic_data import SEED_LO, realistic_batch  # noqa: E402
from napari_edof.training.train import train_stackmff_v2  # noqa: E402

TINY = dict(batch_size=1, crop=32, n_min=3, n_max=4, ckpt_every=2, threads=1, progress=False, data="realistic",
            fuse_weight=100.0)


def test_batches_are_deterministic_and_never_the_benchmarks_stacks():
    a = realistic_batch(5, 3, 2, 32, (3, 5))
    b = realistic_batch(5, 3, 2, 32, (3, 5))
    c = realistic_batch(5, 4, 2, 32, (3, 5))
    for k in ("stack", "planes", "aif", "index"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["stack"].shape == (2, a["n"], 32, 32) and a["stack"].dtype == np.float32
    assert not np.array_equal(a["stack"], c["stack"]) or a["n"] != c["n"]
    assert a["stack"].min() >= 0 and (a["index"] >= 0).all() and (a["index"] <= a["n"] - 1).all()
    # the benchmark's and the tuning sets' stack seeds lie below the training stacks' range
    for seed in (7100, 9100, 9300):
        assert max(c.seed for c in benchmark_configs(4, seed=seed)) < SEED_LO


def test_realistic_loss_rewards_the_right_plane_and_the_right_image():
    rng = np.random.default_rng(0)
    n, h, w = 4, 8, 8
    stack = torch.from_numpy(rng.random((1, n, h, w)).astype(np.float32))
    index = torch.full((1, h, w), 2.25)
    aif = 0.75 * stack[:, 2] + 0.25 * stack[:, 3]
    good = torch.full((1, n, h, w), -20.0)
    good[:, 2], good[:, 3] = np.log(0.75), np.log(0.25)
    bad = torch.zeros((1, n, h, w))
    lg, mg = losses.stackmff_v2_realistic_loss(good, stack, aif, index, fuse_weight=100)
    lb, mb = losses.stackmff_v2_realistic_loss(bad, stack, aif, index, fuse_weight=100)
    assert float(lg) < float(lb) and mg["psnr_soft"] > 60 > mb["psnr_soft"]


def test_resume_gives_the_same_weights_on_realistic_data(tmp_path):
    a = train_stackmff_v2(steps=2, out=tmp_path / "a", seed=3, **TINY)
    b1 = train_stackmff_v2(steps=2, out=tmp_path / "b", seed=3, stop_after=1, **TINY)
    assert not b1["done"]
    b2 = train_stackmff_v2(steps=2, out=tmp_path / "b", seed=3, resume=True, **TINY)
    assert a["done"] and b2["done"]
    wa = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unknown_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="realistic"):
        train_stackmff_v2(steps=1, out=tmp_path, data="photos", progress=False)
