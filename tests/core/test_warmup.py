"""Issue 17: numba loaded in a thread ahead of focus-fuse's first kernel (core/warmup.py): only
for methods that use it, never when it is switched off, and racing the kernels' first use (the
tile threads loading the same contexts) neither deadlocks nor changes the result."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_edof.core import warmup

pytest.importorskip("numba")


def test_wanted_only_for_numba_methods(monkeypatch):
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    assert warmup.wanted("focus-fuse")
    assert warmup.wanted(None)  # the default method is focus-fuse
    assert not warmup.wanted("focus-select")
    assert not warmup.wanted("pyramid")
    monkeypatch.setenv("NAPARI_EDOF_NUMBA", "0")  # the numpy path: nothing to load
    assert not warmup.wanted("focus-fuse")
    assert warmup.start("focus-fuse") is None


RUN = r"""
import sys, threading, time
import numpy as np
from napari_edof.data.synthetic import sample_stack
from napari_edof.core.engine import fuse_iter, drain
st = sample_stack(n_planes=5, shape=(96, 80), dtype=np.uint16, seed=3).stack
if sys.argv[1] == "warm":
    from napari_edof.core import warmup
    t = warmup.start("focus-fuse")
    assert t is not None and warmup.start(None) is t  # once per process
    time.sleep(float(sys.argv[2]))
res = drain(fuse_iter(st, workers=2, tile=48))
np.save(sys.argv[3], np.stack([np.asarray(res.fused, np.float32), res.index, res.confidence]))
assert "numba" in sys.modules
"""


def test_warmup_racing_the_first_kernels_gives_the_same_result(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    cold = tmp_path / "cold.npy"
    subprocess.run([sys.executable, "-c", RUN, "cold", "0", str(cold)], check=True, timeout=300)
    for delay in ("0", "0.02"):  # the tile threads reach the kernels while numba is still loading
        warm = tmp_path / f"warm{delay}.npy"
        subprocess.run([sys.executable, "-c", RUN, "warm", delay, str(warm)], check=True, timeout=300)
        np.testing.assert_array_equal(np.load(warm), np.load(cold))


def test_warmup_loads_the_kernels_a_grey_stack_needs(monkeypatch):
    """After the warm-up, every compiled kernel a 16-bit grey stack's tiles call is loaded (the first
    Run does not wait for numba's cache): each dispatcher has its signature (RGB's channel binning is
    the one left)."""
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    code = r"""
from napari_edof.core import warmup
warmup.load_numba()
from napari_edof.methods import _focus_fuse_numba as K
public = [n for n in dir(K) if not n.startswith("_") and hasattr(getattr(K, n), "signatures")]
print(",".join(sorted(n for n in public if not getattr(K, n).signatures)))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True, text=True)
    assert out.stdout.strip() == "bin_planes"
