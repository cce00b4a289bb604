"""From the `data:` section of a config to tokenized train and validation samples.

Loads every file, converts records to Conversations, injects the scope system prompt, mixes files
by weight, carves a validation split, tokenizes, and keeps count of everything skipped or
truncated so nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from honed.config import DataConfig, DataSource
from honed.data.conversation import Conversation
from honed.data.formats import check_answers, detect_format, to_conversation
from honed.data.readers import read_records
from honed.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What happened to the data: counts per file, formats detected, and every skipped sample."""

    formats: dict[str, str] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    truncated: list[str] = field(default_factory=list)
    n_train: int = 0
    n_validation: int = 0

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def summary(self) -> str:
        parts = [f"{self.n_train} train / {self.n_validation} validation samples"]
        parts += [f"{Path(p).name}: {n} records ({self.formats.get(p, '?')})" for p, n in self.loaded.items()]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (first: {self.skipped[0][0]}: {self.skipped[0][1]})")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated at max_seq_length")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "formats": self.formats,
            "loaded": self.loaded,
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
            "truncated": self.truncated,
            "n_train": self.n_train,
            "n_validation": self.n_validation,
        }


def scope_prompt(data: DataConfig) -> str | None:
    if data.system_prompt_file:
        path = Path(data.system_prompt_file)
        if not path.is_file():
            raise DataError(f"data.system_prompt_file: file not found: {path}")
        return path.read_text(encoding="utf-8").strip()
    return data.system_prompt


def inject_system_prompt(conv: Conversation, prompt: str | None) -> Conversation:
    """Put the scope prompt first; a sample's own system text is kept after it, not lost."""
    if not prompt:
        return conv
    own = conv.messages[0].content if conv.messages and conv.messages[0].role == "system" else None
    if own == prompt:
        return conv
    return conv.with_system(f"{prompt}\n\n{own}" if own else prompt)


SKIP_HINT = "set data.on_bad_record: skip to skip and count such records"


def load_source(source: DataSource, on_bad_record: str, report: DataReport, default_prompt: str | None = None,
                allow_empty_answers: bool = False, hint: str | None = SKIP_HINT) -> list[Conversation]:
    """Read one file into Conversations, skipping (and counting) bad records when asked to.

    A record with an empty answer is a bad record (unless `allow_empty_answers`, for tools that
    remove such records themselves, like `honed data filter`)."""
    conversations: list[Conversation] = []
    fmt = None if source.format == "auto" else source.format
    prompt = source.system_prompt if source.system_prompt is not None else default_prompt
    def unreadable(where: str, reason: str) -> None:
        if on_bad_record == "error":
            raise DataError(f"{where}: {reason}" + (f" ({hint})" if hint else ""))
        report.skip(where, reason)

    for where, record in read_records(source.path, on_bad=unreadable):
        try:
            if fmt is None:
                fmt = detect_format(record, where)
            conv = to_conversation(record, fmt, where)
            if not allow_empty_answers:
                check_answers(conv, where)
            conversations.append(inject_system_prompt(conv, prompt))
        except DataError as err:
            if on_bad_record == "error":
                raise DataError(f"{err} ({hint})" if hint else str(err)) from None
            report.skip(where, str(err).split(": ", 1)[-1])
    report.formats[source.path] = fmt or "empty"
    report.loaded[source.path] = len(conversations)
    if not conversations:
        raise DataError(f"{source.path}: no usable records (empty file, or every record was skipped)")
    return conversations


def apply_weight(conversations: list[Conversation], weight: float, rng: random.Random) -> list[Conversation]:
    """Repeat a file `floor(weight)` times and add a seeded sample for the fractional rest."""
    whole, frac = int(weight), weight - int(weight)
    out = conversations * whole
    if frac:
        out += rng.sample(conversations, round(frac * len(conversations)))
    return out


