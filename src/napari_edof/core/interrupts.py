"""SIGTERM handled like Ctrl-C, and short sections that a signal does not cut in half.

The CLI installs :func:`handle_signals`: SIGTERM then raises :class:`~.errors.Terminated` (a
KeyboardInterrupt) in the main thread, so that every clean-up Ctrl-C runs (staging, partial and
work folders removed, the previous result kept) runs for it too. Inside :func:`critical` (the
few renames that put a finished result in place) SIGINT and SIGTERM are held and raised when it
ends, so a result is never left half-moved. Without the CLI's handlers :func:`critical` changes
nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Terminated

_state = {"depth": 0, "pending": None, "installed": False}
_lock = threading.Lock()


def _handler(signum, frame):
    with _lock:
        if _state["depth"]:  # inside a critical section (in any thread): raised when it ends
            _state["pending"] = _state["pending"] or signum
            return
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
        raise Terminated()
    raise KeyboardInterrupt()


@contextlib.contextmanager
def handle_signals():
    """SIGTERM (and SIGINT) raise in the main thread, held inside :func:`critical`; the previous
    handlers are restored afterwards. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    # only where Python's own behaviour is in force: a signal the parent ignores (nohup, a shell's
    # background job) stays ignored
    ours = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    previous = {s: signal.signal(s, _handler) for s, d in ours.items() if signal.getsignal(s) is d}
    _state["installed"] = True
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(installed=False, pending=None, depth=0)


@contextlib.contextmanager
def critical():
    """A section that SIGINT/SIGTERM do not cut short: a signal that comes meanwhile is sent again
    when the last such section (of any thread) ends, and raises then in the main thread. Used
    around the few steps that must not be left half-done (a result's renames, writes that run on
    in zarr's I/O thread after the caller stops waiting)."""
    with _lock:
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            signum = _state["pending"] if not _state["depth"] else None
            if signum is not None:
                _state["pending"] = None
        if signum is not None:
            signal.raise_signal(signum)  # the handler now raises (in the main thread)
