"""Weight fingerprints: sha256 over a checkpoint's weight files, without re-reading what is known.

A checkpoint's fingerprint keys every resumable artifact (issue 8), so it is computed on every
run, for every checkpoint, before any work. Re-hashing tens of GB each time would dominate a
resume, so file digests are cached by what changes when the content does:
(resolved path, size, mtime_ns, ctime_ns). ctime is in the key because tools that copy content
can restore mtime (``rsync -t``, ``cp -p``), but nothing sets ctime back. The cache is one small
JSON file under the model cache (``LINGUA_RAY_HASH_CACHE`` names another file; ``off`` disables).

Hub checkpoints need no reading at all: the hub lists each file's sha256, and the local HF cache
names each blob by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lingua_ray.atomic import write_json

DEFAULT_MODEL_CACHE = "~/.cache/lingua_ray/models"
MODEL_CACHE_ENV = "LINGUA_RAY_MODEL_CACHE"  # overrides ModelConfig.cache_dir
HASH_CACHE_ENV = "LINGUA_RAY_HASH_CACHE"    # a file path, or "off"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_MAX_ENTRIES = 4096  # a cache, not a database: the oldest entries go first


class ModelLoadError(RuntimeError):
    """A checkpoint could not be resolved, hashed or loaded (defined here, the lowest models
    module, so hashing and loading raise one type; lingua_ray.models.loading re-exports it)."""


def model_cache_root(cache_dir: str = DEFAULT_MODEL_CACHE) -> Path:
    """The model cache folder (``$LINGUA_RAY_MODEL_CACHE`` wins over ``cache_dir``); not created."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or cache_dir).expanduser()


def hash_cache_path() -> Path | None:
    """The digest cache file, or None when ``LINGUA_RAY_HASH_CACHE=off``."""
    env = os.environ.get(HASH_CACHE_ENV)
    if env and env.strip().lower() in ("off", "0", "none", "false"):
        return None
    return Path(env).expanduser() if env else model_cache_root() / "file-sha256.json"


def _sha256(path: Path) -> str:
    """sha256 of one file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class _DigestCache:
    """{resolved path: [size, mtime_ns, ctime_ns, sha256]} in one JSON file.

    Unreadable or corrupt → empty; unwritable → digests are still returned, just not kept.
    Concurrent writers (several actors on one node) may drop each other's new entries: that
    costs a re-hash, never a wrong digest, because a hit needs the stamp to match.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self.entries = loaded
            except (OSError, ValueError):
                pass

    def digest(self, file: Path) -> str:
        real = file.resolve()
        stamp = _stamp(real.stat())
        hit = self.entries.get(str(real))
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == stamp:
            return hit[3]
        digest = _sha256(real)
        if _stamp(real.stat()) == stamp:  # changed while being read: return it, but do not keep it
            self.entries.pop(str(real), None)
            self.entries[str(real)] = [*stamp, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        keep = dict(list(self.entries.items())[-_MAX_ENTRIES:])
        try:
            write_json(self.path, keep, indent=None)
        except OSError:
            pass  # a read-only home: hashing still works, only slower next time


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file, from the digest cache when its (path, size, mtime, ctime) is unchanged."""
    cache = _DigestCache(hash_cache_path())
    digest = cache.digest(Path(path))
    cache.save()
    return digest


def weight_hash(folder: str | os.PathLike) -> str:
    """sha256 over the weight files (*.safetensors, *.bin, *.pt) of a local folder: their names
    and content digests. Hub-cache symlinks use the blob name (already the sha256); other files
    come from the digest cache or are read once."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ModelLoadError(f"no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) in {folder}")
    cache = _DigestCache(hash_cache_path())
    h = hashlib.sha256()
    for p in files:
        real = p.resolve()
        digest = real.name if p.is_symlink() and len(real.name) == 64 else cache.digest(p)
        h.update(f"{p.name}:{digest}\n".encode())
    cache.save()
    return h.hexdigest()


def hub_weight_hash(repo_id: str, revision: str | None) -> str:
    """sha256 over a hub checkpoint's weight files from the hub's own file hashes, without downloading.

    The driver fingerprints every checkpoint before any work: downloading a 70B model to the head
    node just to hash it would be absurd. Offline, the local HF cache's blob names (their sha256)
    serve instead; both give the same hash.
    """
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        files = {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings
                 if Path(s.rfilename).suffix in WEIGHT_SUFFIXES}
        if files:
            h = hashlib.sha256()
            for name in sorted(files):
                h.update(f"{name}:{files[name]}\n".encode())
            return h.hexdigest()
    except Exception:  # noqa: BLE001 - offline or no API access: fall back to the local cache
        pass
    snap = snapshot_download(repo_id, revision=revision, local_files_only=True,
                             allow_patterns=["*.safetensors", "*.bin", "*.json"])
    return weight_hash(snap)
