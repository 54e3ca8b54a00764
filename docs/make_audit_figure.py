"""The audit figure of docs/retina_vae.md: where vaeedof invented pixels on a real micrograph.

    python docs/make_audit_figure.py [--out docs/images/audit-vaeedof.png] [--window Y0,X0,H,W]

A 256 x 256 window of the algae brightfield stack (../shared/data/algae_microscopy_5focal, MIT;
5 planes, 8-bit RGB; by default the most textured one, on a 128-pixel grid, of the crop sheets'
window: the highest spread of the Laplacian of the planes' brightest luminance), fused by
vaeedof in its two modes (hybrid, the default, and latent) and by focus-select with a hard
selection (``blend=0``) as the reference a pure selection gives. Each row: the fused image, the
audit distance (magma, one scale for every row: 0 black) and the fused image with the audit
mask in magenta (values outside every plane's 3 x 3 local range). Prints the numbers the docs
quote. Needs the TAEF2 weights in ../shared/weights (or the cache).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

STACK = "algae_microscopy_5focal/img_*.png"
SHEET = (1400, 2000, 768, 1024)  # y0, x0, h, w: the window of docs/make_crop_sheets.py
SIDE = 256
RUNS = (("vaeedof hybrid (default)", "vaeedof", {}),
        ("vaeedof latent", "vaeedof", {"mode": "latent"}),
        ("focus-select, blend=0 (a pure selection)", "focus-select", {"blend": 0}))


def load(window) -> tuple[np.ndarray, tuple]:
    """The planes of ``window`` (y0, x0, h, w; None: the most textured SIDE x SIDE block of SHEET)."""
    from scipy import ndimage as ndi

    import napari_edof as ne

    s = ne.open_stack(str(DATA / STACK))
    if s.axes != "ZYXC":
        raise SystemExit(f"unexpected axes {s.axes}")
    if window is None:
        y0, x0, h, w = SHEET
        lum = np.asarray(s.data[:, y0:y0 + h, x0:x0 + w]).mean(axis=-1).max(axis=0)
        score = {(y, x): ndi.laplace(lum[y:y + SIDE, x:x + SIDE]).std()
                 for y in range(0, h - SIDE + 1, SIDE // 2) for x in range(0, w - SIDE + 1, SIDE // 2)}
        y, x = max(score, key=score.get)
        window = (y0 + y, x0 + x, SIDE, SIDE)
    y0, x0, h, w = window
    return np.ascontiguousarray(np.asarray(s.data[:, y0:y0 + h, x0:x0 + w])), window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "images" / "audit-vaeedof.png"))
    ap.add_argument("--window", default=None, help="Y0,X0,H,W (default: chosen as the docstring says)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import napari_edof as ne

    planes, window = load(None if args.window is None else tuple(int(v) for v in args.window.split(",")))
    print(f"window (y0, x0, h, w) = {window}")
    results = []
    for label, method, params in RUNS:
        r = ne.fuse(planes, method=method, params=params, audit=True)
        a = r.provenance["audit"]
        print(f"{label}: {100 * a['outside_fraction']:.2f}% of pixels flagged ({a['outside_pixels']}), "
              f"largest distance {a['max_distance']:.0f}, mean {a['mean_distance']:.2f}, "
              f"non-zero at {100 * float((r.audit > 0).mean()):.1f}% of pixels")
        results.append((label, r))
    top = max(float(r.audit.max()) for _, r in results) or 1.0
    fig, axes = plt.subplots(len(results), 3, figsize=(9, 3.1 * len(results)), dpi=80)
    for row, (label, r) in zip(axes, results):
        a = r.provenance["audit"]
        over = r.fused.copy()
        over[r.audit_mask] = (255, 0, 255)
        row[0].imshow(r.fused)
        row[0].set_title(label, fontsize=9)
        im = row[1].imshow(r.audit, cmap="magma", vmin=0, vmax=top)
        row[1].set_title(f"audit: distance from the nearest source value\nmax {a['max_distance']:.0f}, "
                         f"mean {a['mean_distance']:.2f} (8-bit units)", fontsize=9)
        row[2].imshow(over)
        row[2].set_title(f"audit mask (magenta): {100 * a['outside_fraction']:.2f}% outside\n"
                         "every plane's 3 x 3 local range", fontsize=9)
        for ax in row:
            ax.set_axis_off()
        fig.colorbar(im, ax=row[1], fraction=0.046, pad=0.02)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
