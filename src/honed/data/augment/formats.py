"""Structure level: output-format transformation (3) of structured answers.

A structured answer is one record (a flat mapping of scalars) or a list of records. It can be
written as JSON, a Markdown table, YAML or `key: value` lines; `parse_structured` reads any of
them back, so a test (and a user) can check that a rewritten answer holds the same content.

>>> text = render_structured({"label": "积极", "score": 0.9}, "markdown")
>>> print(text)
| label | score |
| --- | --- |
| 积极 | 0.9 |
>>> parse_structured(text, "markdown")
{'label': '积极', 'score': 0.9}
"""

from __future__ import annotations

import json
import random
import re

import yaml

from honed.data.augment.base import Transform, clone, has_cjk, record, register, turn_indices
from honed.errors import DataError

FORMATS = ("json", "markdown", "yaml", "kv")
FENCE_TAG = {"json": "json", "yaml": "yaml", "markdown": "markdown", "kv": "text"}
_FENCE = re.compile(r"^\s*```([A-Za-z0-9_-]*)[ \t]*\n(.*?)\n?```\s*$", re.S)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_KV_LINE = re.compile(r"^([^\s:：|#\-][^:：]*?)\s*[:：][ \t]?(.*)$")


class FormatError(DataError):
    """Text that does not parse as the named structured format, or content a format cannot hold."""


# --- scalars in table cells and kv lines -------------------------------------------------------

def decode_cell(text: str):
    """'0.9' → 0.9, 'true' → True, 'null' → None, '"0.9"' → '0.9', anything else stays a string."""
    s = text.strip()
    if s in ("null", "true", "false") or _NUMBER.fullmatch(s) or (len(s) >= 2 and s[0] == s[-1] == '"'):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return s
    return s


def _yaml_reads_as_itself(s: str) -> bool:
    try:
        return yaml.safe_load(f"k: {s}") == {"k": s}
    except yaml.YAMLError:
        return False


