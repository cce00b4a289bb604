"""Retrieved passages into the prompt: numbered sources in the last user turn, with instructions
to answer from them, cite [n], and say when they do not hold the answer.

The same layout is used at inference (`honed chat --kb`, the server) and for training samples
(`honed data add-context`), so a model trained on one sees the other unchanged. The instructions
follow the question's language (English or Chinese).

>>> msgs = build_rag_messages([{"role": "user", "content": "What is HbA1c?"}], [Passage("HbA1c is ...", "a.md", "HbA1c", 0.1)])
>>> print(msgs[-1]["content"])  # doctest: +NORMALIZE_WHITESPACE
Answer the question using only the numbered context passages below. Cite the passages you use as [1], [2]. If the context does not contain the answer, say so instead of guessing.
<BLANKLINE>
Context:
[1] (a.md — HbA1c)
HbA1c is ...
<BLANKLINE>
Question: What is HbA1c?
"""

from __future__ import annotations

from dataclasses import replace, is_dataclass

from honed.guard.knowledge.store import Passage

INSTRUCTIONS = {
    "en": ("Answer the question using only the numbered context passages below. Cite the passages you use as [1], [2]. "
           "If the context does not contain the answer, say so instead of guessing."),
    "zh": "请只根据下面编号的参考资料回答问题，并用 [1]、[2] 标注所引用的资料。如果资料中没有答案，请直接说明，不要猜测。",
}
LABELS = {"en": ("Context:", "Question: "), "zh": ("参考资料：", "问题：")}
NO_ANSWER = {
    "en": "The provided context does not contain the answer to this question.",
    "zh": "所提供的参考资料中没有这个问题的答案。",
}


def question_language(text: str) -> str:
    """'zh' for a question mostly in Chinese, else 'en' (the two languages the prompts are written in)."""
    from honed.data.quality.rules import detect_language

    return "zh" if detect_language(text) == "zh" else "en"


def format_context(passages: list[Passage]) -> str:
    """`[n] (file — location)` then the passage text, one block per passage."""
    return "\n\n".join(f"[{i}] ({p.citation()})\n{p.text}" for i, p in enumerate(passages, 1))


def rag_user_turn(question: str, passages: list[Passage], language: str | None = None) -> str:
    """The user turn that carries instructions, numbered context and the question."""
    lang = language or question_language(question)
    context_label, question_label = LABELS[lang]
    return f"{INSTRUCTIONS[lang]}\n\n{context_label}\n{format_context(passages)}\n\n{question_label}{question}"


def build_rag_messages(messages: list, passages: list[Passage], *, language: str | None = None) -> list:
    """A copy of `messages` whose last user turn carries the passages; dicts or `Message`s, as given.

    Earlier turns are left as they were: retrieval serves the question being asked now.
    """
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        m = out[i]
        role = m["role"] if isinstance(m, dict) else m.role
        if role != "user":
            continue
        content = m["content"] if isinstance(m, dict) else m.content
        if not isinstance(content, str):  # OpenAI content parts: keep the text parts
            content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
        new = rag_user_turn(content, passages, language)
        if isinstance(m, dict):
            out[i] = {**m, "content": new}
        elif is_dataclass(m):
            out[i] = replace(m, content=new)
        elif hasattr(m, "model_copy"):  # a pydantic message (an HTTP request's)
            out[i] = m.model_copy(update={"content": new})
        else:
            raise TypeError(f"build_rag_messages: messages must be dicts, Message or pydantic models, not {type(m).__name__}")
        return out
    raise ValueError("build_rag_messages: the conversation has no user turn to answer")


def last_user_text(messages: list) -> str:
    for m in reversed(messages):
        role = m["role"] if isinstance(m, dict) else m.role
        if role == "user":
            content = m["content"] if isinstance(m, dict) else m.content
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def retrieval_messages(kb, messages: list, k: int = 5) -> tuple[list, list[Passage]]:
    """Search `kb` with the last user turn; the conversation with the passages in it, and the passages."""
    question = last_user_text(messages)
    passages = kb.search(question, k=k) if question.strip() else []
    if not passages:
        return list(messages), []
    return build_rag_messages(messages, passages), passages


def sources_footer(passages: list[Passage]) -> str:
    """`Sources:` lines for printing under an answer."""
    return "Sources:\n" + "\n".join(f"  [{i}] {p.citation(full=True)}" for i, p in enumerate(passages, 1))
