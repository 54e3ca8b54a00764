"""Accelerator paths of the engine (nn/accel.py and the engine's precision and lanes), on the CPU:
half precision kept only where the index is identical, tiles in two lanes, the OOM back-off
dropping a lane first. The CUDA side of the same code (pinned uploads, one stream per lane) runs in
``benchmarks/gpu_check.py``."""
import pickle

import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.errors import StackError

torch = pytest.importorskip("torch")


@pytest.fixture
def autocast_probe():
    """A torch-backend method whose index is the brightest plane, plus 1 wherever ``shift`` says
    so under autocast (a method whose index half precision changes); it records whether autocast
    was on for every call."""
    from napari_edof.core.colour import gather
    from napari_edof.methods._registry import MethodSpec, Param, register, unregister

    calls = []

    class Probe:
        first_pass = ()

        def __init__(self, params, *, device="cpu"):
            self.shift, self.fail, self.mark = params["shift"], params["fail"], params["mark"]
            self.first_pass = ("m",) if params["two_pass"] else ()

        def pass1(self, planes, guide, *, halo):
            calls.append(("pass1", torch.is_autocast_enabled("cpu")))
            return {"m": np.zeros(guide.shape[1:], np.float32)}

        def reduce(self, maps):
            return None

        def fuse_tile(self, planes, guide, *, halo, stats=None):
            on = torch.is_autocast_enabled("cpu")
            calls.append(on)
            if on and self.fail:
                raise RuntimeError("expected dtype float but got BFloat16")
            x = torch.from_numpy(np.ascontiguousarray(guide))
            y = torch.nn.functional.linear(x, torch.eye(x.shape[-1]))  # bfloat16 under autocast
            idx = y.float().argmax(0).numpy().astype(np.float32)
            if on and self.shift:
                idx = idx + 1
            h, w = idx.shape
            src = planes[:, halo:halo + h, halo:halo + w]
            return {"fused": gather(src, idx.astype(np.int16) % planes.shape[0]), "index": idx,
                    "confidence": np.full(idx.shape, 0.5 if on and self.mark else 1, np.float32)}

    spec = MethodSpec(name="_autocast-probe", summary="test", family="learned", backend="torch",
                      devices=("cpu",), default_tile=32,
                      params=(Param("shift", bool, False, "half precision changes the index"),
                              Param("fail", bool, False, "the network fails in half precision"),
                              Param("mark", bool, False, "confidence 0.5 when computed in half precision"),
                              Param("two_pass", bool, False, "a first pass")))
    register(spec)(Probe)
    yield calls
    unregister("_autocast-probe")


def _stack():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 8, size=(4, 64, 64)) * 1000).astype(np.uint16)  # ties: bfloat16 keeps them


def test_half_precision_is_kept_when_the_first_tile_index_is_identical(autocast_probe):
    calls = autocast_probe
    r = ne.fuse(_stack(), method="_autocast-probe", precision="half")
    assert r.provenance["precision"] == "half"
    check = r.provenance["half_precision_check"]
    assert check["kept"] and check["differing"] == 0 and check["half_type"] == "bfloat16"
    assert calls[:2] == [False, True]  # the first tile in float32, then in half precision
    assert all(calls[2:]) and len(calls) == 4 + 1  # 4 tiles of 32 px, the first one twice
    np.testing.assert_array_equal(r.index, ne.fuse(_stack(), method="_autocast-probe").index)


def test_half_precision_is_dropped_when_it_changes_the_index(autocast_probe):
    calls = autocast_probe
    r = ne.fuse(_stack(), method="_autocast-probe", params={"shift": True}, precision="half")
    assert r.provenance["precision"] == "float32"
    check = r.provenance["half_precision_check"]
    assert not check["kept"] and check["differing"] == check["pixels"] == 32 * 32
    assert r.summary().endswith("; float32: half precision changed 1024 of 1024 index pixels of the first tile")
    assert not any(calls[2:])  # the rest of the run in float32
    ref = ne.fuse(_stack(), method="_autocast-probe", params={"shift": True})
    np.testing.assert_array_equal(r.index, ref.index)  # the float32 result, first tile included


def test_half_precision_is_dropped_when_the_method_fails_in_it(autocast_probe):
    r = ne.fuse(_stack(), method="_autocast-probe", params={"fail": True}, precision="half")
    assert r.provenance["precision"] == "float32"
    check = r.provenance["half_precision_check"]
    assert not check["kept"] and "expected dtype float" in check["error"]
    assert "float32: the method failed in half precision (RuntimeError: expected dtype" in r.summary()
    np.testing.assert_array_equal(r.index, ne.fuse(_stack(), method="_autocast-probe").index)


def test_a_first_pass_runs_in_float32_and_the_index_is_checked(autocast_probe):
    calls = autocast_probe
    r = ne.fuse(_stack(), method="_autocast-probe", params={"two_pass": True, "shift": True}, precision="half")
    assert [c for c in calls if isinstance(c, tuple)] == [("pass1", False)] * 4
    assert r.provenance["precision"] == "float32"  # decided on pass 2's index, not on pass 1's maps


