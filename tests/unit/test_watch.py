"""The overfitting watch on constructed metric trajectories: it fires on overfitting and stays quiet on health."""
import pytest

from dpokit.train.watch import OverfitWatch, chosen_likelihood_drop, stalled_while_training_rises


def trajectory(eval_losses, train_margins, eval_every=10):
    """Train records every step (margin given per eval interval) and an eval record every `eval_every` steps."""
    records = []
    for i, loss in enumerate(eval_losses):
        step = i * eval_every
        if i:
            records += [{"step": s, "loss": 0.5, "rewards/margins": train_margins[i - 1]}
                        for s in range(step - eval_every + 1, step + 1)]
        records.append({"step": step, "eval/loss": loss})
    return records


def test_fires_when_heldout_stalls_while_train_margin_rises():
    records = trajectory([0.69, 0.60, 0.61, 0.63, 0.66], [0.1, 0.5, 1.0, 2.0])
    warning = stalled_while_training_rises(records, patience=3)
    assert warning and "step 40" in warning and "0.6000 (step 10)" in warning


def test_quiet_while_heldout_improves():
    records = trajectory([0.69, 0.60, 0.55, 0.52, 0.50], [0.1, 0.5, 1.0, 2.0])
    assert stalled_while_training_rises(records, patience=3) is None


def test_quiet_when_both_stall():
    """Held-out flat and train margin flat too: not fitting the training set either, so no overfitting claim."""
    records = trajectory([0.69, 0.60, 0.61, 0.62, 0.61], [0.5, 0.4, 0.4, 0.3])
    assert stalled_while_training_rises(records, patience=3) is None


def test_too_few_evaluations_say_nothing():
    assert stalled_while_training_rises(trajectory([0.69, 0.7], [0.1]), patience=3) is None


def test_chosen_likelihood_drop():
    # eval/rewards/chosen = β · mean Δlog π(chosen) → Δ = −0.8 / 0.1 = −8 nats, below −5
    assert "8.0 nats" in chosen_likelihood_drop({"step": 30, "eval/rewards/chosen": -0.8}, beta=0.1, chosen_drop=5.0)
    assert chosen_likelihood_drop({"step": 30, "eval/rewards/chosen": -0.4}, beta=0.1, chosen_drop=5.0) is None
    assert chosen_likelihood_drop({"step": 30, "eval/loss": 1.0}, beta=0.1, chosen_drop=5.0) is None  # SFT: no rewards


def test_watch_tracks_best_stops_after_patience_and_warns_once():
    watch = OverfitWatch(patience=2, beta=0.1, chosen_drop=5.0)
    improved = []
    for i, (loss, chosen) in enumerate([(0.69, 0.0), (0.60, -0.2), (0.62, -0.7), (0.64, -0.9)]):
        step = 10 * i
        if i:
            for s in range(step - 9, step + 1):
                watch.add_train({"step": s, "loss": 0.4, "rewards/margins": float(i)})
        ok, _ = watch.add_eval(step, {"eval/loss": loss, "eval/rewards/chosen": chosen})
        improved.append(ok)
    assert improved == [True, True, False, False]
    assert watch.best_step == 10 and watch.should_stop()
    assert len(watch.warnings) == 2  # stall once, chosen drop once (not again at step 30)


def loss_steps(losses):
    return [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]


def test_not_learning_fires_on_a_loss_stuck_at_ln2_and_not_on_a_falling_one():
    from dpokit.train.watch import not_learning

    stuck = loss_steps([0.6931 + 0.001 * (-1) ** i for i in range(12)])
    warning = not_learning(stuck, total_steps=40)
    assert warning.startswith("not learning after 12 of 40 steps: the train loss is 0.69")
    assert "learning rate too low" in warning and "LoRA" in warning
    falling = loss_steps([0.6931 - 0.01 * i for i in range(12)])
    assert not_learning(falling, total_steps=40) is None
    assert not_learning(stuck[:9], total_steps=20) is None  # fewer than 10 steps: too early to say
    assert not_learning(stuck, total_steps=100) is None  # 12 of 100: before a quarter of the run
    assert not_learning(stuck, total_steps=None) is None  # losses that do not start at ln 2


