"""A generic, seeded, resumable training loop, and the StackMFF-V2 recipe.

:func:`train_loop` runs ``steps`` optimisation steps of any model:

- batch ``t`` comes from ``make_batch(t)``, a pure function of ``t`` (see
  :meth:`napari_edof.training.datasets.StackDataset.batch`), so the data never depends on how
  often the run was interrupted;
- every ``ckpt_every`` steps (and at the end, and on Ctrl-C) ``out/last.pt`` is written
  atomically with the model, the optimizer, the EMA weights (if any), the step, the elapsed
  seconds and the torch / numpy / python RNG states; ``resume=True`` continues from it and gives
  the same weights as an uninterrupted run (same machine, same thread count);
- the learning rate is a pure function of the step (linear warm-up, cosine decay);
- a tqdm progress bar (stderr) and one JSON line per step in ``out/log.jsonl``;
- at the end ``out/weights.pt`` holds a plain float32 state dict (the EMA weights when
  ``ema_decay`` is set).

Recipes (:data:`RECIPES`) build the model, data and loss for one network; the CLI's
``napari-edof train NAME`` calls them.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "last.pt"
WEIGHTS = "weights.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``lr * min_ratio``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plain_state_dict(state: dict, dtype=torch.float32) -> dict:
    """A detached CPU copy of a state dict with floating tensors cast to ``dtype``."""
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).clone()
            for k, v in state.items()}


def train_loop(model: torch.nn.Module, make_batch: Callable[[int], object],
               loss_fn: Callable[[torch.nn.Module, object], tuple[torch.Tensor, dict]], *,
               steps: int, out: str | Path, seed: int = 0, lr: float = 1e-3, weight_decay: float = 1e-4,
               warmup: int = 0, min_lr_ratio: float = 0.1, ckpt_every: int = 100, resume: bool = False,
               grad_clip: float | None = 1.0, ema_decay: float | None = None, progress: bool = True,
               config: dict | None = None, stop_after: int | None = None) -> dict:
    """Train ``model`` for ``steps`` steps (see the module docstring); returns a summary dict.

    ``stop_after`` ends the run after that many steps of this call (a checkpoint is written), as if
    interrupted: for tests and for time-boxed runs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = None
    if ema_decay:
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start, elapsed = 0, 0.0
    ck_path = out / CHECKPOINT
    if resume and ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None and ck.get("ema") is not None:
            ema = ck["ema"]
        start, elapsed = int(ck["step"]), float(ck.get("seconds", 0.0))
        _set_rng_state(ck["rng"])
        if config is not None and ck.get("config") not in (None, config):
            changed = {k for k in set(config) | set(ck["config"]) if config.get(k) != ck["config"].get(k)}
            print(f"napari-edof train: resuming with changed settings: {', '.join(sorted(changed))}",
                  file=sys.stderr)
    else:
        seed_everything(seed)
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def checkpoint(step: int, secs: float) -> None:
        _atomic_save({"step": step, "seconds": secs, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "ema": ema, "rng": _rng_state(), "config": config}, ck_path)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                   desc=(config or {}).get("recipe", "train"))
    log = open(out / "log.jsonl", "a")
    step = start
    t0 = time.perf_counter()
    metrics: dict = {}
    model.train()
    try:
        while step < steps:
            if stop_after is not None and step - start >= stop_after:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
            batch = make_batch(step)
            loss, metrics = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if v.is_floating_point():
                            ema[k].mul_(ema_decay).add_(v.detach(), alpha=1 - ema_decay)
                        else:
                            ema[k].copy_(v)
            step += 1
            now = elapsed + time.perf_counter() - t0
            log.write(json.dumps({"step": step, "lr": opt.param_groups[0]["lr"], "seconds": round(now, 2),
                                  **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
            log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
            if step % ckpt_every == 0 or step == steps:
                checkpoint(step, now)
    except KeyboardInterrupt:
        checkpoint(step, elapsed + time.perf_counter() - t0)
        raise
    finally:
        log.close()
        if bar is not None:
            bar.close()
    seconds = elapsed + time.perf_counter() - t0
    if step % ckpt_every != 0 and step != steps:
        checkpoint(step, seconds)
    done = step >= steps
    if done:
        torch.save(plain_state_dict(ema if ema is not None else model.state_dict()), out / WEIGHTS)
    return {"step": step, "steps": steps, "done": done, "seconds": seconds, "metrics": metrics,
            "weights": str(out / WEIGHTS) if done else None, "checkpoint": str(ck_path)}


def export_weights(checkpoint: str | Path, path: str | Path, *, ema: bool = True, dtype=torch.float32) -> dict:
    """Write the plain state dict of a training checkpoint (its EMA weights when present and
    ``ema``) to ``path``; returns {"step", "seconds", "config"} of the checkpoint."""
    ck = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    state = ck["ema"] if ema and ck.get("ema") is not None else ck["model"]
    torch.save(plain_state_dict(state, dtype), str(path))
    return {"step": ck["step"], "seconds": ck.get("seconds"), "config": ck.get("config")}


# ------------------------------------------------------------------------------- recipes
def stretch(stack: np.ndarray, q: float = 0.0005) -> np.ndarray:
    """Robust min/max contrast stretch of a (N, H, W) stack to [0, 1] (quantiles q, 1 - q), as the
    StackMFF-V2 method's ``normalise="range"`` input scaling."""
    lo, hi = np.quantile(stack, (q, 1 - q))
    if not hi > lo:
        return stack
    return np.clip((stack - np.float32(lo)) * np.float32(1 / (hi - lo)), 0, 1).astype(np.float32)


def load_init(model: torch.nn.Module, init: str | Path) -> None:
    """Load starting weights (a plain state dict or {"state_dict": ...}; ``module.`` stripped)."""
    sd = torch.load(str(init), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)


class _Recipes(dict):
    """name -> "module:function" of every training recipe; each recipe registers itself with
    :func:`recipe` in its own module, and the modules of this package are imported (by name) the
    first time the table is read."""

    _loaded = False

    def _load(self) -> None:
        if not _Recipes._loaded:
            _Recipes._loaded = True
            import importlib
            import pkgutil

            for m in pkgutil.iter_modules(_package_path()):
                if m.name.startswith("train_"):
                    importlib.import_module(f"{__package__}.{m.name}")

    def __contains__(self, name) -> bool:
        self._load()
        return super().__contains__(name)

    def __getitem__(self, name):
        self._load()
        return super().__getitem__(name)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def keys(self):
        self._load()
        return super().keys()

    def items(self):
        self._load()
        return super().items()


def _package_path():
    import importlib

    return importlib.import_module(__package__).__path__


#: what ``napari-edof train MODEL`` can train: name -> "module:function" inside
#: ``napari_edof.training`` (each recipe registers itself with :func:`recipe`, declaring the
#: options the CLI offers for it: :data:`OPTIONS`).
RECIPES: dict[str, str] = _Recipes()

#: every recipe's declared options: name -> tuple of :class:`Option` (filled by :func:`recipe`;
#: read it through :func:`recipe_options_of`, which loads the recipes first)
OPTIONS: dict[str, tuple] = {}

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """A recipe option offered by ``napari-edof train MODEL`` as ``--name-with-dashes``.

    ``type``: int, float, str or bool (bool: ``--name`` / ``--no-name``); ``default``: the recipe
    function's default (taken from its signature when not given here; a different one is an
    error); ``minimum``: the least value accepted (counts: 1).
    """

    name: str
    type: type
    help: str
    default: object = _NO_DEFAULT
    minimum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: the options every recipe takes (the training loop's), offered by ``napari-edof train`` itself:
#: ``--steps``, ``--out``, ``--seed``, ``--resume`` and ``-q`` (``progress``)
COMMON = ("steps", "out", "seed", "resume", "progress", "stop_after")


def recipe(name: str, options: tuple = ()):
    """Decorator: register a training function as the recipe ``napari-edof train NAME`` runs,
    with the ``options`` (:class:`Option`) the CLI offers for it besides the common ones.

    Every option must be a keyword of the function, with the function's default; the function
    must take the common options (:data:`COMMON`). A mismatch is a TypeError at import.
    """

    def deco(fn):
        import inspect

        params = inspect.signature(fn).parameters
        missing = [k for k in COMMON if k not in params]
        if missing:
            raise TypeError(f"recipe {name}: {fn.__name__} does not take {', '.join(missing)}")
        declared = []
        for o in options:
            if o.name not in params or o.name in COMMON:
                raise TypeError(f"recipe {name}: {o.name!r} is not an option of {fn.__name__}")
            d = params[o.name].default
            if d is inspect.Parameter.empty:
                raise TypeError(f"recipe {name}: {fn.__name__}'s {o.name!r} has no default")
            if o.default is not _NO_DEFAULT and o.default != d:
                raise TypeError(f"recipe {name}: {o.name!r} is declared with the default {o.default!r}, "
                                f"{fn.__name__} has {d!r}")
            declared.append(replace(o, default=d))
        dict.__setitem__(RECIPES, name, f"{fn.__module__.rsplit('.', 1)[-1]}:{fn.__name__}")
        OPTIONS[name] = tuple(declared)
        return fn

    return deco


def recipe_options_of(name: str) -> tuple:
    """The options recipe ``name`` declares (KeyError when there is no such recipe)."""
    RECIPES[name]  # (loads the recipes)
    return OPTIONS[name]


#: options several recipes share, declared once
def _count(name: str, help: str) -> Option:
    return Option(name, int, help, minimum=1)


BATCH_SIZE = _count("batch_size", "stacks (or pairs) per step")
CROP = _count("crop", "training crop side in pixels")
N_MIN = _count("n_min", "fewest planes per stack")
N_MAX = _count("n_max", "most planes per stack")
LR = Option("lr", float, "peak learning rate", minimum=0)
WARMUP = Option("warmup", int, "linear warm-up steps", minimum=0)
CKPT_EVERY = _count("ckpt_every", "checkpoint every K steps")
INIT = Option("init", str, "starting weights file (fine-tuning); none: from scratch")
RANGE_P = Option("range_p", float, "fraction of stacks contrast-stretched like the method's normalise=range",
                 minimum=0)
EMA_DECAY = Option("ema_decay", float, "decay of the weights' moving average (the weights written)", minimum=0)
THREADS = _count("threads", "torch CPU threads (none: torch's own choice)")
DATA = Option("data", str, "training stacks: 'synthetic' (the layered and thin-lens model of training.synth) or "
                           "'realistic' (training.realistic: continuous defocus, occlusion, Poisson-Gaussian noise, "
                           "8/16-bit; seeds disjoint from the quality benchmark's)")


@recipe("stackmff-v2", options=(
    BATCH_SIZE, CROP, N_MIN, N_MAX, LR, WARMUP, CKPT_EVERY, INIT,
    Option("ce_weight", float, "weight of the per-pixel cross-entropy added to the paper's loss (0: the paper's "
                               "loss only)", minimum=0),
    RANGE_P, THREADS,
    DATA,
    Option("fuse_weight", float, "realistic data: weight of the MSE between the probability-weighted average of "
                                 "the planes (compose='soft') and the truth", minimum=0)))
def train_stackmff_v2(*, steps: int, out: str | Path, seed: int = 0, resume: bool = False,
                      batch_size: int = 2, crop: int = 128, n_min: int = 4, n_max: int = 12,
                      lr: float = 1e-4, warmup: int = 0, ckpt_every: int = 50, init: str | None = None,
                      ce_weight: float = 0.1, range_p: float = 0.5, threads: int | None = None,
                      data: str = "synthetic", fuse_weight: float = 0.0,
                      scenes: dict | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or fine-tune, with ``init`` = a weights file) StackMFF-V2 on synthetic stacks.

    Loss: the paper's MSE between min-max normalised expected index and normalised depth, plus
    ``ce_weight`` x per-pixel cross-entropy on the true plane (0 for the paper's loss alone).
    A fraction ``range_p`` of the stacks is contrast-stretched as the fusion method's default
    ``normalise="range"`` does at run time (:func:`stretch`); the rest is fed as synthesised.

    ``data="realistic"``: stacks of :mod:`.realistic_data` instead (the realistic generator of the
    quality benchmark, rendered at the crop size; ``range_p`` of them scaled as ``normalise="range"``,
    the rest as ``"dtype"``), with the loss :func:`.losses.stackmff_v2_realistic_loss` (the true plane
    is continuous: a soft cross-entropy; ``fuse_weight`` adds the soft composition's image error).
    """
    if data not in ("synthetic", "realistic"):
        raise ValueError(f"unknown training data {data!r}; choose synthetic or realistic")
    from ..nn.stackmff_v2 import StackMFFV2
    from .datasets import DEFAULT_SCENES, StackDataset
    from .losses import stackmff_v2_loss

    if threads:
        torch.set_num_threads(int(threads))
    config = {"recipe": "stackmff-v2", "steps": steps, "seed": seed, "batch_size": batch_size, "crop": crop,
              "n_range": [n_min, n_max], "lr": lr, "warmup": warmup, "ce_weight": ce_weight, "range_p": range_p,
              "init": str(init) if init else None, "scenes": scenes or dict(DEFAULT_SCENES)}
    if data != "synthetic":  # (configs of synthetic runs stay as they were: resumable)
        config.update(data=data, fuse_weight=fuse_weight)
        del config["scenes"]
    seed_everything(seed)
    model = StackMFFV2()
    if init:
        load_init(model, init)
    ds = StackDataset(seed=seed, crop=(crop, crop), n_range=(n_min, n_max), scenes=scenes or dict(DEFAULT_SCENES))

    def make_batch(step: int):
        b = ds.batch(step, batch_size)
        x = b["stack"]
        rng = np.random.default_rng([int(seed), 7, int(step)])
        for i in range(len(x)):
            if rng.random() < range_p:
                x[i] = stretch(x[i])
        return (torch.from_numpy(x), torch.from_numpy(b["depth"]), torch.from_numpy(b["index"]))

    def loss_fn(m, batch):
        x, depth, index = batch
        return stackmff_v2_loss(m(x), depth, index, ce_weight=ce_weight)

    if data == "realistic":
        from .losses import stackmff_v2_realistic_loss
        from .realistic_data import realistic_batch

        def make_batch(step: int):  # noqa: F811 (the realistic data replaces the synthetic)
            b = realistic_batch(seed, step, batch_size, crop, (n_min, n_max), range_p)
            return tuple(torch.from_numpy(b[k]) for k in ("stack", "planes", "aif", "index"))

        def loss_fn(m, batch):  # noqa: F811
            x, planes, aif, index = batch
            return stackmff_v2_realistic_loss(m(x), planes, aif, index, ce_weight=ce_weight,
                                              fuse_weight=fuse_weight)

    return train_loop(model, make_batch, loss_fn, steps=steps, out=out, seed=seed, lr=lr, warmup=warmup,
                      ckpt_every=ckpt_every, resume=resume, progress=progress, config=config,
                      stop_after=stop_after)


def get_recipe(name: str) -> Callable[..., dict]:
    """The training function registered under ``name`` (KeyError when there is none)."""
    import importlib

    module, func = RECIPES[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)

