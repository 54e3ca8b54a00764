"""Where focus-fuse's compiled kernels come from: :mod:`._focus_fuse_numba` when numba is there and
not switched off (``NAPARI_EDOF_NUMBA=0``), else None (focus-fuse then runs its numpy path). The
kernels are compiled at first use and cached on disk beside the module (numba's ``cache=True``;
where that folder is read-only, in the user's cache), so a later process loads them.

Compiling them takes about a minute of one core (once per install: numba's cache then loads them
in about 1 s), which a first fusion must not wait for. So an instance uses the kernels only once
they are **built** (:func:`built`: a record in napari-edof's cache folder, written after a full
build and keyed to the kernels' source, numba, Python and the machine); until then it takes the
numpy path (the same image to float32 rounding) and a child process builds them
(:func:`start_build`; the napari widget's warm-up starts it when the widget opens).
``NAPARI_EDOF_NUMBA=1`` uses the kernels regardless, compiling them where needed.

Loading them still costs a process about 0.6-1 s (numba's import and its typing and target
contexts, which import ``scipy.linalg``), and they save about 4 ns per grey voxel (16 ns per RGB
voxel) on two cores: a one-shot process (the command line) with less work than
:data:`COMPILED_MIN_WORK` is faster on the numpy path. :func:`one_shot` lets such a caller say so
(and whether its work is worth a build: :data:`BUILD_MIN_WORK`); everything else (the Python API,
the napari widget, dask tasks, whose instances are made in their own threads) uses the kernels
whenever they are built. The two paths give the same image to float32 rounding (at most one grey
level) and the same index."""
from __future__ import annotations

import contextvars
import hashlib
import os
import platform
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

_KERNELS: list = []  # [the kernels module or None], filled at first use

#: channel-voxels (planes x rows x columns x channels x time points) from which loading numba pays
#: off in a one-shot process: break-even measured at about 190 M for grey and 130 M for RGB on an
#: AVX512 machine; on an AVX2 one (AMD EPYC, 2 cores) numba's start-up was 1.2 s and the kernels
#: saved about 10 ns per grey voxel: about 125 M (the CLI on 16 x 2048 x 2048: 2.73 s against
#: 3.33 s with the kernels, pcb 2.80 against 3.35). With the kernels of 2026-12-07 (15 ns a voxel
#: saved), the whole CLI process alternating three rounds: 16 x 2048^2 (67 M) numpy 2.97 / 2.82 /
#: 2.44 s against compiled 2.92 / 2.80 / 2.75 s (even); 16 x 2560^2 (105 M) 4.16 / 4.25 / 3.69 s
#: against 3.65 / 3.44 / 3.69 s: the kernels from 100 M
COMPILED_MIN_WORK = 100_000_000

#: channel-voxels of a one-shot job from which it has the kernels built (in a child process) while
#: its first stacks take the numpy path (a batch of about 45 stacks of 16 x 2048^2: the build's
#: minute of one core is then a fraction of the command's time); a smaller one-shot job does not
BUILD_MIN_WORK = 3_000_000_000

_NUMPY_HERE = contextvars.ContextVar("napari_edof_focus_fuse_numpy", default=False)
_BUILD_HERE = contextvars.ContextVar("napari_edof_focus_fuse_build", default=True)
_BUILT: list = []  # [True] once the kernels are known to be built, in this process
_BUILT_LOCK = threading.Lock()
_CHILD: list = []  # [the build process this process started] (build_in_child)
BUILD_THREAD = "edof-kernel-build"  # the thread that waits for it (start_build)


def kernels():
    """The compiled kernels (a module), or None where numba is missing or switched off."""
    if not _KERNELS:
        ns = None
        if os.environ.get("NAPARI_EDOF_NUMBA", "1") != "0":
            try:
                from . import _focus_fuse_numba as ns
            except ImportError:  # numba missing (or broken): the numpy path
                ns = None
        _KERNELS.append(ns)
    return _KERNELS[0]


def _numba_loaded() -> bool:
    return "numba" in sys.modules


def _record() -> Path | None:
    """The file that says the kernels are built: its name hashes what numba's cache is keyed to
    (the kernels' source file and its stamp) and what a new numba, Python or machine changes
    (numba's ``__init__.py`` and its stamp, Python's version, the machine), all without importing
    numba (0.5 s) or reading package metadata (0.05 s)."""
    try:
        import importlib.util

        nb = importlib.util.find_spec("numba")
        if nb is None or not nb.origin:
            return None
        key = [sys.version, platform.machine()]
        for f in (Path(__file__).with_name("_focus_fuse_numba.py"), Path(nb.origin)):
            st = f.stat()
            key += [str(f.resolve()), str(st.st_mtime_ns), str(st.st_size)]
    except OSError:  # (no source): never built
        return None
    from ..core.userdirs import cache_root

    return cache_root() / "kernels" / f"focus-fuse-{hashlib.sha1('|'.join(key).encode()).hexdigest()[:16]}"


