"""StackMFF-V2 speed and memory: the official implementation's structure vs ours, same weights.

    python benchmarks/bench_stackmff_v2.py [--sizes 8x512x512,16x1024x1024] [--threads 2] [--repeat 2]

"official structure" re-creates how the authors' code (``network.py``, ``predict_one_stack.py``
of Xinzhe99/StackMFF-V2) runs the network, written anew for this benchmark: float32 NCHW under
``torch.no_grad()``, every plane through stage 1 at once with their forward (``F.max_pool2d``,
the attention bridge as they wrote it; our modules and parameters), the ConvGRU cell concatenating
``[x, h]`` and ``[x, r*h]`` at every step (from a zero state), both directions' hidden states
kept for the whole stack and summed into a stacked (B, N, 16, H, W) tensor, the channel max as a
``MaxPool3d`` over it, then the expectation + global min-max rule and advanced-index sampling;
whole image, after the authors' unconditional bilinear resize to multiples of 32 (sizes here
are multiples of 32, so it resamples to the same size). It runs with torch's default allocator
settings; ``official-thp`` adds the transparent huge pages that importing ``napari_edof.nn``
turns on for ours (``THP_MEM_ALLOC_ENABLE=1``), to show what they alone are worth.
"ours" is the registered method as a user runs it (``napari_edof.fuse``, whole image and the
default tiling) with the official rule and input scaling (``rule=official, normalise=dtype,
context=0``) so that outputs can be compared.

Each configuration runs in its own child process, which reads its peak resident memory
(``VmHWM`` in /proc/self/status) after the run, so peaks are not inherited. Input: a uint8
synthetic "photo" stack (scikit-image photographs, layered defocus). Throughput is
planes x height x width / seconds (best of --repeat runs, after one warm-up run on a small stack).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
WEIGHTS = SHARED / "weights" / "stackmff_v2_official.pth"


def vm(key: str) -> float:
    """A /proc/self/status figure in MiB (VmHWM: peak resident set, VmRSS: current)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------------
