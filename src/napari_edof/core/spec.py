"""What a fusion method is: its declared spec, its parameters, its weights, and the protocol its
class follows; and the registry, the only list of methods.

A method lives in its own file under ``napari_edof.methods``, declares a :class:`MethodSpec` and
registers a class with :func:`register`; the engine and the widgets know methods only through
this module (``core`` and ``nn`` never import ``methods``: :func:`get_method` imports the method
files by package name, as plugins, the first time a method is looked up).

The protocol (:class:`FusionMethod`)::

    @register(MethodSpec(name="my-method", summary="...", family="classical"))
    class MyMethod:
        first_pass = ()                  # optional: the keys of the first pass's maps (see below)
        weights_sha256 = None            # optional: the hash of the weights this instance loaded

        def __init__(self, params: dict, *, device: str): ...

        def fuse_tile(self, planes, guide, *, halo, stats=None) -> dict:
            # planes: (Z, h, w, C) source window (input dtype), guide: (Z, h, w) float32; returns
            # "fused" (h', w', C), "index" and "confidence" (h', w') of the window cropped by
            # ``halo`` on every side (h' = h - 2 * halo)

A method that needs a whole-image statistic declares a first pass one way: ``first_pass``, the
names of the 2D maps its ``pass1(planes, guide, *, halo) -> dict`` returns for a window (cropped
by ``halo``), and ``reduce(maps) -> stats``. The engine runs ``pass1`` over every tile, stitches
the maps over the whole image, calls ``reduce`` once and hands ``stats`` to every ``fuse_tile``.
A first pass that depends on the parameters is declared on the class (its keys, or ``()``) and set
again per instance in ``__init__`` (an empty ``first_pass``: no first pass).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from .errors import MethodError

#: the method a run uses when none is named
DEFAULT_METHOD = "focus-fuse"

#: the packages whose modules register methods (imported on the first look-up)
METHOD_PACKAGES = ["napari_edof.methods"]


@dataclass(frozen=True)
class Param:
    """A typed, bounded parameter of a method (the widget and the CLI are generated from these).

    ``label`` is the readable name the widget shows (default: the name with spaces, capitalised);
    ``advanced`` parameters, the ones a user rarely changes, are shown under the widget's
    collapsed "Advanced" section.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    label: str = ""
    advanced: bool = False

    @property
    def title(self) -> str:
        """The label shown to users (``label``, else the name made readable)."""
        if self.label:
            return self.label
        text = self.name.replace("_", " ")
        return text[:1].upper() + text[1:]

    def validate(self, value, method: str):
        """``value`` (Python from the API or the widget, text from the CLI) as this parameter's
        type, within its bounds or choices; a MethodError naming it otherwise. The same reading for
        every caller: 3.7, True or "2.5" for an int, NaN for a float, "maybe" for a bool are refused."""
        from .values import to_bool, to_float, to_int

        label = f"{method}: {self.name}"
        if self.choices is not None:
            v = value.strip() if isinstance(value, str) else value
            if v not in self.choices:
                raise MethodError(f"{label}={value!r} is not one of {', '.join(map(str, self.choices))}")
            return v
        if self.type is bool:
            return to_bool(value, label, MethodError)
        if self.type is int:
            v = to_int(value, label, MethodError)
        elif self.type is float:
            v = to_float(value, label, MethodError)
        elif self.type is str:
            if not isinstance(value, str):
                raise MethodError(f"{label}={value!r} is not text")
            return value
        else:
            try:
                return self.type(value)
            except (TypeError, ValueError):
                raise MethodError(f"{label}={value!r} is not a valid {self.type.__name__}") from None
        if self.min is not None and v < self.min:
            raise MethodError(f"{label}={v} is below its minimum {self.min}")
        if self.max is not None and v > self.max:
            raise MethodError(f"{label}={v} is above its maximum {self.max}")
        return v