def weighted(source: DataSource, conversations: list[Conversation], rng: random.Random) -> list[Conversation]:
    """`apply_weight`, refusing a weight so small that the file would silently vanish."""
    out = apply_weight(conversations, source.weight, rng)
    if not out:
        raise DataError(f"{source.path}: weight {source.weight} of {len(conversations)} records keeps none; raise the weight or drop the file")
    return out


@dataclass
class SourceRead:
    """The files of a data section read once: each training file's Conversations, the validation
    files' ones, and what reading them reported (formats, counts, skipped records).

    `honed train` reads the files before its `auto` keys are resolved (their values depend on the
    data's size) and hands this read on to `build_datasets` with `keep_read`, so that no file is
    read twice. `key` is what it was read from: the data settings and each file's size and mtime."""

    key: tuple
    per_source: list[tuple[DataSource, list[Conversation]]]
    validation: list[Conversation]
    report: DataReport

    def __deepcopy__(self, memo):  # never changed once read: a deep copy of its config shares it
        return self

    def weighted_train(self, rng: random.Random) -> list[Conversation]:
        """Every training file mixed by its weight, nothing carved off for validation."""
        return [c for src, convs in self.per_source for c in weighted(src, convs, rng)]


def _data_files(data: DataConfig) -> list[Path]:
    """Every file whose bytes make the data: the train and validation files (a saved dataset folder's
    files), an augmentation recipe file, the system prompt file."""
    paths = [src.path for src in [*data.train, *data.validation]]
    if isinstance(data.augment, str):
        paths.append(data.augment)  # the recipe's contents, not only its name
    if data.system_prompt_file:
        paths.append(data.system_prompt_file)
    files = []
    for p in paths:
        path = Path(p)
        files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return files


def _read_key(data: DataConfig) -> tuple:
    # val_ratio is left out: it decides the split, made after the read (and `auto` is resolved in between).
    settings = json.dumps(data.model_dump(mode="json", exclude={"val_ratio"}), sort_keys=True)
    stats = []
    for f in _data_files(data):
        st = f.stat() if f.exists() else None
        stats.append((str(f), st.st_size if st else None, st.st_mtime_ns if st else None))
    return settings, tuple(stats)


def read_sources(data: DataConfig) -> SourceRead:
    """Read every train and validation file of `data` into Conversations (the scope prompt injected)."""
    report = DataReport()
    key = _read_key(data)
    prompt = scope_prompt(data)
    per_source = [(src, load_source(src, data.on_bad_record, report, prompt)) for src in data.train]
    validation = [c for src in data.validation for c in load_source(src, data.on_bad_record, report, prompt)]
    return SourceRead(key, per_source, validation, report)


def keep_read(data: DataConfig, read: SourceRead) -> None:
    """Hand `read` on to the next `build_datasets`/`load_conversations` of `data`, which then reads no file."""
    data._source_read = read


def _take_read(data: DataConfig) -> SourceRead | None:
    """The read kept with `data`, once, if its settings and files are still what was read."""
    read, data._source_read = data._source_read, None
    if read is not None and read.key != _read_key(data):
        log.debug("the data changed since it was read for the data-size defaults: reading it again")
        return None
    return read


def load_conversations(data: DataConfig, seed: int, report: DataReport) -> tuple[list[Conversation], list[Conversation]]:
    """Train and validation Conversations for a data config (validation carved off when asked).
    The files are read here unless a read was kept with `data` (see `keep_read`)."""
    rng = random.Random(seed)
    read = _take_read(data) or read_sources(data)
    report.formats.update(read.report.formats)
    report.loaded.update(read.report.loaded)
    report.skipped += read.report.skipped
    per_source, validation = read.per_source, list(read.validation)
    if validation and data.val_ratio > 0:
        log.warning("data.val_ratio=%s is ignored: data.validation files are given", data.val_ratio)
    if not validation and data.val_ratio > 0:
        per_source, validation = carve_validation(per_source, data.val_ratio, rng)
    train = [c for src, convs in per_source for c in weighted(src, convs, rng)]
    return train, validation


