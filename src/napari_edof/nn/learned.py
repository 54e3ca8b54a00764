"""What the learned methods share: the network loaded once per process and device (hash-checked),
the hash of the weights an instance uses (for the provenance), and the halo crop.

A learned method's class derives from :class:`LearnedMethod` and loads its network with
:func:`load_network`; torch is imported only when a network is built.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.spec import WeightsSpec
from ..core.tiling import crop_halo
from .weights import cached_model, load_state_dict


def load_network(cache: dict, key, weights: WeightsSpec, make: Callable[[dict], Any], device: str):
    """``cache[key]``: the network ``make(state_dict)`` builds, with ``weights`` loaded (strictly,
    after their sha256 is checked), in eval mode on ``device``; built once per process and key."""

    def build():
        sd = load_state_dict(weights)
        m = make(sd)
        m.load_state_dict(sd, strict=True)
        return m.eval().to(device)

    return cached_model(cache, key, build)


class LearnedMethod:
    """Base of the learned methods' classes (:class:`~napari_edof.core.spec.FusionMethod`)."""

    #: no first pass unless a method declares one
    first_pass: tuple[str, ...] = ()
    #: the sha256 of the weights this instance uses (set by :meth:`use_weights`)
    weights_sha256: str | None = None

    def use_weights(self, weights: WeightsSpec) -> None:
        """Name the weights this instance runs with (a method may offer several)."""
        self.weights_sha256 = weights.sha256

    #: a window's result cropped by the halo (on its last two axes unless told)
    crop = staticmethod(crop_halo)


__all__ = ["LearnedMethod", "load_network"]
