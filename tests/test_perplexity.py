"""lingua_ray.perplexity: the head-only NLL equals the full-logits definition on every tiny family.

Tolerance: rtol 1e-6 on each text's summed NLL against the full-logits references (float32
rounding of the same ops: measured ≤ 1.1e-7 relative on these models, mostly bit-identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingua_ray import perplexity as P
from lingua_ray.batching import batches, pad_id_of
from lingua_ray.models.tiny import TINY_TYPES, VOCAB, tiny_config, tiny_model, tiny_tokenizer
from lingua_ray.specificity import AblationError

TEXTS = ["the quick brown fox", "a", "jumps over", "", "the lazy dog sleeps all day long", "zz top", "hi",
         "x" * 150]
RTOL = 1e-6


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def naive_nll(model, tok, text):
    """One text, the model's own forward, float64 log-softmax at every position: the definition."""
    ids = tok(text, add_special_tokens=True, truncation=True, max_length=512)["input_ids"]
    if len(ids) < 2:
        return 0.0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())


def full_batch_nll(model, tok, texts, budget):
    """The previous implementation: the LM head over all B x T padded positions, row by row."""
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=512)
    out = np.zeros(len(texts))
    for b in batches(enc["input_ids"], budget, pad_id_of(tok)):
        if b.width < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        for r, m in enumerate(b.lengths):
            if m >= 2:
                logp = torch.log_softmax(logits[r, : m - 1].float(), dim=-1)
                out[b.index[r]] = -float(logp.gather(-1, b.input_ids[r, 1:m, None]).double().sum())
    return out


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_head_only_equals_full_logits(tok, model_type):
    model = tiny_model(model_type)
    nll, n = P.unit_nll(model, tok, TEXTS, token_budget=40)  # several padded batches
    np.testing.assert_allclose(nll, full_batch_nll(model, tok, TEXTS, 40), rtol=RTOL, atol=0)
    np.testing.assert_allclose(nll, [naive_nll(model, tok, t) for t in TEXTS], rtol=RTOL, atol=1e-9)
    assert n.tolist() == [max(len(tok(t)["input_ids"]) - 1, 0) for t in TEXTS]


@pytest.mark.parametrize("model_type", ["gemma3_text", "gemma2"])
def test_final_logit_softcapping_is_applied(tok, model_type):
    cfg = tiny_config(model_type)
    cfg.final_logit_softcapping = 2.0  # small: the cap changes every logit visibly
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    assert P.Head.of(model).softcap == 2.0
    nll, _ = P.unit_nll(model, tok, TEXTS)
    np.testing.assert_allclose(nll, [naive_nll(model, tok, t) for t in TEXTS], rtol=RTOL, atol=1e-9)
    uncapped = P.Head(P.Head.of(model).body, model.get_output_embeddings(), None)
    with pytest.raises(AblationError, match="head-only logits differ"):
        P.check_head(model, uncapped, torch.tensor([tok(TEXTS[0])["input_ids"]]))


def test_head_sees_only_predicted_positions_in_chunks(tok, monkeypatch):
    model = tiny_model("llama")
    P.unit_nll(model, tok, TEXTS[:1])  # the one-time check against the forward happens here, not below
    weight = model.get_output_embeddings().weight
    monkeypatch.setattr(P, "ROW_CHUNK", 5)
    monkeypatch.setattr(P, "LOGIT_CHUNK", 5 * 64)  # ≤ 320 logits per head call: several vocabulary slices
    calls = []
    linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        if w.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr():
            calls.append((tuple(x.shape), tuple(w.shape)))  # a head call: (rows, H) x (slice, H)
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    nll, n = P.unit_nll(model, tok, TEXTS, token_budget=400)
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    assert all(len(x) == 2 and x[0] <= 5 and x[0] * w[0] <= 5 * 64 for x, w in calls)  # never (B, T, V)
    assert len({w for _, w in calls}) > 1  # the vocabulary really was sliced
    # every predicted position meets every vocabulary entry exactly once; padding and last positions never
    assert sum(x[0] * w[0] for x, w in calls) == int(n.sum()) * VOCAB
    np.testing.assert_allclose(nll, full_batch_nll(model, tok, TEXTS, 400), rtol=RTOL)


def test_unknown_logit_post_processing_fails_loudly(tok):
    model = tiny_model("llama")
    forward = model.forward

    def scaled(*a, **k):  # an architecture that scales its logits (as Cohere or Granite do)
        out = forward(*a, **k)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    with pytest.raises(AblationError, match=r"model_type 'llama': head-only logits differ"):
        P.unit_nll(model, tok, TEXTS)


def test_decoder_body_alone_is_refused(tok):
    model = tiny_model("llama")
    with pytest.raises(AblationError, match="no LM head"):
        P.unit_nll(model.model, tok, TEXTS)


def test_bfloat16_close_to_its_own_full_logits(tok):
    """In bfloat16 every logit is rounded to 8 significant bits. The head on the gathered rows and the
    head on the whole padded batch are matmuls of different shapes; on a CPU with native bf16 dot
    products (AVX512-BF16) they accumulate in a different order, so a logit can round one bf16 step
    apart (measured: 4.7e-4 relative on these sums; bit-equal where bf16 is emulated in float32).
    A quarter of bf16's epsilon still catches predicting from the wrong position (54% apart here)."""
    model = tiny_model("qwen2").to(torch.bfloat16)
    nll, _ = P.unit_nll(model, tok, TEXTS, token_budget=40)
    rtol = torch.finfo(torch.bfloat16).eps / 4  # 1.95e-3
    np.testing.assert_allclose(nll, full_batch_nll(model, tok, TEXTS, 40), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gemma2", "gpt2", "gpt_neox", "bloom"])
def test_packed_equals_padded(tok, model_type):
    model = tiny_model(model_type)
    auto, n_auto = P.unit_nll(model, tok, TEXTS, token_budget=300)  # packed unless supports_packing says no
    padded, n_pad = P.unit_nll(model, tok, TEXTS, token_budget=300, pack=False)
    np.testing.assert_array_equal(n_auto, n_pad)
    np.testing.assert_allclose(auto, padded, rtol=RTOL, atol=1e-9)
