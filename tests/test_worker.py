"""lingua_ray.worker: the writer thread (bounded, errors named), asynchronous records, prefetch, budgets."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from lingua_ray.config import (AblationConfig, CaptureConfig, CheckpointConfig, CorpusConfig, ModelConfig,
                               RunConfig, RunInfo, SplitConfig, StoreConfig)
from lingua_ray.stages import record
from lingua_ray.store import ActivationStore
from lingua_ray.worker import BlockWriter, ModelWorker, WriteError, device_token_budget
from tiny import tiny_model, tiny_tokenizer

LANGS = ["en", "fr"]


def test_writer_queue_is_bounded_and_flush_waits():
    gate, done = threading.Event(), []
    writer = BlockWriter(lambda job: (gate.wait(5), done.append(job["i"]), 10)[2], maxsize=2)
    for i in range(3):  # one in the thread, two in the queue
        writer.put({"i": i})
    blocked = threading.Thread(target=writer.put, args=({"i": 3},))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive() and done == []  # a full queue holds the producer back
    gate.set()
    blocked.join(5)
    writer.flush()
    assert done == [0, 1, 2, 3]
    stats = writer.take_stats()
    assert stats["write_blocks"] == 4 and stats["write_bytes"] == 40 and stats["write_seconds"] > 0
    assert writer.take_stats()["write_blocks"] == 0  # counted once


def test_writer_failure_names_the_block_and_stops_later_puts():
    def write(job):
        if job["what"] == "block b":
            raise OSError("disk full")
        return 1

    writer = BlockWriter(write)
    writer.put({"what": "block a"})
    writer.put({"what": "block b"})
    with pytest.raises(WriteError, match=r"writing block b failed: OSError: disk full"):
        writer.flush()
    with pytest.raises(WriteError, match="block b"):
        writer.put({"what": "block c"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    tok = tiny_tokenizer()
    for seed in (0, 1):
        tiny_model("llama", seed=seed).save_pretrained(root / f"m{seed}", safe_serialization=True)
        tok.save_pretrained(root / f"m{seed}")
    lines = [json.dumps({"uid": f"u{i}", "en": f"sun sea {i} tree" * (1 + i % 3), "fr": f"soleil {i} mer"})
             for i in range(10)]
    (root / "c.jsonl").write_text("\n".join(lines) + "\n")
    return root


def cfg_of(root, out) -> RunConfig:
    return RunConfig(
        run=RunInfo(name="w", out_dir=str(out)),
        model=ModelConfig(name="tiny", source="local", hf_id=str(root / "m0"), gguf_package=None,
                          checkpoints=[CheckpointConfig(label=c, path=str(root / c)) for c in ("m0", "m1")]),
        corpus=CorpusConfig(source="jsonl", path=str(root / "c.jsonl"), languages=LANGS),
        split=SplitConfig(heldout_units=2), capture=CaptureConfig(token_budget=256, max_tokens=64),
        store=StoreConfig(unit_block=4))


def new_store(cfg, path) -> list:
    store = ActivationStore.create_or_extend(path, record.grid_spec(cfg), cfg.store.unit_block)
    return list(store.missing_blocks())


def test_asynchronous_records_equal_synchronous_ones_after_flush(setup, tmp_path):
    cfg = cfg_of(setup, tmp_path)
    sync_path, async_path = str(tmp_path / "s.zarr"), str(tmp_path / "a.zarr")
    blocks = new_store(cfg, sync_path)
    new_store(cfg, async_path)
    worker = ModelWorker(cfg.model, cfg.model.checkpoints, 0)
    for ck, lang, s0, s1 in blocks:
        r = worker.record(sync_path, cfg.capture, ck, lang, s0, s1)
        assert r["write_blocks"] == 1 and r["write_bytes"] > 0 and r["write_MBps"] > 0
    outs = [worker.record(async_path, cfg.capture, ck, lang, s0, s1, asynchronous=True) for ck, lang, s0, s1 in blocks]
    tail = worker.flush()
    assert sum(o["write_blocks"] for o in outs) + tail["write_blocks"] == len(blocks)
    a, b = ActivationStore(sync_path), ActivationStore(async_path)
    assert list(a.missing_blocks()) == list(b.missing_blocks()) == []
    for name in ("activations", "n_tokens", "cell_crc32"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_failed_asynchronous_write_is_raised_naming_the_block(setup, tmp_path):
    cfg = cfg_of(setup, tmp_path)
    path = str(tmp_path / "x.zarr")
    (ck, lang, s0, s1), *_ = new_store(cfg, path)
    worker = ModelWorker(cfg.model, cfg.model.checkpoints, 0)
    worker.record(path, cfg.capture, ck, lang, s0, s1, asynchronous=True)
    worker.flush()
    worker._writer._write = lambda job: (_ for _ in ()).throw(OSError("read-only file system"))
    worker.record(path, cfg.capture, ck, lang, s0, s1, asynchronous=True)
    with pytest.raises(WriteError, match=rf"block checkpoint={ck} language={lang} units {s0}:{s1}.*read-only"):
        worker.flush()
    with pytest.raises(WriteError):
        worker.record(path, cfg.capture, ck, lang, s0, s1)


def test_next_checkpoint_prefetched_after_a_load(setup):
    cfg = cfg_of(setup, "unused")
    worker = ModelWorker(cfg.model, cfg.model.checkpoints, 0)
    worker._load("m0")
    worker._prefetch.join(30)
    size = sum(f.stat().st_size for f in (setup / "m1").glob("*.safetensors"))
    assert worker.prefetched == {"m1": size} and size > 0
    worker._load("m1")  # the last checkpoint: nothing after it to prefetch
    worker._prefetch.join(30)
    assert list(worker.prefetched) == ["m1"]


def test_token_budget_is_left_alone_on_a_cpu():
    assert device_token_budget(tiny_model("llama"), 4096) == 4096


def test_model_compile_records_and_evaluates_as_eager(setup, tmp_path):
    """model.compile=true: the worker compiles the loaded model's hook-free parts; its blocks and
    perplexities equal the eager worker's up to float rounding."""
    import dataclasses

    cfg = cfg_of(setup, tmp_path)
    compiled_model = dataclasses.replace(cfg.model, compile=True)
    paths = {k: str(tmp_path / f"{k}.zarr") for k in ("eager", "compiled")}
    blocks = new_store(cfg, paths["eager"])
    new_store(cfg, paths["compiled"])
    workers = {"eager": ModelWorker(cfg.model, cfg.model.checkpoints, 0),
               "compiled": ModelWorker(compiled_model, compiled_model.checkpoints, 0)}
    for k, w in workers.items():
        for ck, lang, s0, s1 in blocks:
            w.record(paths[k], cfg.capture, ck, lang, s0, s1)
    assert workers["compiled"]._compiled and not workers["eager"]._compiled  # compiled, and no fallback
    a, b = (ActivationStore(paths[k]) for k in ("eager", "compiled"))
    np.testing.assert_allclose(b.group["activations"][:], a.group["activations"][:], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.group["n_tokens"][:], a.group["n_tokens"][:])
    L, F = a.shape[3:]
    mask = np.zeros((L, F), bool)
    mask[0, :5] = True
    texts = a.texts("en")[:3]
    ppl = {k: w.evaluate(AblationConfig(), "m1", mask, "en", texts) for k, w in workers.items()}
    assert ppl["compiled"] == pytest.approx(ppl["eager"], rel=1e-5)
    torch._dynamo.reset()
