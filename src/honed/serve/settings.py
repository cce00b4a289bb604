"""Everything `honed serve` can be told, in one place: network, limits, batching, defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Server settings; every limit answers with a 4xx error, never a crash.

    >>> ServeSettings(port=9000).port
    9000
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "honed"  # the id /v1/models lists and requests name
    system_prompt: str | None = None  # used when a chat request has no system message
    # Limits.
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1_000_000
    max_concurrency: int = 64  # requests queued or running; more get 429 with Retry-After
    request_timeout_s: float = 300.0
    # Batching: requests arriving within `batch_window_ms` of each other share one generate() call.
    max_batch: int = 8
    batch_window_ms: float = 5.0
    # Knowledge base: passages retrieved per question.
    kb_top_k: int = 4
    graceful_shutdown_s: float = 30.0
