"""``python -m napari_edof.methods._focus_fuse_build``: compile focus-fuse's kernels into numba's
disk cache and record them built, at the lowest CPU priority (the child process of
:func:`._focus_fuse_kernels.build_in_child`). Exit code 0 when built, 1 otherwise."""
from __future__ import annotations

import os
import sys


def main() -> int:
    try:
        os.nice(19)  # only the CPU nobody else wants
    except (AttributeError, OSError):  # (not on Windows)
        pass
    from .focus_fuse import build_kernels

    return 0 if build_kernels(force=True) else 1


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main())
