"""Adapter conformance: every registered family is checked by one subclass of AdapterConformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingua_ray.capture import CaptureConfig, capture_texts
from lingua_ray.models.adapters import ADAPTERS, UnsupportedModelError, get_adapter
from tiny import tiny_model, tiny_tokenizer

TEXTS = ["Hello world.", "Bonjour tout le monde, comment ça va ?", "你好", "a", "مرحبا بالعالم", "xyz " * 12]


class AdapterConformance:
    """Subclass with ``model_type = ...``; every test runs on a tiny random model of that family."""

    model_type: str

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        return tiny_model(cls.model_type)

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls):
        return tiny_tokenizer()

    def test_registered(self, model):
        assert get_adapter(model).model_type == model.config.model_type == self.model_type

    def test_one_down_projection_per_layer(self, model):
        ad = get_adapter(model)
        mods = ad.down_projections(model)
        assert len(mods) == ad.n_layers(model.config)
        assert len({id(m) for m in mods}) == len(mods)

    def test_hook_sees_ffn_width(self, model, tokenizer):
        ad = get_adapter(model)
        shapes = []
        handles = [m.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
                   for m in ad.down_projections(model)]
        try:
            enc = tokenizer(["abc"], return_tensors="pt")
            with torch.no_grad():
                ad.body_module(model)(**enc)
        finally:
            for h in handles:
                h.remove()
        assert shapes == [(1, 4, ad.n_neurons(model.config))] * ad.n_layers(model.config)

    def test_body_skips_lm_head(self, model, tokenizer):
        ad = get_adapter(model)
        head = model.get_output_embeddings()
        called = []
        h = head.register_forward_hook(lambda *a: called.append(1))
        try:
            with torch.no_grad():
                ad.body_module(model)(**tokenizer(["abc"], return_tensors="pt"))
        finally:
            h.remove()
        assert not called

    def test_batched_equals_one_at_a_time(self, model, tokenizer):
        cfg = CaptureConfig(token_budget=64, max_tokens=64, statistics=["mean", "last", "pos_frac"])
        batched = capture_texts(model, tokenizer, TEXTS, cfg)
        for i, t in enumerate(TEXTS):
            single = capture_texts(model, tokenizer, [t], cfg)
            for name in cfg.statistics:
                a, b = batched.stats[name][i], single.stats[name][0]
                tol = 1e-4 * max(float(np.abs(b).max()), 1e-12)
                assert np.abs(a - b).max() <= tol, (name, i)
        assert batched.n_tokens.tolist() == [len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS]

    def test_mean_matches_hand_computed(self, model, tokenizer):
        """Mean over own tokens, BOS excluded, equals a plain hook + manual average."""
        ad = get_adapter(model)
        seen = []
        hs = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].detach().clone()))
              for m in ad.down_projections(model)]
        try:
            with torch.no_grad():
                ad.body_module(model)(**tokenizer([TEXTS[1]], return_tensors="pt"))
        finally:
            for h in hs:
                h.remove()
        expected = torch.stack([u[1:].mean(0) for u in seen]).numpy()  # drop BOS at position 0
        got = capture_texts(model, tokenizer, [TEXTS[1]]).stats["mean"][0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class TestLlama(AdapterConformance):
    model_type = "llama"


class TestMistral(AdapterConformance):
    model_type = "mistral"


class TestQwen2(AdapterConformance):
    model_type = "qwen2"


class TestGemma3Text(AdapterConformance):
    model_type = "gemma3_text"


class TestBloom(AdapterConformance):
    model_type = "bloom"


class TestGPT2(AdapterConformance):
    model_type = "gpt2"


class TestGPTNeoX(AdapterConformance):
    model_type = "gpt_neox"


class TestQwen3(AdapterConformance):
    model_type = "qwen3"


class TestGemma(AdapterConformance):
    model_type = "gemma"


class TestGemma2(AdapterConformance):
    model_type = "gemma2"


class TestOlmo(AdapterConformance):
    model_type = "olmo"


class TestOlmo2(AdapterConformance):
    model_type = "olmo2"


class TestPhi3(AdapterConformance):
    model_type = "phi3"


def test_every_registered_family_is_tested():
    tested = {c.model_type for c in AdapterConformance.__subclasses__()}
    assert tested == set(ADAPTERS)


def test_every_tested_family_is_registered():
    tested = {c.model_type for c in AdapterConformance.__subclasses__()}
    assert tested <= set(ADAPTERS)
    assert {"bloom", "llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gpt_neox"} <= tested


def test_unknown_type_lists_supported():
    with pytest.raises(UnsupportedModelError) as e:
        get_adapter("lama")
    msg = str(e.value)
    assert "'lama'" in msg and "llama" in msg and "gpt_neox" in msg and "Did you mean 'llama'" in msg


def test_bloom_slow_but_exact_refused():
    m = tiny_model("bloom")
    m.config.slow_but_exact, m.config.pretraining_tp = True, 2
    with pytest.raises(UnsupportedModelError, match="slow_but_exact"):
        get_adapter(m).down_projections(m)
