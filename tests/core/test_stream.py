"""Out-of-core and lazy fusion (core/stream.py): stripes give the in-memory engine's results."""
import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core.engine import plan_fusion
from napari_edof.core.stream import fuse_lazy, fuse_to_store_iter, plan_stripes, read_rows
from napari_edof.methods._registry import MethodSpec, Param, register

from ..conftest import drain
from .test_engine import TwoPass  # (also registers the "_two_pass" test method)

da = pytest.importorskip("dask.array")
CLASSICAL = [s.name for s in ne.list_methods(family="classical")]


@pytest.fixture(scope="module")
def grey():
    return ne.sample_stack(n_planes=5, shape=(150, 140), seed=4).stack.data


def _store(shape_tyx, c, dtype):
    T, Y, X = shape_tyx
    return {"fused": np.zeros((T, Y, X, c), dtype), "index": np.full((T, Y, X), -1, np.float32),
            "confidence": np.full((T, Y, X), -1, np.float32)}


@pytest.mark.parametrize("method", CLASSICAL)
def test_lazy_equals_in_memory(grey, method):
    ref = ne.fuse(grey, method=method, tile=32)
    lazy = fuse_lazy(da.from_array(grey, chunks=(1, 64, 64)), method=method, tile=32, budget=1 << 18)
    assert lazy.is_lazy and lazy.provenance["stripes"] > 2  # several stripes: their seams are tested
    r = lazy.compute()
    np.testing.assert_array_equal(r.fused, ref.fused)
    np.testing.assert_array_equal(r.index, ref.index)
    np.testing.assert_array_equal(r.confidence, ref.confidence)


def test_dask_in_gives_dask_out_numpy_gives_numpy(grey):
    lazy = ne.fuse(da.from_array(grey, chunks=(1, 50, 50)), tile=32)
    assert isinstance(lazy.fused, da.Array) and isinstance(lazy.index, da.Array)
    assert isinstance(lazy.labels(), da.Array)  # derived maps stay lazy too
    eager = ne.fuse(grey, tile=32)
    assert isinstance(eager.fused, np.ndarray)
    np.testing.assert_array_equal(lazy.labels().compute(), eager.labels())
    # lazy=False computes now, with progress
    seen = []
    now = ne.fuse(da.from_array(grey), tile=32, lazy=False, progress=seen.append)
    assert isinstance(now.fused, np.ndarray) and seen
    with pytest.raises(ne.EdofError, match="progress"):
        ne.fuse(da.from_array(grey), progress=seen.append)


def test_overlapping_tiles_blend_across_stripes(grey):
    ref = ne.fuse(grey, tile=32, overlap=6)
    r = fuse_lazy(grey, tile=32, overlap=6, budget=1 << 18).compute()
    np.testing.assert_array_equal(r.fused, ref.fused)  # float sums in another order: same rounding here
    np.testing.assert_allclose(r.index, ref.index, atol=1e-5)
    np.testing.assert_allclose(r.confidence, ref.confidence, atol=1e-5)


def test_two_pass_method_gets_the_global_statistic_across_stripes(grey):
    ref = ne.fuse(grey, method="_two_pass", tile=32)
    r = fuse_lazy(grey, method="_two_pass", tile=32, budget=1 << 18).compute()
    np.testing.assert_allclose(r.confidence, ref.confidence, rtol=1e-6)
    out = _store((1, 150, 140), 1, grey.dtype)
    steps, r2 = drain(fuse_to_store_iter(grey, out, method="_two_pass", tile=32, budget=1 << 18))
    assert [s.stage for s in steps].count("pass 1") == len(plan_fusion(grey, tile=32).tiles)
    np.testing.assert_allclose(out["confidence"][0], ref.confidence, rtol=1e-6)


def test_store_iter_writes_every_pixel_and_reads_one_stripe_at_a_time(grey, monkeypatch):
    from napari_edof.core import stream

    spans = []
    real = stream.RowReader._fetch

    def watched(self, lo, hi):
        spans.append((lo, hi))
        return real(self, lo, hi)

    monkeypatch.setattr(stream.RowReader, "_fetch", watched)
    out = _store((1, 150, 140), 1, grey.dtype)
    budget = 140 * 5 * (2 + 4) * 40  # 40 rows of source + float guide per stripe
    # the stripe mechanics with a small halo (focus-select's): the default's reaches 90 pixels
    steps, r = drain(fuse_to_store_iter(da.from_array(grey, chunks=(5, 10, 140)), out, method="focus-select",
                                        tile=16, budget=budget))
    ref = ne.fuse(grey, method="focus-select", tile=16)
    np.testing.assert_array_equal(out["fused"][0, ..., 0], ref.fused)
    np.testing.assert_array_equal(out["index"][0], ref.index)
    np.testing.assert_array_equal(out["confidence"][0], ref.confidence)
    assert steps[-1].done == steps[-1].total == len(plan_fusion(grey, method="focus-select", tile=16).tiles)
    # reads follow the stripes, in whole chunk rows (10 here), each source row about once:
    # never the whole image at once
    assert len(plan_stripes(plan_fusion(grey, method="focus-select", tile=16), budget)) > 3
    assert all(lo % 10 == 0 for lo, hi in spans)
    assert max(hi - lo for lo, hi in spans) <= 40 + 2 * 10
    assert sum(hi - lo for lo, hi in spans) <= 150 + 20
    assert hasattr(r.fused, "dask") or isinstance(r.fused, np.ndarray)


