"""End to end: the user's wall clock for the whole ``napari-edof fuse`` process, side by side
with enfuse and focusweave on the same files (issue 17).

Three inputs: (a) 16 plane files of 2048x2048 uint16 (``sample_stack(scene="photo")``), (b) the
same planes as one multi-page TIFF, (c) the RGB JPEG folder of focus-stack's ``pcb`` example
(``pcb_*.jpg``). Every tool runs as a whole process under ``/usr/bin/time -v`` (wall clock and
peak RSS), the tools alternating round by round; the table gives medians of ``--repeat`` rounds
and napari-edof's time as a ratio of each other tool's (the issue's target: at most 0.35).

The peers' command lines are those of ``~/edof-peers/run_peers.py``: enfuse as ``enfuse_cws5``
(``--exposure-weight=0 --saturation-weight=0 --contrast-weight=1 --hard-mask
--compression=none``) and focusweave as ``focusweave_noalign`` (``FOLDER --output OUT
--no-align``). focusweave reads folders only, so it is given a folder holding the planes (for
(b) the plane files of (a), same pixels); enfuse is given the multi-page TIFF itself for (b).

Then a per-stage breakdown of one ``napari-edof fuse`` process (import, open, read, fuse, write,
and the rest of its wall clock: the interpreter's start and exit), timed in a fresh interpreter
with the CLI's own steps. napari-edof runs with Python's bytecode caches, as installed (this
machine's PYTHONDONTWRITEBYTECODE is left out of its environment).

    python benchmarks/bench_end_to_end.py [--repeat 5] [--work /tmp/e2e] [--cases planes,tiff,pcb]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = Path(os.path.expanduser("~/edof-peers"))
FOCUSWEAVE = PEERS / "venv/bin/focusweave"
ENFUSE = shutil.which("enfuse") or "/usr/bin/enfuse"
NAPARI_EDOF = Path(sys.executable).with_name("napari-edof")
PCB = ROOT.parent / "shared/data/focus-stack_examples/pcb"
if not PCB.exists():
    PCB = Path("/work/shared/data/focus-stack_examples/pcb")
ENFUSE_BASE = [ENFUSE, "--exposure-weight=0", "--saturation-weight=0", "--contrast-weight=1", "--hard-mask",
               "--compression=none"]


def make_inputs(work: Path, n: int = 16, size: int = 2048) -> dict:
    import numpy as np
    import tifffile

    from napari_edof.data.synthetic import sample_stack

    planes = work / "planes"
    tiff = work / "stack.tif"
    if not (planes.exists() and len(list(planes.glob("plane_*.tif"))) == n and tiff.exists()):
        planes.mkdir(parents=True, exist_ok=True)
        st = np.asarray(sample_stack(n_planes=n, shape=(size, size), dtype=np.uint16, scene="photo").stack.data)
        for i, p in enumerate(st):
            tifffile.imwrite(planes / f"plane_{i:02d}.tif", p)
        tifffile.imwrite(tiff, st, photometric="minisblack")
    pcb = work / "pcb"
    pcb.mkdir(exist_ok=True)
    for f in sorted(PCB.glob("pcb_*.jpg")):
        link = pcb / f.name
        if not link.exists():
            link.symlink_to(f)
    plane_files = sorted(str(p) for p in planes.glob("plane_*.tif"))
    pcb_files = sorted(str(p) for p in pcb.glob("pcb_*.jpg"))
    return {
        "planes": {"ours": plane_files, "enfuse": plane_files, "fw_dir": planes, "ext": ".tif",
                   "what": f"{n} plane files {size}x{size} uint16"},
        "tiff": {"ours": [str(tiff)], "enfuse": [str(tiff)], "fw_dir": planes, "ext": ".tif",
                 "what": f"one multi-page TIFF {n}x{size}x{size} uint16 (focusweave: the plane files)"},
        "pcb": {"ours": pcb_files, "enfuse": pcb_files, "fw_dir": pcb, "ext": ".png",
                "what": f"pcb: {len(pcb_files)} RGB JPEGs"},
    }


def commands(case: dict, out: Path) -> dict[str, list[str]]:
    ext = case["ext"]
    return {
        "napari-edof": [str(NAPARI_EDOF), "fuse", "-q", *case["ours"], "-o", str(out / "edof")],
        "enfuse": [*ENFUSE_BASE, "-o", str(out / f"enfuse{ext if ext == '.tif' else '.tif'}"), *case["enfuse"]],
        "focusweave": [str(FOCUSWEAVE), str(case["fw_dir"]), "--output", str(out / f"focusweave{ext}"),
                       "--no-align"],
    }


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one whole process under /usr/bin/time -v."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, env=env)
    wall = time.perf_counter() - t0
    log.write_text(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return wall, (int(rss.group(1)) / 1024 if rss else float("nan"))


STAGES = r"""
import sys, time
t0 = time.perf_counter()
from napari_edof import cli
try:  # (what the CLI does now: gc.freeze at exit)
    import atexit
    atexit.register(cli._freeze_at_exit)
except AttributeError:
    pass
