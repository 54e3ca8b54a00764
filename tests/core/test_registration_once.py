"""Registration happens once per run, on every run path (issue 15): the plan
(:func:`napari_edof.core.plan.plan_fusion`) is the only place it is applied; and every path runs
through the one run function, :func:`napari_edof.core.run.run_frames` (once per run)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_edof as ne
from napari_edof.core.engine import drain

from .. import reference_cases as R


@pytest.fixture(scope="module")
def moved():
    return R.stacks()["moved"][0]  # 5 x 96 x 96, planes moved by fractions of pixels


@pytest.fixture
def count(registrations):
    return registrations


@pytest.fixture
def ran(runs):
    """The schedules of the run function's calls (every path goes through core.run.run_frames)."""
    return runs


@pytest.fixture(scope="module")
def reference(moved):
    return ne.fuse(moved, method="focus-select", tile=32, register="translation")


def _check(r, reference):
    for k in ("fused", "index", "confidence"):
        np.testing.assert_array_equal(np.asarray(getattr(r, k)), getattr(reference, k))
    assert r.provenance["registration"]["mode"] == "translation"


OPTS = dict(method="focus-select", tile=32, register="translation")


def test_in_memory(moved, reference, count, ran):
    _check(ne.fuse(moved, **OPTS), reference)
    assert len(count) == 1
    _check(drain(ne.fuse_iter(moved, **OPTS)), reference)
    assert len(count) == 2
    assert ran == [("MemoryFrames", "MemorySink", "InProcess")] * 2


def test_lazy(moved, reference, count, ran):
    import dask.array as da

    r = ne.fuse(da.from_array(moved, chunks=(1, 32, -1)), budget=1, **OPTS)
    assert len(count) == 1
    assert ran == [("DaskRows", "TaskSink", "DaskTasks")]  # the run function built the graph
    _check(r.compute(), reference)
    assert len(count) == 1  # computing the graph registers nothing again
    assert len(ran) == 1


def test_streamed_into_arrays(moved, reference, count, ran):
    from napari_edof.core.plan import plan_fusion
    from napari_edof.core.stream import store_plan_iter

    pl = plan_fusion(moved, **OPTS)
    T, (Y, X) = pl.stack.n_times, pl.stack.yx_shape
    out = {"fused": np.zeros((T, Y, X, 1), moved.dtype), "index": np.zeros((T, Y, X), np.float32),
           "confidence": np.zeros((T, Y, X), np.float32)}
    r = drain(store_plan_iter(pl, out, budget=1))
    assert len(count) == 1
    assert ran == [("StripeRows", "StoreSink", "InProcess")]
    _check(r, reference)


def test_streamed_into_zarr(moved, reference, count, ran, tmp_path):
    """The issue's case: it registered twice, and the second crop did not fit the outputs."""
    from napari_edof.io.zarr_io import fuse_to_zarr_iter

    r, files = drain(fuse_to_zarr_iter(moved, tmp_path / "out", budget=1, **OPTS))
    assert len(count) == 1
    assert ran == [("StripeRows", "StoreSink", "InProcess")]
    _check(r.compute(), reference)


def test_out_of_memory_retry_does_not_register_again(moved, count, monkeypatch):
    """The back-off re-plans from the plan's (aligned) stack."""
    from napari_edof.core import plan as P

    seen = []
    real = P.plan_fusion

    def spy(stack, **kw):
        seen.append(kw.get("register"))
        return real(stack, **kw)

    monkeypatch.setattr(P, "plan_fusion", spy)
    pl = real(moved, **OPTS)
    assert len(count) == 1
    small = pl.replan(16)
    assert small.stack is pl.stack and seen == [None] and len(count) == 1


def _tif(tmp_path, moved):
    p = tmp_path / "moved.tif"
    tifffile.imwrite(p, moved)
    return p


@pytest.mark.parametrize("fmt", ["tiff", "zarr", "tiled-tiff"])
def test_cli(moved, reference, count, ran, tmp_path, fmt, capsys):
    from napari_edof.cli import main

    src = _tif(tmp_path, moved)
    out = tmp_path / fmt
    assert main(["fuse", str(src), "-o", str(out), "-m", "focus-select", "--tile", "32", "--register",
                 "translation", "--register-edges", "crop", "--format", fmt]) == 0
    assert len(count) == 1
    assert len(ran) == 1 and ran[0][2] == "InProcess"
    assert "registered moved.tif (translation): largest shift" in capsys.readouterr().err
    if fmt == "tiff":
        np.testing.assert_array_equal(tifffile.imread(out / "fused.tif"), reference.fused)



@pytest.fixture(scope="module")
def client():
    d = pytest.importorskip("distributed")
    with d.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                        host="127.0.0.1") as cl, d.Client(cl, set_as_default=False) as c:
        yield c


def test_cluster(moved, reference, count, ran, client, tmp_path):
    from napari_edof.cluster import fuse_many_iter, fuse_many_to_zarr_iter

    (r,) = drain(fuse_many_iter([moved], client, budget=1, **OPTS))
    assert len(count) == 1
    assert ran == [("DaskRows", "TaskSink", "DaskTasks")]  # the graph the cluster runs
    _check(r, reference)
    ((r, _),) = drain(fuse_many_to_zarr_iter([(ne.api.as_stack(moved), tmp_path / "z")], client, budget=1, **OPTS))
    assert len(count) == 2
    assert ran == [("DaskRows", "TaskSink", "DaskTasks")] * 2
    _check(r.compute(), reference)


def test_cli_on_a_cluster(moved, reference, count, ran, tmp_path, capsys):
    pytest.importorskip("distributed")
    from napari_edof.cli import main

    src = _tif(tmp_path, moved)
    assert main(["fuse", str(src), "-o", str(tmp_path / "c"), "-m", "focus-select", "--tile", "32", "--register",
                 "translation", "--workers", "1", "-q"]) == 0
    assert len(count) == 1
    assert ran == [("DaskRows", "TaskSink", "DaskTasks")]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c" / "fused.tif"), reference.fused)
