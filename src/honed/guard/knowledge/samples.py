"""`honed data add-context`: Q&A samples into retrieval-augmented training samples.

(It lives beside the knowledge base, not in `honed.data`, because data sits below guard in the
layers: the training data is shaped here from what the KB retrieves.)

Each in-domain sample gets the knowledge-base passages that support its answer, mixed with
distractor passages in a shuffled, numbered context (the layout `honed chat --kb` uses), and its
answer cites the supporting passage as [n]. For a share of samples (`unanswerable_ratio`) the
supporting passages are left out and the answer becomes "the context does not contain the
answer" in the question's language, so the model learns to answer from the context and to say
when it cannot. Samples marked `"kind": "out_of_domain"` keep their refusal and get the passages
their question retrieves, as they would at inference.

Distractors are drawn at random from chunks that are NOT among the best matches of the question
or of question + answer, so they are unlikely to hold the answer themselves.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from honed.data.conversation import Message
from honed.data.readers import read_records
from honed.errors import ConfigError, DataError
from honed.guard.knowledge.prompt import NO_ANSWER, build_rag_messages, question_language
from honed.utils.fs import check_writable, write_text_atomic

EXCLUDE_TOP = 10  # best matches never used as distractors


@dataclass
class ContextReport:
    """Counts of what add-context wrote, and the samples it could not use (where, why)."""

    samples: int = 0
    answerable: int = 0
    unanswerable: int = 0
    out_of_domain: int = 0
    weak_support: list[str] = field(default_factory=list)  # where: the answer shares few words with its passage
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "answerable": self.answerable, "unanswerable": self.unanswerable,
                "out_of_domain": self.out_of_domain, "weak_support": len(self.weak_support), "skipped": len(self.skipped)}


def _words(text: str) -> set[str]:
    """Latin words and Chinese character pairs: enough to tell whether a passage holds an answer."""
    # Numbers whole (4.0, 150–450 pieces), words of 3+ letters without a plural s.
    words = {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in re.findall(r"\d+(?:[.,]\d+)*|[a-z]{3,}", text.lower())}
    cjk = re.sub(r"[^\u4e00-\u9fff]", "", text)
    return words | {cjk[i : i + 2] for i in range(len(cjk) - 1)}


def answer_support(answer: str, passage: str) -> float:
    """Share of the answer's words (Chinese: character pairs) found in the passage.

    >>> answer_support("Fasting is not needed", "HbA1c: fasting is not needed.")
    1.0
    """
    want = _words(answer)
    return len(want & _words(passage)) / len(want) if want else 0.0


_CJK_END = re.compile(r"[\u3400-\u9fff。！？]$")


def cite(answer: str, numbers: list[int]) -> str:
    """The answer with its sources appended: `… text. [2]`, no space after Chinese text."""
    marks = "".join(f"[{n}]" for n in sorted(numbers))
    answer = answer.rstrip()
    return answer + ("" if _CJK_END.search(answer) else " ") + marks


def _question_answer(conv, where: str) -> tuple[int, int]:
    """Indices of the last assistant turn and the user turn before it."""
    roles = conv.roles()
    for a in range(len(roles) - 1, 0, -1):
        if roles[a] == "assistant" and roles[a - 1] == "user":
            return a - 1, a
    raise DataError(f"{where}: no user question followed by an assistant answer")


def _search_batched(kb, queries: list[str], batch: int = 64) -> list:
    """The top EXCLUDE_TOP passages of each query, with a progress bar on long inputs."""
    from rich.progress import track

    starts = range(0, len(queries), batch)
    found = []
    for start in track(starts, description="retrieving", disable=len(starts) < 3, transient=True):
        found += kb.search_many(queries[start : start + batch], k=EXCLUDE_TOP)
    return found


def add_context(kb, input_path, output_path, *, distractors: int = 3, unanswerable_ratio: float = 0.2, support: int = 1,
                retrieve_by: str = "question+answer", cite_sources: bool = True, seed: int = 0, overwrite: bool = False,
                min_support: float = 0.3, unsupported: str = "keep") -> ContextReport:
    """Write RAG training samples (OpenAI messages JSONL) built from `input_path` and the KnowledgeBase `kb`.

    An answer sharing less than `min_support` of its words with its best passage is "unsupported"
    (the KB may not cover it): `unsupported` keeps it as it is, drops it (reported as skipped), or
    makes it an unanswerable sample.
    """
    from honed.data.formats import detect_format, to_conversation

    if not 0.0 <= unanswerable_ratio <= 1.0:
        raise ConfigError(f"--unanswerable-ratio {unanswerable_ratio}: use a share between 0 and 1")
    if distractors < 0 or support < 1:
        raise ConfigError("--distractors must be >= 0 and --support >= 1")
    if unsupported not in ("keep", "drop", "unanswerable"):
        raise ConfigError(f"--unsupported {unsupported!r}: use keep, drop or unanswerable")
    if retrieve_by not in ("question", "question+answer"):
        raise ConfigError(f"--retrieve-by {retrieve_by!r}: use question or question+answer")
    output_path = check_writable(output_path, overwrite)
    pool = kb.passages()
    if len(pool) < support + distractors:
        raise DataError(f"{kb.folder}: {len(pool)} chunks; add-context needs at least {support + distractors} (--support + --distractors)")
    rng = random.Random(seed)
    report, lines = ContextReport(), []
    samples = []
    for where, record in read_records(input_path):
        try:
            conv = to_conversation(record, detect_format(record, where), where)
            u, a = _question_answer(conv, where)
            if not conv.messages[u].content.strip():
                raise DataError(f"{where}: the question is empty")
        except DataError as err:
            report.skipped.append((where, str(err)))
            continue
        samples.append((where, conv, u, a))
    # Retrieval for all samples first: the embedder runs in batches.
    questions = [conv.messages[u].content for _, conv, u, _ in samples]
    near_all = _search_batched(kb, questions)
    by_answer = _search_batched(kb, [f"{q}\n{conv.messages[a].content}" for q, (_, conv, _, a) in zip(questions, samples)]) if retrieve_by == "question+answer" else near_all
    for (where, conv, u, a), near, best in zip(samples, near_all, by_answer):
        question, answer = conv.messages[u].content, conv.messages[a].content
        lang = question_language(question)
        out_of_domain = conv.meta.get("kind") == "out_of_domain"
        unanswerable = not out_of_domain and rng.random() < unanswerable_ratio
        if out_of_domain:
            chosen, numbers = near[: support + distractors], []
        else:
            supporting = best[:support]
            share = answer_support(answer, " ".join(p.text for p in supporting))
            if share < min_support:
                report.weak_support.append(where)
                if unsupported == "drop":
                    report.skipped.append((where, f"answer not found in the knowledge base ({share:.2f} of its words in the best passage)"))
                    continue
                unanswerable = unanswerable or unsupported == "unanswerable"
            banned = {p.chunk_id for p in near + best}
            others = [p for p in pool if p.chunk_id not in banned]
            if len(others) < support + distractors:  # a tiny KB: fall back to anything but the supporting chunks
                others = [p for p in pool if p.chunk_id not in {s.chunk_id for s in supporting}]
            picked = rng.sample(others, min(len(others), distractors + (len(supporting) if unanswerable else 0)))
            chosen = picked if unanswerable else supporting + picked
            rng.shuffle(chosen)
            support_ids = {p.chunk_id for p in supporting}
            numbers = [i for i, p in enumerate(chosen, 1) if not unanswerable and p.chunk_id in support_ids]
        if unanswerable:
            new_answer = NO_ANSWER[lang]
        elif out_of_domain or not cite_sources:
            new_answer = answer
        else:
            new_answer = cite(answer, numbers)
        head = build_rag_messages(conv.messages[: u + 1], chosen, language=lang)
        messages = [*head, *conv.messages[u + 1 : a], Message("assistant", new_answer)]
        row = {**conv.meta, "messages": [{"role": m.role, "content": m.content} for m in messages],
               "rag": {"answerable": not (unanswerable or out_of_domain), "sources": [p.citation(full=True) for p in chosen], "support": numbers}}
        lines.append(json.dumps(row, ensure_ascii=False))
        report.samples += 1
        report.out_of_domain += out_of_domain
        report.unanswerable += unanswerable
        report.answerable += not (unanswerable or out_of_domain)
    if not lines:
        raise DataError(f"{input_path}: no usable Q&A samples ({len(report.skipped)} skipped)")
    write_text_atomic(output_path, "\n".join(lines) + "\n")
    return report
