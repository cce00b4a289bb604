"""Refusal training data that does not teach over-refusal: `honed data add-refusals`.

A domain model learns to refuse from out-of-domain questions paired with refusals. Too many of
them, or refusals with nothing to contrast them, and it refuses in-domain questions too. So the
mix holds, beside the user's in-domain samples:

- `refusal`: out-of-domain questions (the user's pool first, then a built-in bilingual pool of
  general questions) answered with a refusal drawn from several phrasings in the question's
  language, at a set share of the output;
- `hard_negative`: near-domain questions that look out of scope but belong to the domain,
  answered normally (from the user's file);
- `clarify`: ambiguous questions answered with a clarifying question (from the user's file).

Every record carries `kind` (in_domain / refusal / hard_negative / clarify), the field
`honed eval` reads to measure refusals and false refusals.

>>> from honed.data.conversation import Conversation, Message
>>> qa = [Conversation([Message("user", f"What is test {i}?"), Message("assistant", "A lab test.")]) for i in range(17)]
>>> mix = build_refusal_mix(qa, ratio=0.15, seed=0)
>>> mix.count("refusal"), mix.count("in_domain"), round(mix.refusal_share, 2)
(3, 17, 0.15)
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from honed.data.conversation import Conversation, Message
from honed.data.dataset import inject_system_prompt
from honed.data.quality.rules import detect_language
from honed.errors import ConfigError, DataError

KINDS = ("in_domain", "hard_negative", "clarify", "refusal")
LANGUAGES = ("en", "zh")
# Kinds already in an input file that mean "this sample is a refusal" (older files, eval splits).
REFUSAL_KINDS = frozenset({"refusal", "out_of_domain", "near_domain", "ood"})
# Above this share of refusals a small fine-tune starts refusing in-domain questions too (issue 17:
# 24% refusals gave 8 of 30 false refusals on the quickstart model).
OVER_REFUSAL_SHARE = 0.20


@dataclass(frozen=True)
class PoolQuestion:
    """One out-of-domain question: its text, language, topic and where it came from."""

    text: str
    lang: str
    topic: str = ""
    source: str = "built-in"


@dataclass
class RefusalMix:
    """The mixed samples, what went into them, and what the user should know."""

    conversations: list[Conversation]
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def count(self, kind: str, lang: str | None = None) -> int:
        return sum(1 for c in self.conversations if c.meta.get("kind") == kind and (lang is None or c.meta.get("lang") == lang))

    @property
    def refusal_share(self) -> float:
        return self.count("refusal") / len(self.conversations) if self.conversations else 0.0

    def table(self) -> list[tuple[str, dict[str, int], int]]:
        """(kind, {lang: n}, total) per kind, for a report."""
        rows = []
        for kind in KINDS:
            per_lang = {lang: self.count(kind, lang) for lang in LANGUAGES}
            rows.append((kind, per_lang, self.count(kind)))
        return rows


def language_of(text: str) -> str:
    """'zh' for Chinese text, 'en' for everything else (the refusal languages honed ships).

    >>> language_of("血常规查什么？"), language_of("What does a CBC measure?")
    ('zh', 'en')
    """
    return "zh" if detect_language(text) == "zh" else "en"


def _resource(name: str) -> Path:
    return Path(str(resources.files("honed").joinpath("resources", "refusals", name)))


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def builtin_pool(exclude_topics: set[str] | frozenset[str] = frozenset()) -> list[PoolQuestion]:
    """The shipped general questions (English and Chinese), minus the topics excluded."""
    pool = []
    for lang in LANGUAGES:
        for _, line in _lines(_resource(f"ood_{lang}.txt")):
            topic, _, text = line.partition("\t")
            if topic not in exclude_topics:
                pool.append(PoolQuestion(text.strip(), lang, topic))
    return pool


def builtin_topics() -> list[str]:
    return sorted({q.topic for q in builtin_pool()})


def check_topics(topics: set[str] | frozenset[str] | list[str]) -> None:
    """A `ConfigError` naming `--exclude-topic` and the choices when a topic is not a built-in one."""
    unknown = set(topics) - set(builtin_topics())
    if unknown:
        raise ConfigError(f"--exclude-topic {', '.join(sorted(unknown))}: not a built-in topic; choose from {', '.join(builtin_topics())}")


def builtin_refusals() -> dict[str, list[str]]:
    """The shipped refusal phrasings per language."""
    return {lang: [text for _, text in _lines(_resource(f"refusals_{lang}.txt"))] for lang in LANGUAGES}


def group_by_language(phrasings: list[str]) -> dict[str, list[str]]:
    """User phrasings sorted by their detected language."""
    out: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    for text in phrasings:
        out[language_of(text)].append(text)
    return out


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, non-comment lines of a text file (questions or phrasings)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}")
    lines = [text for _, text in _lines(path)]
    if not lines:
        raise DataError(f"{what}: {path} holds no lines (one item per line, # starts a comment)")
    return lines


def read_pool(path: str | Path) -> list[PoolQuestion]:
    """Out-of-domain questions from a text file (one per line) or any data file honed reads
    (the last user turn of each record)."""
    path = Path(path)
    if path.suffix in (".txt", ""):
        return [PoolQuestion(q, language_of(q), source=str(path)) for q in read_lines(path, "--ood-pool")]
    from honed.data.augment.io import read_conversations

    questions = []
    for conv in read_conversations([path]):
        user = [m.content for m in conv.messages if m.role == "user"]
        if not user:
            raise DataError(f"{conv.source}: an out-of-domain pool record needs a user question")
        questions.append(PoolQuestion(user[-1], language_of(user[-1]), source=str(path)))
    return questions


def _prompt_key(text: str) -> str:
    return " ".join(text.casefold().split())


def _user_text(conv: Conversation) -> str:
    return next((m.content for m in reversed(conv.messages) if m.role == "user"), "")


def _tagged(conv: Conversation, kind: str) -> Conversation:
    meta = {**conv.meta, "kind": kind}
    meta.setdefault("lang", language_of(_user_text(conv)))
    return Conversation(list(conv.messages), conv.source, meta)


def _check_answered(convs: list[Conversation], what: str) -> list[Conversation]:
    for conv in convs:
        if not conv.messages or conv.messages[-1].role != "assistant" or not conv.messages[-1].content.strip():
            raise DataError(f"{conv.source}: {what} records need a user question and an assistant reply")
    return convs


def _language_quota(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Split n refusals across languages in proportion to `shares` (largest remainder)."""
    total = sum(shares.values()) or 1.0
    exact = {lang: n * s / total for lang, s in shares.items()}
    quota = {lang: int(v) for lang, v in exact.items()}
    for lang in sorted(exact, key=lambda k: exact[k] - quota[k], reverse=True)[: n - sum(quota.values())]:
        quota[lang] += 1
    return quota


