"""Batches of tokenised texts, shared by capture and ablation: packed rows, or right-padded ones.

Two layouts, one ``Batch``:

* **packed** (the default where the model allows it): several texts side by side in one row, each
  with its own position ids restarting at 0 and no attention mask, so transformers' masking
  (``masking_utils.find_packed_sequence_indices``) keeps every text to itself, sliding windows
  included. ``plan_packed`` fills rows of ``PACK_WIDTH`` tokens first-fit-decreasing (a text
  longer than that gets a row of its own length, its tail filled with short texts), so nearly no
  position is padding and one forward holds up to ``token_budget`` tokens: on the default UDHR
  units a padded batch held 2 texts (~120 tokens), too few rows for the matrix products.
* **padded**: ``plan_batches`` groups texts by length under the budget, ``collate`` right-pads
  one group into (B, T) with an attention mask. For models whose forward ignores position ids in
  its mask (BLOOM's ALiBi path): ``supports_packing`` finds out, once per model object, by
  comparing a packed forward with separate ones.

``batches`` plans and collates either way. Callers tokenise (their truncation rules differ, see
``capture_texts`` and ``unit_nll``) and hand over the id lists.

Pure torch; the only model call is ``supports_packing``'s check.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

# Row width of packed batches, in tokens. Attention in a packed row costs (row width) per token
# whatever the texts' own lengths (the kernels compute the masked blocks too): 4 x 128 x q_dim
# FLOPs per token and layer is ~5% of Gemma-3-270M's per-token matrix work; wider rows fill
# better but cost more attention. Measured in bench/bench_capture.py --real --pack-widths.
PACK_WIDTH = 128


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
    """One batch, on the CPU: texts laid out in B rows of T positions, packed or right-padded.

    index: the texts' indices in the caller's list, in unit order u = 0..U-1. lengths: their token
    counts. rows, starts: where text u sits: row ``rows[u]``, positions ``starts[u]`` ..
    ``starts[u] + lengths[u] - 1``. input_ids, attention_mask: long (B, T); attention 1 on real
    tokens, 0 on padding. special_tokens_mask: long (B, T), 1 on special tokens (0 on padding), or
    None if not given. packed: several texts may share a row; the model then gets
    ``position_ids`` instead of the attention mask (``model_inputs``).
    """

    index: list[int]
    lengths: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special_tokens_mask: torch.Tensor | None = None
    rows: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    packed: bool = False

    def __post_init__(self) -> None:
        if not self.rows:  # one text per row from position 0: the padded layout
            self.rows = list(range(len(self.index)))
            self.starts = [0] * len(self.index)

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

    @property
    def segment(self) -> torch.Tensor:
        """long (B, T): the unit index u at text u's positions, -1 on padding."""
        seg = torch.full(self.input_ids.shape, -1, dtype=torch.long)
        for u, (r, s, m) in enumerate(zip(self.rows, self.starts, self.lengths, strict=True)):
            seg[r, s : s + m] = u
        return seg

    @property
    def position_ids(self) -> torch.Tensor:
        """long (B, T): each text's positions 0..m-1; a row's padding tail restarts at 0 (its own sequence)."""
        pos = torch.zeros(self.input_ids.shape, dtype=torch.long)
        ends = [0] * self.input_ids.shape[0]
        for r, s, m in zip(self.rows, self.starts, self.lengths, strict=True):
            pos[r, s : s + m] = torch.arange(m)
            ends[r] = max(ends[r], s + m)
        for r, e in enumerate(ends):
            pos[r, e:] = torch.arange(self.width - e)
        return pos

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Keyword arguments for the body's forward (``use_cache=False`` is the caller's)."""
        ids = self.input_ids.to(device)
        if self.packed:
            return {"input_ids": ids, "position_ids": self.position_ids.to(device)}
        return {"input_ids": ids, "attention_mask": self.attention_mask.to(device)}


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


def plan_packed(lengths: Sequence[int], token_budget: int, width: int = PACK_WIDTH) -> list[list[list[int]]]:
    """Forwards, each a list of rows, each row a list of text indices laid side by side.

    A text longer than ``width`` opens a row of its own (these rows are grouped into forwards by
    ``plan_batches``, so a forward's width is its longest text's length); the others fill the
    long rows' tails first, then rows of ``width`` tokens, first fit, longest first. Every
    forward holds at most ``token_budget`` positions (rows × its width), except a single text
    longer than the budget, which is alone. Every index appears exactly once.
    """
    width = max(1, min(width, token_budget))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    long = [i for i in order if lengths[i] > width]
    short = [i for i in order if lengths[i] <= width]
    forwards: list[list[list[int]]] = []
    for group in plan_batches([lengths[i] for i in long], token_budget):
        forwards.append([[long[g]] for g in group])
    rows: list[tuple[int, list[int], list[int]]] = []  # (capacity, fill[1], texts), fill boxed for in-place update
    for f in forwards:
        cap = lengths[f[0][0]]
        rows.extend((cap, [lengths[r[0]]], r) for r in f)
    n_long_rows = len(rows)
    for i in short:
        for cap, fill, texts in rows:
            if fill[0] + lengths[i] <= cap:
                texts.append(i)
                fill[0] += lengths[i]
                break
        else:
            rows.append((width, [lengths[i]], [i]))
    per_forward = max(1, token_budget // width)
    short_rows = [texts for _, _, texts in rows[n_long_rows:]]
    forwards.extend(short_rows[k : k + per_forward] for k in range(0, len(short_rows), per_forward))
    return forwards


def collate_packed(
    ids: Sequence[Sequence[int]],
    rows: Sequence[Sequence[int]],
    pad_id: int,
    special_masks: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """Lay the texts of ``rows`` (lists of indices into ``ids``) side by side into one packed ``Batch``."""
    width = max((sum(len(ids[i]) for i in row) for row in rows), default=0)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    special = None if special_masks is None else torch.zeros(shape, dtype=torch.long)
    index, lengths, row_of, start_of = [], [], [], []
    for r, row in enumerate(rows):
        s = 0
        for i in row:
            n = len(ids[i])
            input_ids[r, s : s + n] = torch.tensor(ids[i], dtype=torch.long)
            attention[r, s : s + n] = 1
            if special is not None:
                special[r, s : s + n] = torch.tensor(special_masks[i], dtype=torch.long)
            index.append(i), lengths.append(n), row_of.append(r), start_of.append(s)
            s += n
    return Batch(index, lengths, input_ids, attention, special, row_of, start_of, packed=True)


def batches(
    ids: Sequence[Sequence[int]],
    token_budget: int,
    pad_id: int,
    special_masks: Sequence[Sequence[int]] | None = None,
    pack: bool = False,
    width: int = PACK_WIDTH,
) -> Iterator[Batch]:
    """Packed batches (``plan_packed``, ``collate_packed``) if ``pack``, else padded ones
    (``plan_batches``, ``collate``); longest texts first either way."""
    if pack:
        for rows in plan_packed([len(x) for x in ids], token_budget, width):
            yield collate_packed(ids, rows, pad_id, special_masks)
        return
    for index in plan_batches([len(x) for x in ids], token_budget):
        yield collate(ids, index, pad_id, special_masks)


@dataclass(frozen=True)
class UnitPositions:
    """Where each unit's own tokens T(s) are in a batch of B rows × T positions (packed or padded).

    A row holds up to S units side by side (S = 1 for right padding). Unit u sits in row
    ``row[u]``, slot ``slot[u]``.

    own: (B, T) float32, 1 on any unit's own tokens (not special, not padding).
    slots: (B, S, T) float32, slots[b, j, t] = 1 where t is an own token of row b's j-th unit.
    row, slot: (U,) long. counts: (U,) long, |T(s)| ≥ 1. last: (U,) long, flat index b·T + t of the
    unit's last own token.
    """

    own: torch.Tensor
    slots: torch.Tensor
    row: torch.Tensor
    slot: torch.Tensor
    counts: torch.Tensor
    last: torch.Tensor

    def per_unit(self, per_slot: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) per row slot → (U, ...) in unit order."""
        return per_slot[self.row, self.slot]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over each unit's own tokens of x (B, T, F) float32 → (U, F): one batched matmul, no copy of x."""
        return self.per_unit(torch.bmm(self.slots, x))

    @classmethod
    def of_batch(cls, batch: "Batch", device: torch.device | str) -> "UnitPositions":
        """The units of a ``Batch`` (packed or padded), on ``device``."""
        return cls.of(batch.own.to(device), batch.segment.to(device), batch.rows)

    @classmethod
    def of(cls, own: torch.Tensor, segment: torch.Tensor | None = None,
           rows: Sequence[int] | None = None) -> "UnitPositions":
        """From the (B, T) own-token mask and, for packed rows, the (B, T) unit index of every position
        (-1 on padding; ``Batch.segment``) and each unit's row (``Batch.rows``, units numbered row by
        row). Without ``segment``: one unit per row (right padding)."""
        B, T = own.shape
        device = own.device
        if segment is None:
            segment = torch.arange(B, device=device)[:, None].expand(B, T)
            rows = range(B)
        rows = list(rows)
        n_units = len(rows)
        slot_of, seen = [], {}
        for r in rows:  # a unit's slot is its rank among its row's units
            slot_of.append(seen.get(r, 0))
            seen[r] = slot_of[-1] + 1
        segment = segment.to(device)
        mine = (own > 0) & (segment >= 0)
        flat_seg = torch.where(mine, segment, n_units).flatten()  # bin n_units collects "not own"
        counts = torch.bincount(flat_seg, minlength=n_units + 1)[:n_units]
        positions = torch.arange(B * T, device=device)
        last = torch.full((n_units + 1,), -1, dtype=torch.long, device=device).scatter_reduce(
            0, flat_seg, positions, reduce="amax")[:n_units]
        row = torch.tensor(rows, dtype=torch.long, device=device)
        slot = torch.tensor(slot_of, dtype=torch.long, device=device)
        slots = torch.zeros(B, max(seen.values(), default=1), T, device=device)
        b_idx, t_idx = torch.nonzero(mine, as_tuple=True)
        slots[b_idx, slot[segment[b_idx, t_idx]], t_idx] = 1.0
        return cls(own=mine.float(), slots=slots, row=row, slot=slot, counts=counts, last=last)


