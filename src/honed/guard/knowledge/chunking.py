"""Sections into chunks of about `size` units (characters or tokens) with `overlap` units shared.

Hand-written rather than taken from a text-splitting library because the pieces must keep their
section's heading or page for citation, sentence ends must include Chinese punctuation, and the
size may be counted in a model's tokens; the rule is short: paragraphs are packed greedily; a
paragraph too big is cut at sentence ends, a sentence too big at the size; the next chunk starts
with the last whole pieces of the previous one that fit in `overlap`.

>>> [c.text for c in chunk_sections([Section("One. Two.\\n\\nThree four.")], ChunkSettings(size=16, overlap=0))]
['One. Two.', 'Three four.']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from honed.errors import ConfigError
from honed.guard.knowledge.loaders import Section


@dataclass(frozen=True)
class ChunkSettings:
    """How documents are cut; stored with each document so a change re-chunks it on the next add."""

    size: int = 800
    overlap: int = 100
    unit: str = "chars"  # or "tokens" (counted with `tokenizer`)
    tokenizer: str | None = None  # a model folder whose tokenizer counts tokens

    def __post_init__(self):
        if self.size < 16:
            raise ConfigError(f"--chunk-size {self.size}: use at least 16")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"--overlap {self.overlap}: must be at least 0 and less than --chunk-size {self.size}")
        if self.unit not in ("chars", "tokens"):
            raise ConfigError(f"--chunk-unit {self.unit!r}: use chars or tokens")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Chunk:
    text: str
    location: str
    page: int


_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s+|(?<=[。！？；])")


def length_function(settings: ChunkSettings, embedder_tokenizer=None) -> Callable[[str], int]:
    """How a piece's size is counted: characters, or tokens of `settings.tokenizer` / the embedder's tokenizer."""
    if settings.unit == "chars":
        return len
    tokenizer = embedder_tokenizer
    if settings.tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--tokenizer {settings.tokenizer}: cannot load a tokenizer there ({err})") from None
    if tokenizer is None:
        raise ConfigError("--chunk-unit tokens: this embedder has no tokenizer; pass --tokenizer MODEL_DIR (e.g. the model you train)")
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _pieces(text: str, size: int, measure: Callable[[str], int]) -> list[tuple[str, bool]]:
    """(sentence, starts a paragraph) pairs, each at most `size`; a longer sentence is cut in windows."""
    pieces = []
    for para in re.split(r"\n\s*\n", text):
        first = True
        for sentence in _SENTENCE_END.split(para.strip()):
            sentence = sentence.strip()
            if not sentence:
                continue
            n = measure(sentence)
            # No sentence end within the size: cut by characters, scaled from the measured length.
            step = len(sentence) if n <= size else max(1, int(len(sentence) * size / n))
            for i in range(0, len(sentence), step):
                pieces.append((sentence[i : i + step], first))
                first = False
    return pieces


def _join(pieces: list[tuple[str, bool]]) -> str:
    out = ""
    for i, (text, new_para) in enumerate(pieces):
        if i:
            cjk_pair = re.search(r"[\u3400-\u9fff，。！？；：]$", out) and re.match(r"[\u3400-\u9fff]", text)
            out += "\n\n" if new_para else ("" if cjk_pair else " ")
        out += text
    return out


def chunk_sections(sections: list[Section], settings: ChunkSettings, measure: Callable[[str], int] = len) -> list[Chunk]:
    """Chunks of every section; no chunk crosses a section boundary (its heading or page)."""
    chunks = []
    for section in sections:
        current: list[tuple[str, bool]] = []
        for piece in _pieces(section.text, settings.size, measure):
            if current and measure(_join(current + [piece])) > settings.size:
                chunks.append(Chunk(_join(current), section.location, section.page))
                carried: list[tuple[str, bool]] = []
                for prev in reversed(current):  # the tail of the previous chunk, whole sentences only
                    if measure(_join([prev, *carried])) > settings.overlap or measure(_join([prev, *carried, piece])) > settings.size:
                        break
                    carried.insert(0, prev)
                current = carried
            current.append(piece)
        if current:
            chunks.append(Chunk(_join(current), section.location, section.page))
    return chunks
