import torch

from dpokit.data.collate import collate_pairs
from dpokit.logprobs import batch_logps, sequence_logps, token_logps
from dpokit.types import TokenizedPair
from tiny import make_model


def test_token_logps_equals_naive_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50) * 4
    labels = torch.randint(0, 50, (3, 7))
    naive = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, labels), naive, atol=1e-6)


def test_sequence_logps_sums_only_completion_tokens():
    """Sequence [a, b, c, d] with completion [c, d]: log p(c | a b) + log p(d | a b c)."""
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 10)
    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, False, True, True]])
    lp = logits.log_softmax(-1)
    expected = lp[0, 1, 3] + lp[0, 2, 4]
    assert torch.allclose(sequence_logps(logits, ids, mask), expected.unsqueeze(0))


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
