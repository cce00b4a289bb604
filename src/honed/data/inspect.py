"""What `honed data inspect` shows: a rendered sample with its trained spans, and length statistics.

>>> spans = trained_spans([5, 6, 7], [-100, 6, 7])
>>> spans
[([5], False), ([6, 7], True)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from honed.config import TrainConfig
from honed.data.dataset import DataReport, load_conversations, tokenize_all


@dataclass
class DataInspection:
    formats: dict[str, str]
    n_train: int
    n_validation: int
    lengths: list[int]
    max_seq_length: int
    n_over_max: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    samples: list = field(default_factory=list)  # TokenizedSample, untruncated

    def percentiles(self) -> dict[str, int]:
        arr = np.asarray(self.lengths)
        return {k: int(np.percentile(arr, q)) for k, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}

    def histogram(self, bins: int = 10) -> list[tuple[int, int, int]]:
        counts, edges = np.histogram(self.lengths, bins=bins)
        return [(int(edges[i]), int(edges[i + 1]), int(c)) for i, c in enumerate(counts)]

    def to_dict(self) -> dict:
        return {
            "formats": self.formats,
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "max_seq_length": self.max_seq_length,
            "would_truncate": self.n_over_max,
            "length_percentiles": self.percentiles(),
            "length_histogram": self.histogram(),
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
        }


def trained_spans(input_ids: list[int], labels: list[int]) -> list[tuple[list[int], bool]]:
    """Group consecutive tokens by whether they are trained (label != -100)."""
    spans: list[tuple[list[int], bool]] = []
    for tok, lab in zip(input_ids, labels):
        trained = lab != -100
        if spans and spans[-1][1] == trained:
            spans[-1][0].append(tok)
        else:
            spans.append(([tok], trained))
    return spans


def inspect_data(cfg: TrainConfig, tokenizer, model_type: str | None = None) -> DataInspection:
    """Load and tokenize the config's data without truncation, to see what training would get.

    `tokenizer` is the config's model's (`honed.model.load.load_tokenizer(cfg.model)`); `model_type`
    (config.json) picks the built-in template when the tokenizer has none and `model.template` is auto.

    >>> found = inspect_data(cfg, load_tokenizer(cfg.model), "qwen2")  # doctest: +SKIP
    """
    from honed.data.templates import get_template

    template = get_template(cfg.model.template, tokenizer, model_type)
    report = DataReport()
    untruncated = cfg.data.model_copy(update={"max_seq_length": 10**9})
    if getattr(cfg, "objective", "sft") == "sft":
        train, val = load_conversations(cfg.data, cfg.training.seed, report)
        samples = tokenize_all(train + val, tokenizer, template, untruncated, report, cfg.model.enable_thinking)
    else:  # preference data: each pair (or KTO sample) shows as its two sequences, sample 2k and 2k+1
        from honed.data.preference_batch import load_preference_items, tokenize_preference_items

        train, val = load_preference_items(cfg.data, cfg.training.seed, report, kto=cfg.objective == "kto")
        items = tokenize_preference_items(train + val, tokenizer, template, untruncated, report, cfg.model.enable_thinking)
        samples = [s for item in items for s in item.sequences]
    lengths = [len(s.input_ids) for s in samples]
    return DataInspection(
        formats=report.formats,
        n_train=len(train),
        n_validation=len(val),
        lengths=lengths,
        max_seq_length=cfg.data.max_seq_length,
        n_over_max=sum(n > cfg.data.max_seq_length for n in lengths),
        skipped=report.skipped,
        samples=samples,
    )
