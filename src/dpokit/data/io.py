"""Read a data file into raw records, each tagged with where it came from.

This module knows file formats, nothing about preference pairs: it returns every row as it was
written (a dict for JSON/JSONL/Parquet/datasets, a dict of strings for CSV) and leaves the meaning
of the fields to ``adapters``. Every failure raises ``DataError`` as one line naming the file and
the line (or row) at fault.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import stat
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from json.decoder import WHITESPACE as _WHITESPACE
from pathlib import Path
from typing import Any

from dpokit.errors import DataError

ACCEPTED = ".jsonl, .json, .csv, .parquet (each optionally .gz), or a folder written by datasets.save_to_disk"
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Record:
    """One raw row. ``origin`` is "pairs.jsonl:12" (1-based line), "pairs.json[3]" (0-based index),
    "pairs.csv:5" (file line, header is line 1) or "pairs.parquet row 7" (0-based row)."""

    origin: str
    value: Any


def read_records(path: str | Path) -> list[Record]:
    """All rows of a .jsonl/.json/.csv/.parquet file (optionally .gz) or a save_to_disk folder."""
    path = Path(path)
    mode = _mode(path)
    if mode is not None and stat.S_ISDIR(mode):
        return _read_saved_dataset(path)
    if mode is None:
        raise DataError(f"{path}: file not found")
    kind = _kind(path)
    data = _read_bytes(path)
    if kind == "parquet":
        return _nonempty(path, _parse_parquet(path.name, data))
    text = _decode(path.name, data)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    parse = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}[kind]
    return _nonempty(path, parse(path.name, text))


def _mode(path: Path) -> int | None:
    """The file's st_mode, or None if nothing is there. Path.is_dir() would raise PermissionError
    (a folder on the way we may not enter) or "name too long" as a traceback."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # a NUL byte in the path
        raise DataError(f"{str(path)!r}: not a valid path (it contains a NUL byte)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({_first_line(e.strerror or e)})") from None


def _kind(path: Path) -> str:
    name = path.name.lower()
    name = name[: -len(".gz")] if name.endswith(".gz") else name
    for kind in ("jsonl", "json", "csv", "parquet"):
        if name.endswith("." + kind):
            return kind
    suffix = "".join(path.suffixes) or "(no extension)"
    raise DataError(f"{path}: unknown file type {suffix!r}; accepted: {ACCEPTED}")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except PermissionError:
        raise DataError(f"{path}: cannot read file (permission denied)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({_first_line(e.strerror or e)})") from None
    if not path.name.lower().endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({_first_line(e)})") from None


def _decode(name: str, data: bytes) -> str:
    # A BOM is stripped by hand (not "utf-8-sig") so error offsets stay byte offsets into `data`.
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}:{line}: invalid UTF-8 (byte {data[e.start]:#04x}); save the file as UTF-8") from None


def _nonempty(path: Path, records: list[Record]) -> list[Record]:
    if not records:
        raise DataError(f"{path}: file is empty (no rows)")
    return records


def _lines(text: str) -> list[tuple[int, str]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 etc., legal inside JSON strings.
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]


class _BadJSON(Exception):
    """JSON that does not load; ``line`` (1-based, within the text parsed) is None when unknown."""

    def __init__(self, detail: str, line: int | None = None):
        super().__init__(detail)
        self.detail, self.line = detail, line


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) < len(pairs):  # json.loads would silently keep the last value of a repeated key
        key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _BadJSON(f"field {_short(key)} appears twice in one object; keep one")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_no_repeated_keys)


def _loads(text: str, pos: int | None = None) -> Any:
    """The JSON value that is all of ``text``; with ``pos``, (value, end) of the one starting there.
    Every failure is a ``_BadJSON``."""
    try:
        return _DECODER.decode(text) if pos is None else _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise _BadJSON(f"invalid JSON ({e.msg} at column {e.colno})", e.lineno) from None
    except ValueError:  # int() refuses the digits
        raise _BadJSON(f"invalid JSON (a number longer than {sys.get_int_max_str_digits()} digits)") from None
    except RecursionError:
        raise _BadJSON("invalid JSON (nested too deeply: Python's JSON parser stops near 1000 levels)") from None


def _parse_jsonl(name: str, text: str) -> list[Record]:
    records = []
    for n, line in _lines(text):
        if not line.strip():
            continue  # blank lines (often a trailing one) carry no row
        try:
            value = _loads(line)
        except _BadJSON as e:
            raise DataError(f"{name}:{n}: {e.detail}") from None
        if not isinstance(value, dict):
            raise DataError(f"{name}:{n}: expected a JSON object, got {_json_type(value)}")
        records.append(Record(f"{name}:{n}", value))
    return records


