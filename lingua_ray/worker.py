"""One model replica: records blocks into the store and evaluates masks (the body of a Ray actor).

Ray-free on purpose: schedule.actor_pool turns the class into an actor, and tests can call it
in-process. It loads a checkpoint only when a unit needs another one than it holds.

Three things keep the device busy:

* **store writes on a writer thread** (``BlockWriter``, a bounded queue of ``WRITE_QUEUE``
  blocks). ``record(..., asynchronous=True)`` returns once its block is captured and queued, so
  the next block's forward overlaps this block's Zarr write; the caller must call ``flush()``
  before it drops the actor (``schedule.actor_pool`` kills actors on exit), and a failed write
  is raised by the next ``record`` or by ``flush``, naming the block. The default
  (``asynchronous=False``) waits for its own write, as before. Every ``record`` reports write
  throughput: bytes and seconds of the writes completed since the previous report.
* **the next checkpoint's weights prefetched to host memory** while this one computes: after a
  load, a background thread reads the next checkpoint's weight files (config order, the order
  of a trajectory) so the OS page cache holds them when ``from_pretrained`` asks.
* **a token budget sized to device memory** on a GPU (``device_token_budget``): the configured
  budget is a floor there, raised to what half the free memory holds. The budget only regroups
  units into forwards (equal results up to float rounding), so this changes no number.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from lingua_ray.config import AblationConfig, CaptureConfig, CheckpointConfig, ModelConfig

log = logging.getLogger("lingua_ray")

WRITE_QUEUE = 2  # blocks captured ahead of the store at most (host memory: 2 × units × L × F × 4 bytes)


class WriteError(RuntimeError):
    """A queued block write failed (raised on the next ``record`` or ``flush``)."""


class BlockWriter:
    """Writes blocks on one background thread from a bounded queue; ``put`` blocks when it is full.

    ``write(job)`` is called in the thread for every job; its exceptions are kept and re-raised
    (as WriteError naming ``job["what"]``) by ``check``, ``put`` or ``flush``.
    """

    def __init__(self, write, maxsize: int = WRITE_QUEUE):
        self._write = write
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: WriteError | None = None
        self._lock = threading.Lock()
        self._bytes = 0
        self._seconds = 0.0
        self._blocks = 0
        self._thread = threading.Thread(target=self._run, name="lingua_ray-block-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if self._error is None:  # after a failure, drain without writing: the run is failing anyway
                    t0 = time.perf_counter()
                    n = self._write(job)
                    with self._lock:
                        self._bytes += int(n)
                        self._seconds += time.perf_counter() - t0
                        self._blocks += 1
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = WriteError(f"writing {job.get('what', 'a block')} failed: {type(e).__name__}: {e}")
                self._error.__cause__ = e
            finally:
                self._q.task_done()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, job: dict) -> None:
        self.check()
        self._q.put(job)

    def flush(self) -> None:
        """Wait until every queued write finished; raise the first failure."""
        self._q.join()
        self.check()

    def take_stats(self) -> dict:
        """Writes completed since the last call: blocks, bytes, seconds (in the writer thread)."""
        with self._lock:
            out = {"write_blocks": self._blocks, "write_bytes": self._bytes, "write_seconds": self._seconds}
            self._bytes, self._seconds, self._blocks = 0, 0.0, 0
        return out


def device_token_budget(model, requested: int, fraction: float = 0.5) -> int:
    """The token budget for ``model``'s device: ``requested`` on a CPU; on a GPU at least that,
    raised to what ``fraction`` of the free memory holds at the estimated peak bytes per token
    (hidden states, the FFN's gate/up/act/product, a float32 copy of u, attention over a
    ``PACK_WIDTH`` row), capped at 2^17 tokens."""
    import torch

    from lingua_ray.batching import PACK_WIDTH
    from lingua_ray.models.adapters import get_adapter

    param = next(model.parameters())
    if param.device.type != "cuda":
        return requested
    free, _ = torch.cuda.mem_get_info(param.device)
    cfg = model.config
    H = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd"))
    F = get_adapter(model).n_neurons(cfg)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    per_token = param.element_size() * (12 * H + 5 * F + 2 * heads * PACK_WIDTH) + 4 * F
    fit = int(free * fraction // per_token) // PACK_WIDTH * PACK_WIDTH
    return max(requested, min(fit, 1 << 17))


def _weight_files(cfg: ModelConfig, ckpt: CheckpointConfig) -> list[Path]:
    """The local weight files of a checkpoint (safetensors or .bin), [] when not on this machine."""
    from lingua_ray.models.loading import resolve_checkpoint

    where, revision = resolve_checkpoint(cfg, ckpt)
    folder = Path(where)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(where, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached here: nothing to prefetch
            return []
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _read_through(files: list[Path], chunk: int = 1 << 24) -> int:
    """Read every file once (into the OS page cache); returns bytes read."""
    n = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while block := fh.read(chunk):
                n += len(block)
    return n


class ModelWorker:
    def __init__(self, model_cfg: ModelConfig, checkpoints: list[CheckpointConfig], gpus: float):
        import torch

        self.model_cfg = model_cfg
        self.checkpoints = {c.label: c for c in checkpoints}
        self.order = [c.label for c in checkpoints]
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.device_map = "auto" if gpus > 1 else None
        self.label: str | None = None
        self.model = self.tokenizer = None
        self._compiled: list = []  # the model's compiled parts (model.compile); emptied by a fallback
        self._writer = BlockWriter(self._write_block)
        self._prefetch: threading.Thread | None = None
        self.prefetched: dict[str, int] = {}  # label -> bytes read ahead
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
        self._compiled = []
        if self.model_cfg.compile:
            from lingua_ray.models.compiled import compile_hook_free

            self._compiled = compile_hook_free(self.model)
        self.label = label
        i = self.order.index(label)
        if i + 1 < len(self.order):
            self.prefetch(self.order[i + 1])

    def prefetch(self, label: str) -> None:
        """Read checkpoint ``label``'s weight files into host memory in the background (no-op if busy)."""
        if self._prefetch is not None and self._prefetch.is_alive():
            return

        def run() -> None:
            try:
                self.prefetched[label] = _read_through(_weight_files(self.model_cfg, self.checkpoints[label]))
            except Exception as e:  # noqa: BLE001 - a hint only: the load reads the files anyway
                log.info("prefetch of checkpoint %r skipped: %s", label, e)

        self._prefetch = threading.Thread(target=run, name=f"lingua_ray-prefetch-{label}", daemon=True)
        self._prefetch.start()

    @staticmethod
    def _write_block(job: dict) -> int:
        from lingua_ray.store import ActivationStore

        store = ActivationStore(job["store_path"], mode="r+")
        store.write_block(job["checkpoint"], job["language"], job["s0"], job["stats"], job["n_tokens"])
        return sum(a.nbytes for a in job["stats"].values()) + job["n_tokens"].nbytes

    def record(self, store_path: str, capture_cfg: CaptureConfig, checkpoint: str, language: str,
               s0: int, s1: int, asynchronous: bool = False) -> dict:
        """Capture units s0:s1 of one language and write them as one block.

        asynchronous: return once the block is queued for the writer thread (call ``flush`` before
        dropping the worker); False waits for this block's write. Returns counts, seconds (capture
        and, if synchronous, the write), and the write throughput of the writes completed since
        the previous call (write_blocks, write_bytes, write_seconds, write_MBps).
        """
        from lingua_ray.capture import capture_texts
        from lingua_ray.store import ActivationStore

        self._writer.check()
        t0 = time.perf_counter()
        self._load(checkpoint)
        store = ActivationStore(store_path, mode="r")
        texts = store.texts(language)[s0:s1]
        ids = store.unit_ids[s0:s1]
        labels = [f"checkpoint={checkpoint} language={language} unit={u}" for u in ids]
        if self.device == "cuda":
            capture_cfg = dataclasses.replace(
                capture_cfg, token_budget=device_token_budget(self.model, capture_cfg.token_budget))
        got = self._call(lambda: capture_texts(self.model, self.tokenizer, texts, capture_cfg, labels),
                         f"recording checkpoint={checkpoint} language={language}")
        t_capture = time.perf_counter() - t0
        self._writer.put({"store_path": store_path, "checkpoint": checkpoint, "language": language, "s0": s0,
                          "stats": got.stats, "n_tokens": got.n_tokens,
                          "what": f"block checkpoint={checkpoint} language={language} units {s0}:{s1}"})
        if not asynchronous:
            self._writer.flush()
        out = {"units": s1 - s0, "tokens": int(got.n_tokens.sum()), "truncated": got.n_truncated,
               "seconds": time.perf_counter() - t0, "capture_seconds": t_capture}
        return out | self._write_stats()

    def flush(self) -> dict:
        """Wait for every queued block write; raise WriteError naming a failed block. Returns the write stats."""
        self._writer.flush()
        return self._write_stats()

    def _write_stats(self) -> dict:
        w = self._writer.take_stats()
        w["write_MBps"] = w["write_bytes"] / 2**20 / w["write_seconds"] if w["write_seconds"] > 0 else None
        return w

    def evaluate(self, ablation_cfg: AblationConfig, checkpoint: str, mask: np.ndarray | None,
                 eval_language: str, texts: list[str]) -> float:
        """Perplexity of ``texts`` with ``mask`` (bool (L, F); None = intact) deactivated."""
        from lingua_ray.ablation import evaluate_mask

        self._load(checkpoint)
        budget = ablation_cfg.token_budget
        if self.device == "cuda":
            budget = device_token_budget(self.model, budget)
        return self._call(lambda: evaluate_mask(self.model, self.tokenizer, mask, {eval_language: texts}, budget,
                                                ablation_cfg.max_tokens)[eval_language],
                          f"evaluating checkpoint={checkpoint} language={eval_language}")

    def _call(self, fn, what: str):
        """``fn()``, falling back to eager if the compiled model's compiler fails (model.compile)."""
        if not self._compiled:
            return fn()
        from lingua_ray.models.compiled import with_fallback

        return with_fallback(self._compiled, fn, what)
