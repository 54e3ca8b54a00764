"""Shared fixtures. GUI tests run under Xvfb (pytest-xvfb); data from ../shared/data."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # pytest-xvfb has set DISPLAY by now when Xvfb is available; napari's canvas needs a real
    # X server (the offscreen platform cannot draw), so only fall back to it without one.
    if os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    else:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # napari-edof's cache folder in a temporary one (subprocesses inherit it), where focus-fuse's
    # compiled kernels are recorded as built: every test (and its subprocesses) takes them, compiled
    # at first use as before, instead of the numpy path while a build runs beside the tests
    # (tests/methods/test_focus_fuse_build.py tests that policy with the record removed)
    if "NAPARI_EDOF_CACHE" not in os.environ:
        os.environ["NAPARI_EDOF_CACHE"] = tempfile.mkdtemp(prefix="napari-edof-cache-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("NAPARI_EDOF_CACHE"), ignore_errors=True))
    from napari_edof.methods._focus_fuse_kernels import mark_built

    mark_built()


@pytest.fixture
def one_torch_thread():
    """torch on one thread during a test (small networks on the shared 2 cores run faster so, and
    without intra-op barriers under load); the thread count is restored afterwards."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real focus stacks not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_grey():
    from napari_edof import sample_stack

    return sample_stack(n_planes=8, shape=(96, 96), seed=1)


@pytest.fixture(scope="session")
def sample_rgb():
    from napari_edof import sample_stack

    return sample_stack(n_planes=6, shape=(80, 88), rgb=True, dtype=np.uint8, seed=2)


def psnr(a, b, peak) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def drain(gen):
    """Run a progress generator to its end: (the steps it yielded, the value it returned)."""
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


@pytest.fixture
def registrations(monkeypatch):
    """A list that gets one entry per call of the stack registration (issue 15: once per run)."""
    from napari_edof.core import registration

    calls = []
    real = registration.register_stack

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(registration, "register_stack", counted)
    return calls


@pytest.fixture
def runs(monkeypatch):
    """A list that gets one entry per call of the one run function, ``core.run.run_frames``
    (issue 15: every run path calls it): the names of the reader, sink and schedule it ran with."""
    import sys

    import napari_edof.core.engine  # noqa: F401 - the modules that call it, loaded before it is wrapped
    import napari_edof.core.stream  # noqa: F401
    from napari_edof.core import run

    calls = []
    real = run.run_frames

    def counted(pl, reader, sink, stripes, **kw):
        calls.append((type(reader).__name__, type(sink).__name__, type(kw.get("schedule", run.HERE)).__name__))
        return real(pl, reader, sink, stripes, **kw)

    for name, mod in list(sys.modules.items()):  # wherever it was imported by name
        if name.startswith("napari_edof") and getattr(mod, "run_frames", None) is real:
            monkeypatch.setattr(mod, "run_frames", counted)
    return calls
