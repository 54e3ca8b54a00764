"""Crop sheets of the real stacks in ../shared/data: the default method beside the others, at 100%.

    python docs/make_crop_sheets.py [--peers ~/edof-peers] [--out docs/images/crops] [--work /tmp/edof-crops]
        [--stacks pcb,dfnn,...]

For each stack: the default (focus-fuse), pyramid, wavelet, StackMFF-V2 (ours) and the strongest
other tools of the quality benchmark (StackMFF-V3 with its authors' weights, and focusweave), run
on the same planes (large stacks cropped to a window first, the same window for every tool). Two
crops are chosen automatically from the default's own maps, so nobody picks flattering ones: the
flattest textured-free region (where blotches and noise show) and the strongest depth edge (where
halos and speckle show). Each crop is shown at 100% (then enlarged 2x, nearest, to be seen), with
each tool's focus-index map where it writes one: plane 0 dark to the last plane bright (viridis),
unknown (NaN, confidence 0) drawn in flat grey. The sheets are PNGs in ``--out``; the text beside
them in docs/benchmarks.md says what is seen.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

#: name -> (source, window (y0, x0, h, w) or None); EXTRA: crops named by hand, beside the automatic ones
EXTRA = {"pcb": {"barcode": (120, 180)}}
STACKS = {
    "pcb": ("focus-stack_examples/pcb/pcb_00[1-7].jpg", (0, 760, 768, 1024)),  # the barcode and the pins
    "dfnn": ("dfnn_lightsheet_microtubules_zstack/*.tif", None),
    "algae": ("algae_microscopy_5focal/img_*.png", (1400, 2000, 768, 1024)),
    "johnnewto": ("johnnewto_focusstackpy/image*.jpg", (200, 300, 768, 1024)),
    "cmcguinness": ("cmcguinness_focusstack/step*.jpg", None),
    "lytro-01": ("lytro_triple_series/triple_series/lytro-01-*.jpg", None),
    "epfl": ("epfl_edf_skeleton_zeiss/stack.tif", None),
}
OURS = ("focus-fuse", "pyramid", "wavelet", "stackmff-v2")
PEERS = {"StackMFF-V3": ("of_stackmffv3+depth", "ofd_stackmffv3", "ofd_stackmffv3_depth.png"),
         "focusweave": ("focusweave_noalign", "focusweave_noalign", None)}
CROP = 128


def load(name: str) -> np.ndarray:
    import napari_edof as ne

    src, win = STACKS[name]
    s = ne.open_stack(str(DATA / src))
    a = np.asarray(s.data)
    if s.axes.replace("C", "") != "ZYX":
        raise SystemExit(f"{name}: unexpected axes {s.axes}")
    if "C" in s.axes:
        a = np.moveaxis(a, s.axes.index("C"), -1)
    if win:
        y0, x0, h, w = win
        a = a[:, y0 : y0 + h, x0 : x0 + w]
    return np.ascontiguousarray(a)


def write_planes(a: np.ndarray, d: Path) -> None:
    import tifffile
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    if any(d.glob("plane_*")):
        return
    for k, p in enumerate(a):
        if a.dtype == np.uint16:
            tifffile.imwrite(d / f"plane_{k:02d}.tif", p)
        else:
            Image.fromarray(p).save(d / f"plane_{k:02d}.png")


def run_peers(planes: Path, out: Path, peers: Path) -> None:
    if (out / "results.json").exists():
        return
    only = "|".join("^" + v[0].replace("+", r"\+") + "$" for v in PEERS.values())
    subprocess.run([str(peers / "venv" / "bin" / "python"), str(peers / "run_peers.py"), str(planes), "--out", str(out),
                    "--only", only, "--timeout", "1800"], check=False, stdout=subprocess.DEVNULL)


def imread(p: Path) -> np.ndarray:
    import tifffile

    if p.suffix == ".tif":
        return tifffile.imread(p)
    from PIL import Image

    return np.asarray(Image.open(p))


def to_rgb8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    f = (np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-9)
    f = (np.clip(f, 0, 1) * 255).astype(np.uint8)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, -1)
    return f[..., :3]


def index_rgb(index: np.ndarray, n: int) -> np.ndarray:
    from matplotlib import colormaps

    idx = np.asarray(index, np.float64)
    rgb = (colormaps["viridis"](np.clip(np.nan_to_num(idx, nan=0) / max(n - 1, 1), 0, 1))[..., :3] * 255)
    rgb = rgb.astype(np.uint8)
    rgb[~np.isfinite(idx)] = 128
    return rgb


def choose_crops(fused: np.ndarray, index: np.ndarray, conf: np.ndarray) -> dict:
    """(y, x) of the flattest and of the strongest-depth-edge crop of the default's result."""
    from scipy import ndimage as ndi

    g = fused.astype(np.float64)
    g = g.mean(-1) if g.ndim == 3 else g
    H, W = g.shape
    s = min(CROP, H, W)
    m = ndi.uniform_filter(g, 15)
    var = ndi.uniform_filter(g * g, 15) - m * m
    idx = np.where(np.isfinite(index), index, np.nan)
    filled = np.where(np.isfinite(idx), idx, np.nanmedian(idx) if np.isfinite(idx).any() else 0)
    edge = np.hypot(ndi.sobel(ndi.median_filter(filled, 5), 0), ndi.sobel(ndi.median_filter(filled, 5), 1))
    edge *= np.clip(ndi.uniform_filter(var, 9) / (np.median(var) + 1e-9), 0, 4)  # where there is detail
    best = {}
    for key, score in (("flat", -ndi.uniform_filter(var, s // 2)), ("edge", ndi.uniform_filter(edge, s // 2))):
        sc = score[s // 2 : s // 2 + H - s + 1, s // 2 : s // 2 + W - s + 1]  # by top-left corner
        y, x = np.unravel_index(np.argmax(sc), sc.shape)
        best[key] = (int(y), int(x))
    return best, s


def sheet(name: str, a: np.ndarray, results: dict, out: Path) -> Path:
    from PIL import Image, ImageDraw

    n = a.shape[0]
    fused0, index0, conf0 = results["focus-fuse"]
    crops, c = choose_crops(fused0, index0, conf0)
    crops.update(EXTRA.get(name, {}))
    lo, hi = np.percentile(a[a.shape[0] // 2], [0.5, 99.5])
    rows = []
    labels = list(results)
    for key, (y, x) in crops.items():
        imgs, maps = [], []
        for t in labels:
            f, idx, _ = results[t]
            imgs.append(to_rgb8(f[y : y + c, x : x + c], lo, hi))
            maps.append(index_rgb(idx[y : y + c, x : x + c], n) if idx is not None
                        else np.full((c, c, 3), 255, np.uint8))
        rows.append((key, np.concatenate(imgs, 1), np.concatenate(maps, 1)))
    pad = 18
    W = rows[0][1].shape[1] * 2
    H = sum(2 * (r[1].shape[0] + r[2].shape[0]) + 2 * pad for r in rows) + pad
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    yy = 0
    for t_i, t in enumerate(labels):
        draw.text((t_i * c * 2 + 4, yy + 3), t, fill="black")
    yy += pad
    for key, im, mp in rows:
        draw.text((4, yy + 2), f"{key} crop at {crops[key]} (100%, shown 2x); below: focus index "
                               "(viridis, grey = unknown, white = not written)", fill="black")
        yy += pad
        for part in (im, mp):
            big = np.kron(part, np.ones((2, 2, 1), np.uint8))
            canvas.paste(Image.fromarray(big), (0, yy))
            yy += big.shape[0]
        yy += pad
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    canvas.save(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default=str(Path.home() / "edof-peers"))
    ap.add_argument("--out", default=str(HERE / "images" / "crops"))
    ap.add_argument("--work", default="/tmp/edof-crops")
    ap.add_argument("--stacks", default=",".join(STACKS))
    args = ap.parse_args(argv)

    import napari_edof as ne

    peers = Path(args.peers)
    for name in args.stacks.split(","):
        a = load(name)
        work = Path(args.work) / name
        write_planes(a, work / "planes")
        results = {}
        for m in OURS:
            r = ne.fuse(a, method=m)
            results[m] = (np.asarray(r.fused), np.asarray(r.index), np.asarray(r.confidence))
        if (peers / "run_peers.py").exists():
            run_peers(work / "planes", work / "peers", peers)
            ext = ".tif" if a.dtype == np.uint16 else ".png"
            for label, (_, stem, depth) in PEERS.items():
                f = work / "peers" / (stem + ext)
                if f.exists():
                    img = imread(f)
                    if img.ndim == 3 and a.ndim == 3:
                        img = img[..., 0]
                    idx = None
                    if depth and (work / "peers" / depth).exists():
                        d = imread(work / "peers" / depth).astype(np.float64)
                        idx = (d if d.ndim == 2 else d[..., 0]) / 255.0 * (a.shape[0] - 1)
                    results[label] = (img, idx, None)
        path = sheet(name, a, results, Path(args.out))
        print(f"{name}: {a.shape} {a.dtype} -> {path}; unknown share of the default's index "
              f"{float(np.isnan(results['focus-fuse'][1]).mean()):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