@dataclass(frozen=True)
class WeightsSpec:
    """Third-party or shipped weights: where to get them and how to check them."""

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str = ""
    licence: str = ""
    citation: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """What a method declares about itself.

    ``halo(params)`` is its receptive field in pixels (how far outside a tile it reads);
    ``tile_multiple`` is the alignment of tile origins it needs to be tile-exact (pyramids);
    ``backend`` is "numpy" (runs in threads, releases the GIL) or "torch";
    ``default_tile`` is the tile side used when the caller does not choose one (an int, or
    ``f(params, n_planes) -> int`` for methods whose working memory grows with the planes), and
    ``default_overlap`` the feathered overlap between tiles: 0 for methods whose halo covers their
    whole receptive field (tiles then agree exactly), more for networks whose normalisation sees
    the whole input.
    ``synthesises(params)`` says whether the method, with these parameters, may put values in the
    fused image that no source plane holds (a network's output rather than a selection or a blend
    of the planes): those runs get the audit (:mod:`napari_edof.core.audit`) by default.
    ``integer_guide``: ``fuse_tile`` takes the guide of a one-channel stack of 8- or 16-bit integers
    in the planes' own dtype (a view of the window, every value exact in float32), instead of a
    float32 copy made per tile.
    ``warm()``, where given, loads what the method's first tile would otherwise wait for (compiled
    kernels from numba's cache), run by :mod:`napari_edof.core.warmup` in a thread while the widget
    waits for Run.
    ``instance_key()``, where given, says what besides the parameters and the device makes the
    instance made now differ from one made earlier (focus-fuse: whether its compiled kernels are
    built): a lazy graph's tasks, which share one instance per process, share it per key too, taken
    when the graph is built (so one computation never mixes two kinds of instance).
    """

    name: str
    summary: str
    family: str  # "classical" or "learned"
    params: tuple[Param, ...] = ()
    halo: Callable[[dict], int] = lambda p: 0
    tile_multiple: Callable[[dict], int] = lambda p: 1
    devices: tuple[str, ...] = ("cpu",)
    backend: str = "numpy"
    default_tile: int | Callable[[dict, int], int] = 256
    default_overlap: int = 0
    weights: WeightsSpec | None = None
    #: measured: in half precision on CUDA the focus index stays identical (``precision="auto"``
    #: then uses it there); see ``benchmarks/gpu_check.py``
    half_precision: bool = False
    integer_guide: bool = False
    warm: Callable[[], object] | None = None
    instance_key: Callable[[], Hashable] | None = None
    synthesises: Callable[[dict], bool] = lambda p: False
    citation: str = ""
    paper: str = ""

    def tile_for(self, params: dict, n_planes: int) -> int:
        """The default tile side for a stack of ``n_planes`` planes."""
        t = self.default_tile
        return int(t(params, n_planes) if callable(t) else t)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: dict | None) -> dict:
        """Defaults overridden by ``params``, each validated; unknown names are refused."""
        if params is not None and not isinstance(params, Mapping):
            raise MethodError(f"params must be a dict of name: value (for example {{'radius': 3}}), not {params!r}")
        params = dict(params or {})
        bad = sorted(repr(k) for k in params if not isinstance(k, str))
        if bad:
            raise MethodError(f"parameter names are text: {', '.join(bad)} is not a parameter of {self.name!r}")
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise MethodError(
                f"method {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(known) or 'none'}"
            )
        out = self.defaults()
        for k, v in params.items():
            out[k] = known[k].validate(v, self.name)
        return out


#: what to install for the learned methods (the CPU build: no gigabytes of CUDA on a laptop)
TORCH_INSTALL = ("pip install torch --index-url https://download.pytorch.org/whl/cpu  (the CPU build; "
                 "for an NVIDIA GPU see https://pytorch.org/get-started/locally/)")


def torch_available() -> bool:
    """Whether torch can be imported, without importing it (``import napari_edof`` stays light)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def available(spec: MethodSpec) -> bool:
    """Whether a method can run here: learned (torch) methods need torch installed."""
    return spec.backend != "torch" or torch_available()


def require_available(spec: MethodSpec) -> None:
    """A clear MethodError saying what to install when ``spec``'s method cannot run here."""
    if not available(spec):
        raise MethodError(f"method {spec.name!r} is a learned method and needs PyTorch, which is not installed; "
                          f"install it with: {TORCH_INSTALL}; or choose a classical method "
                          "(napari-edof methods lists them)")


def context_halo(params: dict) -> int:
    """The halo of networks that read ``context`` extra pixels around each tile (their parameter)."""
    return int(params["context"])


