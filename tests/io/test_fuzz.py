"""Fuzzing the readers (bounded: a few hundred examples, well under 30 s): random bytes and
mutated valid TIFF / PNG / JPEG files, alone or in a folder, opened with ``open_stack`` and partly
computed. The only exceptions allowed are the documented ReadError and StackError."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_edof.core.errors import ReadError, StackError
from napari_edof.io import open_stack

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _seed_files() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    b = io.BytesIO()
    tifffile.imwrite(b, rng.integers(0, 65535, (3, 24, 20), dtype=np.uint16), photometric="minisblack")
    out["stack.tif"] = b.getvalue()
    b = io.BytesIO()
    tifffile.imwrite(b, rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8), photometric="rgb",
                     compression="zlib")
    out["rgb.tif"] = b.getvalue()
    b = io.BytesIO()
    tifffile.imwrite(b, rng.random((2, 3, 16, 12)).astype(np.float32), imagej=True, metadata={"axes": "ZCYX"})
    out["imagej.tif"] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).save(b, format="PNG")
    out["plane.png"] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(b, format="JPEG")
    out["plane.jpg"] = b.getvalue()
    return out


SEEDS = _seed_files()


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        p = pos % len(b)
        if kind == 0:  # flip a byte
            b[p] ^= (val % 255) + 1
        elif kind == 1:  # truncate
            del b[p:]
        elif kind == 2:  # insert
            b[p:p] = bytes([val % 256]) * (1 + val % 7)
        else:  # overwrite a 4-byte field (offsets, counts, sizes)
            b[p : p + 4] = (val * 2654435761 % 2**32).to_bytes(4, "little")
    return bytes(b)


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.integers(0, 2**16)), min_size=1, max_size=4)


def _open_and_compute(path) -> None:
    try:
        stack = open_stack(path)
    except (ReadError, StackError):
        return
    a = stack.data
    assert a.ndim == len(stack.axes)
    if a.size * a.dtype.itemsize > (64 << 20):  # a mutated header may claim a huge image: read a corner
        key = tuple(0 for _ in a.shape[:-2]) + (slice(0, 8), slice(0, 8))
        a = a[key]
    try:
        np.asarray(a)
    except (ReadError, StackError):
        return


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="edof-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=200, **SETTINGS)
@given(data=st.binary(min_size=0, max_size=600), suffix=st.sampled_from([".tif", ".png", ".jpg", ".dat"]))
def test_random_bytes(workdir, data, suffix):
    f = workdir / f"random{suffix}"
    f.write_bytes(data)
    _open_and_compute(f)


@settings(max_examples=500, **SETTINGS)
@given(name=st.sampled_from(sorted(SEEDS)), ops=OPS)
def test_mutated_files(workdir, name, ops):
    f = workdir / f"mut_{name}"
    f.write_bytes(_mutate(SEEDS[name], ops))
    _open_and_compute(f)


@settings(max_examples=120, **SETTINGS)
@given(name=st.sampled_from(["plane.png", "plane.jpg"]), ops=OPS)
def test_mutated_plane_in_a_folder(workdir, name, ops):
    d = workdir / "folder"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    ext = os.path.splitext(name)[1]
    (d / f"a1{ext}").write_bytes(SEEDS[name])
    (d / f"a2{ext}").write_bytes(_mutate(SEEDS[name], ops))
    _open_and_compute(d)
