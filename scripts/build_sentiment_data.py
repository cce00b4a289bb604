"""Write the shipped bilingual sentiment data set (src/honed/resources/sentiment/).

Short English and Chinese sentences, each written as (subject, sentiment phrase, sentence frame),
split so that no test sentence occurs in training. Three test files ask the same sentences three
ways: as in training, with other label words, and in another answer format.

    python scripts/build_sentiment_data.py     # deterministic: the same files every time
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "honed" / "resources" / "sentiment"

EN = {
    "positive": ["great", "wonderful", "excellent", "delightful", "fantastic", "lovely", "superb", "brilliant",
                 "a real pleasure", "better than I hoped"],
    "negative": ["awful", "terrible", "horrible", "disappointing", "dreadful", "boring", "a waste of money",
                 "really annoying", "worse than I feared", "painful"],
    "neutral": ["neither good nor bad", "about what I expected", "okay, nothing special", "fairly ordinary",
                "acceptable but forgettable", "just average", "not memorable either way", "as usual"],
}
EN_THINGS = ["the movie", "the food", "the service", "the hotel room", "the concert", "the book", "the phone",
             "the coffee", "the staff", "the game", "the trip", "the lecture", "the app", "the museum"]
EN_FRAMES = ["{Thing} was {p}.", "I thought {thing} was {p}.", "Honestly, {thing} was {p}.", "To me, {thing} felt {p}."]

ZH = {
    "positive": ["很棒", "非常精彩", "令人满意", "特别好", "很出色", "让人开心", "超出预期", "物超所值"],
    "negative": ["很糟糕", "太差了", "令人失望", "非常无聊", "很难用", "让人生气", "不值这个价", "浪费时间"],
    "neutral": ["不好不坏", "还行吧", "中规中矩", "没什么特别", "和预想的差不多", "说不上好坏", "平平淡淡"],
}
ZH_THINGS = ["这部电影", "这家店的菜", "这里的服务", "酒店房间", "这场音乐会", "这本书", "这部手机", "这杯咖啡",
             "工作人员", "这次旅行", "这堂课", "这个应用", "这个博物馆"]
ZH_FRAMES = ["{thing}{p}。", "我觉得{thing}{p}。", "说实话，{thing}{p}。", "在我看来，{thing}{p}。"]

INSTRUCTION = {"en": "Classify the sentiment of the sentence as positive, negative or neutral:",
               "zh": "判断下面这句话的情感（积极/消极/中性）："}
WORDS = {"en": {"positive": "positive", "negative": "negative", "neutral": "neutral"},
         "zh": {"positive": "积极", "negative": "消极", "neutral": "中性"}}
# Test: the same sentences asked with other label words, and in another answer format.
WORDING = {"en": ("Classify the sentiment of the sentence as favourable, unfavourable or mixed:",
                  {"positive": "favourable", "negative": "unfavourable", "neutral": "mixed"}),
           "zh": ("判断下面这句话的情感（正面/负面/中立）：", {"positive": "正面", "negative": "负面", "neutral": "中立"})}
FORMAT = {"en": 'Answer in this form: {"label": "<label>"}', "zh": '请按此格式回答：{"label": "<类别>"}'}

TRAIN_PER_CELL, TEST_PER_CELL = 60, 10


def sentences(lang: str, label: str) -> list[str]:
    phrases, things, frames = (EN, EN_THINGS, EN_FRAMES) if lang == "en" else (ZH, ZH_THINGS, ZH_FRAMES)
    return [f.format(thing=t, Thing=t[:1].upper() + t[1:], p=p) for p in phrases[label] for t in things for f in frames]


def record(lang: str, label: str, text: str, instruction: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"{instruction}\n{text}"}, {"role": "assistant", "content": answer}],
            "label": label, "input": text, "lang": lang, **extra}


def main() -> None:
    rng = random.Random(20240605)
    train, test, wording, fmt = [], [], [], []
    for lang in ("en", "zh"):
        for label in ("positive", "negative", "neutral"):
            pool = sentences(lang, label)
            rng.shuffle(pool)
            for text in pool[:TRAIN_PER_CELL]:
                train.append(record(lang, label, text, INSTRUCTION[lang], WORDS[lang][label]))
            for text in pool[TRAIN_PER_CELL:TRAIN_PER_CELL + TEST_PER_CELL]:
                test.append(record(lang, label, text, INSTRUCTION[lang], WORDS[lang][label], expect=WORDS[lang][label]))
                instr, words = WORDING[lang]
                wording.append(record(lang, label, text, instr, words[label], expect=words[label]))
                answer = json.dumps({"label": WORDS[lang][label]}, ensure_ascii=False)
                fmt.append(record(lang, label, text, f"{FORMAT[lang]}\n{INSTRUCTION[lang]}", answer, expect=answer))
    rng.shuffle(train)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test), ("test_wording", wording), ("test_format", fmt)):
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    main()
