"""Load an export back with an independent runtime and compare it with the torch model.

Each runtime answers the same chat prompts greedily for 32 tokens and scores the torch model's
own continuation (teacher forcing), so the comparison reads:

- greedy: the runtime's 32 greedy tokens are the torch model's (the test for 16-bit exports);
- mean KL(torch ‖ runtime) of the next-token distributions and top-1 agreement (for quant types);
- for llama.cpp also its tokenisation of test strings against the Hugging Face tokenizer's, and
  whether it stops at the family's end-of-turn tokens.

>>> kl_and_top1(np.zeros((2, 3)), np.zeros((2, 3)))
(0.0, 1.0)
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

GREEDY_TOKENS = 32
QUESTIONS = ("What does HbA1c measure?", "What is TSH?", "血常规查什么？")
TOKENIZER_PROBES = ("Hello world! How are you today?", "The patient's HbA1c was 6.5% (48 mmol/mol) on 2024-03-01.",
                    "病人检查了血糖水平。", "def f(x):\n    return x * 2\n", "  leading spaces\tand tabs\n\nnew lines",
                    "I've been told he'd've LIKED it", "emoji 🚀 and ümlauts")


@dataclass
class RuntimeCheck:
    """One runtime's agreement with the torch model over all prompts."""

    runtime: str
    supported: bool = True
    reason: str | None = None
    greedy_identical: list[bool] = field(default_factory=list)
    first_difference: list[int | None] = field(default_factory=list)
    mean_kl: float | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    tokenizer_mismatches: list[str] | None = None
    stops_not_end_of_generation: list[int] | None = None

    def passed(self, exact: bool) -> bool:
        if not self.supported:
            return True  # nothing was claimed
        ok = not self.tokenizer_mismatches and not self.stops_not_end_of_generation
        return ok and (all(self.greedy_identical) if exact else True)


def softmax_log(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_and_top1(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean KL(reference ‖ candidate) over rows, and the share of rows whose argmax agrees."""
    lp, lq = softmax_log(reference), softmax_log(candidate)
    kl = float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())
    top1 = float((reference.argmax(-1) == candidate.argmax(-1)).mean())
    return max(kl, 0.0), top1


def chat_prompts(tokenizer, model_type: str, scope_prompt: str | None, questions=QUESTIONS) -> list[list[int]]:
    """The verification prompts, rendered as `honed chat` renders them (scope prompt first)."""
    from honed.data.conversation import Conversation, Message
    from honed.data.templates import get_template
    from honed.data.tokenize import render_prompt_ids

    template = get_template("auto", tokenizer, model_type)
    head = [Message("system", scope_prompt)] if scope_prompt else []
    return [render_prompt_ids(Conversation([*head, Message("user", q)]), tokenizer, template) for q in questions]


class TorchRuntime:
    """A transformers model computed in fp32 on the CPU: the reference, or a reloaded export."""

    def __init__(self, model, name: str = "torch"):
        import inspect

        if next(model.parameters()).dtype != torch.float32:
            model = model.float()
        self.model, self.name = model.eval(), name
        # transformers renamed `past_key_values` to `cache` within 5.x; use whichever this one takes
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
        self._cache_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"

    @torch.no_grad()
    def greedy(self, prompt: list[int], n: int) -> list[int]:
        out = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
        tokens = []
        for _ in range(n):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            past = getattr(out, self._cache_arg)
            out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **{self._cache_arg: past})
        return tokens

    @torch.no_grad()
    def logits(self, ids: list[int], start: int, n: int) -> np.ndarray:
        return self.model(input_ids=torch.tensor([ids])).logits[0, start : start + n].float().numpy()


class LlamaCppRuntime:
    """A GGUF file run by llama.cpp (llama-cpp-python), greedy by argmax over its logits."""

    name = "llama.cpp"

    def __init__(self, path: str, n_ctx: int):
        from honed.export.gguf import llama_cpp_module

        llama_cpp_module()
        from llama_cpp import Llama

        from honed.export.gguf import native_log

        with native_log(f"loading {path}"):
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                             n_threads=max(1, min(4, os.cpu_count() or 1)))

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(prompt)
        tokens = []
        for _ in range(n):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            tokens.append(token)
            self.llm.eval([token])
        return tokens

    def logits(self, ids: list[int], start: int, n: int) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[start : start + n], dtype=np.float32)

    def tokenizer_mismatches(self, tokenizer, texts) -> list[str]:
        bad = [t for t in texts if self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
               != tokenizer.encode(t, add_special_tokens=False)]
        with_bos = tokenizer("Hello")["input_ids"]
        if self.llm.tokenize(b"Hello", add_bos=True, special=True) != with_bos:
            bad.append("BOS handling of 'Hello'")
        return bad

    def close(self) -> None:
        """Free llama.cpp's model now (its finaliser fails when run at interpreter exit)."""
        self.llm.close()

    def not_end_of_generation(self, stop_ids: list[int]) -> list[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        return [i for i in stop_ids if not llama_cpp.llama_vocab_is_eog(vocab, i)]


def compare(reference: TorchRuntime, runtime, prompts: list[list[int]], n: int = GREEDY_TOKENS) -> RuntimeCheck:
    """Greedy identity, KL and top-1 of `runtime` against `reference` on every prompt."""
    check = RuntimeCheck(runtime.name)
    kls, tops, diffs = [], [], []
    for prompt in prompts:
        expected = reference.greedy(prompt, n)
        got = runtime.greedy(prompt, n)
        check.greedy_identical.append(got == expected)
        check.first_difference.append(next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None))
        full = prompt + expected
        ref_logits = reference.logits(full, len(prompt) - 1, n)
        cand_logits = runtime.logits(full, len(prompt) - 1, n)
        width = min(ref_logits.shape[-1], cand_logits.shape[-1])
        kl, top1 = kl_and_top1(ref_logits[:, :width], cand_logits[:, :width])
        kls.append(kl)
        tops.append(top1)
        diffs.append(float(np.abs(ref_logits[:, :width] - cand_logits[:, :width]).max()))
    check.mean_kl, check.top1_agreement = float(np.mean(kls)), float(np.mean(tops))
    check.max_abs_logit_diff = max(diffs)
    return check


def unsupported(name: str, err: Exception) -> RuntimeCheck:
    reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    return RuntimeCheck(name, supported=False, reason=f"not supported by {name}: {reason}")


def as_dict(checks: list[RuntimeCheck], *, exact: bool, quant: str | None) -> dict:
    """verification.json: what was compared, each runtime's numbers, and the verdict."""
    return {"quant": quant, "greedy_tokens": GREEDY_TOKENS, "criterion": "greedy tokens identical" if exact else
            "mean KL and top-1 agreement reported", "passed": all(c.passed(exact) for c in checks),
            "runtimes": [asdict(c) for c in checks]}
