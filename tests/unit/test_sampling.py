import statistics

import torch

from dpokit.train.source import pair_order


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


def test_pairs_reached_equals_the_union_of_every_steps_pairs():
    from types import SimpleNamespace

    from dpokit.train.objectives import DPOObjective
    from dpokit.train.source import ShuffledSource
    from dpokit.types import TokenizedPair

    pairs = [TokenizedPair((1,) * (i % 7 + 1), (2,) * (i % 5 + 1), (3,), f"p{i}") for i in range(50)]
    for steps, grouped in ((3, False), (3, True), (7, True), (20, False)):
        config = SimpleNamespace(max_steps=steps, epochs=1.0, batch_size=6, seed=4, group_by_length=grouped)
        lengths = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs] if grouped else None
        union = sorted({i for s in range(steps) for i in pair_order(50, s, 6, 4, lengths)})
        source = ShuffledSource.for_run(pairs, config, DPOObjective.length)
        assert source.reached(steps) == union
        assert [i for s in range(steps) for i in source.indices(s)] == [i for s in range(steps)
                                                                     for i in pair_order(50, s, 6, 4, lengths)]
        assert len(union) == min(50, steps * 6)
