"""The trajectory's model and optimizer: the seeded LLaMA init, AdamW, its LR schedule, one
update, the held-out loss, and the optimizer state file that makes training resumable.

Losses are mean next-token cross-entropies in nats; batches are ``(B, T)`` int64 token ids.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from lingua_ray.config import LRSchedule, TrajectoryConfig


def init_model(cfg: TrajectoryConfig, tok):
    """The seeded random init (float32, train mode): step 0 of the trajectory."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    conf = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(conf, dtype=torch.float32).train()


def make_optimizer(cfg: TrajectoryConfig, model) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrajectoryConfig, step: int) -> float:
    """LR of update ``step`` (1-based): a pure function of the step, so resuming cannot shift it."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == LRSchedule.constant:
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.cosine_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def save_optimizer(opt: torch.optim.Optimizer, path: Path, step: int) -> None:
    """Write the optimizer's per-parameter state as safetensors (metadata ``step``), atomically.
    Binary, so not lingua_ray.atomic (text only): same tmp + os.replace pattern."""
    from safetensors.torch import save_file

    tensors = {f"{i}.{k}": v.detach().clone().contiguous() for i, st in opt.state_dict()["state"].items()
               for k, v in st.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, path)


def load_optimizer(opt: torch.optim.Optimizer, path: Path, step: int) -> bool:
    """Restore the state saved after ``step``; False (nothing changed) if the file is for another step."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("step") != str(step):
            return False
        state: dict[int, dict] = {}
        for name in f.keys():
            i, k = name.split(".", 1)
            state.setdefault(int(i), {})[k] = f.get_tensor(name)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return True


def train_step(model, opt, batch: torch.Tensor, lr: float, grad_clip: float) -> float:
    """One AdamW update on ``batch`` (B, T) token ids; returns the mean next-token loss (nats)."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


@torch.no_grad()
def eval_loss(model, blocks: np.ndarray, batch_size: int) -> float | None:
    """Mean next-token loss (nats) over ``blocks`` (n, T); None when there are none."""
    if len(blocks) == 0:
        return None
    model.eval()
    total = 0.0
    for i in range(0, len(blocks), batch_size):
        b = torch.from_numpy(blocks[i: i + batch_size])
        total += float(model(input_ids=b, labels=b).loss) * len(b)
    model.train()
    return total / len(blocks)
