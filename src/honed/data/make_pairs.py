"""Preference pairs for keeping a model in its domain, built from SFT data with in/out-of-domain marks.

Two kinds of pair (the record's `kind` field, as in the shipped sample data, says which applies):

- `refusal` (records whose `kind` says out of domain: out_of_domain, near_domain, refusal): chosen = the record's refusal, rejected = what a
  model (usually the base) actually answers — an off-scope answer. A model answer that is itself a
  refusal makes no pair (counted).
- `hard_negative` (in_domain records): chosen = the record's answer, rejected = a wrong refusal,
  drawn (seeded) from the file's own refusals in the same language (built-in ones when it has none).

DPO on both lowers out-of-domain answering without teaching the model to refuse what it should answer
— if neither kind outweighs the other: measured on the shipped sample (224 hard negatives against 61
refusal pairs), DPO learned that never refusing wins most pairs. So the kinds are balanced by default
(`balance`, `max_ratio`; `balance_pairs`), and the report counts each kind as made and as written.

>>> recs = [("f:1", {"kind": "in_domain", "messages": [{"role": "user", "content": "What is TSH?"},
...                                                     {"role": "assistant", "content": "A hormone."}]})]
>>> pairs, report = make_pairs(recs)
>>> pairs[0]["chosen"][0]["content"], pairs[0]["kind"], report["hard_negative"]
('A hormone.', 'hard_negative', 1)
"""

from __future__ import annotations

import json
import math
import random
from typing import Callable

from honed.data.conversation import Conversation
from honed.data.kinds import SHOULD_REFUSE, domain_split
from honed.errors import DataError

PAIR_KINDS = ("refusal", "hard_negative")
BALANCE_MODES = ("downsample", "upsample", "none")
# Past this many pairs of one kind per pair of the other, a warning says the result may just learn the majority.
DOMINANCE_WARNING_RATIO = 2.0
FALLBACK_REFUSALS = {
    "en": "Sorry, that is outside my scope, so I can't answer it.",
    "zh": "抱歉，这个问题超出了我的范围，我无法回答。",
}


