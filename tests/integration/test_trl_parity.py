"""Parity with TRL's DPOTrainer (TRL is a test-only dependency).

On the same token ids and the same tiny model, dpokit's sigmoid, ipo and hinge losses, and the gradients they
send into every policy parameter, must equal what TRL's ``DPOTrainer.compute_loss`` produces to 1e-5 relative.

How the two sides are fed: a DPOTrainer is built on a few plain-text pairs and tokenizes them with its own
pipeline (``_prepare_dataset``: EOS appended, prompt/completion split); its own data collator pads them into
``input_ids`` / ``attention_mask`` / ``completion_mask``. The very same ``prompt_ids`` / ``chosen_ids`` /
``rejected_ids`` become dpokit ``TokenizedPair``s and go through ``collate_pairs``. The policy is a seeded random
perturbation of the reference, so the margins are non-zero, of both signs, and at β = 0.5 the hinge has pairs
on both sides of its kink.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from datasets import Dataset  # noqa: E402
from trl import DPOConfig as TRLConfig  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from dpokit.config import DPOConfig  # noqa: E402
from dpokit.data.collate import collate_pairs  # noqa: E402
from dpokit.data.tokenize import tokenize_pair  # noqa: E402
from dpokit.logprobs import PairLogpsModule  # noqa: E402
from dpokit.reference import LiveReference  # noqa: E402
from dpokit.train.objectives import objective  # noqa: E402
from dpokit.types import PreferencePair, TokenizedPair  # noqa: E402
from tiny import make_model  # noqa: E402

# TRL's own internals call a transformers alias deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

RTOL = 1e-5
LOSS_TYPES = ("sigmoid", "ipo", "hinge")
BETAS = (0.1, 0.5)
NOISE = 0.1  # std of the seeded perturbation that turns the reference into the policy

# Prompts and completions of different lengths (token counts ≈ (15, 23, 5), (8, 10, 28), (30, 6, 23), (8, 28, 10)).
# The last pair is the second one with chosen and rejected swapped: its margin is exactly minus the second's, so
# the batch always holds margins of both signs.
PAIRS = [
    ("Human: How do I bake bread?\n\nAssistant:", " Mix flour, water and yeast, then bake.", " No."),
    ("Human: Hi\n\nAssistant:", " Hello! How can I help?", " Go away, I am busy with other things right now."),
    ("Human: What is the capital of France and why is it famous?\n\nAssistant:", " Paris.",
     " I do not know, maybe Lyon or some other city."),
    ("Human: Hi\n\nAssistant:", " Go away, I am busy with other things right now.", " Hello! How can I help?"),
]

# Metrics both trainers log under the same name; TRL logs the batch mean, dpokit per-pair values.
SHARED_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                  "logps/chosen", "logps/rejected")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got − want|| / ||want||, in float64 (want is never ~0 here; guarded anyway)."""
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model's matmuls are far faster on one thread than on several contended ones (about 50x on a busy
    2-core runner), and one thread also makes the float reductions repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    reference = make_model(len(tiny_tokenizer), seed=0)
    assert reference.config.attention_dropout == 0.0  # no dropout: train and eval forwards are the same
    policy = copy.deepcopy(reference)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * NOISE)
    return SimpleNamespace(tokenizer=tiny_tokenizer, reference=reference, policy=policy)


def make_trainer(models, loss_type: str, beta: float, output_dir) -> DPOTrainer:
    # TRL defaults to bf16 and activation checkpointing; compare in fp32, without recomputation. transformers 5
    # renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
    fields = {f.name for f in dataclasses.fields(TRLConfig)}
    no_checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = TRLConfig(output_dir=str(output_dir), report_to="none", use_cpu=True, bf16=False, fp16=False,
                     beta=beta, loss_type=[loss_type], max_length=None, precompute_ref_log_probs=False,
                     disable_tqdm=True, seed=0, **{no_checkpointing: False})
    rows = {"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
            "rejected": [r for _, _, r in PAIRS]}
    # TRL patches the forward of both models (fused LM head), so it gets copies of its own.
    return DPOTrainer(model=copy.deepcopy(models.policy), ref_model=copy.deepcopy(models.reference), args=args,
                      train_dataset=Dataset.from_dict(rows), processing_class=models.tokenizer)


