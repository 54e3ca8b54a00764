"""Validation of the fmb-fn method (seed paper 001) on held-out synthetic RGB stacks, against
focus-select: a fundus set (procedural fundus and zoomed fundus views on bowl depths) and a
general set (dead leaves, surfaces, photographs, cells, vessels).

Every stack is quantised to uint8 and fused through the public API, as a user would. Reported
per set: PSNR (dB) and SSIM of the fused image against the all-in-focus truth, and the fraction
of pixels whose focus index is the true plane (exact) or within one plane.

    python benchmarks/fmb_fn_validation.py [--count 12] [--size 128] [--noise-free] [--json out.json]

Seeds 2024 (fundus) and 2025 (general) are disjoint from training (seed 0). Not part of the tests.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

SETS = {
    "fundus": (2024, {"fundus": 0.5, "fundus_view": 0.5}),
    "general": (2025, {"dead_leaves": 0.3, "surface": 0.2, "photo": 0.2, "cells": 0.15, "vessels": 0.15}),
}
RUNS = {
    "fmb-fn (index=select)": ("fmb-fn", {"index": "select"}),
    "fmb-fn (index=nearest)": ("fmb-fn", {"index": "nearest"}),
    "fmb-fn (index=provenance)": ("fmb-fn", {"index": "provenance"}),
    "fmb-fn (output=snap)": ("fmb-fn", {"output": "snap"}),
    "fmb-fn (weights=paper)": ("fmb-fn", {"weights": "paper"}),
    "focus-select": ("focus-select", {}),
}


def held_out(name: str, count: int, size: int, n_range=(4, 10), noise: bool = True) -> list[dict]:
    from napari_edof.training.datasets import StackDataset
    from napari_edof.training.synth import SynthConfig

    seed, scenes = SETS[name]
    ds = StackDataset(seed=seed, crop=(size, size), n_range=n_range, scenes=scenes, rgb=True, augment=False,
                      synth=SynthConfig() if noise else SynthConfig(noise_p=0))
    return [ds[i] for i in range(count)]


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)


def evaluate(items: list[dict], method: str, params: dict) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    import napari_edof as ne

    ps, ss, ex, w1, secs = [], [], [], [], 0.0
    for it in items:
        stack, aif = to_u8(it["stack"]), to_u8(it["aif"])
        t = time.perf_counter()
        r = ne.fuse(stack, method=method, params=params)
        secs += time.perf_counter() - t
        ps.append(peak_signal_noise_ratio(aif, r.fused, data_range=255))
        ss.append(structural_similarity(aif, r.fused, channel_axis=-1, data_range=255))
        idx = np.rint(r.index).astype(int)
        ex.append(float((idx == it["index"]).mean()))
        w1.append(float((np.abs(idx - it["index"]) <= 1).mean()))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "exact": float(np.mean(ex)),
            "within1": float(np.mean(w1)), "seconds": secs}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--noise-free", action="store_true", help="the same stacks' scenes without sensor noise")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    runs = RUNS
    out: dict = {}
    for s in SETS:
        items = held_out(s, a.count, a.size, noise=not a.noise_free)
        for label, (method, params) in runs.items():
            out.setdefault(s, {})[label] = m = evaluate(items, method, params)
            print(f"{s:8s} {label:28s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  index exact "
                  f"{m['exact']:.3f}  within 1 {m['within1']:.3f}  ({m['seconds']:.1f} s)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
