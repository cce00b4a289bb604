"""Generation with a base model or base + adapter: batched, left-padded, stopping at end of turn.

>>> bot = ChatModel.load("runs/quickstart", adapter=None)  # doctest: +SKIP
>>> bot.reply([Message("user", "What does HbA1c measure?")]).text  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from honed.config import ModelConfig
from honed.data.conversation import Conversation, Message
from honed.model.load import load_model, load_tokenizer, pick_device

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """Greedy when temperature is 0; otherwise sampling with top-p / top-k."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    enable_thinking: bool | None = None


@dataclass
class Reply:
    text: str
    reasoning: str | None
    new_tokens: int
    finished: bool  # False when max_new_tokens cut the answer
    refusal_probability: float | None = None  # P(opening with a refusal), with a refusal calibration


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts padded on the left to the longest one.

    >>> left_pad([[5, 6], [7]], 0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def sampling_kwargs(s: GenerationSettings) -> dict:
    """`model.generate` arguments for `s`: greedy at temperature 0, else sampling with top-p / top-k."""
    if s.temperature > 0:
        return dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None, repetition_penalty=s.repetition_penalty)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=s.repetition_penalty)


class ChatModel:
    """A model + tokenizer + chat template, ready to answer conversations."""

    def __init__(self, model, tokenizer, template, device: torch.device):
        self.model, self.tokenizer, self.template, self.device = model, tokenizer, template, device
        self.model.eval()
        self._stop_ids, self._stop_strings = self._stops()
        self.refusal_calibration = None  # a RefusalCalibration: see use_refusal_calibration

    def use_refusal_calibration(self, calibration) -> None:
        """Decide refusals by P(refuse) against the calibration's threshold (None: plain decoding).
        `calibration` is a `RefusalCalibration`, a file, or a folder holding one; it must have been
        fitted with this model's tokenizer."""
        from honed.infer.refusal_calibration import as_calibration

        calibration = as_calibration(calibration)
        self.refusal_calibration = calibration.checked_for(self.tokenizer, self.template) if calibration is not None else None

    def refusal_processors(self, prompts: list[list[int]], replies: list[bool] | None = None) -> tuple[dict, list[float | None] | None]:
        """`model.generate` kwargs that apply the refusal calibration to a left-padded batch of
        `prompts`, and each prompt's P(refuse) (({}, None) without a calibration). `replies` marks
        the rows that are chat replies (default: all); the others (raw text completions, whose
        start is no reply's start) get no P(refuse) and decode freely."""
        cal = self.refusal_calibration
        replies = [True] * len(prompts) if replies is None else replies
        if cal is None or not any(replies):
            return {}, None
        from transformers import LogitsProcessorList

        from honed.infer.refusal_calibration import refusal_probabilities

        chosen = [p for p, is_reply in zip(prompts, replies) if is_reply]
        scores = iter(refusal_probabilities(self, chosen, cal.opening_tuples()))
        probabilities = [next(scores) if is_reply else None for is_reply in replies]
        ban = cal.ban_for(probabilities, max(map(len, prompts)))
        return {"logits_processor": LogitsProcessorList([ban])}, probabilities

    @classmethod
    def load(cls, model_path: str | None = None, *, adapter: str | None = None, template: str = "auto", device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False, allow_pickle: bool = False, refusal_calibration=None) -> "ChatModel":
        """Load a model folder (full model, or an adapter folder whose base is found from its config);
        `refusal_calibration` (a file or `RefusalCalibration`) is applied to every reply."""
        from honed.data.templates import get_template
        from honed.errors import ModelError

        if not model_path and not adapter:
            raise ModelError("give --model (a model, adapter or training run folder, or a hub id)")
        if refusal_calibration is not None:
            from honed.infer.refusal_calibration import as_calibration

            refusal_calibration = as_calibration(refusal_calibration)  # a bad file fails before the model loads
        from honed.model.reference import resolve_model_reference

        # `--model` may name an adapter or a `honed train` run folder too (its best or final weights).
        ref = resolve_model_reference(model_path, adapter)
        model_path, adapter = ref.base, ref.adapter
        cfg = ModelConfig(name_or_path=model_path, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, template=template)
        dev = pick_device(device)
        # The adapter folder holds the tokenizer the run saved (same as the base's, plus any pad token).
        tokenizer = load_tokenizer(cfg.model_copy(update={"name_or_path": adapter}) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else cfg)
        model, info = load_model(cfg, device=dev, for_training=False)
        if adapter:
            from honed.model.adapters import load_adapter

            model = load_adapter(model, adapter)
        bot = cls(model, tokenizer, get_template(template, tokenizer, info["model_type"]), dev)
        bot.use_refusal_calibration(refusal_calibration)
        return bot

    def _stops(self) -> tuple[list[int], list[str]]:
        ids, strings = set(), []
        for s in self.template.stop_strings:
            tok = self.tokenizer.encode(s, add_special_tokens=False)
            if len(tok) == 1:
                ids.add(tok[0])
            else:
                strings.append(s)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids), strings

    @torch.no_grad()
    def generate(self, conversations: list[Conversation], settings: GenerationSettings | None = None, *, batch_size: int = 8) -> list[Reply]:
        """Answer each conversation's last user turn; batches are left-padded."""
        from honed.data.tokenize import render_prompt_ids

        settings = settings or GenerationSettings()
        prompts = [render_prompt_ids(c, self.tokenizer, self.template, enable_thinking=settings.enable_thinking) for c in conversations]
        replies: list[Reply] = []
        # A seeded call draws from its own RNG stream: the caller's (a training run's, restored on
        # resume) is left exactly as it was.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=settings.seed is not None):
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            for start in range(0, len(prompts), batch_size):
                replies += self._generate_batch(prompts[start : start + batch_size], settings)
        return replies

    def reply(self, messages: list[Message], settings: GenerationSettings | None = None) -> Reply:
        return self.generate([Conversation(messages)], settings)[0]

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer (end of turn, eos)."""
        return self._stop_ids

    @property
    def stop_strings(self) -> list[str]:
        """End-of-turn markers that take several tokens (matched on the decoded text)."""
        return self._stop_strings

    def _generate_batch(self, prompts: list[list[int]], s: GenerationSettings) -> list[Reply]:
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        ids, mask = left_pad(prompts, pad)
        kwargs = dict(max_new_tokens=s.max_new_tokens, eos_token_id=self._stop_ids, pad_token_id=pad, **sampling_kwargs(s))
        if self._stop_strings:
            kwargs.update(stop_strings=self._stop_strings, tokenizer=self.tokenizer)
        calibrated, probabilities = self.refusal_processors(prompts)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs, **calibrated)
        replies = [self._decode(row[width:].tolist(), s.max_new_tokens) for row in out.cpu()]
        for reply, p in zip(replies, probabilities or []):
            reply.refusal_probability = p
        return replies

    def _decode(self, new_ids: list[int], limit: int) -> Reply:
        from honed.data.templates import split_thinking

        cut = next((i for i, t in enumerate(new_ids) if t in self._stop_ids), None)
        finished = cut is not None
        kept = new_ids[:cut] if finished else new_ids
        text = self.tokenizer.decode(kept, skip_special_tokens=False)
        for s in self._stop_strings:
            if s in text:
                text, finished = text.split(s, 1)[0], True
        reasoning, text = split_thinking(text) if "<think>" in text or "</think>" in text else (None, text)
        for special in (self.tokenizer.bos_token, self.tokenizer.pad_token):
            if special:
                text = text.replace(special, "")
        return Reply(text.strip(), reasoning, len(kept), finished or len(new_ids) < limit)
