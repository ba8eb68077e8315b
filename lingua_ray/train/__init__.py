"""Training, outside the analysis core: the offline tiny-LLaMA trajectory (docs/trajectory.md).

Without the Hugging Face hub there are no intermediate checkpoints to analyse (BLOOM's
``global_step*`` revisions live there), so this package makes some: a small causal LM trained
on the Quran (npm ``quran-json``, 6 languages, mixed and shuffled), saved with
``save_pretrained`` (safetensors + tokenizer) as ``<out_dir>/step<N>/`` at the requested
steps, step 0 being the random init. ``<out_dir>/trajectory.json`` records, per step, the
path, the training loss and the loss on held-out verses. The UDHR is the evaluation corpus
of the pipeline, so it is never trained on.

    manifest.py  the folder format, TrajectoryError, the pipeline's checkpoint override (no torch)
    data.py      tokenizers, texts, packing into blocks, per-step batches
    model.py     the seeded init, AdamW, LR schedule, one update, held-out loss, optimizer file
    trainer.py   train_trajectory: resume, refuse a changed config, save

The config is ``lingua_ray.config.TrajectoryConfig``; the entry point is
``workflows/train_trajectory.py`` over the recipe ``conf/train.yaml``. Nothing in the analysis
core imports this package.
"""

from lingua_ray.config import TRAJECTORY_LANGUAGES, TrajectoryConfig
from lingua_ray.train.data import batch_indices, byte_tokenizer, load_tokenizer, pack, quran_texts, smollm2_gguf
from lingua_ray.train.manifest import (
    FORMAT, MANIFEST, OPTIMIZER, TrajectoryError, checkpoint_dicts, hydra_override, read_manifest,
)
from lingua_ray.train.model import eval_loss, init_model, lr_at, train_step
from lingua_ray.train.trainer import identity, train_trajectory

__all__ = [
    "FORMAT", "MANIFEST", "OPTIMIZER", "TRAJECTORY_LANGUAGES", "TrajectoryConfig", "TrajectoryError",
    "batch_indices", "byte_tokenizer", "checkpoint_dicts", "eval_loss", "hydra_override", "identity",
    "init_model", "load_tokenizer", "lr_at", "pack", "quran_texts", "read_manifest", "smollm2_gguf",
    "train_step", "train_trajectory",
]
