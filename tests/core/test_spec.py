"""The method protocol (core.spec): every registered method follows it, and it is declared one way."""
from __future__ import annotations

import numpy as np
import pytest

import napari_edof as ne
from napari_edof.core import spec as S
from napari_edof.methods import _registry


def test_the_registry_module_re_exports_core_spec():
    for name in ("MethodSpec", "Param", "WeightsSpec", "FusionMethod", "register", "get_method", "list_methods",
                 "DEFAULT_METHOD", "context_halo", "unregister"):
        assert getattr(_registry, name) is getattr(S, name), name


@pytest.mark.parametrize("name", [s.name for s in ne.list_methods()])
def test_every_method_class_follows_the_protocol(name):
    spec, cls = S.get_method(name)
    assert cls.spec is spec
    assert callable(cls.fuse_tile)
    assert isinstance(cls.first_pass, tuple)  # the class's declaration (instances may choose by parameter)
    assert hasattr(cls, "weights_sha256")
    if cls.first_pass or "pass1" in dir(cls):
        assert callable(cls.pass1) and callable(cls.reduce)
    for old in ("pass1_keys", "needs_pass1"):
        assert not hasattr(cls, old), f"{name}: {old} (the first pass is declared by first_pass)"


def test_classical_instances_are_fusion_methods():
    for spec in ne.list_methods("classical"):
        _, cls = S.get_method(spec.name)
        impl = cls(spec.defaults(), device="cpu")
        assert isinstance(impl, S.FusionMethod)
        assert isinstance(impl.first_pass, tuple)


def _spec(name):
    return S.MethodSpec(name=name, summary="test", family="classical")


class _Tile:
    def fuse_tile(self, planes, guide, *, halo, stats=None):
        g = guide[:, halo: guide.shape[1] - halo, halo: guide.shape[2] - halo]
        shape = g.shape[1:]
        return {"fused": g[0], "index": np.zeros(shape, np.float32), "confidence": np.ones(shape, np.float32)}


def test_optional_members_get_their_defaults():
    @S.register(_spec("_defaults"))
    class M(_Tile):
        def __init__(self, params, *, device):
            pass

    try:
        assert M.first_pass == () and M.weights_sha256 is None
        assert ne.fuse(np.zeros((3, 20, 20), np.uint8), method="_defaults").provenance["method"] == "_defaults"
    finally:
        S.unregister("_defaults")


@pytest.mark.parametrize("body,words", [
    ({"pass1_keys": ("a",)}, "declare it with first_pass"),
    ({"needs_pass1": staticmethod(lambda p: True)}, "declare it with first_pass"),
    ({"pass1": lambda self, planes, guide, *, halo: {}, "reduce": lambda self, maps: None}, "no first_pass"),
    ({"first_pass": ("a",)}, "without pass1 and reduce"),
])
def test_other_spellings_of_a_first_pass_are_refused(body, words):
    cls = type("Bad", (_Tile,), dict(body))
    with pytest.raises(TypeError, match=words):
        S.register(_spec("_bad"))(cls)
    assert "_bad" not in S._REGISTRY


def test_a_class_without_fuse_tile_is_refused():
    with pytest.raises(TypeError, match="fuse_tile"):
        S.register(_spec("_no_tile"))(type("NoTile", (), {}))


def test_the_inspector_helpers_run_without_qt():
    """The height mesh and the measure settings live in core (the inspector imports them)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from napari_edof.core.surface import height_mesh, texture_image; "
            "from napari_edof.core.inspect import measure_settings; "
            "v, f, r, c = height_mesh(np.zeros((8, 9), np.float32)); assert v.shape == (72, 3); "
            "assert measure_settings('focus-select', {})[0]['measure'] == 'laplacian'; "
            "assert not any(m.startswith(('qtpy', 'PyQt', 'napari.', 'matplotlib')) for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
