"""Column mappings: each form reads the exact value expected, and each misfit is one error naming the mapped path."""
from __future__ import annotations

import pytest

from dpokit.config import DPOConfig, SFTConfig, build_config
from dpokit.data.adapters import RowError
from dpokit.data.columns import parse_columns, parse_path
from dpokit.data.validate import load_pairs
from dpokit.errors import DataError, UserError
from dpokit.types import PreferencePair

ORIGIN = "rows.jsonl:3"


def mapped(spec: str, row: dict) -> dict:
    return parse_columns(spec).map_row(row, ORIGIN)


def row_error(spec: str, row: dict) -> RowError:
    with pytest.raises(RowError) as info:
        mapped(spec, row)
    assert str(info.value).startswith(ORIGIN + ": mapped field ")
    return info.value


def test_rename():
    row = {"question": "2+2?", "good": "4", "bad": "5"}
    assert mapped("prompt=question,chosen=good,rejected=bad", row) == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def test_nested_path_and_indices_negative_too():
    row = {"q": {"text": "Hi"}, "answers": [{"text": "Hello"}, {"text": "meh"}, {"text": "Go away"}]}
    out = mapped("prompt=q.text,chosen=answers[0].text,rejected=answers[-1].text", row)
    assert out == {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}


def test_joined_prompt_blank_line_and_empty_parts_skipped():
    spec = "prompt=instruction+input,completion=output"
    full = mapped(spec, {"instruction": "Translate.", "input": "Hallo", "output": "Hello"})
    assert full == {"prompt": "Translate.\n\nHallo", "completion": "Hello"}
    assert mapped(spec, {"instruction": "Say hi.", "input": "", "output": "hi"})["prompt"] == "Say hi."
    assert mapped(spec, {"instruction": "Say hi.", "input": None, "output": "hi"})["prompt"] == "Say hi."


def test_every_item_of_a_list():
    row = {"instruction": "p", "completions": [{"response": "a", "overall_score": 7}, {"response": "b",
                                                                                    "overall_score": 2}]}
    out = mapped("prompt=instruction,responses=completions[*].response,scores=completions[*].overall_score", row)
    assert out == {"prompt": "p", "responses": ["a", "b"], "scores": [7, 2]}


def test_system_field_makes_a_conversation():
    row = {"sys": "Be brief.", "question": "Hi", "chosen": "Hello", "rejected": "Go away"}
    report_row = mapped("prompt=question,system=sys", row)
    assert report_row == {"prompt": "Hi", "system": "Be brief.", "chosen": "Hello", "rejected": "Go away"}
    from dpokit.data.adapters import detect_shape, to_pair

    pair = to_pair(report_row, detect_shape(report_row, ORIGIN), ORIGIN)
    assert pair.prompt == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert (pair.chosen, pair.rejected) == ("Hello", "Go away")


