"""StackMFF-V2 weights against the ground truth of a held-out synthetic microscopy-like set.

    .venv/bin/python benchmarks/validate_learned.py [--count 24] [--crop 160] [--threads 1]
        [--ours src/napari_edof/weights/stackmff_v2_ours.pt]
        [--official ../shared/weights/stackmff_v2_official.pth] [--json out.json]

The validation set is :func:`napari_edof.training.datasets.validation_set` with a fixed seed
(2024; training uses other seeds): cell-like and vessel-like scenes, N = 6..12 planes, both
defocus models (layered and thin-lens), exposure/colour jitter and Poisson-Gaussian noise, grey
float32 stacks in [0, 1] fed to the network as they are.

For each model, decision rule (``argmax``: per-pixel argmax of the logits, local;
``official``: expectation + global min-max + round, as the authors' code) and input scaling
(``range``: the method's default robust min/max stretch; ``dtype``: the float stack as given,
the authors' convention), whole image (no tiling), and for the classical
``focus-select`` through ``napari_edof.api.fuse``, it prints: index accuracy (the exact true
plane), accuracy within one plane, and the PSNR of the fused image (the stack gathered at the
chosen index) against the clean all-in-focus image (data range 1), all averaged over stacks;
and the same split by defocus model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
DEFAULT_OURS = REPO / "src" / "napari_edof" / "weights" / "stackmff_v2_ours.pt"
DEFAULT_OFFICIAL = SHARED / "weights" / "stackmff_v2_official.pth"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def gather(stack: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(stack, index[None].astype(np.intp), axis=0)[0]


def score(item: dict, index: np.ndarray) -> dict:
    index = np.clip(np.rint(index), 0, item["n"] - 1).astype(np.int64)
    d = np.abs(index - item["index"])
    return {"acc": float((d == 0).mean()), "acc1": float((d <= 1).mean()),
            "psnr": psnr(gather(item["stack"], index), item["aif"])}


def net_rules(model, stack: np.ndarray, normalise: str = "range") -> dict:
    import torch

    from napari_edof.nn.stackmff_v2 import official_index

    if normalise == "range":  # the method's default input scaling
        from napari_edof.methods.stackmff_v2 import normalise_guide

        stack = normalise_guide(stack, stack.dtype, "range")
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(stack, np.float32))[None])
        _, off = official_index(logits)
    return {"argmax": logits[0].argmax(0).numpy(), "official": off[0].numpy()}


def load(path):

    from napari_edof.nn.stackmff_v2 import StackMFFV2
    from napari_edof.training.train import load_init

    m = StackMFFV2()
    load_init(m, path)
    return m.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scenes", default=None,
                    help="comma-separated scene names instead of the microscopy mix (cells, vessels), "
                         "e.g. photo,dead_leaves,fundus")
    ap.add_argument("--ours", default=str(DEFAULT_OURS))
    ap.add_argument("--official", default=str(DEFAULT_OFFICIAL))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH", help="more weights to compare")
    ap.add_argument("--normalise", nargs="+", default=["range", "dtype"], choices=["range", "dtype"],
                    help="network input scaling: the method's default robust 'range' stretch and/or "
                         "'dtype' (float stacks as given)")
    ap.add_argument("--json", default=None, help="also write the per-stack figures here")
    args = ap.parse_args(argv)

    import torch

    import napari_edof as ne
    from napari_edof.training.datasets import validation_set

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    scenes = {k: 1.0 for k in args.scenes.split(",")} if args.scenes else None
    val = validation_set(seed=args.seed, count=args.count, crop=(args.crop, args.crop), scenes=scenes)
    print(f"validation set: {len(val)} stacks {args.crop}x{args.crop}, N {min(v['n'] for v in val)}-"
          f"{max(v['n'] for v in val)}, scenes {sorted({v['scene'] for v in val})}, models "
          f"{sorted({v['info']['model'] for v in val})}, seed {args.seed} ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)

    weights = {"official": args.official, "ours": args.ours}
    for e in args.extra:
        k, v = e.split("=", 1)
        weights[k] = v
    rows: dict[str, list] = {}
    secs: dict[str, float] = {}
    for name, path in weights.items():
        if not Path(path).is_file():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        model = load(path)
        t = time.perf_counter()
        for it in val:
            for norm in args.normalise:
                for rule, idx in net_rules(model, it["stack"], norm).items():
                    rows.setdefault(f"StackMFF-V2 {name} / {rule} / {norm}", []).append(score(it, idx))
        secs[name] = time.perf_counter() - t
    t = time.perf_counter()
    for it in val:
        r = ne.fuse(ne.Stack(it["stack"], "ZYX"), method="focus-select", tile=0)
        rows.setdefault("focus-select (classical)", []).append(score(it, r.index))
    secs["focus-select"] = time.perf_counter() - t

    models = [v["info"]["model"] for v in val]
    print("| method | index acc | acc +-1 | fused PSNR (dB) | PSNR layered | PSNR thin-lens |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        acc = np.mean([r["acc"] for r in rs])
        acc1 = np.mean([r["acc1"] for r in rs])
        p = np.mean([r["psnr"] for r in rs])
        pl = np.mean([r["psnr"] for r, m in zip(rs, models) if m == "layered"] or [np.nan])
        pt = np.mean([r["psnr"] for r, m in zip(rs, models) if m == "thin_lens"] or [np.nan])
        print(f"| {name} | {acc:.3f} | {acc1:.3f} | {p:.2f} | {pl:.2f} | {pt:.2f} |")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "models": models, "seconds": secs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
