"""The engine: progress, cancellation, two-pass methods, axes, errors, never touching the input."""
import threading

import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.errors import EdofError, MethodError, StackError
from napari_edof.core.tiling import plan_tiles, read_window
from napari_edof.methods._registry import MethodSpec, register, unregister

from ..conftest import drain


def test_progress_counts_every_tile(sample_grey):
    steps, res = drain(ne.fuse_iter(sample_grey.stack, tile=32))
    total = res.provenance["tiles"]
    assert total == 9  # 96 / 32 = 3 x 3
    assert [s.done for s in steps] == list(range(1, total + 1))
    assert all(s.total == total for s in steps)
    assert steps[-1].fraction == 1.0


def test_fuse_calls_progress_callback(sample_grey):
    seen = []
    ne.fuse(sample_grey.stack, tile=48, progress=seen.append)
    assert len(seen) == 4 and seen[-1].done == 4


@pytest.fixture
def counting_method():
    calls = []
    lock = threading.Lock()

    @register(MethodSpec(name="_counting", summary="test", family="classical", halo=lambda p: 1))
    class Counting:
        def __init__(self, params, *, device):
            pass

        def fuse_tile(self, planes, guide, *, halo, stats=None):
            with lock:
                calls.append(1)
            h, w = guide.shape[1] - 2 * halo, guide.shape[2] - 2 * halo
            idx = np.zeros((h, w), np.float32)
            return {"fused": planes[0, halo:-halo, halo:-halo].astype(np.float32), "index": idx, "confidence": idx}

    yield calls
    unregister("_counting")


@pytest.mark.parametrize("workers", [1, 2])
def test_cancel_stops_before_the_next_tile(sample_grey, counting_method, workers):
    gen = ne.fuse_iter(sample_grey.stack, method="_counting", tile=16, workers=workers)  # 36 tiles
    next(gen)
    next(gen)
    gen.close()
    # tiles already running finish; at most 2 x workers were in flight
    assert 2 <= len(counting_method) <= 2 + 2 * workers
    n = len(counting_method)
    assert len(counting_method) == n  # nothing runs after close() returned


@register(
    MethodSpec(
        name="_two_pass",
        summary="normalises by the global maximum of the mean plane (a whole-image statistic)",
        family="classical",
        halo=lambda p: 0,
    )
)
class TwoPass:
    first_pass = ("peak",)

    def __init__(self, params, *, device):
        pass

    def pass1(self, planes, guide, *, halo):
        g = guide[:, halo : guide.shape[1] - halo, halo : guide.shape[2] - halo]
        return {"peak": g.mean(axis=0)}

    def reduce(self, maps):
        return float(maps["peak"].max())

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        g = guide[:, halo : guide.shape[1] - halo, halo : guide.shape[2] - halo]
        idx = (g.mean(axis=0) / stats * 0).astype(np.float32)
        conf = (g.mean(axis=0) / stats).astype(np.float32)
        return {"fused": g[0], "index": idx, "confidence": conf}


def test_two_pass_method_sees_the_global_statistic(sample_grey):
    s = sample_grey
    steps, tiled = drain(ne.fuse_iter(s.stack, method="_two_pass", tile=32))
    assert [x.stage for x in steps].count("pass 1") == 9
    whole = ne.fuse(s.stack, method="_two_pass", tile=None)
    expect = s.stack.data.astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(whole.confidence, expect / expect.max(), rtol=1e-5)
    np.testing.assert_allclose(tiled.confidence, whole.confidence, rtol=1e-5)


def test_time_lapse_and_channels():
    s = ne.sample_stack(n_planes=4, shape=(40, 48), seed=5).stack.data
    tz = np.stack([s, s[:, ::-1]])  # T, Z, Y, X
    steps, r = drain(ne.fuse_iter(tz, axes="TZYX", tile=None))
    assert r.fused.shape == (2, 40, 48) and r.index.shape == (2, 40, 48)
    assert [x.frame for x in steps] == [0, 1]
    # each time point is fused on its own (compared with its own run, not with a mirrored result:
    # float sums need not be mirror-exact)
    for t, frame in enumerate((s, s[:, ::-1])):
        np.testing.assert_array_equal(r.fused[t], ne.fuse(frame, tile=None).fused)
    assert r.labels().shape == (2, 40, 48) and r.masks().shape == (2, 4, 40, 48)
    # C, Z, Y, X with the focus measured on channel 1 and applied to both channels
    czyx = np.stack([s // 2, s])
    r2 = ne.fuse(czyx, axes="CZYX", guide=1)
    ref = ne.fuse(s)
    np.testing.assert_array_equal(r2.index, ref.index)
    assert r2.fused.shape == (40, 48, 2)
    np.testing.assert_array_equal(r2.fused[..., 1], ref.fused)


def test_dask_input_is_read_per_time_point():
    da = pytest.importorskip("dask.array")
    s = ne.sample_stack(n_planes=4, shape=(64, 64), seed=2)
    lazy = da.from_array(s.stack.data, chunks=(1, 32, 32))
    r = ne.fuse(lazy)
    np.testing.assert_array_equal(r.fused, ne.fuse(s.stack.data).fused)


def test_input_is_never_modified(sample_rgb):
    before = sample_rgb.stack.data.copy()
    ne.fuse(sample_rgb.stack, tile=32)
    np.testing.assert_array_equal(sample_rgb.stack.data, before)


def test_pair_gives_binary_masks():
    s = ne.sample_stack(n_planes=2, shape=(32, 32), seed=1)
    r = ne.fuse(s.stack, method="focus-select")
    m = r.masks()
    assert m.shape == (2, 32, 32) and m.dtype == bool
    np.testing.assert_array_equal(m[0], ~m[1])
    assert set(np.unique(r.labels())) <= {1, 2}
    # the default marks pixels where no plane is in focus as unknown: in no mask, label 0
    r = ne.fuse(s.stack)
    m, lab, unknown = r.masks(), r.labels(), np.isnan(r.index)
    assert not (m[0] & m[1]).any()
    np.testing.assert_array_equal(m[0] | m[1], ~unknown)
    assert set(np.unique(lab[~unknown])) <= {1, 2} and (lab[unknown] == 0).all()


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (np.zeros((32, 32), np.uint8), {}, "2D image"),
        (np.zeros((1, 32, 32), np.uint8), {}, "at least 2 planes"),
        (np.zeros((3, 16, 16), bool), {}, "unsupported pixel type"),
        (np.zeros((3, 16, 16), np.int64), {}, "unsupported pixel type"),
        (np.zeros((3, 16, 16), np.complex64), {}, "unsupported pixel type"),
        (np.zeros((2, 3, 16, 16), np.uint8), {}, "axes"),
        (np.zeros((3, 16, 16), np.uint8), {"axes": "ZYXQ"}, "do not match"),
        (np.zeros((3, 16, 16), np.uint8), {"axes": "ZYQ"}, "unknown axis"),
        (np.zeros((3, 16, 16), np.uint8), {"tile": 4}, "too small"),
        (np.zeros((3, 16, 16), np.uint8), {"device": "cuda"}, "CPU only"),
        (np.zeros((3, 16, 16), np.uint8), {"guide": 3}, "does not exist"),
        (np.zeros((3, 16, 16, 3), np.uint8), {"guide": "hue"}, "guide must be"),
    ],
)
def test_bad_input_gets_a_clear_error(data, kwargs, match):
    with pytest.raises(EdofError, match=match):
        ne.fuse(data, **kwargs)