def carve_validation(per_source: list[tuple[DataSource, list]], val_ratio: float, rng: random.Random) -> tuple[list, list]:
    """(per-source training items, validation items): a seeded share of each file, split before weighting
    so a repeated item never lands on both sides."""
    carved, validation = [], []
    for src, items in per_source:
        order = list(range(len(items)))
        rng.shuffle(order)
        n_val = max(1, round(val_ratio * len(items)))
        if n_val >= len(items):
            raise DataError(f"{src.path}: data.val_ratio={val_ratio} leaves no training samples")
        validation += [items[j] for j in sorted(order[:n_val])]
        carved.append((src, [items[j] for j in sorted(order[n_val:])]))
    return carved, validation


def tokenize_all(conversations, tokenizer, template, data: DataConfig, report: DataReport, enable_thinking=None):
    """Tokenize with the loss mask; samples with nothing to learn are errors or counted skips."""
    from honed.data.tokenize import tokenize_conversation

    samples = []
    for conv in conversations:
        try:
            sample = tokenize_conversation(
                conv, tokenizer, template, train_on=data.train_on, max_seq_length=data.max_seq_length, enable_thinking=enable_thinking
            )
        except DataError as err:
            if data.on_bad_record == "error":
                raise
            report.skip(conv.source, str(err).split(": ", 1)[-1])
            continue
        if sample.truncated:
            report.truncated.append(conv.source)
        samples.append(sample)
    return samples


def data_fingerprint(data: DataConfig) -> str:
    """sha256 over every data file's bytes and the data settings: the identity of a run's data."""
    digest = hashlib.sha256(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode())
    for f in _data_files(data):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_token_ids(samples, embedding_rows: int, model_name: str) -> None:
    """Every token id must index the model's input embeddings. An id past them would crash a GPU run
    with a bare device-side assert (or read zeros, where the table lives in host memory:
    engine.host_embedding), so it stops here, at the sample that has it."""
    for sample in samples:
        top = max(sample.input_ids, default=0)
        if top >= embedding_rows:
            raise DataError(
                f"{sample.source}: token id {top} is past the {embedding_rows:,} input embeddings of {model_name}: the tokenizer "
                "does not match the model (or adds tokens the model has no embeddings for); use the model's own tokenizer"
            )


def skipped_lines(report: DataReport, limit: int = 10) -> str:
    """The skipped samples, one `location: reason` a line (the first `limit`, then a count)."""
    lines = [f"  {where}: {reason}" for where, reason in report.skipped[:limit]]
    if len(report.skipped) > limit:
        lines.append(f"  … and {len(report.skipped) - limit} more")
    return "\n".join(lines) or "  (none)"


def build_datasets(data: DataConfig, tokenizer, template, seed: int, enable_thinking=None):
    """Everything `honed train` needs from the data section: (train, validation, report, train_conversations).

    The training Conversations come back too, for strategies that re-draw or re-tokenize them
    (augmentation on the fly), so nothing reads the files a second time."""
    report = DataReport()
    train_convs, val_convs = load_conversations(data, seed, report)
    train = tokenize_all(train_convs, tokenizer, template, data, report, enable_thinking)
    validation = tokenize_all(val_convs, tokenizer, template, data, report, enable_thinking)
    if not train:
        raise DataError("no training samples left after tokenization; skipped:\n" + skipped_lines(report))
    report.n_train, report.n_validation = len(train), len(validation)
    if report.skipped:
        log.warning("skipped %d samples (data.on_bad_record=skip); first: %s: %s", len(report.skipped), *report.skipped[0])
        for where, reason in report.skipped:
            log.debug("skipped %s: %s", where, reason)
    if report.truncated:
        log.warning("%d samples truncated at max_seq_length=%d", len(report.truncated), data.max_seq_length)
    return train, validation, report, train_convs
