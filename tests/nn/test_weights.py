"""The hash-pinned weights cache: env-var folder, offline error, refusal on mismatch. No network."""
from __future__ import annotations

import shutil

import pytest

from napari_edof.core.errors import EdofError
from napari_edof.methods._registry import WeightsSpec
from napari_edof.nn import weights as W

from ..conftest import SHARED

OFFICIAL = SHARED / "weights" / "stackmff_v2_official.pth"
SHA = "cb923ed0265765e8471c7fcb15a08d1cee296809254e03e97418c664d655d179"
URL = "https://github.com/Xinzhe99/StackMFF-V2/raw/main/model.pth"
SPEC = WeightsSpec(filename="stackmff_v2_official.pth", urls=(URL,), sha256=SHA, licence="MIT")


@pytest.fixture
def official():
    if not OFFICIAL.is_file():
        pytest.skip(f"official StackMFF-V2 weights not found at {OFFICIAL} (the shared/ folder beside the repo)")
    return OFFICIAL


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails as it would offline."""

    def offline(url, dest):
        raise OSError("network is unreachable")

    monkeypatch.setattr(W, "_download", offline)


def test_cache_dir_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV, str(tmp_path))
    assert W.cache_dir() == tmp_path
    monkeypatch.delenv(W.ENV)
    monkeypatch.setenv("NAPARI_EDOF_CACHE", str(tmp_path / "c"))  # the package's cache folder
    assert W.cache_dir() == tmp_path / "c" / "weights"
    monkeypatch.delenv("NAPARI_EDOF_CACHE")
    assert W.cache_dir().name == "weights" and "napari-edof" in str(W.cache_dir())


def test_fetch_from_the_env_folder(monkeypatch, official):
    monkeypatch.setenv(W.ENV, str(official.parent))
    assert W.fetch(SPEC) == official
    assert W.sha256_of(official) == SHA


def test_offline_error_names_the_url_and_the_place(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV, str(tmp_path))
    with pytest.raises(W.WeightsError) as e:
        W.fetch(SPEC)
    msg = str(e.value)
    assert isinstance(e.value, EdofError)
    assert URL in msg and str(tmp_path / SPEC.filename) in msg and W.ENV in msg and "unreachable" in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    with pytest.raises(W.WeightsError, match="not in the weights cache"):
        W.fetch(SPEC, download=False)


def test_download_lands_in_the_cache_after_the_hash_check(monkeypatch, tmp_path, official):
    monkeypatch.setenv(W.ENV, str(tmp_path / "cache"))
    calls = []

    def fake(url, dest):
        calls.append(url)
        shutil.copyfile(official, dest)

    monkeypatch.setattr(W, "_download", fake)
    path = W.fetch(SPEC)
    assert calls == [URL] and path == tmp_path / "cache" / SPEC.filename and W.sha256_of(path) == SHA
    W.fetch(SPEC)  # cached now: no second download
    assert calls == [URL]


def test_downloaded_file_with_wrong_hash_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV, str(tmp_path))
    monkeypatch.setattr(W, "_download", lambda url, dest: dest.write_bytes(b"not the weights"))
    with pytest.raises(W.WeightsError, match="does not match the pinned"):
        W.fetch(SPEC)
    assert list(tmp_path.iterdir()) == []


def test_tampered_cached_file_is_refused_and_never_loaded(monkeypatch, tmp_path, official):
    torch = pytest.importorskip("torch")
    bad = tmp_path / SPEC.filename
    data = bytearray(official.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv(W.ENV, str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("torch.load called on a file that failed the hash check")

    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(W.WeightsError, match="does not match the pinned sha256") as e:
        W.load_state_dict(SPEC)
    assert str(bad) in str(e.value) and URL in str(e.value)


def test_load_state_dict_strips_the_prefix_and_loads_strictly(monkeypatch, official):
    pytest.importorskip("torch")
    from napari_edof.nn.stackmff_v2 import StackMFFV2

    monkeypatch.setenv(W.ENV, str(official.parent))
    sd = W.load_state_dict(SPEC)
    assert not any(k.startswith("module.") for k in sd)
    StackMFFV2().load_state_dict(sd, strict=True)


def test_packaged_weights_are_hash_checked(tmp_path, monkeypatch):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"abc")
    monkeypatch.setattr(W, "PACKAGED", tmp_path)
    good = WeightsSpec(filename="mine.pth", sha256=W.sha256_of(f))
    assert W.fetch(good) == f
    with pytest.raises(W.WeightsError, match="does not match"):
        W.fetch(WeightsSpec(filename="mine.pth", sha256="0" * 64))
    with pytest.raises(W.WeightsError, match="missing"):
        W.fetch(WeightsSpec(filename="absent.pth", sha256="0" * 64))