def built() -> bool:
    """Whether the kernels are compiled and in numba's cache (recorded by :func:`mark_built`), or
    ``NAPARI_EDOF_NUMBA=1`` asks for them regardless."""
    if _BUILT or os.environ.get("NAPARI_EDOF_NUMBA", "") == "1":
        return True
    rec = _record()
    if rec is not None and rec.is_file():
        _BUILT.append(True)
        return True
    return False


def mark_built() -> None:
    """Record that the kernels are built (after a full build: ``focus_fuse.build_kernels``). A cache folder
    that cannot be written only means the next process builds (loads) them again."""
    with _BUILT_LOCK:
        if not _BUILT:
            _BUILT.append(True)
    rec = _record()
    if rec is None or rec.is_file():
        return
    from ..core.errors import EdofError
    from ..io.writers import _atomic_write

    try:
        rec.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(rec, lambda tmp: tmp.write_text("focus-fuse's compiled kernels are in numba's cache\n"))
    except (OSError, EdofError):
        pass


def _child_command() -> list | None:
    """The command of a build process (this Python running :mod:`._focus_fuse_build`), or None
    where there is no interpreter to run (a frozen application)."""
    if getattr(sys, "frozen", False) or not sys.executable:
        return None
    return [sys.executable, "-m", "napari_edof.methods._focus_fuse_build"]


def build_in_child() -> bool:
    """Compile the kernels in a child process at a low priority and wait for it: it compiles
    them into numba's disk cache and writes the record; this process's kernels then load from that
    cache at their first call. Compiling in this process instead would hold its interpreter lock
    for most of a minute, beside whatever the process does meanwhile (a Run in napari on the numpy
    path: 10-13 s instead of 2-3 s, measured). One child per process, whoever asks; returns whether
    the kernels are built afterwards (False where no child could be started or it failed: the
    caller then compiles them itself)."""
    import subprocess

    with _BUILT_LOCK:
        if not _CHILD:
            cmd = _child_command()
            if cmd is None:
                return False
            try:
                _CHILD.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            except OSError:
                return False
        child = _CHILD[0]
    if child.wait() != 0:
        return False
    if not built():  # built, but the record could not be written (an unwritable cache folder): known here
        mark_built()
    return True


def start_build():
    """Build the kernels in a child process (:func:`build_in_child`), waited for by a daemon
    thread of this process (once per process): nothing runs here meanwhile, and a script that ends
    first neither waits for it nor stops it. Returns the thread, or None where there are no kernels
    to build (numba missing or switched off)."""
    from ..core import warmup

    if not warmup.wanted("focus-fuse"):
        return None
    return warmup.start_once(BUILD_THREAD, build_in_child, daemon=True)


def wanted() -> bool:
    """Whether a focus-fuse instance made now (in this thread's context) uses the kernels: not in a
    one-shot job that is faster on numpy, and the kernels built; where they are not, a child
    process starts building them (:func:`start_build`; unless a one-shot job is too small for it)
    and this instance takes the numpy path."""
    if _NUMPY_HERE.get():
        return False
    if built():
        return True
    if _BUILD_HERE.get():
        start_build()
    return False


def numpy_note() -> str | None:
    """Why an instance made now takes the numpy path where the kernels would have been used (a
    note for the run's summary), or None: built, switched off, numba missing, or a one-shot job too
    small for them."""
    from ..core import warmup

    if _NUMPY_HERE.get() or built() or not warmup.wanted("focus-fuse"):
        return None
    if warmup.running(BUILD_THREAD) or warmup.running(warmup.THREAD):
        return ("numpy path while focus-fuse's compiled kernels are built (once after installing, about a "
                "minute; later runs use them)")
    return ("numpy path: focus-fuse's compiled kernels are not built yet (`napari-edof build-kernels` builds "
            "them once, about a minute)")


@contextmanager
def one_shot(work: int):
    """For a process that runs one job of ``work`` channel-voxels: inside, focus-fuse instances take
    the numpy path when loading numba would cost more than it saves (less work than
    :data:`COMPILED_MIN_WORK`, numba not imported yet, ``NAPARI_EDOF_NUMBA`` not set to 1), and
    while the kernels are not built they start building them only for :data:`BUILD_MIN_WORK` or
    more. Yields whether they take the numpy path for the work's size."""
    numpy_path = (os.environ.get("NAPARI_EDOF_NUMBA", "") != "1" and not _numba_loaded()
                  and int(work) < COMPILED_MIN_WORK)
    token = _NUMPY_HERE.set(numpy_path)
    token_b = _BUILD_HERE.set(int(work) >= BUILD_MIN_WORK)
    try:
        yield numpy_path
    finally:
        _BUILD_HERE.reset(token_b)
        _NUMPY_HERE.reset(token)
