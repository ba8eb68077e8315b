"""One model replica: records blocks into the store and evaluates masks (the body of a Ray actor).

Ray-free on purpose: schedule.actor_pool turns the class into an actor, and tests can call it
in-process. It loads a checkpoint only when a unit needs another one than it holds.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from lingua_ray.config import AblationConfig, CaptureConfig, CheckpointConfig, ModelConfig

log = logging.getLogger("lingua_ray")


class ModelWorker:
    def __init__(self, model_cfg: ModelConfig, checkpoints: list[CheckpointConfig], gpus: float):
        import torch

        self.model_cfg = model_cfg
        self.checkpoints = {c.label: c for c in checkpoints}
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.device_map = "auto" if gpus > 1 else None
        self.label: str | None = None
        self.model = self.tokenizer = None
        if os.environ.get("LINGUA_RAY_TORCH_THREADS"):
            torch.set_num_threads(int(os.environ["LINGUA_RAY_TORCH_THREADS"]))
        log.info("model worker on %s, %d torch threads", self.device, torch.get_num_threads())

    def ping(self) -> bool:
        return True

    def _load(self, label: str) -> None:
        if label == self.label:
            return
        from lingua_ray.models.loading import load_checkpoint

        self.model = None  # free the previous replica before loading the next
        self.model, self.tokenizer = load_checkpoint(self.model_cfg, self.checkpoints[label], self.device,
                                                     self.device_map)
        self.label = label

    def record(self, store_path: str, capture_cfg: CaptureConfig, checkpoint: str, language: str,
               s0: int, s1: int) -> dict:
        """Capture units s0:s1 of one language and write them as one block. Returns counts and time."""
        from lingua_ray.capture import capture_texts
        from lingua_ray.store import ActivationStore

        t0 = time.perf_counter()
        self._load(checkpoint)
        store = ActivationStore(store_path, mode="r+")
        texts = store.texts(language)[s0:s1]
        ids = store.unit_ids[s0:s1]
        labels = [f"checkpoint={checkpoint} language={language} unit={u}" for u in ids]
        got = capture_texts(self.model, self.tokenizer, texts, capture_cfg, labels)
        store.write_block(checkpoint, language, s0, got.stats, got.n_tokens)
        return {"units": s1 - s0, "tokens": int(got.n_tokens.sum()), "truncated": got.n_truncated,
                "seconds": time.perf_counter() - t0}

    def evaluate(self, ablation_cfg: AblationConfig, checkpoint: str, mask: np.ndarray | None,
                 eval_language: str, texts: list[str]) -> float:
        """Perplexity of ``texts`` with ``mask`` (bool (L, F); None = intact) deactivated."""
        from lingua_ray.ablation import evaluate_mask

        self._load(checkpoint)
        return evaluate_mask(self.model, self.tokenizer, mask, {eval_language: texts},
                             ablation_cfg.token_budget, ablation_cfg.max_tokens)[eval_language]
