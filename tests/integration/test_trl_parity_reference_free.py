"""Parity of the reference-free losses with TRL 1.16 (a test-only dependency), on the same token ids and tiny model.

- SimPO against ``CPOTrainer(loss_type="simpo")``: with ``cpo_alpha=0`` (the paper's SimPO) the loss and every
  parameter's gradient equal TRL's to 1e-5 relative. With TRL's default ``cpo_alpha=1`` TRL adds a behaviour-cloning
  NLL as a token mean over the whole batch's chosen answers; the test shows TRL's loss is exactly dpokit's SimPO plus
  that batch token mean, which is not dpokit's per-pair `sft` term when answers differ in length.
- ORPO against ``ORPOTrainer`` (TRL's ``beta`` is ORPO's λ): the odds-ratio term equals TRL's in value and in every
  gradient to 1e-5. The NLL term differs by definition: the paper's eq. 2 (dpokit) is each pair's mean over its
  answer tokens; TRL's is a token mean over the batch's prompt *and* answer tokens. The test checks dpokit's term
  against eq. 2 computed the obvious way (full logits, log_softmax, gather) and shows TRL's differs on this batch.

TRL tokenizes the pairs itself; its ``chosen_labels`` mark the answer tokens (prompt = -100), and those very ids
become dpokit ``TokenizedPair``s, as in the DPO parity test.
"""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from dpokit.config import DPOConfig  # noqa: E402
from dpokit.data.collate import collate_pairs  # noqa: E402
from dpokit.logprobs import PairLogpsModule  # noqa: E402
from dpokit.losses import PairLogps, chosen_nll  # noqa: E402
from dpokit.train.objectives import objective  # noqa: E402
from dpokit.types import TokenizedPair  # noqa: E402
from test_trl_parity import PAIRS, models, one_thread, rel_err  # noqa: E402, F401  (models, one_thread: fixtures)

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
RTOL = 1e-5


def trainer_for(kind: str, models, output_dir, **settings):
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config_class, trainer_class = (CPOConfig, CPOTrainer) if kind == "cpo" else (ORPOConfig, ORPOTrainer)
    args = config_class(output_dir=str(output_dir), report_to="none", use_cpu=True, bf16=False, fp16=False,
                        disable_tqdm=True, seed=0, max_length=512, **settings)
    rows = {"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS], "rejected": [r for _, _, r in PAIRS]}
    return trainer_class(model=copy.deepcopy(models.policy), args=args, train_dataset=Dataset.from_dict(rows),
                         processing_class=models.tokenizer)


def same_ids(trainer, pad_id: int):
    """TRL's collated batch, and the same prompt/answer ids as a dpokit batch."""
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    pairs = []
    for i, ex in enumerate(examples):
        start = next(k for k, label in enumerate(ex["chosen_labels"]) if label != -100)
        assert ex["rejected_labels"][:start] == [-100] * start and ex["rejected_labels"][start] != -100
        assert ex["chosen_input_ids"][:start] == ex["rejected_input_ids"][:start]
        pairs.append(TokenizedPair(tuple(ex["chosen_input_ids"][:start]), tuple(ex["chosen_input_ids"][start:]),
                                   tuple(ex["rejected_input_ids"][start:]), f"pair{i}"))
    assert len({len(p.chosen_ids) for p in pairs}) > 1  # answers of different lengths: token means ≠ pair means
    return trainer.data_collator(examples), collate_pairs(pairs, pad_id)


def ours(models, batch, config):
    model = copy.deepcopy(models.policy)
    model.train()
    model.zero_grad(set_to_none=True)
    loss, metrics = objective(PairLogpsModule(model), None, batch, config)
    return model, loss, metrics


def grad_error(trl_model, our_model) -> tuple[str, float]:
    trl_params, our_params = dict(trl_model.named_parameters()), dict(our_model.named_parameters())
    assert trl_params.keys() == our_params.keys()
    errors = {name: rel_err(trl_params[name].grad, p.grad) for name, p in our_params.items()}
    assert torch.sqrt(sum(p.grad.double().pow(2).sum() for p in our_params.values())) > 1e-6
    worst = max(errors, key=errors.get)
    return worst, errors[worst]


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (0.5, 1.5)])
def test_simpo_matches_trl_cpo_simpo(models, tmp_path, beta, gamma):
    trainer = trainer_for("cpo", models, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma)
    inputs, batch = same_ids(trainer, models.tokenizer.pad_token_id)
    trl_model = trainer.model
    trl_model.train()
    trl_model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    trl_logged = {k: v[-1] for k, v in trainer._stored_metrics["train"].items()}

    our_model, our_loss, metrics = ours(models, batch, DPOConfig(loss="simpo", beta=beta, gamma=gamma))
    our_loss.backward()
    assert rel_err(trl_loss.detach(), our_loss.detach()) <= RTOL, (float(trl_loss), float(our_loss))
    worst, error = grad_error(trl_model, our_model)
    assert error <= RTOL, (worst, error)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        values = metrics[key].double()
        assert abs(float(trl_logged[key]) - float(values.mean())) <= RTOL * max(float(values.abs().mean()), 1e-12)
    assert (metrics["rewards/margins"] > 0).any() and (metrics["rewards/margins"] < 0).any()


