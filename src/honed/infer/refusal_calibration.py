"""Calibrated refusal decisions at decode time.

A tuned model may *greedily* open its reply with a refusal although refusing is the less likely
choice: its refusal openings are few and share their probability, its answers' openings are many
and spread theirs, so the single most likely first token can be a refusal's while P(answer) > 0.5
(the mode splits). This module measures the refusal as one event and decides on it:

- P(refuse) = the total probability of starting the reply with one of the known refusal
  openings (`RefusalOpenings`, token-id prefixes, none a prefix of another — so the events are
  disjoint and their probabilities add), from one teacher-forced forward pass;
- if P(refuse) >= the fitted threshold the model decodes as it would (and may refuse); below it,
  `OpeningBan` removes, in the first `k` generated positions only, the tokens that would complete
  a refusal opening. A refusal phrase later in an answer is never touched, nor a token that only
  starts an opening (answers may share it).

The calibration (openings, threshold, the tokenizer's fingerprint) is one JSON file, written by
`honed guard fit-refusal` (`honed.guard.refusal_fit`, which sits above this layer) and read by
`chat`, `generate`, `eval` and `serve --refusal-calibration FILE`.

>>> bot.use_refusal_calibration("runs/lora/refusal_calibration.json")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from honed.data.conversation import Conversation, Message
from honed.data.tokenize import IGNORE_INDEX, render_prompt_ids, tokenize_conversation
from honed.errors import DataError, HonedError

FORMAT_VERSION = 1
CALIBRATION_FILE = "refusal_calibration.json"


class RefusalCalibrationError(HonedError):
    """A refusal calibration file is missing, unreadable, or made for another tokenizer."""


def calibration_path(path: str | Path) -> Path:
    """`path`, or `path/refusal_calibration.json` when it is a folder (a model or adapter folder, say)."""
    path = Path(path)
    return path / CALIBRATION_FILE if path.is_dir() else path


def tokenizer_fingerprint(tokenizer, template) -> str:
    """A short hash of the vocabulary, the special tokens and the chat template's name: openings
    stored as token ids mean something only under the tokenizer that made them."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    payload = json.dumps([vocab, specials, getattr(template, "name", str(template))], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def reply_token_ids(text: str, tokenizer, template) -> list[int]:
    """The ids the model generates for `text` as a whole reply, tokenized as training did."""
    conv = Conversation([Message("user", "?"), Message("assistant", text)], source="refusal opening")
    sample = tokenize_conversation(conv, tokenizer, template, train_on="last_assistant")
    prompt = render_prompt_ids(Conversation(conv.messages[:1]), tokenizer, template)
    if sample.input_ids[: len(prompt)] == prompt:  # what follows the generation prompt, exactly
        return sample.input_ids[len(prompt):]
    return [i for i, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]


@dataclass
class RefusalOpenings:
    """Token-id prefixes that open a refusal; none is a prefix of another (disjoint events)."""

    ids: list[tuple[int, ...]]
    texts: list[str]
    dropped: list[str] = field(default_factory=list)  # refusals whose opening no answer lacked

    @property
    def k(self) -> int:
        """The longest opening: the positions the ban may act on."""
        return max((len(o) for o in self.ids), default=0)

    @classmethod
    def from_replies(cls, refusals: list[str], answers: list[str], tokenizer, template, *, min_tokens: int = 1,
                     max_tokens: int = 8) -> "RefusalOpenings":
        """Each refusal's shortest opening (at least `min_tokens`) that no answer in `answers` starts
        with; refusals still indistinguishable after `max_tokens` tokens are dropped (listed).

        >>> RefusalOpenings.from_replies(["Sorry, no."], ["Sure: 42."], tok, tpl).texts   # doctest: +SKIP
        ['Sorry']
        """
        if not refusals:
            raise DataError("no refusal replies to take openings from: the data needs out-of-domain records "
                            "(`kind: refusal` / `out_of_domain`, as `honed data add-refusals` writes them) with their refusals")
        answer_ids = [reply_token_ids(a, tokenizer, template) for a in answers]
        openings: set[tuple[int, ...]] = set()
        dropped = []
        for text in dict.fromkeys(r.strip() for r in refusals if r.strip()):
            ids = reply_token_ids(text, tokenizer, template)
            length = min(min_tokens, len(ids))
            while length <= max_tokens and any(a[:length] == ids[:length] for a in answer_ids):
                length += 1
            if length > min(max_tokens, len(ids)):
                dropped.append(text)
            else:
                openings.add(tuple(ids[:length]))
        # A longer opening that extends a shorter one is already counted by it.
        kept = sorted(o for o in openings if not any(p != o and o[: len(p)] == p for p in openings))
        if not kept:
            raise DataError(f"none of the {len(dropped)} refusal(s) opens differently from every answer within "
                            f"{max_tokens} tokens; raise max_tokens")
        return cls(kept, [tokenizer.decode(list(o)) for o in kept], dropped)


