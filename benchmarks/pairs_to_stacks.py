"""Pairs to stacks: strategies for fusing N planes with a pair model, on synthetic ground truth.

    .venv/bin/python benchmarks/pairs_to_stacks.py [--count 16] [--crop 128] [--pairs 0] [--threads 1]
        [--models classical,classical-smooth,msas] [--msas-weights PATH] [--scenes microscopy|general] [--json out.json]

Stacks: :func:`napari_edof.training.datasets.validation_set` (seed 2024, held out from training;
``--scenes microscopy``: cell- and vessel-like scenes, the default; ``general``: the training mix
of dead leaves, surfaces, photos, cells, vessels, fundus), N = 6..12 planes, both defocus models,
noise. The guide is stretched to [0, 1] as the MSAS method does (robust min/max).

Pair models (``decide(a, b)`` = probability that ``a`` is in focus):

- ``classical``: :func:`napari_edof.nn.pairwise.contrast_decide` (local Laplacian energy,
  logistic in the log ratio), so that the comparison does not hang on one network. A monotone
  function of a per-image score: every order-free strategy then reduces to the argmax of that
  score and they tie;
- ``classical-smooth``: the same with gain 8 and the decision map box-averaged over 9 x 9 pixels
  (a region-consistency step): it judges the pair jointly, like a network, so strategies differ;
- ``--api msas,focus-select`` runs registered methods with their defaults on the same stacks;
- ``--pairs K`` first scores the plain pair decision (the paper's task) on K held-out near/far
  pairs: decision accuracy binarised and small-area filtered, and the PSNR of the pair fusion;
- ``msas``: the MSAS network (shipped weights by default, or ``--msas-weights``).

Strategies (:func:`napari_edof.nn.pairwise.fuse_stack_pairwise`): ``sequential`` (plane 0 with
1, the result with 2, ...), ``reference`` against the max-contrast composite (the default) and
against the mean, ``reference`` + one refinement round, ``round-robin``. For each: exact index
accuracy, accuracy within one plane, PSNR of the gathered fusion against the clean all-in-focus
image (data range 1), and order independence: the fraction of pixels whose chosen plane is the
same when the planes are fed reversed and in a random permutation (1.0 = independent), and the
seconds per stack. No small-area filtering here (it is the MSAS method's post-processing, not
part of the strategy).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

STRATEGIES = {
    "sequential": {"strategy": "sequential"},
    "reference (contrast)": {"strategy": "reference", "reference": "contrast"},
    "reference (mean)": {"strategy": "reference", "reference": "mean"},
    "reference (contrast) + refine 1": {"strategy": "reference", "reference": "contrast", "refine": 1},
    "round-robin": {"strategy": "round-robin"},
}


def psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def gather(stack, index):
    return np.take_along_axis(stack, index[None].astype(np.intp), axis=0)[0]


def msas_decide(weights: str | None, device: str = "cpu"):
    import torch

    from napari_edof.methods import msas as MM
    from napari_edof.nn.msas import MSAS

    if weights:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        m = MSAS(**MM.config_from_state_dict(sd))
        m.load_state_dict(sd, strict=True)
        m = m.eval().to(device)
    else:
        m = MM.get_model(device)
    return MM.make_decide(m, device)


def pair_validation(models: dict, count: int, crop: int) -> list[dict]:
    """Decision-map accuracy on held-out near/far pairs (PairDataset, seed 2024, grey, general
    scenes): the binarised map (eq. 8) and after the 1 % small-area filter (eq. 9), and the PSNR
    of the fusion through the final map against the clean all-in-focus image."""
    from napari_edof.methods.msas import normalise_guide
    from napari_edof.nn.pairwise import small_area_filter
    from napari_edof.training.datasets import PairDataset

    ds = PairDataset(seed=2024, crop=(crop, crop), rgb=False)
    items = [ds[i] for i in range(count)]
    rows = []
    for mname, decide in models.items():
        raw, filt, ps = [], [], []
        for it in items:
            x = normalise_guide(np.stack([it["near"], it["far"]]), np.float32, "range")
            d = decide(x[:1], x[1:])[0]
            B = (d > 0.5).astype(np.uint8)
            D = small_area_filter(B, 0.01)
            raw.append((B == it["mask"]).mean())
            filt.append((D == it["mask"]).mean())
            ps.append(psnr(np.where(D == 1, it["near"], it["far"]), it["aif"]))
        row = {"model": mname, "pairs": count, "acc_binary": float(np.mean(raw)),
               "acc_filtered": float(np.mean(filt)), "psnr": float(np.mean(ps))}
        rows.append(row)
        print(f"pairs {mname:16s} decision accuracy {row['acc_binary']:.3f} (binarised)  "
              f"{row['acc_filtered']:.3f} (small-area filtered)  PSNR {row['psnr']:.2f}", flush=True)
    return rows


def api_rows(methods: str, items: list) -> list[dict]:
    """Registered methods through ``napari_edof.api.fuse`` with their defaults (for MSAS: the
    default strategy plus context and the small-area filter) on the same stacks."""
    import napari_edof as ne

    rows = []
    for name in methods.split(","):
        acc, acc1, ps, secs = [], [], [], []
        for it in items:
            t0 = time.perf_counter()
            r = ne.fuse(it["stack"], method=name)
            secs.append(time.perf_counter() - t0)
            idx = np.clip(np.rint(r.index), 0, it["n"] - 1).astype(np.int64)
            d = np.abs(idx - it["index"])
            acc.append((d == 0).mean())
            acc1.append((d <= 1).mean())
            ps.append(psnr(gather(it["stack"], idx), it["aif"]))
        row = {"method": name, "acc": float(np.mean(acc)), "acc1": float(np.mean(acc1)),
               "psnr": float(np.mean(ps)), "s_per_stack": float(np.mean(secs))}
        rows.append(row)
        print(f"api {name:14s} acc {row['acc']:.3f}  acc±1 {row['acc1']:.3f}  PSNR {row['psnr']:.2f}  "
              f"{row['s_per_stack']:.2f} s", flush=True)
    return rows


def run(args) -> dict:
    from napari_edof.methods.msas import normalise_guide
    from napari_edof.nn.pairwise import contrast_decide, fuse_stack_pairwise
    from napari_edof.training.datasets import DEFAULT_SCENES, MICROSCOPY_SCENES, validation_set

    scenes = MICROSCOPY_SCENES if args.scenes == "microscopy" else DEFAULT_SCENES
    items = validation_set(count=args.count, crop=(args.crop, args.crop), scenes=dict(scenes))
    models = {}
    for name in filter(None, args.models.split(",")):
        if name == "classical":
            models[name] = contrast_decide()
        elif name == "classical-smooth":
            models[name] = contrast_decide(gain=8.0, smooth=4)
        else:
            models[name] = msas_decide(args.msas_weights)
    pair_rows = pair_validation(models, args.pairs, args.crop) if args.pairs else []
    method_rows = api_rows(args.api, items) if args.api else []
    rows = []
    for mname, decide in models.items():
        for sname, kw in (STRATEGIES.items() if items else ()):
            if args.strategies and sname not in args.strategies.split(","):
                continue
            acc, acc1, ps, same_r, same_p, secs = [], [], [], [], [], []
            for k, it in enumerate(items):
                x = normalise_guide(it["stack"], np.float32, "range")
                n = x.shape[0]
                t0 = time.perf_counter()
                idx, _ = fuse_stack_pairwise(x, decide, **kw)
                secs.append(time.perf_counter() - t0)
                d = np.abs(idx.astype(np.int64) - it["index"])
                acc.append((d == 0).mean())
                acc1.append((d <= 1).mean())
                ps.append(psnr(gather(it["stack"], idx), it["aif"]))
                rev = np.arange(n)[::-1]
                perm = np.random.default_rng([7, k]).permutation(n)
                for order, out in ((rev, same_r), (perm, same_p)):
                    idx_o, _ = fuse_stack_pairwise(np.ascontiguousarray(x[order]), decide, **kw)
                    out.append((order[idx_o] == idx).mean())
            row = {"model": mname, "strategy": sname, "acc": float(np.mean(acc)), "acc1": float(np.mean(acc1)),
                   "psnr": float(np.mean(ps)), "same_reversed": float(np.mean(same_r)),
                   "same_permuted": float(np.mean(same_p)), "s_per_stack": float(np.mean(secs))}
            rows.append(row)
            print(f"{mname:9s} {sname:33s} acc {row['acc']:.3f}  acc±1 {row['acc1']:.3f}  "
                  f"PSNR {row['psnr']:.2f}  same(rev) {row['same_reversed']:.4f}  "
                  f"same(perm) {row['same_permuted']:.4f}  {row['s_per_stack']:.2f} s", flush=True)
    return {"count": args.count, "crop": args.crop, "scenes": args.scenes, "rows": rows, "pairs": pair_rows,
            "api": method_rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=0, help="also score the decision map on this many held-out pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="classical,classical-smooth,msas")
    ap.add_argument("--msas-weights", default=None, help="a state dict (default: the shipped weights)")
    ap.add_argument("--scenes", default="microscopy", choices=("microscopy", "general"))
    ap.add_argument("--strategies", default=None,
                    help="comma-separated subset of the strategy names above (default: all)")
    ap.add_argument("--api", default=None,
                    help="also run these registered methods through napari_edof.api.fuse (e.g. msas,focus-select)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if "msas" in args.models or "msas" in (args.api or ""):
        import torch

        torch.set_num_threads(args.threads)
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
