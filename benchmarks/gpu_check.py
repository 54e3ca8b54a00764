"""The device checks, prepared for a session that is lent a GPU (one short run; not a test).

    python benchmarks/gpu_check.py [--device cuda] [--size 1024] [--planes 16] [--out gpu.json]

1. Every torch method through ``napari_edof.fuse`` on a synthetic uint16 stack on ``--device``:
   Mvoxel/s (second run, weights loaded) and agreement of the focus index with the same method on
   the CPU (the CPU run uses a 256 px crop so the check stays short).
   On CUDA also with one lane and with two (tiles at a time, one stream each: the default), and
   with ``precision="half"``: Mvoxel/s, whether the first-tile check kept half precision, and the
   share of the whole index equal to the float32 run's (a method whose index stays identical on
   real stacks may then declare ``half_precision=True`` in its spec).
3. The out-of-memory back-off: with the process capped at ~1.4 GB of device memory, a 2048 px
   tile of 16 planes cannot fit; the run is expected to shrink its tiles and finish (``--oom``;
   run it last, the cap stays for the process).

Prints one JSON object (also written to ``--out``). Runs on the CPU as well (``--device cpu``),
which is how the script itself was checked on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(HERE.parents[1] / "shared" / "weights"))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    fn()  # warm-up: weights, kernels
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--planes", type=int, default=16)
    ap.add_argument("--oom", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    import napari_edof as ne

    dev = args.device
    st = ne.sample_stack(n_planes=args.planes, shape=(args.size, args.size), seed=7, dtype=np.uint16).stack
    vox = float(np.prod(st.data.shape))
    report = {"device": dev, "torch": torch.__version__, "stack": list(st.data.shape), "methods": {}}
    if dev.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    crop = ne.Stack(np.ascontiguousarray(st.data[:, :256, :256]), "ZYX")
    from napari_edof.nn import accel

    for spec in ne.list_methods():
        if spec.backend != "torch":
            continue
        try:
            row = {}
            for n_lanes in (1, accel.CUDA_LANES) if dev.startswith("cuda") else (1,):
                lanes_before, accel.lanes = accel.lanes, (lambda d, n=n_lanes: n)
                try:
                    r, sec = timed(lambda: ne.fuse(st, method=spec.name, device=dev), dev)
                finally:
                    accel.lanes = lanes_before
                row[f"mvoxel_s_{n_lanes}_lanes"] = vox / sec / 1e6
            if "batch" in spec.defaults() and dev.startswith("cuda"):  # pair methods: auto (8) against 1
                _, sec_1 = timed(lambda: ne.fuse(st, method=spec.name, device=dev, params={"batch": 1}), dev)
                row["mvoxel_s_1_pair_per_call"] = vox / sec_1 / 1e6
            h, sec_h = timed(lambda: ne.fuse(st, method=spec.name, device=dev, precision="half"), dev)
            row.update(mvoxel_s_half=vox / sec_h / 1e6, half_kept=h.provenance["precision"] == "half",
                       half_first_tile=h.provenance.get("half_precision_check"),
                       # the criterion for MethodSpec.half_precision: the whole index, not one tile
                       half_index_identical=float((h.index == r.index).mean()))
            on_dev = ne.fuse(crop, method=spec.name, device=dev).index
            on_cpu = ne.fuse(crop, method=spec.name, device="cpu").index
            row["index_equal_to_cpu"] = float((on_dev == on_cpu).mean())
            report["methods"][spec.name] = row
        except Exception as e:  # noqa: BLE001 - report and go on
            report["methods"][spec.name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(spec.name, report["methods"][spec.name], file=sys.stderr, flush=True)

    if args.oom and dev.startswith("cuda"):
        # cap this process at ~1.4 GB of the device so that a 2048 px tile of 16 planes (about
        # 2 GB of stage-1 features alone) cannot fit and the engine has to shrink its tiles
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.4e9 / torch.cuda.get_device_properties(0).total_memory)
        big = ne.sample_stack(n_planes=16, shape=(2048, 2048), seed=1, dtype=np.uint16).stack
        try:
            r = ne.fuse(big, method="stackmff-v2", device=dev, tile=2048)
            report["oom_backoff"] = {"finished": True,
                                     "tile_sides_tried": r.provenance.get("out_of_memory_retries")}
        except Exception as e:  # noqa: BLE001
            report["oom_backoff"] = {"finished": False, "error": f"{type(e).__name__}: {e}"[:300]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
