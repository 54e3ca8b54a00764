"""VAEEDOF (pure latent and hybrid) against focus-select on held-out synthetic stacks with ground truth.

    NAPARI_EDOF_WEIGHTS=../shared/weights .venv/bin/python benchmarks/validate_vaeedof.py \
        [--count 10] [--crop 128] [--offset 0] [--threads 1] [--weights PATH] [--json out.json]

Three held-out sets (seeds 2024, 4048, 6072, plus ``--offset``; training uses seed 0), whole image (no tiling):

- ``microscopy``: :func:`napari_edof.training.datasets.validation_set` (cell- and vessel-like grey
  scenes, 6..12 planes, both defocus models, noise), float32 stacks in [0, 1];
- ``general``: every training scene kind, RGB, 2..10 planes, as uint8 (photographs' dtype);
- ``missing``: the ``general`` stacks with every other plane removed (planes 1, 3, 5, ...), so
  the content of the removed planes' depths is sharp in no remaining plane (the "missing
  information" case); the truth is still the full all-in-focus image.

Columns: PSNR and SSIM (napari_edof.metrics: luminance, data range of the dtype / 1 for floats)
against the clean all-in-focus image, averaged over stacks, for ``focus-select`` (defaults),
``vaeedof`` ``mode=latent`` and ``mode=hybrid`` (``long=sharpest`` and ``long=groups``), and
the autoencoder's own round trip of the truth (encode + decode: the ceiling of pure latent
fusion). ``--weights`` evaluates another U-Net file (e.g. an untrained one) in place of the
shipped weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _to8(a):
    """[0, 1] floats -> uint8."""
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)


def sets(count: int, crop: int, offset: int = 0) -> dict[str, list[dict]]:
    from napari_edof.training.datasets import DEFAULT_SCENES, StackDataset, validation_set

    micro = validation_set(seed=2024 + offset, count=count, crop=(crop, crop))
    for it in micro:
        it["truth"] = it["aif"]
    ds = StackDataset(seed=4048 + offset, crop=(crop, crop), n_range=(2, 10), rgb=True, scenes=dict(DEFAULT_SCENES),
                      augment=False)
    general = []
    for i in range(count):
        it = ds[i]
        general.append({"stack": _to8(it["stack"]), "truth": _to8(it["aif"]), "n": it["n"]})
    ds3 = StackDataset(seed=6072 + offset, crop=(crop, crop), n_range=(6, 10), rgb=True, scenes=dict(DEFAULT_SCENES),
                       augment=False)
    missing = []
    for i in range(count):
        it = ds3[i]
        missing.append({"stack": _to8(it["stack"][::2]), "truth": _to8(it["aif"]), "n": len(it["stack"][::2])})
    return {"microscopy": micro, "general": general, "missing": missing}


def roundtrip(truth: np.ndarray) -> np.ndarray:
    import torch

    from napari_edof.methods.vaeedof import get_models, scaling
    from napari_edof.nn.vaeedof import pad_multiple

    enc, dec, _ = get_models("cpu")
    lo, hi = scaling(truth[None], "auto")
    x = (truth.astype(np.float32) - lo) / (hi - lo)
    rgb = x[None] if x.ndim == 3 else np.repeat(x[None, None], 3, axis=1)
    if x.ndim == 3:
        rgb = rgb.transpose(0, 3, 1, 2)
    h, w = truth.shape[:2]
    with torch.inference_mode():
        y = dec(enc(pad_multiple(torch.from_numpy(np.ascontiguousarray(rgb)))))[0].clamp(0, 1)[:, :h, :w]
    y = y.permute(1, 2, 0).numpy()
    y = y if truth.ndim == 3 else y.mean(-1)
    y = y * (hi - lo) + lo
    if truth.dtype == np.uint8:
        y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(truth.dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="a U-Net state dict to use instead of the shipped one")
    ap.add_argument("--json", default=None)
    ap.add_argument("--sets", default="microscopy,general,missing")
    ap.add_argument("--offset", type=int, default=0, help="added to the three seeds (a fresh held-out draw)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import napari_edof as ne
    from napari_edof.methods import vaeedof as V
    from napari_edof.metrics import psnr, ssim

    if a.weights:
        enc, dec, net = V.get_models("cpu")
        sd = torch.load(a.weights, map_location="cpu", weights_only=True)
        net.load_state_dict(sd, strict=True)
    configs = {
        "focus-select": ("focus-select", {}),
        "vaeedof latent": ("vaeedof", {"mode": "latent"}),
        "vaeedof hybrid": ("vaeedof", {"mode": "hybrid"}),
        "vaeedof latent, groups": ("vaeedof", {"mode": "latent", "long": "groups"}),
        "vaeedof hybrid, groups": ("vaeedof", {"mode": "hybrid", "long": "groups"}),
    }
    data = sets(a.count, a.crop, a.offset)
    results: dict = {}
    for name in a.sets.split(","):
        stacks = data[name]
        rows = {}
        for label, (method, params) in list(configs.items()) + [("autoencoder round trip", (None, None))]:
            if label.endswith("groups") and max(it["n"] for it in stacks) <= 7:
                continue
            ps, ss, secs = [], [], 0.0
            for it in stacks:
                t0 = time.perf_counter()
                if method is None:
                    fused = roundtrip(it["truth"])
                else:
                    fused = ne.fuse(it["stack"], method=method, params=params, tile=None).fused
                secs += time.perf_counter() - t0
                dr = 255 if it["truth"].dtype == np.uint8 else 1.0
                ps.append(psnr(it["truth"], fused, data_range=dr))
                ss.append(ssim(it["truth"], fused, data_range=dr))
            rows[label] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "seconds": secs / len(stacks)}
            print(f"{name:11s} {label:26s} PSNR {rows[label]['psnr']:6.2f}  SSIM {rows[label]['ssim']:.4f}  "
                  f"{rows[label]['seconds']:.2f} s/stack", flush=True)
        results[name] = rows
    if a.json:
        Path(a.json).write_text(json.dumps({"count": a.count, "crop": a.crop, "weights": a.weights,
                                            "offset": a.offset, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
