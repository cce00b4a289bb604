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
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

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
    body = {
        "model": cfg.model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": RUBRIC},
            {"role": "user", "content": f"Question:\n{question}\n\nReference answer:\n{reference or '(none)'}"
                                        f"\n\nAssistant's answer:\n{answer}"},
        ],
    }
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, json.dumps(body).encode("utf-8"), headers, method="POST")
    with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
        payload = json.loads(response.read().decode("utf-8"))
    return payload["choices"][0]["message"]["content"]


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
        except urllib.error.URLError as err:
            reason = getattr(err, "reason", err)
            message = f"judge endpoint {cfg.base_url} failed: {reason}"
            if not isinstance(err, urllib.error.HTTPError):
                unreachable = f"{message}; check judge.base_url (an OpenAI-compatible /v1 URL)"
                message = unreachable
            results.append({"error": message})
        except (TimeoutError, KeyError, IndexError, ValueError) as err:
            results.append({"error": f"judge reply unusable: {err!r}"})
    scored = [r for r in results if "error" not in r]
    summary = {k: sum(r[k] for r in scored) / len(scored) for k in CRITERIA} if scored else {}
    summary.update(n_scored=len(scored), n_failed=len(results) - len(scored))
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        summary["first_error"] = errors[0]
    return results, summary
