"""lingua_ray.hooks: one hook set and fired check for READ and ZERO, the statistics registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingua_ray.config import ConfigError, Statistic
from lingua_ray.hooks import (
    ACT_FN_OUTPUT,
    DOWN_PROJ_INPUT,
    HOOK_POINTS,
    STATISTICS,
    HookError,
    HookPoint,
    HookSet,
    Reader,
    hook_count,
    statistic,
    zero_neurons,
)
from lingua_ray.models.adapters import get_adapter
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def model():
    return tiny_model("llama")  # fresh per test: some tests patch a layer


def forward(model, tok, texts=("abc de", "f")):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        get_adapter(model).body_module(model)(**enc, use_cache=False)
    return enc


def own_of(enc):
    """(B, T) 1 on own tokens: real and not <pad>/<s>/</s> (ids 0, 1, 2 of the tiny tokenizer)."""
    special = torch.isin(enc["input_ids"], torch.tensor([0, 1, 2])).long()
    return enc["attention_mask"] * (1 - special)


def bypass(model, layer):
    """Make ``layer``'s MLP skip its down-projection: the forward still runs, the hook does not."""
    model.model.layers[layer].mlp.forward = lambda h: torch.zeros_like(h)


def full_mask(model):
    ad = get_adapter(model)
    return np.ones((ad.n_layers(model.config), ad.n_neurons(model.config)), bool)


# --------------------------------------------------------------------------- the fired check, READ and ZERO


def test_read_fired_check_fails_when_a_layer_never_runs(model, tok):
    bypass(model, 1)
    enc = tok(["abc"], return_tensors="pt")
    with Reader(model, ["mean"]) as reader:
        reader.start(own_of(enc))
        forward(model, tok, ["abc"])
        with pytest.raises(HookError, match=r"read hooks on layers \[1\] never ran .*'llama'.*down-projection input"):
            reader.collect()


def test_read_fired_check_is_per_batch(model, tok):
    """Layer 1 fired on the first batch; a second batch that bypasses it must still fail."""
    enc = tok(["abc"], return_tensors="pt")
    with Reader(model, ["mean", "last"], error=ValueError) as reader:
        reader.start(own_of(enc))
        forward(model, tok, ["abc"])
        assert reader.collect()["mean"].shape == (1, 2, 24)
        bypass(model, 1)
        reader.start(own_of(enc))
        forward(model, tok, ["abc"])
        with pytest.raises(ValueError, match=r"layers \[1\] never ran"):
            reader.collect()


def test_zero_fired_check_fails_when_a_layer_never_runs(model, tok):
    bypass(model, 0)
    with zero_neurons(model, full_mask(model), error=KeyError) as hooks:
        forward(model, tok)
        assert hooks.layers == [0, 1] and hooks.calls == {0: 0, 1: 1}
        assert hooks.silent_layers() == [0]
        with pytest.raises(KeyError, match=r"deactivation hooks on layers \[0\] never ran while testing"):
            hooks.check_fired(during="while testing")


def test_zero_fired_check_since_mark(model, tok):
    with zero_neurons(model, full_mask(model)) as hooks:
        forward(model, tok)
        hooks.check_fired()  # both ran
        mark = hooks.mark()
        bypass(model, 1)
        forward(model, tok)
        hooks.check_fired()  # ever: both ran once
        assert hooks.silent_layers(mark) == [1]
        with pytest.raises(HookError, match=r"layers \[1\]"):
            hooks.check_fired(mark)


def test_zero_only_hooks_masked_layers(model, tok):
    mask = np.zeros_like(full_mask(model))
    mask[1, [0, 5]] = True
    with zero_neurons(model, mask) as hooks:
        assert hooks.layers == [1] and hook_count(model) == 1
        forward(model, tok)
        hooks.check_fired()
    assert hook_count(model) == 0


# --------------------------------------------------------------------------- hooks removed on exception


