"""The fmb-fn training recipe: registered, losses finite, a tiny run resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.training import train_retina_fn as T  # noqa: E402


def test_recipe_is_registered():
    from napari_edof.training.train import RECIPES, get_recipe

    assert RECIPES["fmb-fn"] == "train_retina_fn:train_retina_fn"
    assert get_recipe("fmb-fn") is T.train_retina_fn


def test_fixed_features_stand_in():
    f = T.FixedFeatures()
    x = torch.rand(2, 3, 16, 12)
    assert f(x).shape == (2, 24, 16, 12)
    m, desc = T.perceptual_extractor("/no/such/taef2_encoder.pth")
    assert isinstance(m, T.FixedFeatures) and "not available" in desc


def test_loss_terms_and_prepare():
    from napari_edof.nn.retina_fn import FusionNet

    rng = np.random.default_rng(0)
    ds = T.make_dataset(3, 24, 2, 3, scenes={"fundus_view": 1})
    it = ds[0]
    x, y = T.prepare(it["stack"], it["aif"], rng, grey_p=1.0, range_p=1.0)
    assert x.shape == (it["n"], 3, 24, 24) and y.shape == (3, 24, 24)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])  # grey: luminance in all three channels
    torch.manual_seed(0)
    loss, m = T.retina_fn_loss(FusionNet(width=4, blocks=1, skip=True),
                               (torch.from_numpy(x)[None], torch.from_numpy(y)[None]), T.FixedFeatures())
    assert torch.isfinite(loss) and {"l1", "perc", "edge", "ident", "psnr"} <= set(m)
    loss.backward()


def test_tiny_run_resumes_exactly(tmp_path, monkeypatch):
    # the fixed-filter stand-in keeps this fast (no taef2 load); the recipe is otherwise unchanged
    monkeypatch.setattr(T, "perceptual_extractor", lambda path=None: (T.FixedFeatures(), "fixed (test)"))
    kw = dict(steps=4, seed=1, batch_size=1, crop=24, n_min=2, n_max=3, width=4, progress=False, ckpt_every=2)
    whole = T.train_retina_fn(out=tmp_path / "a", **kw)
    T.train_retina_fn(out=tmp_path / "b", stop_after=2, **kw)
    resumed = T.train_retina_fn(out=tmp_path / "b", resume=True, **kw)
    assert whole["done"] and resumed["done"]
    a = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
