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