def trl_examples(trainer) -> list[dict]:
    ds = trainer.train_dataset
    assert len(ds) == len(PAIRS)
    return [{k: list(ds[i][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(len(ds))]


def test_plain_text_tokenization_matches_trl(models, tmp_path):
    """dpokit's tokenize_pair splits and EOS-terminates these pairs exactly as TRL's dataset preparation does."""
    trainer = make_trainer(models, "sigmoid", 0.1, tmp_path)
    for i, ((prompt, chosen, rejected), ex) in enumerate(zip(PAIRS, trl_examples(trainer))):
        ours = tokenize_pair(models.tokenizer, PreferencePair(prompt, chosen, rejected, f"pair{i}"),
                             max_length=4096, max_prompt_length=None, counts=Counter(), chat=False)
        assert isinstance(ours, TokenizedPair), ours
        assert list(ours.prompt_ids) == ex["prompt_ids"], i
        assert list(ours.chosen_ids) == ex["chosen_ids"], i
        assert list(ours.rejected_ids) == ex["rejected_ids"], i


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradients_match_trl(models, loss_type, beta, tmp_path):
    trainer = make_trainer(models, loss_type, beta, tmp_path)
    trl_model = trainer.model
    ours = copy.deepcopy(models.policy)
    trl_model.train()  # what TRL's training_step does; dpokit's copy in the same mode
    ours.train()

    # --- the same ids through both collators ---
    examples = trl_examples(trainer)
    inputs = trainer.data_collator(examples)
    pairs = [TokenizedPair(tuple(e["prompt_ids"]), tuple(e["chosen_ids"]), tuple(e["rejected_ids"]), f"pair{i}")
             for i, e in enumerate(examples)]
    batch = collate_pairs(pairs, models.tokenizer.pad_token_id)
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    assert torch.equal(inputs["attention_mask"], batch.attention_mask)
    assert torch.equal(inputs["completion_mask"].bool(), batch.loss_mask)
    assert len(set(batch.attention_mask.sum(-1).tolist())) > 2  # real padding, several lengths

    # --- TRL: its loss computation, then backprop ---
    trl_model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    trl_logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # --- dpokit: reference log-probs under no_grad, then the training objective ---
    ref = LiveReference(models.reference).logps(batch, "train", list(range(batch.num_pairs)))
    config = DPOConfig(loss=loss_type, beta=beta)
    ours.zero_grad(set_to_none=True)
    our_loss, metrics = objective(PairLogpsModule(ours), ref, batch, config)
    our_loss.backward()

    # The batch is not degenerate: margins of both signs; the hinge is clipped on some pairs when β h > 1.
    margins = metrics["rewards/margins"] / beta
    assert (margins > 0.5).any() and (margins < -0.5).any(), margins
    if loss_type == "hinge" and beta == 0.5:
        assert (metrics["loss"] == 0).any() and (metrics["loss"] > 0).any(), metrics["loss"]

    # --- per-pair log-probs: TRL's fused-head forward vs dpokit's batch_logps ---
    trl_ref_chosen, trl_ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
    trl_pol_chosen, trl_pol_rejected = trainer.compute_ref_log_probs(trl_model, inputs)  # same path, no grad
    assert rel_err(trl_ref_chosen, ref.chosen) <= RTOL
    assert rel_err(trl_ref_rejected, ref.rejected) <= RTOL
    assert rel_err(trl_pol_chosen, metrics["logps/chosen"]) <= RTOL
    assert rel_err(trl_pol_rejected, metrics["logps/rejected"]) <= RTOL

    # --- the loss ---
    loss_err = rel_err(trl_loss.detach(), our_loss.detach())
    assert loss_err <= RTOL, (loss_type, beta, float(trl_loss), float(our_loss))

    # --- the gradient of every policy parameter ---
    trl_params = dict(trl_model.named_parameters())
    our_params = dict(ours.named_parameters())
    assert trl_params.keys() == our_params.keys()
    grad_errs = {}
    for name, p in our_params.items():
        q = trl_params[name]
        assert p.grad is not None and q.grad is not None, name
        grad_errs[name] = rel_err(q.grad, p.grad)
    total_norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in our_params.values()))
    assert total_norm > 1e-6  # a real gradient, not two zeros
    worst = max(grad_errs, key=grad_errs.get)
    assert grad_errs[worst] <= RTOL, (loss_type, beta, worst, grad_errs[worst])

    # --- TRL's logged batch means vs dpokit's per-pair metrics, relative to the per-pair magnitude ---
    for key in SHARED_METRICS:
        assert key in trl_logged, key
        values = metrics[key].double()
        scale = max(float(values.abs().mean()), 1e-12)
        assert abs(trl_logged[key] - float(values.mean())) <= RTOL * scale, (key, trl_logged[key], values)

    print(f"{loss_type} beta={beta}: loss rel err {loss_err:.2e}, max grad rel err {grad_errs[worst]:.2e} ({worst})")
