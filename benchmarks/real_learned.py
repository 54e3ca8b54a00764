"""StackMFF-V2 with our weights on the real stacks: images, focus maps and no-reference metrics.

    python benchmarks/real_learned.py [--threads 2] [--out docs/images/learned] [--quick]

The real stacks in ``../shared/data`` have no ground truth, so the comparison shows the images and
focus maps (one PNG per stack under ``--out``: fused image with our weights, then the focus maps
of our weights + argmax, the official weights + the matched rule, and focus-select) and prints
a table: the share of pixels where our index equals focus-select's (within one plane), the
no-reference fusion metrics of ``napari_edof.metrics`` (Q^AB/F, NMI, FMI, Q_Y, Q_CB; higher is
better) and the seconds of each run (method defaults, default tiling; the machine may be shared).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))

from rules_stackmff_v2 import SHARED, real_stacks  # noqa: E402

import napari_edof as ne  # noqa: E402
from napari_edof.metrics import evaluate  # noqa: E402

RUNS = (
    ("stackmff-v2 ours + argmax", "stackmff-v2", {}),
    ("stackmff-v2 official + matched", "stackmff-v2", {"weights": "official", "rule": "matched"}),
    ("focus-select", "focus-select", {}),
)
METRICS = ("qabf", "nmi", "fmi", "qy", "qcb")


def more_stacks():
    data = SHARED / "data"
    out = []
    for name, src in (("johnnewto (12 planes, 1232x1640 RGB)", data / "johnnewto_focusstackpy"),
                      ("focus-stack pcb (7 planes, 1536x2048 RGB)", sorted((data / "focus-stack_examples" / "pcb")
                                                                          .glob("pcb_*.jpg")))):
        try:
            st = ne.open_stack(src)
        except Exception as e:  # noqa: BLE001
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        out.append((name, np.asarray(st.data), st.rgb))
    return out


def panel(path: Path, name: str, fused: np.ndarray, maps: dict[str, np.ndarray], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, int(np.ceil(max(fused.shape[:2]) / 480)))
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(4 * (1 + len(maps)), 4.4), constrained_layout=True)
    img = fused[::step, ::step]
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (0.5, 99.5))
        img = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0].set_title("fused (ours + argmax)", fontsize=10)
    for ax, (label, m) in zip(axes[1:], maps.items()):
        im = ax.imshow(m[::step, ::step], cmap="viridis", vmin=0, vmax=n - 1, interpolation="nearest")
        ax.set_title(f"focus map: {label}", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[-1], shrink=0.8, label="plane")
    fig.suptitle(name, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "images" / "learned"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    stacks = real_stacks(args.quick) + ([] if args.quick else more_stacks())
    print("| stack | run | index = focus-select | within ±1 | " + " | ".join(METRICS) + " | seconds |")
    print("|---|---|---|---|" + "---|" * len(METRICS) + "---|")
    for name, a, _rgb in stacks:
        res = {}
        for label, method, params in RUNS:
            t = time.perf_counter()
            res[label] = (ne.fuse(a, method=method, params=params), time.perf_counter() - t)
        fs = res["focus-select"][0].index
        for label, (r, sec) in res.items():
            m = evaluate(r.fused, a, metrics=METRICS)
            same = float((np.rint(r.index) == np.rint(fs)).mean())
            near = float((np.abs(r.index - fs) <= 1).mean())
            print(f"| {name} | {label} | {same:.3f} | {near:.3f} | "
                  + " | ".join(f"{m[k]:.3f}" for k in METRICS) + f" | {sec:.1f} |", flush=True)
        slug = name.split(" (")[0].replace(" ", "-")
        panel(Path(args.out) / f"{slug}.png", name, res[RUNS[0][0]][0].fused,
              {"ours + argmax": res[RUNS[0][0]][0].index, "official + matched": res[RUNS[1][0]][0].index,
               "focus-select": fs}, a.shape[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