def test_nan_and_inf_are_refused():
    a = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    a[1, 5, 5] = np.nan
    with pytest.raises(StackError, match="NaN"):
        ne.fuse(a)
    a[1, 5, 5] = np.inf
    with pytest.raises(StackError, match="NaN or infinite"):
        ne.fuse(a, tile=16)


def test_parameter_bounds(sample_grey):
    with pytest.raises(MethodError, match="below its minimum"):
        ne.fuse(sample_grey.stack, params={"radius": -1})
    with pytest.raises(MethodError, match="not one of"):
        ne.fuse(sample_grey.stack, method="focus-select", params={"measure": "entropy"})
    r = ne.fuse(sample_grey.stack, params={"radius": "3"})
    assert r.provenance["params"]["radius"] == 3


def test_provenance(sample_grey):
    r = ne.fuse(sample_grey.stack)
    p = r.provenance
    assert p["method"] == "focus-fuse" and p["version"] == ne.__version__  # the default
    assert p["params"] == ne.get_method("focus-fuse").defaults()
    assert r.z_step == 2.0 and r.pixel_size == (0.5, 0.5)
    np.testing.assert_allclose(r.height(), r.index * 2.0)


def test_reflected_windows_match_numpy_pad():
    rng = np.random.default_rng(0)
    frame = rng.random((2, 10, 12, 1))
    padded = np.pad(frame, ((0, 0), (7, 7), (7, 7), (0, 0)), mode="reflect")
    for win in [(-7, 5, -7, 6), (3, 17, 4, 19), (-2, 12, -3, 14)]:
        y0, y1, x0, x1 = win
        np.testing.assert_array_equal(read_window(frame, win), padded[:, y0 + 7 : y1 + 7, x0 + 7 : x1 + 7])


def test_take_runs_is_np_take_for_reflected_indices():
    from napari_edof.core.tiling import reflect_index, take_runs

    a = np.random.default_rng(2).integers(0, 100, size=(3, 11, 6, 2))
    for n in (1, 2, 5, 11):  # the axis length
        for lo in range(-25, 20):
            for length in (1, 2, 3, 7, 30):
                idx = reflect_index(np.arange(lo, lo + length), n)
                for axis, b in ((1, a[:, :n]), (2, a[:, :, :n] if n <= 6 else a[:, :, :6])):
                    i = idx if axis == 1 or n <= 6 else reflect_index(np.arange(lo, lo + length), 6)
                    got = take_runs(b, i, axis)
                    np.testing.assert_array_equal(got, np.take(b, i, axis=axis))
                    assert got.base is None or not np.shares_memory(got, b)  # a copy, as np.take's


@pytest.mark.parametrize("win", [(-6, 10, 100, 130), (20, 36, -6, 10), (-6, 10, -6, 10), (30, 50, 3990, 4010)])
def test_a_reflected_window_copies_the_window_not_the_frame(win):
    import tracemalloc

    frame = np.random.default_rng(1).random((3, 40, 4000, 1))  # 3.8 MB
    tracemalloc.start()
    try:
        got = read_window(frame, win)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    y0, y1, x0, x1 = win
    assert got.shape == (3, y1 - y0, x1 - x0, 1)
    assert peak < 8 * got.nbytes + 65536  # (was a copy of whole rows or columns of the frame)
    padded = np.pad(frame, ((0, 0), (6, 16), (6, 16), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(got, padded[:, y0 + 6 : y1 + 6, x0 + 6 : x1 + 6])


def test_plan_tiles_cover_the_image_once():
    tiles = plan_tiles((100, 70), 32, halo=5, overlap=4, multiple=8)
    cover = np.zeros((104, 72), int)
    for t in tiles:
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0 and (t.window[1] - t.window[0]) % 8 == 0
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert (cover[:100, :70] == 1).all()
