"""The registered MSAS method (seed paper 004): spec, shipped weights, the paper's pair pipeline,
stacks through the order-free strategy, colour, tiling, and accuracy above what an untrained
network reaches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_edof as ne

from ..conftest import psnr
from ._pair_route import assert_cpu_route_matches_plain

torch = pytest.importorskip("torch")

WEIGHTS = Path(ne.__file__).parent / "weights"
PT = WEIGHTS / "msas_ours.pt"
CARD = WEIGHTS / "msas_ours.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_spec():
    from napari_edof.methods._registry import get_method

    spec, _ = get_method("msas")
    assert spec.family == "learned" and spec.backend == "torch" and spec.paper == "004"
    assert spec.weights.urls == () and spec.weights.filename == "msas_ours.pt"  # shipped
    assert len(spec.weights.sha256) == 64
    d = spec.defaults()
    assert d["strategy"] == "reference" and d["min_area"] == 0.01
    # the composition reads 40 pixels around the tile; selection only the context
    assert spec.halo(d) == max(d["context"], 40) and spec.default_overlap > 0
    assert spec.halo({**d, "compose": "select"}) == d["context"] and spec.tile_multiple(d) == 8


def test_shipped_weights_hash_size_and_card():
    from napari_edof.methods.msas import SPEC
    from napari_edof.nn.weights import sha256_of

    assert PT.stat().st_size < 2_000_000
    assert sha256_of(PT) == SPEC.weights.sha256
    card = CARD.read_text()
    assert SPEC.weights.sha256 in card
    for word in ("seed", "steps", "wall", "validation", "scaled", "napari-edof train msas"):
        assert word.lower() in card.lower(), word


def test_package_data_ships_the_weights():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    pd = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "weights/*" in pd["napari_edof"]


def test_two_planes_is_the_papers_pipeline():
    """N = 2: decision map, binarised at 0.5, small regions flipped, fused through the map (the
    composition applies from three planes; ``compose="select"`` keeps the window the image)."""
    from napari_edof.methods.msas import get_model, make_decide, normalise_guide
    from napari_edof.nn.msas import fuse_pair

    s = ne.sample_stack(n_planes=2, shape=(64, 64), seed=12)
    r = ne.fuse(s.stack, method="msas", tile=None, params={"context": 0, "compose": "select"})  # window = image
    x = normalise_guide(s.stack.data.astype(np.float32), s.stack.data.dtype, "range")
    d = make_decide(get_model("cpu"), "cpu")(x[:1], x[1:])[0]
    fused, D = fuse_pair(s.stack.data[0], s.stack.data[1], d)
    np.testing.assert_array_equal(r.index, 1 - D)
    np.testing.assert_array_equal(r.fused, fused)


def test_order_independent_on_a_permuted_stack():
    s = ne.sample_stack(n_planes=5, shape=(48, 48), seed=13)
    perm = np.array([3, 0, 4, 1, 2])
    # (selection: the composition follows the planes' order, whose neighbours are near in depth)
    a = ne.fuse(s.stack, method="msas", tile=None, params={"context": 8, "compose": "select"})
    b = ne.fuse(s.stack.data[perm], method="msas", tile=None, params={"context": 8, "compose": "select"})
    np.testing.assert_array_equal(perm[b.index.astype(int)], a.index.astype(int))
    np.testing.assert_array_equal(a.fused, b.fused)


def test_colour_is_gathered_from_the_source_planes():
    s = ne.sample_stack(n_planes=4, shape=(48, 56), rgb=True, dtype=np.uint8, seed=14)
    r = ne.fuse(s.stack, method="msas", tile=None, params={"compose": "select"})
    assert r.fused.shape == (48, 56, 3) and r.fused.dtype == np.uint8
    idx = r.index.astype(int)
    np.testing.assert_array_equal(r.fused, np.take_along_axis(s.stack.data, idx[None, :, :, None], axis=0)[0])


def test_small_area_filter_leaves_no_small_regions():
    from scipy import ndimage as ndi

    s = ne.sample_stack(n_planes=5, shape=(64, 64), seed=15)
    idx = ne.fuse(s.stack, method="msas", tile=None, params={"context": 0}).index.astype(int)
    for k in np.unique(idx):
        lab, n = ndi.label(idx == k)
        assert np.bincount(lab.ravel())[1:].min() >= 0.01 * idx.size
    raw = ne.fuse(s.stack, method="msas", tile=None, params={"context": 0, "min_area": 0}).index
    assert (raw != idx).any()  # the filter did something here


def test_fuses_better_than_an_untrained_network(monkeypatch):
    """Index accuracy and PSNR on a small synthetic stack, with the shipped weights and with the
    same network randomly initialised (the floors sit between the two, see the measured values);
    the pixels of the chosen planes (``compose="select"``), so that the PSNR is the network's."""
    from napari_edof.methods import msas as MM
    from napari_edof.nn.msas import MSAS

    s = ne.sample_stack(n_planes=6, shape=(96, 96), seed=16)
    r = ne.fuse(s.stack, method="msas", tile=None, params={"compose": "select"})
    acc = float((r.index == s.index).mean())
    ps = psnr(r.fused, s.all_in_focus, 60000)
    torch.manual_seed(0)
    cfg = MM.config_from_state_dict(MM.get_model("cpu").state_dict())
    monkeypatch.setitem(MM._MODELS, "cpu", MSAS(**cfg).eval())
    u = ne.fuse(s.stack, method="msas", tile=None, params={"compose": "select"})
    acc_u = float((u.index == s.index).mean())
    ps_u = psnr(u.fused, s.all_in_focus, 60000)
    assert acc > ACC_FLOOR > acc_u, (acc, acc_u)
    assert ps > PSNR_FLOOR > ps_u, (ps, ps_u)