def encode_cell(value) -> str:
    """Inverse of decode_cell: strings that would read back as something else are JSON-quoted.

    Quoting also what YAML would misread ("yes", "2024-01-05", "%") keeps `key: value` lines a
    subset of YAML, so a reader (or `auto` detection) gets the same content either way.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    s = str(value)
    if s != s.strip() or not s or "\n" in s or decode_cell(s) != s or not _yaml_reads_as_itself(s):
        return json.dumps(s, ensure_ascii=False)
    return s


# --- content checks -------------------------------------------------------------------------

def normalize(data):
    """Records as a list of dicts, or one dict; a one-record list is the same content as its record."""
    if isinstance(data, list) and len(data) == 1:
        return data[0]
    return data


def _check(data, fmt: str):
    records = data if isinstance(data, list) else [data]
    if not records or not all(isinstance(r, dict) and r for r in records):
        raise FormatError(f"{fmt}: expected a record (mapping) or a list of records, got {type(data).__name__}")
    for r in records:
        for k, v in r.items():
            if not isinstance(k, str) or not k.strip() or k != k.strip() or any(c in k for c in "|:：\n#"):
                raise FormatError(f"{fmt}: key {k!r} cannot be written in every format")
            if not (v is None or isinstance(v, (str, bool, int, float))):
                raise FormatError(f"{fmt}: value of {k!r} is nested ({type(v).__name__}); only flat records convert")
    if fmt == "markdown" and len({tuple(r) for r in records}) > 1:
        raise FormatError("markdown: records with different keys do not fit one table")
    return normalize(data)


# --- parse / render -------------------------------------------------------------------------

def strip_fence(text: str) -> tuple[str, str | None]:
    """(body, fence tag or None) of a ```-fenced block; unfenced text comes back as it was."""
    m = _FENCE.match(text)
    return (m.group(2), m.group(1)) if m else (text, None)


def detect_format(text: str) -> str:
    """Best guess of the structured format of `text` (raises FormatError when none fits)."""
    body, tag = strip_fence(text)
    tag = {"yml": "yaml", "md": "markdown"}.get((tag or "").lower(), (tag or "").lower())
    if tag in FORMATS:
        return tag
    s = body.strip()
    if s[:1] in "{[":
        return "json"
    lines = [ln for ln in s.splitlines() if ln.strip()]
    if lines and lines[0].lstrip().startswith("|"):
        return "markdown"
    try:
        yaml_data = yaml.safe_load(s)
    except yaml.YAMLError:
        yaml_data = None
    if lines and all(_KV_LINE.match(ln) for ln in lines):
        # Flat `k: v` lines are YAML too; they are kv unless YAML reads them differently ('%' quoted).
        try:
            kv_data = parse_structured(s, "kv")
        except FormatError:
            kv_data = None
        # Several blank-line-separated records are kv (YAML would merge them into one mapping).
        if kv_data is not None and (isinstance(kv_data, list) or not isinstance(yaml_data, (dict, list))
                                    or normalize(yaml_data) == kv_data):
            return "kv"
    if isinstance(yaml_data, (dict, list)):
        return "yaml"
    raise FormatError("text is not JSON, a Markdown table, YAML or key: value lines")


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


def parse_structured(text: str, fmt: str = "auto"):
    """Parse a structured answer written as json, markdown (table), yaml or kv; `auto` detects.

    >>> parse_structured("label: 积极\\nscore: 0.9", "kv") == parse_structured('{"label": "积极", "score": 0.9}')
    True
    """
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    body = strip_fence(text)[0].strip()
    if fmt == "json":
        try:
            data = json.loads(body)
        except json.JSONDecodeError as err:
            raise FormatError(f"json: {err}") from None
    elif fmt == "yaml":
        try:
            data = yaml.safe_load(body)
        except yaml.YAMLError as err:
            raise FormatError(f"yaml: {str(err).splitlines()[0]}") from None
    elif fmt == "markdown":
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if len(lines) < 3 or not all(ln.lstrip().startswith("|") for ln in lines):
            raise FormatError("markdown: expected a table (header row, --- row, data rows)")
        header = _split_row(lines[0])
        if not all(re.fullmatch(r":?-{3,}:?", c) for c in _split_row(lines[1])):
            raise FormatError("markdown: the second row of a table must be | --- | --- |")
        data = []
        for ln in lines[2:]:
            cells = _split_row(ln)
            if len(cells) != len(header):
                raise FormatError(f"markdown: row {ln!r} has {len(cells)} cells, the header {len(header)}")
            data.append({h: decode_cell(c) for h, c in zip(header, cells)})
    else:
        data, rec = [], {}
        for ln in body.splitlines() + [""]:
            if not ln.strip():
                if rec:
                    data.append(rec)
                rec = {}
                continue
            m = _KV_LINE.match(ln.strip())
            if not m:
                raise FormatError(f"kv: line {ln!r} is not `key: value`")
            rec[m.group(1).strip()] = decode_cell(m.group(2))
    return _check(data, fmt)


def render_structured(data, fmt: str) -> str:
    """Write a record (or list of records) in `fmt`; parse_structured(result, fmt) gives it back."""
    data = _check(data, fmt)
    records = data if isinstance(data, list) else [data]
    if fmt == "json":
        return json.dumps(data, ensure_ascii=False)
    if fmt == "yaml":
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=False).strip()
    if fmt == "markdown":
        keys = list(records[0])
        cell = lambda v: encode_cell(v).replace("|", "\\|")  # noqa: E731
        rows = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
        rows += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in records]
        return "\n".join(rows)
    if fmt == "kv":
        return "\n\n".join("\n".join(f"{k}: {encode_cell(v)}" for k, v in r.items()) for r in records)
    raise FormatError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


# --- the transform ----------------------------------------------------------------------------

NAMES = {"json": {"zh": "JSON", "en": "JSON"}, "yaml": {"zh": "YAML", "en": "YAML"},
         "markdown": {"zh": "Markdown 表格", "en": "Markdown table"},
         "kv": {"zh": "“键: 值”逐行", "en": "`key: value` lines"}}
# How instructions name each format; lookarounds instead of \b because \b sees no edge in "JSON格式".
MENTIONS = {
    "json": r"(?<![A-Za-z])JSON(?![A-Za-z])",
    "yaml": r"(?<![A-Za-z])YAML(?![A-Za-z])",
    "markdown": r"(?<![A-Za-z])Markdown(?:\s*(?:表格|tables?))?(?![A-Za-z])",
    "kv": r"`?key\s*:\s*value`?(?:\s*lines)?|“?键\s*[:：]\s*值”?(?:逐行)?|键值对",
}
ASK = {"zh": "请以{name}格式输出。", "en": "Answer in {name} format."}


@register
class OutputFormat(Transform):
    """Rewrite a structured answer in another format and make the instruction ask for that format.

    Mentions of the old format in the instruction (and system prompt) are replaced by the new
    format's name; with no mention, a sentence asking for the new format is appended. Answers that
    do not parse, or hold nested values, are unfit. A ```-fenced answer stays fenced.

    >>> import random
    >>> from honed.data import Conversation, Message
    >>> s = Conversation([Message("user", "以JSON格式给出情感和分数：好看"), Message("assistant", '{"label": "积极", "score": 0.9}')])
    >>> out = OutputFormat({"formats": ["yaml"]})(s, random.Random(0))
    >>> out.messages[0].content
    '以YAML格式给出情感和分数：好看'
    >>> parse_structured(out.messages[1].content, "yaml")
    {'label': '积极', 'score': 0.9}
    """

    name, family = "output_format", "formats"
    defaults = {"formats": list(FORMATS), "source": "auto", "rewrite_instruction": True, "fence": "auto"}
    choices = {"source": ("auto", *FORMATS), "fence": ("auto", "always", "never")}

    def setup(self):
        bad = [f for f in self.p["formats"] if f not in FORMATS]
        if bad or not self.p["formats"]:
            raise self.bad_param("formats", f"{bad or '[]'} — choose from {', '.join(FORMATS)}")

    def apply(self, sample, rng: random.Random):
        u, a = turn_indices(self, sample)
        answer = sample.messages[a].content
        try:
            src = detect_format(answer) if self.p["source"] == "auto" else self.p["source"]
            data = parse_structured(answer, src)
        except FormatError as err:
            raise self.unfit(sample, f"its answer does not parse as a structured record ({err})") from None
        targets = [f for f in self.p["formats"] if f != src]
        rng.shuffle(targets)
        text, dst, why = None, None, "no other format allowed by params.formats"
        for dst in targets:
            try:
                text = render_structured(data, dst)
            except FormatError as err:
                why = str(err)
                continue
            # Flat YAML and kv lines can be the same text; a "conversion" must change something.
            if text.strip() != strip_fence(answer)[0].strip():
                break
            text = None
        if text is None:
            if not targets:
                return sample
            raise self.unfit(sample, why)
        fenced = strip_fence(answer)[1] is not None
        if self.p["fence"] == "always" or (self.p["fence"] == "auto" and fenced):
            text = f"```{FENCE_TAG[dst]}\n{text}\n```"
        out = clone(sample)
        out.messages[a].content = text
        if self.p["rewrite_instruction"]:
            self._rewrite_instruction(out, u, src, dst)
        return record(out, self.name, **{"from": src, "to": dst})

    def _rewrite_instruction(self, out, u: int, src: str, dst: str) -> None:
        mention = re.compile(MENTIONS[src], re.IGNORECASE)
        found = False
        protected = out.meta.get("input") if isinstance(out.meta.get("input"), str) else None
        for m in out.messages[: u + 1]:
            if m.role not in ("system", "user"):
                continue
            name = NAMES[dst]["zh" if has_cjk(m.content) else "en"]
            parts = m.content.split(protected) if protected else [m.content]
            new = [mention.sub(name, p) for p in parts]
            if new != parts:
                found = True
                m.content = protected.join(new) if protected else new[0]
        if not found:
            lang = "zh" if has_cjk(out.messages[u].content) else "en"
            out.messages[u].content = out.messages[u].content.rstrip() + "\n\n" + ASK[lang].format(name=NAMES[dst][lang])
