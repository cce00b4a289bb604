"""Fit a refusal calibration (`honed guard fit-refusal`): the refusal openings of a training mix, and
the P(refuse) threshold that best separates a validation file's questions to answer from those to
refuse. What the calibration does at decode time is in `honed.infer.refusal_calibration`.

>>> cal = fit_calibration(bot, ["mix.jsonl"], ["val.jsonl"], system_prompt=scope)   # doctest: +SKIP
>>> cal.save("runs/lora/refusal_calibration.json")                                # doctest: +SKIP
"""

from __future__ import annotations

from honed.data.conversation import Conversation
from honed.data.tokenize import render_prompt_ids
from honed.errors import ConfigError, DataError
from honed.infer.refusal_calibration import RefusalCalibration, RefusalOpenings, refusal_probabilities, tokenizer_fingerprint


def replies_by_kind(paths) -> tuple[list[str], list[str]]:
    """(refusals, answers): the final replies of a training data mix's records, split by `kind` —
    `refusal` / `out_of_domain` / `near_domain` records are refusals (as `honed data add-refusals`
    writes them, each phrasing the mix drew from its pool), every other record is an answer."""
    from honed.data.augment.io import read_conversations
    from honed.data.kinds import SHOULD_REFUSE, domain_split

    refusals, answers = [], []
    for conv in read_conversations(paths):
        reply = conv.messages[-1].content if conv.messages and conv.messages[-1].role == "assistant" else None
        if reply:
            (refusals if domain_split(conv.meta.get("kind")) in SHOULD_REFUSE else answers).append(reply)
    return refusals, answers


def validation_questions(paths, system_prompt: str | None) -> tuple[list[Conversation], list[str], int]:
    """(questions under the scope prompt, their splits, how many records had no usable `kind`)."""
    from honed.data.augment.io import read_conversations
    from honed.data.dataset import inject_system_prompt
    from honed.data.kinds import domain_split

    questions, splits, unmarked = [], [], 0
    for conv in read_conversations(paths, allow_empty_answers=True):
        split = domain_split(conv.meta.get("kind"))
        if split is None:
            unmarked += 1
            continue
        turns = conv.messages[:-1] if conv.messages[-1].role == "assistant" else conv.messages
        questions.append(inject_system_prompt(Conversation(turns, source=conv.source), system_prompt))
        splits.append(split)
    return questions, splits, unmarked


def fit_calibration(bot, train, validation=(), *, system_prompt: str | None = None, min_tokens: int = 1, max_tokens: int = 8,
                    max_false_refusal: float | None = None, threshold: float | None = None) -> RefusalCalibration:
    """Openings from the training mix `train` (files), threshold from the validation files' questions
    (their `kind` says which should be answered and which refused; records without one are counted
    and left out), scored with `bot` under `system_prompt` (the scope prompt the model was trained with).

    `threshold` fixes the threshold instead (validation files are then optional: their P(refuse)
    per split is still recorded); 1.0 bans every opening for every question not certain to refuse.
    """
    from honed.data.kinds import SHOULD_REFUSE

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: a P(refuse) threshold is in [0, 1]")
    if threshold is None and not validation:
        raise ConfigError("fitting the threshold needs validation questions (a file whose records' `kind` says which "
                          "to answer and which to refuse), or a fixed threshold")
    refusals, answers = replies_by_kind(train)
    if not refusals:
        raise DataError(f"{', '.join(map(str, train))}: no refusal records to take the refusal openings from; the training mix "
                        "needs records with `kind: refusal` / `out_of_domain` and their refusals (as `honed data add-refusals` writes them)")
    openings = RefusalOpenings.from_replies(refusals, answers, bot.tokenizer, bot.template, min_tokens=min_tokens, max_tokens=max_tokens)
    questions, splits, unmarked = validation_questions(validation, system_prompt) if validation else ([], [], 0)
    if validation and not questions:
        raise DataError(f"{', '.join(map(str, validation))}: no record has a `kind` (in_domain, hard_negative, out_of_domain, "
                        f"near_domain) to say whether it should be answered or refused ({unmarked} records without one)")
    scores = refusal_probabilities(bot, [render_prompt_ids(c, bot.tokenizer, bot.template) for c in questions], openings.ids)
    by_split: dict[str, list[float]] = {}
    for split, score in zip(splits, scores):
        by_split.setdefault(split, []).append(round(score, 6))
    if threshold is None:
        try:
            threshold = fit_threshold([x for s, x in zip(splits, scores) if s not in SHOULD_REFUSE],
                                      [x for s, x in zip(splits, scores) if s in SHOULD_REFUSE], max_false_refusal=max_false_refusal)
        except DataError as err:
            raise DataError(f"{', '.join(map(str, validation))}: {err} (found {sorted(by_split)})") from None
        rule = "Youden's J" if max_false_refusal is None else f"max false refusal {max_false_refusal}"
    else:
        rule = "fixed"
    fitted = {"train": [str(p) for p in train], "validation": [str(p) for p in validation], "rule": rule,
              "p_refuse": by_split, "validation_auroc": validation_auroc(splits, scores), "unmarked_validation_records": unmarked,
              "dropped_refusals": openings.dropped, "model": str(getattr(bot.model, "name_or_path", "") or "")}
    return RefusalCalibration([list(o) for o in openings.ids], openings.texts, threshold,
                              tokenizer_fingerprint(bot.tokenizer, bot.template), fitted)


