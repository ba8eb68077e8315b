"""Ray: recorder/evaluator actors over the grid and reducer tasks. The only module that knows Ray.

Work units are (checkpoint, language, unit block) for recording and
(checkpoint, mask, language) for ablation. Each actor holds one model replica
and loads a checkpoint only when its next unit needs another one; the driver
hands an idle actor more work from the checkpoint it already holds, so
checkpoints are reloaded rarely. Recorders write their blocks straight to the
store; evaluators return their perplexity and the driver writes one JSON file
per evaluation unit (a worker node's disk may not be the driver's). Every write
is idempotent, so actor restarts and task retries are safe and a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import ray

from lingua_ray.config import ClusterConfig
from lingua_ray.models.loading import CheckpointConfig, ModelConfig

log = logging.getLogger("lingua_ray")


def init_ray(cfg: ClusterConfig) -> None:
    """Join ``cfg.address`` ("auto" under ``ray job submit``) or start a local Ray on localhost."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        return
    # Local workers run in this interpreter's environment; on a cluster the runtime env or image does.
    ray.init(
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,  # localhost by default: never expose a local dashboard
        log_to_driver=True,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}},
    )


@dataclass
class WorkUnit:
    checkpoint: str
    key: tuple  # (language, s0, s1) for recording; (mask_id, language) for ablation


class ModelWorker:
    """One model replica: records blocks into the store and evaluates masks (a Ray actor body)."""

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

    def _load(self, label: str) -> None:
        if label == self.label:
            return
        from lingua_ray.models.loading import load_checkpoint

        self.model = None  # free the previous replica before loading the next
        self.model, self.tokenizer = load_checkpoint(self.model_cfg, self.checkpoints[label], self.device,
                                                     self.device_map)
        self.label = label

    def record(self, store_path: str, capture_cfg, checkpoint: str, language: str, s0: int, s1: int) -> dict:
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

    def evaluate(self, store_path: str, ablation_cfg, languages: list[str], checkpoint: str, mask_id: str,
                 eval_language: str, texts: list[str]) -> dict:
        from lingua_ray.ablation import evaluate_mask, plan_masks
        from lingua_ray.store import ActivationStore

        t0 = time.perf_counter()
        self._load(checkpoint)
        key = ActivationStore(store_path).read_key_mask(checkpoint)
        # Re-deriving the plan here (seeded) keeps masks off the wire and identical on every actor.
        plan = {s.id: s for s in plan_masks(key, languages, ablation_cfg.n_random, ablation_cfg.seed,
                                                  ablation_cfg.exclude_mask)}
        ppl = evaluate_mask(self.model, self.tokenizer, plan[mask_id].mask, {eval_language: texts},
                            ablation_cfg.token_budget, ablation_cfg.max_tokens)[eval_language]
        rec = {"checkpoint": checkpoint, "mask": mask_id, "eval_language": eval_language, "ppl": ppl,
               "n_texts": len(texts), "seconds": time.perf_counter() - t0}
        return rec  # the driver writes it: a worker node's disk may not be the driver's


def _atomic_json(path: str, obj: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, p)


