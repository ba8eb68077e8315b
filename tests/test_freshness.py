"""A later stage refuses a results.json that is not this store's or this config's (issue 8:
"a report from a results.json whose store changed")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lingua_ray.config import RunConfig, fingerprint, resolved
from lingua_ray.stages.inputs import check_results_current


@dataclass
class FakeStore:
    """The four accessors check_results_current reads, as ActivationStore has them."""

    ckpts: dict = field(default_factory=lambda: {"m0": {"weights_sha256": "a"}})
    langs: dict = field(default_factory=lambda: {"en": "t1", "fr": "t2", "id": "t3"})
    path: str = "/s/activations.zarr"

    def checkpoint_fingerprints(self):
        return self.ckpts

    def language_fingerprints(self):
        return self.langs

    @property
    def checkpoints(self):
        return list(self.ckpts)

    @property
    def languages(self):
        return list(self.langs)


def results_of(cfg: RunConfig, store: FakeStore) -> dict:
    return {"run": {"config": resolved(cfg), "model_fingerprint": fingerprint(store.checkpoint_fingerprints()),
                    "corpus_fingerprint": fingerprint(store.language_fingerprints())}}


P = Path("/r/results.json")


def test_current_results_pass():
    cfg, store = RunConfig(), FakeStore()
    check_results_current(cfg, results_of(cfg, store), P, store)
    check_results_current(cfg, results_of(cfg, store), P, None)  # no store: the config check alone


def test_store_grown_by_a_checkpoint_is_refused():
    cfg, store = RunConfig(), FakeStore()
    res = results_of(cfg, store)
    store.ckpts["m1"] = {"weights_sha256": "b"}
    with pytest.raises(ValueError, match=r"results.json was reduced from other checkpoints.*\['m0', 'm1'\].*reduce stage"):
        check_results_current(cfg, res, P, store)


def test_store_with_other_texts_is_refused():
    cfg, store = RunConfig(), FakeStore()
    res = results_of(cfg, store)
    store.langs["fr"] = "changed"
    with pytest.raises(ValueError, match=r"other languages or texts"):
        check_results_current(cfg, res, P, store)


def test_changed_reduce_setting_is_named_in_full():
    cfg, store = RunConfig(), FakeStore()
    res = results_of(cfg, store)
    cfg.reduce.tau = 0.5
    with pytest.raises(ValueError, match=r"reduce\.tau: 2\.0 in results.json, 0\.5 in this config"):
        check_results_current(cfg, res, P, store)


def test_work_cutting_setting_is_not_a_difference():
    cfg, store = RunConfig(), FakeStore()
    res = results_of(cfg, store)
    cfg.reduce.max_task_bytes = 1 << 20  # only the unit block size: same numbers
    check_results_current(cfg, res, P, store)
