"""RowText: where an answer stops, what may be streamed yet, and that the stream equals the final text."""

from __future__ import annotations

import pytest

from honed.serve.rowtext import RowText, split_reasoning


def chars(ids):
    return "".join(map(chr, ids))


def stream(text: str, **kwargs):
    """Feed `text` one character per token; return (reasoning deltas, answer deltas, result)."""
    row = RowText(chars, **{"stop_ids": [0], "max_tokens": 1000, **kwargs})
    reasoning, answer = [], []
    for c in text:
        row.feed(ord(c))
        r, a = row.take_deltas()
        reasoning.append(r or "")
        answer.append(a)
        if row.done:
            break
    return reasoning, answer, row.result()


def test_stop_string_is_cut_and_never_streamed():
    _, answer, result = stream("Yes.<|im_end|>garbage", stop_strings=("<|im_end|>",))
    assert "".join(answer) == "Yes." == result.text
    assert result.finish_reason == "stop" and result.new_tokens == len("Yes.<|im_end|>")
    assert not any("<" in a for a in answer)


def test_a_false_start_of_a_stop_string_is_released():
    _, answer, result = stream("a <b c", stop_strings=("<|end|>",))
    assert answer[2] == ""  # "<" held back: it may begin "<|end|>"
    assert "".join(answer) == "a <b c" == result.text and result.finish_reason == "length"


def test_stop_token_and_token_limit():
    row = RowText(chars, stop_ids=[0], max_tokens=3)
    assert [row.feed(t) for t in (ord("a"), ord("b"), ord("c"))] == [False, False, True]
    assert (row.result().text, row.result().finish_reason) == ("abc", "length")
    row = RowText(chars, stop_ids=[0], max_tokens=3)
    assert [row.feed(t) for t in (ord("a"), 0)] == [False, True]
    assert (row.result().text, row.result().finish_reason, row.result().new_tokens) == ("a", "stop", 2)


def test_half_decoded_characters_wait():
    # UTF-8 bytes as tokens: "é" arrives in two tokens, the first decodes to U+FFFD.
    def utf8(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    row = RowText(utf8, stop_ids=[0], max_tokens=10)
    deltas = []
    for b in "aé".encode():
        row.feed(b)
        deltas.append(row.take_deltas()[1])
    assert deltas == ["a", "", "é"]


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<think>\nadd 2 and 2\n</think>\n\nIt is 4.", "add 2 and 2", "It is 4."),
    ("  plain answer  ", None, "plain answer"),
    ("<think>\n\n</think>\n\nshort", "", "short"),
])
def test_streamed_reasoning_and_answer_equal_the_final_split(text, reasoning, answer):
    r_deltas, a_deltas, result = stream(text + "\x00")
    assert (result.reasoning, result.text) == (reasoning, answer)
    assert "".join(a_deltas) == answer
    assert "".join(r_deltas) == (reasoning or "")


def test_completions_keep_raw_text():
    _, answer, result = stream("  raw <think> text \x00", chat=False)
    assert result.text == "  raw <think> text " == "".join(answer)


def test_cancel_ends_the_row():
    row = RowText(chars, stop_ids=[0], max_tokens=10)
    row.feed(ord("x"))
    row.cancel()
    assert row.done and row.feed(ord("y")) and row.result().finish_reason == "cancelled" and row.result().text == "x"


def test_split_reasoning_holds_a_possible_think_tag():
    assert split_reasoning("<th", final=False) == (None, "")
    assert split_reasoning("<th", final=True) == (None, "<th")
    assert split_reasoning("the", final=False) == (None, "the")