def test_read_rows_reflects_at_the_border(grey):
    frame = grey[..., None]
    rows = read_rows(frame, -3, 4, grey.shape[1])
    np.testing.assert_array_equal(rows[:, :, :, 0], np.take(grey, [3, 2, 1, 0, 1, 2, 3], axis=1))
    rows = read_rows(da.from_array(frame), 145, 153, 150)
    np.testing.assert_array_equal(rows[:, :, :, 0], np.take(grey, [145, 146, 147, 148, 149, 148, 147, 146], axis=1))


def test_time_lapse_and_rgb_lazily():
    s = ne.sample_stack(n_planes=4, shape=(70, 60), seed=1, rgb=True).stack.data
    movie = np.stack([s, s[:, ::-1].copy(), s[:, :, ::-1].copy()])
    ref = ne.fuse(movie, axes="TZYXC", tile=32)
    r = fuse_lazy(da.from_array(movie), axes="TZYXC", tile=32, budget=1 << 16)
    assert r.fused.shape == (3, 70, 60, 3)
    c = r.compute()
    np.testing.assert_array_equal(c.fused, ref.fused)
    np.testing.assert_array_equal(c.index, ref.index)


def test_options_are_checked_before_anything_runs(grey):
    with pytest.raises(ne.EdofError, match="no parameter"):
        fuse_lazy(grey, params={"nope": 1})
    with pytest.raises(ne.EdofError):
        fuse_lazy(grey, tile=4)


def test_row_reader_aligns_to_chunks_only_within_its_row_budget(grey):
    from napari_edof.core.stream import RowReader

    frame = da.from_array(grey[..., None], chunks=(5, 64, 140, 1))
    wide = RowReader(frame, 150)
    assert wide._span(10, 40) == (10, 64)  # on to the end of its chunk row (rows above are not needed again)
    tight = RowReader(frame, 150, max_rows=40)
    assert tight._span(10, 40) == (10, 40)  # exact rows: memory before speed
    for rd in (wide, tight):
        np.testing.assert_array_equal(rd.read(10, 40)[..., 0], grey[:, 10:40])
        rd.prefetch(30, 70)
        np.testing.assert_array_equal(rd.read(30, 70)[..., 0], grey[:, 30:70])
        np.testing.assert_array_equal(rd.read(-3, 5)[..., 0], np.take(grey, [3, 2, 1, 0, 1, 2, 3, 4], axis=1))
        rd.close()


@register(MethodSpec(name="_pass_by_param", summary="test: a first pass only with global=True",
                     family="classical", params=(Param("global", bool, True),)))
class PassByParam:
    """Chooses its first pass per instance, as StackMFF-V2 does for its global rules."""

    first_pass = ()
    pass1, reduce = TwoPass.pass1, TwoPass.reduce

    def __init__(self, params, *, device):
        if params["global"]:
            self.first_pass = TwoPass.first_pass
        self.glob = params["global"]

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        if stats is None:
            stats = 1.0 if not self.glob else float("nan")  # a missing first pass shows as NaN
        return TwoPass.fuse_tile(self, planes, guide, halo=halo, stats=stats)


@pytest.mark.parametrize("glob", [True, False])
def test_a_first_pass_chosen_per_instance_runs_on_every_path(grey, glob):
    ref = ne.fuse(grey, method="_pass_by_param", params={"global": glob}, tile=32)
    assert np.isfinite(ref.confidence).all()
    lazy = fuse_lazy(grey, method="_pass_by_param", params={"global": glob}, tile=32, budget=1 << 18).compute()
    np.testing.assert_allclose(lazy.confidence, ref.confidence, rtol=1e-6)
    out = _store((1, 150, 140), 1, grey.dtype)
    steps, _ = drain(fuse_to_store_iter(grey, out, method="_pass_by_param", params={"global": glob}, tile=32,
                                         budget=1 << 18))
    assert ("pass 1" in {s.stage for s in steps}) == glob
    np.testing.assert_allclose(out["confidence"][0], ref.confidence, rtol=1e-6)


@register(MethodSpec(name="_own_weights", summary="test: the instance says which weights it loaded",
                     family="classical"))
class OwnWeights:
    def __init__(self, params, *, device):
        self.weights_sha256 = "0" * 63 + "1"

    def fuse_tile(self, planes, guide, *, halo, stats=None):
        return TwoPass.fuse_tile(self, planes, guide, halo=halo, stats=1.0)


def test_provenance_names_the_weights_the_instance_loaded(grey):
    assert ne.fuse(grey, method="_own_weights").provenance["weights_sha256"] == "0" * 63 + "1"
    assert fuse_lazy(grey, method="_own_weights").provenance["weights_sha256"] == "0" * 63 + "1"
