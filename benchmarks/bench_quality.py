"""Fusion quality on realistic stacks, our methods beside the other tools, in one run.

    python benchmarks/bench_quality.py [--out /tmp/edof-quality] [--peers ~/edof-peers]
        [--per-class 4] [--size 1] [--methods focus-select,pyramid,wavelet,stackmff-v2]
        [--peer-only REGEX] [--rerun-peers] [--no-peers] [--json out.json]

The stacks come from :mod:`napari_edof.training.realistic` (continuous thin-lens defocus,
occlusion, flat and faint regions, Poisson-Gaussian noise; fixed seeds): ``per-class`` stacks for
each noise level (strong / moderate / weak) x colour (grey / RGB) class, written as plane files with
their truth (``gt``, ``depth_bins.npy`` = the continuous true plane coordinate). The other tools run
through ``../shared/peers/run_peers.py`` (install it with ``bash ../shared/peers/install.sh
~/edof-peers``); their outputs are kept, so a second run with ``--methods`` re-measures only ours
(``--rerun-peers`` runs them again).

Every tool's output is scored here by the same code: PSNR and SSIM against the all-in-focus truth
on [0, 1] floats (the dtype's range; scikit-image, as the peers' harness does), and the index error
in planes (mean |index - true index|) over the *informative* pixels (enough local contrast for a
plane to be decidable; NaN or unknown pixels are filled from the nearest known pixel first), for
the tools that write a depth map. Per class and overall: the mean; per stack: everything, in the
JSON. The figures in docs/benchmarks.md come from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

#: The peers (names in run_peers.py) and the files they write: (fused, depth, depth kind).
PEERS = {
    "naive_lap": ("naive_lap{ext}", "naive_lap_depth.png", "index"),
    "enfuse_les0.3": ("enfuse_les.tif", None, None),
    "focus-stack": ("focus-stack.png", "focus-stack_depth.png", "focus-stack"),
    "focusweave_noalign": ("focusweave_noalign{ext}", None, None),
    "of_stackmffv3+depth": ("ofd_stackmffv3{ext}", "ofd_stackmffv3_depth.png", "openfocus"),
    "of_stackmffv2+depth": ("ofd_stackmffv2{ext}", "ofd_stackmffv2_depth.png", "openfocus"),
    "of_gfgfgf+depth": ("ofd_gfgfgf{ext}", "ofd_gfgfgf_depth.png", "openfocus"),
    "of_openfocus_c+depth": ("ofd_openfocus_c{ext}", "ofd_openfocus_c_depth.png", "openfocus"),
    "of_dtcwt+depth": ("ofd_dtcwt{ext}", "ofd_dtcwt_depth.png", "openfocus"),
}
PEER_LABEL = {"naive_lap": "naive argmax", "enfuse_les0.3": "enfuse (LoG 0.3)", "focus-stack": "focus-stack",
              "focusweave_noalign": "focusweave", "of_stackmffv3+depth": "StackMFF-V3",
              "of_stackmffv2+depth": "StackMFF-V2 (openfocus)", "of_gfgfgf+depth": "GFG-FGF",
              "of_openfocus_c+depth": "openfocus C", "of_dtcwt+depth": "DTCWT"}


def imread(p: Path) -> np.ndarray:
    import tifffile

    if p.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(p)
    from PIL import Image

    return np.asarray(Image.open(p))


def write_stack(s, d: Path) -> None:
    """Plane files, truth and metadata of one stack (skipped when already there)."""
    import tifffile
    from PIL import Image

    if (d / "meta.json").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    ext = ".tif" if s.planes.dtype == np.uint16 else ".png"
    for k, p in enumerate(s.planes):
        if ext == ".tif":
            tifffile.imwrite(d / f"plane_{k:02d}.tif", p)
        else:
            Image.fromarray(p).save(d / f"plane_{k:02d}.png")
    if ext == ".tif":
        tifffile.imwrite(d / "gt.tif", s.truth)
    else:
        Image.fromarray(s.truth).save(d / "gt.png")
    np.save(d / "depth_bins.npy", s.index)
    np.save(d / "informative.npy", s.informative)
    (d / "meta.json").write_text(json.dumps(s.meta, indent=1))


def load_stack(d: Path):
    planes = sorted(p for p in d.iterdir() if p.name.startswith("plane_"))
    stack = np.stack([imread(p) for p in planes])
    gt = imread(next(p for p in (d / "gt.tif", d / "gt.png") if p.exists()))
    return stack, gt, np.load(d / "depth_bins.npy"), np.load(d / "informative.npy"), json.loads(
        (d / "meta.json").read_text())


def to_unit(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    return a.astype(np.float64)


def image_scores(fused: np.ndarray, gt: np.ndarray) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    f, g = to_unit(fused), to_unit(gt)
    if f.ndim == 3 and f.shape[-1] in (2, 4):  # alpha dropped
        f = f[..., :-1]
    if f.ndim == 3 and f.shape[-1] == 1:
        f = f[..., 0]
    if g.ndim == 2 and f.ndim == 3:
        f = f.mean(-1)
    if g.ndim == 3 and f.ndim == 2:
        f = np.repeat(f[..., None], 3, -1)
    if f.shape != g.shape:
        return {"psnr": None, "ssim": None, "note": f"shape {f.shape} vs truth {g.shape}"}
    f = np.clip(f, 0, 1)
    return {"psnr": float(peak_signal_noise_ratio(g, f, data_range=1.0)),
            "ssim": float(structural_similarity(g, f, data_range=1.0, channel_axis=-1 if g.ndim == 3 else None))}


def index_scores(index: np.ndarray, truth: np.ndarray, informative: np.ndarray) -> dict:
    """Mean |index - truth| in planes over the informative pixels (unknown pixels filled from
    the nearest known one), the share within half a plane, and the share of unknown pixels."""
    from scipy import ndimage as ndi

    idx = np.asarray(index, np.float64)
    if idx.shape != truth.shape:
        return {"index_mae": None}
    unknown = ~np.isfinite(idx)
    if unknown.all():
        return {"index_mae": None, "unknown": 1.0}
    if unknown.any():
        iy, ix = ndi.distance_transform_edt(unknown, return_distances=False, return_indices=True)
        idx = idx[iy, ix]
    err = np.abs(idx - truth)[informative]
    return {"index_mae": float(err.mean()), "index_within_half": float((err < 0.5).mean()),
            "unknown": float(unknown.mean())}


def decode_depth(kind: str, a: np.ndarray, n: int) -> np.ndarray:
    """A peer's depth image as plane coordinates (the conventions of run_peers.py)."""
    a = a.astype(np.float64)
    a = a if a.ndim == 2 else a[..., 0]
    if kind == "index":
        return a
    if kind == "focus-stack":
        scaler = 255.0 / n if n - 1 < 254 else 254.0 / (n - 1)
        offset = scaler if n - 1 < 254 else 1.0
        return np.clip((a - offset) / scaler, 0, n - 1)
    if kind == "openfocus":
        return a / 255.0 * (n - 1)
    raise ValueError(kind)


