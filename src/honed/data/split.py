"""Train/validation/test splits: a seeded, disjoint partition, stratified by label when there is one.

Within each label (or the whole set, without labels) the samples are shuffled by the seed and
cut by the ratios with largest-remainder rounding, so every split gets each label's share as
closely as whole samples allow. Each split keeps the file order of its samples.

>>> from honed.data import Conversation, Message
>>> data = [Conversation([Message("user", str(i)), Message("assistant", "x")], meta={"label": "ab"[i % 2]}) for i in range(10)]
>>> parts = split_conversations(data, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
>>> {k: len(v) for k, v in parts.items()}, sorted(c.meta["label"] for c in parts["val"])
({'train': 6, 'val': 2, 'test': 2}, ['a', 'b'])
"""

from __future__ import annotations

import random
from collections import defaultdict

from honed.data.conversation import Conversation
from honed.data.strategies.sampling import largest_remainder
from honed.errors import ConfigError

DEFAULT_RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_ratios(text: str, names: str | None = None) -> dict[str, float]:
    """'0.8,0.1,0.1' (+ 'train,val,test') → {name: ratio}; ratios must be > 0 and sum to 1.

    >>> parse_ratios("8,1,1")
    {'train': 0.8, 'val': 0.1, 'test': 0.1}
    """
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--ratios {text!r}: expected numbers separated by commas, e.g. 0.8,0.1,0.1") from None
    keys = names.split(",") if names else ["train", "val", "test"][: len(values)]
    if len(keys) != len(values) or len(set(keys)) != len(keys):
        raise ConfigError(f"--names {names!r}: need {len(values)} distinct names for --ratios {text!r}")
    if any(v <= 0 for v in values):
        raise ConfigError(f"--ratios {text!r}: every ratio must be > 0")
    total = sum(values)
    if all(v <= 1 for v in values) and abs(total - 1) > 1e-6:
        # Fractions that do not add up are a typo or a misunderstanding; renormalising them would
        # give splits the user never asked for.
        raise ConfigError(f"--ratios {text!r}: the fractions sum to {total:g}, not 1; fix them (e.g. 0.8,0.1,0.1) "
                          "or give parts or percentages (8,1,1 or 80,10,10)")
    # Percentages or parts ("80,10,10", "8,1,1") are normalised: the intent is unambiguous.
    return {k: round(v / total, 10) for k, v in zip(keys, values)}


def split_conversations(convs: list[Conversation], ratios: dict[str, float] | None = None, *, seed: int = 0,
                        stratify_by: str | None = "auto") -> dict[str, list[Conversation]]:
    """{split name: samples}; `stratify_by`: a meta key, None, or "auto" (label when every sample has one)."""
    ratios = ratios or DEFAULT_RATIOS
    if not convs:
        raise ConfigError("split: no samples to split")
    if stratify_by == "auto":
        stratify_by = "label" if all(c.meta.get("label") is not None for c in convs) else None
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(convs):
        if stratify_by is not None and c.meta.get(stratify_by) is None:
            raise ConfigError(f"{c.source}: split stratified by {stratify_by!r} but this sample has no meta[{stratify_by!r}]; "
                              "use --stratify none or add the field")
        groups[str(c.meta.get(stratify_by)) if stratify_by else ""].append(i)
    # Hand-written rather than sklearn's train_test_split(stratify=...): that refuses a label with a
    # single sample and a split smaller than the number of labels, both common in small SFT sets,
    # and splits two ways only. A per-label largest-remainder cut handles any sizes and N splits.
    parts: dict[str, list[int]] = {name: [] for name in ratios}
    for value in sorted(groups):
        members = groups[value]
        random.Random(f"{seed}/split/{value}").shuffle(members)
        counts = largest_remainder(len(members), ratios)
        start = 0
        for name in ratios:  # in the order given, so "train" takes the first cut
            parts[name] += members[start:start + counts[name]]
            start += counts[name]
    return {name: [convs[i] for i in sorted(idx)] for name, idx in parts.items()}
