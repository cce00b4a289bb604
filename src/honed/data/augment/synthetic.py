"""Synthetic samples (8) and model rewriting (10) from a generator model.

`synthesize` shows a generator a few examples and asks for one new sample of the same shape per
call; the prompt template is a plain text file the user can copy and edit (`{examples}`,
`{keys}`, `{task}` are filled in). Replies are parsed as a JSON object and checked: both turns
present, the label one of the examples' labels, the answer parseable in the examples' structured
format (when they have one), no copy of an example or of an earlier generation. Rejected
replies are counted with the reason.

>>> from honed.data import Conversation, Message
>>> from honed.data.generators import make_generator
>>> ex = [Conversation([Message("user", "很好看"), Message("assistant", "积极")], meta={"label": "positive"})]
>>> dry = make_generator({"kind": "dry_run"})
>>> out = synthesize(ex, dry, n=2, seed=0)
>>> len(out.samples), len(dry.prompts), '"label"' in dry.prompts[0][0].content
(0, 2, True)
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from honed.data.augment.base import (Transform, clone, input_span, protected_spans, record, register, turn_indices)
from honed.data.augment.formats import FormatError, parse_structured
from honed.data.generators import make_generator
from honed.data.conversation import Conversation, Message
from honed.errors import ConfigError

RESOURCES = Path(__file__).parent / "resources"
SYNTHETIC_PROMPT = RESOURCES / "synthetic_prompt.txt"
PARAPHRASE_PROMPT = RESOURCES / "paraphrase_prompt.txt"
_OBJECT = re.compile(r"\{.*\}", re.S)


def read_template(spec: str | None, default: Path, where: str) -> str:
    """A prompt template: None → the shipped one, an existing path → its text, else the text itself."""
    if spec is None:
        return default.read_text(encoding="utf-8")
    if len(spec) < 1024 and "\n" not in spec and Path(spec).expanduser().is_file():
        return Path(spec).expanduser().read_text(encoding="utf-8")
    if "{" not in spec:
        raise ConfigError(f"{where}: {spec!r} is neither a file nor a template with placeholders")
    return spec


def example_record(conv: Conversation) -> dict:
    """The flat form an example is shown in, and a generation is read back from."""
    u, a = turn_indices(_Probe(), conv)
    out = {"user": conv.messages[u].content, "assistant": conv.messages[a].content}
    if conv.meta.get("label") is not None:
        out["label"] = conv.meta["label"]
    return out


class _Probe(Transform):
    name = "synthetic"


def build_prompt(template: str, shots: list[Conversation], task: str = "") -> list[Message]:
    records = [example_record(c) for c in shots]
    keys = list(dict.fromkeys(k for r in records for k in r))
    examples = "\n".join(f"Example {i + 1}: {json.dumps(r, ensure_ascii=False)}" for i, r in enumerate(records))
    # str.replace, not format: templates and examples hold JSON braces.
    text = template.replace("{examples}", examples).replace("{keys}", ", ".join(f'"{k}"' for k in keys))
    return [Message("user", text.replace("{task}", f"Task: {task}" if task else "").strip())]


def structured_format(text: str) -> str | None:
    """The structured format an answer is written in (json, markdown, yaml, kv), or None for free text."""
    for fmt in ("json", "markdown"):
        try:
            parse_structured(text, fmt)
            return fmt
        except FormatError:
            continue
    return None


@dataclass
class SynthResult:
    samples: list[Conversation] = field(default_factory=list)
    prompts: list[list[Message]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (call index, why)


def parse_generation(text: str, examples: list[Conversation], seen: set[str]) -> tuple[dict | None, str]:
    """(record, "") for a usable reply, else (None, why it was rejected)."""
    m = _OBJECT.search(text or "")
    try:
        rec = json.loads(m.group()) if m else None
    except json.JSONDecodeError:
        rec = None
    if not isinstance(rec, dict):
        return None, "the reply holds no JSON object"
    if not all(isinstance(rec.get(k), str) and rec[k].strip() for k in ("user", "assistant")):
        return None, 'the object lacks a non-empty "user" or "assistant"'
    labels = {str(c.meta["label"]) for c in examples if c.meta.get("label") is not None}
    if labels and str(rec.get("label")) not in labels:
        return None, f"label {rec.get('label')!r} is not one of the examples' labels {sorted(labels)}"
    fmt = structured_format(examples[0].messages[-1].content)
    if fmt is not None and structured_format(rec["assistant"]) != fmt:
        return None, f"the answer is not written in the examples' {fmt} format"
    key = rec["user"].strip()
    if key in seen:
        return None, "it repeats an example or an earlier generation"
    seen.add(key)
    return rec, ""


def synthesize(examples: list[Conversation], generator, n: int, *, seed: int = 0, template: str | None = None,
               shots: int = 3, task: str = "", source: str = "synthetic") -> SynthResult:
    """`n` generator calls, each shown `shots` examples drawn by (seed, call); see the module doc."""
    if not examples:
        raise ConfigError("synthetic: give at least one example")
    tpl = read_template(template, SYNTHETIC_PROMPT, "synthetic.template")
    result = SynthResult()
    seen = {example_record(c)["user"].strip() for c in examples}
    for i in range(n):
        rng = random.Random(f"{seed}/synthetic/{i}")
        shown = rng.sample(examples, min(shots, len(examples)))
        prompt = build_prompt(tpl, shown, task)
        result.prompts.append(prompt)
        reply = generator.complete(prompt, seed=seed * 100_003 + i)
        if reply is None:  # dry run
            continue
        rec, why = parse_generation(reply, examples, seen)
        if rec is None:
            result.rejected.append((i, why))
            continue
        meta = {k: v for k, v in rec.items() if k not in ("user", "assistant")}
        meta["augmentations"] = [{"name": "synthetic", "details": {"generator": getattr(generator, "name", "?"), "call": i}}]
        system = [m for m in shown[0].messages if m.role == "system"][:1]
        result.samples.append(Conversation([*system, Message("user", rec["user"]), Message("assistant", rec["assistant"])],
                                           source=f"{source}:{i}", meta=meta))
    return result


@register
class Synthetic(Transform):
    """Recipe step: `n` new samples in the shape of the current one (plus `examples_file` shots).

    `generator` is a mapping (see honed.data.generators) or comes from the recipe's
    top-level `generator:`; `prompt_template` a file or text; a `dry_run` generator adds nothing.
    """

    name, family, expands = "synthetic", "synthetic", True
    uses_generator = True
    defaults = {"generator": None, "n": 1, "prompt_template": None, "shots_file": None, "shots": 2, "task": ""}

    def setup(self):
        if self.p["generator"] is None:
            raise self.bad_param("generator", "set a generator (here or as the recipe's top-level `generator:`), "
                                 "e.g. {kind: openai, base_url: http://127.0.0.1:8000/v1, model: NAME}")
        self.generator = make_generator(self.p["generator"], f"{self.where}.generator")
        self.template = read_template(self.p["prompt_template"], SYNTHETIC_PROMPT, f"{self.where}.prompt_template")
        self.extra = []
        if self.p["shots_file"]:
            from honed.data.augment.io import read_conversations

            self.extra = read_conversations([self.p["shots_file"]])

    def apply(self, sample, rng: random.Random):
        turn_indices(self, sample)
        pool = [sample, *rng.sample(self.extra, min(self.p["shots"], len(self.extra)))]
        got = synthesize(pool, self.generator, self.p["n"], seed=rng.randrange(2**31), template=self.template,
                         shots=len(pool), task=self.p["task"], source=f"{sample.source}+synthetic")
        return got.samples


@register
class Paraphrase(Transform):
    """Recipe step: the generator rewrites the input text of the instruction, meaning and label kept.

    Protected spans (label words, `meta["protected"]`, `protect` regexes) must come back verbatim
    and the length stay within `max_length_ratio`; otherwise the sample is left as it was (counted
    as unchanged). Without a generator, use the rule-based `rewrite_sentence`.
    """

    name, family = "paraphrase", "lexical"
    uses_generator = True
    defaults = {"generator": None, "prompt_template": None, "protect": [], "max_length_ratio": 3.0}

    def setup(self):
        if self.p["generator"] is None:
            raise self.bad_param("generator", "paraphrase needs a generator (here or the recipe's `generator:`); "
                                 "rule-based rewriting is the `rewrite_sentence` step")
        self.generator = make_generator(self.p["generator"], f"{self.where}.generator")
        self.template = read_template(self.p["prompt_template"], PARAPHRASE_PROMPT, f"{self.where}.prompt_template")

    def apply(self, sample, rng: random.Random):
        u, _ = turn_indices(self, sample)
        text = sample.messages[u].content
        s, e = input_span(text, sample.meta)
        keep = sorted({text[a:b] for a, b in protected_spans(self, sample, text) if s <= a and b <= e})
        prompt = self.template.replace("{keep}", ", ".join(keep) or "(none)").replace("{text}", text[s:e])
        new = self.generator.complete([Message("user", prompt)], seed=rng.randrange(2**31))
        new = (new or "").strip().strip('"“”')
        ratio = len(new) / max(1, e - s)
        if not new or new == text[s:e] or any(k not in new for k in keep) or not 1 / self.p["max_length_ratio"] <= ratio <= self.p["max_length_ratio"]:
            return sample
        out = clone(sample)
        out.messages[u].content = text[:s] + new + text[e:]
        if sample.meta.get("input") == text[s:e]:
            out.meta["input"] = new
        return record(out, self.name, generator=getattr(self.generator, "name", "?"))
