"""The registered CTMFusion method (seed paper 000): spec, shipped weights, the paper's two-plane
fusion through the decision map, stacks through the order-free strategy, colour, odd sizes, and
accuracy above what an untrained network reaches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_edof as ne

from ..conftest import psnr
from ._pair_route import assert_cpu_route_matches_plain

torch = pytest.importorskip("torch")

WEIGHTS = Path(ne.__file__).parent / "weights"
PT = WEIGHTS / "ctmfusion_ours.pt"
CARD = WEIGHTS / "ctmfusion_ours.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_spec():
    from napari_edof.methods._registry import get_method

    spec, _ = get_method("ctmfusion")
    assert spec.family == "learned" and spec.backend == "torch" and spec.paper == "000"
    assert spec.weights.urls == () and spec.weights.filename == "ctmfusion_ours.pt"  # shipped
    assert len(spec.weights.sha256) == 64
    d = spec.defaults()
    assert d["strategy"] == "reference" and d["two_planes"] == "soft"
    # the composition reads 40 pixels around the tile; selection only the context
    assert spec.halo(d) == max(d["context"], 40) and spec.default_overlap > 0
    assert spec.halo({**d, "compose": "select"}) == d["context"] and spec.tile_multiple(d) == 8


def test_shipped_weights_hash_size_and_card():
    from napari_edof.methods.ctmfusion import ARCH, SPEC
    from napari_edof.nn.ctmfusion import build
    from napari_edof.nn.weights import sha256_of

    assert PT.stat().st_size < 2_000_000
    assert sha256_of(PT) == SPEC.weights.sha256
    sd = torch.load(PT, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    build(ARCH["ours"]).load_state_dict(sd, strict=True)
    card = CARD.read_text()
    assert SPEC.weights.sha256 in card
    for word in ("seed", "steps", "wall", "validation", "scaled", "napari-edof train ctmfusion"):
        assert word.lower() in card.lower(), word


def test_a_tampered_file_is_refused(tmp_path, monkeypatch):
    from napari_edof.methods import ctmfusion as CM
    from napari_edof.nn import weights as W

    bad = tmp_path / "ctmfusion_ours.pt"
    data = bytearray(PT.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed inside a tensor
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(W, "PACKAGED", tmp_path)
    with pytest.raises(W.WeightsError, match="sha256"):
        W.load_state_dict(CM.MODELS["ours"])


def test_package_data_ships_the_weights():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    pd = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "weights/*" in pd["napari_edof"]


def _decision(x):
    from napari_edof.methods.ctmfusion import get_model, make_decide, to_unit

    u = to_unit(x.astype(np.float32), x.dtype, "range")
    return make_decide(get_model("ours", "cpu"), "cpu")(u[:1], u[1:])[0]


def test_two_planes_apply_the_decision_map_to_the_sources():
    """N = 2, the paper: fused = D * A + (1 - D) * B in every channel (soft), or D > 0.5 (hard)."""
    s = ne.sample_stack(n_planes=2, shape=(48, 40), rgb=True, dtype=np.uint8, seed=12)
    data = s.stack.data
    guide = data.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # the Y of YCbCr
    d = _decision(guide)
    r = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"context": 0, "compose": "select"})  # no halo
    want = d[..., None] * data[0].astype(np.float32) + (1 - d[..., None]) * data[1].astype(np.float32)
    assert np.abs(r.fused.astype(np.float32) - want).max() <= 0.5 + 1e-3
    np.testing.assert_allclose(r.index, 1 - d, atol=1e-6)
    hard = {"context": 0, "two_planes": "hard", "compose": "select"}
    h = ne.fuse(s.stack, method="ctmfusion", tile=None, params=hard)
    np.testing.assert_array_equal(h.index, (d <= 0.5).astype(np.float32))
    np.testing.assert_array_equal(h.fused, np.where((d > 0.5)[..., None], data[0], data[1]))


def test_order_independent_on_a_permuted_stack():
    s = ne.sample_stack(n_planes=5, shape=(48, 48), seed=13)
    perm = np.array([3, 0, 4, 1, 2])
    # (selection: the composition follows the planes' order, whose neighbours are near in depth)
    a = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"compose": "select"})
    b = ne.fuse(s.stack.data[perm], method="ctmfusion", tile=None, params={"compose": "select"})
    np.testing.assert_array_equal(perm[b.index.astype(int)], a.index.astype(int))
    np.testing.assert_array_equal(a.fused, b.fused)


@pytest.mark.parametrize("shape", [(64, 48), (37, 50)])
def test_colour_comes_from_the_source_planes_at_any_size(shape):
    s = ne.sample_stack(n_planes=3, shape=shape, rgb=True, dtype=np.uint8, seed=14)
    r = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"compose": "select"})
    assert r.fused.shape == shape + (3,) and r.fused.dtype == np.uint8 and r.index.shape == shape
    idx = r.index.astype(int)
    np.testing.assert_array_equal(r.fused, np.take_along_axis(s.stack.data, idx[None, :, :, None], axis=0)[0])


def test_strategies_are_offered():
    s = ne.sample_stack(n_planes=4, shape=(32, 32), seed=15)
    for strategy in ("sequential", "round-robin"):
        r = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"strategy": strategy})
        assert r.index.shape == (32, 32) and 0 <= r.index.min() and r.index.max() <= 3


def test_fuses_better_than_an_untrained_network(monkeypatch):
    """Index accuracy and PSNR on a small synthetic stack, with the shipped weights and with the
    same network randomly initialised (the floors sit between the two; measured values in the
    comments); the pixels of the chosen planes (``compose="select"``), so that the PSNR is the network's."""
    from napari_edof.methods import ctmfusion as CM
    from napari_edof.nn.ctmfusion import build

    s = ne.sample_stack(n_planes=6, shape=(80, 80), seed=16)
    r = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"compose": "select"})
    acc = float((np.abs(r.index - s.index) <= 1).mean())
    ps = psnr(r.fused, s.all_in_focus, 60000)
    torch.manual_seed(0)
    monkeypatch.setitem(CM._MODELS, ("ours", "cpu"), build(CM.ARCH["ours"]).eval())
    u = ne.fuse(s.stack, method="ctmfusion", tile=None, params={"compose": "select"})
    acc_u = float((np.abs(u.index - s.index) <= 1).mean())
    ps_u = psnr(u.fused, s.all_in_focus, 60000)
    assert acc_u < ACC_FLOOR < acc, (acc_u, acc)
    assert ps_u < PSNR_FLOOR < ps, (ps_u, ps)