def validation_auroc(splits: list[str], scores: list[float]) -> float | None:
    """How well P(refuse) ranks the should-refuse questions above the others (None without both)."""
    from honed.data.kinds import SHOULD_REFUSE
    from honed.eval.metrics import binary_auroc

    auroc = binary_auroc([s in SHOULD_REFUSE for s in splits], scores)
    return None if auroc is None else round(auroc, 6)


def fit_threshold(answer_scores: list[float], refuse_scores: list[float], *, max_false_refusal: float | None = None) -> float:
    """The P(refuse) threshold fitted on validation questions that should be answered and refused.

    Candidates are the midpoints between neighbouring distinct scores (and just outside both
    ends), so the threshold never sits on a measured score. Without `max_false_refusal`: the one
    that maximises Youden's J = (share of should-refuse scores >= t) - (share of should-answer
    scores >= t), the lowest on ties. With it (like the gate's target pass rate): the lowest
    threshold that leaves at most that share of should-answer scores at or above it.

    >>> fit_threshold([0.1, 0.2, 0.6], [0.5, 0.9])
    0.35
    >>> fit_threshold([0.1, 0.2, 0.6], [0.5, 0.9], max_false_refusal=0.0)
    0.75
    """
    if not answer_scores or (max_false_refusal is None and not refuse_scores):
        raise DataError("fitting a refusal threshold needs validation questions that should be answered "
                        "and, without a false-refusal budget, questions that should be refused")
    if max_false_refusal is not None and not 0.0 <= max_false_refusal < 1.0:
        raise ConfigError(f"max_false_refusal={max_false_refusal}: give a share in [0, 1), e.g. 0.05")
    points = sorted(set(answer_scores) | set(refuse_scores))
    candidates = [points[0] / 2] + [(a + b) / 2 for a, b in zip(points, points[1:])] + [(points[-1] + 1.0) / 2]

    def share_at_or_above(scores, t):
        return sum(s >= t for s in scores) / len(scores) if scores else 0.0

    if max_false_refusal is not None:
        return round(next(t for t in candidates if share_at_or_above(answer_scores, t) <= max_false_refusal + 1e-12), 6)
    best = max(share_at_or_above(refuse_scores, t) - share_at_or_above(answer_scores, t) for t in candidates)
    return round(next(t for t in candidates
                      if share_at_or_above(refuse_scores, t) - share_at_or_above(answer_scores, t) >= best - 1e-12), 6)