def _lang(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _split(record: dict, split_field: str) -> str:
    return domain_split(record.get(split_field, "in_domain")) or "in_domain"


def make_pairs(records, *, split_field: str = "kind", answer: Callable[[list[Conversation]], list[str]] | None = None,
               is_refusal: Callable[[str], bool] | None = None, seed: int = 0, balance: str = "upsample",
               max_ratio: float = 1.0) -> tuple[list[dict], dict]:
    """(pair records in the OpenAI-messages layout, report). `records` yields (location, record);
    `answer` answers prompt conversations (e.g. the base model's greedy replies); without it no
    refusal pairs are made (counted as `refusal_without_model`). The pairs are then balanced
    (`balance_pairs`); the report holds `made` and `written` per kind and `warnings`."""
    from honed.data.prompts import prompt_conversation

    rng = random.Random(seed)
    prompts, references, kinds, wheres, records_kept = [], [], [], [], []
    for where, record in records:
        conv, reference = prompt_conversation(record, where)
        if not reference or not str(reference).strip():
            raise DataError(f"{where}: the record has no answer to build a pair from (its last turn must be the assistant's)")
        prompts.append(conv)
        references.append(str(reference))
        kinds.append("refusal" if _split(record, split_field) in SHOULD_REFUSE else "hard_negative")
        wheres.append(where)
        records_kept.append(record)
    refusals: dict[str, list[str]] = {}
    for ref, kind in zip(references, kinds):
        if kind == "refusal":
            refusals.setdefault(_lang(ref), []).append(ref)
    counts = {"hard_negative": 0, "refusal": 0, "model_also_refused": 0, "refusal_without_model": 0}
    refusal_idx = [i for i, k in enumerate(kinds) if k == "refusal"]
    replies = dict(zip(refusal_idx, answer([prompts[i] for i in refusal_idx]))) if answer is not None and refusal_idx else {}
    pairs = []
    for i, (conv, reference, kind) in enumerate(zip(prompts, references, kinds)):
        if kind == "refusal":
            if answer is None:
                counts["refusal_without_model"] += 1
                continue
            reply = replies[i].strip()
            if not reply or (is_refusal is not None and is_refusal(reply)):
                counts["model_also_refused"] += 1
                continue
            chosen, rejected = reference, reply
        else:
            lang = records_kept[i].get("lang") or _lang(conv.messages[-1].content)
            pool = refusals.get(lang) or [FALLBACK_REFUSALS.get(lang, FALLBACK_REFUSALS["en"])]
            chosen, rejected = reference, rng.choice(pool)
        counts[kind] += 1
        extra = {k: records_kept[i][k] for k in ("id", "lang") if k in records_kept[i]}
        pairs.append({"prompt": conv.to_dict()["messages"], "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}], "kind": kind, "source": wheres[i], **extra})
    pairs, balanced = balance_pairs(pairs, mode=balance, max_ratio=max_ratio, seed=seed)
    counts.update(balanced)
    counts.update({kind: balanced["written"][kind] for kind in PAIR_KINDS})
    return pairs, counts


def balance_pairs(pairs: list[dict], *, mode: str = "upsample", max_ratio: float = 1.0, seed: int = 0) -> tuple[list[dict], dict]:
    """(pairs, report): at most `max_ratio` pairs of the larger kind per pair of the smaller one.

    `upsample` (default: every pair made is kept, and it measured best on the shipped sample, see
    README) repeats the smaller kind's pairs (every one `k` times, then a seeded few once more)
    after the originals — a `val_ratio` split of the file can then hold copies of training pairs;
    `downsample` keeps a seeded random subset of the larger kind (no pair is seen twice);
    `none` writes what was made. A kind that was not made at all cannot be balanced: the pairs
    are kept and a warning says so. The report: `balance`, `made` and `written` per kind,
    `dropped` / `repeated` (pairs), `warnings`.

    >>> p = [{"kind": "hard_negative"}] * 3 + [{"kind": "refusal"}]
    >>> out, report = balance_pairs(p, mode="downsample", max_ratio=2)
    >>> report["written"], report["dropped"]
    ({'refusal': 1, 'hard_negative': 2}, 1)
    """
    if mode not in BALANCE_MODES:
        raise DataError(f"balance: {mode!r} is not one of {', '.join(BALANCE_MODES)}")
    if not max_ratio >= 1.0:
        raise DataError(f"max_ratio: {max_ratio} must be at least 1 (pairs of the larger kind per pair of the smaller one)")
    rng = random.Random(seed)
    by_kind = {kind: [i for i, p in enumerate(pairs) if p.get("kind") == kind] for kind in PAIR_KINDS}
    made = {kind: len(idx) for kind, idx in by_kind.items()}
    small, large = sorted(PAIR_KINDS, key=lambda k: (made[k], k == "hard_negative"))
    out, dropped, repeated, warnings = list(pairs), 0, 0, []
    if mode != "none" and made[small] and made[large] > max_ratio * made[small]:
        if mode == "downsample":
            drop = set(by_kind[large]) - set(rng.sample(by_kind[large], int(max_ratio * made[small])))
            out = [p for i, p in enumerate(pairs) if i not in drop]
            dropped = len(pairs) - len(out)
        else:
            target = math.ceil(made[large] / max_ratio)
            whole, rest = divmod(target - made[small], made[small])
            extra = by_kind[small] * whole + sorted(rng.sample(by_kind[small], rest))
            out = out + [dict(pairs[i]) for i in extra]
            repeated = len(extra)
    written = {kind: sum(p.get("kind") == kind for p in out) for kind in PAIR_KINDS}
    if out and not all(written.values()):
        missing = "refusal" if not written["refusal"] else "hard_negative"
        warnings.append(f"no {missing} pairs: DPO on {'hard negatives' if missing == 'refusal' else 'refusal pairs'} alone "
                        f"teaches the model to {'never refuse' if missing == 'refusal' else 'refuse everything'}"
                        + (" (give --model to make refusal pairs)" if missing == "refusal" else ""))
    elif out and max(written.values()) > DOMINANCE_WARNING_RATIO * min(written.values()):
        big, other = sorted(PAIR_KINDS, key=written.get, reverse=True)
        warnings.append(f"{written[big]} {big} pairs against {written[other]} {other}: "
                        f"DPO may learn {'never to refuse' if big == 'hard_negative' else 'to refuse everything'}; "
                        f"balance them (--balance downsample|upsample)")
    return out, {"balance": mode, "made": made, "written": written, "dropped": dropped, "repeated": repeated, "warnings": warnings}


def as_kto(pairs: list[dict]) -> list[dict]:
    """Each pair as two unpaired KTO records: the chosen answer desirable, the rejected one not.

    >>> as_kto([{"prompt": [], "chosen": ["a"], "rejected": ["b"], "kind": "refusal"}])[1]["label"]
    False
    """
    out = []
    for p in pairs:
        rest = {k: v for k, v in p.items() if k not in ("chosen", "rejected")}
        out += [{**rest, "completion": p["chosen"], "label": True}, {**rest, "completion": p["rejected"], "label": False}]
    return out


def write_pairs(pairs: list[dict], path, *, overwrite: bool = False) -> None:
    """JSONL, written atomically; an existing file is kept unless `overwrite`."""
    from honed.utils.fs import check_writable, write_text_atomic

    check_writable(path, overwrite)
    write_text_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