@torch.no_grad()
def refusal_probabilities(bot, prompts: list[list[int]], openings: list[tuple[int, ...]], *, batch_size: int = 64) -> list[float]:
    """P(reply starts with one of `openings`) for each prompt (ids ending in the generation prompt).

    One teacher-forced pass over prompt + opening for every pair (right-padded, so positions are
    those of generation); the log-probabilities of each opening's tokens sum to its probability,
    and the openings' probabilities add, since none is a prefix of another.
    """
    pad = bot.tokenizer.pad_token_id if bot.tokenizer.pad_token_id is not None else 0
    pairs = [(p, o) for p in range(len(prompts)) for o in openings]
    totals = [0.0] * len(prompts)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        rows = [prompts[p] + list(o) for p, o in chunk]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        logits = bot.model(input_ids=ids.to(bot.device), attention_mask=mask.to(bot.device)).logits
        for r, (p, o) in enumerate(chunk):
            at = len(prompts[p]) - 1  # the logits at position i predict token i + 1
            # Only the opening's positions, on the device: the whole batch × width × vocabulary in
            # float32 (and a host copy of it) would cost gigabytes for a real vocabulary on every request.
            logp = torch.log_softmax(logits[r, at : at + len(o)].float(), dim=-1)
            tokens = torch.tensor(o, device=logp.device).unsqueeze(-1)
            totals[p] += math.exp(logp.gather(-1, tokens).double().sum().item())
    return [min(1.0, t) for t in totals]


class OpeningBan:
    """A logits processor: in rows marked `active`, in the first k generated tokens, the tokens that
    would complete a refusal opening get -inf. Nothing else, and nothing after position k.

    `prompt_width` is the (left-padded) prompt length, so generated tokens are `input_ids[:, width:]`.
    """

    def __init__(self, openings: list[tuple[int, ...]], prompt_width: int, active: list[bool]):
        self.width, self.active = prompt_width, active
        self.k = max((len(o) for o in openings), default=0)
        self.completing: dict[tuple[int, ...], list[int]] = {}
        for o in openings:
            self.completing.setdefault(tuple(o[:-1]), []).append(o[-1])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        if step >= self.k:
            return scores
        for row, active in enumerate(self.active):
            if not active:
                continue
            banned = self.completing.get(tuple(input_ids[row, self.width:].tolist()))
            if banned:
                scores[row, banned] = float("-inf")
        return scores


@dataclass
class RefusalCalibration:
    """Refusal openings + threshold + the fingerprint of the tokenizer they were made with."""

    openings: list[list[int]]
    opening_texts: list[str]
    threshold: float
    tokenizer_fingerprint: str
    fitted: dict = field(default_factory=dict)  # how it was fitted: data, rule, stats, AUROC
    version: int = FORMAT_VERSION

    @property
    def k(self) -> int:
        return max((len(o) for o in self.openings), default=0)

    def opening_tuples(self) -> list[tuple[int, ...]]:
        return [tuple(o) for o in self.openings]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the JSON file atomically (into a folder: as `refusal_calibration.json`); an existing
        file is replaced only with `overwrite`."""
        from honed.utils.fs import check_writable, write_text_atomic

        path = check_writable(calibration_path(path), overwrite)
        write_text_atomic(path, json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RefusalCalibration":
        """Read a calibration file, or a folder holding `refusal_calibration.json`."""
        path = calibration_path(path)
        if not path.is_file():
            raise RefusalCalibrationError(f"{path}: no refusal calibration here; fit one with `honed guard fit-refusal`")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            cal = cls(**raw)
            if not cal.openings or not all(isinstance(i, int) for o in cal.openings for i in o):
                raise ValueError("no openings")
            cal.threshold = float(cal.threshold)
        except (ValueError, TypeError) as err:
            raise RefusalCalibrationError(f"{path}: not a refusal calibration ({err}); fit it again with `honed guard fit-refusal`") from None
        if cal.version != FORMAT_VERSION:
            raise RefusalCalibrationError(f"{path}: calibration format {cal.version}, this honed reads {FORMAT_VERSION}; fit it again with `honed guard fit-refusal`")
        cal.fitted.setdefault("path", str(path))
        return cal

    def checked_for(self, tokenizer, template) -> "RefusalCalibration":
        """Self, after checking it was made with this tokenizer and chat template."""
        mine = tokenizer_fingerprint(tokenizer, template)
        if mine != self.tokenizer_fingerprint:
            where = self.fitted.get("path", "the refusal calibration")
            raise RefusalCalibrationError(
                f"{where}: fitted for another tokenizer or chat template (fingerprint {self.tokenizer_fingerprint}, "
                f"this model's is {mine}; fitted on {self.fitted.get('model', '?')}); fit one for this model with `honed guard fit-refusal`")
        return self

    def ban_for(self, probabilities: list[float | None], prompt_width: int) -> OpeningBan:
        """The logits processor for one batch: rows below the threshold may not open with a refusal
        (a row without a probability — not a chat reply — decodes freely)."""
        return OpeningBan(self.opening_tuples(), prompt_width, [p is not None and p < self.threshold for p in probabilities])


def as_calibration(value) -> RefusalCalibration | None:
    """`value` as a `RefusalCalibration`: None stays None, a calibration is itself, a file or folder
    is read (so a bad file fails here, before any model loads)."""
    if value is None or isinstance(value, RefusalCalibration):
        return value
    return RefusalCalibration.load(value)
