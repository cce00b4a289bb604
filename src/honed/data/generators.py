"""Generator models for synthetic data (8), model rewriting (10), judge scores (19) and the eval judge.

A generator answers a list of messages with text. Three kinds, chosen by a small mapping:

    generator: {kind: openai, base_url: http://127.0.0.1:8000/v1, model: qwen2.5-7b-instruct,
                api_key_env: OPENAI_API_KEY, temperature: 0.8, max_tokens: 512, timeout: 60}
    generator: {kind: local, path: runs/my-model, adapter: null, temperature: 0.8, max_tokens: 256}
    generator: {kind: dry_run}     # records every prompt, calls nothing, answers None

`openai` speaks the OpenAI chat-completions protocol through the official `openai` client (vLLM,
llama.cpp server, Ollama, `honed serve`, or api.openai.com); the key is read from the named
environment variable and never stored in a spec (specs end up in recipes and run records). `local` runs a honed/transformers model through honed.infer.generate.ChatModel: running
a model is a layer above the data, so `honed.infer` registers that kind here when it is imported
(`register_kind`); the honed CLI and `honed.train` import it.

>>> g = make_generator({"kind": "dry_run"})
>>> from honed.data import Message
>>> g.complete([Message("user", "Write one more example.")], seed=1) is None, len(g.prompts)
(True, 1)
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable

from honed.data.conversation import Message
from honed.errors import ConfigError, HonedError

KINDS = ("openai", "local", "dry_run")
KEYS = {"openai": {"kind", "base_url", "model", "api_key_env", "temperature", "max_tokens", "timeout", "retries"},
        "local": {"kind", "path", "adapter", "temperature", "max_tokens", "device"},
        "dry_run": {"kind"}}


class GeneratorError(HonedError):
    """The generator could not be reached or answered something unusable (the message names it)."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable  # no answer at all: asking again with other input will not help


class DryRunGenerator:
    """Keeps the prompts it is given and answers nothing: see what would be sent, spend nothing."""

    name = "dry_run"

    def __init__(self):
        self.prompts: list[list[Message]] = []

    def complete(self, messages: list[Message], *, seed: int | None = None) -> str | None:
        self.prompts.append(list(messages))
        return None


class OpenAIGenerator:
    """Any OpenAI-compatible `/chat/completions` endpoint, through the official `openai` client.

    The client does the protocol, the timeouts and the retries (connection errors, 408, 409, 429
    and 5xx, with exponential back-off and `Retry-After`); this class turns its errors into a
    GeneratorError naming the endpoint. `api_key` wins over `api_key_env`; with neither, a
    placeholder is sent (local servers such as vLLM, llama.cpp or `honed serve` ignore it).
    `http_client` (an httpx client, e.g. over a mock transport) is for tests and proxies.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", temperature: float = 0.7,
                 max_tokens: int = 512, timeout: float = 60, retries: int = 2, *, api_key: str | None = None,
                 http_client=None):
        import openai

        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.name = f"{model} at {base_url}"
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.timeout, self.retries = timeout, retries
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "not-needed", timeout=timeout,
                                    max_retries=retries, http_client=http_client)

    def complete(self, messages: list[Message], *, seed: int | None = None) -> str:
        openai = self._openai
        extra = {} if seed is None else {"seed": seed}  # honoured by servers that support it: repeatable generations
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": m.role, "content": m.content} for m in messages],
                temperature=self.temperature, max_tokens=self.max_tokens, **extra)
        except openai.APIStatusError as err:  # the client already retried what asking again may fix
            detail = (err.response.text or "")[:300]
            raise GeneratorError(f"generator {self.url}: HTTP {err.status_code}: {detail}") from None
        except openai.APITimeoutError:
            raise GeneratorError(f"generator {self.url}: no answer within {self.timeout} s "
                                 f"(after {self.retries} retries); raise `timeout` or check the server", unreachable=True) from None
        except openai.APIConnectionError as err:
            raise GeneratorError(f"generator {self.url}: cannot connect ({err.__cause__ or err}); "
                                 "is the server running and the base_url right?", unreachable=True) from None
        except openai.OpenAIError as err:  # e.g. a reply that is not JSON
            raise GeneratorError(f"generator {self.url}: {err}") from None
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise GeneratorError(f"generator {self.url}: the reply is not an OpenAI chat completion")
        return content


def check_spec(spec, where: str = "generator") -> dict:
    """Validate a generator mapping; unknown kinds or keys are ConfigErrors naming the key."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(KINDS)} in a mapping, got {spec!r}")
    unknown = sorted(set(spec) - KEYS[spec["kind"]])
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for kind {spec['kind']}; valid: {', '.join(sorted(KEYS[spec['kind']]))}")
    need = {"openai": ("base_url", "model"), "local": ("path",)}.get(spec["kind"], ())
    for key in need:
        if not spec.get(key):
            raise ConfigError(f"{where}.{key}: required for kind {spec['kind']}")
    return spec


# kind → factory(**spec without "kind"). `local` is registered by honed.infer (module docstring).
_FACTORIES: dict[str, Callable] = {"openai": OpenAIGenerator}


def register_kind(kind: str, factory: Callable) -> None:
    """Make `kind` (one of KINDS) build its generators with `factory(**keys)`; a higher layer's seam."""
    if kind not in KINDS:
        raise ValueError(f"generator kind {kind!r} is not one of {KINDS}")
    _FACTORIES[kind] = factory


def make_generator(spec, where: str = "generator"):
    """Build (and cache, so a local model loads once per process) the generator a mapping names."""
    spec = check_spec(spec, where)
    if spec["kind"] == "dry_run":
        return DryRunGenerator()
    if spec["kind"] not in _FACTORIES:
        raise ConfigError(f"{where}.kind: {spec['kind']} runs a model through honed.infer, which is not loaded: "
                          "`import honed.infer` first (the honed CLI and honed.train do)")
    return _cached(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _cached(key: str):
    spec = json.loads(key)
    return _FACTORIES[spec.pop("kind")](**spec)
