"""read_records: every accepted format gives the same rows with the right origins; every failure is one
DataError line naming the file and the line (or row)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dpokit.data.io import Record, read_records
from dpokit.errors import DataError

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- formats -------------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_numbers_lines_from_one(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert read_records(path) == [Record("pairs.jsonl:1", ROWS[0]), Record("pairs.jsonl:4", ROWS[1])]


def test_jsonl_accepts_bom_and_crlf(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in ROWS).encode() + b"\r\n")
    records = read_records(str(path))  # a str path works too
    assert [r.value for r in records] == ROWS
    assert records[1].origin == "pairs.jsonl:2"


def test_jsonl_keeps_unicode_line_separator_inside_strings(tmp_path):
    # U+2028 is legal unescaped inside a JSON string; splitting on it would break the row.
    row = {"prompt": "a\u2028b", "chosen": "c", "rejected": "d"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_records(path) == [Record("pairs.jsonl:1", row)]


def test_json_array_origins_are_zero_based_indices(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert read_records(path) == [Record("pairs.json[0]", ROWS[0]), Record("pairs.json[1]", ROWS[1])]


def test_json_file_that_is_really_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "pairs.json", ROWS)
    assert read_records(path) == [Record("pairs.json:1", ROWS[0]), Record("pairs.json:2", ROWS[1])]


def test_json_file_with_one_object_on_one_line(tmp_path):
    path = write_jsonl(tmp_path / "one.json", ROWS[:1])
    assert read_records(path) == [Record("one.json:1", ROWS[0])]


def test_csv_values_are_strings_and_origins_are_file_lines(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected,margin\n"Say\nhi",hello,bye,1.5\n\nq,a,b,2\n', encoding="utf-8")
    records = read_records(path)
    # The first row spans lines 2-3 (a quoted newline): it is named by its first line.
    assert records == [
        Record("pairs.csv:2", {"prompt": "Say\nhi", "chosen": "hello", "rejected": "bye", "margin": "1.5"}),
        Record("pairs.csv:5", {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "2"}),
    ]


def test_csv_with_bom_and_crlf_keeps_clean_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\r\np,c,r\r\n")
    assert read_records(path) == [Record("pairs.csv:2", {"prompt": "p", "chosen": "c", "rejected": "r"})]


def test_csv_leaves_json_message_text_unparsed(tmp_path):
    messages = json.dumps([{"role": "user", "content": "hi"}])
    path = tmp_path / "chat.csv"
    path.write_text("prompt,chosen,rejected\n" + '"' + messages.replace('"', '""') + '",a,b\n', encoding="utf-8")
    assert read_records(path)[0].value["prompt"] == messages


def test_csv_accepts_fields_longer_than_the_csv_module_default(tmp_path):
    long_answer = "x" * 200_000  # the csv module's default limit is 131,072 characters
    path = tmp_path / "long.csv"
    path.write_text(f"prompt,chosen,rejected\np,{long_answer},r\n", encoding="utf-8")
    assert len(read_records(path)[0].value["chosen"]) == 200_000


def test_parquet_rows_are_named_by_zero_based_row(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", ROWS)
    assert read_records(path) == [Record("pairs.parquet row 0", ROWS[0]), Record("pairs.parquet row 1", ROWS[1])]


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.json.gz", "pairs.csv.gz", "pairs.parquet.gz"])
def test_gzipped_files_give_the_same_rows(tmp_path, name):
    plain = tmp_path / name.removesuffix(".gz")
    if name.startswith("pairs.parquet"):
        write_parquet(plain, ROWS)
    elif name.startswith("pairs.csv"):
        plain.write_text("prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in ROWS))
    elif name.startswith("pairs.jsonl"):
        write_jsonl(plain, ROWS)
    else:
        plain.write_text(json.dumps(ROWS))
    gz = tmp_path / name
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    records = read_records(gz)
    assert [r.value for r in records] == ROWS
    assert records[0].origin.startswith(name)


def test_saved_dataset_folder(tmp_path):
    import datasets

    rows = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    datasets.Dataset.from_list(rows * 2).save_to_disk(str(tmp_path / "folder"))
    records = read_records(tmp_path / "folder")
    assert records == [Record("folder row 0", rows[0]), Record("folder row 1", rows[0])]


def test_saved_dataset_dict_uses_train_split(tmp_path):
    import datasets

    train = datasets.Dataset.from_list(ROWS)
    test = datasets.Dataset.from_list(ROWS[:1])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert read_records(tmp_path / "dd") == [Record("dd/train row 0", ROWS[0]), Record("dd/train row 1", ROWS[1])]


def test_saved_dataset_dict_without_train_split_names_the_splits(tmp_path):
    import datasets

    split = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"test": split, "validation": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: saved DatasetDict has no 'train' split \(splits: test, validation\)"):
        read_records(tmp_path / "dd")


# --- errors --------------------------------------------------------------------------------------


def one_line_error(path) -> str:
    with pytest.raises(DataError) as info:
        read_records(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_json_line_names_file_line_and_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + '\n{"prompt": "x" "chosen": "y"}\n')
    assert one_line_error(path) == "pairs.jsonl:3: invalid JSON (Expecting ',' delimiter at column 16)"


def test_bad_json_array_names_the_line_where_it_broke(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",, }\n]\n')
    assert one_line_error(path).startswith("pairs.json:3: invalid JSON (Expecting property name")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    assert one_line_error(path) == "pairs.jsonl:2: expected a JSON object, got array"


def test_json_array_element_that_is_not_an_object(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([ROWS[0], "oops"]))
    assert one_line_error(path) == "pairs.json[1]: expected a JSON object, got string"


def test_pretty_printed_single_object_is_not_an_array(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(ROWS[0], indent=2))
    assert "pairs.json: expected a JSON array of row objects" in one_line_error(path)


@pytest.mark.parametrize("content", [b"", b"\n \n", b"\xef\xbb\xbf", b"[]"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "pairs.json"
    path.write_bytes(content)
    message = one_line_error(path)
    assert str(path) in message and "file is empty" in message


def test_csv_with_only_a_header_is_empty(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\n")
    assert one_line_error(path) == f"{path}: file is empty (no rows)"


def test_file_not_found(tmp_path):
    assert one_line_error(tmp_path / "missing.jsonl") == f"{tmp_path / 'missing.jsonl'}: file not found"


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    message = one_line_error(tmp_path / "plain")
    assert message.startswith(f"{tmp_path / 'plain'}: is a folder but not a dataset written by datasets.save_to_disk")
    assert "dataset_info.json" in message


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "secret.jsonl", ROWS)

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)  # chmod does not stop root, which runs CI here
    assert one_line_error(path) == f"{path}: cannot read file (permission denied)"


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    assert one_line_error(path) == "pairs.jsonl:2: invalid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_unknown_extension_lists_accepted_ones(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("hello")
    message = one_line_error(path)
    assert message.startswith(f"{path}: unknown file type '.txt'; accepted: .jsonl, .json, .csv, .parquet")
    assert "save_to_disk" in message


def test_gz_that_is_not_gzip(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", ROWS)
    assert one_line_error(path).startswith(f"{path}: not a valid gzip file")


def test_csv_row_with_wrong_number_of_values(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\np,c,r\np,c,r,extra\n")
    assert one_line_error(path) == "pairs.csv:3: row has 4 values but the header has 3 columns"


def test_csv_header_with_repeated_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,chosen\np,c,r\n")
    assert one_line_error(path) == "pairs.csv:1: header repeats column 'chosen'"


def test_invalid_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"not parquet at all")
    assert one_line_error(path).startswith("pairs.parquet: not a valid Parquet file")
