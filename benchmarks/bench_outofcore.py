"""Out-of-core fusion: disk to disk (zarr in, OME-Zarr out) with bounded memory (not a test).

    .venv/bin/python benchmarks/bench_outofcore.py --where /tmp/edof-bench [--sizes 4,26] [--keep]

For each size (GiB of uint16 input, 16 planes), a synthetic stack is written to disk as an
uncompressed zarr array (a 16 x 2048 x 2048 layered-defocus block of scikit-image photographs,
tiled over the plane with a different offset per block), then fused by ``napari-edof fuse
--format zarr`` logic (``fuse_to_zarr_iter``) in a fresh child process whose peak RSS (VmHWM)
is read at the end; the best of ``--repeat`` runs counts. The in-memory figure for the same
method is the same stack loaded into memory and fused with ``napari_edof.fuse`` in another child
(best of 2 inside each child, best of the children), when input and outputs fit in half the
RAM; streamed and in-memory children take turns, after ``os.sync()`` so that no writeback of
the stack just written or of earlier outputs runs during a measurement; a stack that does not fit is compared
with the largest in-memory figure of the run. A 16 x 4096 x 4096 in-memory figure is printed
for reference (smaller stacks run faster per voxel in memory). Free disk space is checked
first; the stacks are deleted afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BLOCK = 2048


def vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def block() -> np.ndarray:
    from napari_edof.data.synthetic import sample_stack

    return sample_stack(n_planes=16, shape=(BLOCK, BLOCK), seed=0, scene="photo").stack.data


def make_zarr(path: Path, Y: int, X: int) -> float:
    import zarr

    b = block()
    z = zarr.create_array(store=str(path), shape=(16, Y, X), chunks=(1, 512, 4096), dtype=np.uint16,
                          compressors=None, fill_value=0, overwrite=True)
    t = time.perf_counter()
    for y0 in range(0, Y, BLOCK):
        rows = min(BLOCK, Y - y0)
        band = np.empty((16, rows, X), np.uint16)
        for k, x0 in enumerate(range(0, X, BLOCK)):
            cols = min(BLOCK, X - x0)
            shift = (y0 // BLOCK * 7 + k * 13) % 16 * 64
            band[:, :, x0:x0 + cols] = np.roll(b, shift, axis=2)[:, :rows, :cols]
        z[:, y0:y0 + rows] = band
    return time.perf_counter() - t


def child_stream(src: str, out: str, method: str) -> dict:
    from napari_edof import open_stack
    from napari_edof.io.zarr_io import fuse_to_zarr_iter

    st = open_stack(src)
    base = vmhwm_mb()
    t = time.perf_counter()
    gen = fuse_to_zarr_iter(st, out, method=method)
    while True:
        try:
            next(gen)
        except StopIteration as e:
            res, files = e.value
            break
    s = time.perf_counter() - t
    vox = float(np.prod(st.shape))
    return {"seconds": s, "mvoxel_per_s": vox / 1e6 / s, "peak_rss_mb": vmhwm_mb(), "base_rss_mb": base,
            "input_gib": st.nbytes / 2**30}


def child_memory(method: str, src: str | None = None) -> dict:
    import napari_edof as ne

    if src:  # the streamed stack itself, loaded into memory
        import zarr

        a = np.ascontiguousarray(zarr.open_array(src, mode="r")[...])
    else:
        a = np.concatenate([np.concatenate([block()] * 2, axis=2)] * 2, axis=1)  # 16 x 4096 x 4096
    ne.fuse(a[:, :256, :256], method=method)  # warm imports
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        ne.fuse(a, method=method)
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "mvoxel_per_s": a.size / 1e6 / best, "input_gib": a.nbytes / 2**30}


def run_child(args: list[str]) -> dict:
    os.sync()  # no writeback of earlier files (the stack just written, earlier outputs) during the run
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--where", default="/tmp/edof-bench")
    ap.add_argument("--sizes", default="4,26", help="GiB of input per stack, comma-separated")
    ap.add_argument("--method", default="focus-select")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="streamed runs per stack (the best counts)")
    ap.add_argument("--width", type=int, default=None,
                    help="image width (default: 8192 up to 8 GiB, 26624 above)")
    ap.add_argument("--child", default=None)
    ap.add_argument("--src")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child == "stream":
        print(json.dumps(child_stream(a.src, a.out, a.method)))
        return
    if a.child == "memory":
        print(json.dumps(child_memory(a.method, a.src)))
        return

    where = Path(a.where)
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free / 2**30
    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) / 2**20
    print(f"# out-of-core benchmark, {a.method}: disk free at {where}: {free:.0f} GiB, RAM {ram:.1f} GiB")
    mem = run_child(["--child", "memory", "--method", a.method])
    print(f"in memory, 16x4096x4096 uint16 ({mem.get('input_gib', 0):.2f} GiB): "
          f"{mem.get('mvoxel_per_s', float('nan')):.1f} Mvoxel/s {mem.get('error', '')}")
    print("(each stack is also fused in memory when it fits, input and outputs within half the RAM;"
          " otherwise the ratio is to the largest in-memory figure of this run)")
    print()
    print("| input | on disk | write s | fuse s | Mvoxel/s | in memory, same stack | vs in memory | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    largest = None
    for gib in [float(s) for s in a.sizes.split(",")]:
        X = a.width or (8192 if gib <= 8 else 26624)
        Y = int(round(gib * 2**30 / (16 * 2 * X) / 256)) * 256
        need = 16 * Y * X * 2 / 2**30 * 1.4 + 1
        if shutil.disk_usage(where).free / 2**30 < need:
            print(f"| 16x{Y}x{X} | skipped: needs {need:.0f} GiB of free disk | | | | | |")
            continue
        src, out = where / f"in-{gib:g}.zarr", where / f"out-{gib:g}"
        wt = make_zarr(src, Y, X)
        in_gib = 16 * Y * X * 2 / 2**30
        fits = in_gib * (1 + 1 + 4 / 16 * 2 + 2 / 16) < ram / 2  # input, its copy in the child, outputs
        runs, mems = [], []
        for _ in range(max(1, a.repeat)):  # streamed and in-memory runs take turns
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_child(["--child", "stream", "--src", str(src), "--out", str(out), "--method", a.method]))
            if fits:
                mems.append(run_child(["--child", "memory", "--method", a.method, "--src", str(src)]))
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"| 16x{Y}x{X} | error: {runs[0]['error']} | | | | | | |")
        else:
            r = max(ok, key=lambda r: r["mvoxel_per_s"])
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in ok)
            same = "does not fit"
            mems = [m for m in mems if "mvoxel_per_s" in m]
            if mems:
                largest = max(mems, key=lambda m: m["mvoxel_per_s"])
                same = f"{largest['mvoxel_per_s']:.1f}"
            ref = largest or mem
            ratio = r["mvoxel_per_s"] / ref["mvoxel_per_s"] if "mvoxel_per_s" in ref else float("nan")
            print(f"| 16x{Y}x{X} uint16 | {r['input_gib']:.1f} GiB | {wt:.0f} | {r['seconds']:.1f} | "
                  f"{r['mvoxel_per_s']:.1f} | {same} | {ratio:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
        if not a.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