def test_the_watch_gives_the_not_learning_warning_once():
    from dpokit.train.watch import OverfitWatch

    watch = OverfitWatch(total_steps=12)
    for record in loss_steps([0.6932] * 12):
        watch.add_train(record)
    _, first = watch.add_eval(12, {"eval/loss": 0.6931})
    _, again = watch.add_eval(12, {"eval/loss": 0.6931})
    assert len(first) == 1 and first[0].startswith("not learning") and again == []


def test_collapse_fires_when_train_loss_nears_zero_while_held_out_rises():
    from dpokit.train.watch import collapsing

    records = [{"step": 0, "eval/loss": 0.69}] + loss_steps([0.6, 0.3, 0.1, 0.02, 0.01, 0.01, 0.005, 0.004])
    records += [{"step": 8, "eval/loss": 0.80}]
    warning = collapsing(records)
    assert warning.startswith("at step 8: the train loss is 0.00") and "rose from 0.6900 (step 0) to 0.8000" in warning
    healthy = records[:-1] + [{"step": 8, "eval/loss": 0.60}]
    assert collapsing(healthy) is None  # held-out still improving
    slow = [{"step": 0, "eval/loss": 0.69}] + loss_steps([0.6, 0.5, 0.45, 0.4]) + [{"step": 4, "eval/loss": 0.9}]
    assert collapsing(slow) is None  # train loss far from 0: not this pattern


def test_both_falling_fires_only_when_both_answers_drop():
    from dpokit.train.watch import both_falling

    both = {"step": 30, "eval/rewards/chosen": -0.4, "eval/rewards/rejected": -0.9}  # β 0.1: −4 and −9 nats
    warning = both_falling(both, beta=0.1, chosen_drop=5.0)
    assert warning.startswith("at step 30: held-out chosen and rejected answers both fell") and "-4.0 and -9.0" in warning
    assert both_falling({"step": 30, "eval/rewards/chosen": 0.1, "eval/rewards/rejected": -0.9}, 0.1, 5.0) is None
    assert both_falling({"step": 30, "eval/rewards/chosen": -0.2, "eval/rewards/rejected": -0.9}, 0.1, 5.0) is None


# ---- a breaking generator: the probe's greedy answers drift from the reference's ----

def drift(step, kl=0.0, repetition=0.1, ended=1.0):
    return {"step": step, "eval/loss": 0.69, "eval/drift/kl_per_token": kl, "eval/drift/repetition": repetition,
            "eval/drift/ended": ended}


def test_drift_warns_on_kl_loops_or_answers_that_stop_ending_and_not_on_a_healthy_run():
    from dpokit.train.watch import drifting

    start = drift(0)
    assert drifting(drift(10, kl=0.1, repetition=0.2, ended=0.75), start, drift_kl=0.5) is None  # healthy
    assert "1.20 nats per token" in drifting(drift(10, kl=1.2), start, drift_kl=0.5)
    assert "90% of the answers' 4-grams repeat (reference 10%)" in drifting(drift(10, repetition=0.9), start, 0.5)
    assert "25% of the answers end" in drifting(drift(10, ended=0.25), start, 0.5)
    # a reference that loops itself: only more looping than it counts
    assert drifting(drift(10, repetition=0.9), drift(0, repetition=0.8), 0.5) is None
    assert drifting(drift(10, kl=2.0), None, 0.5) is None  # no step-0 baseline seen: no verdict


def test_the_watch_gives_the_drift_warning_once():
    from dpokit.train.watch import OverfitWatch

    watch = OverfitWatch(drift_kl=0.5)
    watch.add_eval(0, drift(0))
    _, first = watch.add_eval(5, drift(5, kl=0.9))
    _, second = watch.add_eval(10, drift(10, kl=1.5))
    assert len(first) == 1 and "generation is drifting" in first[0] and second == []


def test_repetition_is_the_share_of_repeated_ngrams():
    from dpokit.train.probe import repetition

    assert repetition([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(0.6)  # 5 bigrams, 2 distinct
    assert repetition([1, 2, 3, 4, 5], n=4) == 0.0 and repetition([1, 2], n=4) == 0.0
    assert repetition([7] * 10, n=4) == pytest.approx(6 / 7)
