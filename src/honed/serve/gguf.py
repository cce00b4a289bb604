"""A GGUF file served through llama.cpp (llama-cpp-python), one job at a time.

The prompt is rendered with the chat template stored in the GGUF file (honed's export writes the
model's own), tokenized by llama.cpp, and generated token by token; every token goes through the
same `RowText` as the transformers backend, so stops, streaming and reasoning behave alike.
llama-cpp-python's high-level API keeps one sequence per model, so jobs do not batch here; for
throughput at scale put the llama.cpp server or vLLM behind your clients (README, "Serving").
"""

from __future__ import annotations

from pathlib import Path

from honed.data.conversation import Message
from honed.errors import ConfigError, ModelError
from honed.serve.backends import Job, emit
from honed.serve.rowtext import RowResult, RowText


def _chat_renderer(template: str):
    """A Jinja renderer for the GGUF's chat template, sandboxed as transformers renders them."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ModelError(f"the GGUF chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


class GGUFBackend:
    """llama.cpp generation of a GGUF file; `llm` is a `llama_cpp.Llama` (or a stand-in with its methods)."""

    name = "llama.cpp"
    supports_batching = False

    def __init__(self, llm):
        self.llm = llm
        meta = getattr(llm, "metadata", {}) or {}
        template = meta.get("tokenizer.chat_template")
        self._render = _chat_renderer(template) if template else None
        self._bos = self._token_text(meta.get("tokenizer.ggml.bos_token_id"))
        self._eos = self._token_text(meta.get("tokenizer.ggml.eos_token_id"))
        stops = {llm.token_eos()}
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if meta.get(key) not in (None, ""):
                stops.add(int(meta[key]))
        self.stop_ids = sorted(s for s in stops if s is not None and s >= 0)

    @classmethod
    def load(cls, path: str, *, n_ctx: int = 4096, n_gpu_layers: int = -1, seed: int = 0) -> "GGUFBackend":
        """Open a GGUF file with llama.cpp (all layers on the GPU when llama.cpp was built with one)."""
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("--gguf needs llama-cpp-python: pip install 'honed[export]' (or bash scripts/setup.sh)") from None
        if not Path(path).is_file():
            raise ModelError(f"--gguf {path}: no such file")
        return cls(Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, seed=seed, verbose=False))

    def close(self) -> None:
        """Free llama.cpp's model now (its finalizer fails when run at interpreter exit)."""
        self.llm.close()

    def _token_text(self, token_id) -> str:
        if token_id in (None, ""):
            return ""
        return self.llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[Message], enable_thinking: bool | None = None) -> list[int]:
        if self._render is None:
            raise ModelError("this GGUF file holds no chat template (tokenizer.chat_template); use /v1/completions with a raw prompt")
        turns = [{"role": m.role, "content": m.content, **({"reasoning_content": m.reasoning} if m.reasoning else {})} for m in messages]
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        text = self._render.render(messages=turns, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos, **extra)
        # The template writes the BOS itself where the family has one; special=True parses marker tokens.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def text_prompt(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def _decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def run(self, jobs: list[Job]) -> list[RowResult]:
        return [self._run_one(job) for job in jobs]

    def _run_one(self, job: Job) -> RowResult:
        s = job.settings
        row = RowText(self._decode, stop_ids=self.stop_ids, stop_strings=job.stop, max_tokens=s.max_new_tokens, chat=job.chat)
        if s.seed is not None:
            self.llm.set_seed(s.seed)
        greedy = s.temperature <= 0
        tokens = self.llm.generate(job.prompt_ids, temp=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p,
                                   top_k=1 if greedy else (s.top_k or 0), min_p=0.0, repeat_penalty=s.repetition_penalty, reset=True)
        for token in tokens:
            if job.cancelled.is_set():
                row.cancel()
            else:
                row.feed(int(token))
            emit(job, row)
            if row.done:
                break
        return row.result()