# the official structure (benchmark only)
# ------------------------------------------------------------------------------------------------
def official_structure():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from napari_edof.nn.stackmff_v2 import IntraLayer, clean_state_dict

    class Intra(IntraLayer):
        """The authors' ``FeatureExtraction.forward`` (same modules and parameters as ours, which
        reproduces the reference outputs): ``F.max_pool2d``, the attention bridge through
        ``AdaptiveAvgPool2d``, ``torch.max`` with indices and ``expand_as``, as they wrote it."""

        def __init__(self):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)

        def bridge(self, ts):
            conv = self.scab.satt.shared_conv2d
            sp = [conv(torch.cat([torch.mean(t, dim=1, keepdim=True), torch.max(t, dim=1, keepdim=True)[0]],
                                 dim=1)) for t in ts]
            ts_ = [a * t for a, t in zip(sp, ts)]
            mixed = [a + t for a, t in zip(ts_, ts)]
            ca = self.scab.catt
            att = torch.cat([self.avgpool(t) for t in mixed], dim=1)
            att = ca.get_all_att(att.squeeze(-1).transpose(-1, -2))
            outs = []
            for i, t in enumerate(mixed, 1):
                a = torch.sigmoid(getattr(ca, f"att{i}")(att)).transpose(-1, -2).unsqueeze(-1).expand_as(t)
                outs.append(a * t)
            return [o + r for o, r in zip(outs, ts_)]

        def forward(self, x):
            skips, out = [], x
            for k in range(1, 6):
                out = F.gelu(F.max_pool2d(getattr(self, f"ebn{k}")(getattr(self, f"encoder{k}")(out)), 2, 2))
                skips.append(out)
            skips = self.bridge(skips)
            out = F.gelu(self.encoder6(out))
            out = torch.add(F.gelu(self.dbn1(self.decoder1(out))), skips[4])
            for k in range(2, 6):
                y = getattr(self, f"dbn{k}")(getattr(self, f"decoder{k}")(out))
                out = torch.add(F.gelu(F.interpolate(y, scale_factor=(2, 2), mode="bilinear", align_corners=True)),
                                skips[5 - k])
            out = F.interpolate(self.final(out), scale_factor=(2, 2), mode="bilinear", align_corners=True)
            return torch.sigmoid(out)

    class Cell(nn.Module):
        def __init__(self, cin=8, hid=16):
            super().__init__()
            self.hid = hid
            self.conv_gates = nn.Conv2d(cin + hid, 2 * hid, 3, padding=1)
            self.conv_can = nn.Conv2d(cin + hid, hid, 3, padding=1)

        def forward(self, x, h):
            g = self.conv_gates(torch.cat([x, h], dim=1))
            gamma, beta = torch.split(g, self.hid, dim=1)
            r, z = torch.sigmoid(gamma), torch.sigmoid(beta)
            cand = torch.tanh(self.conv_can(torch.cat([x, r * h], dim=1)))
            return (1 - z) * h + z * cand

    class BiGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.forward_cell_list = nn.ModuleList([Cell()])
            self.backward_cell_list = nn.ModuleList([Cell()])

        def forward(self, x):  # (B, N, C, H, W)
            B, N, C, H, W = x.shape
            h = torch.zeros(B, 16, H, W)
            fwd = []
            for t in range(N):
                h = self.forward_cell_list[0](x[:, t], h)
                fwd.append(h)
            h = torch.zeros(B, 16, H, W)
            bwd = []
            for t in range(N - 1, -1, -1):
                h = self.backward_cell_list[0](x[:, t], h)
                bwd.insert(0, h)
            return torch.stack([fwd[t] + bwd[t] for t in range(N)], dim=1)

    class Inter(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_interaction_depth = BiGRU()
            self.pool = nn.MaxPool3d(kernel_size=(16, 1, 1), stride=(16, 1, 1))  # max over the 16 channels

        def forward(self, x):
            B, N, C, H, W = x.shape
            return self.pool(self.layer_interaction_depth(x)).view(B, N, H, W)

    class Official(nn.Module):
        def __init__(self):
            super().__init__()
            self.feature_extraction = Intra()
            self.layer_interaction = Inter()

        def forward(self, x):  # (B, N, H, W) in [0, 1]
            B, N, H, W = x.shape
            # the authors resize to multiples of 32 unconditionally (here a same-size resample)
            x = F.interpolate(x, size=(-(-H // 32) * 32, -(-W // 32) * 32), mode="bilinear", align_corners=False)
            f = self.feature_extraction(x.view(B * N, 1, H, W)).view(B, N, 8, H, W)
            logits = self.layer_interaction(f)
            p = torch.softmax(logits, dim=1)
            e = torch.sum(p * torch.arange(1, N + 1, dtype=x.dtype).view(1, N, 1, 1), dim=1, keepdim=True)
            dm = (e - e.min()) / (e.max() - e.min())
            idx = torch.clamp(torch.round((dm[:, 0] * (N - 1)).clamp(0, N - 1)).long(), 0, N - 1)
            bi = torch.arange(B).view(-1, 1, 1).expand(-1, H, W)
            hi = torch.arange(H).view(1, -1, 1).expand(B, -1, W)
            wi = torch.arange(W).view(1, 1, -1).expand(B, H, -1)
            return x[bi, idx, hi, wi][:, None], idx

    m = Official()
    m.load_state_dict(clean_state_dict(torch.load(str(WEIGHTS), map_location="cpu", weights_only=True)), strict=True)
    return m.eval()


def run_official(stack_u8):
    import torch

    m = official_structure()
    x = torch.from_numpy(stack_u8.astype(np.float32) / 255.0)[None]
    with torch.no_grad():
        fused, idx = m(x)
    fused = np.rint(fused[0, 0].numpy() * 255).astype(np.uint8)
    return fused, idx[0].numpy().astype(np.int16)


def run_ours(stack_u8, tile):
    import napari_edof as ne

    r = ne.fuse(stack_u8, method="stackmff-v2", tile=tile,
                params={"weights": "official", "rule": "official", "normalise": "dtype", "context": 0})
    return r.fused, r.index.astype(np.int16)


# ------------------------------------------------------------------------------------------------
def child(args):
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NAPARI_EDOF_WEIGHTS", str(WEIGHTS.parent))
    stack = np.load(args.child_input)
    tile = None if args.tile in ("none", "0") else ("auto" if args.tile == "auto" else int(args.tile))
    run = (lambda s: run_official(s)) if args.impl == "official" else (lambda s: run_ours(s, tile))
    run(stack[:, :64, :64])  # warm-up (weights, allocator, one-time kernels)
    rss0 = vm("VmRSS")
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fused, idx = run(stack)
        best = min(best, time.perf_counter() - t0)
    np.save(args.child_output, np.stack([fused.astype(np.int16), idx]))
    print(json.dumps({"seconds": best, "peak_mib": vm("VmHWM"), "rss_before_mib": rss0}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8x512x512,16x1024x1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--impls", default="official,ours-whole,ours-tiled")
    ap.add_argument("--child-input")
    ap.add_argument("--child-output")
    ap.add_argument("--impl")
    ap.add_argument("--tile", default="none")
    args = ap.parse_args(argv)
    if args.child_input:
        return child(args)
    import torch

    import napari_edof as ne

    if not WEIGHTS.is_file():
        sys.exit(f"official weights not found at {WEIGHTS}")
    print(f"StackMFF-V2 speed: torch {torch.__version__}, {args.threads} thread(s), "
          f"mkldnn {torch.backends.mkldnn.is_available()}, {os.cpu_count()} CPU(s) visible")
    # (implementation, tile, THP_MEM_ALLOC_ENABLE): the authors' code runs with torch's defaults
    # (no huge pages); importing napari_edof.nn turns them on for ours unless the variable is set.
    # "official-thp" gives the authors' structure huge pages too, to show what they are worth.
    impls = {"official": ("official", "none", "0"), "official-thp": ("official", "none", "1"),
             "ours-whole": ("ours", "none", None), "ours-tiled": ("ours", "auto", None),
             "ours-default": ("ours", "auto", None)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            n, h, w = (int(v) for v in size.split("x"))
            s = ne.sample_stack(n_planes=n, shape=(h, w), dtype=np.uint8, scene="photo", seed=n)
            inp = Path(tmp) / f"{size}.npy"
            np.save(inp, np.asarray(s.stack.data))
            outs = {}
            for name in args.impls.split(","):
                impl, tile, thp = impls[name]
                env = dict(os.environ)
                env.pop("THP_MEM_ALLOC_ENABLE", None)
                if thp is not None:
                    env["THP_MEM_ALLOC_ENABLE"] = thp
                outp = Path(tmp) / f"{size}-{name}.npy"
                cmd = [sys.executable, __file__, "--child-input", str(inp), "--child-output", str(outp),
                       "--impl", impl, "--tile", tile, "--threads", str(args.threads), "--repeat", str(args.repeat)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode:
                    print(f"{name} {size} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                outs[name] = np.load(outp)
                r.update(name=name, size=size, mvox=n * h * w / 1e6 / r["seconds"])
                rows.append(r)
                print(f"  {size} {name}: {r['seconds']:.2f} s, {r['mvox']:.2f} Mvoxel/s, peak {r['peak_mib']:.0f} MiB",
                      flush=True)
            for r in rows:
                if r["size"] == size and "official" in outs and r["name"] in outs:
                    a, b = outs["official"], outs[r["name"]]
                    r["agree"] = float((a[1] == b[1]).mean())
                    r["differ"] = int((a[1] != b[1]).sum())
                    mse = np.mean((a[0].astype(np.float64) - b[0]) ** 2)
                    r["psnr"] = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    base = {r["size"]: r["mvox"] for r in rows if r["name"] == "official"}
    print("\n| stack (planes x H x W) | implementation | seconds | Mvoxel/s | speed-up | peak RSS (MiB) "
          "| RSS before run (MiB) | index = official (pixels differing) | fused PSNR vs official (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp = r["mvox"] / base[r["size"]] if r["size"] in base else float("nan")
        print(f"| {r['size']} | {r['name']} | {r['seconds']:.2f} | {r['mvox']:.2f} | {sp:.2f}x | {r['peak_mib']:.0f} "
              f"| {r['rss_before_mib']:.0f} | {r.get('agree', float('nan')):.4f} ({r.get('differ', '-')}) "
              f"| {r.get('psnr', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
