"""Ranked and scored lists → pairs: each policy makes exactly the pairs worked out by hand, ties and identical answers
are dropped and counted, and each malformed list is one error naming the line and the field."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpokit.data.adapters import RowError, detect_shape
from dpokit.data.lists import best_answer, list_pairs
from dpokit.data.validate import list_summary, load_pairs
from dpokit.errors import DataError

ORIGIN = "uf.jsonl:7"
# scores a=7, b=9, c=2, d=7: b is best, c is worst, a and d tie
ROW = {"prompt": "Say hi", "responses": ["a", "b", "c", "d"], "scores": [7, 9, 2, 7]}


def made(row: dict, policy: str):
    out = list_pairs(row, ORIGIN, policy)
    return [(p.chosen, p.rejected, p.strength) for p in out.pairs], dict(out.dropped)


def test_best_vs_worst():
    assert made(ROW, "best-vs-worst") == ([("b", "c", 7.0)], {})


def test_best_vs_each():
    assert made(ROW, "best-vs-each") == ([("b", "a", 2.0), ("b", "c", 7.0), ("b", "d", 2.0)], {})


def test_all_pairs_drops_the_tie():
    # (a,b) b wins; (a,c) a; (a,d) tie; (b,c) b; (b,d) b; (c,d) d
    pairs, dropped = made(ROW, "all-pairs")
    assert pairs == [("b", "a", 2.0), ("a", "c", 5.0), ("b", "c", 7.0), ("b", "d", 2.0), ("d", "c", 5.0)]
    assert dropped == {"tie": 1}


def test_origin_names_the_two_answers():
    out = list_pairs(ROW, ORIGIN, "best-vs-worst")
    assert out.pairs[0].origin == "uf.jsonl:7 (responses[1] over responses[2])"
    assert out.pairs[0].prompt == "Say hi"


def test_all_tied_makes_no_pair_and_counts_one_tie_per_candidate():
    row = {"prompt": "p", "responses": ["x", "y", "z"], "scores": [5, 5, 5]}
    assert made(row, "best-vs-worst") == ([], {"tie": 1})
    assert made(row, "best-vs-each") == ([], {"tie": 2})
    assert made(row, "all-pairs") == ([], {"tie": 3})


def test_identical_texts_and_repeated_answers_are_dropped_never_paired():
    row = {"prompt": "p", "responses": ["same", "same", "other"], "scores": [3, 1, 1]}
    pairs, dropped = made(row, "all-pairs")
    # (0,1) identical text; (0,2) same over other; (1,2) tie
    assert pairs == [("same", "other", 2.0)] and dropped == {"identical": 1, "tie": 1}
    row = {"prompt": "p", "responses": ["good", "bad", "bad"], "scores": [3, 1, 2]}
    pairs, dropped = made(row, "best-vs-each")  # good over bad twice: the second copy is a duplicate
    assert pairs == [("good", "bad", 2.0)] and dropped == {"duplicate": 1}
    for policy in ("best-vs-worst", "best-vs-each", "all-pairs"):
        assert all(c != r for c, r, _ in made(row, policy)[0])


def test_ranks_lower_is_better_and_carry_no_margin():
    row = {"prompt": "p", "responses": ["x", "y", "z"], "ranks": [2, 1, 3]}
    assert made(row, "best-vs-worst") == ([("y", "z", None)], {})
    assert made(row, "all-pairs")[0] == [("y", "x", None), ("x", "z", None), ("y", "z", None)]


def test_preferred_first_list():
    row = {"prompt": "p", "responses": ["best", "middle", "worst"]}
    assert made(row, "best-vs-worst") == ([("best", "worst", None)], {})
    assert made(row, "best-vs-each")[0] == [("best", "middle", None), ("best", "worst", None)]


def test_ultrafeedback_completions_and_chat_prompt():
    row = {"instruction": "Say hi", "completions": [
        {"model": "m1", "response": "hi", "overall_score": 7.5},
        {"model": "m2", "response": "hello there", "overall_score": 9}]}
    assert detect_shape(row, ORIGIN) == "ranked"
    out = list_pairs(row, ORIGIN)
    assert [(p.prompt, p.chosen, p.rejected, p.strength, p.origin) for p in out.pairs] == [
        ("Say hi", "hello there", "hi", 1.5, "uf.jsonl:7 (completions[1] over completions[0])")]
    chat = {"prompt": [{"role": "user", "content": "Hi"}],
            "responses": [{"role": "assistant", "content": "Hello"}, "Go away"], "scores": [1, 0]}
    pair = list_pairs(chat, ORIGIN).pairs[0]
    assert pair.prompt == ({"role": "user", "content": "Hi"},) and (pair.chosen, pair.rejected) == ("Hello", "Go away")


def test_best_answer_for_sft_is_the_first_of_the_best():
    assert best_answer({"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 4, 4]}, ORIGIN) == ("p", "b")


@pytest.mark.parametrize("row,field,message", [
    ({"prompt": "p", "responses": ["only"]}, "responses",
     "field 'responses' has 1 answer; a ranked list needs at least 2 to make a pair"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, "high"]}, "scores[1]",
     "field 'scores[1]' must be a finite number, got str 'high'"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, True]}, "scores[1]",
     "field 'scores[1]' must be a finite number, got bool True"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 2]}, "ranks",
     "rank 2 appears twice in 'ranks' (items 1 and 2); ranks must be distinct (give scores instead to express a tie)"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "scores",
     "field 'scores' has 1 values for 2 responses; give one per response"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 2], "ranks": [1, 2]}, "ranks",
     "give 'scores' or 'ranks' for one list, not both"),
    ({"responses": ["a", "b"]}, "prompt",
     "missing field 'prompt' (a ranked list needs prompt, messages or instruction, and responses or completions)"),
    ({"instruction": "p", "completions": [{"response": "a", "overall_score": 1}]}, "completions",
     "field 'completions' has 1 item; a ranked list needs at least 2 to make a pair"),
    ({"instruction": "p", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]},
     "completions[1]", "field 'completions[1]' has no overall_score, score or rank"),
    ({"prompt": "p", "responses": ["a", 3]}, "responses[1]", "field 'responses[1]' must be a string, got int"),
])
def test_malformed_lists_name_the_field(row, field, message):
    with pytest.raises(RowError) as info:
        list_pairs(row, ORIGIN)
    assert str(info.value) == f"{ORIGIN}: {message}"
    assert info.value.field == field


def write(tmp_path, rows) -> str:
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_pairs_counts_rows_pairs_and_drops(tmp_path):
    rows = [ROW, {"prompt": "q", "responses": ["x", "y"], "scores": [1, 1]},
            {"prompt": "r", "responses": ["x", "y"], "ranks": [2, 1]}]
    report = load_pairs(write(tmp_path, rows), pairs="all-pairs")
    assert report.shape == "ranked" and len(report.pairs) == 5 + 0 + 1 and not report.problems
    assert list_summary(report) == {"policy": "all-pairs", "rows": 3, "pairs": 6, "dropped": {"tie": 2}}


def test_load_pairs_stops_on_a_bad_list_unless_skip_invalid(tmp_path):
    path = write(tmp_path, [ROW, {"prompt": "q", "responses": ["x"]}])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == ("lists.jsonl:2: field 'responses' has 1 answer; a ranked list needs at least 2 to make "
                               "a pair (pass --skip-invalid to drop this row)")
    assert len(load_pairs(path, skip_invalid=True).pairs) == 1


def test_a_file_of_ties_only_is_refused_with_the_counts(tmp_path):
    path = write(tmp_path, [{"prompt": "q", "responses": ["x", "y"], "scores": [1, 1]}])
    with pytest.raises(DataError, match=r"no pairs: the 1 ranked rows made none \(tie 1\)"):
        load_pairs(path)


# ---- sampled lists (dpokit iterate): scored_pairs with a minimum gap, answers that may not win, random pairs ----

def test_scored_pairs_drop_ties_identical_texts_small_gaps_and_truncated_winners():
    from dpokit.data.lists import scored_pairs

    answers, scores = ["a", "b", "c", "b"], [1.0, 3.0, 2.5, 0.0]
    made = scored_pairs("Q", answers, scores, "r", "all-pairs", min_gap=1.0)
    # b(3) over a(1), c(2.5) over a, a over the second b(0) (gap 1.0, just kept), c over b(0); b over c is a gap
    # of 0.5, and b over b the same text
    assert [(p.chosen, p.rejected, p.strength) for p in made.pairs] == [("b", "a", 2.0), ("c", "a", 1.5),
                                                                         ("a", "b", 1.0), ("c", "b", 2.5)]
    assert made.dropped == {"small_gap": 1, "identical": 1}
    # best-vs-worst with the best cut off: the best that may win is chosen; the cut-off answer may still lose
    made = scored_pairs("Q", ["x", "y", "z"], [5.0, 1.0, 3.0], "r", can_win=[False, True, True])
    assert [(p.chosen, p.rejected) for p in made.pairs] == [("z", "y")]
    made = scored_pairs("Q", ["x", "y"], [5.0, 1.0], "r", "all-pairs", can_win=[False, True])
    assert made.pairs == [] and made.dropped == {"truncated": 1}
    assert scored_pairs("Q", ["x", "y"], [2.0, 2.0], "r").dropped == {"tie": 1}


def test_random_pair_is_seeded_by_seed_and_origin():
    from dpokit.data.lists import scored_pairs

    answers, scores = [f"answer {i}" for i in range(8)], [float(i) for i in range(8)]
    draw = lambda seed, origin: [(p.chosen, p.rejected) for p in  # noqa: E731
                                 scored_pairs("Q", answers, scores, origin, "random-pair", seed=seed).pairs]
    assert draw(0, "r") == draw(0, "r") and len(draw(0, "r")) == 1
    assert len({tuple(draw(s, o)) for s in range(4) for o in ("r", "s", "t")}) > 3  # different draws


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", ""]), st.integers(-3, 3), st.booleans()),
                min_size=2, max_size=7),
       st.sampled_from(["best-vs-worst", "best-vs-each", "all-pairs", "random-pair"]),
       st.sampled_from([0.0, 0.5, 2.0]))
def test_no_pair_is_ever_a_tie_a_copy_below_the_gap_or_won_by_a_cut_off_answer(items, policy, min_gap):
    from dpokit.data.lists import scored_pairs

    answers, scores, can_win = [i[0] for i in items], [float(i[1]) for i in items], [i[2] for i in items]
    made = scored_pairs("Q", answers, scores, "r", policy, min_gap=min_gap, can_win=can_win)
    for pair in made.pairs:
        assert pair.chosen != pair.rejected
        assert pair.strength >= min_gap and pair.strength > 0
        assert any(a == pair.chosen and w for a, w in zip(answers, can_win))
    assert len(made.pairs) + sum(made.dropped.values()) >= 1  # every candidate is a pair or a counted drop