def test_precision_auto_is_float32_off_cuda_and_options_are_checked(autocast_probe):
    r = ne.fuse(_stack(), method="_autocast-probe")
    assert r.provenance["precision"] == "float32" and "half_precision_check" not in r.provenance
    assert not any(autocast_probe)
    with pytest.raises(StackError, match="precision='double' is not one of auto, float32, half"):
        ne.fuse(_stack(), method="_autocast-probe", precision="double")
    with pytest.raises(StackError, match="focus-select computes in float32.*learned methods"):
        ne.fuse(_stack(), method="focus-select", precision="half")
    assert ne.fuse(_stack(), precision="float32").provenance["precision"] == "float32"


def test_lazy_runs_check_half_precision_in_their_tasks(autocast_probe):
    import dask.array as da

    # (dask copies the plan, and with it this test's method class: its calls are not seen here, so
    # the probe says in its outputs what ran: confidence 0.5 where a tile ran in half precision)
    def lazy(**params):
        r = ne.fuse(da.from_array(_stack(), chunks=(1, 32, 64)), method="_autocast-probe", params=params,
                    precision="half")
        assert r.provenance["precision"].startswith("half where each task's first tile kept")
        return r.compute()

    kept = lazy(mark=True)  # the index stays: every task keeps half precision
    assert (kept.confidence == 0.5).all()
    dropped = lazy(mark=True, shift=True)  # the index moves: every task drops it, first tile included
    assert (dropped.confidence == 1).all()
    np.testing.assert_array_equal(dropped.index, ne.fuse(_stack(), method="_autocast-probe").index)


def test_the_half_precision_gate_travels_to_dask_workers():
    from napari_edof.core.engine import HalfGate

    g = HalfGate("cpu")
    g.state, g.report = "half", {"kept": True}
    h = pickle.loads(pickle.dumps(g))
    assert h.state == "half" and h.report == {"kept": True}
    assert h.run(lambda: {"index": np.zeros(2)})["index"].shape == (2,)


def test_stackmff_v2_in_half_precision_on_the_cpu():
    from napari_edof import sample_stack

    s = sample_stack(n_planes=6, shape=(64, 64), seed=2)
    half = ne.fuse(s.stack, method="stackmff-v2", precision="half", tile=0)
    check = half.provenance["half_precision_check"]
    assert check["half_type"] == "bfloat16" and check["pixels"] == 64 * 64
    full = ne.fuse(s.stack, method="stackmff-v2", tile=0)
    if check["kept"]:  # one tile: the half result is the float32 one, bit for bit
        np.testing.assert_array_equal(half.index, full.index)
    else:
        assert half.provenance["precision"] == "float32"
        np.testing.assert_array_equal(half.index, full.index)


def test_to_device_on_the_cpu_shares_contiguous_float32():
    from napari_edof.nn.accel import lanes, to_device

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = to_device(a, "cpu")
    assert t.dtype == torch.float32 and t.data_ptr() == a.ctypes.data  # no copy on the CPU
    u = to_device(a[:, ::2].astype(np.uint16), "cpu")
    assert u.is_contiguous() and u.dtype == torch.float32 and u.tolist() == [[0, 2], [4, 6], [8, 10]]
    assert lanes("cpu") == 1 and lanes("cuda:0") == 2


@pytest.mark.parametrize("method", ["stackmff-v2", "ctmfusion", "msas", "vaeedof", "fmb-fn"])
def test_two_lanes_give_the_result_of_one(monkeypatch, method, one_torch_thread):
    """On CUDA the engine runs two tiles at a time (one stream each): the methods must not share
    state between concurrent tiles. Forced here on the CPU."""
    from napari_edof import sample_stack
    from napari_edof.methods._registry import get_method
    from napari_edof.nn import accel
    from napari_edof.nn import weights as W

    from ..conftest import SHARED

    spec = get_method(method)[0]
    if spec.weights is not None and spec.weights.urls:  # third-party weights: from ../shared, never downloaded
        if not (SHARED / "weights" / spec.weights.filename).is_file():
            pytest.skip(f"{spec.weights.filename} not in ../shared/weights")
        monkeypatch.setenv(W.ENV, str(SHARED / "weights"))
        monkeypatch.setattr(W, "_download", lambda *a: pytest.fail("tests must not download"))
    s = sample_stack(n_planes=4, shape=(96, 96), seed=1)
    one = ne.fuse(s.stack, method=method, tile=64)
    monkeypatch.setattr(accel, "lanes", lambda device: 2)
    # (overlapping tiles are blended in plan order: added as they finished, the float sums
    # differed by 1e-7 from run to run)
    two = ne.fuse(s.stack, method=method, tile=64)
    np.testing.assert_array_equal(two.index, one.index)
    np.testing.assert_array_equal(two.fused, one.fused)


