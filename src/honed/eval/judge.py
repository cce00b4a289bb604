"""Optional LLM-as-judge: any OpenAI-compatible /chat/completions endpoint scores each answer
for relevance, accuracy and fluency on a 1-5 rubric. Off by default; honed never needs it.

Only the standard library talks HTTP here, so no client package is required. A failed call or
an unreadable verdict is recorded on that sample; the evaluation goes on.

>>> parse_verdict('Sure. {"relevance": 5, "accuracy": 4, "fluency": 5}')
{'relevance': 5, 'accuracy': 4, 'fluency': 5}
>>> judge_answers(JudgeConfig(enabled=True, base_url="http://127.0.0.1:8000/v1"), items)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from honed.data.generators import GeneratorError
from honed.data.conversation import Message
from honed.eval.config import JudgeConfig

CRITERIA = ("relevance", "accuracy", "fluency")

RUBRIC = """You grade an assistant's answer to a question. Score each criterion from 1 (worst) to 5 (best):
- relevance: does the answer address the question asked (a polite refusal of an off-topic question is relevant)?
- accuracy: is it factually correct and consistent with the reference answer, if one is given?
- fluency: is it clear, grammatical and natural in the question's language?
Reply with one JSON object only, e.g. {"relevance": 4, "accuracy": 3, "fluency": 5}."""


def parse_verdict(text: str) -> dict[str, int] | None:
    """The three integer scores from a judge reply, or None when it does not hold them all."""
    for match in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and all(k in obj for k in CRITERIA):
            try:
                scores = {k: int(round(float(obj[k]))) for k in CRITERIA}
            except (TypeError, ValueError):
                continue
            if all(1 <= v <= 5 for v in scores.values()):
                return scores
    return None


def _ask(cfg: JudgeConfig, question: str, answer: str, reference: str | None) -> str:
    from honed.data.generators import OpenAIGenerator

    judge = OpenAIGenerator(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, temperature=0, timeout=cfg.timeout_s, retries=0)
    prompt = f"Question:\n{question}\n\nReference answer:\n{reference or '(none)'}\n\nAssistant's answer:\n{answer}"
    return judge.complete([Message("system", RUBRIC), Message("user", prompt)])


def judge_answers(cfg: JudgeConfig, items: Sequence[tuple[str, str, str | None]]) -> tuple[list[dict], dict]:
    """Score (question, answer, reference) items, at most `cfg.max_samples` of them.

    Returns (per item: the scores or {"error": why}; means per criterion + counts). If the
    first call cannot reach the endpoint at all, the rest are not tried (one clear error).
    """
    results: list[dict] = []
    unreachable = None
    for question, answer, reference in list(items)[: cfg.max_samples]:
        if unreachable:
            results.append({"error": unreachable})
            continue
        if not (answer or "").strip():
            results.append({"error": "empty prediction"})
            continue
        try:
            verdict = parse_verdict(_ask(cfg, question, answer, reference))
            results.append(verdict if verdict else {"error": "the judge's reply held no 1-5 scores"})
        except GeneratorError as err:
            message = f"judge endpoint {cfg.base_url} failed: {err}"
            if err.unreachable:
                unreachable = message = f"{message}; check judge.base_url (an OpenAI-compatible /v1 URL)"
            results.append({"error": message})
    scored = [r for r in results if "error" not in r]
    summary = {k: sum(r[k] for r in scored) / len(scored) for k in CRITERIA} if scored else {}
    summary.update(n_scored=len(scored), n_failed=len(results) - len(scored))
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        summary["first_error"] = errors[0]
    return results, summary
