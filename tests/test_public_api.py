"""The public surface does not change by accident: the names of ``napari_edof.__all__`` and
``napari_edof.api.__all__`` and their signatures, as text. A deliberate change edits these tables
(and says so in the changelog/commit); run this file's ``_surface`` to print today's."""
from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import napari_edof
from napari_edof import api


def _signature(obj) -> str:
    if inspect.isclass(obj):
        try:
            return "class" + str(inspect.signature(obj))
        except (TypeError, ValueError):
            return "class"
    if callable(obj):
        return str(inspect.signature(obj))
    return type(obj).__name__


def _surface(module) -> dict[str, str]:
    return {name: _signature(getattr(module, name)) for name in sorted(module.__all__)}


PACKAGE = {
    'EdofError': 'class',
    'FusionResult': "class(fused: 'Any', index: 'Any', confidence: 'Any', n_planes: 'int', provenance: 'dict' = <factory>, pixel_size: 'tuple[float, float] | None' = None, z_step: 'float | None' = None, unit: 'str' = 'pixel', rgb: 'bool' = False, audit: 'Any' = None, audit_mask: 'Any' = None) -> None",
    'Progress': "class(done: 'int', total: 'int', stage: 'str' = 'fuse', frame: 'int' = 0) -> None",
    'Stack': "class(data: 'Any', axes: 'str', pixel_size: 'tuple[float, float] | None' = None, z_step: 'float | None' = None, unit: 'str' = 'pixel', rgb: 'bool' = False, name: 'str' = 'stack', source: 'tuple[str, ...]' = (), metadata: 'dict' = <factory>) -> None",
    '__version__': 'str',
    'fuse': "(stack, *, progress: 'Callable[[Progress], None] | None' = None, lazy: 'bool | None' = None, **kwargs) -> 'FusionResult'",
    'fuse_iter': "(stack, *, method: 'str' = 'focus-fuse', params: 'dict | None' = None, axes: 'str | None' = None, tile: 'int | str | None' = 'auto', overlap: 'int | None' = None, device: 'str | None' = None, guide='auto', workers: 'int | None' = None, register=None, precision: 'str' = 'auto', audit: 'bool | None' = None) -> 'Generator[Progress, None, FusionResult]'",
    'get_method': "(name: 'str')",
    'list_methods': "(family: 'str | None' = None) -> 'list[MethodSpec]'",
    'open_stack': "(source, *, axes: 'str | None' = None, name: 'str | None' = None) -> 'Stack'",
    'sample_stack': "(*, n_planes: 'int' = 8, shape: 'tuple[int, int]' = (256, 256), rgb: 'bool' = False, dtype=<class 'numpy.uint16'>, seed: 'int' = 0, sigma_step: 'float' = 1.0, scene: 'str' = 'cells') -> 'Sample'",
}

API = {
    'EdofError': 'class',
    'FusionResult': "class(fused: 'Any', index: 'Any', confidence: 'Any', n_planes: 'int', provenance: 'dict' = <factory>, pixel_size: 'tuple[float, float] | None' = None, z_step: 'float | None' = None, unit: 'str' = 'pixel', rgb: 'bool' = False, audit: 'Any' = None, audit_mask: 'Any' = None) -> None",
    'Progress': "class(done: 'int', total: 'int', stage: 'str' = 'fuse', frame: 'int' = 0) -> None",
    'RegistrationReport': "class(mode: 'str', reference: 'int', edges: 'str', crop_box: 'tuple[int, int, int, int] | None', planes: 'list[PlaneTransform]', downscale: 'float' = 1.0) -> None",
    'Stack': "class(data: 'Any', axes: 'str', pixel_size: 'tuple[float, float] | None' = None, z_step: 'float | None' = None, unit: 'str' = 'pixel', rgb: 'bool' = False, name: 'str' = 'stack', source: 'tuple[str, ...]' = (), metadata: 'dict' = <factory>) -> None",
    'as_stack': "(data, *, axes: 'str | None' = None, rgb: 'bool | None' = None, name: 'str' = 'stack', **meta) -> 'Stack'",
    'available_devices': "() -> 'list[str]'",
    'evaluate': "(result_or_fused, stack, truth=None, *, metrics=None, data_range=None) -> 'dict'",
    'focus_curve': "(stack, y: 'int', x: 'int', *, t: 'int' = 0, measure: 'str' = 'laplacian', radius: 'int' = 4, step: 'int' = 1, threshold: 'float' = 0.0, guide='auto', axes: 'str | None' = None) -> 'np.ndarray'",
    'fuse': "(stack, *, progress: 'Callable[[Progress], None] | None' = None, lazy: 'bool | None' = None, **kwargs) -> 'FusionResult'",
    'fuse_iter': "(stack, *, method: 'str' = 'focus-fuse', params: 'dict | None' = None, axes: 'str | None' = None, tile: 'int | str | None' = 'auto', overlap: 'int | None' = None, device: 'str | None' = None, guide='auto', workers: 'int | None' = None, register=None, precision: 'str' = 'auto', audit: 'bool | None' = None) -> 'Generator[Progress, None, FusionResult]'",
    'fuse_many': "(stacks, *, client=None, workers: 'int | None' = None, progress=None, **options) -> 'list'",
    'fuse_many_iter': "(stacks, *, client=None, workers: 'int | None' = None, **options)",
    'get_method': "(name: 'str')",
    'list_methods': "(family: 'str | None' = None) -> 'list[MethodSpec]'",
    'open_stack': "(source, *, axes: 'str | None' = None, name: 'str | None' = None) -> 'Stack'",
    'recompose': "(stack, labels, *, fill=None, axes: 'str | None' = None) -> 'np.ndarray'",
    'register_stack': "(stack, *, mode: 'str' = 'translation', reference: 'int | None' = None, scale: 'bool' = True, rotation: 'bool' = True, edges: 'str' = 'crop', guide='auto', max_size: 'int' = 1024, order: 'int' = 3, axes: 'str | None' = None) -> 'tuple[Stack, RegistrationReport]'",
    'sample_stack': "(*, n_planes: 'int' = 8, shape: 'tuple[int, int]' = (256, 256), rgb: 'bool' = False, dtype=<class 'numpy.uint16'>, seed: 'int' = 0, sigma_step: 'float' = 1.0, scene: 'str' = 'cells') -> 'Sample'",
}


