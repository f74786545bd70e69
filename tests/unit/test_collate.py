import torch

from dpokit.data.collate import collate_pairs
from dpokit.types import TokenizedPair


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
