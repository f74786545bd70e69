"""Each loss against hand-computed values. Fixed log-probs used throughout:

    policy    chosen −1, rejected −3        reference chosen −2, rejected −2
    chosen log-ratio  = −1 − (−2) = 1       rejected log-ratio = −3 − (−2) = −1
    h (margin)        = 1 − (−1) = 2        β = 0.5  →  βh = 1
    completion tokens: chosen 4, rejected 2
"""
import math

import pytest
import torch

from dpokit.losses import LOSSES, PairLogps, chosen_nll

BETA = 0.5


def fixed():
    policy = PairLogps(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([4]), torch.tensor([2]))
    reference = PairLogps(torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([4]), torch.tensor([2]))
    return policy, reference


def run(name, **kw):
    policy, reference = fixed()
    return LOSSES[name].fn(policy, reference, beta=BETA, **kw)


def test_sigmoid_equals_hand_value():
    """−log σ(βh) = log(1 + e^{−1}) = 0.3132617."""
    out = run("sigmoid")
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    assert out.losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # β · 1
    assert out.rejected_rewards.item() == pytest.approx(-0.5)  # β · (−1)


def test_cdpo_hand_value_and_zero_smoothing_is_sigmoid():
    """ε = 0.2: −0.8 log σ(1) − 0.2 log σ(−1) = 0.8·0.3132617 + 0.2·1.3132617 = 0.5132617."""
    assert run("cdpo", label_smoothing=0.2).losses.item() == pytest.approx(0.5132617, abs=1e-6)
    assert torch.equal(run("cdpo", label_smoothing=0.0).losses, run("sigmoid").losses)


def test_robust_hand_value():
    """ε = 0.2: (−0.8 log σ(1) + 0.2 log σ(−1)) / 0.6 = (0.2506094 − 0.2626523) / 0.6 = −0.0200716."""
    assert run("robust", label_smoothing=0.2).losses.item() == pytest.approx(-0.0200716, abs=1e-6)


def test_hinge_hand_value():
    """max(0, 1 − βh) = max(0, 1 − 1) = 0; with β = 0.25: 1 − 0.5 = 0.5."""
    assert run("hinge").losses.item() == pytest.approx(0.0)
    policy, reference = fixed()
    assert LOSSES["hinge"].fn(policy, reference, beta=0.25).losses.item() == pytest.approx(0.5)


def test_ipo_length_normalised_hand_value():
    """Per-token ratios: 1/4 − (−1/2) = 0.75; target 1/(2β) = 1; (0.75 − 1)² = 0.0625."""
    assert run("ipo").losses.item() == pytest.approx(0.0625)


def test_ipo_sum_hand_value():
    """Summed: (h − 1/(2β))² = (2 − 1)² = 1."""
    assert run("ipo_sum").losses.item() == pytest.approx(1.0)


def test_odpo_hand_value_and_zero_margin_is_dpo():
    """margin m = e − 1 → offset α·log(1 + m) = 1 (α = 1); −log σ(βh − 1) = −log σ(0) = ln 2."""
    out = run("odpo", strengths=torch.tensor([math.e - 1]))
    assert out.losses.item() == pytest.approx(math.log(2), rel=1e-6)
    assert torch.allclose(run("odpo", strengths=torch.tensor([0.0])).losses, run("sigmoid").losses)
    with pytest.raises(ValueError):
        run("odpo")


def test_chosen_nll_is_per_token():
    """−(−1) / 4 tokens = 0.25."""
    policy, _ = fixed()
    assert chosen_nll(policy).item() == pytest.approx(0.25)


def test_policy_equal_reference_gives_ln2_and_zero_margin():
    policy, _ = fixed()
    out = LOSSES["sigmoid"].fn(policy, policy, beta=0.1)
    assert out.losses.item() == pytest.approx(math.log(2))
    assert (out.chosen_rewards - out.rejected_rewards).item() == 0.0


def test_gradient_of_sigmoid_matches_closed_form():
    """d/dh of −log σ(βh) = −β σ(−βh) = −0.5 · σ(−1) = −0.1344707 on the chosen policy log-prob."""
    policy, reference = fixed()
    policy.chosen.requires_grad_(True)
    LOSSES["sigmoid"].fn(policy, reference, beta=BETA).losses.sum().backward()
    assert policy.chosen.grad.item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-6)


# --- reference-free losses and combinations, on two pairs ---------------------------------------------------------

