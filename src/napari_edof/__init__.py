"""napari-edof: extended depth of field for napari.

Fuse a focus stack (a microscope z-stack, or RGB frames focused at different depths) into one
all-in-focus image, with the focus-index map, the decision masks and a confidence map that show
how the fusion decided.

Importing this package imports neither torch, Qt nor napari (nor numpy: the public names load
:mod:`napari_edof.api` on first use).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__


def _spawned_cli_worker() -> bool:
    """True in a worker process the CLI's local dask cluster is starting (multiprocessing's spawn
    re-imports the CLI as the child's main module, with the CLI's argv). A Ctrl-C in the terminal
    goes to the whole process group: such workers ignore it (the CLI stops them cleanly) instead
    of each printing a KeyboardInterrupt traceback from the middle of its imports."""
    import os
    import sys

    mp = sys.modules.get("multiprocessing.process")
    if mp is None or not getattr(mp.current_process(), "_inheriting", False):
        return False
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog in ("napari-edof", "napari-edof.exe", "napari-edof-script.py") or (
        prog == "cli.py" and os.path.basename(os.path.dirname(sys.argv[0])) == "napari_edof")


if _spawned_cli_worker():
    import signal as _signal

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)

#: the public names, from :mod:`napari_edof.api`, imported on first use (PEP 562): ``import
#: napari_edof`` loads neither numpy nor the engine, so ``napari-edof methods`` and ``--help``
#: start quickly; ``napari_edof.fuse`` (or ``from napari_edof import fuse``) imports them
_API = ("EdofError", "FusionResult", "Progress", "Stack", "fuse", "fuse_iter", "get_method", "list_methods",
        "open_stack", "sample_stack")

if TYPE_CHECKING:
    from .api import (
        EdofError,
        FusionResult,
        Progress,
        Stack,
        fuse,
        fuse_iter,
        get_method,
        list_methods,
        open_stack,
        sample_stack,
    )


def __getattr__(name: str):
    if name in _API:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a submodule not imported yet (napari_edof.api, napari_edof.io, ...)
        import importlib

        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = [
    "EdofError",
    "FusionResult",
    "Progress",
    "Stack",
    "__version__",
    "fuse",
    "fuse_iter",
    "get_method",
    "list_methods",
    "open_stack",
    "sample_stack",
]
