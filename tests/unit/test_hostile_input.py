"""Hostile input for the data loader (issue "Trust"): whatever a file holds, `dpokit validate` exits
0, 1 or 2 and never shows a traceback; 2 comes with ONE line `dpokit: error: ...` naming the file;
and ``load_pairs(skip_invalid=True)`` either raises ``DataError`` or accounts for every row
(kept + dropped == rows read), each dropped row named by file and line (or row).

Properties run over generated files (arbitrary JSON, wrong types, huge strings, BOM, CRLF, invalid
UTF-8, truncated gzip, ragged CSV, mixed shapes, repeated keys); fixed examples cover what is too
rare to generate (10,000 nesting levels, numbers of 5,000 digits) and what is not a file at all.
``EXAMPLES`` counts the generated examples per property (see ``test_examples_ran``).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpokit.cli import main
from dpokit.config import DPOConfig, build_config
from dpokit.data.io import read_records
from dpokit.data.validate import KINDS, load_pairs
from dpokit.errors import DataError, UserError

EXAMPLES: Counter = Counter()  # generated examples run, per property
ORIGIN = re.compile(r"(:\d+|\[\d+\]| row \d+)$")  # pairs.jsonl:3, pairs.json[2], pairs.parquet row 7
ROW = '{"prompt": "p", "chosen": "c", "rejected": "r"'  # a good row, less its closing brace
SEARCH = int(os.environ.get("DPOKIT_FUZZ", "0"))  # e.g. DPOKIT_FUZZ=20: 20x the examples, fresh random ones


def fuzz(n: int):
    """Fixed examples by default (a stable suite); DPOKIT_FUZZ=k searches k times as many, at random."""
    return settings(max_examples=n * max(SEARCH, 1), deadline=None, derandomize=not SEARCH, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


# --- the two properties every file must satisfy ------------------------------------------------------


def check_cli(path: Path, capsys) -> int:
    """`dpokit validate PATH --no-tokens` returns 0/1/2; 2 prints one line naming the file, else no stderr."""
    capsys.readouterr()
    code = main(["validate", str(path), "--no-tokens"])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and err.endswith("\n"), err[:500]
        assert lines[0].startswith("dpokit: error: ") and path.name in lines[0], lines[0][:500]
        assert out == ""
    else:
        assert err == "", err[:500]
        assert (code == 1) == ("problems (first" in out)
    return code


def check_load(path: Path, rows: int | None = None):
    """load_pairs(skip_invalid=True): DataError naming the file, or every row either kept or listed as dropped.
    ``rows``: how many rows the file holds, when the test knows."""
    try:
        report = load_pairs(path, skip_invalid=True)
    except DataError as e:
        message = str(e)
        assert "\n" not in message and path.name in message, message[:500]
        return None
    assert len(report.pairs) + sum(report.dropped_counts().values()) == report.num_rows
    assert len(report.problems) == report.num_rows - len(report.pairs)
    assert rows is None or report.num_rows == rows
    for problem in report.problems:
        assert problem.origin.startswith(path.name) and ORIGIN.search(problem.origin), problem.origin
        assert problem.kind in KINDS and "\n" not in problem.line() and len(problem.line()) < 2000
    for pair in report.pairs:
        check_pair(pair, path.name)
    check_strict(path, report)
    return report


def check_strict(path: Path, lenient) -> None:
    """Without skip_invalid: the same pairs when nothing was dropped, else one DataError line naming the file."""
    try:
        strict = load_pairs(path)
    except DataError as e:
        assert lenient.problems and "\n" not in str(e) and path.name in str(e)
        return
    assert not lenient.problems and strict.pairs == lenient.pairs


def check_pair(pair, name: str) -> None:
    """What every stage after loading may rely on."""
    assert pair.origin.startswith(name) and ORIGIN.search(pair.origin)
    assert isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
    assert pair.chosen.strip() and pair.rejected.strip() and pair.chosen != pair.rejected
    assert isinstance(pair.prompt, (str, tuple))
    messages = () if isinstance(pair.prompt, str) else pair.prompt
    for m in messages:
        assert set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
    prompt_texts = [m["content"] for m in messages] if messages else [pair.prompt]
    for text in [pair.chosen, pair.rejected] + prompt_texts:
        text.encode("utf-8")  # raises on a lone surrogate, which the tokenizer refuses
    assert pair.strength is None or (type(pair.strength) is float and math.isfinite(pair.strength))


def check_both(path: Path, capsys, rows: int | None = None):
    check_cli(path, capsys)
    return check_load(path, rows)


# --- strategies ----------------------------------------------------------------------------------------

SURROGATE = st.characters(categories=["Cs"])
GOOD_TEXT = st.text(max_size=20) | st.text(alphabet='",\r\n\\ \t[]{}:\ufeff\u2028\x00\x85', max_size=10)
TEXT = GOOD_TEXT | st.builds(lambda a, s: a + s, st.text(max_size=5), SURROGATE)  # "\ud800": legal JSON, not text
HUGE = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "🙂", "\n", '"']), st.integers(1 << 20, (1 << 20) + 64))
NUMBERS = st.one_of(st.integers(), st.integers(-(10**400), 10**400), st.floats(), st.sampled_from([1e308, -1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                           max_leaves=12)
WRONG = st.one_of(st.none(), st.booleans(), NUMBERS, st.lists(SCALARS, max_size=3),
                  st.dictionaries(st.text(max_size=5), SCALARS, max_size=3))


@st.composite
def deep_values(draw):
    """A value nested up to 60 levels, alternating lists and objects at random."""
    value = draw(SCALARS)
    for wrap in draw(st.lists(st.sampled_from(["list", "dict"]), max_size=60)):
        value = [value] if wrap == "list" else {draw(st.sampled_from(["prompt", "chosen", "a"])): value}
    return value


def msg(role, content):
    return {"role": role, "content": content}


def shaped(shape: str, p, c, r) -> dict:
    """A well-formed row of ``shape`` with prompt text ``p`` and answers ``c`` / ``r``."""
    return {
        "standard": lambda: {"prompt": p, "chosen": c, "rejected": r},
        "conversational": lambda: {"prompt": [msg("user", p)], "chosen": [msg("assistant", c)],
                                   "rejected": [msg("assistant", r)]},
        "implicit": lambda: {"chosen": [msg("user", p), msg("assistant", c)],
                             "rejected": [msg("user", p), msg("assistant", r)]},
        "hh_rlhf": lambda: {"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}",
                            "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"},
        "sharegpt": lambda: {"conversations": [{"from": "human", "value": p}], "chosen": {"from": "gpt", "value": c},
                             "rejected": {"from": "gpt", "value": r}},
        "openai": lambda: {"input": {"messages": [msg("user", p)]}, "preferred_output": [msg("assistant", c)],
                           "non_preferred_output": [msg("assistant", r)]},
    }[shape]()


SHAPES = ["standard", "conversational", "implicit", "hh_rlhf", "sharegpt", "openai"]
REQUIRED = {"standard": ["prompt", "chosen", "rejected"], "conversational": ["prompt", "chosen", "rejected"],
            "implicit": ["chosen", "rejected"], "hh_rlhf": ["chosen", "rejected"],
            "sharegpt": ["conversations", "chosen", "rejected"],
            "openai": ["input", "preferred_output", "non_preferred_output"]}


@st.composite
def rows(draw):
    """(row, broken): a row of a random shape whose fields may be replaced by wrong types or
    removed; ``broken`` says the row cannot be a valid pair."""
    shape = draw(st.sampled_from(SHAPES))
    row = shaped(shape, draw(TEXT), draw(TEXT), draw(TEXT))
    broken = False
    for key in REQUIRED[shape]:
        action = draw(st.sampled_from(["keep"] * 4 + ["wrong", "drop"]))
        if action == "wrong":
            row[key] = draw(WRONG)
        elif action == "drop":
            del row[key]
        broken |= action != "keep"
    for key in draw(st.lists(st.sampled_from(["margin", "score_chosen", "score_rejected", "metadata", "system"]),
                             max_size=3, unique=True)):
        row[key] = draw(st.one_of(WRONG, TEXT, st.dictionaries(st.sampled_from(["score_chosen", "score_rejected"]),
                                                               st.one_of(NUMBERS, TEXT), max_size=2)))
    return row, broken


def dumps(value, ascii_only: bool, indent=None) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent)


def encode(text: str, bom: bool, crlf: bool) -> bytes:
    if crlf:
        text = text.replace("\n", "\r\n")
    # surrogatepass: a lone surrogate written raw is invalid UTF-8, which the loader must name
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")


# --- properties ------------------------------------------------------------------------------------------


@fuzz(70)
@given(values=st.lists(st.one_of(JSON_VALUES, deep_values()), min_size=1, max_size=5), ascii_only=st.booleans(),
       bom=st.booleans(), crlf=st.booleans(), suffix=st.sampled_from([".jsonl", ".json"]))
def test_arbitrary_json_values_per_line(tmp_path, capsys, values, ascii_only, bom, crlf, suffix):
    EXAMPLES["arbitrary json lines"] += 1
    text = "\n".join(dumps(v, ascii_only) for v in values) + "\n"
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(encode(text, bom, crlf))
    check_both(path, capsys, rows=len(values) if suffix == ".jsonl" else None)


@fuzz(60)
@given(items=st.lists(st.one_of(JSON_VALUES, rows().map(lambda rb: rb[0])), max_size=6), ascii_only=st.booleans(),
       indent=st.sampled_from([None, 2]), bom=st.booleans(), crlf=st.booleans())
def test_json_array_of_anything(tmp_path, capsys, items, ascii_only, indent, bom, crlf):
    """Arrays whose items are not all objects, empty arrays, pretty-printed or not."""
    EXAMPLES["json arrays"] += 1
    path = tmp_path / "pairs.json"
    path.write_bytes(encode(dumps(items, ascii_only, indent), bom, crlf))
    check_both(path, capsys)


@fuzz(120)
@given(generated=st.lists(rows(), min_size=1, max_size=6), ascii_only=st.booleans(), crlf=st.booleans(),
       huge=st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 5), HUGE)))
def test_wrong_types_and_mixed_shapes_are_listed_never_kept(tmp_path, capsys, generated, ascii_only, crlf, huge):
    """Right keys, wrong types (None, numbers incl. NaN/inf, bools, lists, objects), missing keys, a 1 MB
    string, several shapes in one file: every broken row is dropped by name, none is kept."""
    EXAMPLES["wrong types, mixed shapes"] += 1
    if huge is not None:  # one string field of one row becomes 1 MB
        row = generated[huge[0] % len(generated)][0]
        key = next((k for k, v in row.items() if isinstance(v, str)), "extra")
        row[key] = huge[1]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(encode("".join(dumps(row, ascii_only) + "\n" for row, _ in generated), False, crlf))
    check_cli(path, capsys)
    report = check_load(path, rows=len(generated))
    if report is not None:
        dropped = {p.origin for p in report.problems}
        for line, (_, broken) in enumerate(generated, start=1):
            assert not broken or f"pairs.jsonl:{line}" in dropped


def csv_text(rows_: list[dict]) -> str:
    """Rows as CSV: strings as they are, message lists as JSON text (how CSV holds conversations)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # lineterminator "\r\n"
    writer.writerow(list(rows_[0]))
    writer.writerows([v if isinstance(v, str) else json.dumps(v) for v in row.values()] for row in rows_)
    return buffer.getvalue()