def test_read_hooks_removed_on_exception_and_foreign_hooks_kept(model, tok):
    downs = get_adapter(model).down_projections(model)
    foreign_calls = []
    foreign = downs[0].register_forward_pre_hook(lambda m, a: foreign_calls.append(1))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with Reader(model, ["mean", "pos_frac"]):
                assert hook_count(model) == 1 + len(downs)
                raise RuntimeError("boom")
        assert hook_count(model) == 1
        forward(model, tok)
        assert foreign_calls == [1]  # removal was by handle, not by clearing the module's hooks
    finally:
        foreign.remove()
    assert hook_count(model) == 0


def test_zero_hooks_removed_on_exception(model, tok):
    with pytest.raises(RuntimeError, match="boom"):
        with zero_neurons(model, full_mask(model)):
            assert hook_count(model) == 2
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    # and removed after a forward that itself failed
    with pytest.raises(IndexError):
        with zero_neurons(model, full_mask(model)):
            get_adapter(model).body_module(model)(input_ids=torch.tensor([[10**6]]))
    assert hook_count(model) == 0


def test_hooks_removed_when_registration_fails_half_way(model, monkeypatch):
    downs = get_adapter(model).down_projections(model)

    def refuse(*a, **k):
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(downs[1], "register_forward_pre_hook", refuse)
    with pytest.raises(RuntimeError, match="cannot hook"):
        with HookSet(model, {0: lambda x: None, 1: lambda x: None}):
            pass
    assert len(downs[0]._forward_pre_hooks) == 0


def test_layer_out_of_range_is_an_error(model):
    with pytest.raises(HookError, match=r"layers \[2\].*has 2"):
        HookSet(model, {2: lambda x: None})


# --------------------------------------------------------------------------- zero numerics


def test_zero_writes_exact_zeros_in_model_dtype(tok):
    model = tiny_model("llama").to(torch.bfloat16)
    mask = np.zeros_like(full_mask(model))
    mask[0, [1, 3, 4]] = True
    seen = []
    with zero_neurons(model, mask):
        probe = get_adapter(model).down_projections(model)[0].register_forward_pre_hook(
            lambda m, a: seen.append(a[0]))  # registered after ours: sees the zeroed input
        try:
            forward(model, tok)
        finally:
            probe.remove()
    (u,) = seen
    assert u.dtype == torch.bfloat16
    assert torch.all(u[..., [1, 3, 4]] == 0) and torch.any(u[..., [0, 2]] != 0)


# --------------------------------------------------------------------------- statistics registry and hook points


def test_registry_holds_exactly_the_config_statistics():
    assert set(STATISTICS.names()) == {s.value for s in Statistic}
    own_point = {Statistic.act_pos_frac}
    assert all(STATISTICS.get(s.value).point == DOWN_PROJ_INPUT.name for s in Statistic if s not in own_point)
    assert STATISTICS.get("act_pos_frac").point == ACT_FN_OUTPUT.name


def test_unknown_statistic_lists_valid_names(model):
    with pytest.raises(ConfigError, match=r"unknown statistic 'meen'; valid: act_pos_frac, last, mean, pos_frac.*'mean'"):
        Reader(model, ["meen"])


def _max_over_own(u, units):
    return torch.where(units.own[..., None] > 0, u.float(), -torch.inf).amax(1)


def test_a_new_statistic_is_one_registered_function(model, tok):
    statistic("test_max")(_max_over_own)
    try:
        enc = tok(["abc de", "f"], return_tensors="pt", padding=True)
        own = own_of(enc)
        seen = []
        probes = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0].clone()))
                  for m in get_adapter(model).down_projections(model)]
        try:
            with Reader(model, ["test_max", "mean"]) as reader:
                reader.start(own)
                forward(model, tok)
                got = reader.collect()
        finally:
            for p in probes:
                p.remove()
        assert list(got) == ["test_max", "mean"]
        for layer, u in enumerate(seen):
            for b in range(2):
                rows = u[b][own[b] > 0]
                torch.testing.assert_close(got["test_max"][b, layer], rows.amax(0))
                torch.testing.assert_close(got["mean"][b, layer], rows.mean(0))
    finally:
        STATISTICS.unregister("test_max")


