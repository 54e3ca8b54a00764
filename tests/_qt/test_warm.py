"""The widget's head start on what napari imports for the first Run's decision layer (issue 17)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_list_is_what_napari_imports_for_its_first_labels_layer():
    # a fresh process: none of the modules before a Labels layer is made, every one after
    out = _run("""
        import sys
        import numpy as np
        import napari.layers
        from napari_edof._qt.warm import LABELS_FIRST_IMPORTS as names
        print([n for n in names if n in sys.modules])
        napari.layers.Labels(np.zeros((8, 8), np.uint8))
        print([n for n in names if n not in sys.modules])
    """)
    assert out.split("\n")[:2] == ["[]", "[]"]


def test_start_imports_them_in_one_thread_once():
    out = _run("""
        import sys, threading
        from napari_edof._qt import warm
        before = [n for n in warm.LABELS_FIRST_IMPORTS if n in sys.modules]
        t = warm.start()
        assert t is not threading.current_thread() and warm.start() is t
        t.join(60)
        print(before, [n for n in warm.LABELS_FIRST_IMPORTS if n not in sys.modules])
    """)
    assert out.strip() == "[] []"


def test_the_widget_starts_it(make_napari_viewer, monkeypatch):
    from napari_edof._qt import warm

    calls = []
    monkeypatch.setattr(warm, "start", lambda: calls.append(1))
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-edof", "Fuse focus stack")
    assert calls == [1]
