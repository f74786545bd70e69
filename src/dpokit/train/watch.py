"""Watching for overfitting while training: DPO overfits fast, and the signs are in the metrics already.

Two signs, checked at every held-out evaluation (pure functions of the metrics history, so they are testable on
constructed trajectories):
- held-out stalls while train rises: the held-out loss has not improved for `patience` evaluations, yet the train
  reward margin over that stretch is higher than before it;
- chosen answers lose likelihood: on held-out pairs the chosen log-prob fell below the reference's by more than
  `chosen_drop` nats (the margin can grow while both answers become less likely, a known DPO failure);
- collapsing onto the training pairs: the train loss of the latest steps is near 0 while the held-out loss has risen
  past its best (a learning rate too high: TRL #1236);
- both answers falling: held-out chosen and rejected log-probs both fell below the reference's by more than half of
  `chosen_drop` nats (the "both rewards negative" pattern: LLaMA-Factory #7643);
- not learning: past a quarter of the run (and at least 10 steps), the DPO loss of the latest steps is still within
  0.005 of ln 2, where it starts (rewards stuck at 0, loss 0.6931: TRL #1311);
- a breaking generator: a few held-out prompts answered greedily at each evaluation (probe.py) drift from the
  reference's answers: the per-token KL past `drift_kl`, answers turning into loops, or answers that stop ending.
`--early-stop` uses the same bookkeeping: it keeps the best model by held-out loss and stops after `patience`
evaluations without improvement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import LN2, is_feedback_loss, needs_reference, starts_at_ln2


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


STUCK = 0.005  # a loss this close to ln 2 has not moved from where DPO starts


def not_learning(records: list[dict], total_steps: int | None, min_steps: int = 10) -> str | None:
    """A warning when, past a quarter of ``total_steps`` (and ``min_steps``), the mean train loss of the latest
    quarter of the steps so far is still within STUCK of ln 2; None otherwise (or when the run's length is unknown)."""
    train = [r["loss"] for r in records if "loss" in r and "eval/loss" not in r]
    if total_steps is None or len(train) < max(min_steps, total_steps / 4):
        return None
    recent = _mean(train[-max(len(train) // 4, 1):])
    if abs(recent - LN2) > STUCK:
        return None
    return (f"not learning after {len(train)} of {total_steps} steps: the train loss is {recent:.4f}, still within "
            f"{STUCK} of ln 2 = {LN2:.4f} where DPO starts. Likely causes: a learning rate too low for this model "
            "size (try 10x), LoRA with too small a rank or alpha, or a β so small that margins barely move the loss")


NEAR_ZERO = 0.05  # a DPO loss this low means the training pairs are separated by a wide margin
RISE = 0.05  # held-out loss this far above its best counts as rising


def collapsing(records: list[dict]) -> str | None:
    """A warning when the latest train losses are near 0 while the newest held-out loss rose past its best."""
    train = [r["loss"] for r in records if "loss" in r and "eval/loss" not in r]
    evals = [r for r in records if "eval/loss" in r]
    if len(train) < 4 or len(evals) < 2:
        return None
    recent = _mean(train[-max(len(train) // 4, 1):])
    best = min(evals[:-1], key=lambda r: r["eval/loss"])
    last = evals[-1]
    if recent >= NEAR_ZERO or last["eval/loss"] < best["eval/loss"] + RISE:
        return None
    return (f"at step {last['step']}: the train loss is {recent:.4f}, near 0, while the held-out loss rose from "
            f"{best['eval/loss']:.4f} (step {best['step']}) to {last['eval/loss']:.4f}: the model is memorising its "
            "training pairs. Likely a learning rate too high; lower --learning-rate, run fewer steps, or --early-stop")


def both_falling(record: dict, beta: float, chosen_drop: float) -> str | None:
    """A warning when held-out chosen and rejected answers both became much less likely than under the reference."""
    chosen, rejected = record.get("eval/rewards/chosen"), record.get("eval/rewards/rejected")
    if chosen is None or rejected is None or beta <= 0:
        return None
    chosen, rejected = chosen / beta, rejected / beta  # mean log π − log π_ref over held-out pairs
    if chosen >= -chosen_drop / 2 or rejected >= -chosen_drop / 2:
        return None
    return (f"at step {record['step']}: held-out chosen and rejected answers both fell below the reference "
            f"({chosen:.1f} and {rejected:.1f} nats): the margin grows by pushing both down, which can break "
            "generation. Consider a lower learning rate, --sft-weight (an NLL term on chosen) or a larger β")


def stalled_while_training_rises(records: list[dict], patience: int) -> str | None:
    """A warning when the last `patience` evaluations did not improve on the best held-out loss before them while
    the train margin kept rising; None otherwise."""
    evals = [r for r in records if "eval/loss" in r]
    if len(evals) < patience + 1:
        return None
    best_before = min(evals[:-patience], key=lambda r: r["eval/loss"])
    if min(r["eval/loss"] for r in evals[-patience:]) < best_before["eval/loss"]:
        return None  # still improving
    key = "rewards/margins" if any("rewards/margins" in r for r in records) else "loss"
    train = [r for r in records if key in r and "step" in r]
    before = _mean([r[key] for r in train if r["step"] <= best_before["step"]])
    after = _mean([r[key] for r in train if r["step"] > best_before["step"]])
    if before is None or after is None:
        return None
    rising = after > before if key == "rewards/margins" else after < before  # train loss falling = rising fit
    if not rising:
        return None
    last = evals[-1]
    return (f"possible overfitting at step {last['step']}: held-out loss {last['eval/loss']:.4f} has not improved on "
            f"{best_before['eval/loss']:.4f} (step {best_before['step']}) for {patience} evaluations while the train "
            f"{'reward margin' if key == 'rewards/margins' else 'loss'} kept improving ({before:.4f} → {after:.4f}); "
            "consider the earlier checkpoint, fewer steps, a larger β or --early-stop")


def chosen_likelihood_drop(record: dict, beta: float, chosen_drop: float) -> str | None:
    """A warning when held-out chosen answers became much less likely than under the reference."""
    reward = record.get("eval/rewards/chosen")
    if reward is None or beta <= 0:
        return None
    delta = reward / beta  # mean of log π(chosen) − log π_ref(chosen) over held-out pairs
    if delta >= -chosen_drop:
        return None
    return (f"at step {record['step']}: held-out chosen answers are {-delta:.1f} nats less likely than under the "
            f"reference (threshold {chosen_drop}); the margin may be growing by pushing both answers down. Consider "
            "--sft-weight (an NLL term on chosen), a larger β or fewer steps")


REPEATING = 0.5  # a share of repeated 4-grams this high is a loop, not prose
MORE_REPEATING = 0.25  # ... and this much above the reference's own answers
STOPS_ENDING = 0.5  # this much fewer answers ending (EOS) than the reference's


def drifting(record: dict, start: dict | None, drift_kl: float) -> str | None:
    """A warning when the probe's greedy answers drift from the reference's (see train/probe.py)."""
    kl, rep, ended = (record.get(f"eval/drift/{k}") for k in ("kl_per_token", "repetition", "ended"))
    if kl is None or not start or "eval/drift/repetition" not in start:
        return None
    signs = []
    if kl > drift_kl:
        signs.append(f"KL(π_ref ‖ π) on the reference's own answers is {kl:.2f} nats per token (threshold {drift_kl})")
    if rep > max(REPEATING, start["eval/drift/repetition"] + MORE_REPEATING):
        signs.append(f"{rep:.0%} of the answers' 4-grams repeat (reference {start['eval/drift/repetition']:.0%})")
    if start["eval/drift/ended"] - ended >= STOPS_ENDING:
        signs.append(f"{ended:.0%} of the answers end within the budget (reference {start['eval/drift/ended']:.0%})")
    if not signs:
        return None
    return (f"at step {record['step']}: generation is drifting from the reference: " + "; ".join(signs) + ". The "
            "preference metrics cannot see this; the answers are in probe.jsonl. Likely a learning rate too high "
            "or too many steps: lower --learning-rate, add --sft-weight, or use an earlier checkpoint")


@dataclass
class OverfitWatch:
    """Keeps the metrics history of a run and says, after each evaluation, what to warn about and whether the
    held-out loss improved (for --early-stop)."""

    patience: int = 3
    beta: float | None = None  # None: not a preference run (no reward metrics)
    total_steps: int | None = None  # set for losses that start at ln 2 (sigmoid, cdpo, robust): the not-learning check
    chosen_drop: float = 5.0
    drift_kl: float = 0.5
    records: list[dict] = field(default_factory=list)
    best_loss: float = float("inf")
    best_step: int | None = None
    evals_since_best: int = 0
    warnings: list[str] = field(default_factory=list)
    fired: set = field(default_factory=set)  # each kind of warning is given once per run

    @classmethod
    def for_run(cls, config, resumed: dict, total_steps: int | None = None) -> "OverfitWatch":
        """The watch of one run; after --resume, --early-stop's best so far comes back from the checkpoint. The
        not-learning and memorising checks apply to losses that start at ln 2 (one of sigmoid, cdpo, robust, with no
        --sft-weight added)."""
        # The chosen-drop check reads rewards as β·(log π − log π_ref): only losses with a reference have such rewards.
        loss = getattr(config, "loss", "")
        beta = getattr(config, "beta", None) if needs_reference(loss) and not is_feedback_loss(loss) else None
        from_ln2 = starts_at_ln2(loss) and not getattr(config, "sft_weight", 0)
        watch = cls(patience=config.patience, beta=beta, chosen_drop=getattr(config, "warn_chosen_drop", 5.0),
                    total_steps=total_steps if from_ln2 else None, drift_kl=getattr(config, "warn_drift_kl", 0.5))
        if resumed.get("best_eval_loss") is not None:
            watch.best_loss, watch.best_step = resumed["best_eval_loss"], resumed["best_step"]
        return watch

    def totals(self) -> dict:
        """What a checkpoint must carry so that a resumed run knows its best held-out loss."""
        return {"best_eval_loss": self.best_loss if self.best_step is not None else None, "best_step": self.best_step}

    def add_train(self, record: dict) -> None:
        self.records.append({k: v for k, v in record.items() if not k.startswith("eval/")})

    def add_eval(self, step: int, metrics: dict) -> tuple[bool, list[str]]:
        """Record one evaluation; returns (improved, new warnings)."""
        self.records.append({"step": step, **metrics})
        improved = metrics["eval/loss"] < self.best_loss
        if improved:
            self.best_loss, self.best_step, self.evals_since_best = metrics["eval/loss"], step, 0
        else:
            self.evals_since_best += 1
        collapse = collapsing(self.records) if self.total_steps is not None else None
        checks = {"not_learning": not_learning(self.records, self.total_steps), "collapse": collapse,
                  "both_falling": both_falling({"step": step, **metrics}, self.beta or 0, self.chosen_drop),
                  "stall": stalled_while_training_rises(self.records, self.patience),
                  "chosen_drop": chosen_likelihood_drop({"step": step, **metrics}, self.beta or 0, self.chosen_drop),
                  "drift": drifting({"step": step, **metrics}, self.start_eval(), self.drift_kl)}
        new = [w for kind, w in checks.items() if w and kind not in self.fired]
        self.fired.update(kind for kind, w in checks.items() if w)
        self.warnings += new
        return improved, new

    def start_eval(self) -> dict | None:
        """The step-0 evaluation (the policy equal to its reference), if this process saw it."""
        return next((r for r in self.records if r.get("step") == 0 and "eval/loss" in r), None)

    def should_stop(self) -> bool:
        return self.evals_since_best >= self.patience
