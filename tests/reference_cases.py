"""Reference outputs: every method that runs offline, on every run path, bit for bit.

The cases (small stacks x methods x parameters) and the run paths (in memory, streamed into
numpy arrays and into OME-Zarr, lazy dask, and a dask.distributed cluster) are defined here once,
for the generator (``python tests/data/make_reference.py``, which saved
``tests/data/reference_outputs.npz`` from the code before the execution core was rewritten, see
issue 15) and for ``tests/test_reference_outputs.py``, which compares today's code against it.

What is saved: the in-memory outputs in full (for a readable diff when a test fails) and a
sha256 of the outputs of every (case, path), with a fingerprint of the platform (numpy, scipy,
torch, CPU): floating-point results are only bit-identical on the same libraries and CPU, so on
another platform the hashes are not compared (the test says so) and the in-memory arrays are
compared within a tolerance.

``focus-fuse`` is not saved (it is being changed on main): its paths are compared with each other.
"""
from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "reference_outputs.npz"
SHARED_WEIGHTS = HERE.parents[1] / "shared" / "weights"

#: methods whose outputs change on main at the moment: compared across paths only
PATHS_ONLY = ("focus-fuse",)

#: one byte of stripe budget: every row of tiles is a stripe of its own (the most stitching)
BUDGET = 1


def stacks() -> dict:
    """The small input stacks (deterministic)."""
    import napari_edof as ne

    grey = ne.sample_stack(n_planes=5, shape=(64, 72), seed=1).stack.data
    rgb = ne.sample_stack(n_planes=4, shape=(48, 40), rgb=True, dtype=np.uint8, seed=2).stack.data
    f32 = ne.sample_stack(n_planes=4, shape=(40, 48), dtype=np.float32, seed=3).stack.data
    movie = np.stack([ne.sample_stack(n_planes=4, shape=(40, 40), seed=s).stack.data for s in (4, 5)])
    # planes that moved by fractions of pixels: a 5 x 96 x 96 stack registered by translation (on
    # the streamed zarr path it was registered twice, and the second crop failed: issue 15)
    from scipy import ndimage as ndi

    base = ne.sample_stack(n_planes=5, shape=(96, 96), seed=6).stack.data
    moved = np.stack([np.clip(ndi.shift(p.astype(np.float32), ((k - 2) * 1.7, (2 - k) * 1.3), order=3,
                                        mode="nearest"), 0, 65535).astype(p.dtype) for k, p in enumerate(base)])
    return {"grey": (grey, None), "rgb": (rgb, None), "f32": (f32, None), "movie": (movie, "TZYX"),
            "moved": (moved, None)}


#: StackMFF-V2's defaults when the reference outputs were saved (issue 18 changed the default
#: composition; this option gives the saved results, so the reference stands without being rewritten)
OLD_STACKMFF_V2 = {"compose": "select"}


def _method_cases() -> list[tuple[str, str, str, dict]]:
    """(case name, stack, method, options) for every method and a few parameter sets."""
    import napari_edof as ne

    out = []
    for spec in ne.list_methods():
        m = spec.name
        learned = spec.family == "learned"
        tile = 48 if learned else 32
        opts = {"tile": tile}
        if m == "stackmff-v2":  # the reference was saved with the defaults before 2026-12-07 (issue 18)
            opts["params"] = dict(OLD_STACKMFF_V2)
        if m in ("msas", "ctmfusion"):  # saved before their index was composed (2026-12-07, issue 18)
            opts["params"] = {"compose": "select"}
        if m == "fmb-fn":  # saved when its default output was the network's image (before 2026-12-07, issue 18)
            opts["params"] = {"output": "network"}
        out.append((f"{m}/grey", "grey", m, opts))
        if not learned:
            out.append((f"{m}/rgb", "rgb", m, {"tile": 32}))
            out.append((f"{m}/f32", "f32", m, {"tile": 32}))
            out.append((f"{m}/movie", "movie", m, {"tile": 32}))
    # first passes (whole-image statistics)
    out.append(("focus-select/grey/lowtexture", "grey", "focus-select",
                {"tile": 32, "params": {"lowtexture": "blend"}}))
    out.append(("focus-select/movie/lowtexture", "movie", "focus-select",
                {"tile": 32, "params": {"lowtexture": "mask"}}))
    out.append(("fmb-fn/grey/dtype", "grey", "fmb-fn",
                {"tile": 48, "params": {"normalise": "dtype", "output": "network"}}))
    out.append(("stackmff-v2/grey/official", "grey", "stackmff-v2",
                {"tile": 48, "params": {"rule": "official", **OLD_STACKMFF_V2}}))
    out.append(("stackmff-v2/grey/matched", "grey", "stackmff-v2",
                {"tile": 48, "params": {"rule": "matched", **OLD_STACKMFF_V2}}))
    out.append(("pyramid/grey/overlap", "grey", "pyramid", {"tile": 32, "overlap": 8}))
    # registration on
    out.append(("focus-select/moved/register", "moved", "focus-select", {"tile": 32, "register": "translation"}))
    out.append(("focus-fuse/moved/register", "moved", "focus-fuse", {"tile": 32, "register": "translation"}))
    return out


def cases() -> list[tuple[str, str, str, dict]]:
    return [c for c in _method_cases()]


def runnable(method: str) -> str | None:
    """Why ``method`` cannot run here (None: it can): torch missing, weights not in ../shared."""
    from napari_edof.methods._registry import get_method

    spec, _ = get_method(method)
    if spec.backend == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed"
    if spec.weights is not None and spec.weights.urls:
        for f in (spec.weights.filename, "taef2_encoder.pth", "taef2_decoder.pth") if method == "vaeedof" else (
                spec.weights.filename,):
            if not (SHARED_WEIGHTS / f).is_file():
                return f"weights {f} not found in {SHARED_WEIGHTS}"
    return None


