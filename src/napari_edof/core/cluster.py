"""Fusion on a dask.distributed cluster: many stacks (or time points) across workers.

(Beside the run function: the cluster runs the lazy graph of :mod:`napari_edof.core.stream`,
which :func:`napari_edof.core.run.run_frames` builds with the dask schedule, one task per stripe;
``napari_edof.cluster`` is this module under its older name.)

The lazy graph of :func:`napari_edof.core.stream.fuse_lazy` (one task per stripe of tiles and
time point) runs on any dask scheduler; this module adds what batch work needs around it:

* :func:`connect` gives a client: to a running scheduler (``"tcp://host:8786"``, e.g. started by
  dask-jobqueue on SLURM or by dask-kubernetes), or to a new :class:`distributed.LocalCluster`
  of ``workers`` processes on this machine (one thread each: the stripes are the parallelism).
* :func:`fuse_many_iter` submits several stacks at once and yields one :class:`Progress` stream
  over all their stripes as they finish; it returns numpy results identical to a single-process
  run. Closing it (Cancel, Ctrl-C) cancels what has not run yet.

``distributed`` is an optional dependency (``pip install napari-edof[distributed]``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

from .errors import EdofError
from .result import FusionResult, Progress

_LOCAL: dict = {}


def _distributed():
    try:
        import distributed
    except ImportError:
        raise EdofError("running on a dask cluster needs the 'distributed' package: "
                        "pip install 'napari-edof[distributed]'") from None
    return distributed


def check_address(scheduler) -> str:
    """``scheduler`` if it reads as a dask scheduler address (``tcp://host:8786``, ``host:8786``,
    ``tls://...``); an EdofError saying what is wrong otherwise (checked before anything runs)."""
    _distributed()  # a clear error when it is not installed
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    text = str(scheduler).strip()
    try:
        scheme, loc = parse_address(text)
        get_backend(scheme)  # "unknown address scheme 'http' (known schemes: ...)"
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(loc)
            if not host or not 0 < int(port) < 65536:
                raise ValueError(f"port {port} is not 1..65535" if host else "no host")
    except (ValueError, TypeError) as e:
        raise EdofError(f"--scheduler {scheduler!r} is not a dask scheduler address such as tcp://host:8786 "
                        f"({e})") from None
    return text


def _local_cluster(distributed, workers, threads_per_worker: int = 1):
    """A LocalCluster of ``workers`` processes; one stopped half-way (Ctrl-C while its workers
    start) is closed here, quietly, not at exit with an AssertionError traceback. (The CLI's
    worker processes ignore Ctrl-C: see napari_edof._spawned_cli_worker.)"""
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    try:
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                        processes=True, dashboard_address=None, host="127.0.0.1",
                                        # the workers' own logs: not their CommClosedError noise when a run ends or
                                        # is stopped (a task's error still reaches the client and is raised there)
                                        silence_logs=logging.CRITICAL)
    except BaseException:
        for c in set(SpecCluster._instances) - before:
            _close_quietly(c, stay_quiet=True)
            SpecCluster._instances.discard(c)
        raise


def _close_quietly(*things, stay_quiet: bool = False) -> None:
    """Close clients and clusters without the CommClosedError / "stream is closed" log noise
    distributed prints while its connections go down (the work is done or cancelled by then).
    ``stay_quiet`` (a run stopped by Ctrl-C or SIGTERM, the process about to exit): its loggers
    stay silent afterwards too, for what its threads still report about the workers stopped."""
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        for t in things:
            if t is not None:
                try:
                    t.close()
                except Exception:  # a cluster already half down (e.g. after Ctrl-C)
                    pass
    finally:
        if not stay_quiet:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, *, threads_per_worker: int = 1):
    """A dask.distributed client for the duration of the block.

    ``scheduler``: the address of a running scheduler; else a local cluster of ``workers``
    processes (default: one per core) that is shut down afterwards.
    """
    distributed = _distributed()
    if scheduler:
        address = check_address(scheduler)
        try:
            client = distributed.Client(address, timeout="5s")
        except (OSError, TimeoutError, ValueError) as e:
            raise EdofError(f"cannot reach the dask scheduler at {scheduler}: {e}") from None
        stopped = False
        try:
            yield client
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM
            stopped = True
            raise
        finally:
            _close_quietly(client, stay_quiet=stopped)
        return
    cluster = client = None
    stopped = False
    try:
        cluster = _local_cluster(distributed, workers, threads_per_worker)
        client = distributed.Client(cluster)
        yield client
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        stopped = True
        raise
    finally:
        _close_quietly(client, cluster, stay_quiet=stopped)


def local_client(workers: int | None = None):
    """A local cluster kept for the session (napari's widget reuses it between runs)."""
    distributed = _distributed()
    key = workers
    c = _LOCAL.get(key)
    if c is None or c.status not in ("running", "connecting"):
        cluster = _local_cluster(distributed, workers)
        c = distributed.Client(cluster, set_as_default=False)
        if not _LOCAL:
            import atexit

            atexit.register(close_local_clients)
        _LOCAL[key] = c
    return c


def close_local_clients() -> None:
    for c in list(_LOCAL.values()):
        _close_quietly(c, c.cluster)
    _LOCAL.clear()


