"""Speed, memory and quality of the classical methods (not part of the test run).

    .venv/bin/python benchmarks/bench_classical.py [--size 2048] [--planes 16] [--repeat 2] [--methods focus-fuse,focus-fuse@numpy]

For each stack (a 16x2048x2048 uint16 synthetic stack with ground truth, made like the other
tools' benchmark in ../shared/specs/peers.md: scikit-image photographs, depth quantised into 16
bins, plane k shows bin i with a Gaussian of sigma |i - k|; and real stacks from ../shared/data)
and every classical method, each run in a fresh process: Mvoxel/s of the fusion (input already in
memory), peak RSS above the process's RSS with the input loaded (in units of the input size), PSNR
against the exact all-in-focus image where there is one, and the ratio to one streaming numpy pass
over the same array (``a.max(axis=0)``: the memory-bandwidth floor), measured in the same process.
A naive whole-plane argmax of Laplacian energy (scipy) is measured the same way as the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """High-water RSS of this process (VmHWM; ru_maxrss would include the forking parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def naive_argmax(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: whole-plane Laplacian energy, 9x9 mean, argmax, gather (numpy/scipy)."""
    from scipy import ndimage as ndi

    best = None
    idx = None
    for k in range(a.shape[0]):
        plane = a[k].astype(np.float32)
        e = ndi.laplace(plane.mean(axis=-1) if a.ndim == 4 else plane)  # RGB: on the channel mean
        e = ndi.uniform_filter(e * e, 9)
        if best is None:
            best, idx = e, np.zeros(e.shape, np.intp)
        else:
            upd = e > best
            best = np.where(upd, e, best)
            idx[upd] = k
    fused = np.take_along_axis(a, idx[None, ..., None] if a.ndim == 4 else idx[None], axis=0)[0]
    return fused, idx


def child(method: str, data: str, truth: str | None, repeat: int, tile) -> dict:
    import napari_edof as ne

    a = np.load(data, mmap_mode=None)
    axes = "ZYXC" if a.ndim == 4 else "ZYX"
    # warm up on a corner so that lazily imported libraries (scipy, pywt) are not counted as the
    # method's memory; the baseline RSS then holds the interpreter, the libraries and the input
    small = np.ascontiguousarray(a[:, :64, :64])
    if method == "naive-argmax":
        naive_argmax(small)
    else:
        ne.fuse(small, axes=axes, method=method, tile=tile)
    del small
    base_rss = rss_mb()
    t = time.perf_counter()
    a.max(axis=0)
    floor_s = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        if method == "naive-argmax":
            fused, _ = naive_argmax(a)
        else:
            r = ne.fuse(a, axes=axes, method=method, tile=tile)
            fused = r.fused
        best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    a.max(axis=0)
    floor_s = min(floor_s, time.perf_counter() - t)
    out = {
        "method": method,
        "seconds": best,
        "mvoxel_per_s": a.size / (a.shape[-1] if a.ndim == 4 else 1) / 1e6 / best,
        "floor_mvoxel_per_s": a.size / (a.shape[-1] if a.ndim == 4 else 1) / 1e6 / floor_s,
        "input_mb": a.nbytes / 2**20,
        "extra_peak_mb": peak_mb() - base_rss,
    }
    out["ratio_to_floor"] = out["floor_mvoxel_per_s"] / out["mvoxel_per_s"]
    out["peak_over_input"] = out["extra_peak_mb"] / out["input_mb"]
    if truth:
        gt = np.load(truth)
        peak = 255.0 if a.dtype == np.uint8 else 60000.0
        mse = np.mean((gt.astype(np.float64) - fused.astype(np.float64)) ** 2)
        out["psnr_db"] = float(10 * np.log10(peak**2 / mse))
    return out


def run_child(method, data, truth, repeat, tile) -> dict:
    """One method in a fresh process. ``NAME@numpy``: the method with its compiled kernels switched
    off (``NAPARI_EDOF_NUMBA=0``), to compare both paths in one run."""
    name, _, variant = method.partition("@")
    cmd = [sys.executable, __file__, "--child", name, "--data", data, "--repeat", str(repeat),
           "--tile", str(tile)]
    if truth:
        cmd += ["--truth", truth]
    env = dict(os.environ, NAPARI_EDOF_NUMBA="0") if variant == "numpy" else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), method=method)


def real_stacks():
    out = []
    dfnn = SHARED / "dfnn_lightsheet_microtubules_zstack"
    if dfnn.is_dir():
        out.append(("DFNN light-sheet, 31x800x512 uint16", str(dfnn)))
    pcb = SHARED / "focus-stack_examples" / "pcb"
    if pcb.is_dir():
        out.append(("focus-stack pcb, 7x1536x2048 RGB uint8", str(pcb / "pcb_*.jpg")))
    return out


def table(rows) -> str:
    lines = ["| method | Mvoxel/s | s | x slower than one numpy pass | extra peak / input | PSNR dB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | | | | |")
            continue
        ps = f"{r['psnr_db']:.2f}" if "psnr_db" in r else "-"
        lines.append(f"| {r['method']} | {r['mvoxel_per_s']:.1f} | {r['seconds']:.2f} | {r['ratio_to_floor']:.1f} "
                     f"| {r['peak_over_input']:.2f} ({r['extra_peak_mb']:.0f} MB / {r['input_mb']:.0f} MB) | {ps} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--data")
    ap.add_argument("--truth")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tile", default="auto")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--planes", type=int, default=16)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every classical method); "
                    "NAME@numpy runs NAME without its compiled kernels")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    tile = args.tile if args.tile == "auto" else (int(args.tile) or None)
    if args.child:
        print(json.dumps(child(args.child, args.data, args.truth, args.repeat, tile)))
        return

    import napari_edof as ne

    methods = args.methods.split(",") if args.methods else [s.name for s in ne.list_methods("classical")]
    print(f"# napari-edof {ne.__version__} classical benchmark, {os.cpu_count()} cores, "
          f"tile={args.tile}, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = ne.sample_stack(n_planes=args.planes, shape=(args.size, args.size), scene="photo", seed=0)
        data, truth = f"{tmp}/syn.npy", f"{tmp}/gt.npy"
        np.save(data, np.ascontiguousarray(s.stack.data))
        np.save(truth, s.all_in_focus)
        print(f"\n## synthetic {args.planes}x{args.size}x{args.size} uint16 (photographs, layered defocus; "
              f"made in {time.perf_counter() - t:.0f} s)\n")
        rows = [run_child(m, data, truth, args.repeat, args.tile) for m in methods + ["naive-argmax"]]
        print(table(rows), flush=True)
        if not args.no_real:
            for label, src in real_stacks():
                st = ne.open_stack(src)
                a = np.ascontiguousarray(np.asarray(st.data))
                np.save(f"{tmp}/real.npy", a)
                print(f"\n## real: {label}\n")
                rows = [run_child(m, f"{tmp}/real.npy", None, args.repeat, args.tile) for m in methods + ["naive-argmax"]]
                print(table(rows), flush=True)


if __name__ == "__main__":
    main()
