"""The `local` kind of `honed.data.generators`: a honed/transformers model answers the generator's
messages through `ChatModel`. Registered when `honed.infer` is imported (the data layer, below this
one, only knows the kind by name).

>>> from honed.data.generators import make_generator
>>> gen = make_generator({"kind": "local", "path": "runs/my-model", "max_tokens": 64})  # doctest: +SKIP
"""

from __future__ import annotations

from honed.data.conversation import Message
from honed.data.generators import register_kind


class LocalGenerator:
    """A local model (full weights or an adapter folder) through honed's ChatModel."""

    def __init__(self, path: str, adapter: str | None = None, temperature: float = 0.7, max_tokens: int = 256,
                 device: str = "auto"):
        from honed.infer.generate import ChatModel

        self.name = path if adapter is None else f"{path} + {adapter}"
        self.model = ChatModel.load(path, adapter=adapter, device=device)
        self.temperature, self.max_tokens = temperature, max_tokens

    def complete(self, messages: list[Message], *, seed: int | None = None) -> str:
        from honed.infer.generate import GenerationSettings

        settings = GenerationSettings(max_new_tokens=self.max_tokens, temperature=self.temperature, seed=seed)
        return self.model.reply(list(messages), settings).text


register_kind("local", LocalGenerator)
