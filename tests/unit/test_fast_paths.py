"""Fast paths against the obvious path: lean LM head, prompt-shared layout, on a tiny model (fp32)."""
import json

import pytest
import torch

from dpokit.data.collate import collate_pairs, collate_shared
from dpokit.logprobs import HeadLogProbs, batch_logps
from dpokit.types import TokenizedPair
from tiny import make_model


def test_head_logprobs_equals_naive_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    upstream = torch.randn(37)
    naive = (hidden @ weight.T).log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    (naive * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    lean = HeadLogProbs.apply(hidden, weight, labels, 8)  # chunks of 8 rows: 5 chunks, last one partial
    (lean * upstream).sum().backward()
    assert torch.allclose(lean, naive, atol=1e-5)
    assert torch.allclose(hidden.grad, grads[0], atol=1e-5) and torch.allclose(weight.grad, grads[1], atol=1e-5)


def some_pairs(seed=0, n=5, vocab=60):
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: tuple(torch.randint(1, vocab, (k,), generator=g).tolist())  # noqa: E731
    lengths = [(7, 3, 5), (2, 9, 1), (12, 4, 4), (1, 1, 6), (5, 8, 8)]
    return [TokenizedPair(ids(p), ids(c), ids(r), f"pair{i}") for i, (p, c, r) in enumerate(lengths[:n])]


def test_shared_collate_docstring_example():
    b = collate_shared([TokenizedPair((5, 6), (7,), (8, 9), "x")], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    assert b.attention_mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                     [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    assert b.targets.tolist() == [2, 3, 4] and b.sources.tolist() == [1, 1, 3] and b.owners.tolist() == [0, 1, 1]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_shared_lean_and_full_give_the_same_pair_logps(attn):
    model = make_model(vocab_size=60)
    model.config._attn_implementation = attn
    pairs = some_pairs()
    with torch.no_grad():
        reference = batch_logps(model, collate_pairs(pairs, 0), lean=False)  # the obvious path
        for collate in (collate_pairs, collate_shared):
            for lean in (True, False):
                got = batch_logps(model, collate(pairs, 0), lean=lean)
                for a, b in ((got.chosen, reference.chosen), (got.rejected, reference.rejected)):
                    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (collate.__name__, lean, a, b)
                assert torch.equal(got.chosen_tokens, reference.chosen_tokens)
                assert torch.equal(got.rejected_tokens, reference.rejected_tokens)


def test_shared_layout_gradients_equal_padded():
    pairs = some_pairs()
    grads = []
    for collate in (collate_pairs, collate_shared):
        model = make_model(vocab_size=60)
        lp = batch_logps(model, collate(pairs, 0))
        (lp.chosen.sum() - 0.5 * lp.rejected.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


def test_ten_step_loss_trajectory_is_the_same_for_both_layouts(tiny_model_dir, tmp_path):
    from dpokit.cli import main

    rows = [{"prompt": f"Tell me about item {i}.", "chosen": f" Item {i} is useful and safe.",
             "rejected": f" No {i}."} for i in range(16)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for layout in ("padded", "shared", "packed"):
        out = tmp_path / layout
        assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                     "--layout", layout, "--max-steps", "10", "--batch-size", "4", "--learning-rate", "1e-3",
                     "--eval-fraction", "0"]) == 0
        losses[layout] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["padded"]) == 10
    assert losses["padded"][-1] < losses["padded"][0]  # it trains
    assert losses["shared"] == pytest.approx(losses["padded"], rel=1e-4)
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-4)


def test_packed_layout_equals_padded_and_removes_padding():
    from dpokit.data.collate import collate_packed

    model = make_model(vocab_size=60)
    pairs = some_pairs()
    packed = collate_packed(pairs, 0, row_tokens=40)
    padded = collate_pairs(pairs, 0)
    assert packed.input_ids.shape[0] < len(pairs)  # several pairs share a row
    assert packed.input_ids.numel() < padded.input_ids.numel()
    with torch.no_grad():
        a, b = batch_logps(model, packed), batch_logps(model, padded, lean=False)
    assert torch.allclose(a.chosen, b.chosen, rtol=1e-5, atol=1e-5)
    assert torch.allclose(a.rejected, b.rejected, rtol=1e-5, atol=1e-5)


def test_step_zero_evaluation_reads_the_reference_instead_of_running_the_policy():
    """Before its first step the policy is its own reference (no --ref): the held-out evaluation takes the reference's
    log-probs as the policy's (an exact tie: margins 0, loss ln 2) and never runs the policy; after a training batch
    it runs the policy again. The shortcut gives what running the untrained policy gives."""
    import math

    from dpokit.config import DPOConfig
    from dpokit.reference import LiveReference
    from dpokit.train.objectives import DPOObjective

    model = make_model(vocab_size=60).eval()
    batch = collate_shared(some_pairs(), pad_id=0)
    objective = DPOObjective(LiveReference(model), DPOConfig())
    module = objective.wrap(model)
    ran = []
    handle = module.register_forward_pre_hook(lambda *_: ran.append(1))
    objective.policy_is_reference = True
    with torch.no_grad():
        loss, metrics = objective(module, batch, "eval", list(range(5)))
    assert not ran
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and torch.equal(metrics["rewards/margins"],
                                                                               torch.zeros(5))
    objective.policy_is_reference = False
    with torch.no_grad():
        run_loss, run_metrics = objective(module, batch, "eval", list(range(5)))
    assert ran and run_loss.item() == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(run_metrics["logps/chosen"], metrics["logps/chosen"], atol=1e-4)
    objective.policy_is_reference, ran[:] = True, []
    objective(module, batch, "train", list(range(5)))  # a training batch: the policy moves from here on
    with torch.no_grad():
        objective(module, batch, "eval", list(range(5)))
    assert len(ran) == 2 and not objective.policy_is_reference
    handle.remove()