def test_a_statistic_can_declare_its_own_hook_point(model, tok):
    """An output-side point (here up_proj's output, width F) read alongside the default point."""
    point = HookPoint("test_up_out", modules=lambda m: [layer.mlp.up_proj for layer in m.model.layers],
                      side="output", description="up_proj output")
    HOOK_POINTS.register(point.name, point)
    statistic("test_up_mean", point=point.name)(STATISTICS.get("mean").reduce)
    try:
        enc = tok(["abc de", "f"], return_tensors="pt", padding=True)
        own = own_of(enc)
        ups = []
        probes = [layer.mlp.up_proj.register_forward_hook(lambda mod, a, out: ups.append(out.clone()))
                  for layer in model.model.layers]
        try:
            with Reader(model, ["mean", "test_up_mean"]) as reader:
                assert len(reader.sets) == 2 and hook_count(model, point) == 2 + 2
                reader.start(own)
                forward(model, tok)
                got = reader.collect()
        finally:
            for p in probes:
                p.remove()
        assert hook_count(model, point) == 0
        for layer, up in enumerate(ups):
            ref = (up * own[..., None]).sum(1) / own.sum(1, keepdim=True)
            torch.testing.assert_close(got["test_up_mean"][:, layer], ref)
        assert not torch.allclose(got["test_up_mean"], got["mean"])
        # an output point can be zeroed too: the forward hook's return replaces the output
        outs = []
        with zero_neurons(model, full_mask(model), point=point.name) as hooks:
            probe = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: outs.append(a[0]))
            try:
                forward(model, tok)
            finally:
                probe.remove()
            hooks.check_fired()
        assert torch.all(outs[0] == 0)  # act(gate) * 0
    finally:
        STATISTICS.unregister("test_up_mean")
        HOOK_POINTS.unregister(point.name)


def test_hook_point_side_is_checked():
    with pytest.raises(ValueError, match="side must be"):
        HookPoint("x", modules=lambda m: [], side="middle")


# --------------------------------------------------------------------------- packed units and the early stop

from lingua_ray.batching import UnitPositions, collate_packed  # noqa: E402
from lingua_ray.hooks import StopForward  # noqa: E402


def test_reader_reduces_each_packed_unit_over_its_own_tokens(model, tok):
    texts = ["abc de", "f", "ghij"]
    enc = tok(texts, return_special_tokens_mask=True)
    b = collate_packed(enc["input_ids"], [[0, 1], [2]], pad_id=0, special_masks=enc["special_tokens_mask"])
    seen = []
    probes = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0].clone()))
              for m in get_adapter(model).down_projections(model)]
    try:
        with Reader(model, ["mean", "last", "pos_frac"]) as reader:
            reader.start(UnitPositions.of_batch(b, "cpu"))
            with torch.no_grad():
                reader.run(get_adapter(model).body_module(model), **b.model_inputs("cpu"), use_cache=False)
            got = reader.collect()
    finally:
        for p in probes:
            p.remove()
    for layer, u in enumerate(seen):
        for k, (r, s, m) in enumerate(zip(b.rows, b.starts, b.lengths)):
            rows = u[r, s + 1 : s + m]  # position s is the text's BOS
            torch.testing.assert_close(got["mean"][k, layer], rows.mean(0))
            torch.testing.assert_close(got["last"][k, layer], rows[-1])
            torch.testing.assert_close(got["pos_frac"][k, layer], (rows > 0).float().mean(0))


def test_stop_waits_for_every_hook_point(model, tok):
    """With two points the forward stops only after both last layers were read."""
    point = HookPoint("test_up_out2", modules=lambda m: [layer.mlp.up_proj for layer in m.model.layers],
                      side="output")
    HOOK_POINTS.register(point.name, point)
    statistic("test_up_mean2", point=point.name)(STATISTICS.get("mean").reduce)
    try:
        enc = tok(["abc de"], return_tensors="pt")
        with Reader(model, ["test_up_mean2", "mean"], stop=True) as reader:
            reader.start(own_of(enc))
            with torch.no_grad():
                reader.run(get_adapter(model).body_module(model), **enc, use_cache=False)
            got = reader.collect()  # both points' last layers ran (up_proj output fires before down_proj input)
        assert got["mean"].shape == got["test_up_mean2"].shape == (1, 2, 24)
        with Reader(model, ["mean"], stop=True) as reader:
            reader.start(own_of(enc))
            with pytest.raises(StopForward):  # only Reader.run swallows it
                with torch.no_grad():
                    get_adapter(model).body_module(model)(**enc, use_cache=False)
    finally:
        STATISTICS.unregister("test_up_mean2")
        HOOK_POINTS.unregister(point.name)


