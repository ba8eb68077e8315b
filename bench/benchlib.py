"""Shared pieces of the benches: the environment line, the matmul rate, model FLOPs, the real model.

Every bench measures the matmul rate in the same run as the thing it rates, because on a shared
machine the rate moves by 2x between minutes; shares of it are only meaningful side by side.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def env_line(device: str = "cpu") -> str:
    import transformers

    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{cpu_name()} x{os.cpu_count()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"date {datetime.datetime.now().isoformat(timespec='seconds')}  device {dev}  torch {torch.__version__}  "
            f"transformers {transformers.__version__}  torch threads {torch.get_num_threads()}  load average {load:.2f}")


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# Wall-clock time, and this process's CPU time: on a shared machine the second measures the work
# done whatever share of the cores the process got (exact with one torch thread).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def matmul_rate(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int | None = None, reps: int = 5,
                clock: str = "wall") -> float:
    """FLOP/s of one square n×n×n matmul in ``dtype`` (median of ``reps``): the machine's matmul rate now.

    n defaults to 2048 on a CPU (one product ~0.3 s at 50 GFLOP/s) and 8192 on a GPU.
    clock: "wall" or "cpu" (``CLOCKS``; a GPU is always timed by the wall clock).
    """
    timer = CLOCKS[clock]
    n = n or (8192 if str(device).startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t0 = timer()
        a @ b
        sync(device)
        times.append(timer() - t0)
    return 2 * n**3 / statistics.median(times)


def linear_params(module: nn.Module) -> int:
    """Weights that multiply every token: 2-D parameters outside embedding tables (each costs 2 FLOPs/token)."""
    embedding = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if p.dim() == 2 and id(p) not in embedding)


def body_flops(model: nn.Module, lengths: Sequence[int], through_layers: int | None = None) -> float:
    """Forward FLOPs of the decoder body over texts of ``lengths`` tokens, unpadded (useful work only).

    2 × linear weights per token, plus causal attention 2 × 2 × q_dim × (t + 1) per token and layer
    (QKᵀ and AV); sliding windows are ignored (units here are shorter than any window).
    ``through_layers``: count only the first that many layers' share (a forward stopped early).
    """
    from lingua_ray.models.adapters import get_adapter

    adapter = get_adapter(model)
    body = adapter.body_module(model)
    layers = adapter.layer_modules(model)
    per_layer = linear_params(layers[0])
    n_layers = len(layers) if through_layers is None else through_layers
    other = linear_params(body) - per_layer * len(layers)
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    q_dim = heads * head_dim
    tokens = sum(lengths)
    attn = sum(2 * q_dim * m * (m + 1) for m in lengths)  # Σ_t 4·q_dim·(t+1) = 2·q_dim·m(m+1)
    return 2.0 * tokens * (per_layer * n_layers + other) + n_layers * attn


def head_flops(model: nn.Module, n_predicted: int) -> float:
    """LM-head FLOPs at ``n_predicted`` positions: 2 × H × V each."""
    w = model.get_output_embeddings().weight
    return 2.0 * w.shape[0] * w.shape[1] * n_predicted


def round_robin(ways: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Run each way once per round, in turn, ``rounds`` times: {way: {clock: seconds per round}}."""
    times = {k: {c: [] for c in CLOCKS} for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            t0 = {c: f() for c, f in CLOCKS.items()}
            fn()
            for c, f in CLOCKS.items():
                times[name][c].append(f() - t0[c])
    return times


def spaced(items: list, n: int | None) -> list:
    """n items evenly spaced through ``items`` (all if n is None): a sample with the corpus's length mix."""
    if n is None or n >= len(items):
        return list(items)
    return [items[round(k * (len(items) - 1) / max(n - 1, 1))] for k in range(n)]


def real_model(device: str = "cpu", dtype: str = "auto"):
    """The offline default model (Gemma-3-270M from the gemma3-270m GGUF package) and its tokenizer."""
    from lingua_ray.config import DType, ModelConfig
    from lingua_ray.models.loading import load_checkpoint

    cfg = ModelConfig(dtype=DType(dtype))
    return load_checkpoint(cfg, cfg.checkpoints[0], device)


def udhr_texts(languages: Sequence[str], heldout: bool = False) -> dict[str, list[str]]:
    """{language: UDHR units}: every unit (as ``bench_capture --real``), or the default run's held-out split."""
    from lingua_ray.config import DEFAULT_LANGUAGES, CorpusConfig, RunConfig
    from lingua_ray.corpus import load_corpus
    from lingua_ray.stages.inputs import corpora

    # The default run's languages (a parallel corpus needs two or more; the split is over units).
    corpus = CorpusConfig(source="udhr", languages=list(dict.fromkeys([*languages, *DEFAULT_LANGUAGES])))
    if not heldout:
        c = load_corpus(corpus)
        return {lang: list(c.texts(lang)) for lang in languages}
    cfg = RunConfig()
    cfg.corpus = corpus
    _, held = corpora(cfg)
    return {lang: list(held.texts(lang)) for lang in languages}
