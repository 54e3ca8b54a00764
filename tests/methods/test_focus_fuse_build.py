"""focus-fuse's compiled kernels are used only once built (methods/_focus_fuse_kernels.py): until
then a run takes the numpy path, says so, and the build runs in a thread; the build records itself
and covers what real runs of the common stacks need (no compilation left for them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

from napari_edof.methods import _focus_fuse_kernels as k  # noqa: E402
from napari_edof.methods.focus_fuse import FocusFuse  # noqa: E402

START_BUILD = k.start_build  # (the not_built fixture replaces it by a recorder)


@pytest.fixture
def not_built(tmp_path, monkeypatch):
    """An empty cache folder (no record), nothing known in this process, the environment neutral;
    the build thread replaced by a recorder (a real one runs in test_a_build_covers_the_common_stacks)."""
    monkeypatch.setenv("NAPARI_EDOF_CACHE", str(tmp_path))
    monkeypatch.delenv("NAPARI_EDOF_NUMBA", raising=False)
    monkeypatch.setattr(k, "_BUILT", [])
    started = []
    monkeypatch.setattr(k, "start_build", lambda: started.append(1))
    return started


def test_not_built_takes_the_numpy_path_and_starts_the_build(not_built, monkeypatch):
    m = FocusFuse({})
    assert not m.compiled and not_built == [1]
    from napari_edof.core import warmup

    monkeypatch.setattr(warmup, "running", lambda name: name == warmup.THREAD)  # the build under way
    assert "built" in FocusFuse({}).run_note


def test_a_run_says_it_took_the_numpy_path(not_built, sample_grey):
    import napari_edof

    r = napari_edof.fuse(sample_grey.stack.data, axes="ZYX")
    assert "numpy path" in r.provenance["method_note"] and "numpy path" in r.summary()
    assert not_built  # the build was asked for


def test_numpy_path_result_is_the_numpy_paths(not_built, sample_grey, monkeypatch):
    """While not built, a run gives exactly what NAPARI_EDOF_NUMBA=0 gives."""
    import napari_edof

    a = napari_edof.fuse(sample_grey.stack.data, axes="ZYX")
    monkeypatch.setenv("NAPARI_EDOF_NUMBA", "0")
    b = napari_edof.fuse(sample_grey.stack.data, axes="ZYX")
    assert np.array_equal(a.fused, b.fused) and np.array_equal(a.index, b.index, equal_nan=True)
    assert "method_note" not in b.provenance  # switched off: nothing to say


def test_a_lazy_computation_keeps_its_kind_of_instance(not_built, sample_grey, monkeypatch):
    """A lazy graph built before the kernels are: all its tasks on the numpy path, even computed
    after they are built (one computation never mixes the two); a graph built afterwards takes them."""
    import dask.array as da

    import napari_edof
    from napari_edof.core import stream

    stream._impl_for.cache_clear()
    calls = []
    real = FocusFuse.fuse_tile

    def recorded(self, *a, **kw):
        calls.append(self.compiled)
        return real(self, *a, **kw)
    monkeypatch.setattr(FocusFuse, "fuse_tile", recorded)
    x = da.from_array(sample_grey.stack.data, chunks=(1, -1, -1))
    before = napari_edof.fuse(x, axes="ZYX", tile=48)
    assert "numpy path" in before.provenance["method_note"]
    k.mark_built()
    after = napari_edof.fuse(x, axes="ZYX", tile=48)
    assert "method_note" not in after.provenance
    before.compute()
    assert calls and not any(calls)
    calls.clear()
    after.compute()
    assert calls and all(calls)
    stream._impl_for.cache_clear()


@pytest.mark.parametrize("work, builds", [(k.COMPILED_MIN_WORK, False), (k.BUILD_MIN_WORK, True)])
def test_one_shot_jobs_build_only_when_large(not_built, work, builds, monkeypatch):
    """The command line: a job that would use the kernels but is too small to pay for a build takes
    the numpy path without one, and says how to build them."""
    monkeypatch.setattr(k, "_numba_loaded", lambda: False)  # (as in a fresh command-line process)
    with k.one_shot(work) as numpy_path:
        m = FocusFuse({})
    assert not numpy_path and not m.compiled
    assert bool(not_built) is builds
    if not builds:
        assert "napari-edof build-kernels" in m.run_note
    with k.one_shot(1000):  # a small job takes the numpy path anyway: nothing to say
        assert FocusFuse({}).run_note is None


def test_the_record_is_per_numba_install_and_env_1_forces(not_built, tmp_path, monkeypatch):
    k.mark_built()
    rec = k._record()
    assert rec.is_file() and rec.parent == tmp_path / "kernels"
    monkeypatch.setattr(k, "_BUILT", [])
    assert k.built() and FocusFuse({}).compiled and not not_built
    import importlib.util
    import types

    other = tmp_path / "numba_init.py"  # another numba (its __init__.py elsewhere): its cache is another
    other.write_text("")
    real = importlib.util.find_spec
    fake = types.SimpleNamespace(origin=str(other))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "numba" else real(name, *a))
    monkeypatch.setattr(k, "_BUILT", [])
    assert k._record() != rec and not k.built()
    monkeypatch.setenv("NAPARI_EDOF_NUMBA", "1")  # the kernels regardless (compiled where needed)
    assert k.built() and FocusFuse({}).compiled


def test_an_unwritable_cache_folder_only_means_not_recorded(not_built, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NAPARI_EDOF_CACHE", str(blocker))  # a file where the folder would be
    k.mark_built()  # no error
    assert k.built()  # (known in this process)
    monkeypatch.setattr(k, "_BUILT", [])
    assert not k.built()


@pytest.fixture
def fake_child(not_built, monkeypatch):
    """The build's child process replaced by a quick command; _CHILD emptied."""
    monkeypatch.setattr(k, "_CHILD", [])

    def use(code: str):
        monkeypatch.setattr(k, "_child_command", lambda: [sys.executable, "-c", code])
    return use