def build_refusal_mix(in_domain: list[Conversation], *, ratio: float = 0.15,
                      ood_pool: list[PoolQuestion] | None = None, use_builtin_pool: bool = True,
                      exclude_topics: set[str] | frozenset[str] = frozenset(),
                      refusals: dict[str, list[str]] | None = None,
                      hard_negatives: list[Conversation] = (), ambiguous: list[Conversation] = (),
                      language: str = "auto", system_prompt: str | None = None, seed: int = 0) -> RefusalMix:
    """Mix refusals, hard negatives and clarifications into `in_domain` samples.

    `ratio` is the share of refusal samples in the output (existing refusals in the input
    count). `language` auto draws refusals in the languages of the in-domain questions, in the
    same proportions; en or zh uses that language only. `refusals` maps a language to its
    phrasings (default: the built-in ones; a language without user phrasings falls back to them).
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"--ratio {ratio}: give the share of refusals in the output, 0 <= ratio < 1 (e.g. 0.15)")
    if language not in ("auto", *LANGUAGES):
        raise ConfigError(f"--language {language!r}: choose auto, en or zh")
    rng = random.Random(seed)
    mix = RefusalMix([])
    seen = set()
    for conv in in_domain:
        kind = str(conv.meta.get("kind") or "in_domain")
        kind = "refusal" if kind in REFUSAL_KINDS else kind if kind in KINDS else "in_domain"
        mix.conversations.append(_tagged(conv, kind))
        seen.add(_prompt_key(_user_text(conv)))
    for convs, kind in ((_check_answered(list(hard_negatives), "hard-negative"), "hard_negative"),
                        (_check_answered(list(ambiguous), "ambiguous-question"), "clarify")):
        for conv in convs:
            key = _prompt_key(_user_text(conv))
            if key in seen:
                mix.skipped.append((conv.source, f"{kind}: question already in the data"))
                continue
            seen.add(key)
            mix.conversations.append(_tagged(conv, kind))

    existing = mix.count("refusal")
    others = len(mix.conversations) - existing
    wanted = max(0, round(ratio * others / (1.0 - ratio)) - existing) if ratio else 0
    if language == "auto":
        shares = Counter(c.meta["lang"] for c in mix.conversations if c.meta["kind"] != "refusal")
        shares = {lang: float(shares.get(lang, 0)) for lang in LANGUAGES} if shares else {"en": 1.0}
    else:
        shares = {language: 1.0}
    quota = _language_quota(wanted, shares)
    phrasings = builtin_refusals()
    for lang, texts in (refusals or {}).items():
        if texts:
            phrasings[lang] = list(texts)

    pool = list(ood_pool or []) + (builtin_pool(set(exclude_topics)) if use_builtin_pool else [])
    made = 0
    for lang in LANGUAGES:
        if not quota.get(lang):
            continue
        user_qs = [q for q in pool if q.lang == lang and q.source != "built-in"]
        shipped = [q for q in pool if q.lang == lang and q.source == "built-in"]
        rng.shuffle(user_qs)
        rng.shuffle(shipped)
        answers = list(phrasings[lang])
        rng.shuffle(answers)
        chosen = 0
        for q in user_qs + shipped:  # the user's own questions first: they know their domain's edges
            if chosen == quota[lang]:
                break
            key = _prompt_key(q.text)
            if key in seen:
                mix.skipped.append((q.source, f"out-of-domain question already in the data: {q.text[:60]}"))
                continue
            seen.add(key)
            made += 1
            conv = Conversation([Message("user", q.text), Message("assistant", answers[chosen % len(answers)])],
                                source=f"{q.source} (out-of-domain pool)",
                                meta={"id": f"refusal-{lang}-{made:03d}", "kind": "refusal", "lang": lang,
                                      **({"topic": q.topic} if q.topic else {})})
            mix.conversations.append(conv)
            chosen += 1
        if chosen < quota[lang]:
            mix.warnings.append(f"only {chosen} {lang} out-of-domain questions available for the {quota[lang]} {lang} "
                                f"refusals asked; add more with --ood-pool FILE")

    if system_prompt:
        mix.conversations = [inject_system_prompt(c, system_prompt) for c in mix.conversations]
    mix.warnings += over_refusal_warnings(mix)
    return mix


def over_refusal_warnings(mix: RefusalMix) -> list[str]:
    """Why a mix may teach the model to refuse in-domain questions too."""
    warnings = []
    share = mix.refusal_share
    if share > OVER_REFUSAL_SHARE:
        warnings.append(f"refusals are {share:.0%} of the samples (more than {OVER_REFUSAL_SHARE:.0%}): a fine-tune on this "
                        "mix tends to refuse in-domain questions too; lower --ratio (0.10-0.15 is usual)")
    if mix.count("refusal") and not mix.count("hard_negative"):
        warnings.append("no hard negatives: without near-domain questions answered normally (--hard-negatives FILE) the "
                        "model learns to refuse anything that merely sounds unusual, and false refusals rise")
    clarify = [c for c in mix.conversations if c.meta.get("kind") == "clarify"]
    no_question = [c.source for c in clarify if not any(mark in c.messages[-1].content for mark in "?？")]
    if no_question:
        warnings.append(f"{len(no_question)} clarifying replies ask no question (first: {no_question[0]}); a clarifying "
                        "reply should ask what the user means")
    return warnings


def add_refusals(in_path: str | Path, out_path: str | Path, *, overwrite: bool = False,
                 ood_pool_path: str | Path | None = None, refusals_path: str | Path | None = None,
                 refusal_texts: list[str] | None = None, hard_negatives_path: str | Path | None = None,
                 ambiguous_path: str | Path | None = None, **settings) -> RefusalMix:
    """File to file: read the data and the user's files, build the mix, write JSONL atomically.

    Refuses to replace `out_path` unless `overwrite`; `settings` go to `build_refusal_mix`.
    """
    from honed.data.augment.io import read_conversations, write_conversations
    from honed.utils.fs import check_writable

    check_writable(out_path, overwrite)
    if Path(out_path).resolve() == Path(in_path).resolve():
        raise ConfigError(f"--out {out_path} is the input file; write the mix to a new file")
    phrasings = list(refusal_texts or [])
    if refusals_path:
        phrasings += read_lines(refusals_path, "--refusals")
    mix = build_refusal_mix(
        read_conversations([in_path]),
        ood_pool=read_pool(ood_pool_path) if ood_pool_path else None,
        refusals=group_by_language(phrasings) if phrasings else None,
        hard_negatives=read_conversations([hard_negatives_path]) if hard_negatives_path else [],
        ambiguous=read_conversations([ambiguous_path]) if ambiguous_path else [],
        **settings,
    )
    write_conversations(out_path, mix.conversations, overwrite=overwrite)
    return mix