def _actors(cfg: ClusterConfig, model_cfg: ModelConfig, checkpoints: list[CheckpointConfig], n: int):
    total_cpus = ray.cluster_resources().get("CPU", 1.0)
    cpus = min(cfg.cpus_per_actor, total_cpus)  # an actor asking for more CPUs than exist never starts
    if cpus < cfg.cpus_per_actor:
        log.warning("cluster.cpus_per_actor=%s > the cluster's %s CPUs; using %s", cfg.cpus_per_actor, total_cpus, cpus)
    n = min(max(1, n), max(1, int(total_cpus // cpus))) if cfg.gpus_per_actor == 0 else max(1, n)
    cls = ray.remote(ModelWorker).options(
        num_gpus=cfg.gpus_per_actor, num_cpus=cpus,
        max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries,
    )
    return [cls.remote(model_cfg, checkpoints, cfg.gpus_per_actor) for _ in range(n)]


def run_units(units: list[WorkUnit], actors: list, submit: Callable, on_done: Callable[[WorkUnit, dict], None]):
    """Run work units on actors, preferring for each idle actor the checkpoint it holds.

    ``submit(actor, unit) -> ObjectRef``. Failed units are collected and re-raised at the
    end (after all others finished), so one bad unit never discards the rest of the work.
    """
    queues: dict[str, deque] = defaultdict(deque)
    for u in units:
        queues[u.checkpoint].append(u)
    holding: dict[int, str | None] = {i: None for i in range(len(actors))}
    running: dict = {}
    errors: list[tuple[WorkUnit, Exception]] = []

    def next_for(i: int) -> WorkUnit | None:
        ck = holding[i]
        if ck is None or not queues.get(ck):
            live = [c for c, q in queues.items() if q]
            if not live:
                return None
            ck = max(live, key=lambda c: len(queues[c]))
        holding[i] = ck
        return queues[ck].popleft()

    for i, a in enumerate(actors):
        u = next_for(i)
        if u is not None:
            running[submit(a, u)] = (i, u)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        i, u = running.pop(done[0])
        try:
            on_done(u, ray.get(done[0]))
        except Exception as e:  # noqa: BLE001 - reported together below
            log.error("work unit %s %s failed: %s", u.checkpoint, u.key, e)
            errors.append((u, e))
        nxt = next_for(i)
        if nxt is not None:
            running[submit(actors[i], nxt)] = (i, nxt)
    if errors:
        u, e = errors[0]
        raise RuntimeError(f"{len(errors)} work unit(s) failed; first: {u.checkpoint} {u.key}: {e}") from e


class Progress:
    """units done/total and tokens/s, printed at most every ``every`` seconds."""

    def __init__(self, total: int, what: str, every: float = 5.0, printer=print):
        self.total, self.what, self.every, self.printer = total, what, every, printer
        self.done = self.tokens = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, units: int, tokens: int = 0) -> None:
        self.done += units
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = f"  {self.tokens / max(now - self.t0, 1e-9):,.0f} tokens/s" if self.tokens else ""
            self.printer(f"[{self.what}] {self.done}/{self.total} units{rate}  {now - self.t0:,.1f}s", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def record(store_path: str, cluster: ClusterConfig, model_cfg: ModelConfig, capture_cfg,
           missing: Iterable[tuple[str, str, int, int]], total_units: int) -> dict:
    """Record the missing blocks of the grid. Returns run statistics (units, tokens, seconds)."""
    units = [WorkUnit(ck, (lang, s0, s1)) for ck, lang, s0, s1 in missing]
    stats = {"units_recorded": 0, "tokens": 0, "truncated": 0, "seconds": 0.0, "units_total": total_units,
             "units_skipped": total_units - sum(u.key[2] - u.key[1] for u in units)}
    if not units:
        print(f"[record] all {total_units} cells already in the store; nothing to do", flush=True)
        return stats
    init_ray(cluster)
    n_ck = len({u.checkpoint for u in units})
    actors = _actors(cluster, model_cfg, model_cfg.checkpoints, min(cluster.num_actors, len(units)))
    progress = Progress(sum(u.key[2] - u.key[1] for u in units), "record")
    print(f"[record] {len(units)} work units over {n_ck} checkpoint(s) on {len(actors)} actor(s); "
          f"{stats['units_skipped']} cells already done", flush=True)

    def submit(actor, u):
        return actor.record.remote(store_path, capture_cfg, u.checkpoint, *u.key)

    def on_done(u, r):
        stats["units_recorded"] += r["units"]
        stats["tokens"] += r["tokens"]
        stats["truncated"] += r["truncated"]
        progress.update(r["units"], r["tokens"])

    run_units(units, actors, submit, on_done)
    stats["seconds"] = progress.seconds
    stats["tokens_per_s"] = stats["tokens"] / max(stats["seconds"], 1e-9)
    for a in actors:
        ray.kill(a)
    return stats


def reduce_grams(store_path: str, cluster: ClusterConfig, checkpoints: list[str], n_layers: int, K: int, S: int,
                 stat: str = "mean") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per checkpoint: (grams (L, N, N), sum_x (K, L, F), sum_x2 (K, L, F)), layers in parallel tasks."""
    from lingua_ray import metrics
    from lingua_ray.reduce import layer_gram, layer_neuron_sums

    init_ray(cluster)
    gram_task = ray.remote(num_cpus=cluster.reducer_cpus, max_retries=cluster.max_task_retries)(layer_gram)
    sums_task = ray.remote(num_cpus=cluster.reducer_cpus, max_retries=cluster.max_task_retries)(layer_neuron_sums)
    gram_refs = {c: [gram_task.remote(store_path, c, layer, stat) for layer in range(n_layers)] for c in checkpoints}
    out = {}
    sum_refs = {}
    for c in checkpoints:
        grams = np.stack(ray.get(gram_refs[c]))
        norms = ray.put(metrics.unit_norms(grams, K, S))
        sum_refs[c] = (grams, [sums_task.remote(store_path, c, layer, norms, stat) for layer in range(n_layers)])
    for c, (grams, refs) in sum_refs.items():
        sums = ray.get(refs)  # L × (sum_x (K, F), sum_x2 (K, F))
        out[c] = (grams, np.stack([s[0] for s in sums], 1), np.stack([s[1] for s in sums], 1))
    return out


def ablate(store_path: str, cluster: ClusterConfig, model_cfg: ModelConfig, ablation_cfg, languages: list[str],
           units: list[tuple[str, str, str]], eval_texts: dict[str, list[str]], out_dir: str) -> None:
    """Evaluate (checkpoint, mask_id, eval_language) units not yet on disk, one JSON file each."""
    todo = [u for u in units if not Path(ablation_unit_file(out_dir, *u)).exists()]
    print(f"[ablate] {len(todo)} of {len(units)} evaluation units to run", flush=True)
    if not todo:
        return
    init_ray(cluster)
    actors = _actors(cluster, model_cfg, model_cfg.checkpoints, min(cluster.num_actors, len(todo)))
    progress = Progress(len(todo), "ablate")
    texts_ref = {lang: ray.put(t) for lang, t in eval_texts.items()}

    def submit(actor, u):
        mask_id, lang = u.key
        return actor.evaluate.remote(store_path, ablation_cfg, languages, u.checkpoint, mask_id, lang,
                                     texts_ref[lang])

    def on_done(u, rec):
        _atomic_json(ablation_unit_file(out_dir, u.checkpoint, *u.key), rec)
        progress.update(1)

    run_units([WorkUnit(c, (m, lang)) for c, m, lang in todo], actors, submit, on_done)
    for a in actors:
        ray.kill(a)


def ablation_unit_file(out_dir: str, checkpoint: str, mask_id: str, eval_language: str) -> str:
    safe = mask_id.replace(":", "_")
    return str(Path(out_dir) / "ablation" / checkpoint / f"{safe}__{eval_language}.json")