@fuzz(80)
@given(shape_fmt=st.tuples(st.sampled_from(SHAPES), st.sampled_from(["jsonl", "json", "jsonl.gz", "json-lines"]))
       | st.tuples(st.sampled_from(SHAPES[:4]), st.sampled_from(["csv", "csv.gz"])),  # objects do not fit CSV cells
       texts=st.lists(st.tuples(GOOD_TEXT, GOOD_TEXT, GOOD_TEXT), min_size=1, max_size=5), ascii_only=st.booleans(),
       bom=st.booleans(), crlf=st.booleans())
def test_well_formed_rows_load_exactly(tmp_path, capsys, shape_fmt, texts, ascii_only, bom, crlf):
    """The other half of "never a silent drop": good rows of any shape, with any text in them, all load, unchanged."""
    EXAMPLES["well-formed rows"] += 1
    shape, fmt = shape_fmt
    texts = [(f"q{i} {p}", f"good {i}{c}", f"bad {i}{r}") for i, (p, c, r) in enumerate(texts)]
    assume(all("\n\nAssistant:" not in c + r for _, c, r in texts))  # an hh transcript splits at its last marker
    rows_ = [shaped(shape, *t) for t in texts]
    if fmt.startswith("csv"):
        text, crlf = csv_text(rows_), False  # CRLF already, and CR/LF inside quoted cells must stay as written
    elif fmt == "json":
        text = dumps(rows_, ascii_only, indent=2)
    else:
        text = "".join(dumps(row, ascii_only) + "\n" for row in rows_)
    data = encode(text, bom, crlf)
    path = tmp_path / ("pairs.json" if fmt == "json-lines" else f"pairs.{fmt}")
    path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    assert check_cli(path, capsys) == 0
    report = check_load(path, rows=len(rows_))
    lead = " " if shape == "hh_rlhf" else ""  # "...Assistant: answer": the answer keeps its leading space
    assert [(p.chosen, p.rejected) for p in report.pairs] == [(lead + c, lead + r) for _, c, r in texts]


