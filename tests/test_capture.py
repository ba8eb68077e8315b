import numpy as np
import pytest
import torch

from lingua_ray.capture import CaptureError, Captured, capture_texts
from lingua_ray.config import CaptureConfig, ConfigError, Statistic
from lingua_ray.models.adapters import get_adapter
from tiny import tiny_model, tiny_tokenizer


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


def test_bad_statistic_and_budget_fail_before_any_forward():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(ConfigError, match=r"unknown statistic 'pos_fract'.*Did you mean 'pos_frac'"):
        capture_texts(model, tok, ["abc"], CaptureConfig(statistics=["mean", "pos_fract"]))
    with pytest.raises(ConfigError, match="token_budget"):
        capture_texts(model, tok, ["abc"], CaptureConfig(token_budget=10, max_tokens=20))
    with pytest.raises(ConfigError, match="duplicates"):
        capture_texts(model, tok, ["abc"], CaptureConfig(statistics=["mean", Statistic.mean]))


def test_enum_and_string_statistics_give_the_same_plain_keys():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a = capture_texts(model, tok, ["abc", "de"], CaptureConfig(statistics=[Statistic.pos_frac, Statistic.mean]))
    b = capture_texts(model, tok, ["abc", "de"], CaptureConfig(statistics=["pos_frac", "mean"]))
    assert isinstance(a, Captured)
    assert list(a.stats) == list(b.stats) == ["pos_frac", "mean"]
    assert all(type(k) is str for k in a.stats)
    for k in a.stats:
        np.testing.assert_array_equal(a.stats[k], b.stats[k])


def test_bypassed_layer_is_an_error_not_zeros():
    """A forward that skips a layer's down-projection must not leave that layer's stats at 0."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.model.layers[1].mlp.forward = lambda h: torch.zeros_like(h)
    with pytest.raises(CaptureError, match=r"read hooks on layers \[1\] never ran while capturing 1 unit\(s\) from u3"):
        capture_texts(model, tok, ["abc"], unit_labels=["u3"])
    assert sum(len(m._forward_pre_hooks) for m in get_adapter(model).down_projections(model)) == 0


def test_per_token_activations_stay_on_device():
    """Only (B, L, F) per statistic leaves the hook: the hook returns nothing and stores reductions."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    got = capture_texts(model, tok, ["abc", "defgh"])
    assert got.stats["mean"].shape == (2, 2, 24) and got.stats["mean"].dtype == np.float32


# --------------------------------------------------------------------------- packed rows and the early stop

from lingua_ray.models.tiny import TINY_TYPES  # noqa: E402

PACK_TEXTS = ["the quick brown fox", "a", "jumps over", "the lazy dog sleeps all day long" * 5, "zz top", "hi",
              "x" * 140, "ok then", "y" * 30]


def rel_dev(a, b):
    return float((np.abs(a - b).max(axis=(1, 2)) / np.abs(b).max(axis=(1, 2))).max())


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_default_capture_equals_one_unit_at_a_time(model_type):
    """METHOD: batched = one at a time (float32, ≤ 1e-4 of the vector's max), packed or padded."""
    model, tok = tiny_model(model_type), tiny_tokenizer(add_eos=True)
    cfg = CaptureConfig(token_budget=256, max_tokens=200, statistics=["mean", "last", "pos_frac"])
    got = capture_texts(model, tok, PACK_TEXTS, cfg)  # packed where supports_packing, stopped early
    padded = capture_texts(model, tok, PACK_TEXTS, cfg, pack=False, stop=False)
    for i, text in enumerate(PACK_TEXTS):
        one = capture_texts(model, tok, [text], cfg, pack=False, stop=False)
        for name in cfg.statistics:
            assert rel_dev(got.stats[name][i : i + 1], one.stats[name]) <= 1e-4, (name, text)
        assert got.n_tokens[i] == one.n_tokens[0]
    assert rel_dev(got.stats["mean"], padded.stats["mean"]) <= 1e-4


def test_stop_skips_the_last_down_projection_and_leaves_no_state():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    last = get_adapter(model).down_projections(model)[-1]
    capture_texts(model, tok, ["warm"])  # supports_packing's one-time check runs full forwards: not counted below
    ran = []
    probe = last.register_forward_hook(lambda m, a, o: ran.append(1))
    try:
        stopped = capture_texts(model, tok, PACK_TEXTS, stop=True)
        assert ran == []  # the forward ended before the last down-projection
        full = capture_texts(model, tok, PACK_TEXTS, stop=False)
        assert ran  # without the stop it runs
    finally:
        probe.remove()
    np.testing.assert_array_equal(stopped.stats["mean"], full.stats["mean"])
    assert sum(len(m._forward_pre_hooks) for m in get_adapter(model).down_projections(model)) == 0
    enc = tok(["abc de"], return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    capture_texts(model, tok, ["abc"], stop=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, before, rtol=0, atol=0)  # a stopped forward leaves nothing behind


def test_packing_refused_where_texts_would_see_each_other():
    model, tok = tiny_model("bloom"), tiny_tokenizer()
    auto = capture_texts(model, tok, PACK_TEXTS)  # supports_packing says no: right padding
    forced = capture_texts(model, tok, PACK_TEXTS, pack=True)
    one = np.stack([capture_texts(model, tok, [t]).stats["mean"][0] for t in PACK_TEXTS])
    assert rel_dev(auto.stats["mean"], one) <= 1e-4
    assert rel_dev(forced.stats["mean"], one) > 1e-2  # what packing would have done to BLOOM
