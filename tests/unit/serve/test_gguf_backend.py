"""The GGUF backend's own logic (chat template from the file's metadata, stops, seeds) over a stand-in
for llama_cpp.Llama; a real GGUF file is exercised in the integration test when one can be written."""

from __future__ import annotations

import pytest

from honed.data.conversation import Message
from honed.infer.generate import GenerationSettings
from honed.serve.backends import Job
from honed.serve.gguf import GGUFBackend

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB = ["<eos>", "<|im_end|>"]  # ids 0, 1; every other id is a character (id - 2)


class FakeLlama:
    """The few llama_cpp.Llama methods the backend uses; tokens are characters."""

    metadata = {"tokenizer.chat_template": CHATML, "tokenizer.ggml.eos_token_id": "0", "tokenizer.ggml.eot_token_id": "1"}

    def __init__(self, reply: str):
        self.reply, self.calls, self.seeds = reply, [], []

    def token_eos(self):
        return 0

    def tokenize(self, data: bytes, add_bos=True, special=False):
        text, ids = data.decode(), []
        while text:
            marker = next((i for i, v in enumerate(VOCAB) if special and text.startswith(v)), None)
            if marker is not None:
                ids.append(marker)
                text = text[len(VOCAB[marker]):]
            else:
                ids.append(ord(text[0]) + 2)
                text = text[1:]
        return ids

    def detokenize(self, ids, special=False):
        return "".join(VOCAB[i] if i < 2 else chr(i - 2) for i in ids).encode()

    def set_seed(self, seed):
        self.seeds.append(seed)

    def generate(self, tokens, **kwargs):
        self.calls.append((list(tokens), kwargs))
        yield from self.tokenize(self.reply.encode(), special=True)


def test_chat_prompt_is_the_files_template():
    backend = GGUFBackend(FakeLlama("ok"))
    ids = backend.chat_prompt([Message("system", "Be brief."), Message("user", "Hi")])
    assert backend.llm.detokenize(ids).decode() == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert backend.stop_ids == [0, 1]


def test_generation_stops_at_end_of_turn_and_streams():
    llm = FakeLlama("Fasting: 9 to 12 hours.<|im_end|>never")
    backend = GGUFBackend(llm)
    deltas = []
    job = Job(backend.chat_prompt([Message("user", "Fast?")]), GenerationSettings(max_new_tokens=100, temperature=0.7, top_p=0.9, seed=5),
              on_delta=lambda r, a: deltas.append(a))
    (result,) = backend.run([job])
    assert (result.text, result.finish_reason) == ("Fasting: 9 to 12 hours.", "stop")
    assert "".join(deltas) == result.text
    assert llm.seeds == [5]
    assert {k: llm.calls[0][1][k] for k in ("temp", "top_p")} == {"temp": 0.7, "top_p": 0.9}


def test_greedy_and_token_limit():
    llm = FakeLlama("abcdefgh")
    (result,) = GGUFBackend(llm).run([Job([5, 6], GenerationSettings(max_new_tokens=3))])
    assert (result.text, result.finish_reason, result.new_tokens) == ("abc", "length", 3)
    assert {k: llm.calls[0][1][k] for k in ("temp", "top_k")} == {"temp": 0.0, "top_k": 1}


def test_a_file_without_template_refuses_chat_clearly():
    from honed.errors import ModelError

    llm = FakeLlama("x")
    llm.metadata = {}
    with pytest.raises(ModelError, match="no chat template"):
        GGUFBackend(llm).chat_prompt([Message("user", "Hi")])
