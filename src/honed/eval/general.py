"""General-ability regression check: did fine-tuning make the model forget ordinary knowledge?

A small built-in set of general questions (English and Chinese) with short, checkable answers is
asked to every model without the domain's scope prompt; an answer counts as correct when it
contains one of the accepted answers. Compare the tuned model's accuracy with its base's: a
large drop is forgetting. (A domain model that was *taught* to refuse off-topic questions will
also refuse many of these — that is shown separately as its refusal rate.)

>>> answer_is_correct("The capital of France is Paris.", ["Paris"])
True
>>> answer_is_correct("It has 19 members.", ["9", "nine"])
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from honed.eval.metrics import normalize_answer


@dataclass(frozen=True)
class GeneralQuestion:
    id: str
    lang: str
    question: str
    answers: tuple[str, ...]


def _q(id_: str, lang: str, question: str, *answers: str) -> GeneralQuestion:
    return GeneralQuestion(id_, lang, question, answers)


# Facts chosen to be stable and unambiguous; accepted answers list the usual spellings.
GENERAL_QUESTIONS: tuple[GeneralQuestion, ...] = (
    _q("gen-en-01", "en", "What is the capital of France?", "Paris"),
    _q("gen-en-02", "en", "How many days are there in a leap year?", "366"),
    _q("gen-en-03", "en", "What is the chemical symbol for gold?", "Au"),
    _q("gen-en-04", "en", "Which planet is known as the Red Planet?", "Mars"),
    _q("gen-en-05", "en", "What is 12 multiplied by 12?", "144"),
    _q("gen-en-06", "en", "Who wrote the play Romeo and Juliet?", "Shakespeare"),
    _q("gen-en-07", "en", "At sea level, water boils at how many degrees Celsius?", "100"),
    _q("gen-en-08", "en", "How many continents are there on Earth?", "7", "seven"),
    _q("gen-en-09", "en", "What is the largest ocean on Earth?", "Pacific"),
    _q("gen-en-10", "en", "Which gas do plants take in from the air for photosynthesis?", "carbon dioxide", "CO2"),
    _q("gen-en-11", "en", "What is the square root of 81?", "9", "nine"),
    _q("gen-en-12", "en", "In which year did World War II end?", "1945"),
    _q("gen-en-13", "en", "At what temperature in degrees Fahrenheit does water freeze?", "32"),
    _q("gen-en-14", "en", "How many sides does a hexagon have?", "6", "six"),
    _q("gen-en-15", "en", "What is the largest planet in our solar system?", "Jupiter"),
    _q("gen-en-16", "en", "What is the chemical formula of water?", "H2O"),
    _q("gen-en-17", "en", "What is the capital of Japan?", "Tokyo"),
    _q("gen-zh-01", "zh", "中国的首都是哪座城市？", "北京"),
    _q("gen-zh-02", "zh", "一年有几个月？", "12", "十二"),
    _q("gen-zh-03", "zh", "水的化学式是什么？", "H2O"),
    _q("gen-zh-04", "zh", "太阳系中最大的行星是哪一颗？", "木星"),
    _q("gen-zh-05", "zh", "《红楼梦》的作者是谁？", "曹雪芹"),
    _q("gen-zh-06", "zh", "一个星期有几天？", "7", "七"),
    _q("gen-zh-07", "zh", "世界上海拔最高的山峰是哪座？", "珠穆朗玛", "珠峰"),
    _q("gen-zh-08", "zh", "3乘以7等于多少？", "21", "二十一"),
    _q("gen-zh-09", "zh", "中国最长的河流是哪条？", "长江"),
    _q("gen-zh-10", "zh", "植物进行光合作用时吸收哪种气体？", "二氧化碳", "CO2"),
    _q("gen-zh-11", "zh", "《静夜思》的作者是谁？", "李白"),
    _q("gen-zh-12", "zh", "在标准大气压下，水的沸点是多少摄氏度？", "100"),
    _q("gen-zh-13", "zh", "日本的首都是哪座城市？", "东京"),
    _q("gen-zh-14", "zh", "正方形有几条边？", "4", "四"),
)


def answer_is_correct(prediction: str | None, answers) -> bool:
    """True when the normalised prediction contains an accepted answer; Latin letters and
    digits must stand as a whole word, so "9" is not found inside "19"."""
    text = normalize_answer(prediction or "")
    for answer in answers:
        key = normalize_answer(answer)
        if not key:
            continue
        if re.fullmatch(r"[0-9a-z ]+", key):
            if re.search(rf"(?<![0-9a-z]){re.escape(key)}(?![0-9a-z])", text):
                return True
        elif key in text:
            return True
    return False


def score_general(predictions: list[str], detector=None) -> tuple[list[dict], dict]:
    """Per question {id, correct, refused} and the summary {accuracy, refusal_rate, by language}."""
    from honed.eval.metrics.refusal import default_detector

    detector = detector or default_detector()
    rows = []
    for item, answer in zip(GENERAL_QUESTIONS, predictions):
        rows.append({"id": item.id, "lang": item.lang, "question": item.question, "answer": answer,
                     "accepted": list(item.answers), "correct": answer_is_correct(answer, item.answers),
                     "refused": bool(answer and answer.strip()) and detector.is_refusal(answer)})
    summary = {"n": len(rows), "accuracy": sum(r["correct"] for r in rows) / max(len(rows), 1),
               "refusal_rate": sum(r["refused"] for r in rows) / max(len(rows), 1)}
    for lang in ("en", "zh"):
        mine = [r for r in rows if r["lang"] == lang]
        if mine:
            summary[f"accuracy_{lang}"] = sum(r["correct"] for r in mine) / len(mine)
    return rows, summary
