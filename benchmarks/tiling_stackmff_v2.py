"""StackMFF-V2 tiled vs whole-image results on real stacks (how large must tiles be?).

    python benchmarks/tiling_stackmff_v2.py [--tiles 256,512,768] [--overlaps 32,96] [--contexts 32,96]
                                            [--rules argmax,official] [--threads 2] [--quick]

GroupNorm and the channel attention see the whole input, and the official rule's min-max the
whole image, so tiles change the result. For each real stack in ``../shared/data`` (crops of the
large ones), each rule and each (tile, overlap, context), the table gives the fused image's PSNR
against the whole-image fused image (8-bit peak; inf = identical), the share of pixels whose index
equals the whole-image index, the share within one plane, and the time relative to the whole image.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

import torch  # noqa: E402
from rules_stackmff_v2 import psnr, real_stacks  # noqa: E402

import napari_edof as ne  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", default="256,512,768")
    ap.add_argument("--overlaps", default="32,96")
    ap.add_argument("--contexts", default="32,96")
    ap.add_argument("--rules", default="argmax,official")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated substrings: stacks to keep")
    ap.add_argument("--big", action="store_true", help="add a 2048x2048 crop of the algae stack")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiles = [int(v) for v in args.tiles.split(",")]
    overlaps = [int(v) for v in args.overlaps.split(",")]
    contexts = [int(v) for v in args.contexts.split(",")]
    rules = args.rules.split(",")
    keep = [k for k in args.only.split(",") if k]
    stacks = [s for s in real_stacks(args.quick, big=args.big)
              if max(s[1].shape[1:3]) > min(tiles) and (not keep or any(k in s[0] for k in keep))]
    print(f"StackMFF-V2 tiling: torch {torch.__version__}, {args.threads} thread(s); stacks: "
          + "; ".join(n for n, _, _ in stacks))
    summary = {}
    for rule in rules:
        print(f"\n### rule = {rule}\n")
        print("| stack | tile | overlap | context | fused PSNR vs whole (dB) | index = whole | within ±1 | time / whole |")
        print("|---|---|---|---|---|---|---|---|")
        for name, a, _rgb in stacks:
            peak = 255.0 if a.dtype == np.uint8 else float(np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1.0)
            for ctx in contexts:
                p = {"rule": rule, "context": ctx}
                t0 = time.perf_counter()
                whole = ne.fuse(a, method="stackmff-v2", params=p, tile=None)
                tw = time.perf_counter() - t0
                for tile, ov in itertools.product(tiles, overlaps):
                    if tile >= max(a.shape[1:3]):
                        continue
                    t0 = time.perf_counter()
                    r = ne.fuse(a, method="stackmff-v2", params=p, tile=tile, overlap=ov)
                    tt = time.perf_counter() - t0
                    ps = psnr(r.fused, whole.fused, peak)
                    same = float((np.rint(r.index) == np.rint(whole.index)).mean())
                    near = float((np.abs(r.index - whole.index) <= 1).mean())
                    summary.setdefault((rule, tile, ov, ctx), []).append((min(ps, 99.0), same, near, tt / tw))
                    print(f"| {name} | {tile} | {ov} | {ctx} | {ps:.2f} | {same:.4f} | {near:.4f} | {tt / tw:.2f} |",
                          flush=True)
    print("\n### Mean over the stacks (PSNR capped at 99 dB)\n")
    print("| rule | tile | overlap | context | fused PSNR vs whole (dB) | index = whole | within ±1 | time / whole |")
    print("|---|---|---|---|---|---|---|---|")
    for (rule, tile, ov, ctx), v in sorted(summary.items()):
        v = np.array(v)
        print(f"| {rule} | {tile} | {ov} | {ctx} | {v[:, 0].mean():.2f} | {v[:, 1].mean():.4f} | {v[:, 2].mean():.4f} "
              f"| {v[:, 3].mean():.2f} |")


if __name__ == "__main__":
    main()
