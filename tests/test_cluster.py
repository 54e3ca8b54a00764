"""dask.distributed: a LocalCluster of processes on loopback gives the single-process results."""
import numpy as np
import pytest
import tifffile

import napari_edof as ne
from napari_edof import api, cli

from .conftest import drain

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


def test_many_stacks_and_time_points_on_a_cluster(client):
    from napari_edof.cluster import fuse_many_iter

    stacks = [ne.sample_stack(n_planes=5, shape=(80, 72), seed=s).stack for s in (1, 2)]
    movie = np.stack([ne.sample_stack(n_planes=4, shape=(64, 64), seed=s).stack.data for s in (3, 4, 5)])
    jobs = stacks + [api.as_stack(movie, axes="TZYX")]
    steps, results = drain(fuse_many_iter(jobs, client, tile=32, budget=1 << 16))
    assert steps and steps[-1].done == steps[-1].total and len({s.total for s in steps}) == 1  # one bar
    refs = [ne.fuse(s, tile=32) for s in stacks] + [ne.fuse(movie, axes="TZYX", tile=32)]
    for r, ref in zip(results, refs):
        assert isinstance(r.fused, np.ndarray)
        np.testing.assert_array_equal(r.fused, ref.fused)
        np.testing.assert_array_equal(r.index, ref.index)
        np.testing.assert_array_equal(r.confidence, ref.confidence)
        assert r.provenance["scheduler"].startswith("tcp://127.0.0.1")


def test_cli_batch_on_a_scheduler_address(cluster, tmp_path, capsys):
    paths = []
    for s in (7, 8):
        p = tmp_path / f"stack{s}.tif"
        tifffile.imwrite(p, ne.sample_stack(n_planes=4, shape=(48, 40), seed=s).stack.data, photometric="minisblack")
        paths.append(str(p))
    rc = cli.main(["fuse", *paths, "--batch", "-o", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address,
                   "--tile", "32", "-q"])
    assert rc == 0
    for s, p in zip((7, 8), paths):
        got = tifffile.imread(tmp_path / "out" / f"stack{s}" / "fused.tif")
        np.testing.assert_array_equal(got, ne.fuse(tifffile.imread(p), tile=32).fused)


def test_cli_local_workers(tmp_path):
    rc = cli.main(["fuse", "--sample", "-o", str(tmp_path / "o"), "--workers", "2", "-q"])
    assert rc == 0
    got = tifffile.imread(tmp_path / "o" / "fused.tif")
    np.testing.assert_array_equal(got, ne.fuse(ne.sample_stack(n_planes=16, shape=(512, 512)).stack).fused)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["fuse", "--sample", "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9", "-q"])
    assert rc == 2
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_fuse_many_api_with_a_client(client):
    stacks = [ne.sample_stack(n_planes=3, shape=(40, 40), seed=s).stack for s in (1, 2)]
    seen = []
    results = api.fuse_many(stacks, client=client, progress=seen.append, tile=32)
    assert seen and seen[-1].done == seen[-1].total
    for r, st in zip(results, stacks):
        np.testing.assert_array_equal(r.fused, ne.fuse(st, tile=32).fused)


def test_workers_write_zarr_outputs_themselves(client, tmp_path):
    from napari_edof.cluster import fuse_many_to_zarr_iter
    from napari_edof.core import stream
    from napari_edof.core.engine import plan_fusion

    movie = np.stack([ne.sample_stack(n_planes=4, shape=(70, 56), seed=s).stack.data for s in (3, 4)])
    rgb = ne.sample_stack(n_planes=5, shape=(66, 50), seed=9, rgb=True).stack
    jobs = [(api.as_stack(movie, axes="TZYX"), tmp_path / "movie"), (rgb, tmp_path / "rgb")]
    steps, done = drain(fuse_many_to_zarr_iter(jobs, client, tile=32, budget=1 << 15))
    n_stripes = sum(len(stream.plan_stripes(plan_fusion(st, tile=32), 1 << 15)) * st.n_times for st, _ in jobs)
    assert steps[-1].done == steps[-1].total == n_stripes  # one step per stripe written by a worker
    refs = [ne.fuse(movie, axes="TZYX", tile=32), ne.fuse(rgb, tile=32)]
    for (res, _files), ref, (_, out) in zip(done, refs, jobs):
        np.testing.assert_array_equal(np.asarray(res.fused), ref.fused)
        np.testing.assert_array_equal(np.asarray(res.index), ref.index)
        np.testing.assert_array_equal(np.asarray(res.confidence), ref.confidence)
        assert sorted(p.name for p in out.iterdir()) == ["confidence.ome.zarr", "focus_index.ome.zarr",
                                                         "fused.ome.zarr", "provenance.json"]
        assert res.provenance["scheduler"].startswith("tcp://127.0.0.1")


def test_a_failing_stripe_leaves_no_partial_zarr_outputs(client, tmp_path):
    from napari_edof.cluster import fuse_many_to_zarr_iter

    bad = np.full((4, 64, 48), np.nan, np.float32)  # NaN planes: the stripe tasks raise on the workers
    with pytest.raises(Exception, match="NaN|finite|not a number"):
        drain(fuse_many_to_zarr_iter([(api.as_stack(bad), tmp_path / "out")], client, tile=32, budget=1 << 14))
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_zarr_format_on_a_scheduler_is_written_by_the_workers(cluster, tmp_path, monkeypatch):
    import zarr

    from napari_edof import cluster as cl

    monkeypatch.setattr(cl, "fuse_many_iter", None)  # the gathering path must not run for zarr outputs
    data = ne.sample_stack(n_planes=4, shape=(60, 44), seed=12).stack.data
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, data, photometric="minisblack")
    rc = cli.main(["fuse", str(p), "-o", str(tmp_path / "out"), "--format", "zarr",
                   "--scheduler", cluster.scheduler_address, "--tile", "32", "-q"])
    assert rc == 0
    got = zarr.open_group(store=str(tmp_path / "out" / "fused.ome.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(got, ne.fuse(data, tile=32).fused)


def test_the_audit_on_a_cluster_is_the_single_process_one(client):
    stacks = [ne.sample_stack(n_planes=4, shape=(48, 40), seed=s).stack for s in (1, 2)]
    results = api.fuse_many(stacks, client=client, method="pyramid", audit=True, tile=32)
    for r, st in zip(results, stacks):
        ref = ne.fuse(st, method="pyramid", audit=True, tile=32)
        assert isinstance(r.audit, np.ndarray) and ref.audit_mask.any()
        np.testing.assert_array_equal(r.audit, ref.audit)
        np.testing.assert_array_equal(r.audit_mask, ref.audit_mask)
        assert r.provenance["audit"] == ref.provenance["audit"]
    assert api.fuse_many(stacks[:1], client=client, tile=32)[0].audit is None
