"""Where a run's outputs live, so that they outlive the process that wrote them.

Under ``ray job submit`` the driver runs inside Ray's temporary copy of the working dir: a
relative ``run.out_dir`` or ``store.path`` lands there, vanishes when Ray cleans the copy up,
and a new copy (any changed file) silently starts from scratch. So:

- ``LINGUA_RAY_STORAGE_ROOT`` (default ``runs``, relative to where the command runs) is the
  folder run outputs and Hydra's own run/sweep folders go under (``conf/config.yaml``:
  ``run.out_dir = <root>/<run.name>``). On a cluster it is a shared filesystem path every node
  and the submitting machine see (EFS, NFS, a ReadWriteMany volume).
- ``durable(cfg)`` resolves a relative ``run.out_dir`` / ``store.path`` against an absolute root,
  and refuses them (one line naming the key) when the run joins a cluster
  (``cluster.address`` set) and the root is relative too.

The store alone may be an fsspec URL (``store.path=s3://BUCKET/lingua_ray/${run.name}.zarr``);
results, the report and Hydra's logs are plain files, so the root itself must be a path.
Pure: no Ray, torch or Zarr.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lingua_ray.config import ConfigError

STORAGE_ROOT_ENV = "LINGUA_RAY_STORAGE_ROOT"
DEFAULT_ROOT = "runs"


def is_url(path: str) -> bool:
    """An fsspec URL such as ``s3://bucket/x`` (not a local path)."""
    return "://" in path


def storage_root(cfg: Any = None) -> str:
    """``cfg.run.storage_root`` when the config has that field and it is set, else
    ``$LINGUA_RAY_STORAGE_ROOT``, else ``runs``."""
    field = getattr(getattr(cfg, "run", None), "storage_root", None)
    return field or os.environ.get(STORAGE_ROOT_ENV) or DEFAULT_ROOT


def _joins_cluster(cfg: Any) -> bool:
    return bool(cfg.cluster.address)


def durable(cfg: Any, joining: bool | None = None) -> Any:
    """A copy of ``cfg`` (a RunConfig) whose ``run.out_dir`` and ``store.path`` are absolute or URLs.

    Relative paths are joined to an absolute storage root. When the root is relative too they
    are kept as they are for a local run, and refused for a run that joins a cluster
    (``joining``; default: ``cfg.cluster.address`` is set). Raises ConfigError naming the key.
    """
    joining = _joins_cluster(cfg) if joining is None else joining
    root = storage_root(cfg)
    if is_url(root):
        raise ConfigError(f"{STORAGE_ROOT_ENV}={root!r} is a URL, but results, the report and Hydra's logs are "
                          "plain files: set it to a shared filesystem path, and put only the store on object "
                          "storage (store.path=s3://BUCKET/lingua_ray/${run.name}.zarr)")
    root_ok = os.path.isabs(os.path.expanduser(root))

    def fix(key: str, value: str | None) -> str | None:
        if value is None or is_url(value) or os.path.isabs(os.path.expanduser(value)):
            return value
        if root_ok:
            return os.path.join(os.path.expanduser(root), value)
        if joining:
            raise ConfigError(
                f"{key}={value!r} is relative and this run joins a cluster (cluster.address="
                f"{cfg.cluster.address!r}): under ray job submit it would be written inside Ray's temporary copy "
                f"of the working dir and lost. Set {STORAGE_ROOT_ENV} to a folder every node sees "
                f"(e.g. /mnt/lingua_ray) or give {key} an absolute path / s3:// URL")
        return value

    out_dir = fix("run.out_dir", cfg.run.out_dir)
    store = fix("store.path", cfg.store.path)
    if out_dir == cfg.run.out_dir and store == cfg.store.path:
        return cfg
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=out_dir),
                               store=dataclasses.replace(cfg.store, path=store))


__all__ = ["DEFAULT_ROOT", "STORAGE_ROOT_ENV", "durable", "is_url", "storage_root"]