@pytest.mark.parametrize("module,expected", [(napari_edof, PACKAGE), (api, API)], ids=["napari_edof", "api"])
def test_public_surface_is_unchanged(module, expected):
    got = _surface(module)
    assert sorted(got) == sorted(expected), "names added or removed from __all__"
    for name, sig in expected.items():
        assert got[name] == sig, f"{module.__name__}.{name}: the signature changed"


def test_every_public_name_exists():
    for module in (napari_edof, api):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names {name!r}, which is missing"


def test_one_version():
    """The version is written once (napari_edof/_version.py; pyproject reads it from there)."""
    from napari_edof._version import __version__

    assert napari_edof.__version__ == __version__
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "napari_edof._version.__version__" in text
    try:
        installed = importlib.metadata.version("napari-edof")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == __version__


def test_package_is_typed():
    assert (Path(napari_edof.__file__).parent / "py.typed").is_file()


_NO_SCIPY = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("scipy is blocked")
sys.meta_path.insert(0, _Block())
import napari_edof
from napari_edof import api
for heavy in ("scipy", "torch", "qtpy", "napari", "dask", "zarr", "skimage"):
    assert heavy not in sys.modules, heavy + " imported"
print("ok")
"""


def test_import_needs_neither_scipy_nor_torch_nor_qt():
    """``import napari_edof`` stays light: scipy (pulled by registration), torch, Qt, napari,
    dask, zarr and scikit-image are imported only when something uses them."""
    out = subprocess.run([sys.executable, "-c", _NO_SCIPY], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]



#: what start-up must not load (issue 17): the machinery of reading, fusing and training
_HEAVY = ("scipy", "dask", "tifffile", "pywt", "zarr", "torch", "skimage", "PIL", "napari", "qtpy", "tqdm", "numba")

_STARTUP = f"""
import contextlib, io, sys
from napari_edof.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:  # --help
        code = e.code
assert code == 0, code
assert out.getvalue().strip(), "nothing printed"
print(" ".join(sorted(m for m in {_HEAVY!r} if m in sys.modules)) or "none")
"""


@pytest.mark.parametrize("argv", [["methods"], ["methods", "-v"], ["--help"], ["fuse", "--help"],
                                  ["evaluate", "--help"]], ids=" ".join)
def test_cli_start_up_loads_only_what_the_command_needs(argv):
    """``napari-edof methods`` and ``--help`` import neither scipy, dask, tifffile nor PyWavelets
    (the methods register without them; they are imported when a method runs)."""
    out = subprocess.run([sys.executable, "-c", _STARTUP, *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "none", out.stdout


def test_import_loads_none_of_the_heavy_packages():
    """``import napari_edof`` loads not even numpy: the public names import the API on first use."""
    code = f"import sys, napari_edof; print(' '.join(m for m in {_HEAVY + ('numpy',)!r} if m in sys.modules) or 'none')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "none", (out.stdout, out.stderr[-2000:])


def test_a_method_still_runs_after_a_light_start():
    """The lazily imported modules load when a method uses them (here scipy and PyWavelets)."""
    code = ("import sys, napari_edof as ne; s = ne.sample_stack(n_planes=3, shape=(32, 32)).stack\n"
            "for m in ('focus-select', 'pyramid', 'wavelet'): ne.fuse(s, method=m)\n"
            "print('scipy' in sys.modules, 'pywt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "True True", out.stderr[-2000:]
