import numpy as np
import pytest
import torch

from lingua_ray.capture import CaptureConfig, CaptureError, capture_texts, plan_batches
from lingua_ray.models.adapters import get_adapter
from tiny import tiny_model, tiny_tokenizer


def test_plan_batches_respects_budget_and_covers_all():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=200).tolist()
    batches = plan_batches(lengths, 256)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 256
        assert lengths[b[0]] == max(lengths[i] for i in b)
        assert lengths[b[0]] <= 1.5 * max(min(lengths[i] for i in b), 8)  # padding waste is capped


def test_one_long_text_does_not_pad_the_rest():
    batches = plan_batches([352, 33, 51, 51, 15, 19, 15, 43, 29, 14, 36, 37, 62, 21, 17, 33], 8192)
    assert [0] in batches


def _hooked_u(model, tok, text):
    seen = []
    hs = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0][0].clone()))
          for m in get_adapter(model).down_projections(model)]
    with torch.no_grad():
        get_adapter(model).body_module(model)(**tok([text], return_tensors="pt"))
    for h in hs:
        h.remove()
    return seen  # L × (T, F)


def test_last_and_pos_frac_match_hand_computed():
    model, tok = tiny_model("qwen2"), tiny_tokenizer(add_eos=True)
    text = "un deux trois"
    u = _hooked_u(model, tok, text)  # positions: BOS, own tokens..., EOS
    got = capture_texts(model, tok, [text, "x"], CaptureConfig(statistics=["mean", "last", "pos_frac"]))
    own = [x[1:-1] for x in u]  # BOS and EOS are special: excluded
    np.testing.assert_allclose(got.stats["mean"][0], torch.stack([x.mean(0) for x in own]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.stats["last"][0], torch.stack([x[-1] for x in own]).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.stats["pos_frac"][0], torch.stack([(x > 0).float().mean(0) for x in own]).numpy())
    assert got.n_tokens[0] == len(text)


def test_truncation_counted():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    got = capture_texts(model, tok, ["a" * 100, "b" * 5], CaptureConfig(token_budget=64, max_tokens=32))
    assert got.n_truncated == 1 and got.n_tokens.tolist() == [31, 5]


def test_non_finite_is_an_error_naming_the_cell():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.fill_(float("inf"))
    with pytest.raises(CaptureError, match=r"checkpoint=c language=fr unit=u7, layer 1"):
        capture_texts(model, tok, ["hello"], unit_labels=["checkpoint=c language=fr unit=u7"])


def test_unit_without_own_tokens_is_an_error():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(CaptureError, match="no own"):
        capture_texts(model, tok, [""], unit_labels=["lang=en unit=empty"])


def test_bad_statistic_and_budget():
    with pytest.raises(CaptureError, match="unknown statistics"):
        CaptureConfig(statistics=["median"])
    with pytest.raises(CaptureError, match="token_budget"):
        CaptureConfig(token_budget=10, max_tokens=20)


def test_per_token_activations_stay_on_device():
    """Only (B, L, F) per statistic leaves the hook: the hook returns nothing and stores reductions."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    got = capture_texts(model, tok, ["abc", "defgh"])
    assert got.stats["mean"].shape == (2, 2, 24) and got.stats["mean"].dtype == np.float32
