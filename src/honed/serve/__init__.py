"""OpenAI-compatible HTTP serving: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`.

A backend (transformers + honed's chat templates, or llama.cpp for a GGUF file) sits behind a
batcher that merges requests arriving together into one padded `generate()` call; the
out-of-domain gate and the knowledge base, when given, act before the model.

>>> from honed.serve import ServeSettings
>>> ServeSettings().host
'127.0.0.1'
"""

from honed.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(*args, **kwargs):
    """Build the FastAPI app (see `honed.serve.app.create_app`); imported lazily (FastAPI is heavy)."""
    from honed.serve.app import create_app as build

    return build(*args, **kwargs)