def two_pairs():
    """pair 1: chosen −4 over 2 tokens (ℓ = −2), rejected −9 over 3 (ℓ = −3); pair 2: chosen −6 over 3 (ℓ = −2),
    rejected −2 over 1 (ℓ = −2): a pair the policy already prefers, and a tie in ℓ."""
    return PairLogps(torch.tensor([-4.0, -6.0], requires_grad=True), torch.tensor([-9.0, -2.0], requires_grad=True),
                     torch.tensor([2, 3]), torch.tensor([3, 1]))


def test_simpo_hand_values_and_no_reference():
    """β = 2, γ = 1. Pair 1: h = β(ℓ_w − ℓ_l) − γ = 2·1 − 1 = 1, loss = log(1 + e^{−1}) = 0.3132617.
    Pair 2: h = 2·0 − 1 = −1, loss = log(1 + e^{1}) = 1.3132617. Rewards β·ℓ: (−4, −6) and (−4, −4)."""
    out = LOSSES["simpo"].fn(two_pairs(), None, beta=2.0, gamma=1.0)
    assert out.losses.tolist() == pytest.approx([0.3132617, 1.3132617], abs=1e-6)
    assert out.chosen_rewards.tolist() == [-4.0, -4.0] and out.rejected_rewards.tolist() == [-6.0, -4.0]
    assert LOSSES["simpo"].reference_free and LOSSES["orpo"].reference_free and not LOSSES["sigmoid"].reference_free


def test_simpo_label_smoothing():
    """ε = 0.25 on pair 1 (h = 1): 0.75·log(1 + e^{−1}) + 0.25·log(1 + e^{1}) = 0.2349463 + 0.3283154 = 0.5632617."""
    out = LOSSES["simpo"].fn(two_pairs(), None, beta=2.0, gamma=1.0, label_smoothing=0.25)
    assert out.losses[0].item() == pytest.approx(0.5632617, abs=1e-6)


def test_orpo_hand_values():
    """λ = 0.5. log odds(y) = ℓ − log(1 − e^ℓ).
    Pair 1: log(1 − e^{−2}) = −0.1454135, log(1 − e^{−3}) = −0.0510692, so the log odds ratio is
    (−2 − (−3)) − (−0.1454135 − (−0.0510692)) = 1.0943443; L_OR = −log σ(1.0943443) = 0.2887508;
    L_SFT = −ℓ_w = 2; loss = 2 + 0.5 · 0.2887508 = 2.1443754.
    Pair 2: equal ℓ, log odds ratio 0, L_OR = ln 2; loss = 2 + 0.5 · ln 2 = 2.3465736."""
    out = LOSSES["orpo"].fn(two_pairs(), None, beta=0.1, orpo_lambda=0.5)
    assert out.losses.tolist() == pytest.approx([2.1443754, 2.3465736], abs=1e-6)
    assert out.extras["log_odds_chosen"].tolist() == pytest.approx([1.0943443, 0.0], abs=1e-6)
    assert out.extras["log_odds_ratio"].tolist() == pytest.approx([-0.2887508, -math.log(2)], abs=1e-6)
    assert out.chosen_rewards.tolist() == [-1.0, -1.0]  # λ·ℓ_w


def test_log1mexp_is_stable_on_both_branches():
    from dpokit.losses import log1mexp

    x = torch.tensor([-1e-8, -0.5, -0.7, -2.0, -40.0], dtype=torch.float64)
    want = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(want, rel=1e-12)