@fuzz(50)
@given(cells=st.lists(st.lists(st.one_of(GOOD_TEXT, st.just('"'), st.just("a\nb"), st.just("[{}]")), max_size=5),
                      max_size=5),
       header=st.sampled_from([["prompt", "chosen", "rejected"], ["chosen", "rejected"],
                               ["prompt", "chosen", "rejected", "margin"], ["a", "a"], [""]]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]), bom=st.booleans())
def test_csv_quotes_newlines_and_ragged_rows(tmp_path, capsys, cells, header, quoting, bom):
    EXAMPLES["csv"] += 1
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=quoting)  # lineterminator "\r\n"
    writer.writerows([header] + cells)
    path = tmp_path / "pairs.csv"
    path.write_bytes(encode(buffer.getvalue(), bom, False))
    check_both(path, capsys)


@fuzz(50)
@given(text=st.text(alphabet='ab,"\r\n \t\\', max_size=60))
def test_csv_raw_text(tmp_path, capsys, text):
    """CSV not written by a CSV writer: stray quotes, bare CR, unterminated quotes."""
    EXAMPLES["csv raw"] += 1
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\n" + text, encoding="utf-8", newline="")
    check_both(path, capsys)


@fuzz(70)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz", ".parquet"]))
def test_random_bytes(tmp_path, capsys, data, suffix):
    EXAMPLES["random bytes"] += 1
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(data)
    check_both(path, capsys)


