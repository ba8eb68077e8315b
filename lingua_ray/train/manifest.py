"""The trajectory folder's format: ``trajectory.json`` (the manifest), its error type, and the
``CheckpointConfig`` dicts / Hydra override that point the pipeline at the saved steps.

Layout of ``<out_dir>/``::

    step<N>/                 save_pretrained: config.json, model.safetensors, tokenizer files
    trajectory.json          {format, identity, data, checkpoints: [...], resume: {step, recent_losses}}
    optimizer.safetensors    AdamW state after the latest save (metadata "step")

Pure: no torch, so the pipeline side can read a manifest cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from lingua_ray.atomic import write_text

MANIFEST = "trajectory.json"
OPTIMIZER = "optimizer.safetensors"
FORMAT = "lingua_ray.trajectory/v1"


class TrajectoryError(ValueError):
    """Bad trajectory config, or an out_dir whose manifest/weights disagree with it."""


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of ``out_dir`` (``~`` expanded), or None when there is none yet."""
    path = Path(out_dir).expanduser() / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except ValueError as e:
        raise TrajectoryError(f"{path}: not valid JSON ({e})") from None
    if m.get("format") != FORMAT:
        raise TrajectoryError(f"{path}: format {m.get('format')!r}, expected {FORMAT!r}")
    return m


def write_manifest(root: Path, manifest: dict) -> None:
    """Atomically replace ``root/trajectory.json`` (UTF-8, not ASCII-escaped, as before the move)."""
    write_text(root / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))


def checkpoint_dicts(root: Path, manifest: dict, steps: Sequence[int]) -> list[dict]:
    """CheckpointConfig fields ``{label, revision, path, step}`` for ``steps`` (absolute paths), in step order."""
    by_step = {c["step"]: c for c in manifest["checkpoints"]}
    return [{"label": by_step[s]["label"], "revision": None, "path": str(root / by_step[s]["path"]), "step": s}
            for s in sorted(steps)]


def hydra_override(ckpts: Sequence[dict]) -> str:
    """The Hydra override ``model.checkpoints=[{label:..,path:"..",step:..},...]`` for these
    checkpoint dicts (not shell-quoted: use ``shlex.quote``)."""
    def q(path: str) -> str:
        # Hydra's quoted strings: backslashes need doubling only before a quote or at the end.
        path = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, path)
        return '"' + path.replace('"', '\\"') + '"'

    items = ",".join(f"{{label:{c['label']},path:{q(c['path'])},step:{c['step']}}}" for c in ckpts)
    return f"model.checkpoints=[{items}]"