@runtime_checkable
class FusionMethod(Protocol):
    """The class a method registers (see the module's docstring). ``first_pass`` and
    ``weights_sha256`` are optional in a method's class: :func:`register` gives them their
    defaults (no first pass; the spec's weights)."""

    spec: ClassVar[MethodSpec]
    #: the keys of the first pass's maps; empty: no first pass (``pass1`` and ``reduce`` unused)
    first_pass: tuple[str, ...]
    #: the sha256 of the weights this instance loaded (None: those of ``spec.weights``, if any)
    weights_sha256: str | None

    def __init__(self, params: dict, *, device: str) -> None: ...

    def fuse_tile(self, planes, guide, *, halo: int, stats=None) -> dict: ...


class FirstPass(Protocol):
    """The optional first pass of a :class:`FusionMethod` (``first_pass`` not empty)."""

    first_pass: tuple[str, ...]

    def pass1(self, planes, guide, *, halo: int) -> dict: ...

    def reduce(self, maps: dict) -> Any: ...


#: older spellings of a first pass, refused at registration (one way to declare it: ``first_pass``)
_OLD_FIRST_PASS = ("pass1_keys", "needs_pass1")

_REGISTRY: dict[str, tuple[MethodSpec, type]] = {}
_LOADED = False


def _check_method_class(cls, name: str) -> None:
    if not callable(getattr(cls, "fuse_tile", None)):
        raise TypeError(f"method {name!r}: {cls.__name__} has no fuse_tile(planes, guide, *, halo, stats=None)")
    old = [a for a in _OLD_FIRST_PASS if hasattr(cls, a)]
    if old:
        raise TypeError(f"method {name!r}: {cls.__name__} declares its first pass with {', '.join(old)}; "
                        "declare it with first_pass (the keys of pass1's maps; set per instance when it "
                        "depends on the parameters), pass1 and reduce")
    if not hasattr(cls, "first_pass"):
        if hasattr(cls, "pass1") or hasattr(cls, "reduce"):
            raise TypeError(f"method {name!r}: {cls.__name__} has pass1/reduce but no first_pass (the keys of "
                            "pass1's maps)")
        cls.first_pass = ()
    elif cls.first_pass and not (callable(getattr(cls, "pass1", None)) and callable(getattr(cls, "reduce", None))):
        raise TypeError(f"method {name!r}: {cls.__name__} declares first_pass {cls.first_pass!r} without pass1 "
                        "and reduce")
    if not hasattr(cls, "weights_sha256"):
        cls.weights_sha256 = None


def register(spec: MethodSpec):
    """Class decorator: register a method class under ``spec.name`` (checked against the
    :class:`FusionMethod` protocol; its optional members get their defaults)."""

    def deco(cls):
        if spec.name in _REGISTRY and _REGISTRY[spec.name][1] is not cls:
            raise RuntimeError(f"method {spec.name!r} registered twice")
        _check_method_class(cls, spec.name)
        cls.spec = spec
        _REGISTRY[spec.name] = (spec, cls)
        return cls

    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_all() -> None:
    """Import every public module of :data:`METHOD_PACKAGES` so that each registers itself."""
    global _LOADED
    if _LOADED:
        return
    for name in METHOD_PACKAGES:
        pkg = importlib.import_module(name)
        for m in pkgutil.iter_modules(pkg.__path__):
            if not m.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{m.name}")
    _LOADED = True


def list_methods(family: str | None = None) -> list[MethodSpec]:
    """Every registered method's spec, the default first, then by name.

    Names starting with "_" (private, e.g. methods registered by tests) are not listed.
    """
    _load_all()
    specs = [
        s for s, _ in _REGISTRY.values()
        if not s.name.startswith("_") and (family is None or s.family == family)
    ]
    return sorted(specs, key=lambda s: (s.name != DEFAULT_METHOD, s.family, s.name))


def get_method(name: str):
    """The spec and class registered under ``name`` (a clear error listing the choices otherwise)."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


__all__ = ["DEFAULT_METHOD", "TORCH_INSTALL", "available", "require_available", "torch_available",
           "FirstPass", "FusionMethod", "MethodSpec", "Param", "WeightsSpec", "context_halo",
           "get_method", "list_methods", "register", "unregister"]
