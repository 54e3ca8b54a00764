"""Fusion methods: one file per method, each registering itself (see ``_registry``)."""
from ._registry import DEFAULT_METHOD, MethodSpec, Param, WeightsSpec, get_method, list_methods, register

__all__ = ["DEFAULT_METHOD", "MethodSpec", "Param", "WeightsSpec", "get_method", "list_methods", "register"]