def fuse_many_iter(stacks: Iterable, client, **options):
    """Fuse every stack on ``client``'s cluster; yields :class:`Progress` per finished block
    (three per stripe and time point: fused, index and confidence; five with the audit).

    ``options`` are :func:`napari_edof.fuse`'s (checked for every stack before anything is
    submitted). Returns the list of :class:`FusionResult` (numpy arrays), in the stacks' order.
    """
    distributed = _distributed()
    from .stream import fuse_lazy

    t0 = time.perf_counter()
    lazies = [fuse_lazy(st, **options) for st in stacks]
    parts = [(r.fused, r.index, r.confidence) + ((r.audit, r.audit_mask) if r.audit is not None else ())
             for r in lazies]
    arrays = [a for p in parts for a in p]
    persisted = client.persist(arrays)
    futures = distributed.futures_of(persisted)
    total = len(futures)
    done = 0
    try:
        for _ in distributed.as_completed(futures, loop=client.loop):
            done += 1
            yield Progress(done, total, "cluster", 0)
        values = client.gather(client.compute(persisted))
    except BaseException:
        client.cancel(futures)
        raise
    seconds = time.perf_counter() - t0
    voxels = sum(float(np.prod(np.shape(r.index))) * r.n_planes for r in lazies)
    out = []
    at = 0
    for r, p in zip(lazies, parts):
        f, ix, cf, *aud = values[at: at + len(p)]
        at += len(p)
        prov = dict(r.provenance)
        prov.pop("lazy", None)
        prov["scheduler"] = client.scheduler.address if client.scheduler is not None else None
        prov["seconds"] = seconds  # the whole batch's wall time
        prov["mvoxel_per_s"] = voxels / 1e6 / max(seconds, 1e-9)  # the whole batch's throughput
        if aud:
            from .audit import audit_summary

            prov["audit"] = audit_summary(*aud)
        out.append(FusionResult(fused=f, index=ix, confidence=cf, n_planes=r.n_planes, provenance=prov,
                                pixel_size=r.pixel_size, z_step=r.z_step, unit=r.unit, rgb=r.rgb,
                                audit=aud[0] if aud else None, audit_mask=aud[1] if aud else None))
    return out


def fuse_many_to_zarr_iter(jobs: Iterable, client, **options):
    """Fuse every ``(stack, outdir)`` of ``jobs`` on ``client``'s cluster into OME-Zarr images in
    ``outdir`` (as :func:`napari_edof.io.zarr_io.fuse_to_zarr_iter` writes them); yields
    :class:`Progress` per stripe written.

    The workers write their own stripes straight into the images (a task per stripe and time
    point fuses it and stores its three outputs), so nothing is gathered to the client and no
    worker assembles a whole image: memory stays a few stripes per worker whatever the stacks'
    size. The output folders must be reachable from the workers under the same paths (always
    true for a local cluster; on a real cluster, a shared file system). Images are committed
    when every stripe is written; a failed or cancelled run removes the partial images and
    leaves earlier results as they were. Returns ``[(result, files)]`` in the jobs' order, the
    results' arrays dask arrays over the written images.
    """
    distributed = _distributed()
    import dask

    from ..io.zarr_io import committed_arrays, create_outputs
    from .plan import STRIPE_BUDGET
    from .run import make_result, provenance
    from .stream import _impl, _store_task, stripe_tasks

    options = dict(options)
    budget = int(options.pop("budget", STRIPE_BUDGET))
    t0 = time.perf_counter()
    planned, stores, futures = [], [], []
    try:
        for st, outdir in jobs:
            pl, stripes, tasks = stripe_tasks(st, budget=budget, **options)
            s = pl.stack
            outs = create_outputs(outdir, shape_tyx=(s.n_times,) + tuple(s.yx_shape), channels=s.n_channels,
                                  dtype=s.dtype, axes=s.axes, rows_per_chunk=max(x.s1 - x.s0 for x in stripes),
                                  pixel_size=s.pixel_size, z_step=s.z_step, unit=s.unit, name=s.name,
                                  sources=s.source)
            planned.append((pl, stripes, outs))
            stores += [dask.delayed(_store_task, pure=False)(part, outs.arrays, t, x.s0, x.s1)
                       for t, x, part in tasks]
        futures = client.compute(stores)
        for i, f in enumerate(distributed.as_completed(futures, loop=client.loop), 1):
            f.result()  # a failed stripe raises here
            yield Progress(i, len(futures), "cluster", 0)
    except BaseException:
        if futures:
            client.cancel(futures)
        for _, _, outs in planned:
            outs.abort()
        raise
    seconds = time.perf_counter() - t0
    voxels = sum(float(np.prod(pl.stack.shape)) for pl, _, _ in planned)
    done = []
    for pl, stripes, outs in planned:
        prov = provenance(pl, seconds, _impl(pl))
        prov.update(stripes=len(stripes), mvoxel_per_s=voxels / 1e6 / max(seconds, 1e-9),  # the whole batch's
                    scheduler=client.scheduler.address if client.scheduler is not None else None)
        files = outs.commit(prov)
        res = make_result(pl, *committed_arrays(outs, files), seconds, _impl(pl))
        res.provenance.update(prov, output={k: str(v) for k, v in files.items()})
        done.append((res, files))
    return done


__all__ = ["close_local_clients", "connect", "fuse_many_iter", "fuse_many_to_zarr_iter", "local_client"]