# --------------------------------------------------------------------------- act_pos_frac (LAPE's statistic)


def _naive_act_pos_frac(model, tok, texts):
    """Per text, layer, neuron: a Python loop over own tokens of act_fn(gate(x)) > 0, with act_fn and
    gate taken from the MLP by hand (and the down-projection input, for comparison)."""
    mlps = [layer.mlp for layer in get_adapter(model).layer_modules(model)]
    gates, downs = [], []
    probes = [m.gate_proj.register_forward_hook(lambda mod, a, out: gates.append(out.detach().clone()))
              for m in mlps]
    probes += [m.down_proj.register_forward_pre_hook(lambda mod, a: downs.append(a[0].detach().clone()))
               for m in mlps]
    act, pos = [], []
    try:
        for text in texts:
            gates.clear(), downs.clear()
            enc = tok([text], return_tensors="pt")
            with torch.no_grad():
                get_adapter(model).body_module(model)(**enc, use_cache=False)
            own = [t for t in range(enc["input_ids"].shape[1]) if int(enc["input_ids"][0, t]) > 2]
            a_t, p_t = [], []
            for layer, mlp in enumerate(mlps):
                h = mlp.act_fn(gates[layer])[0]
                u = downs[layer][0]
                a_t.append([sum(float(h[t, k]) > 0 for t in own) / len(own) for k in range(h.shape[-1])])
                p_t.append([sum(float(u[t, k]) > 0 for t in own) / len(own) for k in range(u.shape[-1])])
            act.append(a_t)
            pos.append(p_t)
    finally:
        for p in probes:
            p.remove()
    return torch.tensor(act), torch.tensor(pos)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_act_pos_frac_is_the_activation_output_not_the_down_projection_input(model_type, tok):
    """A real tiny gated model: act(gate) and act(gate)*up differ in sign, so act_pos_frac (at the
    activation-function output) differs from pos_frac (at the down-projection input) and equals a
    naive loop over act_fn(gate_proj(x))."""
    model = tiny_model(model_type)
    texts = ["abc de", "fghij klm", "no"]
    naive_act, naive_pos = _naive_act_pos_frac(model, tok, texts)
    enc = tok(texts, return_tensors="pt", padding=True)
    with Reader(model, ["pos_frac", "act_pos_frac"], stop=True) as reader:
        assert [hs.point.name for hs in reader.sets] == [DOWN_PROJ_INPUT.name, ACT_FN_OUTPUT.name]
        reader.start(own_of(enc))
        with torch.no_grad():
            reader.run(get_adapter(model).body_module(model), **enc, use_cache=False)
        got = reader.collect()
    torch.testing.assert_close(got["act_pos_frac"], naive_act.float())
    torch.testing.assert_close(got["pos_frac"], naive_pos.float())
    differ = (got["act_pos_frac"] != got["pos_frac"]).float().mean()
    assert differ > 0.3, f"only {differ:.0%} of entries differ: the test would not tell the two apart"


def test_act_pos_frac_equals_pos_frac_where_the_ffn_is_not_gated(tok):
    model = tiny_model("gpt2")
    enc = tok(["abc de", "fghij klm"], return_tensors="pt", padding=True)
    with Reader(model, ["pos_frac", "act_pos_frac"]) as reader:
        reader.start(own_of(enc))
        with torch.no_grad():
            reader.run(get_adapter(model).body_module(model), **enc, use_cache=False)
        got = reader.collect()
    torch.testing.assert_close(got["act_pos_frac"], got["pos_frac"])
    assert 0 < float(got["act_pos_frac"].mean()) < 1
