"""The OpenAI request bodies the server accepts, and the response objects it sends back.

Fields honed does not implement (tools, logprobs, n > 1, echo) are refused with a 400 that names
them rather than ignored; unknown extra fields are ignored as OpenAI's API does.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from honed.serve.errors import APIError


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None

    def text(self, where: str) -> str:
        """The message's text; image or audio parts are refused (text-only models)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        other = [p.type for p in self.content if p.type != "text"]
        if other:
            raise APIError(400, f"{where}: content parts of type {other[0]!r} are not supported (text only)", param=where, code="unsupported_content")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields both endpoints share; None means "the server's default"."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension (vLLM, llama.cpp)
    repetition_penalty: float | None = Field(None, gt=0)  # extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 stop sequences", param="stop")
        return tuple(s for s in stops if s)

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise APIError(400, "n: only n=1 is supported", param="n", code="unsupported_parameter")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")


class ChatRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    chat_template_kwargs: dict | None = None  # {"enable_thinking": false} for Qwen3, as vLLM takes it

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools:
            raise APIError(400, "tools are not supported by this server", param="tools", code="unsupported_parameter")


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        return prompts

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo or self.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if self.echo else "suffix", code="unsupported_parameter")
        if self.stream and isinstance(self.prompt, list) and len(self.prompt) > 1:
            raise APIError(400, "stream: only one prompt per streaming request", param="prompt", code="unsupported_parameter")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_message(text: str, reasoning: str | None) -> dict:
    message = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def chat_completion(cid: str, model: str, text: str, reasoning: str | None, finish_reason: str, use: dict, honed: dict | None) -> dict:
    """A `chat.completion` object; honed's own information (gate decision, citations) under `honed`."""
    out = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": chat_message(text, reasoning), "finish_reason": finish_reason, "logprobs": None}],
           "usage": use}
    if honed:
        out["honed"] = honed
    return out


def chat_chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None, honed: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if honed:
        out["honed"] = honed
    return out


def text_completion(cid: str, model: str, choices: list[tuple[str, str]], use: dict, honed: dict | None) -> dict:
    """A `text_completion` object from (text, finish_reason) per prompt."""
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": i, "text": text, "finish_reason": fr, "logprobs": None} for i, (text, fr) in enumerate(choices)],
           "usage": use}
    if honed:
        out["honed"] = honed
    return out
