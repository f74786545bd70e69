"""Thumbs-up/down feedback for KTO: labels in every accepted spelling, pairs split in two, the mismatched answers,
and bad rows named by line and field."""
from __future__ import annotations

import json

import pytest

from dpokit.data.feedback import desirable_count, label_of, load_feedback, with_mismatched
from dpokit.data.validate import FeedbackRows, load_pairs
from dpokit.errors import DataError
from dpokit.types import PreferencePair


def write(tmp_path, rows, name="fb.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("raw,want", [(True, True), (False, False), (1, True), (0, False), ("up", True),
                                      ("Down", False), ("true", True), ("0", False), ("thumbs_up", True)])
def test_labels(raw, want):
    assert label_of(raw, "x:1") is want


@pytest.mark.parametrize("raw", [2, "maybe", None, [1], 0.5])
def test_bad_labels_name_the_field(raw):
    with pytest.raises(DataError, match=r"^x:1: field 'label' must be true/false, 1/0 or up/down"):
        label_of(raw, "x:1")


def test_unpaired_rows_and_their_mismatched_answers(tmp_path):
    path = write(tmp_path, [{"prompt": "p1", "completion": "a1", "label": "up"},
                            {"prompt": "p2", "completion": "a2", "label": 0},
                            {"prompt": [{"role": "user", "content": "p3"}], "completion": "a3", "label": True}])
    report = load_feedback(path)
    assert report.shape == "unpaired" and desirable_count(report.examples) == 2 and len(report.examples) == 3
    pairs = with_mismatched(report.examples)
    assert [(p.chosen, p.rejected, p.label) for p in pairs] == [("a1", "a3", True), ("a2", "a1", False),
                                                               ("a3", "a2", True)]
    assert pairs[2].prompt == ({"role": "user", "content": "p3"},) and pairs[0].origin == "fb.jsonl:1"


def test_a_pair_file_gives_one_desirable_and_one_undesirable_example(tmp_path):
    path = write(tmp_path, [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    report = load_feedback(path)
    assert report.shape == "standard"
    assert [(e.completion, e.desirable, e.origin) for e in report.examples] == [
        ("good", True, "fb.jsonl:1 (chosen)"), ("bad", False, "fb.jsonl:1 (rejected)")]


def test_bad_feedback_row_stops_the_load_naming_line_and_field(tmp_path):
    path = write(tmp_path, [{"prompt": "p", "completion": "a", "label": "up"},
                            {"prompt": "p", "completion": "b", "label": "meh"}])
    with pytest.raises(DataError, match=r"^fb.jsonl:2: field 'label' must be true/false"):
        load_feedback(path)
    assert len(load_feedback(path, skip_invalid=True).examples) == 1


def test_feedback_given_to_a_pair_loss_is_one_file_level_error(tmp_path):
    path = write(tmp_path, [{"prompt": "p", "completion": "a", "label": "up"}])
    with pytest.raises(FeedbackRows, match="row shape 'unpaired' .* fits --loss kto"):
        load_pairs(path, skip_invalid=True)
    assert with_mismatched([]) == [] and isinstance(PreferencePair("p", "a", "b", "o", None, True).label, bool)


def test_sft_refuses_thumbs_rows_but_keeps_a_category_label(tmp_path):
    from dpokit.data.sft import load_sft_examples

    thumbs = write(tmp_path, [{"prompt": "p", "completion": "a", "label": "down"}])
    with pytest.raises(DataError, match="thumbs-up/down rows .* train with `dpokit dpo --loss kto`"):
        load_sft_examples(thumbs)
    category = write(tmp_path, [{"prompt": "p", "completion": "a", "label": "math"}], "sft.jsonl")
    assert load_sft_examples(category).examples[0].answer == "a"
