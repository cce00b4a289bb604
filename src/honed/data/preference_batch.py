"""Preference data from the `data:` section to packed micro-batches.

Loading mirrors SFT (`honed.data.dataset`): the scope prompt goes first, files mix by weight, a
validation split is carved per file, bad records are errors or counted skips. Tokenization is the
SFT one (`tokenize_conversation`, assistant-only labels): only the final answer is scored
(`train_on: last_assistant`), so earlier assistant turns of a multi-turn prompt are context.

Batch layout: the items of a micro-batch go in as consecutive sequences, so sequence 2k is pair k's
chosen answer and 2k+1 its rejected one (for KTO: 2k is sample k, 2k+1 its mismatched prompt +
answer used for the KL estimate). `batch["sample_index"]` says which sequence owns each token;
`sequence_logps` sums token log-probs per sequence from it. With packing, a pair's two sequences
sit in the same row, so one forward scores both.

>>> from honed.data.tokenize import TokenizedSample
>>> c = TokenizedSample([1, 2, 3], [-100, 2, 3], "x:1", False, 2)
>>> r = TokenizedSample([1, 2, 4, 5], [-100, 2, 4, 5], "x:1", False, 3)
>>> batch = collate_pairs([[TokenizedPair(c, r, "x:1")]], pad_id=0, packing=True)
>>> batch["sample_index"].tolist()
[[0, 0, 0, 1, 1, 1, 1]]
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from honed.config import DataConfig, DataSource
from honed.data.conversation import Conversation
from honed.data.dataset import DataReport, carve_validation, inject_system_prompt, scope_prompt, weighted
from honed.data.packing import collate
from honed.data.preference import KTO_FORMAT, KTOSample, PreferencePair, detect_preference_format, to_kto_sample, to_preference_pair
from honed.data.readers import read_records
from honed.data.tokenize import IGNORE_INDEX, TokenizedSample, tokenize_conversation
from honed.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TokenizedPair:
    """Chosen and rejected token ids of one pair (same prompt ids), and its reference log-probs once known."""

    chosen: TokenizedSample
    rejected: TokenizedSample
    source: str
    ref_logps: tuple[float, float] | None = None  # (chosen, rejected) summed log-probs under the reference

    @property
    def sequences(self) -> tuple[TokenizedSample, TokenizedSample]:
        return self.chosen, self.rejected

    def __len__(self) -> int:  # tokens it adds to a packed row
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class TokenizedKTO:
    """One KTO sample and its mismatched sequence (this prompt, another sample's answer) for the KL estimate."""

    sample: TokenizedSample
    mismatched: TokenizedSample
    desirable: bool
    source: str
    ref_logps: tuple[float, float] | None = None  # (sample, mismatched) under the reference

    @property
    def sequences(self) -> tuple[TokenizedSample, TokenizedSample]:
        return self.sample, self.mismatched

    def __len__(self) -> int:
        return len(self.sample.input_ids) + len(self.mismatched.input_ids)


def load_preference_source(source: DataSource, on_bad_record: str, report: DataReport, prompt: str | None, kto: bool) -> list:
    """One file → PreferencePairs (or KTOSamples), with the scope prompt first; bad records error or are counted."""
    items = []
    for where, record in read_records(source.path):
        try:
            fmt = detect_preference_format(record, where)
            if kto != (fmt == KTO_FORMAT):
                want = "prompt/completion/label records (KTO)" if kto else "prompt/chosen/rejected pairs"
                raise DataError(f"{where}: this objective trains on {want}; this record is {'KTO' if fmt == KTO_FORMAT else 'a pair'}")
            item = to_kto_sample(record, where) if kto else to_preference_pair(record, where, fmt)
            if prompt:
                item.prompt = inject_system_prompt(Conversation(list(item.prompt), source=where), prompt).messages
            items.append(item)
        except DataError as err:
            if on_bad_record == "error":
                raise DataError(f"{err} (set data.on_bad_record: skip to skip and count such records)") from None
            report.skip(where, str(err).split(": ", 1)[-1])
    report.formats[source.path] = "kto" if kto else "pairs"
    report.loaded[source.path] = len(items)
    if not items:
        raise DataError(f"{source.path}: no usable records (empty file, or every record was skipped)")
    return items


def load_preference_items(data: DataConfig, seed: int, report: DataReport, *, kto: bool = False) -> tuple[list, list]:
    """Train and validation items of a data config (validation carved per file, before weighting)."""
    rng = random.Random(seed)
    prompt = scope_prompt(data)

    def own_prompt(src: DataSource) -> str | None:  # a file's own system_prompt wins, as in SFT
        return src.system_prompt if src.system_prompt is not None else prompt

    per_source = [(src, load_preference_source(src, data.on_bad_record, report, own_prompt(src), kto)) for src in data.train]
    validation = [x for src in data.validation for x in load_preference_source(src, data.on_bad_record, report, own_prompt(src), kto)]
    if not validation and data.val_ratio > 0:
        per_source, validation = carve_validation(per_source, data.val_ratio, rng)
    train = [x for src, items in per_source for x in weighted(src, items, rng)]
    return train, validation


def tokenize_pair(pair: PreferencePair, tokenizer, template, *, max_seq_length: int | None, enable_thinking=None) -> TokenizedPair:
    """Both answers after the same prompt; only the final answer (and its end-of-turn) is labelled."""
    kw = dict(train_on="last_assistant", max_seq_length=max_seq_length, enable_thinking=enable_thinking)
    chosen = tokenize_conversation(pair.chosen_conversation(), tokenizer, template, **kw)
    rejected = tokenize_conversation(pair.rejected_conversation(), tokenizer, template, **kw)
    if chosen.input_ids == rejected.input_ids:
        raise DataError(f"{pair.source}: chosen and rejected are the same text after tokenization; nothing to prefer")
    return TokenizedPair(chosen, rejected, pair.source)


def _prompt_length(sample: TokenizedSample) -> int:
    """Tokens before the first labelled one: the prompt (the answer starts where labels start)."""
    return next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)


