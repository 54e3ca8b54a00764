"""The method registry, as the method files and older code import it.

It lives in :mod:`napari_edof.core.spec` (with :class:`MethodSpec`, :class:`Param`,
:class:`WeightsSpec` and the :class:`FusionMethod` protocol), so that the engine (``core``) and
``nn`` know methods without importing this package; every name is re-exported here.
"""
from __future__ import annotations

from ..core.spec import (
    DEFAULT_METHOD,
    FirstPass,
    FusionMethod,
    MethodSpec,
    Param,
    WeightsSpec,
    context_halo,
    get_method,
    list_methods,
    register,
    unregister,
)

__all__ = ["DEFAULT_METHOD", "FirstPass", "FusionMethod", "MethodSpec", "Param", "WeightsSpec", "context_halo",
           "get_method", "list_methods", "register", "unregister"]
