"""Which natural language a text is in, by a real language identifier (lingua).

Telling languages apart by their script sends French, German and Spanish all to "en"; lingua
compares letter n-gram statistics, so it tells them apart even on one short sentence. It is asked
to choose among a restricted set (`LANGUAGES`): a smaller set is faster to load and to run, and a
fine-tuning corpus rarely holds languages outside it. Texts dominated by CJK characters are decided
by their script first (kana → ja, hangul → ko, Han → zh), which is exact and keeps a Chinese
sentence with a few English terms ("用 PyTorch 训练模型") Chinese.

>>> identify_language("Was misst der HbA1c-Wert?"), identify_language("血常规查什么？")   # doctest: +SKIP
('de', 'zh')
"""

from __future__ import annotations

import re
from functools import lru_cache

# ISO 639-1 codes lingua chooses among (edit `languages=` per call for another set).
LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "ko", "fr", "de", "es", "it", "pt", "nl", "ru", "ar")

_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LETTER_RUN = re.compile(r"[^\W\d_]+")


def _script_language(text: str) -> str | None:
    """zh/ja/ko when CJK characters make up at least 30 % of the text's units (a CJK character or
    a run of other letters counts as one unit), else None."""
    n_kana, n_hangul, n_han = len(_KANA.findall(text)), len(_HANGUL.findall(text)), len(_HAN.findall(text))
    cjk = n_kana + n_hangul + n_han
    if not cjk:
        return None
    others = len(_LETTER_RUN.findall(re.sub(r"[\u3040-\u30ff\uac00-\ud7af\u1100-\u11ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", " ", text)))
    if cjk / (cjk + others) < 0.3:
        return None
    if n_kana:  # Japanese mixes kanji with kana; kana only occur in Japanese
        return "ja"
    return "ko" if n_hangul > n_han else "zh"


@lru_cache(maxsize=4)
def _detector(languages: tuple[str, ...]):
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError as err:  # a core dependency; only a broken install gets here
        from honed.errors import HonedError

        raise HonedError("language identification needs lingua: pip install lingua-language-detector") from err
    chosen = []
    for code in languages:
        try:
            chosen.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except AttributeError:
            from honed.errors import ConfigError

            raise ConfigError(f"language {code!r} is not an ISO 639-1 code lingua knows (e.g. en, de, fr, zh)") from None
    if len(chosen) < 2:
        chosen.append(Language.ENGLISH if chosen[0] != Language.ENGLISH else Language.FRENCH)
    return LanguageDetectorBuilder.from_languages(*chosen).build()


def identify_language(text: str, languages: tuple[str, ...] = LANGUAGES) -> str:
    """ISO 639-1 code of the language of `text` ('' when it has no letters or lingua cannot tell).

    >>> identify_language("Qu'est-ce que la TSH ?"), identify_language("12.5")   # doctest: +SKIP
    ('fr', '')
    """
    if not _LETTER_RUN.search(text or ""):
        return ""
    by_script = _script_language(text)
    if by_script and by_script in languages:
        return by_script
    found = _detector(tuple(languages)).detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else ""
