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
    out = run("odpo", margins=torch.tensor([math.e - 1]))
    assert out.losses.item() == pytest.approx(math.log(2), rel=1e-6)
    assert torch.allclose(run("odpo", margins=torch.tensor([0.0])).losses, run("sigmoid").losses)
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
