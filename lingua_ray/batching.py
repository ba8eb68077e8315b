"""Length-bucketed batches of tokenised texts, right-padded: shared by capture and ablation.

``plan_batches`` groups text indices under a token budget; ``collate`` right-pads one group
into (B, T) tensors with an attention mask (and, when given, the special-tokens mask);
``batches`` does both. Callers tokenise (their truncation rules differ, see
``capture_texts`` and ``unit_nll``) and hand over the id lists.

Pure torch: no model, no tokenizer calls beyond reading its special ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


def plan_batches(lengths: Sequence[int], token_budget: int, max_pad_ratio: float = 1.5) -> list[list[int]]:
    """Index batches, longest first, with batch_size × longest ≤ token_budget.

    A batch also closes when the next (shorter) text would be padded to more than
    ``max_pad_ratio`` × its own length: one long paragraph must not pad fifteen short
    ones to its length (on real UDHR blocks that wasted 7× the compute). Longest first
    so an out-of-memory batch shows at once. A text longer than the budget is alone.
    Within a batch the first index is a longest text.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            head = lengths[batches[-1][0]]  # the batch's padded length
            fits = (len(batches[-1]) + 1) * head <= token_budget
            if fits and head <= max_pad_ratio * max(lengths[i], 8):
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def pad_id_of(tokenizer) -> int:
    """The id written at padding positions: pad, else EOS, else UNK, else 0.

    Padding positions are masked out and never read or scored, so any valid id will do;
    this avoids setting ``tokenizer.pad_token`` and so never mutates the caller's tokenizer.
    """
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0


@dataclass
class Batch:
    """One right-padded batch, on the CPU.

    index: the texts' indices in the caller's list, row order. lengths: their token counts.
    input_ids, attention_mask: long (B, T), T = max(lengths); attention 1 on real tokens.
    special_tokens_mask: long (B, T), 1 on special tokens (0 on padding), or None if not given.
    """

    index: list[int]
    lengths: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special_tokens_mask: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """T, the padded length."""
        return int(self.input_ids.shape[1])

    @property
    def own(self) -> torch.Tensor:
        """long (B, T): 1 on each text's own tokens (real and not special)."""
        if self.special_tokens_mask is None:
            return self.attention_mask
        return self.attention_mask * (1 - self.special_tokens_mask)


def collate(
    ids: Sequence[Sequence[int]],
    index: Sequence[int],
    pad_id: int,
    special_masks: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """Right-pad the texts ``index`` of ``ids`` (and their special-token masks) into one ``Batch``."""
    lengths = [len(ids[i]) for i in index]
    width = max(lengths, default=0)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(index), width), dtype=torch.long)
    special = None if special_masks is None else torch.zeros((len(index), width), dtype=torch.long)
    for r, (i, n) in enumerate(zip(index, lengths, strict=True)):
        input_ids[r, :n] = torch.tensor(ids[i], dtype=torch.long)
        attention[r, :n] = 1
        if special is not None:
            special[r, :n] = torch.tensor(special_masks[i], dtype=torch.long)
    return Batch(list(index), lengths, input_ids, attention, special)


def batches(
    ids: Sequence[Sequence[int]],
    token_budget: int,
    pad_id: int,
    special_masks: Sequence[Sequence[int]] | None = None,
) -> Iterator[Batch]:
    """``plan_batches`` over the id lists' lengths, each group ``collate``d, longest first."""
    for index in plan_batches([len(x) for x in ids], token_budget):
        yield collate(ids, index, pad_id, special_masks)
