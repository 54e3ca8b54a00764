"""Planning a fusion: the one place where a run's options are checked and registration is applied.

:func:`plan_fusion` turns a stack and the options of :func:`napari_edof.fuse` into a
:class:`FusionPlan` (the method, its parameters, the device, the precision, the tiles); every run
path (in memory, streamed, lazy, on a cluster, the widget) starts from it and runs it with
:func:`napari_edof.core.run.run_frames` or its per-stripe parts. Nothing here reads pixels, except
the registration ``register=`` asks for (the plan's stack is then the aligned one, and re-planning
after an out-of-memory error starts from it: a run registers its stack once).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import registration
from .colour import resolve_guide
from .errors import StackError
from .policy import check_memory, is_oom
from .scaling import value_scale
from .spec import DEFAULT_METHOD, get_method, require_available
from .stack import Stack, as_stack
from .tiling import plan_tiles
from .values import to_bool, to_count, to_int

#: the most planes a stack may have: focus indices are int16 (and decision labels plane + 1 uint16)
MAX_PLANES = 32767


def resolve_device(device: str | None, devices: tuple[str, ...], backend: str) -> str:
    """``None``/"auto": cuda, then mps, then cpu, among what the method runs on."""
    if backend != "torch":
        if device not in (None, "auto", "cpu"):
            raise StackError(f"this method runs on the CPU only (numpy); device {device!r} is not available")
        return "cpu"
    from ..nn.device import pick_device

    return pick_device(device, devices)


@dataclass(frozen=True)
class FusionPlan:
    """Everything decided before the first tile: the method, its parameters, the tiles."""

    stack: Stack
    spec: Any
    cls: Any
    params: dict
    device: str
    guide: Any
    tile: int | None
    tiles: list
    halo: int
    overlap: int
    workers: int
    precision: str = "float32"  # "float32" or "half" (then ``gate`` keeps or drops it at the first tile)
    gate: Any = None
    value_scale: float = 1.0  # extreme floats: planes are fused times this power of two (core.scaling)
    #: whether the run audits its fused image against the sources (core/audit.py)
    audit: bool = False
    #: the options the plan was made with (``register`` left out: the plan's stack is aligned), for
    #: :meth:`replan`
    options: dict = field(default_factory=dict, compare=False)
    #: ``spec.instance_key()`` when a lazy graph was built (its tasks share one method instance per
    #: process and key: see ``core.stream._impl``); None otherwise
    instance_key: Any = None

    def impl_params(self) -> dict:
        """The parameters the method instance gets: those in image units scaled like the planes."""
        if self.value_scale != 1.0 and self.params.get("noise"):
            return dict(self.params, noise=float(self.params["noise"]) * self.value_scale)
        return self.params

    def make_impl(self):
        return self.cls(self.impl_params(), device=self.device)

    def is_two_pass(self, impl) -> bool:
        """The method instance ``impl`` has a first pass (``impl.first_pass``, set by parameter)."""
        return bool(impl.first_pass)

    def replan(self, tile: int) -> FusionPlan:
        """The same run with tiles of ``tile`` pixels (the out-of-memory back-off), from this plan's
        stack: already aligned, never registered again."""
        return plan_fusion(self.stack, **{**self.options, "tile": tile})


def plan_fusion(stack, *, method: str = DEFAULT_METHOD, params: dict | None = None, axes: str | None = None,
                tile: int | str | None = "auto", overlap: int | None = None, device: str | None = None,
                guide="auto", workers: int | None = None, register=None, precision: str = "auto",
                audit: bool | None = None, in_memory: bool = False) -> FusionPlan:
    """Check the options and plan the tiles: the only place a run's options are checked and its
    stack registered. No pixel is read, unless ``register`` asks to align the planes first (the
    plan's stack is then the aligned one). ``in_memory``: the run holds the whole stack, its
    outputs and working memory in memory; one that would not fit is refused first
    (:class:`~napari_edof.core.policy.OutOfMemory`). ``audit``: None (the method's choice: on for
    methods that synthesise values, ``MethodSpec.synthesises``), True or False. Raises EdofError
    subclasses."""
    options = dict(method=method, params=params, tile=tile, overlap=overlap, device=device, guide=guide,
                   workers=workers, precision=precision, audit=audit)
    reg_opts = registration.parse_register(register)
    stack = as_stack(stack, axes=axes)
    if in_memory:
        check_memory(stack)
    if stack.n_planes > MAX_PLANES:
        raise StackError(f"{stack.name}: {stack.n_planes} planes are more than the {MAX_PLANES} napari-edof can "
                         "fuse (the focus index is 16-bit); fuse sub-stacks, or every k-th plane")
    spec, cls = get_method(method)
    require_available(spec)  # a learned method without torch: say what to install, before any work
    if reg_opts is not None:
        spec.resolve(params)  # refuse bad parameters before the (slow) registration
        stack, _ = registration.register_stack(stack, **reg_opts)
    p = spec.resolve(params)
    audit = bool(spec.synthesises(p)) if audit is None else to_bool(audit, "audit", StackError)
    dev = resolve_device(device, spec.devices, spec.backend)
    g = resolve_guide(guide, stack.n_channels, stack.rgb)
    tile = parse_tile(tile)
    if tile == "auto":
        tile = spec.tile_for(p, stack.n_planes)
    halo = int(spec.halo(p))
    mult = int(spec.tile_multiple(p))
    Y, X = stack.yx_shape
    single = not tile or tile >= max(Y, X)
    ov = (0 if single else spec.default_overlap) if overlap is None else to_int(overlap, "overlap", StackError)
    if ov < 0:
        raise StackError(f"overlap={ov} must be 0 or more")
    if workers is not None:
        workers = to_count(workers, "workers", 1, StackError)
    tiles = plan_tiles((Y, X), tile, halo=halo, overlap=ov, multiple=mult)
    prec = resolve_precision(precision, spec, dev)
    if spec.backend == "torch":
        from ..nn.accel import lanes

        nw = lanes(dev)  # CUDA: tiles in two threads, each on its own stream; elsewhere one at a time
    else:
        nw = max(1, int(workers or os.cpu_count() or 1))
    return FusionPlan(stack=stack, spec=spec, cls=cls, params=p, device=dev, guide=g,
                      tile=None if single else int(tile), tiles=tiles,
                      halo=tiles[0].halo, overlap=tiles[0].overlap, workers=nw, precision=prec,
                      gate=HalfGate(dev) if prec == "half" else None, value_scale=value_scale(stack),
                      audit=audit, options=options)


def parse_tile(tile, name: str = "tile"):
    """``tile`` as the API and the CLI take it: "auto", None or 0 (no tiling), or a whole number of
    pixels of at least 16 (an int, or its text: "32"). Anything else is a StackError."""
    if tile is None or (isinstance(tile, str) and tile.strip().lower() == "auto"):
        return None if tile is None else "auto"
    try:
        t = to_int(tile, name, StackError)
    except StackError:
        raise StackError(f"{name} must be a number of pixels, 'auto' or 0, not {tile!r}") from None
    if t != 0 and t < 16:
        raise StackError(f"{name}={t} is too small: use at least 16 pixels (or 0 for no tiling)")
    return t


PRECISIONS = ("auto", "float32", "half")


def resolve_precision(precision: str | None, spec, device: str) -> str:
    """"float32" or "half" for a run of ``spec`` on ``device``.

    "auto" is half precision only on CUDA and only for methods that declare it measured safe
    (``MethodSpec.half_precision``); "half" asks for it on any device a learned method runs on
    (bfloat16 on the CPU); either way :class:`HalfGate` drops it if the first tile's index differs.
    """
    precision = "auto" if precision is None else str(precision).lower()
    if precision not in PRECISIONS:
        raise StackError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "half" and spec.backend != "torch":
        raise StackError(f"{spec.name} computes in float32 on the CPU (numpy); precision='half' is for the "
                         "learned methods")
    if precision == "auto":
        return "half" if spec.half_precision and device.startswith("cuda") else "float32"
    return precision


class HalfGate:
    """Half precision, kept only where the focus index stays identical.

    The first tile a run fuses is fused twice, in float32 and in half precision; half precision
    is kept for the run only if the tile's focus index is bitwise identical, else the run goes on
    in float32 (as it does when the method fails in half precision). A first pass (whole-image
    statistics) always runs in float32. Thread-safe: other tiles wait for the decision.
    :attr:`report` goes into the provenance.
    """

    def __init__(self, device: str):
        self.device = device
        self.state = "unchecked"  # then "half" or "float32"
        self.report: dict | None = None
        self._lock = threading.Lock()

    def __getstate__(self):  # shipped to dask workers with the plan (each decides for its tasks)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], dict]) -> dict:
        """``fn()`` (a method call on one tile) in the precision decided, deciding it first if needed."""
        from ..nn.accel import autocast, half_dtype

        if self.state == "unchecked":
            with self._lock:
                if self.state == "unchecked":
                    ref = fn()
                    self.report = {"half_type": str(half_dtype(self.device)).replace("torch.", "")}
                    try:
                        with autocast(self.device, True):
                            half = fn()
                    except Exception as exc:  # a method that cannot run in half precision: float32
                        if is_oom(exc):
                            raise
                        self.state = "float32"
                        self.report.update(kept=False, error=f"{type(exc).__name__}: {exc}"[:300])
                        return ref
                    differ = int(np.count_nonzero(np.asarray(ref["index"]) != np.asarray(half["index"])))
                    self.state = "float32" if differ else "half"
                    self.report.update(pixels=int(np.asarray(ref["index"]).size), differing=differ, kept=not differ)
                    return ref if differ else half
        with autocast(self.device, self.state == "half"):
            return fn()


def _precision_said(pl: FusionPlan) -> str:
    if pl.gate is None:
        return pl.precision
    if pl.gate.state == "unchecked":  # a lazy or cluster run: the tasks hold their own gates
        return "half where each task's first tile kept the float32 index (checked in the tasks)"
    return pl.gate.state


#: default bytes of source rows read per stripe (the memory bound of a streaming run)
STRIPE_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Stripe:
    """Output rows ``[s0, s1)`` made by ``tiles``, which read the source rows ``[r0, r1)``."""

    s0: int
    s1: int
    r0: int
    r1: int
    tiles: tuple


def plan_stripes(pl: FusionPlan, budget: int = STRIPE_BUDGET) -> list[Stripe]:
    """Group the plan's tile rows into stripes whose source rows fit in ``budget`` bytes."""
    st = pl.stack
    Y, X = st.yx_shape
    row_bytes = X * st.n_planes * st.n_channels * st.dtype.itemsize + X * st.n_planes * 4  # + float guide
    rows = sorted({(t.y0, t.y1) for t in pl.tiles})
    e = pl.halo + pl.overlap
    stripes = []
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and (rows[j][1] - rows[i][0] + 2 * e) * row_bytes <= budget:
            j += 1
        s0, s1 = rows[i][0], min(rows[j - 1][1], Y)
        # every tile whose output region reaches into [s0, s1) (neighbours too when tiles overlap)
        tiles = tuple(t for t in pl.tiles if t.out[0] < s1 and t.out[1] > s0)
        r0 = min(t.window[0] for t in tiles)
        r1 = max(t.window[1] for t in tiles)
        stripes.append(Stripe(s0, s1, r0, r1, tiles))
        i = j
    return stripes


def whole_image(pl: FusionPlan) -> list[Stripe]:
    """The in-memory run's one stripe: every tile, over the whole image (rows outside it are
    reflected by the tiles' windows)."""
    Y = pl.stack.yx_shape[0]
    return [Stripe(0, Y, 0, Y, tuple(pl.tiles))]


__all__ = ["MAX_PLANES", "PRECISIONS", "STRIPE_BUDGET", "FusionPlan", "HalfGate", "Stripe", "parse_tile", "plan_fusion",
           "plan_stripes", "resolve_device", "resolve_precision", "whole_image"]