def mismatch(prompt_of: TokenizedSample, answer_of: TokenizedSample, max_seq_length: int | None) -> TokenizedSample:
    """`prompt_of`'s prompt followed by `answer_of`'s answer (token level: answers are tokenized apart from prompts)."""
    p, a = _prompt_length(prompt_of), _prompt_length(answer_of)
    ids = prompt_of.input_ids[:p] + answer_of.input_ids[a:]
    labels = [IGNORE_INDEX] * p + answer_of.labels[a:]
    if max_seq_length is not None:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    n = len(labels) - labels.count(IGNORE_INDEX)
    return TokenizedSample(ids, labels, prompt_of.source, len(ids) < p + len(answer_of.input_ids) - a, n)


def tokenize_preference_items(items: list, tokenizer, template, data: DataConfig, report: DataReport, enable_thinking=None) -> list:
    """Tokenize pairs (or KTO samples); records with nothing to score are errors or counted skips.

    A KTO sample's mismatched sequence takes the answer of the nearest sample before it with another
    prompt (wrapping around), a fixed pairing so cached reference log-probs stay valid on resume."""
    out = []
    for item in items:
        try:
            if isinstance(item, KTOSample):
                sample = tokenize_conversation(item.conversation(), tokenizer, template, train_on="last_assistant",
                                               max_seq_length=data.max_seq_length, enable_thinking=enable_thinking)
                out.append(TokenizedKTO(sample, sample, item.desirable, item.source))
            else:
                out.append(tokenize_pair(item, tokenizer, template, max_seq_length=data.max_seq_length, enable_thinking=enable_thinking))
        except DataError as err:
            if data.on_bad_record == "error":
                raise
            report.skip(item.source, str(err).split(": ", 1)[-1])
            continue
        if any(s.truncated for s in out[-1].sequences):
            report.truncated.append(item.source)
    kto = [x for x in out if isinstance(x, TokenizedKTO)]
    prompts = [tuple(x.sample.input_ids[: _prompt_length(x.sample)]) for x in kto]
    for i, x in enumerate(kto):
        # The nearest earlier sample with another prompt (files often hold both answers of a prompt side by side).
        j = next((i - k for k in range(1, len(kto)) if prompts[i - k] != prompts[i]), i - 1)
        x.mismatched = mismatch(x.sample, kto[j].sample, data.max_seq_length)
    return out


def collate_pairs(rows, *, pad_id: int, packing: bool, padding_free: bool = False) -> dict[str, torch.Tensor]:
    """Rows of pairs (or KTO items) → one packed micro-batch; sequence 2k/2k+1 = item k's two sequences.

    Adds `ref_logps` (float32, one per sequence) when every item has cached reference log-probs, and
    `desirable` (KTO: 1/0 per item)."""
    items = [x for row in rows for x in row]
    batch = collate([[s for x in row for s in x.sequences] for row in rows], packing=packing, pad_id=pad_id, padding_free=padding_free)
    if items and all(x.ref_logps is not None for x in items):
        batch["ref_logps"] = torch.tensor([v for x in items for v in x.ref_logps], dtype=torch.float32)
    if items and isinstance(items[0], TokenizedKTO):
        batch["desirable"] = torch.tensor([x.desirable for x in items], dtype=torch.bool)
    return batch


def sequence_logps(token_logps: torch.Tensor, batch: dict[str, torch.Tensor], n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, scored tokens) of each sequence of the micro-batch.

    `token_logps` is [rows, seq_len - 1]: the log-prob of labels[:, 1:] (0 where the label is -100).
    """
    owner = batch["sample_index"][:, 1:]
    scored = (batch["labels"][:, 1:] != IGNORE_INDEX) & (owner >= 0)
    sums = torch.zeros(n_sequences, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, owner[scored], token_logps[scored])
    counts = torch.zeros(n_sequences, dtype=torch.long, device=owner.device).index_add(0, owner[scored], torch.ones_like(owner[scored]))
    return sums, counts
