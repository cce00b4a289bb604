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
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from honed.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
JSON_COLUMNS = {"conversations", "messages", "history"}  # CSV cells decoded from JSON
# Text is decoded with `surrogateescape`: a byte that is not UTF-8 becomes one lone surrogate
# (U+DC80-U+DCFF) instead of aborting the whole file, so the record that holds it can be named
# (file:line) and, under `on_bad_record: skip`, skipped while the rest is read.
_UNDECODED = re.compile("[\udc80-\udcff]")

OnBad = Callable[[str, str], None]


def _raise(where: str, reason: str) -> None:
    raise DataError(f"{where}: {reason}")


def read_records(path: str | Path, on_bad: OnBad | None = None) -> Iterator[tuple[str, dict]]:
    """Yield `(location, record)` for each record of a data file or saved dataset folder.

    A record that cannot be read (a line that is not valid JSON, bytes that are not UTF-8) is
    passed to `on_bad(location, reason)` and skipped when `on_bad` is given; otherwise it is a
    DataError naming file:line. A file whose structure is broken is always an error."""
    path = Path(path)
    on_bad = on_bad or _raise
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, on_bad)
    elif suffix == ".json":
        yield from _read_json(path, on_bad)
    elif suffix == ".csv":
        yield from _read_csv(path, on_bad)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)} or a saved datasets folder")


def _not_utf8(text: str, column: bool = True) -> str | None:
    """The reason a decoded line (or field, `column=False`) holds bytes that are not UTF-8, or None."""
    bad = _UNDECODED.search(text)
    if bad is None:
        return None
    at = f" at column {bad.start() + 1}" if column else ""
    return (f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x}{at}); "
            "re-save the file as UTF-8 (e.g. iconv -f GB18030 -t UTF-8)")


def _read_jsonl(path: Path, on_bad: OnBad) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            reason = _not_utf8(line)
            if reason:
                on_bad(where, reason)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                on_bad(where, f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(record, dict):
                on_bad(where, f"each line must be a JSON object, got {type(record).__name__}")
                continue
            yield where, record


def _bad_strings(record) -> str | None:
    """The not-UTF-8 reason for the first string of a parsed record that holds undecoded bytes."""
    if isinstance(record, str):
        return _not_utf8(record, column=False)
    values = record.values() if isinstance(record, dict) else record if isinstance(record, list) else ()
    for value in values:
        reason = _bad_strings(value)
        if reason:
            return reason
    return None


def _read_json(path: Path, on_bad: OnBad) -> Iterator[tuple[str, dict]]:
    """A JSON array of objects; each record's line is found from its offset in the text."""
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "[":
        # A single object or a JSON-lines file misnamed .json: try both before giving up.
        if text[pos : pos + 1] == "{" and "\n{" in text.strip():
            yield from _read_jsonl(path, on_bad)
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
        reason = _bad_strings(record)
        if reason:
            on_bad(f"{path}:{line}", reason)
        else:
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


def _read_csv(path: Path, on_bad: OnBad) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames and _bad_strings(list(reader.fieldnames)):
            raise DataError(f"{path}:1: the header is {_bad_strings(list(reader.fieldnames))}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            reason = _bad_strings(row)
            if reason:
                on_bad(where, reason)
                continue
            # Only the columns that hold turn lists are decoded from JSON: an `output` that is JSON
            # text (a structured-output task) must stay text.
            yield where, {k: _maybe_json(v) if k in JSON_COLUMNS else v for k, v in row.items() if k is not None}


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
