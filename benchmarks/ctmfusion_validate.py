"""Validation of CTMFusion weights on held-out synthetic pairs and stacks (the model card's figures).

    python benchmarks/ctmfusion_validate.py [--weights FILE] [--arch-from CONFIG.json] [--json OUT]

- pairs: held-out near/far pairs (PairDataset, seed 999, 96 x 96): decision accuracy (D > 0.5 against
  the ground-truth mask) and PSNR of ``D a + (1 - D) b`` against the all-in-focus image;
- stacks: held-out stacks (microscopy-like: validation_set seed 2024; general scenes: seed 2025),
  96 x 96, 4..8 planes, fused with each pairs-to-stack strategy: exact and +-1 index accuracy and
  PSNR of the gathered image against the all-in-focus image; the classical focus-select and the
  classical pair rule (nn.pairwise.contrast_decide) on the same stacks for reference.

Seeds of training (0..) and validation (999, 2024, 2025) are disjoint by item.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import napari_edof as ne
from napari_edof.methods.ctmfusion import make_decide
from napari_edof.nn.ctmfusion import build, normalise
from napari_edof.nn.pairwise import contrast_decide, fuse_stack_pairwise
from napari_edof.training.datasets import DEFAULT_SCENES, MICROSCOPY_SCENES, PairDataset, validation_set

PACKAGED = Path(ne.__file__).parent / "weights" / "ctmfusion_ours.pt"


def psnr(a, b, peak=1.0):
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def load(weights, arch):
    m = build(arch)
    m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return m.eval()


def pairs_eval(model, count=16):
    ds = PairDataset(seed=999, crop=(96, 96), rgb=False)
    acc, ps, ps_avg = [], [], []
    for i in range(count):
        it = ds[i]
        a, b = normalise(np.stack([it["near"], it["far"]]))  # as the method scales its input
        with torch.inference_mode():
            d = model.decision(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0].numpy()
        acc.append(float(((d > 0.5) == (it["mask"] > 0.5)).mean()))
        fused = d * it["near"] + (1 - d) * it["far"]
        ps.append(psnr(fused, it["aif"]))
        ps_avg.append(psnr(0.5 * (it["near"] + it["far"]), it["aif"]))
    return {"pair_acc": float(np.mean(acc)), "pair_psnr": float(np.mean(ps)), "average_psnr": float(np.mean(ps_avg))}


def stacks_eval(decide, stacks, strategy, **kw):
    ex, near, ps, secs = [], [], [], 0.0
    for it in stacks:
        st = it["stack"]
        t = time.perf_counter()
        idx, _ = fuse_stack_pairwise(normalise(st), decide, strategy=strategy, **kw)
        secs += time.perf_counter() - t
        ex.append(float((idx == it["index"]).mean()))
        near.append(float((np.abs(idx.astype(int) - it["index"]) <= 1).mean()))
        fused = np.take_along_axis(st, idx[None].astype(np.intp), axis=0)[0]
        ps.append(psnr(fused, it["aif"]))
    return {"exact": float(np.mean(ex)), "within1": float(np.mean(near)), "psnr": float(np.mean(ps)),
            "seconds": round(secs, 2)}


def focus_select_eval(stacks):
    ex, near, ps = [], [], []
    for it in stacks:
        r = ne.fuse(it["stack"], method="focus-select")
        idx = np.rint(r.index).astype(int)
        ex.append(float((idx == it["index"]).mean()))
        near.append(float((np.abs(idx - it["index"]) <= 1).mean()))
        ps.append(psnr(r.fused, it["aif"]))
    return {"exact": float(np.mean(ex)), "within1": float(np.mean(near)), "psnr": float(np.mean(ps))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(PACKAGED))
    ap.add_argument("--arch-from", default=None, help="a training config.json (its 'arch'); default: the shipped arch")
    ap.add_argument("--count", type=int, default=12, help="stacks per validation set")
    ap.add_argument("--strategies", default="reference,sequential")
    ap.add_argument("--baselines", action="store_true", help="also focus-select and the classical pair rule")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.arch_from:
        arch = json.loads(Path(a.arch_from).read_text())["arch"]
    else:
        from napari_edof.methods.ctmfusion import ARCH

        arch = ARCH["ours"]
    model = load(a.weights, arch)
    decide = make_decide(model, "cpu")
    out = {"weights": a.weights, "arch": arch, "pairs": pairs_eval(model)}
    sets = {
        "microscopy": validation_set(seed=2024, count=a.count, crop=(96, 96), n_range=(4, 8),
                                     scenes=dict(MICROSCOPY_SCENES)),
        "general": validation_set(seed=2025, count=a.count, crop=(96, 96), n_range=(4, 8), scenes=dict(DEFAULT_SCENES)),
    }
    for name, stacks in sets.items():
        res = {}
        for s in a.strategies.split(","):
            res[f"ctmfusion/{s}"] = stacks_eval(decide, stacks, s)
        if a.baselines:
            res["contrast-rule/reference"] = stacks_eval(contrast_decide(), stacks, "reference")
            res["focus-select"] = focus_select_eval(stacks)
        out[name] = res
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
