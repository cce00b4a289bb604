"""honed.utils.language: lingua tells Latin-script languages apart; CJK is decided by script."""

from __future__ import annotations

import pytest

from honed.errors import ConfigError
from honed.utils.language import identify_language


@pytest.mark.parametrize("text, code", [
    ("What does an HbA1c test measure?", "en"),
    ("Que mesure le test de l'hémoglobine glyquée ?", "fr"),
    ("Was misst der HbA1c-Wert im Blut?", "de"),
    ("¿Qué mide la prueba de hemoglobina glicada?", "es"),
    ("Что измеряет этот анализ крови?", "ru"),
    ("血常规查什么？", "zh"),
    ("用 PyTorch 训练模型", "zh"),           # a few English terms keep a Chinese sentence Chinese
    ("血液検査では何を調べますか？", "ja"),   # kana make it Japanese
    ("3.5", ""),
])
def test_identify_language(text, code):
    assert identify_language(text) == code


def test_restricted_language_set_and_unknown_codes():
    assert identify_language("Was misst der HbA1c-Wert im Blut?", ("en", "zh")) == "en"  # German not offered
    with pytest.raises(ConfigError, match="xx"):
        identify_language("hello there", ("en", "xx"))
