"""One LoadReport for every loader of pairs and SFT examples: the same fields and the same dropped-row counts."""
import json

from dpokit.data.sft import load_coh_examples, load_sft_examples
from dpokit.data.validate import LoadReport, load_pairs


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_an_sft_load_reports_its_examples_and_dropped_rows_as_a_pair_load_does(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "a", "completion": " "},       # line 1: empty_completion
        {"prompt": "a", "completion": 3},         # line 2: invalid
        {"prompt": "b", "completion": "yes"},     # line 3: kept
    ])
    report = load_sft_examples(path, skip_invalid=True)
    assert isinstance(report, LoadReport) and report.pairs == []
    assert [e.answer for e in report.examples] == ["yes"] and report.num_rows == 3
    assert list(report.dropped_counts().items()) == [("invalid", 1), ("empty_completion", 1)]  # KINDS order


def test_a_chain_of_hindsight_load_keeps_the_pairs_it_read(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": " x", "rejected": " y"},
                                                  {"prompt": "Q", "chosen": " x", "rejected": " x"}])
    report = load_coh_examples(path, "Good:", "Bad:", skip_invalid=True)
    pairs = load_pairs(path, skip_invalid=True)
    assert report.pairs == pairs.pairs and report.problems == pairs.problems and report.shape == "standard"
    assert [e.answer for e in report.examples] == ["Good: x\nBad: y", "Bad: y\nGood: x"]
    assert report.dropped_counts() == {"identical": 1}
