"""StackMFF-V2 network: state-dict compatibility and stage-by-stage reference reproduction."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof.nn import stackmff_v2 as sm  # noqa: E402


@pytest.fixture(scope="module")
def official_path():
    from tests.conftest import SHARED

    p = SHARED / "weights" / "stackmff_v2_official.pth"
    if not p.is_file():
        pytest.skip(f"official StackMFF-V2 weights not found at {p} (the shared/ folder beside the repo)")
    return p


@pytest.fixture(scope="module")
def reference():
    from tests.conftest import SHARED

    p = SHARED / "reference" / "stackmff_v2_reference.npz"
    if not p.is_file():
        pytest.skip(f"StackMFF-V2 reference outputs not found at {p}")
    return dict(np.load(p))


@pytest.fixture(scope="module")
def model(official_path):
    return sm.load_model(official_path)


def test_parameter_count_and_keys():
    m = sm.StackMFFV2()
    assert sum(p.numel() for p in m.parameters()) == 51524
    keys = set(m.state_dict())
    assert "layer_interaction.layer_interaction_depth.forward_cell_list.0.conv_gates.weight" in keys
    assert "feature_extraction.scab.catt.get_all_att.weight" in keys


def test_state_dict_loads_strictly(official_path):
    sd = torch.load(official_path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in sd)
    m = sm.StackMFFV2()
    res = m.load_state_dict(sm.clean_state_dict(sd), strict=True)
    assert not res.missing_keys and not res.unexpected_keys


@pytest.fixture(scope="module")
def stages(model, reference):
    x = torch.from_numpy(reference["stack"])[None]
    with torch.no_grad():
        return model.stages(x)


def test_intra_layer_probs(stages, reference):
    np.testing.assert_allclose(stages["intra_layer_probs"].numpy(), reference["intra_layer_probs"], atol=1e-5, rtol=0)


def test_inter_layer_logits(stages, reference):
    np.testing.assert_allclose(stages["inter_layer_logits"].numpy(), reference["inter_layer_logits"], atol=2e-5, rtol=0)


def test_official_rule_depth_index_fused(stages, reference):
    dm, idx = sm.official_index(stages["inter_layer_logits"])
    np.testing.assert_allclose(dm.numpy(), reference["depth_map_normalized"], atol=2e-5, rtol=0)
    np.testing.assert_array_equal(idx.numpy(), reference["index"])
    stack = torch.from_numpy(reference["stack"])[None]
    fused = torch.gather(stack, 1, idx[:, None])
    np.testing.assert_array_equal(fused.numpy(), reference["fused"])


def test_inference_path_in_strips_matches(model, reference):
    x = torch.from_numpy(reference["stack"])
    whole = model.infer_logits(x, strip_budget=1 << 40)
    strips = model.infer_logits(x, strip_budget=1)  # 56-row strips with the exact halo
    np.testing.assert_allclose(whole.numpy(), reference["inter_layer_logits"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(strips.numpy(), whole.numpy(), atol=2e-5, rtol=0)
    threads = model.infer_logits(x, workers=2)  # planes and row strips in two threads
    np.testing.assert_allclose(threads.numpy(), whole.numpy(), atol=2e-5, rtol=0)


def test_forward_is_differentiable_and_pads():
    torch.manual_seed(0)
    m = sm.StackMFFV2()
    x = torch.rand(2, 3, 40, 36, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 3, 40, 36)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


def test_forward_equals_inference_path():
    torch.manual_seed(1)
    m = sm.StackMFFV2().eval()
    x = torch.rand(1, 5, 64, 96)
    with torch.no_grad():
        a = m(x)
    b = m.infer_logits(x, strip_budget=1, plane_chunk=2)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,segment", [(7, 3), (7, 2), (5, 1), (4, 4), (1, 1), (9, 3)])
def test_checkpointed_recurrence_is_bitwise_equal(n, segment):
    """Forward states kept every `segment` planes and recomputed: the same logits, bit for bit."""
    torch.manual_seed(n)
    m = sm.StackMFFV2().eval()
    feats = torch.rand(n, sm.FEATURES, 40, 48)
    full = m.infer_recurrent(feats, segment=None, strip_budget=1 << 40)
    ckpt = m.infer_recurrent(feats, segment=segment, strip_budget=1 << 40)
    assert torch.equal(full, ckpt)
    assert sm._held_states(n, segment) <= n


@pytest.fixture
def strips_seen(monkeypatch):
    """(rows, segment) of every call of the recurrent pass on a strip."""
    seen = []
    real = sm._recurrent_rows

    def spy(fp, cells, hid, fmt, segment=None):
        seen.append((fp.shape[2] - 4, segment))
        return real(fp, cells, hid, fmt, segment)

    monkeypatch.setattr(sm, "_recurrent_rows", spy)
    return seen


def test_small_budget_checkpoints_instead_of_holding_every_state(strips_seen):
    torch.manual_seed(3)
    m = sm.StackMFFV2().eval()
    x = torch.rand(1, 16, 64, 64)
    whole = m.infer_logits(x, strip_budget=1 << 40, workers=1)
    assert strips_seen == [(64, None)]
    strips_seen.clear()
    # 16 states of 64 rows x 64 x 16 ch x 4 B = 4 MiB; 3 MiB forces checkpoints every 4 planes (7 held)
    small = m.infer_logits(x, strip_budget=3 << 20, workers=1)
    assert strips_seen == [(64, 4)]
    assert torch.equal(whole, small)


def test_few_planes_over_budget_use_narrower_strips_not_checkpoints(strips_seen):
    torch.manual_seed(4)
    m = sm.StackMFFV2().eval()
    x = torch.rand(1, 2, 256, 64)
    # 2 planes x 256 rows x 64 x 16 ch x 4 B = 2 MiB held; 1 MiB: 116-row strips (+ 6-row halos) recompute less
    small = m.infer_logits(x, strip_budget=1 << 20, workers=1)
    assert all(seg is None for _, seg in strips_seen) and len(strips_seen) >= 2
    assert max(r for r, _ in strips_seen) < 256
    assert torch.allclose(small, m.infer_logits(x, strip_budget=1 << 40, workers=1), atol=2e-5)


@pytest.fixture
def two_way_seen(monkeypatch):
    """Rows of every call of the two-thread (direction-parallel) recurrent pass."""
    seen = []
    real = sm._recurrent_two_way

    def spy(fp, cells, hid, fmt):
        seen.append(fp.shape[2] - 4)
        return real(fp, cells, hid, fmt)

    monkeypatch.setattr(sm, "_recurrent_two_way", spy)
    return seen


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_two_directions_in_two_threads_equal_one_thread_bitwise(n, two_way_seen, strips_seen):
    torch.manual_seed(10 + n)
    m = sm.StackMFFV2().eval()
    feats = torch.rand(n, sm.FEATURES, 48, 40)
    serial = m.infer_recurrent(feats, workers=1, strip_budget=1 << 40)
    assert two_way_seen == [] and strips_seen == [(48, None)]
    strips_seen.clear()
    both = m.infer_recurrent(feats, workers=2, strip_budget=1 << 40)
    assert two_way_seen == [48] and strips_seen == []  # one window, no halo rows
    assert torch.equal(serial, both)


def test_four_workers_run_two_strips_of_two_directions(two_way_seen):
    torch.manual_seed(5)
    m = sm.StackMFFV2().eval()
    x = torch.rand(1, 3, 96, 32)
    four = m.infer_logits(x, workers=4, strip_budget=1 << 40)
    assert len(two_way_seen) == 2 and all(r < 96 for r in two_way_seen)  # two haloed strips
    assert torch.allclose(four, m.infer_logits(x, workers=1, strip_budget=1 << 40), atol=2e-5)


def test_two_way_falls_back_to_checkpoints_over_budget(two_way_seen, strips_seen):
    torch.manual_seed(6)
    m = sm.StackMFFV2().eval()
    x = torch.rand(1, 16, 64, 64)
    small = m.infer_logits(x, strip_budget=3 << 20, workers=2)  # 16 states do not fit: checkpoints
    assert two_way_seen == [] and strips_seen and all(seg is not None for _, seg in strips_seen)
    assert torch.allclose(small, m.infer_logits(x, workers=1, strip_budget=1 << 40), atol=2e-5)