from napari_edof.core.engine import fuse_iter, drain
from napari_edof.io.writers import write_result
import napari_edof.io as nio
t1 = time.perf_counter()
src = sys.argv[2:] if len(sys.argv) > 3 else sys.argv[2]
if hasattr(nio, "read_stack"):  # (what the CLI does now: open and read at once)
    st = nio.read_stack(src)
    t2 = t3 = time.perf_counter()
else:  # (before: open lazily, the engine computes the dask array)
    st = nio.open_stack(src)
    t2 = time.perf_counter()
    st = st.with_data(st.data.compute())
    t3 = time.perf_counter()
try:  # (what the CLI does now: a small one-shot job skips loading numba)
    from napari_edof.methods._focus_fuse_kernels import one_shot
except ImportError:
    import contextlib
    one_shot = lambda work: contextlib.nullcontext()
with one_shot(st.n_planes * st.yx_shape[0] * st.yx_shape[1] * max(1, st.n_channels) * max(1, st.n_times)):
    res = drain(fuse_iter(st))
t4 = time.perf_counter()
try:  # (the CLI's default set of files)
    from napari_edof.io.outputs import DEFAULT_OUTPUTS
    # (audit only for the runs that have one, as the CLI decides)
    outs = tuple(o for o in DEFAULT_OUTPUTS if o != "audit" or getattr(res, "audit", None) is not None)
    write_result(res, sys.argv[1], outputs=outs)
except ImportError:
    write_result(res, sys.argv[1])
t5 = time.perf_counter()
print(f"{t1-t0:.3f} {t2-t1:.3f} {t3-t2:.3f} {t4-t3:.3f} {t5-t4:.3f}")
"""


def stages(case: dict, out: Path, repeat: int, env=None) -> list[float]:
    """Median seconds of import, open, read, fuse, write in one process, and the rest of the
    process's wall clock (the interpreter's start and exit)."""
    rows = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", STAGES, str(out / "stages"), *case["ours"]], capture_output=True,
                           text=True, check=True, env=env)
        wall = time.perf_counter() - t0
        row = [float(v) for v in r.stdout.split()]
        rows.append(row + [wall - sum(row)])
    return [statistics.median(col) for col in zip(*rows)]


def edof_env(src: str | None = None) -> dict:
    """The environment of a napari-edof process: as a user's, with Python's bytecode caches
    (this machine sets PYTHONDONTWRITEBYTECODE, which made every run compile napari-edof's own
    modules again: about 0.2 s); ``src``: run that source tree instead."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", default="/tmp/edof_e2e")
    ap.add_argument("--cases", default="planes,tiff,pcb")
    ap.add_argument("--tools", default="napari-edof,enfuse,focusweave")
    ap.add_argument("--no-stages", action="store_true")
    ap.add_argument("--ours", metavar="SRC", default=None,
                    help="run napari-edof from this source folder (default: the installed package)")
    ap.add_argument("--before", metavar="SRC", default=None,
                    help="also run napari-edof from this source folder (e.g. `git archive <commit> src`), "
                         "as 'edof-before', in the same rounds")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = make_inputs(work)
    tools = args.tools.split(",")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} at start; medians of {args.repeat} alternating rounds")
    for name in args.cases.split(","):
        case = cases[name]
        out = work / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        cmds = {k: v for k, v in commands(case, out).items() if k in tools}
        envs: dict[str, dict | None] = {k: (edof_env(args.ours) if k == "napari-edof" else None) for k in cmds}
        if args.before:
            cmds["edof-before"] = [*cmds["napari-edof"][:-1], str(out / "edof-before")]
            envs["edof-before"] = edof_env(args.before)
        for tool in cmds:  # (untimed) a first run of each: numba's disk cache, the page cache
            if tool.startswith(("napari-edof", "edof-")):
                timed(cmds[tool], out / f"{tool}.warm.txt", envs[tool])
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for _ in range(args.repeat):
            for tool, cmd in cmds.items():
                times[tool].append(timed(cmd, out / f"{tool}.time.txt", envs[tool]))
        med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
        rss = {k: max(m for _, m in v) for k, v in times.items()}
        print(f"\n## {name}: {case['what']}  (load now {os.getloadavg()[0]:.2f})")
        print(f"{'tool':<12} {'median s':>9} {'/enfuse':>8} {'/focusweave':>12} {'peak RSS MiB':>13}  runs")
        for tool in cmds:
            ratios = [f"{med[tool] / med[p]:.2f}" if p in med else "-" for p in ("enfuse", "focusweave")]
            runs = " ".join(f"{w:.2f}" for w, _ in times[tool])
            print(f"{tool:<12} {med[tool]:>9.2f} {ratios[0]:>8} {ratios[1]:>12} {rss[tool]:>13.0f}  {runs}")
        if not args.no_stages and "napari-edof" in cmds:
            for tool in ("edof-before", "napari-edof"):
                if tool in cmds:
                    s = stages(case, out, args.repeat, envs[tool])
                    print(f"{tool} stages (median s, in one process): "
                          + ", ".join(f"{k} {v:.2f}" for k, v in zip(("import", "open", "read", "fuse", "write",
                                                                       "start+exit"), s))
                          + f"; total {sum(s):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
