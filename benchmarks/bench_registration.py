"""Registration before fusion on real, unregistered stacks, and on a synthetic stack with truth.

Real stacks: for each, fuse with a method (focus-select by default) without registration and after
registration (translation, similarity, ...), and print, on the area every run keeps (the
intersection of the registered runs' crop boxes):

* alignment: mean zero-shift normalised cross-correlation of band-passed neighbouring planes
  (higher: better aligned);
* the fused image's Tenengrad at full and at half resolution and its Laplacian energy (higher:
  sharper; note that misregistration *raises* these through seams, while resampling lowers them);
* the focus map's roughness: fraction of pixels off their 3x3 median (all pixels, and pixels whose
  confidence is over 0.7), and its total variation per pixel (lower: smoother);
* the registration's largest shift, scale range, largest residual shift and the time.

Synthetic: the built-in photo sample (16-bit, 8 planes, ground truth) with known per-plane shifts
and scales applied; PSNR of the fused image and focus-index accuracy against the truth.

    python benchmarks/bench_registration.py [--size 768] [--modes translation similarity affine]
        [--methods focus-select pyramid]

Data: ../shared/data/focus-stack_examples/depthmap (10 frames, 2048x1536, visibly shifted) and
../shared/data/cmcguinness_focusstack (6 frames, 1521x1141, small shifts); each is downscaled
(block mean) to at most --size pixels per side to keep the run short.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STACKS = {
    "depthmap": DATA / "focus-stack_examples" / "depthmap",
    "cmcguinness": DATA / "cmcguinness_focusstack",
}


def load(path: Path, size: int):
    """The stack downscaled by an integer block mean to at most ``size`` pixels per side (uint8 RGB)."""
    from skimage.transform import downscale_local_mean

    from napari_edof import api

    st = api.open_stack(path)
    a = np.asarray(st.data)  # (Z, Y, X, 3) uint8
    f = max(1, int(np.ceil(max(a.shape[1:3]) / size)))
    if f > 1:
        a = np.stack([downscale_local_mean(p, (f, f, 1)) for p in a])
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return api.as_stack(a, axes="ZYXC", rgb=True, name=path.name), f


def _guide(stack) -> np.ndarray:
    a = np.asarray(stack.data, np.float32)
    return a[..., :3].mean(-1) if stack.rgb else a


def compare(stack, modes=("translation", "similarity"), method="focus-select") -> list[dict]:
    """Rows of figures: one without registration, one per mode, all on the common crop box."""
    from skimage.transform import downscale_local_mean

    from napari_edof import api
    from napari_edof.core.quality import alignment, index_roughness, index_tv, laplacian_energy, tenengrad
    from napari_edof.core.registration import register_stack

    runs = []
    t0 = time.perf_counter()
    base = api.fuse(stack, method=method)
    runs.append(("none", stack, base, None, time.perf_counter() - t0))
    for m in modes:
        t0 = time.perf_counter()
        reg, rep = register_stack(stack, mode=m)
        r = api.fuse(reg, method=method)
        runs.append((m, reg, r, rep.as_dict(), time.perf_counter() - t0))
    Y, X = stack.yx_shape
    y0, y1, x0, x1 = 0, Y, 0, X
    for *_, rep, _ in runs:
        if rep and rep.get("crop_box"):
            b = rep["crop_box"]
            y0, y1, x0, x1 = max(y0, b[0]), min(y1, b[1]), max(x0, b[2]), min(x1, b[3])
    rows = []
    for name, st, r, rep, sec in runs:
        oy, ox = (rep["crop_box"][0], rep["crop_box"][2]) if rep and rep.get("crop_box") else (0, 0)
        sl = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        fused, idx, conf = np.asarray(r.fused)[sl], np.asarray(r.index)[sl], np.asarray(r.confidence)[sl]
        half = downscale_local_mean(np.asarray(fused, np.float64), (2, 2) + (1,) * (fused.ndim - 2))
        row = dict(register=name, alignment=alignment(_guide(st)[(slice(None),) + sl]),
                   tenengrad=tenengrad(fused), tenengrad_half=tenengrad(half), laplacian=laplacian_energy(fused),
                   roughness=index_roughness(idx), roughness_conf=index_roughness(idx, conf > 0.7),
                   tv=index_tv(idx), seconds=sec, area=f"{y1 - y0}x{x1 - x0}")
        if rep:
            pl = rep["planes"]
            row["max_shift"] = max(np.hypot(p["dy"], p["dx"]) for p in pl)
            row["scale_range"] = (min(p["scale"] for p in pl), max(p["scale"] for p in pl))
            row["max_residual"] = rep["max_residual"]
        rows.append(row)
    return rows


def shifted_sample(scale_step: float = 0.01, shift=(1.7, -1.1), n_planes: int = 8, size: int = 320, seed: int = 3):
    """The photo sample with plane k moved by ``(k - mid) * shift`` and magnified by
    ``1 + (k - mid) * scale_step`` about the centre (the middle plane is untouched)."""
    from scipy import ndimage as ndi

    from napari_edof import sample_stack
    from napari_edof.core.registration import _similarity_matrix

    s = sample_stack(n_planes=n_planes, shape=(size, size), scene="photo", seed=seed, dtype=np.uint16)
    st = np.asarray(s.stack.data, np.float32)
    mid = n_planes // 2
    c = (np.array(st.shape[1:], np.float64) - 1) / 2
    out = np.empty_like(st)
    for k in range(n_planes):
        M = _similarity_matrix(1 + scale_step * (k - mid), 0.0, np.array(shift) * (k - mid), c)
        out[k] = ndi.affine_transform(st[k], np.linalg.inv(M), order=3, mode="nearest")
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16), s


def synthetic_rows(modes=("translation", "similarity"), method="focus-select", margin: int = 30) -> list[dict]:
    from napari_edof import api

    rows = []
    for label, sc in (("shift", 0.0), ("shift + 1%/plane scale", 0.01)):
        data, s = shifted_sample(sc)
        Y, X = data.shape[1:]
        for reg in (None,) + tuple(modes):
            r = api.fuse(data, method=method, register=reg)
            y0, y1, x0, x1 = (r.provenance.get("registration") or {}).get("crop_box") or (0, Y, 0, X)
            m = margin
            aif = s.all_in_focus[y0:y1, x0:x1][m:-m, m:-m].astype(np.float64)
            gt = s.index[y0:y1, x0:x1][m:-m, m:-m]
            f = np.asarray(r.fused, np.float64)[m:-m, m:-m]
            idx = np.asarray(r.index)[m:-m, m:-m]
            mse = np.mean((f - aif) ** 2)
            rows.append(dict(case=label, register=reg or "none", psnr=10 * np.log10(60000.0**2 / mse),
                             accuracy=float((np.rint(idx) == gt).mean())))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--modes", nargs="+", default=["translation", "similarity"])
    ap.add_argument("--methods", nargs="+", default=["focus-select"])
    a = ap.parse_args(argv)
    print("Synthetic photo sample, 8 planes of 320x320, known motion (truth available)\n")
    print("| motion | register | PSNR vs truth (dB) | index accuracy |")
    print("|---|---|---:|---:|")
    for row in synthetic_rows(a.modes):
        print(f"| {row['case']} | {row['register']} | {row['psnr']:.2f} | {row['accuracy']:.3f} |", flush=True)
    if not DATA.is_dir():
        print(f"\nno real stacks at {DATA}", file=sys.stderr)
        return 0
    print("\nReal stacks\n")
    print("| stack | method | register | alignment | Tenengrad | Tenengrad 1/2 | Laplacian energy | rough (all) "
          "| rough (conf>0.7) | index TV | max shift px | scale range | max residual px | s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in STACKS.items():
        stack, f = load(path, a.size)
        for method in a.methods:
            for row in compare(stack, a.modes, method=method):
                sr = row.get("scale_range")
                print(f"| {name} ({stack.yx_shape[1]}x{stack.yx_shape[0]}, 1/{f}) | {method} | {row['register']} | "
                      f"{row['alignment']:.3f} | {row['tenengrad']:.0f} | {row['tenengrad_half']:.0f} | "
                      f"{row['laplacian']:.1f} | {row['roughness']:.4f} | {row['roughness_conf']:.4f} | "
                      f"{row['tv']:.4f} | {row.get('max_shift', 0):.2f} | "
                      f"{f'{sr[0]:.4f}..{sr[1]:.4f}' if sr else '-'} | {row.get('max_residual', 0):.2f} | "
                      f"{row['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
