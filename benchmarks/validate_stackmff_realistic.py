"""StackMFF-V2 weights and compositions on held-out realistic stacks (not the benchmark's).

    python benchmarks/validate_stackmff_realistic.py [--seed 9700] [--per-class 1]
        [--weights ours,run/weights.pt,...] [--compose soft,select] [--threads 1]

The stacks come from :func:`napari_edof.training.realistic.benchmark_configs` with a seed that
neither the quality benchmark (7100), the tuning sets (9100, 9300) nor training (stack seeds from
2**40 up, :mod:`napari_edof.training.realistic_data`) uses. ``--weights``: names of the method's
weights (``ours``, ``official``, ...) or weights files (loaded in place of ``ours``). Prints PSNR of
the fused image against the truth (the dtype's range) per noise x colour class, and the index
error (mean |index - true plane| over the informative pixels) of the StackMFF-V2 variants.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(peak * peak / max(mse, 1e-20))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=9700)
    ap.add_argument("--per-class", type=int, default=1)
    ap.add_argument("--weights", default="ours")
    ap.add_argument("--compose", default="soft,select")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="", help="extra parameter sets, ';'-separated k=v,k=v")
    ap.add_argument("--also", default="", help="other methods to score beside (e.g. focus-fuse)")
    ap.add_argument("--scale", type=float, default=0.5, help="image sides x this (speed)")
    args = ap.parse_args(argv)

    import torch

    import napari_edof as ne
    from napari_edof.methods import stackmff_v2 as sm
    from napari_edof.nn.stackmff_v2 import StackMFFV2
    from napari_edof.training.realistic import Config, benchmark_configs, render

    torch.set_num_threads(args.threads)
    if args.seed in (7100, 9100, 9300):
        print("that seed is the benchmark's or a tuning set's", file=sys.stderr)
        return 2
    cfgs = []
    for c in benchmark_configs(args.per_class, seed=args.seed):
        shape = tuple(int(s * args.scale) // 32 * 32 for s in c.shape)
        cfgs.append(Config(**{**c.__dict__, "shape": shape}))
    stacks = [render(c) for c in cfgs]
    results: dict = {}
    index_err: dict = {}
    for w in args.weights.split(","):
        name = "ours"
        if w in sm.MODELS:
            name = w
            sm._MODELS.pop((name, "cpu"), None)
        else:
            net = StackMFFV2()
            net.load_state_dict(torch.load(w, map_location="cpu", weights_only=True))
            sm._MODELS[("ours", "cpu")] = net.eval()
        sets = [{"compose": c} for c in args.compose.split(",") if c]
        sets += [dict(kv.split("=", 1) for kv in v.split(",")) for v in args.variants.split(";") if v]
        for extra in sets:
            tag = ",".join(f"{k}={v}" for k, v in extra.items())
            key = f"{Path(w).parent.name or w}/{tag}" if w not in sm.MODELS else f"{w}/{tag}"
            per = results[key] = {}
            ierr = index_err[key] = {}
            for c, s in zip(cfgs, stacks, strict=True):
                r = ne.fuse(s.planes, method="stackmff-v2", params={"weights": name, **extra})
                per[c.label] = psnr(np.asarray(r.fused), s.truth, s.dtype_max)
                ierr[c.label] = float(np.mean(np.abs(np.asarray(r.index) - s.index)[s.informative]))
        sm._MODELS.pop(("ours", "cpu"), None)
    for m in (m for m in args.also.split(",") if m):
        per = results[m] = {}
        for c, s in zip(cfgs, stacks, strict=True):
            per[c.label] = psnr(np.asarray(ne.fuse(s.planes, method=m).fused), s.truth, s.dtype_max)
    classes: dict = {}
    for c in cfgs:
        classes.setdefault(f"{c.noise} {c.colour}", []).append(c.label)
    print("| weights/compose | " + " | ".join(classes) + " | all |")
    print("|---|" + "---|" * (len(classes) + 1))
    for key, per in results.items():
        cells = [f"{np.mean([per[s] for s in m]):.2f}" for m in classes.values()]
        print(f"| {key} | " + " | ".join(cells) + f" | {np.mean(list(per.values())):.2f} |", flush=True)
    print("\nindex error, planes (mean over the informative pixels)\n")
    for key, per in index_err.items():
        cells = [f"{np.mean([per[s] for s in m]):.2f}" for m in classes.values()]
        print(f"| {key} | " + " | ".join(cells) + f" | {np.mean(list(per.values())):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
