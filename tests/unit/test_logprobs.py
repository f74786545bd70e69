import torch

from dpokit.data.collate import collate_pairs
from dpokit.logprobs import batch_logps
from dpokit.types import TokenizedPair
from tiny import make_model


def pairs():
    return [TokenizedPair((5, 6, 7), (8, 9), (10,), "a"),
            TokenizedPair((5,), (11, 12, 13, 14, 15), (16, 17), "b")]


def test_batch_logps_equals_per_sequence_naive_on_tiny_model():
    model = make_model(vocab_size=32)
    batch = collate_pairs(pairs(), pad_id=0)
    with torch.no_grad():
        got = batch_logps(model, batch)
        for i, p in enumerate(pairs()):
            for completion, value in ((p.chosen_ids, got.chosen[i]), (p.rejected_ids, got.rejected[i])):
                ids = torch.tensor([p.prompt_ids + completion])
                lp = model(ids).logits.log_softmax(-1)[0]
                expected = sum(lp[len(p.prompt_ids) + j - 1, tok] for j, tok in enumerate(completion))
                assert torch.allclose(value, expected, atol=1e-5), (i, value, expected)
    assert got.chosen_tokens.tolist() == [2, 5] and got.rejected_tokens.tolist() == [1, 2]


def test_padding_does_not_change_a_pairs_logps():
    model = make_model(vocab_size=32)
    alone = collate_pairs(pairs()[:1], pad_id=0)
    with_long_neighbour = collate_pairs(pairs(), pad_id=0)
    assert with_long_neighbour.input_ids.shape[1] > alone.input_ids.shape[1]
    with torch.no_grad():
        a, b = batch_logps(model, alone), batch_logps(model, with_long_neighbour)
    assert torch.allclose(a.chosen[0], b.chosen[0], atol=1e-5)
    assert torch.allclose(a.rejected[0], b.rejected[0], atol=1e-5)