def test_combination_weights_each_term():
    """--loss sigmoid,sft --loss-weights 1,0.5 on the one fixed pair: log(1 + e^{−1}) + 0.5 · (1/4) = 0.4382617
    (the sft term is −log π(chosen)/tokens = 1/4); rewards are sigmoid's."""
    from types import SimpleNamespace

    from dpokit.train.objectives import combined_loss

    policy, reference = fixed()
    config = SimpleNamespace(loss="sigmoid,sft", loss_weights="1,0.5", beta=BETA, label_smoothing=0.0)
    out = combined_loss(policy, reference, None, config)
    assert out.losses.item() == pytest.approx(0.3132617 + 0.125, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == pytest.approx(-0.5)
    config = SimpleNamespace(loss="orpo,sigmoid", loss_weights=None, beta=BETA, label_smoothing=0.0, orpo_lambda=0.1)
    out = combined_loss(policy, reference, None, config)
    orpo = LOSSES["orpo"].fn(policy, None, beta=BETA, orpo_lambda=0.1)
    assert out.losses.item() == pytest.approx(orpo.losses.item() + 0.3132617, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(orpo.chosen_rewards.item())  # the first term's rewards
    assert set(out.extras) == {"log_odds_ratio", "log_odds_chosen"}


@pytest.mark.parametrize("loss,weights,message", [
    ("sigmoid,nope", None, "unknown loss 'nope'"),
    ("sigmoid,sigmoid", None, "names a loss twice"),
    ("sigmoid,sft", "1", "has 1 weights for 2 losses"),
    ("sigmoid", "1,0.5", "has 2 weights for 1 losses"),
    ("sigmoid,sft", "1,-1", "positive finite"),
    ("sigmoid,sft", "1,x", "must be a number"),
    ("sft", None, "no preference term"),
])
def test_bad_combinations_are_config_errors(loss, weights, message):
    from dpokit.config import DPOConfig
    from dpokit.errors import UserError

    with pytest.raises(UserError, match=message):
        DPOConfig(loss=loss, loss_weights=weights)


def test_settings_for_losses_not_named_are_refused():
    from dpokit.config import DPOConfig, build_config
    from dpokit.errors import UserError

    for key, value, loss in (("gamma", 1.0, "simpo"), ("orpo_lambda", 0.2, "orpo"), ("odpo_alpha", 2.0, "odpo")):
        with pytest.raises(UserError, match=f"{key}: only the {loss} loss uses it"):
            DPOConfig(loss="sigmoid", **{key: value})
        assert getattr(DPOConfig(loss=f"sigmoid,{loss}", **{key: value}), key) == value
    with pytest.raises(UserError, match="needs no reference model; drop --ref"):
        DPOConfig(loss="simpo", ref="some/model")
    with pytest.raises(UserError, match="sft term is already in --loss"):
        DPOConfig(loss="sigmoid,sft", sft_weight=0.5)
    from_yaml = build_config(DPOConfig, {"loss": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]})
    assert (from_yaml.loss, from_yaml.loss_weights) == ("sigmoid,sft", "1.0,0.5")


def test_kto_hand_values():
    """Two examples, β = 0.5, λ_D = 1, λ_U = 2; labels desirable, undesirable.
    answers: policy (−2, −5), reference (−3, −4) → r = (1, −1).
    mismatched answers: policy (−4, −3), reference (−5, −3.5) → (1, 0.5), so z₀ = max(0, 0.75) = 0.75.
    desirable:   1 · (1 − σ(0.5 · (1 − 0.75)))    = 1 − σ(0.125) = 0.4687906
    undesirable: 2 · (1 − σ(0.5 · (0.75 − (−1)))) = 2 · (1 − σ(0.875)) = 0.5884299
    Each is compared with the reference point: rewards (β r, β z₀) = (0.5, 0.375) for the desirable one and
    (β z₀, β r) = (0.375, −0.5) for the undesirable one, so both are on the right side of z₀."""
    policy = PairLogps(torch.tensor([-2.0, -5.0]), torch.tensor([-4.0, -3.0]), torch.tensor([3, 3]),
                       torch.tensor([3, 3]))
    reference = PairLogps(torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -3.5]), torch.tensor([3, 3]),
                          torch.tensor([3, 3]))
    out = LOSSES["kto"].fn(policy, reference, beta=0.5, labels=torch.tensor([True, False]), desirable_weight=1.0,
                           undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx([0.4687906, 0.5884299], abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.375])
    assert out.rejected_rewards.tolist() == pytest.approx([0.375, -0.5])
    assert out.extras["kl"].tolist() == pytest.approx([0.75, 0.75])


def test_kto_reference_point_is_clamped_at_zero_and_carries_no_gradient():
    """Mismatched answers more likely under the reference (mean −1) → z₀ = 0: loss 1 − σ(β r) with r = 1, β = 0.5
    = 1 − σ(0.5) = 0.3775407."""
    chosen = torch.tensor([-2.0], requires_grad=True)
    mismatched = torch.tensor([-6.0], requires_grad=True)
    policy = PairLogps(chosen, mismatched, torch.tensor([3]), torch.tensor([3]))
    reference = PairLogps(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([3]), torch.tensor([3]))
    out = LOSSES["kto"].fn(policy, reference, beta=0.5, labels=torch.tensor([True]))
    assert out.losses.item() == pytest.approx(0.3775407, abs=1e-6) and out.extras["kl"].item() == 0.0
    out.losses.sum().backward()
    assert mismatched.grad is None or mismatched.grad.abs().sum() == 0
    assert chosen.grad.abs().sum() > 0


def test_kto_combines_with_no_pair_loss():
    from dpokit.config import DPOConfig
    from dpokit.errors import UserError

    with pytest.raises(UserError, match="mixes data shapes"):
        DPOConfig(loss="kto,sigmoid")
    with pytest.raises(UserError, match="desirable_weight: only the kto loss uses it"):
        DPOConfig(loss="sigmoid", desirable_weight=2.0)
