"""Read records from JSON, JSONL, CSV, Parquet files and saved `datasets` folders.

Every record comes with its location (`file:line` or `file:row N`) so that any later error about
it can say exactly where it is.

>>> import json, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "d.jsonl")
>>> _ = open(p, "w").write(json.dumps({"a": 1}) + "\\n\\n" + json.dumps({"a": 2}) + "\\n")
>>> [(loc.rsplit(":", 1)[1], rec["a"]) for loc, rec in read_records(p)]
[('1', 1), ('3', 2)]
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from honed.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
JSON_COLUMNS = {"conversations", "messages", "history"}  # CSV cells decoded from JSON


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield `(location, record)` for each record of a data file or saved dataset folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)} or a saved datasets folder")


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(record).__name__}")
            yield f"{path}:{lineno}", record


def _read_json(path: Path) -> Iterator[tuple[str, dict]]:
    """A JSON array of objects; each record's line is found from its offset in the text."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "[":
        # A single object or a JSON-lines file misnamed .json: try both before giving up.
        if text[pos : pos + 1] == "{" and "\n{" in text.strip():
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}:1: expected a JSON array of records ([{{...}}, ...])")
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: each record must be a JSON object, got {type(record).__name__}")
        yield f"{path}:{line}", record
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
        elif text[pos : pos + 1] != "]":
            raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' between records")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            # Only the columns that hold turn lists are decoded from JSON: an `output` that is JSON
            # text (a structured-output task) must stay text.
            yield f"{path}:{reader.line_num}", {k: _maybe_json(v) if k in JSON_COLUMNS else v for k, v in row.items() if k is not None}


def _maybe_json(value: str | None):
    if value and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, record in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", record


def _read_saved_dataset(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets

    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataError(f"{path}: a folder must be a dataset saved with datasets' save_to_disk")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: saved DatasetDict has splits {list(ds)}; name one folder per split")
        ds = ds["train"]
    for i, record in enumerate(ds):
        yield f"{path}:row {i}", record
