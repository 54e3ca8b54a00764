"""Save the reference outputs that tests/test_reference_outputs.py compares today's code against.

    PYTHONPATH=src python tests/data/make_reference.py            # every case and path
    PYTHONPATH=src python tests/data/make_reference.py --check    # compare only, print differences

Run it from the code whose results are the reference: it was run on main at 67d2285, before the
execution core of issue 15 (``git archive 67d2285 | tar -x -C /tmp/orig`` and
``PYTHONPATH=/tmp/orig/src python tests/data/make_reference.py`` from this checkout); rerun it only
when a change of results is intended, and say so in the commit. focus-fuse is not saved (see
tests/reference_cases.py: its paths are compared with each other). Learned methods read their
weights from ../shared/weights and never download.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import reference_cases as R  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the saved file instead of writing it")
    ap.add_argument("--no-cluster", action="store_true")
    a = ap.parse_args(argv)
    R.offline_weights()
    R.setup_torch()
    data = R.stacks()
    hashes, arrays, skipped = {}, {}, {}
    paths = [p for p in R.PATHS if not (p.startswith("cluster") and (a.no_cluster or not R.has_distributed()))]
    try:
        for name, stack, method, opts in R.cases():
            if method in R.PATHS_ONLY:
                continue
            why = R.runnable(method)
            if why:
                skipped[name] = why
                print(f"skip {name}: {why}", flush=True)
                continue
            d, axes = data[stack]
            for path in paths:
                if (name, path) in R.KNOWN_BROKEN:
                    continue
                t0 = time.perf_counter()
                out = R.PATHS[path](d, axes, dict(opts, method=method))
                hashes[f"{name}|{path}"] = R.digest(*out)
                if path == "memory":
                    for k, v in zip(("fused", "index", "confidence"), out):
                        arrays[f"{name}|{k}"] = v
                print(f"{name:36s} {path:12s} {time.perf_counter() - t0:6.2f} s {hashes[f'{name}|{path}'][:12]}",
                      flush=True)
    finally:
        R.close_cluster()
    meta = {"fingerprint": R.fingerprint(), "hashes": hashes, "skipped": skipped, "paths": paths}
    if a.check:
        ref = json.loads(str(np.load(R.REFERENCE)["meta"]))
        bad = [k for k, v in hashes.items() if ref["hashes"].get(k) not in (None, v)]
        print("differ:", bad or "none", "| missing:", sorted(set(ref["hashes"]) - set(hashes)) or "none")
        return 1 if bad else 0
    np.savez_compressed(R.REFERENCE, meta=np.array(json.dumps(meta, indent=1)), **arrays)
    print(f"wrote {R.REFERENCE} ({R.REFERENCE.stat().st_size / 1024:.0f} KiB, {len(hashes)} outputs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
