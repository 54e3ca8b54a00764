"""Wall time of the pair networks (ctmfusion, msas) on a CPU, against another checkout, in one run.

The stack: a realistic 8 x 512 x 512 grey 16-bit stack (:mod:`napari_edof.training.realistic`,
fixed seed), fused through ``napari_edof.fuse`` with each method's defaults and its shipped weights
(``src/napari_edof/weights``). Each side runs in its own worker process (torch threads fixed,
default 2), loads its model once on a tiny stack (not timed), then the parent alternates the sides
run by run (base, new, base, new, ...) and prints the median wall time per method and side and
their ratio (and each worker's peak resident memory so far: the methods run in the order given).
The first run of each side is kept: the focus index must be identical (exact
equality, every pixel) and the fused image's max abs difference is reported.

``--baseline-worktree PATH``: a checkout of the commit to compare with (its ``src`` goes first on
the worker's PYTHONPATH), e.g.::

    git worktree add /tmp/pair-base 019203f
    python benchmarks/bench_pair_networks.py --baseline-worktree /tmp/pair-base --repeats 3

Without it only this checkout is timed. The machine's load (``os.getloadavg``) is printed before
and after: on a shared machine the ratio measured side by side is the figure to read.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def make_stack(path: Path, *, size: int, planes: int, seed: int, scene: str) -> None:
    from napari_edof.training.realistic import Config, render

    cfg = Config(seed=seed, scene=scene, colour="grey", noise="moderate", bits=16, n_planes=planes,
                 shape=(size, size))
    np.save(path, render(cfg).planes)


# ------------------------------------------------------------------------------------ the worker
def worker(threads: int) -> None:
    """Read commands from stdin: ``warm METHOD`` or ``run METHOD STACK.npy OUTDIR|-``; answer one
    JSON line each."""
    import torch

    torch.set_num_threads(threads)
    import napari_edof

    print(json.dumps({"ready": True, "napari_edof": napari_edof.__file__, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        method = cmd[1]
        if cmd[0] == "warm":
            rng = np.random.default_rng(0)
            napari_edof.fuse((rng.random((3, 64, 64)) * 60000).astype(np.uint16), method=method)
            print(json.dumps({"warm": method}), flush=True)
            continue
        stack = np.load(cmd[2])
        t0 = time.perf_counter()
        r = napari_edof.fuse(stack, method=method)
        dt = time.perf_counter() - t0
        if cmd[3] != "-":
            out = Path(cmd[3])
            np.save(out / f"{method}_index.npy", np.asarray(r.index))
            np.save(out / f"{method}_fused.npy", np.asarray(r.fused))
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        print(json.dumps({"method": method, "seconds": dt, "peak_rss_mb": rss}), flush=True)


class Side:
    def __init__(self, name: str, src: Path | None, threads: int, outdir: Path):
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
        self.name, self.outdir = name, outdir
        outdir.mkdir(parents=True, exist_ok=True)
        self.p = subprocess.Popen([sys.executable, str(HERE), "--worker", "--threads", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()
        self.saved: set[str] = set()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (see its stderr above)")
        return json.loads(line)

    def ask(self, text: str) -> dict:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self._read()

    def run(self, method: str, stack: Path) -> tuple[float, float]:
        out = "-" if method in self.saved else str(self.outdir)
        self.saved.add(method)
        r = self.ask(f"run {method} {stack} {out}")
        return r["seconds"], r["peak_rss_mb"]

    def close(self) -> None:
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        self.p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ctmfusion,msas")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--planes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7218)
    ap.add_argument("--scene", default="brightfield", choices=("photo", "brightfield", "fluorescence"))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method and side")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    ap.add_argument("--baseline-worktree", type=Path, default=None,
                    help="a checkout of the commit to compare with (its src/ is put first on PYTHONPATH)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.threads)
        return 0
    methods = [m for m in a.methods.split(",") if m]
    tmp = Path(tempfile.mkdtemp(prefix="bench-pair-"))
    stack = tmp / "stack.npy"
    make_stack(stack, size=a.size, planes=a.planes, seed=a.seed, scene=a.scene)
    print(f"stack: {a.planes} x {a.size} x {a.size} grey uint16, realistic {a.scene}, seed {a.seed}; "
          f"torch threads {a.threads}; {a.repeats} timed runs per method and side, alternating")
    sides = []
    if a.baseline_worktree is not None:
        sides.append(Side("base", a.baseline_worktree.resolve() / "src", a.threads, tmp / "base"))
    sides.append(Side("new", REPO / "src", a.threads, tmp / "new"))
    for s in sides:
        print(f"  {s.name}: {s.info['napari_edof']} (torch {s.info['torch']}, {s.info['threads']} threads)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    times: dict = {(s.name, m): [] for s in sides for m in methods}
    for m in methods:
        for s in sides:
            s.ask(f"warm {m}")
        for r in range(a.repeats):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                t, rss = s.run(m, stack)
                times[(s.name, m)].append(t)
                print(f"  {m:10s} {s.name:4s} run {r + 1}: {t:7.2f} s   (worker's peak RSS so far {rss:.0f} MB)",
                      flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for s in sides:
        s.close()
    n = a.planes * a.size * a.size
    print()
    head = "| method | " + " | ".join(f"{s.name} s (median)" for s in sides)
    head += " | speed-up | index identical | fused max abs diff |" if len(sides) == 2 else " | Mvoxel/s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ok = True
    for m in methods:
        med = {s.name: statistics.median(times[(s.name, m)]) for s in sides}
        row = f"| {m} | " + " | ".join(f"{med[s.name]:.2f}" for s in sides)
        if len(sides) == 2:
            ib = np.load(tmp / "base" / f"{m}_index.npy")
            inew = np.load(tmp / "new" / f"{m}_index.npy")
            same = ib.shape == inew.shape and bool(np.array_equal(ib, inew))
            ok &= same
            nd = 0 if same else int(np.sum(ib != inew)) if ib.shape == inew.shape else -1
            fb = np.load(tmp / "base" / f"{m}_fused.npy").astype(np.float64)
            fn = np.load(tmp / "new" / f"{m}_fused.npy").astype(np.float64)
            diff = float(np.max(np.abs(fb - fn))) if fb.shape == fn.shape else float("nan")
            row += (f" | {med['base'] / med['new']:.2f}x | {'yes' if same else f'NO ({nd} px differ)'}"
                    f" | {diff:g} |")
        else:
            row += f" | {n / med['new'] / 1e6:.3f} |"
        print(row)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
