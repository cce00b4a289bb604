"""Language detection, tokens, normalisation, shared result types, and the docstring examples."""

import doctest
import importlib
import pkgutil

import pytest

import honed.eval.metrics as metrics_package
from honed.eval.metrics import (
    SampleResult,
    aggregate,
    chinese_share,
    detect_language,
    is_chinese,
    normalize_answer,
    word_tokens,
)
from honed.eval.metrics._common import require


@pytest.mark.parametrize("text,language", [
    ("北京是中国的首都。", "zh"),
    ("我们用 PyTorch 和 transformers 训练模型", "zh"),  # English terms inside Chinese
    ("The capital of China is 北京.", "en"),
    ("What is the learning rate?", "en"),
    ("", "en"),
    ("123 456", "en"),
])
def test_detect_language(text, language):
    assert detect_language(text) == language
    assert is_chinese(text) == (language == "zh")


def test_chinese_share_counts_latin_words_as_units():
    assert chinese_share("用 PyTorch 训练") == pytest.approx(3 / 4)
    assert chinese_share("训练") == 1.0
    assert is_chinese("Use 微调 here", threshold=0.5)  # 2 of 4 units
    assert not is_chinese("Use 微调 here", threshold=0.6)


def test_word_tokens():
    assert word_tokens("It's state-of-the-art, isn't it?") == ["it's", "state-of-the-art",
                                                               "isn't", "it"]
    assert word_tokens("我们用LoRA微调模型。") == ["我们", "用", "lora", "微调", "模型"]


def test_normalize_answer():
    assert normalize_answer("Ｈｅｌｌｏ，　Ｗｏｒｌｄ！") == "hello world"
    assert normalize_answer("中 国 人") == "中国人"
    assert normalize_answer("a\n\tb") == "a b"


def test_aggregate_skips_errors_and_ignores_missing_values():
    results = [SampleResult({"x": 1.0, "y": 2.0}), SampleResult(error="missing reference"),
               SampleResult({"x": 0.0, "y": float("nan")})]
    summary = aggregate(results)
    assert summary.scores == {"x": 0.5, "y": 2.0}
    assert summary.n_scored == 2 and summary.skipped == [(1, "missing reference")]


def test_missing_optional_dependency_names_the_pip_package():
    with pytest.raises(ImportError, match="pip install"):
        require("honed_no_such_module")


def test_docstring_examples_run():
    names = [m.name for m in pkgutil.iter_modules(metrics_package.__path__)]
    failures = 0
    for name in names:
        module = importlib.import_module(f"honed.eval.metrics.{name}")
        failures += doctest.testmod(module).failed
    assert failures == 0
