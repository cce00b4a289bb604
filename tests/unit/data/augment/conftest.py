"""Fixtures for the augmentation tests: a sentiment label set and small samples of each shape."""

from __future__ import annotations

import pytest

from honed.data import Conversation, Message

LABELS = {
    "positive": ["积极", "正面", "乐观", "positive", "favourable"],
    "negative": ["消极", "负面", "悲观", "negative", "unfavourable"],
    "neutral": ["中性", "中立", "一般", "neutral", "mixed"],
}
FLIP = {"positive": "negative", "negative": "positive"}

ZH_INSTRUCTION = "判断下面这句话的情感，只能从（积极/消极/中性）中选一个："
EN_INSTRUCTION = "Classify the sentiment of the sentence as positive, negative or neutral:"

SENTIMENT = [  # (input, label, answer)
    ("我对这个结果感到高兴", "positive", "积极"),
    ("这部电影非常精彩，我十分喜欢", "positive", "类别：积极"),
    ("服务太糟糕了，等了一个小时", "negative", "消极"),
    ("我认为这个产品很好用", "positive", "这是一个积极的陈述。"),
    ("I liked it a lot", "positive", "positive"),
    ("The movie was great and the actors were excellent", "positive", "Label: positive"),
    ("The food was awful", "negative", "negative"),
    ("It was a terrible waste of money", "negative", "The sentiment is negative."),
]


def sentiment_sample(i: int, text: str, label: str, answer: str) -> Conversation:
    instruction = ZH_INSTRUCTION if any("\u4e00" <= c <= "\u9fff" for c in text) else EN_INSTRUCTION
    return Conversation([Message("system", "You are a careful annotator."),
                         Message("user", f"{instruction}\n{text}"), Message("assistant", answer)],
                        source=f"sentiment.jsonl:{i + 1}", meta={"label": label, "input": text})


@pytest.fixture
def labels() -> dict:
    return {k: list(v) for k, v in LABELS.items()}


@pytest.fixture
def sentiment() -> list[Conversation]:
    return [sentiment_sample(i, *row) for i, row in enumerate(SENTIMENT)]


@pytest.fixture
def structured() -> list[Conversation]:
    answers = ['{"label": "积极", "score": 0.9}',
               '```json\n{"name": "HbA1c", "unit": "%", "normal": "4.0-5.6", "fasting": false}\n```',
               "| drug | dose_mg | note |\n| --- | --- | --- |\n| metformin | 500 | with meals |\n| insulin | null | \"0.5\" |",
               "city: Paris\ncountry: France\npopulation: 2102650",
               "label: negative\nconfidence: 0.75\n"]
    prompts = ["请以JSON格式输出情感和分数：这部电影很好看", "Return the test as a JSON object: HbA1c",
               "List the drugs as a Markdown table.", "Give the facts about the capital of France.",
               "Sentiment of 'awful food', as YAML."]
    return [Conversation([Message("user", p), Message("assistant", a)], source=f"structured.jsonl:{i + 1}")
            for i, (p, a) in enumerate(zip(prompts, answers))]


@pytest.fixture
def fewshot() -> list[Conversation]:
    prompt = ("请判断情感。\n\n示例1：\n输入：很好看\n输出：积极\n\n示例2：\n输入：太难看了\n输出：消极\n\n"
              "示例3：\n输入：一般般\n输出：中性\n\n现在请判断：剧情紧凑")
    turns = [Message("system", "Answer with one word."),
             Message("user", "great"), Message("assistant", "positive"),
             Message("user", "awful"), Message("assistant", "negative"),
             Message("user", "so-so"), Message("assistant", "neutral"),
             Message("user", "loved it"), Message("assistant", "positive")]
    delimited = ("Classify.\n###\nInput: good\nOutput: positive\n###\nInput: bad\nOutput: negative\n###\n"
                 "Input: okay\nOutput: neutral\n###\nInput: superb")
    return [Conversation([Message("user", prompt), Message("assistant", "积极")], source="fewshot.jsonl:1"),
            Conversation(turns, source="fewshot.jsonl:2"),
            Conversation([Message("user", delimited), Message("assistant", "positive")], source="fewshot.jsonl:3")]


@pytest.fixture
def contexts() -> list[Conversation]:
    zh = ("团队共有五名成员。项目的截止日期是周五。预算已经获得批准。每周一上午开例会。"
          "需求文档由产品经理维护。\n\n项目什么时候截止？")
    en = ("The office opens at nine. The project deadline is Friday. The budget was approved in May. "
          "Meetings are held on Mondays.\n\nWhen is the deadline?")
    return [Conversation([Message("user", zh), Message("assistant", "项目的截止日期是周五。")], source="ctx.jsonl:1"),
            Conversation([Message("user", en), Message("assistant", "The deadline is Friday.")], source="ctx.jsonl:2")]
