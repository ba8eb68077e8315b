"""Weight hashes are cached by (path, size, mtime, ctime): a re-run does not re-read large files (issue 9)."""

import json
import os
import time

import pytest

from lingua_ray.models import weights
from lingua_ray.models.weights import ModelLoadError, file_sha256, hash_cache_path, weight_hash


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "digests.json"
    monkeypatch.setenv("LINGUA_RAY_HASH_CACHE", str(path))
    return path


@pytest.fixture
def reads(monkeypatch):
    """Counts the files actually read (the real hashing function still runs)."""
    seen = []
    real = weights._sha256

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(weights, "_sha256", counting)
    return seen


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model-00001.safetensors").write_bytes(b"a" * 1000)
    (d / "model-00002.safetensors").write_bytes(b"b" * 1000)
    (d / "config.json").write_text("{}")  # not a weight file: never hashed
    return d


def test_second_call_reads_nothing(folder, cache_file, reads):
    h1 = weight_hash(folder)
    assert sorted(reads) == ["model-00001.safetensors", "model-00002.safetensors"]
    assert weight_hash(folder) == h1
    assert len(reads) == 2  # served from the cache
    entries = json.loads(cache_file.read_text())
    assert sorted(os.path.basename(k) for k in entries) == ["model-00001.safetensors", "model-00002.safetensors"]


def test_touching_a_file_invalidates_only_it(folder, cache_file, reads):
    h1 = weight_hash(folder)
    st = (folder / "model-00002.safetensors").stat()
    os.utime(folder / "model-00002.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert weight_hash(folder) == h1  # same bytes, same hash
    assert reads[2:] == ["model-00002.safetensors"]


def test_changed_content_changes_the_hash_even_with_mtime_restored(folder, cache_file, reads):
    """Same size and the old mtime put back (rsync -t, cp -p): ctime still moves, so it is re-read."""
    h1 = weight_hash(folder)
    f = folder / "model-00001.safetensors"
    st = f.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so ctime can move
    f.write_bytes(b"c" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    h2 = weight_hash(folder)
    assert h2 != h1 and reads[2:] == ["model-00001.safetensors"]


def test_hash_equals_the_uncached_one(folder, cache_file, monkeypatch):
    cached = weight_hash(folder)
    monkeypatch.setenv("LINGUA_RAY_HASH_CACHE", "off")
    assert hash_cache_path() is None
    assert weight_hash(folder) == cached
    assert file_sha256(folder / "model-00001.safetensors") == weights._sha256(folder / "model-00001.safetensors")


def test_corrupt_or_unwritable_cache_still_hashes(folder, cache_file, reads, monkeypatch):
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json")
    h1 = weight_hash(folder)
    monkeypatch.setenv("LINGUA_RAY_HASH_CACHE", str(folder / "config.json" / "x.json"))  # cannot be created
    assert weight_hash(folder) == h1


def test_default_cache_lives_under_the_model_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LINGUA_RAY_HASH_CACHE", raising=False)
    monkeypatch.setenv("LINGUA_RAY_MODEL_CACHE", str(tmp_path / "models"))
    assert hash_cache_path() == tmp_path / "models" / "file-sha256.json"


def test_no_weight_files(tmp_path, cache_file):
    with pytest.raises(ModelLoadError, match="no weight files"):
        weight_hash(tmp_path)
    with pytest.raises(ModelLoadError, match="no weight files"):
        weight_hash(tmp_path / "missing")