@fuzz(40)
@given(text=st.text(alphabet=" \t\r\n\x0b\x0c\u00a0\u2028", max_size=8), bom=st.booleans(),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz"]))
def test_empty_and_whitespace_files(tmp_path, capsys, text, bom, suffix):
    EXAMPLES["empty files"] += 1
    data = encode(text, bom, False)
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert check_cli(path, capsys) == 2
    assert check_load(path) is None


@fuzz(40)
@given(cut=st.floats(0, 0.999), rows_=st.lists(rows().map(lambda rb: rb[0]), min_size=1, max_size=4))
def test_truncated_gzip(tmp_path, capsys, cut, rows_):
    EXAMPLES["truncated gzip"] += 1
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows_).encode("utf-8", "surrogatepass"))
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(whole[: int(len(whole) * cut)])
    assert check_cli(path, capsys) == 2
    assert check_load(path) is None


@fuzz(50)
@given(row=rows().map(lambda rb: rb[0]), at=st.sampled_from(["top", "nested"]),
       suffix=st.sampled_from([".jsonl", ".json"]),
       value=st.one_of(SCALARS, st.lists(SCALARS, max_size=2)))
def test_repeated_keys_are_named(tmp_path, capsys, row, at, suffix, value):
    """{"chosen": "a", "chosen": "b"} is legal JSON whose parser keeps one value and drops the other silently."""
    EXAMPLES["repeated keys"] += 1
    dup = f'"dup": {json.dumps(value)}, "dup": 0'
    fields = [json.dumps(row)[1:-1]] if row else []
    fields = [dup] + fields if at == "top" else fields + ['"metadata": {' + dup + "}"]
    text = "{" + ", ".join(fields) + "}"
    if suffix == ".json":
        text = "[\n" + ROW + "},\n" + text + "\n]"
    path = tmp_path / f"pairs{suffix}"
    path.write_text(text + "\n", encoding="utf-8")
    assert check_cli(path, capsys) == 2
    assert check_load(path) is None
    with pytest.raises(DataError, match=r"^pairs\.json(l:1|\[1\] \(line 3\)): field 'dup' appears twice"):
        read_records(path)


