"""`AdapterConformance`: the contract every model adapter must meet, as pytest tests.

Subclass it in a test module (name the subclass ``Test...``) and set `model_type`; every test
runs on a tiny random model of that family (`lingua_ray.models.tiny`). For a family without a
tiny config (a third-party adapter), override the `model` fixture (and `tokenizer` if the byte
tokenizer does not fit its vocabulary). Checked: the adapter is registered, there is one hooked
down-projection per layer, the hook sees the FFN width F, the body skips the LM head, batched
capture equals one text at a time, and the recorded mean equals a hand-computed one.
Needs pytest.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingua_ray.capture import capture_texts
from lingua_ray.config import CaptureConfig
from lingua_ray.models.adapters import get_adapter
from lingua_ray.models.tiny import tiny_model, tiny_tokenizer

# Mixed scripts and lengths, one of a single byte: padding and truncation paths all run.
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
        n_tokens = enc["input_ids"].shape[1]
        assert shapes == [(1, n_tokens, ad.n_neurons(model.config))] * ad.n_layers(model.config)

    def test_activation_hook_point(self, model, tokenizer):
        """The act_fn module's output is (B, T, F) once per layer; for a non-gated FFN it IS the
        down-projection input, for a gated one it differs (it is act(gate(x)), not act·up)."""
        ad = get_adapter(model)
        acts, downs = [], []
        hs = [m.register_forward_hook(lambda mod, args, out: acts.append(out.detach().clone()))
              for m in ad.activation_modules(model)]
        hs += [m.register_forward_pre_hook(lambda mod, args: downs.append(args[0].detach().clone()))
               for m in ad.down_projections(model)]
        try:
            enc = tokenizer(["abc def"], return_tensors="pt")
            with torch.no_grad():
                ad.body_module(model)(**enc)
        finally:
            for h in hs:
                h.remove()
        L, F = ad.n_layers(model.config), ad.n_neurons(model.config)
        assert len(acts) == len(downs) == L
        assert all(a.shape[-1] == F and a.shape == d.shape for a, d in zip(acts, downs))
        same = all(torch.equal(a, d) for a, d in zip(acts, downs))
        assert same != ad.gated

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


__all__ = ["TEXTS", "AdapterConformance"]
