"""Halos at depth edges and never-in-focus regions: focus-select's robustness options measured
against the synthetic sample's ground truth.

    python benchmarks/bench_halo.py [--size 512] [--planes 12]

Table 1 (halos): index accuracy (rounded index == true plane) and PSNR of the fused image against
the exact all-in-focus image, over the whole image and within 6 pixels of the true depth edges
(jumps of 2 planes or more), for a naive argmax (Laplacian energy, radius 4, no smoothing), the
default, and the options (edge_refine, consistency, tie).

Table 2 (never in focus): the sample with its right half replaced by a flat grey carrying only
noise (sigma 40 of 60000): the noise level estimated, the fraction of the flat half flagged
(confidence 0) and of the textured half flagged by mistake, per lowtexture policy.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def halo_rows(size: int, planes: int, scene: str, seed: int = 5) -> list[dict]:
    from napari_edof import api, sample_stack
    from napari_edof.core.quality import band_around_edges

    s = sample_stack(n_planes=planes, shape=(size, size), seed=seed, scene=scene)
    band = band_around_edges(s.index, width=6, jump=2)
    aif = s.all_in_focus.astype(np.float64)
    configs = [
        ("naive argmax (radius 4, no smoothing)", {"smooth": 0, "blend": 0}),
        ("default", {}),
        ("consistency=2", {"consistency": 2}),
        ("edge_refine=2", {"edge_refine": 2}),
        ("edge_refine=4", {"edge_refine": 4}),
        ("edge_refine=4, consistency=2", {"edge_refine": 4, "consistency": 2}),
        ("tie=near", {"tie": "near"}),
        ("tie=far", {"tie": "far"}),
    ]
    rows = []
    for name, params in configs:
        t0 = time.perf_counter()
        r = api.fuse(s.stack, params=params)
        sec = time.perf_counter() - t0
        hit = np.rint(r.index) == s.index
        err = (np.asarray(r.fused, np.float64) - aif) ** 2
        psnr = lambda m: 10 * np.log10(60000.0**2 / err[m].mean())  # noqa: E731
        rows.append(dict(config=name, acc=hit.mean(), acc_band=hit[band].mean(), psnr=psnr(np.ones_like(band)),
                         psnr_band=psnr(band), seconds=sec, band=band.mean()))
    return rows


def lowtexture_rows(size: int, planes: int, sigma: float = 40.0) -> list[dict]:
    from napari_edof import api, sample_stack
    from napari_edof.methods.focus_select import FocusSelect

    s = sample_stack(n_planes=planes, shape=(size, size), seed=2)
    a = np.asarray(s.stack.data).astype(np.float32)
    half = size // 2
    a[:, :, half:] = 30000
    a += np.random.default_rng(0).normal(0, sigma, a.shape).astype(np.float32)
    a = np.clip(np.rint(a), 0, 65535).astype(np.uint16)
    flat, tex = (slice(None), slice(half + 8, None)), (slice(None), slice(0, half - 8))
    rows = []
    for policy in ("off", "nearest", "blend", "mask"):
        t0 = time.perf_counter()
        r = api.fuse(a, params={"lowtexture": policy})
        sec = time.perf_counter() - t0
        conf = np.asarray(r.confidence)
        rows.append(dict(policy=policy, flagged_flat=(conf[flat] == 0).mean(), flagged_tex=(conf[tex] == 0).mean(),
                         nan=np.isnan(r.index).mean(), seconds=sec))
    # the noise level the first pass estimates
    from napari_edof.core.engine import plan_fusion, run_region

    pl = plan_fusion(a, params={"lowtexture": "mask"})
    impl = pl.make_impl()
    frame = np.asarray(pl.stack.canonical()[0])
    gen = run_region(pl, impl, frame, r0=0, s0=0, s1=size, tiles=pl.tiles, pass1=True)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            est = impl.reduce(stop.value)["noise_sigma"]
            break
    return rows, est, isinstance(impl, FocusSelect)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--planes", type=int, default=12)
    a = ap.parse_args(argv)
    for scene in ("photo", "cells"):
        rows = halo_rows(a.size, a.planes, scene)
        print(f"\nHalos: synthetic '{scene}' sample, {a.planes} planes of {a.size}x{a.size} uint16; "
              f"band = {rows[0]['band'] * 100:.1f}% of the pixels\n")
        print("| focus-select | index accuracy | accuracy in band | PSNR dB | PSNR in band dB | s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['config']} | {r['acc']:.3f} | {r['acc_band']:.3f} | {r['psnr']:.2f} | {r['psnr_band']:.2f} "
                  f"| {r['seconds']:.2f} |", flush=True)
    rows, est, _ = lowtexture_rows(a.size, a.planes)
    print(f"\nNever in focus: right half flat grey + noise sigma 40; estimated noise sigma {est:.1f}\n")
    print("| lowtexture | flat half flagged | textured half flagged | index NaN | s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['flagged_flat']:.3f} | {r['flagged_tex']:.3f} | {r['nan']:.3f} | {r['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
