"""Network weights: a hash-pinned cache, filled at run time from the upstream URL.

Third-party weights are never shipped: the first use downloads them into the cache folder,
checks their sha256 and only then loads them (always with ``torch.load(weights_only=True)``).
Weights shipped inside the package (``napari_edof/weights/``, a :class:`WeightsSpec` without
URLs) are hash-checked the same way.

The cache folder is ``$NAPARI_EDOF_WEIGHTS`` when set (a folder), otherwise ``weights`` in
napari-edof's cache folder (``$NAPARI_EDOF_CACHE``, or ``<user cache dir>/napari-edof``). To
install a file by hand (offline machines), copy it there under the name the error message gives.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import EdofError
from ..core.spec import WeightsSpec

ENV = "NAPARI_EDOF_WEIGHTS"
PACKAGED = Path(__file__).resolve().parents[1] / "weights"
TIMEOUT_S = 60


class WeightsError(EdofError):
    """Weights could not be found, downloaded or trusted."""


def cache_dir() -> Path:
    """Where downloaded weights live: ``$NAPARI_EDOF_WEIGHTS``, or ``weights`` in the cache folder
    (:func:`napari_edof.core.userdirs.cache_root`)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    from ..core.userdirs import cache_root

    return cache_root() / "weights"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, spec: WeightsSpec) -> Path:
    if spec.sha256:
        got = sha256_of(path)
        if got != spec.sha256.lower():
            raise WeightsError(
                f"{path} does not match the pinned sha256 of {spec.filename} "
                f"(expected {spec.sha256}, found {got}); refusing to load it. Delete the file "
                f"so that it is downloaded again{_manual(spec, path)}"
            )
    return path


def _manual(spec: WeightsSpec, dest: Path) -> str:
    if not spec.urls:
        return "."
    return (f", or download {spec.urls[0]} on a connected machine and copy it to {dest} "
            f"(or into the folder named by ${ENV}, as {spec.filename})")


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` (the caller checks the hash). Replaced in tests."""
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "napari-edof"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def fetch(spec: WeightsSpec, *, download: bool = True) -> Path:
    """The path of a hash-checked copy of ``spec``'s weights, downloading them if needed.

    Raises :class:`WeightsError` when the file is absent and cannot be downloaded (naming the
    URL and where to put the file by hand) or when a file does not match the pinned hash.
    """
    if not spec.urls:  # shipped in the package
        path = PACKAGED / spec.filename
        if not path.is_file():
            raise WeightsError(f"the packaged weights {spec.filename} are missing from {PACKAGED}; "
                               "reinstall napari-edof")
        return _check(path, spec)
    folder = cache_dir()
    path = folder / spec.filename
    if path.is_file():
        return _check(path, spec)
    if not download:
        raise WeightsError(f"{spec.filename} is not in the weights cache {folder}{_manual(spec, path)}")
    errors = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache folder {folder} ({e.strerror or e}); set ${ENV} to a "
                           f"writable folder{_manual(spec, path)}") from None
    for url in spec.urls:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=folder)
        except OSError as e:  # a read-only cache: say so (this is not about the run's results)
            raise WeightsError(
                f"the weights cache folder {folder} is not writable ({e.strerror or e}), so {spec.filename} "
                f"cannot be downloaded into it: set ${ENV} to a writable folder (for example "
                f"{ENV}=~/napari-edof-weights), or copy {spec.filename} into it by hand"
            ) from None
        os.close(fd)
        tmp = Path(tmp)
        try:
            _download(url, tmp)
            got = sha256_of(tmp)
            if spec.sha256 and got != spec.sha256.lower():
                errors.append(f"{url}: sha256 {got} does not match the pinned {spec.sha256}")
                continue
            os.replace(tmp, path)
            return path
        except WeightsError:
            raise
        except Exception as e:  # network, HTTP, disk
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise WeightsError(
        f"could not download {spec.filename} ({'; '.join(errors)}). Without a network connection, "
        f"download {spec.urls[0]} elsewhere and copy it to {path} "
        f"(or into the folder named by ${ENV}, as {spec.filename}); expected sha256 {spec.sha256}"
    )


def load_state_dict(spec: WeightsSpec, *, download: bool = True) -> dict:
    """The checked weights of ``spec`` as a state dict (``module.`` prefixes stripped)."""
    import torch

    path = fetch(spec, download=download)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects beyond tensors, or not a checkpoint at all
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = [ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln]
        why = (glob or lines or [type(e).__name__])[0]
        if glob or "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            raise WeightsError(
                f"{path}: refused: the checkpoint holds objects that only pickle could rebuild (running "
                f"code from the file); napari-edof loads weights with weights_only=True ({why}). Save "
                "the model's state_dict (tensors only) instead"
            ) from None
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {why})") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: the checkpoint holds a {type(sd).__name__}, not a state dict of tensors")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


_LOADING = threading.Lock()


def cached_model(cache: dict, key, build: Callable[[], Any]):
    """``cache[key]``, made by ``build()`` the first time (thread-safe): a method's networks are
    loaded and hash-checked once per process. Each method keeps its own ``cache`` dict."""
    with _LOADING:
        if key not in cache:
            cache[key] = build()
        return cache[key]
