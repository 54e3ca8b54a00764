"""Without PyTorch (issue 16): learned methods are listed as unavailable and say what to install;
a missing torch is simulated in a subprocess (``sys.modules["torch"] = None`` in sitecustomize)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CPU_WHEEL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def _run_without_torch(tmp_path, *args):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from napari_edof.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_learned_method_without_torch_says_what_to_install(tmp_path):
    r = _run_without_torch(tmp_path, "fuse", "--sample", "-m", "stackmff-v2", "-o", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert CPU_WHEEL in r.stderr and "stackmff-v2" in r.stderr
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert "%|" not in r.stderr  # no progress bar before the error
    assert not (tmp_path / "out" / "fused.tif").exists()


def test_methods_lists_learned_methods_as_unavailable(tmp_path):
    r = _run_without_torch(tmp_path, "methods")
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln and not ln.startswith(" ")}
    assert "unavailable" in lines["stackmff-v2"] and "unavailable" in lines["ctmfusion"]
    assert "unavailable" not in lines["focus-fuse"]
    assert CPU_WHEEL in r.stdout
    # and a classical method still runs
    r = _run_without_torch(tmp_path, "fuse", "--sample", "-q", "-o", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ok" / "fused.tif").exists()


def test_no_internal_words_in_what_users_read():
    from napari_edof.methods import list_methods

    for s in list_methods():
        text = " ".join([s.summary, s.citation] + [p.help for p in s.params])
        assert "seed paper" not in text.lower(), s.name


def test_widget_marks_learned_methods_unavailable(make_napari_viewer, qtbot, monkeypatch):
    pytest.importorskip("napari")
    from napari_edof.core import spec as spec_mod

    monkeypatch.setattr(spec_mod, "torch_available", lambda: False)
    from napari_edof._qt.fusion_widget import FusionWidget

    w = FusionWidget(make_napari_viewer(show=False))
    qtbot.addWidget(w)
    model = w.method_combo.model()
    i = w.method_combo.findData("stackmff-v2")
    assert "needs PyTorch" in w.method_combo.itemText(i) and not model.item(i).isEnabled()
    assert model.item(w.method_combo.findData("focus-fuse")).isEnabled()
