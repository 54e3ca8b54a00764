"""StackMFF-V2: peak memory of the network's inference path as planes and image size grow.

    python benchmarks/memory_stackmff_v2.py [--sizes 8x512x512,16x512x512,...] [--threads 1]

For every size, two child processes run ``StackMFFV2.infer_logits`` on a random float32 stack
(our weights; memory does not depend on the values):

- "all states": the recurrent pass holds the 16-channel forward state of every plane (the
  structure before checkpointing; ``strip_budget`` set out of reach);
- "default": the shipped budget (512 MB), past which the forward states are checkpointed every
  ~sqrt(N) planes and recomputed.

Each child reads its peak resident memory (VmHWM) after the run; "network" is that peak minus the
resident memory just before the call, and the last column divides it by the voxels. Both must
give the same logits (checked: max |difference| printed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stackmff_v2 import vm  # noqa: E402  (peak/current RSS from /proc/self/status, MiB)


def child(size: str, mode: str, threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_edof.methods.stackmff_v2 import get_model

    n, h, w = (int(v) for v in size.split("x"))
    model = get_model("ours", "cpu")
    x = torch.from_numpy(np.random.default_rng(0).random((n, h, w), dtype=np.float32))
    budget = 1 << 50 if mode == "all" else 512 << 20
    model.infer_logits(x[:2, :64, :64], strip_budget=budget)  # warm-up
    rss0 = vm("VmRSS")
    t = time.perf_counter()
    logits = model.infer_logits(x, strip_budget=budget, workers=threads)
    sec = time.perf_counter() - t
    digest = float(logits.double().sum())
    print(json.dumps({"seconds": sec, "peak": vm("VmHWM"), "before": rss0, "sum": digest}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8x512x512,16x512x512,32x512x512,64x512x512,16x1024x1024,32x1024x1024")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"))
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child, a.threads)
        return
    print("| stack (N x H x W) | states held | seconds | peak RSS (MiB) | network (MiB) | network B/voxel | logits differ |")
    print("|---|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        n, h, w = (int(v) for v in size.split("x"))
        res = {}
        for mode in ("all", "default"):
            cmd = [sys.executable, __file__, "--child", size, mode, "--threads", str(a.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                print(f"| {size} | {mode} | failed: {p.stderr.strip().splitlines()[-1]} |||||")
                continue
            res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        for mode, label in (("all", "all N"), ("default", "checkpoints")):
            if mode not in res:
                continue
            r = res[mode]
            net = r["peak"] - r["before"]
            diff = abs(r["sum"] - res["all"]["sum"]) if "all" in res else float("nan")
            print(f"| {size} | {label} | {r['seconds']:.2f} | {r['peak']:.0f} | {net:.0f} | "
                  f"{net * 2**20 / (n * h * w):.1f} | {diff:.3g} |", flush=True)


if __name__ == "__main__":
    main()
