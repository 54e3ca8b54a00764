"""``python -m napari_edof.methods._focus_fuse_build``: compile focus-fuse's kernels into numba's
disk cache and record them built, at a low CPU priority (nice 10: about a tenth of a busy core's
share; the child process of :func:`._focus_fuse_kernels.build_in_child`). One build at a time per
cache folder: a second child (another napari, the workers of a local dask cluster) waits for the
first and then finds the kernels built. Exit code 0 when built, 1 otherwise."""
from __future__ import annotations

import os
import sys


def _lock():
    """An exclusive lock on ``kernels/build.lock`` in the cache folder (waiting while another
    process holds it), or None where there is none to be had (no ``fcntl``, a read-only folder)."""
    try:
        import fcntl

        from ..core.userdirs import cache_root

        folder = cache_root() / "kernels"
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / "build.lock", "a+")  # noqa: SIM115 - held until the process ends
        fcntl.flock(f, fcntl.LOCK_EX)
        return f
    except (ImportError, OSError):
        return None


def main() -> int:
    try:
        os.nice(10)  # the CPU others leave, and a little of a busy machine's (19 all but stopped it there)
    except (AttributeError, OSError):  # (not on Windows)
        pass
    from ._focus_fuse_kernels import built

    held = _lock()  # noqa: F841 - released at exit
    if built():  # (built by another process meanwhile)
        return 0
    from .focus_fuse import build_kernels

    return 0 if build_kernels(force=True) else 1


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main())
