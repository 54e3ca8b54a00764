"""How cost grows: every registered method against planes, image size and tile size, in memory
vs out of core, 1 vs N local dask workers (not part of the test run).

    .venv/bin/python benchmarks/bench_suite.py [--methods focus-select,pyramid] [--limit 60]
        [--planes 4,8,16,32,64] [--sizes 512,1024,2048,4096,8192] [--tiles 128,256,512,1024]
        [--workers 1,2]

Every figure comes from a fresh child process (peak RSS is that process's VmHWM, reset after the
input is made, above its RSS with the input loaded; the cluster rows count the driver only) on a synthetic uint16 stack (layered defocus of scikit-image photographs,
as in bench_classical.py). "floor x" is the run's time over one numpy pass (``a.max(axis=0)``)
over the same array in the same process. Configurations whose predicted time (from the method's
speed on the first configuration) exceeds ``--limit`` seconds are skipped and say so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def make(planes: int, size: int) -> np.ndarray:
    from napari_edof.data.synthetic import sample_stack

    b = min(size, 2048)
    blk = sample_stack(n_planes=planes, shape=(b, b), seed=0, scene="photo").stack.data
    reps = -(-size // b)
    return np.tile(blk, (1, reps, reps))[:, :size, :size].copy()


def child(cfg: dict) -> dict:
    import napari_edof as ne

    a = make(cfg["planes"], cfg["size"])
    small = np.ascontiguousarray(a[:, :64, :64])
    ne.fuse(small, method=cfg["method"])  # warm imports and weights
    reset_peak()  # the stack's synthesis is not the method's memory
    base = status_mb("VmRSS")
    t = time.perf_counter()
    a.max(axis=0)
    floor = time.perf_counter() - t
    mode = cfg.get("mode", "memory")
    t = time.perf_counter()
    if mode == "memory":
        ne.fuse(a, method=cfg["method"], tile=cfg.get("tile", "auto"))
    elif mode == "zarr":
        import zarr

        from napari_edof.io.zarr_io import fuse_to_zarr_iter

        with tempfile.TemporaryDirectory() as d:
            z = zarr.create_array(store=f"{d}/in.zarr", shape=a.shape, chunks=(1, 512, 4096), dtype=a.dtype,
                                  compressors=None)
            z[...] = a
            del a
            st = ne.open_stack(f"{d}/in.zarr")
            reset_peak()
            base = status_mb("VmRSS")
            t = time.perf_counter()
            gen = fuse_to_zarr_iter(st, f"{d}/out", method=cfg["method"])
            while True:
                try:
                    next(gen)
                except StopIteration:
                    break
            a = np.empty(st.shape, np.uint8)  # only its size is used below
    elif mode == "cluster":  # the workers read the stack from disk (zarr), as on a real cluster
        import zarr

        from napari_edof.cluster import connect, fuse_many_iter

        with tempfile.TemporaryDirectory() as d, connect(workers=cfg["workers"]) as client:
            z = zarr.create_array(store=f"{d}/in.zarr", shape=a.shape, chunks=(1, 512, 4096), dtype=a.dtype,
                                  compressors=None)
            z[...] = a
            st = ne.open_stack(f"{d}/in.zarr")
            # warm the workers (imports, weights) on a small stack: a batch pays this once
            for _ in fuse_many_iter([small[:, ::-1].copy()] * cfg["workers"], client, method=cfg["method"]):
                pass
            t = time.perf_counter()
            gen = fuse_many_iter([st], client, method=cfg["method"])
            while True:
                try:
                    next(gen)
                except StopIteration:
                    break
    seconds = time.perf_counter() - t
    vox = float(np.prod(a.shape))
    return {"seconds": seconds, "mvoxel_per_s": vox / 1e6 / seconds, "floor_x": seconds / floor,
            "peak_mb": status_mb("VmHWM") - base, "input_mb": vox * 2 / 2**20}


def run(cfg: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, r: dict) -> str:
    if "error" in r:
        return f"| {label} | {r['error']} | | | |"
    if "skipped" in r:
        return f"| {label} | skipped: {r['skipped']} | | | |"
    return (f"| {label} | {r['mvoxel_per_s']:.1f} | {r['seconds']:.2f} | {r['floor_x']:.0f} | "
            f"{r['peak_mb']:.0f} MB ({r['peak_mb'] / r['input_mb']:.2f} x input) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--methods", default=None)
    ap.add_argument("--limit", type=float, default=60.0)
    ap.add_argument("--planes", default="4,8,16,32,64")
    ap.add_argument("--sizes", default="512,1024,2048,4096,8192")
    ap.add_argument("--tiles", default="128,256,512,1024")
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    import napari_edof as ne

    methods = a.methods.split(",") if a.methods else [s.name for s in ne.list_methods()]
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    head = "| {} | Mvoxel/s | s | floor x | extra peak |\n|---|---|---|---|---|"
    print(f"# napari-edof benchmark suite ({time.strftime('%Y-%m-%d %H:%M')}), uint16 synthetic stacks")
    for m in methods:
        print(f"\n## {m}\n")
        probe = run({"method": m, "planes": 8, "size": 512})
        speed = probe.get("mvoxel_per_s", 0) or 1e-3

        def go(cfg):
            vox = cfg["planes"] * cfg["size"] ** 2 / 1e6
            if vox / speed > a.limit:
                return {"skipped": f"~{vox / speed:.0f} s predicted (> {a.limit:g} s)"}
            return run({"method": m, **cfg})

        print(head.format("planes (1024 x 1024)"))
        for z in ints(a.planes):
            print(row(str(z), go({"planes": z, "size": 1024})), flush=True)
        print("\n" + head.format("size (16 planes)"))
        for s in ints(a.sizes):
            print(row(f"{s} x {s}", go({"planes": 16, "size": s})), flush=True)
        print("\n" + head.format("tile (16 x 2048 x 2048)"))
        for t in ints(a.tiles):
            print(row(str(t), go({"planes": 16, "size": 2048, "tile": t})), flush=True)
        print("\n" + head.format("where (16 x 4096 x 4096)"))
        print(row("in memory", go({"planes": 16, "size": 4096})), flush=True)
        print(row("out of core (zarr to zarr)", go({"planes": 16, "size": 4096, "mode": "zarr"})), flush=True)
        print("\n" + head.format("local dask workers (16 x 2048 x 2048, lazy)"))
        for w in ints(a.workers):
            print(row(str(w), go({"planes": 16, "size": 2048, "mode": "cluster", "workers": w})), flush=True)


if __name__ == "__main__":
    main()
