"""Loading numba ahead of the fusion, in a background thread (issue 17).

focus-fuse's compiled kernels come from numba's disk cache, but before the first kernel runs numba
itself has to be imported and its typing and target contexts filled (every registry of numpy
functions, which imports ``scipy.linalg`` for BLAS): about 1 s of a 2 s command-line run, spent
in the tile threads while they wait; then every kernel is loaded from the cache at its first call
(about 0.8 s more). :func:`start` does both in a thread while the napari widget waits for its Run
button (the first Run no longer stalls the viewer 1-1.5 s, nor waits for the kernels). It changes
nothing the fusion computes: the same contexts are filled once, under numba's compiler lock,
whoever comes first. Where the kernels are not built yet (the first run after installing), the
method's warm-up first waits for the child process that builds them
(``methods/_focus_fuse_kernels.py``), unless the process is ending. (The command line does not
use it: started beside the reading, under load 9-10 on 2 cores, it gained nothing and raised the
peak RSS 16-26 MiB.)
"""
from __future__ import annotations

import os
import threading

#: Methods whose kernels are compiled with numba (see ``methods/_focus_fuse_kernels.py``).
NUMBA_METHODS = frozenset({"focus-fuse"})

THREAD = "edof-numba-warmup"  # the name of :func:`start`'s thread
_STARTED: dict[str, threading.Thread] = {}  # name -> the thread started under it (once per process)
_LOCK = threading.Lock()


def wanted(method: str | None) -> bool:
    """Whether a run of ``method`` (None: the default) would load numba: a numba method, numba
    installed and not switched off (``NAPARI_EDOF_NUMBA=0``)."""
    from .spec import DEFAULT_METHOD

    if (DEFAULT_METHOD if method is None else method) not in NUMBA_METHODS:
        return False
    if os.environ.get("NAPARI_EDOF_NUMBA", "1") == "0":
        return False
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def load_numba(method: str | None = None) -> None:
    """Import numba and fill its CPU typing and target contexts (what its first call does), then
    run ``method``'s own warm-up (``MethodSpec.warm``: focus-fuse loads its compiled kernels).
    Never raises: a failure here shows again, with its own message, where the kernels load."""
    try:
        import numba  # noqa: F401
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.registry import cpu_target

        # the context first, outside the compiler lock: its constructor takes that lock inside the
        # property's own lock (taking them the other way round deadlocks against a tile thread)
        ctx = cpu_target.target_context
        with global_compiler_lock:  # (as the dispatchers refresh: numba's compile holds this lock)
            ctx.refresh()  # (the typing context's too)
        from .spec import DEFAULT_METHOD, get_method

        spec, _ = get_method(DEFAULT_METHOD if method is None else method)
        if spec.warm is not None:
            spec.warm()
    except Exception:  # noqa: BLE001 - only a head start
        pass


def start(method: str | None = None) -> threading.Thread | None:
    """Start :func:`load_numba` in a thread when a run of ``method`` would need it (once per
    process); returns the thread, or None when nothing is to be done."""
    if not wanted(method):
        return None
    return start_once(THREAD, load_numba, method)


def running(name: str) -> bool:
    """Whether the thread started under ``name`` (:func:`start_once`) is running now."""
    t = _STARTED.get(name)
    return t is not None and t.is_alive()


def start_once(name: str, target, *args, daemon: bool = False) -> threading.Thread:
    """``target(*args)`` in a thread called ``name``, started the first time this is called with
    that name in the process; returns that thread. Not a daemon unless asked (a thread that only
    waits for another process): the process waits for it at exit rather than stopping it inside an
    import."""
    with _LOCK:
        if name not in _STARTED:
            t = threading.Thread(target=target, args=args, name=name, daemon=daemon)
            _STARTED[name] = t
            t.start()
        return _STARTED[name]


__all__ = ["NUMBA_METHODS", "THREAD", "load_numba", "running", "start", "start_once", "wanted"]
