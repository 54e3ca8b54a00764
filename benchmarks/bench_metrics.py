"""Every registered classical method on a fixed synthetic validation set, scored by napari_edof.metrics.

The set: 8 stacks from ``sample_stack`` (seeds 100-103 scene "cells", 104-107 scene "photo"),
256 x 256, 8 planes, uint16, grey. For each method (``napari_edof.list_methods()``, family
"classical"; more with --methods) the fused image is scored with PSNR and SSIM against the
ground-truth all-in-focus image and with the no-reference metrics against the 8 planes. Three
calibration rows are added: the truth itself, the truth blurred by a Gaussian of sigma 1.5, and
the mean of the planes.

    python benchmarks/bench_metrics.py            # markdown tables (mean over the set, per scene)
    python benchmarks/bench_metrics.py --json out.json --methods focus-select,stackmff-v2
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy import ndimage as ndi

import napari_edof as ne
from napari_edof import metrics as M

SEEDS = tuple(range(100, 108))
SHAPE, PLANES = (256, 256), 8


def scene(seed: int) -> str:
    return "cells" if seed < 104 else "photo"


def validation_set():
    for seed in SEEDS:
        yield seed, ne.sample_stack(n_planes=PLANES, shape=SHAPE, seed=seed, scene=scene(seed))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma-separated (default: every classical method)")
    ap.add_argument("--json", default=None, help="write every value to this file")
    args = ap.parse_args(argv)
    methods = (args.methods.split(",") if args.methods
               else [s.name for s in ne.list_methods() if s.family == "classical"])
    names = list(M.METRICS)
    rows: dict[str, dict[str, list]] = {}
    speed: dict[str, list] = {}

    def add(label, seed, values):
        r = rows.setdefault(label, {})
        for k, v in values.items():
            r.setdefault(k, {}).setdefault(scene(seed), []).append(v)

    t0 = time.perf_counter()
    for seed, s in validation_set():
        planes, aif = s.stack.data, s.all_in_focus
        for m in methods:
            res = ne.fuse(s.stack, method=m)
            speed.setdefault(m, []).append(res.provenance.get("mvoxel_per_s", float("nan")))
            add(m, seed, M.evaluate(res.fused, planes, aif))
        blurred = np.rint(ndi.gaussian_filter(aif.astype(np.float64), 1.5)).astype(aif.dtype)
        mean = np.rint(planes.astype(np.float64).mean(0)).astype(aif.dtype)
        add("(truth)", seed, M.evaluate(aif, planes, aif))
        add("(truth, blurred 1.5)", seed, M.evaluate(blurred, planes, aif))
        add("(mean of planes)", seed, M.evaluate(mean, planes, aif))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    def fmt(v):
        return "inf" if v == float("inf") else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"

    labels = [M.METRICS[n].label for n in names]
    for title, scenes in (("all 8 stacks", ("cells", "photo")), ("cells (seeds 100-103)", ("cells",)),
                          ("photo (seeds 104-107)", ("photo",))):
        print(f"\n### {title}: mean over stacks\n")
        print("| method | " + " | ".join(labels) + (" | Mvoxel/s |" if title.startswith("all") else " |"))
        print("|---" * (len(labels) + 1 + title.startswith("all")) + "|")
        for label, r in rows.items():
            vals = [fmt(float(np.mean(sum((r[n][sc] for sc in scenes), [])))) for n in names]
            extra = ""
            if title.startswith("all"):
                extra = f" {np.mean(speed[label]):.1f} |" if label in speed else " |"
            print(f"| {label} | " + " | ".join(vals) + " |" + extra)
    print(f"\n{len(SEEDS)} stacks of {PLANES} x {SHAPE[0]} x {SHAPE[1]} uint16; "
          f"{time.perf_counter() - t0:.0f} s in all", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "mvoxel_per_s": speed}, fh, indent=1,
                      default=lambda v: "inf" if v == float("inf") else v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