def offline_weights():
    """Learned methods read their weights from ../shared/weights and never download (as the tests)."""
    from napari_edof.nn import weights as W

    os.environ[W.ENV] = str(SHARED_WEIGHTS)

    def _no_download(*a, **k):
        raise RuntimeError("reference runs must not download")

    W._download = _no_download


def fingerprint() -> str:
    """Libraries and CPU: bit-identical floats are only expected where this is the same."""
    import scipy

    parts = [platform.machine(), f"numpy {np.__version__}", f"scipy {scipy.__version__}"]
    try:
        import torch

        parts += [f"torch {torch.__version__}", f"cpu {torch.backends.cpu.get_cpu_capability()}"]
    except ImportError:
        parts.append("no torch")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        have = set(flags.split(":", 1)[1].split())
        parts.append("flags " + ",".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni") if f in have))
    except (OSError, StopIteration):
        pass
    return "; ".join(parts)


def digest(fused, index, conf) -> str:
    h = hashlib.sha256()
    for a in (fused, index, conf):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _arrays(r):
    return np.asarray(r.fused), np.asarray(r.index), np.asarray(r.confidence)


# ------------------------------------------------------------------------------------------------
# the run paths: each returns (fused, index, confidence) as numpy in the stack's own axes
# ------------------------------------------------------------------------------------------------
def run_memory(data, axes, opts):
    import napari_edof as ne

    return _arrays(ne.fuse(data, axes=axes, lazy=False, **opts))


def run_store(data, axes, opts):
    from napari_edof.core.result import to_stack_axes
    from napari_edof.core.stack import as_stack
    from napari_edof.core.stream import fuse_to_store_iter

    st = as_stack(data, axes=axes)
    reg = opts.get("register")
    if reg:  # the output arrays have the registered (cropped) stack's shape
        from napari_edof.core.registration import parse_register, register_stack

        st, _ = register_stack(st, **parse_register(reg))
        opts = {k: v for k, v in opts.items() if k != "register"}
    T, (Y, X), C = st.n_times, st.yx_shape, st.n_channels
    out = {"fused": np.zeros((T, Y, X, C), st.dtype), "index": np.zeros((T, Y, X), np.float32),
           "confidence": np.zeros((T, Y, X), np.float32)}
    gen = fuse_to_store_iter(st, out, budget=BUDGET, **opts)
    from napari_edof.core.engine import drain

    drain(gen)
    return to_stack_axes(st.axes, out["fused"], out["index"], out["confidence"])


def run_zarr(data, axes, opts):
    from napari_edof.core.engine import drain
    from napari_edof.core.stack import as_stack
    from napari_edof.io.zarr_io import fuse_to_zarr_iter

    with tempfile.TemporaryDirectory() as d:
        r, _ = drain(fuse_to_zarr_iter(as_stack(data, axes=axes), Path(d) / "out", budget=BUDGET, **opts))
        return tuple(np.asarray(a) for a in (r.fused.compute(), r.index.compute(), r.confidence.compute()))


def run_lazy(data, axes, opts):
    import dask.array as da

    import napari_edof as ne

    y = data.ndim - (3 if axes is None and data.shape[-1] in (3, 4) else 2)  # (Z, Y, X[, C]) or (T, Z, Y, X)
    lazy = da.from_array(data, chunks=(1,) * y + (16,) + (-1,) * (data.ndim - y - 1))
    r = ne.fuse(lazy, axes=axes, budget=BUDGET, **opts)
    assert r.provenance.get("lazy"), "not a lazy run"
    return _arrays(r.compute())


_CLIENT = None


def cluster_client():
    """A local cluster of two single-threaded worker processes (kept for the session)."""
    global _CLIENT
    if _CLIENT is None:
        import distributed

        cl = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      host="127.0.0.1", env={"NAPARI_EDOF_WEIGHTS": str(SHARED_WEIGHTS)})
        _CLIENT = distributed.Client(cl, set_as_default=False)
    return _CLIENT


def close_cluster():
    global _CLIENT
    if _CLIENT is not None:
        cl = _CLIENT.cluster
        _CLIENT.close()
        cl.close()
        _CLIENT = None


def run_cluster(data, axes, opts):
    from napari_edof.cluster import fuse_many_iter
    from napari_edof.core.engine import drain
    from napari_edof.core.stack import as_stack

    (r,) = drain(fuse_many_iter([as_stack(data, axes=axes)], cluster_client(), budget=BUDGET, **opts))
    return _arrays(r)


def run_cluster_zarr(data, axes, opts):
    from napari_edof.cluster import fuse_many_to_zarr_iter
    from napari_edof.core.engine import drain
    from napari_edof.core.stack import as_stack

    with tempfile.TemporaryDirectory() as d:
        ((r, _),) = drain(fuse_many_to_zarr_iter([(as_stack(data, axes=axes), Path(d) / "out")], cluster_client(),
                                                 budget=BUDGET, **opts))
        return tuple(np.asarray(a) for a in (r.fused.compute(), r.index.compute(), r.confidence.compute()))


PATHS = {"memory": run_memory, "store": run_store, "zarr": run_zarr, "lazy": run_lazy, "cluster": run_cluster,
         "cluster-zarr": run_cluster_zarr}

#: (case, path) pairs today's code cannot run (the bug issue 15 names): no saved reference
KNOWN_BROKEN = {("focus-select/moved/register", "zarr"), ("focus-fuse/moved/register", "zarr")}


def has_distributed() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def setup_torch():
    """One torch thread (the same as in the cluster's workers), for repeatable timings."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
