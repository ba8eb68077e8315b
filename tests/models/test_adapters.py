"""Adapter conformance: every registered family is checked by one subclass of AdapterConformance."""

from __future__ import annotations

import pytest

from lingua_ray.models.adapters import ADAPTERS, Adapter, UnsupportedModelError, get_adapter, register_adapter
from lingua_ray.models.testing import AdapterConformance
from lingua_ray.models.tiny import TINY_TYPES, tiny_config, tiny_model


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


def test_every_family_has_a_tiny_fixture():
    assert set(TINY_TYPES) == set(ADAPTERS)


def test_unknown_type_lists_supported():
    with pytest.raises(UnsupportedModelError) as e:
        get_adapter("lama")
    msg = str(e.value)
    assert "'lama'" in msg and "llama" in msg and "gpt_neox" in msg and "Did you mean 'llama'" in msg
    assert "add one entry in lingua_ray/models/adapters.py" in msg and "\n" not in msg
    with pytest.raises(UnsupportedModelError, match="None"):
        get_adapter(object())  # no model_type at all


def test_adapters_is_a_registry_and_refuses_a_second_llama():
    assert "llama" in ADAPTERS and get_adapter("llama") is ADAPTERS.get("llama")
    register_adapter(ADAPTERS.get("llama"))  # the same object again: harmless
    with pytest.raises(UnsupportedModelError, match="already registered"):
        register_adapter(Adapter("llama", body="model", layers="layers", down_proj="mlp.down_proj",
                                 width=lambda c: 1))
    assert get_adapter("llama").n_neurons(tiny_config("llama")) == 24  # the original entry survived


def test_bloom_slow_but_exact_refused():
    m = tiny_model("bloom")
    m.config.slow_but_exact, m.config.pretraining_tp = True, 2
    with pytest.raises(UnsupportedModelError, match="slow_but_exact"):
        get_adapter(m).down_projections(m)
