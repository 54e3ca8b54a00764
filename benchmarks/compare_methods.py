"""Every registered method on the same held-out synthetic validation sets, with speed.

    python benchmarks/compare_methods.py [--count 16] [--crop 160] [--threads 2]
        [--sets microscopy,general] [--methods a,b] [--json out.json]

The sets come from :func:`napari_edof.training.datasets.validation_set` with the fixed
validation seed (2024; training uses other seeds): "microscopy" (cell- and vessel-like scenes),
"general" (dead leaves, smooth surfaces, photographs) and "fundus" (the retina-like scene);
N = 6..12 planes, layered and thin-lens defocus, jitter and noise; grey float32 stacks in
[0, 1]. Every method in the registry (``napari_edof.list_methods()``: the registry alone decides)
runs through ``napari_edof.fuse`` with its defaults and default tiling.

Per method and set: index accuracy (the exact true plane; for methods that synthesise pixels,
their reported index), fused PSNR and SSIM against the clean all-in-focus image, Q^AB/F (no
reference), and throughput in Mvoxel/s = planes x height x width / seconds over the whole set
(after one warm-up stack, so weights loading is not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

SETS = {
    "microscopy": {"cells": 0.6, "vessels": 0.4},
    "general": {"dead_leaves": 0.4, "surface": 0.3, "photo": 0.3},
    "fundus": {"fundus": 1.0},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="microscopy,general")
    ap.add_argument("--methods", default="", help="comma-separated names (default: every registered method)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    import napari_edof as ne
    from napari_edof.metrics import evaluate
    from napari_edof.training.datasets import validation_set

    torch.set_num_threads(args.threads)
    names = [m for m in args.methods.split(",") if m] or [s.name for s in ne.list_methods()]
    out = {}
    print("| set | method | index acc | fused PSNR (dB) | SSIM | Q^AB/F | Mvoxel/s |")
    print("|---|---|---|---|---|---|---|")
    for set_name in args.sets.split(","):
        val = validation_set(seed=args.seed, count=args.count, crop=(args.crop, args.crop),
                             scenes=SETS[set_name])
        voxels = sum(v["stack"].size for v in val)
        for name in names:
            ne.fuse(ne.Stack(val[0]["stack"][:, :64, :64], "ZYX"), method=name)  # warm-up: load weights
            acc, ps, ss, qa = [], [], [], []
            sec = 0.0
            for it in val:
                st = ne.Stack(it["stack"], "ZYX")
                t = time.perf_counter()
                r = ne.fuse(st, method=name)
                sec += time.perf_counter() - t
                idx = np.clip(np.rint(r.index), 0, it["n"] - 1).astype(np.int64)
                acc.append(float((idx == it["index"]).mean()))
                m = evaluate(np.clip(r.fused, 0, 1), it["stack"], truth=it["aif"], metrics="psnr,ssim,qabf",
                             data_range=1.0)
                ps.append(m["psnr"])
                ss.append(m["ssim"])
                qa.append(m["qabf"])
            row = {"index_acc": float(np.mean(acc)), "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                   "qabf": float(np.mean(qa)), "mvoxel_s": voxels / sec / 1e6}
            out.setdefault(set_name, {})[name] = row
            print(f"| {set_name} ({len(val)}) | {name} | {row['index_acc']:.3f} | {row['psnr']:.2f} | "
                  f"{row['ssim']:.4f} | {row['qabf']:.3f} | {row['mvoxel_s']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