# Models checked by supports_packing (once per model object): True if a packed forward equals separate ones.
_PACKABLE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def supports_packing(model: nn.Module) -> bool:
    """Whether ``model``'s decoder body keeps packed texts apart (position ids restarting at 0, no mask).

    Checked once per model object: texts of 7 and 5 tokens packed in one row against each alone,
    max |difference| of the body's output ≤ 1e-4 (float32) or 3e-2 (16-bit) of its max |value|.
    Texts leaking into each other differ by O(1) (BLOOM: 0.8). Hooks on the model see 3 small forwards.
    """
    if model in _PACKABLE:
        return _PACKABLE[model]
    from lingua_ray.models.adapters import get_adapter

    body = get_adapter(model).body_module(model)
    param = next(model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 256))
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(min(4, vocab - 1), vocab, (1, n), generator=g).to(param.device) for n in (7, 5))
    alone = [body(input_ids=x, use_cache=False).last_hidden_state[0].float() for x in (a, b)]
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None].to(param.device)
    packed = body(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).last_hidden_state[0].float()
    err = max(float((packed[:7] - alone[0]).abs().max()), float((packed[7:] - alone[1]).abs().max()))
    scale = max(float(alone[0].abs().max()), float(alone[1].abs().max()), 1e-6)
    tol = 1e-4 if param.dtype == torch.float32 else 3e-2
    _PACKABLE[model] = ok = bool(err <= tol * scale)
    return ok