def test_trl_cpo_default_adds_a_batch_token_mean_nll(models, tmp_path):
    """TRL's default cpo_alpha = 1: its loss is SimPO + the chosen NLL as one token mean over the batch."""
    trainer = trainer_for("cpo", models, tmp_path, loss_type="simpo", cpo_alpha=1.0, beta=2.0, simpo_gamma=0.5)
    inputs, batch = same_ids(trainer, models.tokenizer.pad_token_id)
    trainer.model.train()
    trl_loss = float(trainer.compute_loss(trainer.model, inputs))
    _, simpo, _ = ours(models, batch, DPOConfig(loss="simpo", beta=2.0, gamma=0.5))
    policy = PairLogps(*PairLogpsModule(copy.deepcopy(models.policy))(batch))
    token_mean = float(-policy.chosen.sum() / policy.chosen_tokens.sum())
    pair_mean = float(chosen_nll(policy).mean())  # dpokit's `sft` term
    assert trl_loss == pytest.approx(float(simpo) + token_mean, rel=RTOL)
    assert abs(token_mean - pair_mean) > 1e-3  # the two definitions differ on answers of unequal length


def paper_nll(model, batch) -> torch.Tensor:
    """ORPO eq. 2 the obvious way: full logits, log_softmax, gather, mean over each chosen answer, mean over pairs."""
    logits = model(batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits.log_softmax(-1)  # (B, T, V)
    flat = logits.reshape(-1, logits.shape[-1])
    token_logps = flat[batch.sources, batch.input_ids.reshape(-1)[batch.targets]]  # (K,)
    chosen = batch.owners < batch.num_pairs
    per_pair = torch.zeros(batch.num_pairs).index_add(0, batch.owners[chosen], token_logps[chosen])
    counts = torch.zeros(batch.num_pairs).index_add(0, batch.owners[chosen], torch.ones(int(chosen.sum())))
    return -(per_pair / counts).mean()


@pytest.mark.parametrize("orpo_lambda", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl_and_nll_is_the_papers(models, tmp_path, orpo_lambda):
    trainer = trainer_for("orpo", models, tmp_path, beta=orpo_lambda)
    inputs, batch = same_ids(trainer, models.tokenizer.pad_token_id)
    trl_model = trainer.model
    trl_model.train()
    trl_model.zero_grad(set_to_none=True)
    chosen, rejected, _, _, trl_nll = trainer.concatenated_forward(trl_model, inputs)[:5]
    trl_terms = trainer.odds_ratio_loss(chosen, rejected)
    trl_or = -trl_terms[0].mean()  # TRL's loss is nll − mean(λ·log σ(log odds))
    trl_or.backward()

    config = DPOConfig(loss="orpo", orpo_lambda=orpo_lambda)
    our_model = copy.deepcopy(models.policy)
    our_model.train()
    our_model.zero_grad(set_to_none=True)
    policy = PairLogps(*PairLogpsModule(our_model)(batch))
    loss, metrics = objective(lambda _: (policy.chosen, policy.rejected, policy.chosen_tokens,
                                         policy.rejected_tokens), None, batch, config)
    our_nll = chosen_nll(policy).mean()
    our_or = loss - our_nll
    our_or.backward()
    assert rel_err(trl_or.detach(), our_or.detach()) <= RTOL, (float(trl_or), float(our_or))
    worst, error = grad_error(trl_model, our_model)
    assert error <= RTOL, (worst, error)
    assert float(metrics["log_odds_chosen"].mean()) == pytest.approx(float(trl_terms[4]), rel=RTOL)
    assert float(metrics["log_odds_ratio"].mean()) == pytest.approx(float(trl_terms[3]), rel=RTOL)

    with torch.no_grad():
        assert float(our_nll) == pytest.approx(float(paper_nll(copy.deepcopy(models.policy).train(), batch)),
                                               rel=RTOL)
    assert abs(float(trl_nll) - float(our_nll)) > 1e-2  # TRL's NLL also counts prompt tokens, as a batch token mean