def test_the_build_runs_in_a_child_process_waited_for_by_a_daemon_thread(fake_child, monkeypatch):
    from napari_edof.core import warmup

    monkeypatch.setattr(warmup, "_STARTED", {})
    fake_child("from napari_edof.methods._focus_fuse_kernels import mark_built; mark_built()")
    t = START_BUILD()  # (the fixture replaced k.start_build by a recorder)
    assert t is not None and t.daemon and t.name == k.BUILD_THREAD
    t.join(120)
    assert k.built() and len(k._CHILD) == 1 and k._CHILD[0].returncode == 0
    assert FocusFuse({}).compiled  # the next instance takes the kernels


def test_a_child_that_built_them_counts_without_the_record(fake_child, tmp_path, monkeypatch):
    """An unwritable cache folder: the child builds (exit 0) but no record can be written; this
    process still knows they are built and takes them."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NAPARI_EDOF_CACHE", str(blocker))
    fake_child("pass")
    assert k.build_in_child() and k.built() and FocusFuse({}).compiled


def test_a_failed_child_leaves_it_to_the_caller(fake_child):
    fake_child("raise SystemExit(3)")
    assert not k.build_in_child() and not k.built()
    assert not k.build_in_child() and len(k._CHILD) == 1  # one child per process, however many ask


def test_a_process_ending_does_not_wait_for_the_build(tmp_path):
    """The widget's warm-up thread (not a daemon) waits for the build's child, but not once the
    process is ending: it returns, the process exits, the child goes on alone (here a child that
    would take 10 minutes)."""
    env = dict(os.environ, NAPARI_EDOF_CACHE=str(tmp_path))
    env.pop("NAPARI_EDOF_NUMBA", None)
    code = textwrap.dedent("""
        import sys, time
        from napari_edof.methods import _focus_fuse_kernels as k
        k._child_command = lambda: [sys.executable, "-c", "import time; time.sleep(600)"]
        from napari_edof.core import warmup
        t = warmup.start("focus-fuse")
        while not k._CHILD:
            time.sleep(0.05)
        print(k._CHILD[0].pid, t.daemon, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    pid, daemon = out.stdout.split()
    try:
        assert out.returncode == 0, out.stderr
        assert daemon == "False"  # (the warm-up thread: the process would wait for it)
        os.kill(int(pid), 0)  # the child still runs
    finally:
        os.kill(int(pid), 9)


def test_a_child_finds_the_kernels_built_by_another(tmp_path):
    """Under the build lock, a child that finds the record (another process built them while it
    waited) exits at once, successfully."""
    env = dict(os.environ, NAPARI_EDOF_CACHE=str(tmp_path))
    env.pop("NAPARI_EDOF_NUMBA", None)
    subprocess.run([sys.executable, "-c", "from napari_edof.methods._focus_fuse_kernels import mark_built; "
                    "mark_built()"], env=env, check=True, timeout=120)
    code = "import sys; from napari_edof.methods._focus_fuse_build import main; r = main(); " \
           "print(r, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "False"], out.stderr  # built: numba not even imported
    assert (tmp_path / "kernels" / "build.lock").exists()


@pytest.mark.timeout(900)  # (a minute and a half when the machine is otherwise idle, as in CI)
def test_a_build_covers_the_common_stacks(tmp_path):
    """From nothing (an empty numba cache, no record): the widget's warm-up has a child process
    compile the kernels and record them, then loads them; a fresh process then fuses every common
    stack, tiled as the engine tiles it, on the kernels, with nothing left to compile (every
    kernel it calls loaded from numba's cache)."""
    env = dict(os.environ, NAPARI_EDOF_CACHE=str(tmp_path / "cache"), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    env.pop("NAPARI_EDOF_NUMBA", None)
    build = textwrap.dedent("""
        from napari_edof.methods import _focus_fuse_kernels as k, focus_fuse as ff
        assert not k.built()
        assert ff._warm() and k.built() and len(k._CHILD) == 1 and k._CHILD[0].returncode == 0
    """)
    out = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "cache" / "kernels").iterdir())  # the record
    use = textwrap.dedent("""
        import json
        import numpy as np
        import napari_edof
        from napari_edof.methods import focus_fuse as ff
        rng = np.random.default_rng(1)
        notes = []
        for dtype, rgb in ff._BUILD_FOR:
            shape = (5, 150, 170, 3) if rgb else (6, 150, 170)
            hi = 250 if dtype == np.uint8 else (60000 if dtype == np.uint16 else 1)
            x = (rng.random(shape) * hi).astype(dtype)
            r = napari_edof.fuse(x, tile=96, axes="ZYXC" if rgb else "ZYX")
            notes.append(r.provenance.get("method_note"))
        import napari_edof.methods._focus_fuse_numba as ns
        ds = [d for d in vars(ns).values() if hasattr(d, "stats")]
        print(json.dumps({"misses": sum(sum(d.stats.cache_misses.values()) for d in ds),
                          "hits": sum(sum(d.stats.cache_hits.values()) for d in ds), "notes": notes}))
    """)
    out = subprocess.run([sys.executable, "-c", use], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["misses"] == 0 and got["hits"] > 10  # nothing compiled: all from the cache
    assert got["notes"] == [None] * 5  # every run took the kernels
