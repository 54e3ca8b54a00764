"""VAEEDOF's Fusion U-Net: the slot rule, shapes, the shipped weights, the training recipe."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn import vaeedof as V  # noqa: E402

from ..conftest import SHARED  # noqa: E402

WEIGHTS = SHARED / "weights"


@pytest.mark.parametrize("n,expected", [
    (1, [0] * 7),
    (2, [0, 0, 0, 0, 1, 1, 1]),
    (3, [0, 0, 0, 1, 1, 2, 2]),
    (5, [0, 0, 1, 2, 2, 3, 4]),
    (7, [0, 1, 2, 3, 4, 5, 6]),
])
def test_fewer_planes_are_duplicated_to_fill_seven_slots(n, expected):
    s = V.slots(n)
    assert s.tolist() == expected
    assert set(s) == set(range(n)) and np.all(np.diff(s) >= 0)  # every plane, in z order


def test_more_planes_keep_the_seven_sharpest_in_z_order():
    scores = np.array([0.0, 0.3, 0.01, 0.2, 0.02, 0.1, 0.05, 0.15, 0.12, 0.04])
    s = V.slots(10, scores)
    assert s.tolist() == [1, 3, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError):
        V.slots(10)  # more than seven planes need scores


def test_plane_scores_find_the_sharp_planes():
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    tex = rng.random((2, 64, 64)).astype(np.float32)
    stack = np.stack([ndi.gaussian_filter(tex[0], 3)] * 9)
    stack[4, :, :32] = tex[0][:, :32]  # plane 4 sharp on the left, plane 7 on the right
    stack[7, :, 32:] = tex[0][:, 32:]
    sc = V.plane_scores(stack)
    assert set(np.argsort(-sc)[:2]) == {4, 7}
    assert 4 in V.slots(9, sc) and 7 in V.slots(9, sc)


def test_groups_cover_every_plane_once():
    for n in (8, 10, 14, 15, 31):
        g = V.group_bounds(n)
        assert g[0][0] == 0 and g[-1][1] == n
        assert all(b - a <= 7 and a < b for a, b in g)
        assert all(g[i][1] == g[i + 1][0] for i in range(len(g) - 1))


def test_unet_shapes_and_the_untrained_net_averages_the_slots():
    torch.manual_seed(0)
    net = V.FusionUNet().eval()
    z = torch.randn(2, 7 * 32, 16, 24)
    with torch.no_grad():
        y = net(z)
    assert y.shape == (2, 32, 16, 24)
    # the head starts at zero: equal slot weights, no residual
    torch.testing.assert_close(y, z.reshape(2, 7, 32, 16, 24).mean(1), atol=1e-5, rtol=1e-5)
    lat = torch.randn(10, 32, 8, 8)
    with torch.no_grad():
        for long in V.LONG_STACKS:
            assert V.fuse_latents(net, lat, long=long, scores=np.arange(10.0)).shape == (32, 8, 8)
        assert V.fuse_latents(net, lat[:3]).shape == (32, 8, 8)


def test_parameter_budget():
    n = sum(p.numel() for p in V.FusionUNet().parameters())
    assert n * 2 < 3_000_000  # shipped as float16, under 3 MB


def test_pad_multiple_reflects_to_64():
    x = torch.arange(50 * 70, dtype=torch.float32).reshape(1, 1, 50, 70)
    y = V.pad_multiple(x)
    assert y.shape == (1, 1, 64, 128)
    torch.testing.assert_close(y[..., :50, :70], x)
    assert V.pad_multiple(torch.zeros(3, 5, 7)).shape == (3, 64, 64)  # reflection repeated past the size


def test_shipped_weights_hash_size_and_strict_load():
    from napari_edof.methods.vaeedof import UNET
    from napari_edof.nn.weights import PACKAGED, load_state_dict, sha256_of

    path = PACKAGED / UNET.filename
    assert path.is_file() and path.stat().st_size < 3_000_000
    assert sha256_of(path) == UNET.sha256 and not UNET.urls
    sd = load_state_dict(UNET)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    V.FusionUNet().load_state_dict(sd, strict=True)
    assert (PACKAGED / "vaeedof_ours.md").is_file()


def test_recipe_is_registered_and_runs_resumably(tmp_path, monkeypatch):
    from napari_edof.training.train import RECIPES, get_recipe

    assert RECIPES["vaeedof"] == "train_vaeedof:train_vaeedof"
    if not (WEIGHTS / "taef2_encoder.pth").is_file():
        pytest.skip(f"TAEF2 encoder not found in {WEIGHTS}")
    from napari_edof.nn import weights as W

    monkeypatch.setenv(W.ENV, str(WEIGHTS))
    monkeypatch.setattr(W, "_download", lambda *a: pytest.fail("tests must not download"))
    train = get_recipe("vaeedof")
    kw = dict(steps=2, out=tmp_path, cache=2, chunk=1, batch_size=2, crop=64, n_max=4, ckpt_every=1,
              progress=False)
    s = train(stop_after=1, **kw)
    assert s["step"] == 1 and not s["done"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["chunk_0000.pt", "chunk_0001.pt"]
    s = train(resume=True, **kw)
    assert s["done"] and (tmp_path / "weights.pt").is_file()
    sd = torch.load(tmp_path / "weights.pt", weights_only=True)
    V.FusionUNet().load_state_dict(sd, strict=True)


def test_training_slot_choice_keeps_order_and_drops_planes():
    from napari_edof.training.train_vaeedof import choose_slots

    item = {"planes": torch.zeros(9, 32, 2, 2), "scores": np.arange(9.0)}
    rng = np.random.default_rng(0)
    s = choose_slots(item, rng, subset_p=0.0, reverse_p=0.0)
    assert s.tolist() == [2, 3, 4, 5, 6, 7, 8]  # the seven sharpest (highest scores)
    seen = set()
    for _ in range(20):
        s = choose_slots(item, rng, subset_p=1.0, reverse_p=0.0)
        assert len(s) == 7 and np.all(np.diff(s) >= 0)
        seen.add(len(set(s.tolist())))
    assert min(seen) < 7  # planes were dropped (and the rest duplicated to fill)
