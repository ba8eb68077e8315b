"""Train the offline tiny-LLaMA trajectory (docs/trajectory.md), then print the pipeline command.

    python workflows/train_trajectory.py [--steps 0,100,300,600] [--out DIR] [--threads N]
                                         [--tokenizer auto|smollm2|bytes]

Steps already saved in DIR are not retrained; a later step continues from the last save.
"""

import argparse
import shlex
import time
from pathlib import Path

from omegaconf import OmegaConf

from lingua_ray.trajectory import TrajectoryConfig, hydra_override, read_manifest, train_trajectory

RECIPE = Path(__file__).resolve().parent.parent / "conf" / "model" / "tiny-trajectory.yaml"
TRAINED_LANGUAGES = "corpus.languages=[en,zh,fr,es,ar,id]"


def main() -> None:
    default = TrajectoryConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default=",".join(map(str, default.save_steps)),
                   help="comma-separated optimizer steps to save; 0 is the random init")
    p.add_argument("--out", default=default.out_dir, help="trajectory folder (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads while training")
    p.add_argument("--tokenizer", default=default.tokenizer, choices=["auto", "smollm2", "bytes"])
    a = p.parse_args()
    try:
        steps = [int(s) for s in a.steps.split(",") if s.strip()]
    except ValueError:
        p.error(f"--steps {a.steps!r}: expected comma-separated integers, e.g. 0,100,300,600")
    cfg = TrajectoryConfig(out_dir=a.out, save_steps=steps, tokenizer=a.tokenizer, num_threads=a.threads)

    t0 = time.perf_counter()
    ckpts = train_trajectory(cfg)
    print(f"trajectory ready in {time.perf_counter() - t0:.1f} s: {Path(a.out).expanduser()}")
    by_step = {c["step"]: c for c in read_manifest(a.out)["checkpoints"]}
    print(f"{'step':>6} {'train loss':>11} {'held-out loss':>14}")
    for c in ckpts:
        e = by_step[c["step"]]
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{c['step']:>6} {fmt(e['train_loss']):>11} {fmt(e['heldout_loss']):>14}")

    # The recipe's checkpoints suffice when they are exactly these; otherwise print the override.
    recipe = [(c["label"], str(Path(c["path"]).expanduser()), c["step"])
              for c in OmegaConf.to_container(OmegaConf.load(RECIPE))["checkpoints"]]
    made = [(c["label"], c["path"], c["step"]) for c in ckpts]
    extra = "" if made == recipe else " " + shlex.quote(hydra_override(ckpts))
    print("\nanalyse it (all checkpoints in one store; the UDHR in the languages it was trained on):")
    print(f"  python workflows/pipeline.py model=tiny-trajectory {TRAINED_LANGUAGES}{extra}")


if __name__ == "__main__":
    main()
