"""Tokenized pairs → one PreferenceBatch, padded (2B rows), prompt-shared (B rows) or packed; SFT examples → one
SequenceBatch, padded or packed. Both packed layouts share one row filler (first_fit) and one block mask."""
from __future__ import annotations

import torch

from ..types import PreferenceBatch, SequenceBatch, TokenizedExample, TokenizedPair


def first_fit(sizes: list[int], row_tokens: int) -> list[list[int]]:
    """Items packed into rows of at most `row_tokens` tokens: longest first, each into the first row with room (an
    item longer than `row_tokens` gets a row of its own). Rows list item indices in packing order.

    first_fit([3, 5, 2, 4, 9], row_tokens=8) → [[4], [1, 0], [3, 2]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # stable: equal sizes keep their order
        r = next((r for r, free in enumerate(room) if sizes[i] <= free), None)
        if r is None:
            rows.append([i])
            room.append(max(row_tokens, sizes[i]) - sizes[i])
        else:
            rows[r].append(i)
            room[r] -= sizes[i]
    return rows


def block_causal_mask(block: torch.Tensor) -> torch.Tensor:
    """(rows, T) block index per position (-1: padding) → (rows, T, T) boolean attention: causal within a block,
    never across blocks; a padding position sees only itself, so no row of the mask is all False (NaN softmax)."""
    width = block.shape[1]
    real = block[:, :, None] >= 0  # (rows, T, 1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal & (block[:, :, None] == block[:, None, :]) & real
    return mask | (torch.eye(width, dtype=torch.bool) & ~real)


def _labels(pairs: list[TokenizedPair]) -> torch.Tensor | None:
    if all(p.label is not None for p in pairs):
        return torch.tensor([p.label for p in pairs], dtype=torch.bool)
    return None


def _strengths(pairs: list[TokenizedPair]) -> torch.Tensor | None:
    if all(p.strength is not None for p in pairs):
        return torch.tensor([p.strength for p in pairs], dtype=torch.float32)
    return None


def _num_tokens(pairs: list[TokenizedPair]) -> int:
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    """Right-pad prompt+chosen and prompt+rejected sequences into 2B rows.

    Worked example (pad_id=0), two pairs:
        pair 1: prompt (5, 6), chosen (7,),   rejected (8, 9)
        pair 2: prompt (5,),   chosen (7, 7), rejected (9,)
    gives
        input_ids  = [[5, 6, 7, 0], [5, 7, 7, 0], [5, 6, 8, 9], [5, 9, 0, 0]]
        loss_mask  = [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
        attention  = [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    (rows 0–1 are chosen, rows 2–3 rejected; the loss mask marks completion tokens, each predicted from the
    position before it).
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, n_prompt:n] = True
    loss_mask[:, 0] = False  # position 0 has nothing before it to predict it from
    targets = loss_mask.reshape(-1).nonzero().squeeze(-1)
    return PreferenceBatch(input_ids, attention_mask, sources=targets - 1, targets=targets, owners=targets // width,
                           num_pairs=len(pairs), num_tokens=_num_tokens(pairs), strengths=_strengths(pairs),
                           origins=[p.origin for p in pairs], loss_mask=loss_mask, labels=_labels(pairs))


PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


def collate_shared(pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    """One row per pair, [prompt | chosen | rejected], so the prompt runs through the model once.

    Worked example, one pair: prompt (5, 6), chosen (7,), rejected (8, 9):
        input_ids    = [[5, 6, 7, 8, 9]]
        position_ids = [[0, 1, 2, 2, 3]]          rejected restarts where chosen started
        attention (row q sees columns k marked 1):
            5: 1 0 0 0 0
            6: 1 1 0 0 0
            7: 1 1 1 0 0
            8: 1 1 0 1 0                          rejected sees the prompt and itself, not chosen
            9: 1 1 0 1 1
        targets = [2, 3, 4], sources = [1, 1, 3]  token 8 is predicted from the prompt's last position
    """
    return _pack([[i] for i in range(len(pairs))], pairs, pad_id)


def collate_packed(pairs: list[TokenizedPair], pad_id: int, row_tokens: int) -> PreferenceBatch:
    """Several [prompt | chosen | rejected] blocks per row, up to `row_tokens` tokens (first-fit by length).

    Blocks never see each other: the mask is block-diagonal by pair and position ids restart per block, so each
    pair's log-probs equal those of the padded layout; only the padding is gone.
    """
    sizes = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    return _pack(first_fit(sizes, row_tokens), pairs, pad_id)


def _pack(rows: list[list[int]], pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    """Lay out pair blocks row by row; `owners` keep pair order (pair i's chosen is i, rejected B + i)."""
    b = len(pairs)
    width = max(sum(len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in row)
                for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), PAD, dtype=torch.long)
    block = torch.full((len(rows), width), -1, dtype=torch.long)  # which pair a position belongs to
    sources, targets, owners = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            p = pairs[i]
            n_p, n_c, n_r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
            n = n_p + n_c + n_r
            input_ids[r, at:at + n] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids, dtype=torch.long)
            position_ids[r, at:at + n] = torch.cat([torch.arange(n_p + n_c), torch.arange(n_p, n_p + n_r)])
            segment[r, at:at + n] = torch.tensor([PROMPT] * n_p + [CHOSEN] * n_c + [REJECTED] * n_r)
            block[r, at:at + n] = i
            base = r * width + at
            chosen_pos = list(range(n_p, n_p + n_c))
            rejected_pos = list(range(n_p + n_c, n))
            targets += [base + t for t in chosen_pos + rejected_pos]
            sources += [base + t - 1 for t in chosen_pos] + [base + n_p - 1] + [base + t - 1 for t in rejected_pos[1:]]
            owners += [i] * n_c + [b + i] * n_r
            at += n
    q, k = segment[:, :, None], segment[:, None, :]  # (rows, T, 1), (rows, 1, T)
    visible = block_causal_mask(block) & ((k == PROMPT) | (k == q))  # rejected never sees chosen
    return PreferenceBatch(input_ids, visible[:, None], sources=torch.tensor(sources), targets=torch.tensor(targets),
                           owners=torch.tensor(owners), num_pairs=b, num_tokens=_num_tokens(pairs),
                           strengths=_strengths(pairs), origins=[p.origin for p in pairs], position_ids=position_ids,
                           labels=_labels(pairs))


COLLATORS = {"padded": collate_pairs, "shared": collate_shared}


def collator(config):
    """The batch builder of a run's --layout: padded, shared, or packed (rows of at most --tokens-per-row)."""
    if config.layout == "packed":
        row_tokens = config.tokens_per_row or 2 * config.max_length
        return lambda pairs, pad_id: collate_packed(pairs, pad_id, row_tokens)
    return COLLATORS[config.layout]


def collate_sequences(examples: list[TokenizedExample], pad_id: int, row_tokens: int | None = None) -> SequenceBatch:
    """SFT examples → one SequenceBatch: one padded row each, or (with `row_tokens`) packed rows.

    Worked example (pad_id=0), two examples, trained tokens marked *:
        (5, 6, 7*, 8*)   and   (5, 9*)
    padded:  input_ids = [[5, 6, 7, 8], [5, 9, 0, 0]], targets = [2, 3, 5], sources = [1, 2, 4], owners = [0, 0, 1]
    packed (row_tokens=6): input_ids = [[5, 6, 7, 8, 5, 9]], position_ids = [[0, 1, 2, 3, 0, 1]], a block-diagonal
    causal mask (the second example never sees the first), targets = [2, 3, 5], sources = [1, 2, 4].
    """
    sizes = [len(e.input_ids) for e in examples]
    rows = [[i] for i in range(len(examples))] if row_tokens is None else first_fit(sizes, row_tokens)
    width = max(sum(sizes[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    block = torch.full((len(rows), width), -1, dtype=torch.long)
    sources, targets, owners = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = examples[i], sizes[i]
            input_ids[r, at:at + n] = torch.tensor(e.input_ids, dtype=torch.long)
            position_ids[r, at:at + n] = torch.arange(n)
            block[r, at:at + n] = i
            picked = [t for t in range(1, n) if e.trained[t]]
            targets += [r * width + at + t for t in picked]
            sources += [r * width + at + t - 1 for t in picked]
            owners += [i] * len(picked)
            at += n
    if row_tokens is None:
        attention_mask, position_ids = (block >= 0).long(), None
    else:
        attention_mask = block_causal_mask(block)[:, None]
    return SequenceBatch(input_ids, attention_mask, torch.tensor(sources, dtype=torch.long),
                         torch.tensor(targets, dtype=torch.long), torch.tensor(owners, dtype=torch.long),
                         num_examples=len(examples), num_tokens=sum(sizes), origins=[e.origin for e in examples],
                         position_ids=position_ids)
