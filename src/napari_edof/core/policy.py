"""Run-time safety policies of the engine: memory estimates before allocating, and the
out-of-memory back-off of GPU methods (tiles shrink and the run goes on)."""
from __future__ import annotations

import sys

from .errors import StackError

#: Fraction of the available memory a run may plan to use.
MEMORY_FRACTION = 0.9
#: Smallest tile side the out-of-memory back-off goes down to.
MIN_TILE = 32


class OutOfMemory(StackError):
    """The run would not fit in memory (estimated before anything large is allocated)."""


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def available_memory() -> int:
    """Bytes of memory available now (psutil; a large value when it cannot be told)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        return 1 << 62


def fusion_memory(stack, *, frame_in_memory: bool = True) -> int:
    """Bytes a fusion of ``stack`` holds at once: the outputs (fused in the input dtype, index and
    confidence as float32, for every time point) plus one time point's planes when they are read
    whole into memory."""
    T, Z, C = stack.n_times, stack.n_planes, stack.n_channels
    Y, X = stack.yx_shape
    item = stack.dtype.itemsize
    out = T * Y * X * (C * item + 8)
    frame = Z * Y * X * C * item if frame_in_memory and (stack.is_lazy or T > 1) else 0
    return int(out + frame)


def registration_memory(stack) -> int:
    """Bytes :func:`~napari_edof.core.registration.register_stack` holds: the aligned copy, one
    time point read from the source, and float32 work planes (guide, warped plane)."""
    T, Z, C = stack.n_times, stack.n_planes, stack.n_channels
    Y, X = stack.yx_shape
    item = stack.dtype.itemsize
    return int(T * Z * Y * X * C * item + Z * Y * X * (C * item + 8) + 2 * Y * X * 4)


def check_memory(stack, *, frame_in_memory: bool = True, what: str = "fusing", need: int | None = None) -> int:
    """Raise :class:`OutOfMemory` naming the needed and available memory when ``stack`` would not
    fit; returns the estimate otherwise."""
    if need is None:
        need = fusion_memory(stack, frame_in_memory=frame_in_memory)
    avail = available_memory()
    if need > MEMORY_FRACTION * avail:
        shape = "x".join(map(str, stack.shape))
        raise OutOfMemory(
            f"{stack.name}: {what} this {shape} {stack.dtype} stack needs about {_gib(need)} of memory "
            f"but only {_gib(avail)} is available; fuse a region or fewer time points, or use a "
            "machine with more memory"
        )
    return need


def is_oom(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error (torch's, or a RuntimeError saying so)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        if oom is not None and isinstance(exc, oom):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache") and torch.backends.mps.is_available():
            mps.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def smaller_tile(tile: int | None, shape_yx: tuple[int, int], halo: int) -> int | None:
    """The next tile side to try after an out-of-memory error (None: cannot shrink further)."""
    cur = int(tile) if tile else int(max(shape_yx))
    new = cur // 2
    floor = max(MIN_TILE, 16)
    if new < floor:
        return None
    return new