def test_examples_ran():
    """Runs after the properties above: each that ran tried the examples it asked for (none were all
    filtered away). 630 in all when the whole file runs; alone it has nothing to count, and says so."""
    if not EXAMPLES:
        pytest.skip("counts the examples of the property tests above: run it with them")
    assert all(n >= 40 for n in EXAMPLES.values()), dict(EXAMPLES)


# --- fixed examples: too rare to generate ---------------------------------------------------------------------

DEEP = 10_000


HOSTILE = [
    ("deep.jsonl", "[" * DEEP + "]" * DEEP + "\n", 2),
    ("deep.json", "[" * DEEP + "]" * DEEP, 2),
    ("deep_row.json", "[" + '{"a": ' * DEEP + "1" + "}" * DEEP + "]", 2),
    ("deep_field.jsonl", ROW + ', "x": ' + "[" * DEEP + "]" * DEEP + "}\n", 2),
    ("deep_cell.csv", 'prompt,chosen,rejected\n"' + "[" * DEEP + '",c,r\n', 0),  # a prompt that is not a message list
    ("long_number.jsonl", ROW + ', "margin": ' + "9" * 5000 + "}\n", 2),
    ("long_number.json", "[" + ROW + ', "margin": ' + "9" * 5000 + "}]", 2),
    ("big_int_margin.jsonl", ROW + ', "margin": 1' + "0" * 400 + "}\n", 2),
    ("overflowing_scores.jsonl", ROW + ', "score_chosen": 1e308, "score_rejected": -1e308}\n', 2),
    ("lone_surrogate.jsonl", '{"prompt": "p", "chosen": "\\ud83d", "rejected": "r"}\n', 2),
    ("surrogate_key.jsonl", '{"\\udc00\\n": 1}\n', 2),
    ("sharegpt_system.jsonl", json.dumps({"conversations": [{"from": "human", "value": "hi"}], "system": ["x"],
                                          "chosen": {"from": "gpt", "value": "a"},
                                          "rejected": {"from": "gpt", "value": "b"}}) + "\n", 2),
]


