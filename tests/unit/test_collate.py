import torch

from dpokit.data.collate import block_causal_mask, collate_packed, collate_pairs, collate_sequences, first_fit
from dpokit.types import TokenizedExample, TokenizedPair


def test_docstring_example():
    pairs = [TokenizedPair((5, 6), (7,), (8, 9), "p1"), TokenizedPair((5,), (7, 7), (9,), "p2")]
    b = collate_pairs(pairs, pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 0], [5, 7, 7, 0], [5, 6, 8, 9], [5, 9, 0, 0]]
    assert b.loss_mask.int().tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert b.strengths is None and b.num_pairs == 2


def test_margins_kept_when_every_pair_has_one():
    pairs = [TokenizedPair((1,), (2,), (3,), "a", strength=2.0), TokenizedPair((1,), (2,), (4,), "b", strength=0.5)]
    assert torch.equal(collate_pairs(pairs, 0).strengths, torch.tensor([2.0, 0.5]))


def test_first_fit_places_the_longest_first_into_the_first_row_with_room():
    # 9 is over the budget: a row of its own; 5 opens a row, 4 does not fit beside it (9 > 8), 3 joins 5, 2 joins 4
    assert first_fit([3, 5, 2, 4, 9], row_tokens=8) == [[4], [1, 0], [3, 2]]
    assert first_fit([2, 2, 2], row_tokens=4) == [[0, 1], [2]]  # equal sizes keep their order


def test_pairs_and_sft_examples_pack_into_the_same_rows():
    sizes = [3, 5, 2, 4]
    pairs = [TokenizedPair((1,) * (n - 2), (2,), (3,), f"p{i}") for i, n in enumerate(sizes)]
    examples = [TokenizedExample((1,) * n, (False,) + (True,) * (n - 1), f"e{i}") for i, n in enumerate(sizes)]
    packed_pairs, packed_examples = collate_packed(pairs, 0, row_tokens=7), collate_sequences(examples, 0, row_tokens=7)
    assert packed_pairs.input_ids.shape == packed_examples.input_ids.shape == (2, 7)  # rows [5, 2] and [4, 3]
    assert packed_pairs.position_ids.tolist()[1] == [0, 1, 2, 2, 0, 1, 1]  # the rejected answer restarts per block
    assert packed_examples.position_ids.tolist()[1] == [0, 1, 2, 3, 0, 1, 2]


def test_block_causal_mask_keeps_blocks_apart_and_lets_padding_see_itself():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, -1]]))[0].int().tolist()
    assert mask == [[1, 0, 0, 0],
                    [1, 1, 0, 0],
                    [0, 0, 1, 0],   # block 1 starts afresh
                    [0, 0, 0, 1]]   # padding: itself only