# measured (seed 16): shipped weights 0.929 exact / 34.2 dB (seeds 19, 20: 0.945 / 35.4, 0.944 /
# 34.6); randomly initialised (torch seeds 0, 1, 2): 0.033 / 18.1, 0.406 / 20.7, 0.088 / 19.3 dB
ACC_FLOOR = 0.8
PSNR_FLOOR = 28.0


def test_tiled_close_to_whole_image():
    s = ne.sample_stack(n_planes=4, shape=(96, 96), seed=17)
    sel = {"compose": "select"}  # (the network's own agreement: its window is tile + context)
    whole = ne.fuse(s.stack, method="msas", tile=None, params=sel)
    tiled = ne.fuse(s.stack, method="msas", tile=48, overlap=16, params=sel)
    assert tiled.provenance["tiles"] == 4
    assert (np.abs(whole.index - tiled.index) <= 1).mean() > TILED_WITHIN1
    # the default composition (a 40 px halo) agrees closer still in the image: 59.2 dB measured
    whole = ne.fuse(s.stack, method="msas", tile=None)
    tiled = ne.fuse(s.stack, method="msas", tile=48, overlap=16)
    assert psnr(tiled.fused, whole.fused, 65535) > 50


# measured (96 px, four 48 px tiles + 32 px context, seeds 17 / 21 / 22): exact agreement 0.861 /
# 0.874 / 0.921, within one plane 0.99978 / 1.0 / 0.99978, fused PSNR tiled vs whole 38.1 / 40.6 /
# 52.0 dB (128 px, 64 px tiles, seeds 17 / 21: 0.913 / 0.918, within one 0.99994 / 0.99976)
TILED_WITHIN1 = 0.995


def test_strategies_run_and_sequential_depends_on_order():
    s = ne.sample_stack(n_planes=4, shape=(40, 40), seed=18)
    perm = np.array([3, 1, 0, 2])
    p = {"strategy": "sequential", "min_area": 0}
    a = ne.fuse(s.stack, method="msas", tile=None, params=p)
    b = ne.fuse(s.stack.data[perm], method="msas", tile=None, params=p)
    assert (perm[b.index.astype(int)] != a.index).any()
    rr = ne.fuse(s.stack, method="msas", tile=None, params={"strategy": "round-robin"})
    assert rr.index.shape == (40, 40) and 0 <= rr.confidence.min() and rr.confidence.max() <= 1