def test_system_field_before_chat_messages_and_refused_twice():
    from dpokit.data.adapters import detect_shape, to_pair

    row = {"system": "Be brief.", "prompt": [{"role": "user", "content": "Hi"}],
           "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "No"}]}
    pair = to_pair(row, detect_shape(row, ORIGIN), ORIGIN)
    assert pair.prompt == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    row["prompt"] = [{"role": "system", "content": "Other."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(RowError, match="already starts with a system message"):
        to_pair(row, detect_shape(row, ORIGIN), ORIGIN)


def test_native_fields_pass_through_unless_the_mapping_reads_them():
    row = {"question": "q", "chosen": "c", "rejected": "r", "prompt": "not this one", "extra": 1}
    assert mapped("prompt=question", row) == {"prompt": "q", "chosen": "c", "rejected": "r"}
    # `answers` was read by the mapping; `chosen` given natively too would be replaced by the mapped one
    row = {"q": "q", "answers": ["a", "b"], "chosen": "stale"}
    assert mapped("prompt=q,chosen=answers[0],rejected=answers[1]", row)["chosen"] == "a"


@pytest.mark.parametrize("spec,row,message", [
    ("prompt=question,chosen=a,rejected=b", {"chosen": "x"},
     "rows.jsonl:3: mapped field 'question' (for prompt): the row has no field 'question'"),
    ("prompt=q,chosen=answers[2],rejected=answers[0]", {"q": "?", "answers": ["x", "y"]},
     "rows.jsonl:3: mapped field 'answers[2]' (for chosen): 'answers' has 2 items, so [2] does not exist"),
    ("prompt=q,chosen=answers[-3],rejected=answers[0]", {"q": "?", "answers": ["x", "y"]},
     "rows.jsonl:3: mapped field 'answers[-3]' (for chosen): 'answers' has 2 items, so [-3] does not exist"),
    ("prompt=meta.q", {"meta": "text"},
     "rows.jsonl:3: mapped field 'meta.q' (for prompt): 'meta' must be an object to take 'q', got str 'text'"),
    ("prompt=q[0]", {"q": "text"},
     "rows.jsonl:3: mapped field 'q[0]' (for prompt): 'q' must be a list to take [0], got str 'text'"),
    ("responses=c[*].response", {"c": [{"response": "a"}, {"text": "b"}]},
     "rows.jsonl:3: mapped field 'c[*].response' (for responses): 'c[1]' has no field 'response'"),
    ("prompt=instruction+input", {"instruction": "x", "input": 3},
     "rows.jsonl:3: mapped field 'input' (for prompt) must be a string to be joined, got int"),
])
def test_a_path_that_does_not_fit_names_file_line_and_path(spec, row, message):
    assert str(row_error(spec, row)) == message


@pytest.mark.parametrize("spec,message", [
    ("prompt", "'prompt' is not TARGET=PATH"),
    ("prompt=", "'prompt=' is not TARGET=PATH"),
    ("question=q", "unknown target 'question'"),
    ("prompt=a,prompt=b", "target 'prompt' is mapped twice"),
    ("prompt=a[x]", "cannot read '[x]'"),
    ("prompt=a..b", "has an empty field name"),
    ("responses=a[*].b[*]", "more than one [*]"),
    ("prompt=a[*]+b", "cannot be joined"),
])
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("*", r"\*")):
        parse_columns(spec)


def test_path_steps_and_spec_round_trip():
    assert parse_path("a.b[0][-1]").steps == ("a", "b", 0, -1)
    assert parse_path("x[*].y").steps == ("x", "*", "y")
    columns = parse_columns("prompt=instruction+input,chosen=answers[0],rejected=answers[-1]")
    assert parse_columns(columns.spec) == columns


def test_yaml_mapping_and_flag_string_give_the_same_config():
    from_yaml = build_config(DPOConfig, {"columns": {"prompt": "question", "chosen": "answers[0]",
                                                     "rejected": "answers[1]"}, "pairs": "all-pairs"})
    from_flag = build_config(DPOConfig, {"columns": "prompt=question,chosen=answers[0],rejected=answers[1]",
                                         "pairs": "all-pairs"})
    assert from_yaml == from_flag
    with pytest.raises(UserError, match="unknown target 'question'"):
        build_config(SFTConfig, {"columns": {"question": "q"}})
    with pytest.raises(UserError, match="pairs: unknown policy 'best'"):
        build_config(DPOConfig, {"pairs": "best"})


def test_load_pairs_with_a_mapping_stops_on_a_missing_field_naming_line_and_path(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "a?", "answers": ["x", "y"]}\n{"question": "b?", "answers": ["x"]}\n')
    columns = parse_columns("prompt=question,chosen=answers[0],rejected=answers[1]")
    with pytest.raises(DataError) as info:
        load_pairs(path, columns=columns)
    assert str(info.value).startswith("rows.jsonl:2: mapped field 'answers[1]' (for rejected): 'answers' has 1 item,")
    report = load_pairs(path, columns=columns, skip_invalid=True)
    assert report.pairs == [PreferencePair("a?", "x", "y", "rows.jsonl:1")]
    assert report.dropped_counts() == {"invalid": 1} and report.first_mapped == {"prompt": "a?", "chosen": "x",
                                                                                 "rejected": "y"}
