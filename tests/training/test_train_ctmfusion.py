"""CTMFusion's training: the paper's loss on hand-computable cases, the targets, the recipe."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.training.train_ctmfusion import (  # noqa: E402
    PairBatches,
    ctmfusion_loss,
    pair_target,
    paper_terms,
    ssim,
    train_ctmfusion,
)

C1, C2 = 0.01 ** 2, 0.03 ** 2
BIG = 40.0  # a logit whose sigmoid is 1 (or 0) to float32 precision


def const(v, shape=(1, 1, 16, 16)):
    return torch.full(shape, float(v))


def test_ssim_hand_cases():
    x = torch.rand(2, 1, 20, 20)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    # constants m1, m2: variances and covariance vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    assert float(ssim(const(0.5), const(0.0))) == pytest.approx(C1 / (0.25 + C1), rel=1e-4)
    assert float(ssim(const(0.5), const(1.0))) == pytest.approx((1 + C1) / (1.25 + C1), rel=1e-4)
    # a constant against a texture of mean m: luminance term 1, structure term C2 / (var + C2)
    t = torch.zeros(1, 1, 16, 16)
    t[..., ::2, :] = 1.0  # rows 0, 1, 0, 1: every Gaussian window sees mean ~0.5
    assert float(ssim(const(0.5), t)) < 0.05


def test_paper_loss_at_the_decision_extremes():
    a, b = const(0.0), const(1.0)
    # D = 1: F = a.  L_int = |0 - 0.5| = 0.5; L_text = 0; L_ssim = 0.5 (1 - 1) + 0.5 (1 - C1 / (1 + C1))
    loss, m = ctmfusion_loss(const(BIG), a, b)
    l_ssim = 0.5 * (1 - C1 / (1 + C1))
    assert m["int"] == pytest.approx(0.5) and m["text"] == pytest.approx(0, abs=1e-5)
    assert m["ssim"] == pytest.approx(l_ssim, rel=1e-4)
    assert float(loss) == pytest.approx(20 * 0.5 + 50 * l_ssim, rel=1e-4)
    # D = 0.5: F = 0.5.  L_int = 0; L_ssim = 0.5 (1 - C1 / (0.25 + C1)) + 0.5 (1 - (1 + C1) / (1.25 + C1))
    loss, m = ctmfusion_loss(const(0.0), a, b)
    l_ssim = 0.5 * (1 - C1 / (0.25 + C1)) + 0.5 * (1 - (1 + C1) / (1.25 + C1))
    assert m["int"] == pytest.approx(0, abs=1e-7)
    assert float(loss) == pytest.approx(50 * l_ssim, rel=1e-4)


def test_texture_term_rewards_the_sharper_source():
    a = torch.zeros(1, 1, 16, 16)
    a[..., :, 8:] = 1.0  # a step edge
    b = const(0.5)  # flat
    pick_a = paper_terms(a, a, b)
    pick_b = paper_terms(b, a, b)
    assert float(pick_a["text"]) == pytest.approx(0, abs=1e-6)
    from napari_edof.training.losses import sobel_magnitude

    assert float(pick_b["text"]) == pytest.approx(float(sobel_magnitude(a).mean()), rel=1e-4)
    assert float(pick_b["text"]) > 0.01


def test_cross_entropy_term_and_accuracy():
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    t = torch.ones(1, 1, 16, 16)
    paper, _ = ctmfusion_loss(const(0.0), a, b, t, ce_weight=0)
    loss, m = ctmfusion_loss(const(0.0), a, b, t, ce_weight=2.0)
    assert m["ce"] == pytest.approx(np.log(2), rel=1e-5)  # sigmoid(0) = 0.5 against target 1
    assert float(loss) == pytest.approx(float(paper) + 2 * np.log(2), rel=1e-5)
    _, m = ctmfusion_loss(const(BIG), a, b, t)
    assert m["acc"] == 1.0


def test_pair_target():
    index = np.array([[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(pair_target(1, 3, index), [[1, 1, 0.5, 0, 0]])
    # against a per-pixel reference plane (the composite's choice)
    np.testing.assert_array_equal(pair_target(2, np.array([[0, 2, 2, 3, 0]]), index), [[0, 0.5, 0.5, 0, 1]])


def test_batches_are_a_pure_function_of_the_step():
    d1, d2 = PairBatches(seed=3, crop=24), PairBatches(seed=3, crop=24)
    a1, b1, t1 = d1.batch(5, 2)
    d1.batch(0, 1)
    a2, b2, t2 = d2.batch(5, 2)
    assert a1.shape == (2, 1, 24, 24) and t1.shape == (2, 1, 24, 24)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(t1, t2)
    assert set(np.unique(t1.numpy())) <= {0.0, 0.5, 1.0}


def test_recipe_runs_resumes_and_writes_weights(tmp_path):
    kw = dict(steps=2, out=tmp_path, seed=1, batch_size=1, crop=24, dims=(8, 8, 8), stages=1, window=4,
              progress=False, ckpt_every=1)
    s = train_ctmfusion(**kw, stop_after=1)
    assert s["step"] == 1 and not s["done"]
    s = train_ctmfusion(**kw, resume=True)
    assert s["done"] and (tmp_path / "weights.pt").is_file()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["recipe"] == "ctmfusion" and cfg["arch"]["dims"] == [8, 8, 8]
    assert cfg["loss_weights"] == [20.0, 20.0, 50.0]
    from napari_edof.nn.ctmfusion import build

    build(cfg["arch"]).load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)


def test_registered_as_a_training_recipe():
    from napari_edof.training.train import RECIPES, get_recipe

    assert get_recipe("ctmfusion") is train_ctmfusion and "ctmfusion" in RECIPES
