"""Which script a question is written in, so a bilingual gate can send it to the embedder that reads it.

Only two routes matter for the gate: texts mostly in CJK characters (Chinese, Japanese kanji) and
everything else. A character count does that exactly and instantly; a full language detector would
add a dependency and latency for no better split.

>>> script_of("血糖检测需要空腹吗？"), script_of("Is fasting needed for glucose?"), script_of("HbA1c 是什么？")
('cjk', 'latin', 'cjk')
"""

from __future__ import annotations

ROUTES = ("latin", "cjk")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x3040 <= code <= 0x30FF or 0xAC00 <= code <= 0xD7AF or 0x20000 <= code <= 0x2A6DF


def script_of(text: str) -> str:
    """`cjk` when at least a quarter of the letters are CJK characters (one CJK character carries a
    word's meaning, so mixed questions like "HbA1c 是什么" count as Chinese), else `latin`."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "latin"
    cjk = sum(_is_cjk(ch) for ch in letters)
    return "cjk" if cjk * 4 >= len(letters) else "latin"