def test_reference_is_encoded_once_and_decisions_are_unchanged(monkeypatch):
    """Comparing every plane with one reference: the reference's branch runs once per window,
    and the decisions equal the network's plain pair decisions."""
    from napari_edof.methods.msas import get_model, make_decide

    model = get_model("cpu")
    rng = np.random.default_rng(5)
    planes = rng.random((5, 40, 56), dtype=np.float32)
    ref = rng.random((40, 56), dtype=np.float32)
    calls = []
    real = model.encode_padded
    monkeypatch.setattr(model, "encode_padded", lambda x: calls.append(x.shape) or real(x))
    decide = make_decide(model, "cpu")
    got = np.concatenate([decide(planes[s:s + 2], np.broadcast_to(ref, (len(planes[s:s + 2]),) + ref.shape))
                          for s in range(0, 5, 2)])
    assert calls == [(1, 40, 56)]  # three calls, one encoding of the reference
    plain = model.decide(torch.from_numpy(planes), torch.from_numpy(np.broadcast_to(ref, planes.shape).copy()))
    np.testing.assert_allclose(got, plain.numpy(), atol=1e-5)
    other = decide(planes[:2], planes[2:4])  # different b per item: the plain path
    assert calls == [(1, 40, 56)] and other.shape == (2, 40, 56)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_route_gives_the_index_of_the_plain_path(monkeypatch, threads):
    """The CPU route of the reference strategy (reference encoded once and its share of the head
    computed once, BatchNorm folded, channels_last, planes in single-threaded worker threads)
    gives the same focus index as every pair through the plain network, on a small realistic
    stack; the decisions agree to round-off, and the thread count is restored."""
    from napari_edof.methods import msas as mm
    from napari_edof.training.realistic import Config, render

    st = render(Config(seed=31, scene="brightfield", n_planes=6, shape=(80, 96))).planes
    assert_cpu_route_matches_plain("msas", st, threads, monkeypatch)
    model = mm.get_model("cpu")
    rng = np.random.default_rng(6)
    planes = rng.random((3, 40, 56), dtype=np.float32)
    ref = rng.random((40, 56), dtype=np.float32)
    decide = mm.make_decide(model, "cpu")
    assert hasattr(decide, "against")
    got = decide.against(planes, ref)
    want = model.decide(torch.from_numpy(planes), torch.from_numpy(np.broadcast_to(ref, planes.shape).copy()))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_the_cpu_route_is_the_cpu_s_only():
    """Other devices keep the plain decide (the GPU path is unchanged)."""
    from napari_edof.methods import msas as mm

    model = mm.get_model("cpu")
    assert not hasattr(mm.make_decide(model, "cuda"), "against")
    assert hasattr(mm.make_decide(model, "cpu"), "against")


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_route_passes_a_failure_on_and_restores_threads(monkeypatch, threads):
    """A job failing in a worker thread (here the head) is raised in the caller; no worker is
    left waiting, and torch's thread count is restored."""
    from napari_edof.methods import msas as mm

    model = mm.get_model("cpu")
    decide = mm.make_decide(model, "cpu")
    rng = np.random.default_rng(8)
    planes = rng.random((4, 24, 24), dtype=np.float32)
    ref = rng.random((24, 24), dtype=np.float32)
    decide.against(planes, ref)  # builds the CPU copy
    split = mm._CPU_COPIES[model]

    def boom(fa, parts):
        raise RuntimeError("boom")

    monkeypatch.setattr(split, "logits", boom)
    torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="boom"):
        decide.against(planes, ref)
    assert torch.get_num_threads() == threads
