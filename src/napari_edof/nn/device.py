"""Choosing a torch device: cuda, then mps, then cpu, unless the user says otherwise."""
from __future__ import annotations

from ..core.errors import StackError


def available_devices() -> list[str]:
    """Devices torch can use here (cpu always), without failing when torch is missing."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    out = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def pick_device(device: str | None, supported: tuple[str, ...] = ("cuda", "mps", "cpu")) -> str:
    avail = available_devices()
    if device in (None, "auto"):
        for want in ("cuda", "mps", "cpu"):
            if want in supported:
                for a in avail:
                    if a.split(":")[0] == want:
                        return a
        return "cpu"
    kind = device.split(":")[0]
    if kind not in supported:
        raise StackError(f"this method does not run on {device!r}; it runs on {', '.join(supported)}")
    if device == "cuda" and any(a.startswith("cuda") for a in avail):
        return "cuda:0"
    if device not in avail:
        raise StackError(f"device {device!r} is not available here; available: {', '.join(avail)}")
    return device
