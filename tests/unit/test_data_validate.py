"""load_pairs / format_report: row problems are found, named and either raised or dropped; the real
data files in shared/data load with the shapes and counts their README states."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.data.validate import LoadReport, Problem, format_report, load_pairs, percentile
from dpokit.errors import DataError
from dpokit.types import PreferencePair

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(prompt="p", chosen="good", rejected="bad", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Bye"}

MESSY = [
    row("q1"),                             # line 1: kept
    row("q2", chosen="   \n"),             # line 2: empty_completion (chosen)
    row("q3", rejected=""),                # line 3: empty_completion (rejected)
    row("q4", chosen="same", rejected="same"),  # line 4: identical
    row("q1"),                             # line 5: duplicate of line 1
    row("q6", chosen=7),                   # line 6: invalid
    HH,                                    # line 7: shape
    row("q8", margin=0.5),                 # line 8: kept
]


def test_clean_file(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [row("q1", margin=1), row("q2")])
    report = load_pairs(path)
    assert report == LoadReport(
        str(path), "standard",
        [PreferencePair("q1", "good", "bad", "pairs.jsonl:1", 1.0), PreferencePair("q2", "good", "bad", "pairs.jsonl:2")],
        2, [],
    )
    assert report.dropped_counts() == {}


def test_skip_invalid_drops_and_lists_each_problem(tmp_path):
    report = load_pairs(write_jsonl(tmp_path / "messy.jsonl", MESSY), skip_invalid=True)
    assert report.shape == "standard"
    assert report.num_rows == 8
    assert [p.origin for p in report.pairs] == ["messy.jsonl:1", "messy.jsonl:8"]
    assert report.pairs[1].strength == 0.5
    assert report.problems == [
        Problem("messy.jsonl:2", "chosen", "'chosen' completion is empty", "empty_completion"),
        Problem("messy.jsonl:3", "rejected", "'rejected' completion is empty", "empty_completion"),
        Problem("messy.jsonl:4", "rejected", "chosen and rejected completions are identical", "identical"),
        Problem("messy.jsonl:5", None, "duplicate of messy.jsonl:1 (same prompt, chosen and rejected)", "duplicate"),
        Problem("messy.jsonl:6", "chosen", "field 'chosen' must be a string, got int", "invalid"),
        Problem("messy.jsonl:7", None, "row shape 'hh_rlhf' differs from the file's shape 'standard'", "shape"),
    ]
    assert report.dropped_counts() == {"invalid": 1, "shape": 1, "empty_completion": 2, "identical": 1, "duplicate": 1}


def test_problems_raise_one_line_naming_the_first(tmp_path):
    path = write_jsonl(tmp_path / "messy.jsonl", MESSY)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == (
        "messy.jsonl:2: 'chosen' completion is empty (and 5 more problems; "
        f"run `dpokit validate {path}` to list them, or pass --skip-invalid to drop these rows)"
    )


def test_a_single_problem_says_how_to_drop_it(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [row("q1"), row("q2", chosen=None)])
    with pytest.raises(DataError, match=r"^pairs.jsonl:2: field 'chosen' must be a string, got null "
                                        r"\(pass --skip-invalid to drop this row\)$"):
        load_pairs(path)


def test_first_valid_row_sets_the_files_shape(tmp_path):
    # Row 1 is a broken standard row; row 2 (hh_rlhf) is the first valid one, so row 3 is off-shape.
    path = write_jsonl(tmp_path / "pairs.jsonl", [row(chosen=1), HH, row("q3")])
    report = load_pairs(path, skip_invalid=True)
    assert report.shape == "hh_rlhf"
    assert [p.kind for p in report.problems] == ["invalid", "shape"]
    assert report.pairs[0].prompt == "\n\nHuman: Hi\n\nAssistant:"


def test_duplicate_of_conversational_pair(tmp_path):
    conv = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    report = load_pairs(write_jsonl(tmp_path / "chat.jsonl", [conv, conv]), skip_invalid=True)
    assert report.shape == "conversational"
    assert [(p.origin, p.kind) for p in report.problems] == [("chat.jsonl:2", "duplicate")]


def test_same_answers_to_different_prompts_are_not_duplicates(tmp_path):
    report = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", [row("q1"), row("q2")]))
    assert len(report.pairs) == 2


def test_no_valid_pair_left_raises_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [row(chosen=""), row(chosen="x", rejected="x")])
    with pytest.raises(DataError) as info:
        load_pairs(path, skip_invalid=True)
    assert str(info.value) == (
        f"{path}: no valid preference pairs in 2 rows; first problem: pairs.jsonl:1: 'chosen' completion is empty"
    )


def test_file_level_errors_raise_even_when_skipping(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row()) + "\n{broken\n")
    with pytest.raises(DataError, match=r"^pairs.jsonl:2: invalid JSON"):
        load_pairs(path, skip_invalid=True)


# --- format_report -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert [percentile([1, 2, 3, 4], q) for q in (50, 90)] == [2, 4]
    assert percentile([7], 50) == 7
    assert percentile([], 50) is None


def test_format_report_lists_counts_problems_and_token_lengths(tmp_path):
    report = load_pairs(write_jsonl(tmp_path / "messy.jsonl", MESSY), skip_invalid=True)
    stats = {"prompt": list(range(100, 0, -1)), "chosen": [5, 1, 3], "rejected": []}
    text = format_report(report, stats)
    lines = text.splitlines()
    assert f"file:        {tmp_path / 'messy.jsonl'}" in lines
    assert "shape:       standard" in lines
    assert "rows:        8" in lines
    assert "valid pairs: 2" in lines
    assert "dropped:     6 (invalid 1, shape 1, empty_completion 2, identical 1, duplicate 1)" in lines
    assert "problems (first 6 of 6):" in lines
    assert "  [duplicate] messy.jsonl:5: duplicate of messy.jsonl:1 (same prompt, chosen and rejected)" in lines
    assert lines[-4].split() == ["tokens", "p50", "p90", "p99", "max"]
    assert lines[-3].split() == ["prompt", "50", "90", "99", "100"]  # the input need not be sorted
    assert lines[-2].split() == ["chosen", "3", "5", "5", "5"]
    assert lines[-1].split() == ["rejected", "-", "-", "-", "-"]


def test_format_report_shows_at_most_ten_problems_and_no_tokens_by_default(tmp_path):
    rows = [row("kept")] + [row(f"q{i}", chosen="") for i in range(12)]
    text = format_report(load_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows), skip_invalid=True))
    assert "problems (first 10 of 12):" in text
    assert text.count("[empty_completion]") == 10
    assert "pairs.jsonl:11:" in text and "pairs.jsonl:12:" not in text
    assert "p50" not in text


# --- the real files in shared/data ---------------------------------------------------------------


def real_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_real_hh_rlhf_harmless_base():
    path = real_file("hh-rlhf-harmless-base/test.jsonl.gz")
    report = load_pairs(path, skip_invalid=True)
    assert (report.shape, report.num_rows) == ("hh_rlhf", 2312)
    # Four rows end with "Assistant: " and an empty chosen answer; nothing else is dropped.
    assert [(p.origin, p.kind, p.field) for p in report.problems] == [
        (f"test.jsonl.gz:{n}", "empty_completion", "chosen") for n in (87, 517, 926, 1104)
    ]
    assert len(report.pairs) == 2308
    first = report.pairs[0]
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert first.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first.chosen.startswith(" No, sorry!  All of these involve a pen")
    assert first.rejected.startswith(" There are lots of funny things you can do with pens")
    # Line 1255 is one of the 5 rows whose histories differ: it is kept, with chosen's history as prompt.
    row_1255 = next(p for p in report.pairs if p.origin == "test.jsonl.gz:1255")
    assert row_1255.prompt.endswith("if they don't perform stereotypical women?\n\nAssistant:")
    assert row_1255.rejected.startswith(" A drag king is the opposite of a drag queen")
    with pytest.raises(DataError, match=r"^test.jsonl.gz:87: 'chosen' completion is empty \(and 3 more problems"):
        load_pairs(path)


def test_real_llamafactory_sharegpt_demo():
    report = load_pairs(real_file("llamafactory-demo/dpo_en_demo.json.gz"), skip_invalid=True)
    assert (report.shape, report.num_rows) == ("sharegpt", 300)
    assert [(p.origin, p.message) for p in report.problems][0] == (
        "dpo_en_demo.json.gz[157]", "duplicate of dpo_en_demo.json.gz[13] (same prompt, chosen and rejected)"
    )
    assert report.dropped_counts() == {"duplicate": 5}
    assert sum(p.prompt[0]["role"] == "system" for p in report.pairs) == 80
    assert max(len(p.prompt) for p in report.pairs) == 13
    assert report.pairs[0].prompt == ({"role": "user", "content": "Hi! I'd like to create a new language game "
                                       "simulating the first person perspective of a character named Angela."},)
    assert report.pairs[0].chosen.startswith("That sounds like a fun and engaging idea!")


def test_real_ultrafeedback_subset():
    path = real_file("ultrafeedback-binarized-subset/train_clean.jsonl.gz")
    with pytest.raises(DataError, match=r"^train_clean.jsonl.gz:307: chosen and rejected completions are identical "
                                        r"\(and 5 more problems"):
        load_pairs(path)
    report = load_pairs(path, skip_invalid=True)
    assert (report.shape, report.num_rows) == ("standard", 1000)
    identical = [p.origin for p in report.problems if p.kind == "identical"]
    assert identical == [f"train_clean.jsonl.gz:{n}" for n in (307, 656, 911, 998)]
    # Two rows also have an empty answer (rejected on line 479, chosen on line 834).
    assert report.dropped_counts() == {"empty_completion": 2, "identical": 4}
    assert len(report.pairs) == 994
    first = report.pairs[0]
    assert (first.prompt, first.strength) == ("how to cook t-bone in the oven", 1.0)  # metadata scores 9.0 - 8.0
    assert all(p.strength is not None and p.strength >= 0 for p in report.pairs)
    assert sum(p.strength == 0 for p in report.pairs) == 110  # README: 111 ties; line 307 (8.0 vs 8.0) is dropped
