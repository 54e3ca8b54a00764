"""The registered fmb-fn method (seed paper 001): spec, shipped weights, trained vs untrained,
dtype and range kept, channel layouts, index rules."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import napari_edof as ne

from ..conftest import psnr

torch = pytest.importorskip("torch")

WEIGHTS = Path(ne.__file__).parent / "weights"
PT = WEIGHTS / "fmb_fn_ours.pt"
PT_PAPER = WEIGHTS / "fmb_fn_paper_ours.pt"
CARD = WEIGHTS / "fmb_fn_ours.md"


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    from napari_edof.nn import weights as W

    monkeypatch.setattr(W, "_download", lambda *a: pytest.fail("fmb-fn's weights are shipped; nothing is downloaded"))


#: PSNR (dB) the trained method must beat on the stack below. Measured: trained 36.2 dB;
#: untrained (random weights, seeds 0, 1, 2) 29.8, 32.4, 30.5 dB (the per-pixel clamp to the
#: sources' range and the selection skip give a random network that much); focus-select 39.2 dB.
FLOOR = 34.0
#: the same for weights="paper" (the paper's FN): measured 37.6 dB
FLOOR_PAPER = 35.0


@pytest.fixture(scope="module")
def fundus_stack():
    """A small held-out RGB fundus-view stack (uint8, layered defocus, no noise) and its truth."""
    from napari_edof.training.datasets import StackDataset
    from napari_edof.training.synth import SynthConfig

    ds = StackDataset(seed=91, crop=(64, 64), n_range=(5, 5), scenes={"fundus_view": 1}, rgb=True, augment=False,
                      synth=SynthConfig(models={"layered": 1}, noise_p=0, first_sigma=(1.5, 2.0)))
    it = ds[0]
    u8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return u8(it["stack"]), u8(it["aif"]), it["index"]


def test_spec_and_shipped_weights():
    from napari_edof.methods._registry import get_method
    from napari_edof.nn.weights import sha256_of

    spec, _ = get_method("fmb-fn")
    assert spec.family == "learned" and spec.backend == "torch" and spec.paper == "001"
    assert set(spec.devices) == {"cuda", "mps", "cpu"}
    from napari_edof.methods.retina_fn import MODELS

    p = spec.defaults()
    assert spec.halo(p) == 4 + 40  # output auto = pyramid: the head's radius and the composition's reach
    net = {**p, "output": "network"}
    assert spec.halo(net) == 23 and spec.halo({**p, "index": "provenance"}) == 23  # the receptive radius
    assert spec.halo({**p, "index": "nearest"}) == 23 + p["window"]
    assert spec.halo({**p, "weights": "paper"}) == 23 + p["window"]  # auto: nearest without the head
    assert spec.synthesises(net) and not spec.synthesises(p) and spec.tile_multiple(p) == 8
    w = spec.weights
    assert w == MODELS["ours"] and w.filename == PT.name and MODELS["paper"].filename == PT_PAPER.name
    card = CARD.read_text()
    for spec_w, path in ((MODELS["ours"], PT), (MODELS["paper"], PT_PAPER)):
        assert spec_w.urls == ()  # shipped, not downloaded
        assert path.stat().st_size < 2_000_000
        assert sha256_of(path) == spec_w.sha256  # the pinned hash is the file's
        assert spec_w.sha256 in card
    for word in ("seed", "steps", "validation", "focus-select", "taef2", "sobel", "retina"):
        assert re.search(word, card, re.I), word


def test_trained_weights_beat_the_untrained_network(fundus_stack, monkeypatch):
    from napari_edof.methods import retina_fn as m
    from napari_edof.nn.retina_fn import FusionNet

    stack, aif, _ = fundus_stack
    net = {"output": "network"}
    trained = psnr(ne.fuse(stack, method="fmb-fn", params=net).fused, aif, 255)
    torch.manual_seed(0)
    monkeypatch.setitem(m._MODELS, ("ours", "cpu"), FusionNet(width=m.WIDTH, skip=True).eval())
    untrained = psnr(ne.fuse(stack, method="fmb-fn", params=net).fused, aif, 255)
    assert trained > FLOOR > untrained, (trained, untrained)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_and_range_kept(fundus_stack, dtype):
    stack, aif, _ = fundus_stack
    if dtype == np.uint16:  # a 12-bit camera's range, far from the dtype's
        stack, aif = stack.astype(np.uint16) * 16 + 100, aif.astype(np.uint16) * 16 + 100
    elif dtype == np.float32:
        stack, aif = stack.astype(np.float32) / 255, aif.astype(np.float32) / 255
    r = ne.fuse(stack, method="fmb-fn")
    assert r.fused.dtype == np.dtype(dtype) and r.fused.shape == aif.shape
    assert (r.fused >= stack.min(axis=0)).all() and (r.fused <= stack.max(axis=0)).all()
    peak = {np.uint8: 255, np.uint16: 255 * 16, np.float32: 1.0}[dtype]
    assert psnr(r.fused, aif, peak) > FLOOR - 1


@pytest.mark.parametrize("index", ["select", "nearest", "provenance"])
def test_index_rules(fundus_stack, index):
    stack, _, truth = fundus_stack
    r = ne.fuse(stack, method="fmb-fn", params={"index": index})
    assert r.index.dtype == np.float32 and np.array_equal(r.index, np.rint(r.index))
    assert 0 <= r.index.min() and r.index.max() <= stack.shape[0] - 1
    assert 0 <= r.confidence.min() and r.confidence.max() <= 1
    labels = r.labels()
    assert labels.min() >= 1 and labels.max() <= stack.shape[0]


def test_grey_rgba_and_other_channel_counts(fundus_stack):
    stack, aif, _ = fundus_stack
    grey = stack[..., 1]
    r = ne.fuse(grey, method="fmb-fn")
    assert r.fused.shape == grey.shape[1:] and r.fused.dtype == np.uint8
    alpha = np.broadcast_to(np.arange(stack.shape[0], dtype=np.uint8)[:, None, None, None] * 40,
                            stack.shape[:3] + (1,))
    rgba = np.concatenate([stack, alpha], axis=-1)
    r4 = ne.fuse(rgba, method="fmb-fn", params={"index": "provenance"})
    assert r4.fused.shape == aif.shape[:2] + (4,)
    np.testing.assert_array_equal(r4.fused[..., 3], r4.index.astype(np.uint8) * 40)  # alpha of the chosen plane
    two = ne.fuse(stack[..., :2], axes="ZYXC", method="fmb-fn")
    assert two.fused.shape == aif.shape[:2] + (2,)


def test_dtype_normalisation_runs_in_one_pass(fundus_stack):
    stack, aif, _ = fundus_stack
    r = ne.fuse(stack, method="fmb-fn", params={"normalise": "dtype"}, tile=32)
    assert psnr(r.fused, aif, 255) > FLOOR - 1


def test_the_papers_fn_weights(fundus_stack):
    """weights='paper': the paper's FN (no selection head); index='auto' is 'nearest' for it,
    'select' says why not; the provenance records its hash."""
    from napari_edof.core.errors import MethodError
    from napari_edof.methods.retina_fn import MODELS

    stack, aif, _ = fundus_stack
    r = ne.fuse(stack, method="fmb-fn", params={"weights": "paper"})
    assert r.fused.shape == stack.shape[1:] and r.fused.dtype == np.uint8
    assert r.provenance["weights_sha256"] == MODELS["paper"].sha256
    assert psnr(r.fused, aif, 255) > FLOOR_PAPER
    with pytest.raises(MethodError, match="selection head"):
        ne.fuse(stack, method="fmb-fn", params={"weights": "paper", "index": "select"})


def test_audit_of_the_network_output(fundus_stack):
    """The network output is audited by default: it synthesises values (distance > 0), and the
    clamp (default) keeps them within the planes' range at the pixel, so none is flagged; without
    the clamp the output may leave it. output="snap" returns source pixels: not audited by
    default, and zero when asked. (In float: on this noise-free uint8 stack the output, rounded,
    is a source value at every pixel.)"""
    stack, _, _ = fundus_stack
    stack = stack.astype(np.float32) / 255
    assert ne.fuse(stack, method="fmb-fn").audit is None  # the default composes the planes
    r = ne.fuse(stack, method="fmb-fn", params={"output": "network"})
    assert r.audit is not None and r.audit.max() > 0 and not r.audit_mask.any()
    free = ne.fuse(stack, method="fmb-fn", params={"output": "network", "clamp": False})
    assert free.audit is not None and free.audit.max() >= r.audit.max()
    snap = ne.fuse(stack, method="fmb-fn", params={"output": "snap"})
    assert snap.audit is None
    snap = ne.fuse(stack, method="fmb-fn", params={"output": "snap"}, audit=True)
    assert not snap.audit.any() and not snap.audit_mask.any()


@pytest.mark.parametrize("cfg", [
    dict(seed=12, scene="photo", colour="rgb", noise="moderate", bits=8),
    dict(seed=13, scene="brightfield", colour="grey", noise="moderate", bits=16),
], ids=["rgb8", "grey16"])
def test_pyramid_output_composes_around_the_heads_choice(cfg):
    """output='pyramid' (the default with our weights): on small realistic noisy stacks the planes composed
    around the selection head's probabilities beat the synthesised image by more than 3 dB (measured
    36.9 vs 31.4 and 25.4 vs 21.7 dB); the index and confidence are the head's choice, as with
    output='network'; tiles give the whole image's result."""
    from napari_edof.training.realistic import Config, render

    s = render(Config(n_planes=6, shape=(96, 128), **cfg))
    peak = float(np.iinfo(s.truth.dtype).max)
    r = ne.fuse(s.planes, method="fmb-fn")
    net = ne.fuse(s.planes, method="fmb-fn", params={"output": "network"})
    assert r.fused.dtype == s.planes.dtype and r.audit is None
    assert psnr(r.fused, s.truth, peak) > psnr(net.fused, s.truth, peak) + 3
    np.testing.assert_array_equal(r.index, net.index)
    np.testing.assert_allclose(r.confidence, net.confidence, atol=1e-5)
    tiled = ne.fuse(s.planes, method="fmb-fn", tile=32)
    assert tiled.provenance["tiles"] >= 9
    np.testing.assert_array_equal(tiled.fused, r.fused)
    np.testing.assert_array_equal(tiled.index, r.index)


def test_pyramid_output_needs_the_heads_choice(fundus_stack):
    from napari_edof.core.errors import MethodError

    stack = fundus_stack[0]
    with pytest.raises(MethodError, match="selection head"):
        ne.fuse(stack, method="fmb-fn", params={"output": "pyramid", "weights": "paper"})
    with pytest.raises(MethodError, match="index='nearest'"):
        ne.fuse(stack, method="fmb-fn", params={"output": "pyramid", "index": "nearest"})