# measured (80 x 80, 6 planes, seed 16): shipped weights 0.988 of pixels within one plane
# (0.913 exact), 33.3 dB; untrained (torch seeds 0, 1, 2) 0.297 / 0.311 / 0.429 and 18.5-19.4 dB
ACC_FLOOR = 0.8
PSNR_FLOOR = 28.0


def test_tiles_agree_with_the_whole_image_closely():
    """Not tile-exact by design (normalisation and attention see the whole window): 96 px cut into
    48 px tiles, measured 0.881 / 0.913 of pixels identical (seeds 1, 7), > 0.998 within one plane."""
    s = ne.sample_stack(n_planes=6, shape=(96, 96), seed=1)
    w = ne.fuse(s.stack, method="ctmfusion", tile=None)
    t = ne.fuse(s.stack, method="ctmfusion", tile=48)
    assert t.provenance["tiles"] == 4
    assert (w.index == t.index).mean() > 0.8
    assert (np.abs(w.index - t.index) <= 1).mean() > 0.99


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_route_gives_the_index_of_the_plain_path(monkeypatch, threads):
    """The CPU route of the reference strategy (planes in single-threaded worker threads, the
    CARAFE reassembly as shifted multiply-adds) gives the same focus index as the plain path
    (pairs one by one through ``decide``) on a small realistic stack, and restores the thread
    count."""
    from napari_edof.methods import ctmfusion as cm
    from napari_edof.training.realistic import Config, render

    st = render(Config(seed=32, scene="photo", n_planes=5, shape=(80, 96))).planes
    assert_cpu_route_matches_plain("ctmfusion", st, threads, monkeypatch)
    decide = cm.make_decide(cm.get_model("ours", "cpu"), "cpu")
    assert hasattr(decide, "against") and not hasattr(cm.make_decide(cm.get_model("ours", "cpu"), "cuda"), "against")
    rng = np.random.default_rng(7)
    planes = rng.random((3, 40, 56), dtype=np.float32)
    ref = rng.random((40, 56), dtype=np.float32)
    np.testing.assert_allclose(decide.against(planes, ref), decide(planes, np.broadcast_to(ref, planes.shape)),
                               atol=1e-5)