@pytest.mark.parametrize("name, text, code", HOSTILE, ids=[name for name, _, _ in HOSTILE])
def test_fixed_hostile_files(tmp_path, capsys, name, text, code):
    """Each used to escape as a traceback (RecursionError, ValueError, OverflowError) or to load silently
    (an infinite margin, a lone surrogate the tokenizer later refuses, a non-string system prompt).
    Each file holds one row; code 2 means that row is unusable."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert check_cli(path, capsys) == code
    assert (check_load(path, rows=1) is None) == (code == 2)


def test_deep_row_in_an_array_is_named_by_index_and_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[\n" + ROW + "},\n" + "[" * DEEP + "]" * DEEP + "]")
    with pytest.raises(DataError, match=r"^deep\.json\[1\] \(line 3\): invalid JSON \(nested too deeply"):
        read_records(path)


def test_huge_valid_row_loads(tmp_path, capsys):
    big = "é" * (1 << 20)
    path = tmp_path / "big.csv"
    path.write_text(f"prompt,chosen,rejected\n{big},\"{big}\n!\",no\n", encoding="utf-8")
    assert check_cli(path, capsys) == 0
    assert check_load(path, rows=1).pairs[0].chosen == big + "\n!"


def test_one_line_object_with_line_separator_in_a_json_file_loads(tmp_path, capsys):
    """U+2028 inside a string is legal JSON and not a line break; a one-line .json object is one row."""
    path = tmp_path / "one.json"
    row = {"prompt": "a\u2028b", "chosen": "c", "rejected": "r"}
    path.write_text(json.dumps(row, ensure_ascii=False), encoding="utf-8")
    assert check_cli(path, capsys) == 0


# --- fixed examples: not a readable data file ----------------------------------------------------------------


def test_unreadable_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "secret.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)  # chmod does not stop root
    assert check_cli(path, capsys) == 2
    assert check_load(path) is None


def test_file_in_a_folder_we_may_not_enter(tmp_path, capsys, monkeypatch):
    """stat() itself fails: Path.is_dir()/exists() would raise PermissionError as a traceback."""
    path = tmp_path / "locked" / "pairs.jsonl"
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert check_cli(path, capsys) == 2
    with pytest.raises(DataError, match=r"pairs\.jsonl: cannot read file \(Permission denied\)$"):
        read_records(path)


def test_name_too_long(tmp_path, capsys):
    path = tmp_path / ("p" * 300 + ".jsonl")
    assert check_cli(path, capsys) == 2
    assert check_load(path) is None


def test_directory_that_is_not_a_saved_dataset(tmp_path, capsys):
    folder = tmp_path / "pairs.jsonl"  # named like a file
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    assert check_cli(folder, capsys) == 2
    assert check_load(folder) is None


@pytest.mark.parametrize("files", [
    {"dataset_dict.json": "{}"},
    {"dataset_dict.json": '{"splits": 5}'},
    {"dataset_info.json": "[1, 2]", "state.json": '{"_data_files": 5}'},
    {"state.json": "not json"},
])
def test_damaged_saved_dataset(tmp_path, capsys, files):
    """A folder with save_to_disk's marker files but broken contents fails inside `datasets` with KeyError,
    TypeError, AttributeError, ..."""
    folder = tmp_path / "saved"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    assert check_cli(folder, capsys) == 2
    assert check_load(folder) is None


# --- config ------------------------------------------------------------------------------------------------------


def test_config_with_unknown_key(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("beta: 0.1\nlearning-rate: 1.0e-6\nbeat: 0.2\n")
    assert main(["dpo", "--config", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dpokit: error: {config}: unknown key 'beat'")


@pytest.mark.parametrize("content", [b"1: 2\n", b"beta: 0.1 # caf\xe9\n", b"batch_size: " + b"9" * 5000 + b"\n",
                                     b"beta: [\n", b"- beta\n"],
                         ids=["non-string key", "invalid UTF-8", "5000-digit number", "broken YAML", "not a mapping"])
def test_config_that_cannot_be_read(tmp_path, capsys, content):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    assert main(["dpo", "--config", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dpokit: error: {config}: ")


@pytest.mark.parametrize("key, value", [("beta", float("nan")), ("learning_rate", float("inf"))])
def test_config_refuses_non_finite_numbers(key, value):
    """`beta <= 0` alone lets NaN through."""
    with pytest.raises(UserError, match=key):
        build_config(DPOConfig, {key: value})
