"""Conversation → token ids + labels. The ONE place in honed where the loss mask is decided.

Labels line up with `input_ids` (the model shifts them); -100 means "not trained on". Templates say
which text is trainable (`Segment.trainable`); this module only tokenizes and applies `train_on`.

>>> from honed.data.templates import get_template
>>> from honed.data.conversation import Conversation, Message
>>> conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello")], source="a.jsonl:1")
>>> s = tokenize_conversation(conv, tokenizer, get_template("chatml"))   # doctest: +SKIP
>>> tokenizer.decode([t for t, l in zip(s.input_ids, s.labels) if l != -100])   # doctest: +SKIP
'Hello<|im_end|>'
"""

from __future__ import annotations

from dataclasses import dataclass

from honed.data.conversation import Conversation
from honed.data.templates import Segment, Template
from honed.errors import ConfigError, DataError

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "last_assistant", "all")


@dataclass
class TokenizedSample:
    """Token ids of one conversation and its labels (-100 where the loss is not taken)."""

    input_ids: list[int]
    labels: list[int]
    source: str
    truncated: bool = False
    n_trainable: int = 0


def _chunks(segments: list[Segment], train_on: str) -> list[tuple[str, bool]]:
    """Join neighbouring segments with the same trained flag.

    Tokenizing whole chunks keeps token boundaries where the full-text tokenization has them (a
    boundary only where training switches on or off, which templates place at special tokens or
    newlines), and it means one tokenizer call per chunk instead of per segment.
    """
    if train_on == "last_assistant":
        turns = [s.turn for s in segments if s.trainable]
        last = max(turns, default=None)
    out: list[tuple[str, bool]] = []
    for s in segments:
        if train_on == "all":
            flag = True
        elif train_on == "last_assistant":
            flag = s.trainable and s.turn == last
        else:
            flag = s.trainable
        if out and out[-1][1] == flag:
            out[-1] = (out[-1][0] + s.text, flag)
        else:
            out.append((s.text, flag))
    return out


def tokenize_conversation(conv: Conversation, tokenizer, template: Template, *, train_on: str = "assistant",
                          max_seq_length: int | None = None, enable_thinking: bool | None = None) -> TokenizedSample:
    """Render `conv` with `template`, tokenize it and mask everything but what `train_on` selects.

    train_on: "assistant" (every answer + its end-of-turn marker), "last_assistant" (the final
    answer only) or "all" (every token). Truncates from the right at `max_seq_length`.

    >>> sample = tokenize_conversation(conv, tok, get_template("llama3"), max_seq_length=2048)  # doctest: +SKIP
    >>> sample.n_trainable > 0   # doctest: +SKIP
    True
    """
    if train_on not in TRAIN_ON:
        raise ConfigError(f"data.train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    chunks = _chunks(template.render(conv, enable_thinking=enable_thinking), train_on)
    encoded = tokenizer([text for text, _ in chunks], add_special_tokens=False)["input_ids"] if chunks else []
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, (_, trained) in zip(encoded, chunks):
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    truncated = max_seq_length is not None and len(input_ids) > max_seq_length
    if truncated:
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    n_trainable = len(labels) - labels.count(IGNORE_INDEX)
    if n_trainable == 0:
        if truncated:
            why = (f"nothing is left to train on after truncating to max_seq_length={max_seq_length}; "
                   "raise data.max_seq_length or shorten the prompt")
        else:
            why = (f"it has no assistant answer to train on (roles: {', '.join(conv.roles()) or 'none'}); "
                   "check the data, or use train_on: all")
        raise DataError(f"{conv.source}: {why}")
    return TokenizedSample(input_ids, labels, conv.source, truncated, n_trainable)


def render_prompt_ids(conv: Conversation, tokenizer, template: Template, *,
                      enable_thinking: bool | None = None) -> list[int]:
    """Token ids of `conv` followed by the generation prompt, tokenized exactly as in training.

    >>> ids = render_prompt_ids(Conversation([Message("user", "Hi")]), tok, get_template("qwen3"))  # doctest: +SKIP
    """
    segments = template.render(conv, add_generation_prompt=True, enable_thinking=enable_thinking)
    # Same chunking as training ("assistant" mode), so a prompt tokenizes as it did in the training data.
    chunks = [text for text, _ in _chunks(segments, "assistant")]
    ids: list[int] = []
    for piece in tokenizer(chunks, add_special_tokens=False)["input_ids"] if chunks else []:
        ids += piece
    return ids
