"""Train the offline tiny-LLaMA trajectory (docs/trajectory.md), then print the pipeline command.

    python workflows/train_trajectory.py [hydra overrides...]
    python workflows/train_trajectory.py num_threads=1 'save_steps=[0,100,300,600]' out_dir=DIR tokenizer=bytes

The recipe is conf/train.yaml (schema lingua_ray.config.TrajectoryConfig). Steps already saved
in out_dir are not retrained; a later step continues from the last save. Hydra writes no files.
"""

import shlex
import time
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from lingua_ray.config import DEFAULT_LANGUAGES, TrajectoryConfig, register_configs, to_run_config
from lingua_ray.train import TrajectoryError, hydra_override, read_manifest, train_trajectory

CONF = Path(__file__).resolve().parent.parent / "conf"
RECIPE = CONF / "model" / "tiny-trajectory.yaml"  # the pipeline's model recipe for the default trajectory

register_configs()


def pipeline_command(ckpts: list[dict], languages: list[str]) -> str:
    """The pipeline command for ``ckpts``, on the UDHR in the trained ``languages`` (in the
    pipeline's usual order: en zh fr es ... id): the recipe's checkpoints when they are exactly
    these, else with a ``model.checkpoints=[...]`` override. Shell-quoted."""
    rank = {lang: i for i, lang in enumerate(DEFAULT_LANGUAGES)}
    langs = sorted(languages, key=lambda lang: rank.get(lang, len(rank)))  # stable: others keep their order
    recipe = [(c["label"], str(Path(c["path"]).expanduser()), c["step"])
              for c in OmegaConf.to_container(OmegaConf.load(RECIPE))["checkpoints"]]
    made = [(c["label"], c["path"], c["step"]) for c in ckpts]
    extra = "" if made == recipe else " " + shlex.quote(hydra_override(ckpts))
    languages_override = shlex.quote(f"corpus.languages=[{','.join(langs)}]")
    return f"python workflows/pipeline.py model=tiny-trajectory {languages_override}{extra}"


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(dcfg) -> None:
    cfg = to_run_config(dcfg, TrajectoryConfig)
    t0 = time.perf_counter()
    try:
        ckpts = train_trajectory(cfg)
    except TrajectoryError as e:  # a refused config or folder: its message says what to do, no traceback
        raise SystemExit(f"train_trajectory: {e}") from None
    print(f"trajectory ready in {time.perf_counter() - t0:.1f} s: {Path(cfg.out_dir).expanduser()}")
    by_step = {c["step"]: c for c in read_manifest(cfg.out_dir)["checkpoints"]}
    print(f"{'step':>6} {'train loss':>11} {'held-out loss':>14}")
    for c in ckpts:
        e = by_step[c["step"]]
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{c['step']:>6} {fmt(e['train_loss']):>11} {fmt(e['heldout_loss']):>14}")
    print("\nanalyse it (all checkpoints in one store; the UDHR in the languages it was trained on):")
    print(f"  {pipeline_command(ckpts, list(cfg.corpus.languages))}")


if __name__ == "__main__":
    main()
