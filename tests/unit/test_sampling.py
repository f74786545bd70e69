import statistics

import torch

from dpokit.train.loop import pair_order


def test_order_is_a_permutation_per_epoch_and_depends_only_on_step():
    n, b = 10, 4
    first_epoch = [i for step in range(2) for i in pair_order(n, step, b, seed=1)] + pair_order(n, 2, b, seed=1)[:2]
    assert sorted(first_epoch) == list(range(n))
    assert pair_order(n, 7, b, seed=1) == pair_order(n, 7, b, seed=1)
    assert pair_order(n, 7, b, seed=1) != pair_order(n, 7, b, seed=2)


def test_group_by_length_reduces_within_batch_spread():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (640,), generator=g).tolist()
    b = 8

    def spread(grouped):
        out = []
        for step in range(80):
            idx = pair_order(640, step, b, seed=0, lengths=lengths if grouped else None)
            out.append(max(lengths[i] for i in idx) - min(lengths[i] for i in idx))
        return statistics.mean(out)

    grouped = [i for step in range(80) for i in pair_order(640, step, b, seed=0, lengths=lengths)]
    assert sorted(grouped) == list(range(640))  # still every pair once per epoch
    assert spread(True) < 0.25 * spread(False)
