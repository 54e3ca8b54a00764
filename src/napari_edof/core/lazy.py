"""Modules imported on first use, so that ``import napari_edof``, ``napari-edof methods`` and
``--help`` do not load scipy or PyWavelets (the methods register without them)."""
from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module ``name``: imported at the first attribute read; every attribute read
    once is then kept on this object (later reads cost a plain attribute lookup)."""

    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # (copy, pickle and doctest probe these: the module's own)
            return getattr(importlib.import_module(self._name), attr)
        value = getattr(importlib.import_module(self._name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


__all__ = ["LazyModule"]
