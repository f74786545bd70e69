"""KTO parity with TRL 1.16's KTOTrainer(loss_type="kto") on the same token ids and tiny model: the loss and every
parameter's gradient to 1e-5 relative, and the same reference point z₀ (TRL's logged `kl`).

TRL tokenizes the feedback rows and gives row i the answer of row i − 1 as its mismatched KL answer; dpokit's
``with_mismatched`` does the same, and the very same ids become dpokit ``TokenizedPair``s (answer in `chosen`, the
mismatched answer in `rejected`), batched in dpokit's default shared layout [prompt | answer | mismatched answer].
The models are ordered so that z₀ > 0 on this batch: its clamp at 0 would otherwise hide the KL path.
"""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from dpokit.config import DPOConfig  # noqa: E402
from dpokit.data.collate import collator  # noqa: E402
from dpokit.data.feedback import FeedbackExample, with_mismatched  # noqa: E402
from dpokit.logprobs import PairLogpsModule  # noqa: E402
from dpokit.losses import PairLogps  # noqa: E402
from dpokit.reference import LiveReference  # noqa: E402
from dpokit.train.objectives import objective  # noqa: E402
from dpokit.types import TokenizedPair  # noqa: E402
from test_trl_parity import models, one_thread, rel_err  # noqa: E402, F401  (models, one_thread: fixtures)

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
RTOL = 1e-5
ROWS = [("Human: How do I bake bread?\n\nAssistant:", " Mix flour, water and yeast, then bake.", True),
        ("Human: Hi\n\nAssistant:", " Go away, I am busy with other things right now.", False),
        ("Human: What is the capital of France and why is it famous?\n\nAssistant:", " Paris.", True),
        ("Human: Hi\n\nAssistant:", " Hello! How can I help?", True),
        ("Human: Is it safe to eat raw dough?\n\nAssistant:", " Sure, eat as much as you like.", False)]


def make_trainer(policy, reference, tokenizer, beta, weights, output_dir):
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(output_dir=str(output_dir), report_to="none", use_cpu=True, bf16=False, fp16=False, beta=beta,
                     desirable_weight=weights[0], undesirable_weight=weights[1], per_device_train_batch_size=len(ROWS),
                     disable_tqdm=True, seed=0, precompute_ref_log_probs=False)
    rows = {"prompt": [p for p, _, _ in ROWS], "completion": [c for _, c, _ in ROWS], "label": [d for _, _, d in ROWS]}
    return KTOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                      train_dataset=Dataset.from_dict(rows), processing_class=tokenizer)


def dpokit_batch(trainer, config):
    ds = trainer.train_dataset
    pairs = [TokenizedPair(tuple(ds[i]["prompt_ids"]), tuple(ds[i]["completion_ids"]), tuple(ds[i]["KL_completion_ids"]),
                           f"row{i}", label=bool(ds[i]["label"])) for i in range(len(ds))]
    # the rotation TRL made is dpokit's: row i's mismatched answer is row i − 1's answer
    rotated = with_mismatched([FeedbackExample("p", str(p.chosen_ids), p.label, p.origin) for p in pairs])
    assert [r.rejected for r in rotated] == [str(p.rejected_ids) for p in pairs]
    return collator(config)(pairs, trainer.processing_class.pad_token_id)


@pytest.mark.parametrize("beta,weights", [(0.1, (1.0, 1.0)), (0.5, (1.3, 0.7))])
def test_kto_loss_gradients_and_reference_point_match_trl(models, tmp_path, beta, weights):
    tokenizer, first, second = models.tokenizer, models.reference, models.policy
    config = DPOConfig(loss="kto", beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1])
    orders = []
    for policy, reference in ((second, first), (first, second)):
        trainer = make_trainer(policy, reference, tokenizer, beta, weights, tmp_path)
        batch = dpokit_batch(trainer, config)
        ref = LiveReference(reference).logps(batch, "train", list(range(batch.num_pairs)))
        with torch.no_grad():
            pol = PairLogps(*PairLogpsModule(copy.deepcopy(policy))(batch))
        orders.append((float((pol.rejected - ref.rejected).mean()), policy, reference, trainer, batch, ref))
    kl_estimate, policy, reference, trainer, batch, ref = max(orders, key=lambda o: o[0])
    assert kl_estimate > 1e-3  # z₀ is not clamped to 0 in the order compared

    trl_model = trainer.model
    trl_model.train()
    trl_model.zero_grad(set_to_none=True)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()

    ours = copy.deepcopy(policy)
    ours.train()
    ours.zero_grad(set_to_none=True)
    our_loss, metrics = objective(PairLogpsModule(ours), ref, batch, config)
    our_loss.backward()

    assert float(trainer._metrics["train"]["kl"][-1]) == pytest.approx(float(metrics["kl"][0]), rel=RTOL)
    assert rel_err(trl_loss.detach(), our_loss.detach()) <= RTOL, (float(trl_loss), float(our_loss))
    trl_params, our_params = dict(trl_model.named_parameters()), dict(ours.named_parameters())
    errors = {name: rel_err(trl_params[name].grad, p.grad) for name, p in our_params.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, (worst, errors[worst])
    assert torch.sqrt(sum(p.grad.double().pow(2).sum() for p in our_params.values())) > 1e-6
    # each answer compared with the reference point: the share on the right side of z₀ and both labels present
    assert set(metrics["desirable"].tolist()) == {0.0, 1.0}