def run_peers(stack_dir: Path, out: Path, peers_dir: Path, regex: str, rerun: bool) -> None:
    done = set()
    res = out / "results.json"
    if res.exists() and not rerun:
        done = {r["method"] for r in json.loads(res.read_text()) if r.get("status") == "ok"}
    todo = [p for p in PEERS if re.search(regex, p) and p not in done]
    if not todo:
        return
    only = "|".join("^" + re.escape(p) + "$" for p in todo)
    cmd = [str(peers_dir / "venv" / "bin" / "python"), str(peers_dir / "run_peers.py"), str(stack_dir),
           "--out", str(out), "--only", only, "--timeout", "900"]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)


def peer_scores(name: str, out: Path, ext: str, gt, truth_idx, informative, n: int) -> dict | None:
    fused_f, depth_f, kind = PEERS[name]
    f = out / fused_f.format(ext=ext)
    if not f.exists():
        return None
    row = image_scores(imread(f), gt)
    res = out / "results.json"
    if res.exists():
        for r in json.loads(res.read_text()):
            if r["method"] == name:
                row["wall_s"] = r.get("wall_s")
    if depth_f and (out / depth_f).exists():
        row.update(index_scores(decode_depth(kind, imread(out / depth_f), n), truth_idx, informative))
    return row


def our_scores(method: str, stack, gt, truth_idx, informative, params=None) -> tuple[dict, object]:
    import napari_edof as ne

    t0 = time.perf_counter()
    r = ne.fuse(stack, method=method, params=params or {})
    row = {"wall_s": time.perf_counter() - t0}
    row.update(image_scores(np.asarray(r.fused), gt))
    row.update(index_scores(np.asarray(r.index), truth_idx, informative))
    return row, r


