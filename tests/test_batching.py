"""lingua_ray.batching: the length-bucketed planner and right-padding collation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lingua_ray.batching import Batch, batches, collate, pad_id_of, plan_batches


def test_plan_batches_respects_budget_and_covers_all():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=200).tolist()
    out = plan_batches(lengths, 256)
    assert sorted(i for b in out for i in b) == list(range(200))
    for b in out:
        assert max(lengths[i] for i in b) * len(b) <= 256
        assert lengths[b[0]] == max(lengths[i] for i in b)
        assert lengths[b[0]] <= 1.5 * max(min(lengths[i] for i in b), 8)  # padding waste is capped


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 100), max_size=60), budget=st.integers(1, 400))
def test_plan_batches_properties(lengths, budget):
    out = plan_batches(lengths, budget)
    assert sorted(i for b in out for i in b) == list(range(len(lengths)))  # each index exactly once
    heads = [lengths[b[0]] for b in out]
    assert heads == sorted(heads, reverse=True)  # longest first
    for b in out:
        assert len(b) == 1 or len(b) * lengths[b[0]] <= budget
        assert all(lengths[i] <= lengths[b[0]] for i in b)


def test_one_long_text_does_not_pad_the_rest():
    out = plan_batches([352, 33, 51, 51, 15, 19, 15, 43, 29, 14, 36, 37, 62, 21, 17, 33], 8192)
    assert [0] in out


def test_text_longer_than_budget_is_alone():
    lengths = [5, 17, 3, 17, 9, 1, 30, 12]
    out = plan_batches(lengths, token_budget=34)
    assert sorted(i for b in out for i in b) == list(range(len(lengths)))
    for b in out:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 34
    assert [6] in out  # longer than budget/2 and nothing fits beside it
    assert plan_batches([50, 2], token_budget=10) == [[0], [1]]


def test_collate_right_pads_ids_attention_and_special():
    ids = [[1, 7, 8], [1, 9, 10, 11, 2], [1]]
    special = [[1, 0, 0], [1, 0, 0, 0, 1], [1]]
    b = collate(ids, [1, 0, 2], pad_id=0, special_masks=special)
    assert isinstance(b, Batch) and b.index == [1, 0, 2] and b.lengths == [5, 3, 1] and b.width == 5
    assert b.input_ids.dtype == b.attention_mask.dtype == b.special_tokens_mask.dtype == torch.long
    assert b.input_ids.tolist() == [[1, 9, 10, 11, 2], [1, 7, 8, 0, 0], [1, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert b.special_tokens_mask.tolist() == [[1, 0, 0, 0, 1], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert b.own.tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_collate_without_special_mask_owns_every_real_token():
    b = collate([[4, 5], [6]], [0, 1], pad_id=3)
    assert b.special_tokens_mask is None
    assert b.input_ids.tolist() == [[4, 5], [6, 3]]
    assert torch.equal(b.own, b.attention_mask)


def test_batches_plans_then_collates():
    ids = [[1] * n for n in (3, 12, 7, 1, 12)]
    got = list(batches(ids, token_budget=24, pad_id=0))
    assert [b.index for b in got] == plan_batches([3, 12, 7, 1, 12], 24)
    assert sorted(i for b in got for i in b.index) == [0, 1, 2, 3, 4]
    for b in got:
        assert b.width == max(b.lengths) == b.lengths[0]
        assert b.attention_mask.sum(1).tolist() == b.lengths


@pytest.mark.parametrize(
    "ids, expected",
    [((5, 6, 7), 5), ((None, 6, 7), 6), ((None, None, 7), 7), ((None, None, None), 0)],
)
def test_pad_id_falls_back_without_touching_the_tokenizer(ids, expected):
    tok = SimpleNamespace(pad_token_id=ids[0], eos_token_id=ids[1], unk_token_id=ids[2])
    assert pad_id_of(tok) == expected
    assert tok.pad_token_id == ids[0]


# --------------------------------------------------------------------------- packed rows

from lingua_ray.batching import UnitPositions, collate_packed, plan_packed, supports_packing  # noqa: E402
from lingua_ray.models.tiny import tiny_model  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), max_size=80), budget=st.integers(8, 1200), width=st.integers(1, 200))
def test_plan_packed_properties(lengths, budget, width):
    out = plan_packed(lengths, budget, width)
    assert sorted(i for f in out for row in f for i in row) == list(range(len(lengths)))  # each index once
    w = min(width, budget)
    for f in out:
        fills = [sum(lengths[i] for i in row) for row in f]
        first = max(lengths[row[0]] for row in f)
        cap = max(w, first)
        assert all(fill <= cap for fill in fills)  # a row never overflows its forward's width
        assert len(f) * max(fills) <= budget or (len(f) == 1 and len(f[0]) >= 1 and fills[0] == max(fills))
        for row in f:
            assert sum(lengths[i] > w for i in row) <= 1  # a long text opens its own row


def test_plan_packed_fills_rows_and_long_tails():
    rng = np.random.default_rng(0)  # UDHR-like: most units 10-80 tokens, a few paragraphs of 300-400
    lengths = [403, 352, 331] + np.clip(rng.lognormal(np.log(30), 0.5, 150), 8, 120).astype(int).tolist()
    out = plan_packed(lengths, 8192, 128)
    slots = sum(len(f) * max(sum(lengths[i] for i in row) for row in f) for f in out)
    padded = sum(len(b) * lengths[b[0]] for b in plan_batches(lengths, 8192))
    assert slots <= 1.03 * sum(lengths) and padded > 1.1 * sum(lengths)
    assert [len(row) for row in out[0]][1:] > [1, 1]  # the shorter long rows' tails hold short texts


def test_collate_packed_layout():
    ids = [[1, 7, 8], [1, 9, 10, 11, 2], [1], [1, 5]]
    special = [[1, 0, 0], [1, 0, 0, 0, 1], [1], [1, 0]]
    b = collate_packed(ids, [[1, 2], [0, 3]], pad_id=0, special_masks=special)
    assert b.packed and b.index == [1, 2, 0, 3] and b.lengths == [5, 1, 3, 2]
    assert b.rows == [0, 0, 1, 1] and b.starts == [0, 5, 0, 3] and b.width == 6
    assert b.input_ids.tolist() == [[1, 9, 10, 11, 2, 1], [1, 7, 8, 1, 5, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]  # the pad tail restarts
    assert b.segment.tolist() == [[0, 0, 0, 0, 0, 1], [2, 2, 2, 3, 3, -1]]
    assert b.own.tolist() == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]]
    inputs = b.model_inputs("cpu")
    assert set(inputs) == {"input_ids", "position_ids"}  # no attention mask: packed detection needs None
    assert set(collate(ids, [0, 1], 0).model_inputs("cpu")) == {"input_ids", "attention_mask"}


def test_unit_positions_of_a_packed_batch():
    ids = [[1, 7, 8], [1, 9, 10, 11, 2], [1, 4], [1, 5]]
    special = [[1, 0, 0], [1, 0, 0, 0, 1], [1, 0], [1, 0]]
    b = collate_packed(ids, [[1, 2], [0, 3]], pad_id=0, special_masks=special)
    u = UnitPositions.of_batch(b, "cpu")
    assert u.counts.tolist() == [3, 1, 2, 1]
    T = b.input_ids.shape[1]
    assert T == 7  # the longer row: 5 + 2 tokens
    assert u.last.tolist() == [3, 6, T + 2, T + 4]  # flat b*T + t of each unit's last own token
    assert u.slots.shape == (2, 2, T) and u.row.tolist() == [0, 0, 1, 1] and u.slot.tolist() == [0, 1, 0, 1]
    x = torch.arange(2.0 * T).reshape(2, T, 1)
    assert u.sum(x)[:, 0].tolist() == [1 + 2 + 3, 6, (T + 1) + (T + 2), T + 4]


def test_supports_packing_is_checked_per_model():
    assert supports_packing(tiny_model("llama")) is True
    assert supports_packing(tiny_model("bloom")) is False  # ALiBi from the mask: texts would see each other
