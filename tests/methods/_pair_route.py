"""Shared by the pair networks' tests (msas, ctmfusion): their CPU route against the plain path."""
from __future__ import annotations

import numpy as np

import napari_edof as ne


def assert_cpu_route_matches_plain(method: str, planes: np.ndarray, threads: int, monkeypatch) -> None:
    """``method`` fused with the CPU route (``threads`` torch threads, restored after) and with the
    plain path (every pair through the network, one thread): the same index and image, the
    confidence to round-off. Leaves the CPU route switched on."""
    import torch

    from napari_edof.nn import accel

    torch.set_num_threads(threads)
    fast = ne.fuse(planes, method=method, tile=None)
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(accel, "PAIR_CPU_ROUTE", False)
    torch.set_num_threads(1)  # (the plain path is the slow one with intra-op threads under load)
    plain = ne.fuse(planes, method=method, tile=None)
    np.testing.assert_array_equal(fast.index, plain.index)
    np.testing.assert_array_equal(fast.fused, plain.fused)
    np.testing.assert_allclose(fast.confidence, plain.confidence, atol=1e-5)
    monkeypatch.setattr(accel, "PAIR_CPU_ROUTE", True)
