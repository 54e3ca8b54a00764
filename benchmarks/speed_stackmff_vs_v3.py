"""Whole-process time: ``napari-edof fuse --method stackmff-v2`` against StackMFF-V3 (openfocus, via
the peers' runner), on the quality benchmark's stacks, alternating, in one run.

    python benchmarks/speed_stackmff_vs_v3.py [--out /tmp/edof-quality] [--peers ~/edof-peers]
        [--stacks REGEX] [--repeats 1] [--params compose=pyramid]

Ours: the CLI as a user runs it (``napari-edof fuse PLANES... -m stackmff-v2 -o DIR``), timed with
``/usr/bin/time`` (wall, user + sys CPU of the process). StackMFF-V3: ``run_peers.py --only
of_stackmffv3+depth`` (its own ``/usr/bin/time -v`` of the openfocus process: wall, user, sys; the
runner's staging is not counted). The stacks must have been written by ``bench_quality.py``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ours(stack: Path, params: str) -> dict:
    planes = sorted(str(p) for p in stack.iterdir() if p.name.startswith("plane_"))
    exe = Path(sys.executable).with_name("napari-edof")
    with tempfile.TemporaryDirectory() as d:
        cmd = ["/usr/bin/time", "-f", "%e %U %S", str(exe), "fuse", "-q", *planes, "-m", "stackmff-v2",
               "-o", d]
        for kv in (params.split(",") if params else []):
            cmd += ["-p", kv]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"napari-edof fuse failed: {r.stderr[-2000:]}")
        wall, user, sys_ = (float(x) for x in r.stderr.strip().splitlines()[-1].split())
    return {"wall_s": wall, "cpu_s": user + sys_}


def v3(stack: Path, peers: Path) -> dict:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([str(peers / "venv" / "bin" / "python"), str(peers / "run_peers.py"), str(stack), "--out", d,
                        "--only", r"^of_stackmffv3\+depth$", "--timeout", "900"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = json.loads((Path(d) / "results.json").read_text())[0]
    return {"wall_s": res["wall_s"], "cpu_s": (res.get("user_s") or 0) + (res.get("sys_s") or 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/edof-quality")
    ap.add_argument("--peers", default=str(Path.home() / "edof-peers"))
    ap.add_argument("--stacks", default=".")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--params", default="")
    args = ap.parse_args(argv)
    stacks = sorted(d for d in (Path(args.out) / "stacks").iterdir() if re.search(args.stacks, d.name))
    tot = {"ours": [0.0, 0.0], "v3": [0.0, 0.0]}
    print("| stack | ours wall s | ours CPU s | V3 wall s | V3 CPU s | CPU ratio V3/ours |")
    print("|---|---|---|---|---|---|")
    for s in stacks:
        for _ in range(args.repeats):
            a = ours(s, args.params)
            b = v3(s, Path(args.peers))
            for k, r in (("ours", a), ("v3", b)):
                tot[k][0] += r["wall_s"]
                tot[k][1] += r["cpu_s"]
            print(f"| {s.name} | {a['wall_s']:.2f} | {a['cpu_s']:.2f} | {b['wall_s']:.2f} | {b['cpu_s']:.2f} | "
                  f"{b['cpu_s'] / max(a['cpu_s'], 1e-9):.2f} |", flush=True)
    print(f"| all | {tot['ours'][0]:.1f} | {tot['ours'][1]:.1f} | {tot['v3'][0]:.1f} | {tot['v3'][1]:.1f} | "
          f"{tot['v3'][1] / max(tot['ours'][1], 1e-9):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