def test_out_of_memory_with_two_lanes_drops_a_lane_before_shrinking_tiles(monkeypatch):
    import threading

    from napari_edof.core.colour import gather
    from napari_edof.methods._registry import MethodSpec, register, unregister
    from napari_edof.nn import accel

    running, lock, calls, met = [0], threading.Lock(), [], threading.Event()

    class TwoAtATimeIsTooMuch:
        def __init__(self, params, *, device="cpu"):
            pass

        def fuse_tile(self, planes, guide, *, halo, stats=None):
            with lock:
                running[0] += 1
                n = running[0]
            try:
                calls.append(n)
                if n > 1:
                    met.set()
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
                met.wait(timeout=10)  # until the other lane has started a tile (once)
                idx = guide.argmax(0).astype(np.int16)
                return {"fused": gather(planes, idx), "index": idx.astype(np.float32),
                        "confidence": np.ones(idx.shape, np.float32)}
            finally:
                with lock:
                    running[0] -= 1

    register(MethodSpec(name="_two-lanes-oom", summary="test", family="learned", backend="torch",
                        devices=("cpu",), default_tile=32))(TwoAtATimeIsTooMuch)
    monkeypatch.setattr(accel, "lanes", lambda device: 2)
    try:
        data = _stack()
        r = ne.fuse(data, method="_two-lanes-oom")
    finally:
        unregister("_two-lanes-oom")
    assert 2 in calls  # the two lanes did meet
    assert r.provenance["lanes_after_out_of_memory"] == 1
    assert "out_of_memory_retries" not in r.provenance and r.provenance["tile"] == 32
    np.testing.assert_array_equal(r.index, data.argmax(0))


def test_pair_methods_batch_auto_is_one_pair_on_the_cpu_and_more_on_a_gpu():
    from napari_edof.methods._registry import get_method
    from napari_edof.nn.accel import GPU_PAIR_BATCH, pair_batch

    assert pair_batch(0, "cpu") == 1 and pair_batch(0, "cuda:0") == pair_batch(0, "mps") == GPU_PAIR_BATCH > 1
    assert pair_batch(3, "cuda:0") == 3
    for name in ("msas", "ctmfusion"):
        spec, cls = get_method(name)
        assert spec.defaults()["batch"] == 0
        assert cls(spec.resolve(None), device="cpu").p["batch"] == 1
        assert cls(spec.resolve({"batch": 4}), device="cpu").p["batch"] == 4


def test_msas_keeps_its_reference_features_per_thread():
    """Two lanes decide against different references at once: each thread keeps its own
    reference's features (one shared slot let a lane read the other's, a race on a GPU)."""
    import threading

    from napari_edof.methods.msas import make_decide

    encoded = []

    class Fake:
        def encode_padded(self, tb):
            encoded.append(float(tb.mean()))
            return tb

        def decide_encoded(self, ta, feats):
            return ta - feats  # depends on whose features are used

    decide = make_decide(Fake(), "cpu")
    a = np.ones((2, 4, 4), np.float32)
    ra, rb = np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), 5, np.float32)
    out = {}

    def lane(name, ref):
        out[name] = decide(a, ref)

    lane("a1", ra)
    t = threading.Thread(target=lane, args=("b", rb))
    t.start()
    t.join()
    lane("a2", ra)  # this thread's reference is still kept: no new encoding
    assert encoded == [0.0, 5.0]
    np.testing.assert_array_equal(out["a2"], out["a1"])
    np.testing.assert_array_equal(out["b"], a - 5)


def test_map_planes_keeps_the_order_and_restores_the_thread_count():
    import threading

    from napari_edof.nn.accel import cpu_workers, map_planes

    n = torch.get_num_threads()
    seen = []

    def fn(k):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return k * k

    assert map_planes(fn, range(7), 2) == [k * k for k in range(7)]
    assert {t for _, t in seen} == {1}  # single-threaded inside the workers
    assert torch.get_num_threads() == n
    assert map_planes(fn, [3], 2) == [9] and cpu_workers(1) == 1 and cpu_workers(100) == n


@pytest.mark.parametrize("name", ["msas", "ctmfusion"])
def test_pair_cpu_route_falls_back_to_decide_under_autocast(name):
    """Half precision on the CPU (autocast is per thread): the route answers with the plain
    decide, in the caller's thread, so autocast still applies."""
    from napari_edof.methods import ctmfusion, msas

    mod = msas if name == "msas" else ctmfusion
    model = mod.get_model("cpu") if name == "msas" else mod.get_model("ours", "cpu")
    decide = mod.make_decide(model, "cpu")
    rng = np.random.default_rng(2)
    planes = rng.random((2, 32, 32), dtype=np.float32)
    ref = rng.random((32, 32), dtype=np.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = decide.against(planes, ref)
        want = decide(planes, np.broadcast_to(ref, planes.shape))
    np.testing.assert_array_equal(got, want)