def _parse_json(name: str, text: str) -> list[Record]:
    try:
        value = _loads(text)
    except _BadJSON as e:
        if text.lstrip().startswith("["):  # meant as one array: report where the array broke
            raise _array_error(name, text, e) from None
        return _parse_jsonl(name, text)  # many files named .json are really JSONL
    if isinstance(value, dict) and "\n" not in text.strip():
        return _parse_jsonl(name, text)  # a one-line JSONL file
    if not isinstance(value, list):
        raise DataError(
            f"{name}: expected a JSON array of row objects (or one object per line), got {_json_type(value)}"
        )
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(f"{name}[{i}]: expected a JSON object, got {_json_type(row)}")
    return [Record(f"{name}[{i}]", row) for i, row in enumerate(value)]


def _array_error(name: str, text: str, error: _BadJSON) -> DataError:
    """``error`` with its line. Errors that carry no position (a repeated key, nesting too deep) are
    found again by decoding the array's rows one at a time: every row before the bad one decodes."""
    if error.line is not None:
        return DataError(f"{name}:{error.line}: {error.detail}")
    pos = text.index("[") + 1
    for i in range(len(text)):
        start = _WHITESPACE.match(text, pos).end()
        if text.startswith("]", start):
            break
        try:
            _, end = _loads(text, start)
        except _BadJSON as e:
            line = text.count("\n", 0, start) + 1
            return DataError(f"{name}[{i}] (line {line}): {e.detail}")
        pos = _WHITESPACE.match(text, end).end() + 1  # past the "," that must follow
    return DataError(f"{name}: {error.detail}")  # every row decodes alone: the error was at the limit


def _parse_csv(name: str, text: str) -> list[Record]:
    old_limit = csv.field_size_limit(sys.maxsize)  # long completions exceed the 128 KiB default
    try:
        return _csv_rows(name, text)
    finally:
        csv.field_size_limit(old_limit)


def _csv_rows(name: str, text: str) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    records, header, start = [], None, 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: name its first
            if not cells:
                continue
            if header is None:
                header = _csv_header(name, line, cells)
            elif len(cells) != len(header):
                raise DataError(f"{name}:{line}: row has {len(cells)} values but the header has {len(header)} columns")
            else:
                records.append(Record(f"{name}:{line}", dict(zip(header, cells))))
    except csv.Error as e:
        raise DataError(f"{name}:{reader.line_num}: invalid CSV ({e})") from None
    return records


def _csv_header(name: str, line: int, cells: list[str]) -> list[str]:
    seen = set()
    for cell in cells:
        if not cell.strip():
            raise DataError(f"{name}:{line}: header has an empty column name")
        if cell in seen:
            raise DataError(f"{name}:{line}: header repeats column {_short(cell)}")
        seen.add(cell)
    return cells


def _parse_parquet(name: str, data: bytes) -> list[Record]:
    import pyarrow as pa  # imported here: only Parquet files need it
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: not a valid Parquet file ({_first_line(e)})") from None
    return [Record(f"{name} row {i}", row) for i, row in enumerate(rows)]


def _read_saved_dataset(path: Path) -> list[Record]:
    if not any((path / marker).is_file() for marker in _SAVED_MARKERS):
        raise DataError(
            f"{path}: is a folder but not a dataset written by datasets.save_to_disk "
            f"(no {', '.join(_SAVED_MARKERS)}); accepted: {ACCEPTED}"
        )
    import datasets  # slow to import: only folders need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder fails inside datasets as KeyError, TypeError, ...
        detail = f"{type(e).__name__}: {_first_line(e)}"
        raise DataError(f"{path}: cannot load the saved dataset ({detail}); save it again with save_to_disk") from None
    label = path.name
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(sorted(loaded)) or "none"
            detail = f"saved DatasetDict has no 'train' split (splits: {splits}); save one Dataset instead"
            raise DataError(f"{path}: {detail}")
        loaded, label = loaded["train"], f"{path.name}/train"
    return _nonempty(path, [Record(f"{label} row {i}", row) for i, row in enumerate(loaded)])


def _first_line(error: object, limit: int = 300) -> str:
    """An exception's text as one short line, so the CLI's error stays one line."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def _short(key: str, limit: int = 40) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[:limit] + "…"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def write_jsonl(path: Path, rows) -> None:
    """Rows this program writes (runs, evals, exports): whole or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list:
    """The rows of a JSONL file this program wrote. Split on "\n" only: str.splitlines() would also split on
    U+2028, \x1c and other characters that json.dumps leaves unescaped inside strings."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