def summarise(rows: dict, classes: dict) -> list[str]:
    """Markdown: per class and overall, mean PSNR / SSIM / index error per tool."""
    tools = sorted({t for per in rows.values() for t in per})
    lines = []
    groups = dict(classes)
    groups["all"] = sorted(rows)
    for key in ("psnr", "ssim", "index_mae"):
        title = {"psnr": "PSNR dB (mean)", "ssim": "SSIM (mean)",
                 "index_mae": "index error, planes (mean, informative pixels)"}[key]
        lines += [f"#### {title}", "", "| tool | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        order = sorted(tools, key=lambda t: -np.nanmean([rows[s][t].get("psnr") or np.nan
                                                          for s in rows if t in rows[s]]))
        for t in order:
            cells = []
            for members in groups.values():
                v = [rows[s][t].get(key) for s in members if t in rows[s] and rows[s][t].get(key) is not None]
                fmt = "{:.4f}" if key == "ssim" else "{:.2f}"
                cells.append("" if len(v) < len(members) else fmt.format(np.mean(v)))
            if any(cells):
                lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/edof-quality")
    ap.add_argument("--peers", default=str(Path.home() / "edof-peers"))
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--size", type=int, default=1)
    ap.add_argument("--methods", default="focus-select,pyramid,wavelet,stackmff-v2")
    ap.add_argument("--params", default="", help="extra params for the first method: k=v,k=v (a variant)")
    ap.add_argument("--peer-only", default=".", help="regex on the peers' names")
    ap.add_argument("--rerun-peers", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--stacks", default="", help="regex on stack names")
    ap.add_argument("--save", action="store_true", help="keep our outputs (fused, index) as .npy")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from napari_edof.training.realistic import benchmark_configs, render

    torch.set_num_threads(2)
    root = Path(args.out)
    cfgs = [c for c in benchmark_configs(args.per_class, size=args.size) if re.search(args.stacks or ".", c.label)]
    peers_dir = Path(args.peers)
    have_peers = (peers_dir / "run_peers.py").exists() and not args.no_peers
    if not have_peers and not args.no_peers:
        print(f"peers not found in {peers_dir}: run bash ../shared/peers/install.sh {peers_dir}", file=sys.stderr)
    methods = [m for m in args.methods.split(",") if m]
    variant = dict(kv.split("=", 1) for kv in args.params.split(",") if kv)
    rows, classes = {}, {}
    for c in cfgs:
        d = root / "stacks" / c.label
        if not (d / "meta.json").exists():
            write_stack(render(c), d)
        stack, gt, tidx, inf, meta = load_stack(d)
        n = stack.shape[0]
        ext = ".tif" if stack.dtype == np.uint16 else ".png"
        per = rows[c.label] = {}
        classes.setdefault(f"{c.noise} {c.colour}", []).append(c.label)
        if have_peers:
            pout = root / "peers" / c.label
            run_peers(d, pout, peers_dir, args.peer_only, args.rerun_peers)
            for p in PEERS:
                if re.search(args.peer_only, p):
                    sc = peer_scores(p, pout, ext, gt, tidx, inf, n)
                    if sc is not None:
                        per[PEER_LABEL[p]] = sc
        for i, m in enumerate(methods):
            sc, r = our_scores(m, stack, gt, tidx, inf, variant if i == 0 else None)
            per["ours: " + m + (f" ({args.params})" if i == 0 and args.params else "")] = sc
            if args.save:
                sd = root / "ours" / c.label
                sd.mkdir(parents=True, exist_ok=True)
                np.save(sd / f"{m}_fused.npy", np.asarray(r.fused))
                np.save(sd / f"{m}_index.npy", np.asarray(r.index))
                np.save(sd / f"{m}_confidence.npy", np.asarray(r.confidence))
        best = max(per.items(), key=lambda kv: kv[1].get("psnr") or -1)
        print(f"{c.label:34s} N={n:2d} {stack.shape[1]}x{stack.shape[2]} photons={meta['photons']:.0f}: "
              + ", ".join(f"{t}={v['psnr']:.2f}" for t, v in per.items() if v.get("psnr") is not None)
              + f"  [best {best[0]}]", flush=True)
    lines = summarise(rows, classes)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "classes": classes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
