"""A local Hugging Face hub cache, laid out as huggingface_hub writes it, for offline hub tests.

    <cache>/models--<org>--<name>/
        blobs/<sha256 of an LFS file | git blob sha1 of a small file>
        refs/<revision>              the commit id the revision points at
        snapshots/<commit>/<file>    -> ../../blobs/<hash>

so ``from_pretrained(repo, revision=...)`` with HF_HUB_OFFLINE=1 goes through the hub code path
(refs → snapshot → blobs) exactly as for a downloaded repo, and weight hashes come from blob names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def _blob_id(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()  # the hub's LFS oid
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


def add_revision(cache: Path, repo_id: str, refs: list[str], folder: Path) -> str:
    """Put the files of ``folder`` (a save_pretrained output) into ``cache`` as one commit of
    ``repo_id`` that every name in ``refs`` points at; returns the commit id."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    commit = hashlib.sha1(repo_id.encode() + b"".join(_blob_id(p).encode() for p in files)).hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for p in files:
        blob = repo / "blobs" / _blob_id(p)
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snap / p.name
        if not link.is_symlink():
            os.symlink(os.path.relpath(blob, snap), link)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return commit
