"""Generation backends behind the server: what a request becomes (a `Job`) and who runs it.

A backend turns chat messages or a raw prompt into prompt token ids, and runs a list of jobs
that share sampling settings, calling each job's `on_delta` as its text grows (streaming). The
transformers backend runs the list as one left-padded `generate()` call; `honed.serve.gguf` runs
a GGUF file through llama.cpp one job at a time.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from honed.data.conversation import Conversation, Message
from honed.infer.generate import GenerationSettings
from honed.serve.rowtext import RowResult, RowText

DeltaSink = Callable[[str | None, str], None]  # (reasoning delta or None, answer delta)


@dataclass(eq=False)
class Job:
    """One answer to generate: prompt ids, its own settings, where streamed text goes."""

    prompt_ids: list[int]
    settings: GenerationSettings
    stop: tuple[str, ...] = ()  # the request's own stop strings
    chat: bool = True  # chat answers are stripped and split from <think> reasoning; completions are raw
    on_delta: DeltaSink | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one generate() call (max_new_tokens is per row)."""
        s = self.settings
        sampling = (s.temperature, s.top_p, s.top_k) if s.temperature > 0 else (0.0,)
        return (*sampling, s.repetition_penalty, s.seed)


class Backend(Protocol):
    name: str
    supports_batching: bool

    def chat_prompt(self, messages: list[Message], enable_thinking: bool | None = None) -> list[int]: ...

    def text_prompt(self, text: str) -> list[int]: ...

    def run(self, jobs: list[Job]) -> list[RowResult]: ...


def emit(job: Job, row: RowText) -> None:
    """Send the row's new text to the job's stream, if it has one."""
    if job.on_delta is None:
        return
    reasoning, answer = row.take_deltas()
    if reasoning or answer:
        job.on_delta(reasoning, answer)


class HFBackend:
    """transformers generation with honed's chat templates; a batch of jobs is one generate() call."""

    name = "transformers"
    supports_batching = True

    def __init__(self, bot):
        self.bot = bot
        tok = bot.tokenizer
        self._specials = [t for t in (tok.bos_token, tok.pad_token) if t]

    @classmethod
    def load(cls, model: str | None, *, adapter: str | None = None, **load_kwargs) -> "HFBackend":
        """Load a model folder (and adapter) as `honed chat` does (`refusal_calibration=FILE` among
        the keywords: every chat reply is decided by it, batched or not)."""
        from honed.infer.generate import ChatModel

        return cls(ChatModel.load(model, adapter=adapter, **load_kwargs))

    def chat_prompt(self, messages: list[Message], enable_thinking: bool | None = None) -> list[int]:
        from honed.data.tokenize import render_prompt_ids

        return render_prompt_ids(Conversation(messages, source="request"), self.bot.tokenizer, self.bot.template, enable_thinking=enable_thinking)

    def text_prompt(self, text: str) -> list[int]:
        return self.bot.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        text = self.bot.tokenizer.decode(ids, skip_special_tokens=False)
        for special in self._specials:
            text = text.replace(special, "")
        return text

    def run(self, jobs: list[Job]) -> list[RowResult]:
        """Generate every job in one left-padded batch; each row stops on its own."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from honed.infer.generate import left_pad, sampling_kwargs

        bot = self.bot
        rows = [RowText(self._decode, stop_ids=bot.stop_ids, stop_strings=(*bot.stop_strings, *j.stop),
                        max_tokens=j.settings.max_new_tokens, chat=j.chat) for j in jobs]

        class RowStops(StoppingCriteria):
            # The per-row stop check doubles as the token feed: it sees every new token first.
            def __call__(self, input_ids, scores, **kwargs):
                for job, row, token in zip(jobs, rows, input_ids[:, -1].tolist()):
                    if row.done:
                        continue
                    if job.cancelled.is_set():
                        row.cancel()
                    else:
                        row.feed(token)
                    emit(job, row)
                return torch.tensor([row.done for row in rows], device=input_ids.device)

        settings = dataclasses.replace(jobs[0].settings, max_new_tokens=max(j.settings.max_new_tokens for j in jobs))
        pad = bot.tokenizer.pad_token_id
        ids, mask = left_pad([j.prompt_ids for j in jobs], pad)
        seed = settings.seed
        devices = [bot.device] if bot.device.type == "cuda" else []
        # With a refusal calibration (--refusal-calibration), chat rows unlikely to refuse may not open with a refusal.
        calibrated, probabilities = bot.refusal_processors([j.prompt_ids for j in jobs], [j.chat for j in jobs])
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            bot.model.generate(input_ids=ids.to(bot.device), attention_mask=mask.to(bot.device),
                               max_new_tokens=settings.max_new_tokens, eos_token_id=bot.stop_ids, pad_token_id=pad,
                               stopping_criteria=StoppingCriteriaList([RowStops()]), **sampling_kwargs(settings), **calibrated)
        results = [row.result() for row in rows]
        for result, p in zip(results, probabilities or []):
            result.refusal_probability = p
        return results


def model_scope_prompt(*folders: str | None) -> str | None:
    """The scope prompt the model was trained with, from the first folder that holds one.

    Give the adapter before the model: an adapter's prompt is the one its training used.
    """
    from honed.model.scope import load_scope_prompt

    for folder in folders:
        if folder and Path(folder).is_dir():
            prompt = load_scope_prompt(folder)
            if prompt:
                return prompt
    return None
