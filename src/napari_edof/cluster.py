"""``napari_edof.cluster`` is :mod:`napari_edof.core.cluster` (it moved beside the run function):
this name is that module itself, so that code and tests using either see the same functions."""
import sys

from .core import cluster as _cluster

sys.modules[__name__] = _cluster
