"""StackMFF-V2 decision rules on synthetic stacks with ground truth and on real stacks.

    python benchmarks/rules_stackmff_v2.py [--quick] [--size 256] [--threads 1]

The network runs once per stack (whole image, the method's input scaling and context, at full
resolution: the rules were studied before ``resolution="auto"``); every rule is then applied to
the same logits. Synthetic stacks come from
``napari_edof.data.synthetic.sample_stack`` (both scenes, 4..16 planes, three blur steps, one seed
per stack; depth spanning all the planes or only part of them); the smooth-argmax radius is
calibrated first on separate seeds. Real stacks from
``../shared/data`` have no ground truth: the table gives each rule's agreement with the official
rule and with focus-select. Needs the official weights (``$NAPARI_EDOF_WEIGHTS``, default
``../shared/weights``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(SHARED / "weights"))

import torch  # noqa: E402

import napari_edof as ne  # noqa: E402
from napari_edof.core.colour import make_guide, resolve_guide  # noqa: E402
from napari_edof.methods import stackmff_v2 as M  # noqa: E402

RULES = ["official", "argmax", "matched", "smooth-argmax"]


def psnr(a, b, peak):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def auc(score, label):
    """Probability that a random positive scores above a random negative (ties count half)."""
    score = np.asarray(score, np.float64).ravel()
    label = np.asarray(label, bool).ravel()
    npos, nneg = label.sum(), (~label).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    # average ranks for ties
    i = 0
    r = np.arange(1, len(s) + 1, dtype=np.float64)
    bounds = np.flatnonzero(np.diff(s)) + 1
    starts = np.r_[0, bounds]
    ends = np.r_[bounds, len(s)]
    for a, b in zip(starts, ends):
        r[a:b] = (a + 1 + b) / 2
        i += 1
    ranks[order] = r
    return float((ranks[label].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def logits_of(impl, stack_data, rgb: bool):
    """Whole-image logits as the engine computes them for one tile (context reflected)."""
    planes = stack_data if stack_data.ndim == 4 else stack_data[..., None]
    g = make_guide(planes, resolve_guide("auto", planes.shape[-1], rgb))
    c = impl.p["context"]
    if c:
        g = np.pad(g, ((0, 0), (c, c), (c, c)), mode="reflect")
    return impl.logits(g, planes.dtype, c), planes


def rule_index(logits, rule, p, e=None):
    q = dict(p, rule=rule)
    maps = M.decide(logits, q)
    n = logits.shape[0]
    if rule in M.GLOBAL_RULES:
        st = M.global_stats(maps["expectation"], maps["index"], rule, n)
        return M.rescale(maps["expectation"], st, n), maps
    return maps["index"], maps


def synthetic_set(size, quick):
    """Depth spanning every plane (as sample_stack makes it), and depth spanning only part of the
    planes (stacks acquired beyond the object: some planes are sharp nowhere)."""
    out = []
    seed = 100  # seeds 0-7 were used while designing the rules; evaluate on fresh ones
    planes = (4, 6, 8, 12, 16) if not quick else (6, 12)
    steps = (0.7, 1.0, 1.5) if not quick else (1.0,)
    for scene in ("cells", "photo"):
        for n in planes:
            for st in steps:
                out.append(dict(scene=scene, n_planes=n, sigma_step=st, seed=seed, shape=(size, size), span=(0.0, 1.0)))
                seed += 1
        for n in ((6, 8, 12, 16) if not quick else (8,)):
            for span in ((0.25, 0.75), (0.0, 0.6)):
                out.append(dict(scene=scene, n_planes=n, sigma_step=1.0, seed=seed, shape=(size, size), span=span))
                seed += 1
    return out


def make_case(c):
    """A uint16 synthetic stack with ground truth; depth squeezed into ``span`` of the planes."""
    from types import SimpleNamespace

    from napari_edof.data.synthetic import layered_defocus

    kw = {k: v for k, v in c.items() if k != "span"}
    s = ne.sample_stack(**kw)
    a, b = c.get("span", (0.0, 1.0))
    if (a, b) == (0.0, 1.0):
        return s
    img = s.all_in_focus.astype(np.float32) / 60000
    stack, index = layered_defocus(img, a + (b - a) * s.depth * 0.999, c["n_planes"], sigma_step=c["sigma_step"])
    data = np.rint(np.clip(stack, 0, 1) * 60000).astype(np.uint16)
    return SimpleNamespace(stack=SimpleNamespace(data=data), all_in_focus=s.all_in_focus, index=index)


def calibrate(impl, size, quick):
    radii = (1, 2, 4)
    cases = [dict(scene=sc, n_planes=n, sigma_step=1.0, seed=1000 + i, shape=(size, size))
             for i, (sc, n) in enumerate([("cells", 6), ("photo", 8), ("cells", 12), ("photo", 5)][: 2 if quick else 4])]
    score_r = {r: [] for r in radii}
    for c in cases:
        s = ne.sample_stack(**c)
        lg, planes = logits_of(impl, s.stack.data, False)
        for r in radii:
            idx, _ = rule_index(lg, "smooth-argmax", dict(impl.p, smooth=r))
            score_r[r].append(psnr(M.gather(planes, idx)[..., 0], s.all_in_focus, 60000))
    print("\n### Calibration (seeds 1000+, not reused below): mean fused PSNR (dB)\n")
    print("| smooth-argmax radius | " + " | ".join(map(str, radii)) + " |")
    print("|---|" + "---|" * len(radii))
    print("| PSNR | " + " | ".join(f"{np.mean(score_r[r]):.2f}" for r in radii) + " |")
    return max(radii, key=lambda r: np.mean(score_r[r]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few stacks only (smoke run)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--weights", default="official", help="official or ours")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    impl = M.StackMFFV2Method(M.SPEC.resolve({"weights": args.weights, "resolution": "full"}), device="cpu")
    print(f"StackMFF-V2 decision rules; input scaling {impl.p['normalise']!r}, context {impl.p['context']} px, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    best_r = calibrate(impl, args.size, args.quick)
    impl.p = dict(impl.p, smooth=best_r)
    print(f"\nchosen: smooth-argmax radius {best_r}")

    rows = []
    cases = synthetic_set(args.size, args.quick)
    conf_auc = {"peak": [], "entropy": []}
    for c in cases:
        s = make_case(c)
        lg, planes = logits_of(impl, s.stack.data, False)
        row = dict(c)
        for rule in RULES + ["expectation"]:
            if rule == "expectation":  # round(E - 1) without the official rescaling (not offered)
                maps = M.decide(lg, dict(impl.p, rule="official"))
                idx = np.clip(np.rint(maps["expectation"] - 1), 0, c["n_planes"] - 1).astype(np.int16)
            else:
                idx, maps = rule_index(lg, rule, impl.p)
            fused = M.gather(planes, idx)[..., 0]
            row[rule] = ((idx == s.index).mean(), (np.abs(idx - s.index) <= 1).mean(),
                         psnr(fused, s.all_in_focus, 60000))
        # confidence: does it rank right decisions (of the argmax rule) above wrong ones?
        idx, maps = rule_index(lg, "argmax", impl.p)
        prob = torch.softmax(lg, 0)
        ent = 1 + (prob * torch.log(prob.clamp_min(1e-12))).sum(0).numpy() / np.log(c["n_planes"])
        right = idx == s.index
        conf_auc["peak"].append(auc(maps["confidence"], right))
        conf_auc["entropy"].append(auc(ent, right))
        rows.append(row)

    allr = RULES + ["expectation"]
    print(f"\n### Synthetic stacks with ground truth ({len(rows)} stacks, {args.size}x{args.size}, uint16)\n")
    print("| scene | planes | blur step | depth span | " + " | ".join(f"{r} exact / ±1 / dB" for r in allr) + " |")
    print("|---|---|---|---|" + "---|" * len(allr))
    for row in rows:
        cells = [f"{row[r][0]:.3f} / {row[r][1]:.3f} / {row[r][2]:.2f}" for r in allr]
        span = "all" if row["span"] == (0.0, 1.0) else f"{row['span'][0]}-{row['span'][1]}"
        print(f"| {row['scene']} | {row['n_planes']} | {row['sigma_step']} | {span} | " + " | ".join(cells) + " |")
    print("\n### Summary over the synthetic stacks\n")
    print("| rule | exact index | within ±1 | fused PSNR (dB) | best PSNR on # stacks |")
    print("|---|---|---|---|---|")
    wins = {r: 0 for r in allr}
    for row in rows:
        wins[max(allr, key=lambda r: row[r][2])] += 1
    for r in allr:
        a = np.array([row[r] for row in rows])
        print(f"| {r} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.2f} | {wins[r]} |")
    groups = {"cells": lambda r: r["scene"] == "cells", "photo": lambda r: r["scene"] == "photo",
              "depth spans all planes": lambda r: r["span"] == (0.0, 1.0),
              "depth spans part of the planes": lambda r: r["span"] != (0.0, 1.0)}
    print("\n| subset (mean fused PSNR, dB) | " + " | ".join(allr) + " |")
    print("|---|" + "---|" * len(allr))
    for g, f in groups.items():
        sub = [row for row in rows if f(row)]
        if sub:
            print(f"| {g} ({len(sub)}) | " + " | ".join(f"{np.mean([row[r][2] for row in sub]):.2f}" for r in allr) + " |")
    print(f"\nconfidence AUC (right vs wrong argmax decisions): peak probability "
          f"{np.nanmean(conf_auc['peak']):.3f}, 1 - normalised entropy {np.nanmean(conf_auc['entropy']):.3f}")

    ref = SHARED / "reference" / "stackmff_v2_reference.npz"
    if ref.is_file():
        d = np.load(ref)
        print("\n### Reference stack of the spec (6 planes, camera, layered defocus)\n")
        print("| setting | " + " | ".join(f"{r} exact / dB" for r in RULES) + " |")
        print("|---|" + "---|" * len(RULES))
        for label, p in (("authors' scaling, no context", dict(normalise="dtype", context=0)),
                         ("method defaults", {})):
            im = M.StackMFFV2Method(M.SPEC.resolve({"weights": args.weights, "resolution": "full", **p}), device="cpu")
            im.p = dict(im.p, smooth=best_r)
            lg, planes = logits_of(im, d["stack"], False)
            cells = []
            for rule in RULES:
                idx, _ = rule_index(lg, rule, im.p)
                f = M.gather(planes, idx)[..., 0]
                cells.append(f"{(idx == d['true_depth_bins']).mean():.3f} / {psnr(f, d['gt'], 1.0):.2f}")
            print(f"| {label} | " + " | ".join(cells) + " |")

    scaling(args.size, args.quick, args.weights)
    if not args.no_real:
        real(impl, quick=args.quick)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def scaling(size, quick, weights="official"):
    """Input scaling: full-range uint16 vs the same stack as 12-bit data in uint16."""
    print("\n### Input scaling (normalise) on synthetic stacks: mean fused PSNR (dB) / exact index\n")
    print("| data | rule | normalise=range | normalise=dtype |")
    print("|---|---|---|---|")
    cases = [dict(scene=sc, n_planes=n, sigma_step=1.0, seed=500 + i, shape=(size, size))
             for i, (sc, n) in enumerate([("cells", 6), ("photo", 8), ("cells", 10), ("photo", 12)][: 2 if quick else 4])]
    for label, div in (("uint16, full range", 1), ("uint16 holding 12-bit data", 16)):
        for rule in ("official", "argmax"):
            res = {}
            for norm in ("range", "dtype"):
                im = M.StackMFFV2Method(M.SPEC.resolve({"weights": weights, "normalise": norm, "rule": rule,
                                                        "resolution": "full"}), device="cpu")
                vals = []
                for c in cases:
                    s = ne.sample_stack(**c)
                    data = (s.stack.data // div).astype(np.uint16)
                    lg, planes = logits_of(im, data, False)
                    idx, _ = rule_index(lg, rule, im.p)
                    vals.append((psnr(M.gather(planes, idx)[..., 0], s.all_in_focus // div, 60000 / div),
                                 (idx == s.index).mean()))
                res[norm] = np.mean(vals, axis=0)
            print(f"| {label} | {rule} | {res['range'][0]:.2f} / {res['range'][1]:.3f} | "
                  f"{res['dtype'][0]:.2f} / {res['dtype'][1]:.3f} |")


def real_stacks(quick=False, big=False):
    data = SHARED / "data"
    out = []

    def add(name, src, crop=None, axes=None):
        try:
            st = ne.open_stack(src, axes=axes) if axes else ne.open_stack(src)
        except Exception as e:  # noqa: BLE001
            print(f"skipping {name}: {e}", file=sys.stderr)
            return
        a = np.asarray(st.data)
        if crop is not None:
            y0, x0, h, w = crop
            a = a[:, y0 : y0 + h, x0 : x0 + w]
        out.append((name, a, st.rgb))

    add("epfl skeleton (3 planes, 116x170 RGB)", data / "epfl_edf_skeleton_zeiss" / "stack.tif")
    for k in range(1, 5 if not quick else 2):
        add(f"lytro-0{k} (3 planes, 520x520 RGB)", sorted((data / "lytro_triple_series").rglob(f"lytro-0{k}-*.jpg")))
    if not quick:
        add("cmcguinness (6 planes, 1141x1521 RGB)", data / "cmcguinness_focusstack")
        add("algae crop (5 planes, 1024x1024 RGB)", sorted((data / "algae_microscopy_5focal").glob("img_*.png")),
            crop=(1312, 2208, 1024, 1024))
        add("lightsheet crop (31 planes, 256x256 uint16)", data / "dfnn_lightsheet_microtubules_zstack",
            crop=(272, 128, 256, 256))
    if big:
        add("algae crop (5 planes, 2048x2048 RGB)", sorted((data / "algae_microscopy_5focal").glob("img_*.png")),
            crop=(800, 1696, 2048, 2048))
    return out


def real(impl, quick=False):
    print("\n### Real stacks (no ground truth): index agreement\n")
    others = [r for r in RULES if r != "official"]
    print("| stack | " + " | ".join(f"{r} vs official" for r in others) + " | official vs focus-select | "
          + " | ".join(f"{r} vs focus-select" for r in others) + " |")
    print("|---|" + "---|" * (2 * len(others) + 1))
    for name, a, rgb in real_stacks(quick):
        lg, planes = logits_of(impl, a, rgb)
        idx = {r: rule_index(lg, r, impl.p)[0] for r in RULES}
        fs = np.rint(ne.fuse(a, method="focus-select", tile=None).index).astype(np.int16)
        cells = [f"{(idx[r] == idx['official']).mean():.3f}" for r in others]
        cells.append(f"{(idx['official'] == fs).mean():.3f}")
        cells += [f"{(idx[r] == fs).mean():.3f}" for r in others]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
