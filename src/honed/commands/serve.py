"""`honed serve`: an OpenAI-compatible HTTP server for a model, an adapter or a GGUF file."""

from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions)")
    src = p.add_argument_group("model")
    src.add_argument("--model", help="model folder or hub id (or a trained adapter/run folder)")
    src.add_argument("--adapter", help="LoRA adapter folder (peft format)")
    src.add_argument("--gguf", help="a GGUF file, served through llama.cpp (llama-cpp-python)")
    src.add_argument("--served-model-name", help="the model id clients send (default: the folder or file name)")
    src.add_argument("--template", default="auto", help="chat template name (default: the tokenizer's own)")
    src.add_argument("--device", default="auto")
    src.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    src.add_argument("--trust-remote-code", action="store_true")
    src.add_argument("--n-ctx", type=int, default=4096, help="GGUF: context length llama.cpp allocates")
    dom = p.add_argument_group("domain")
    dom.add_argument("--guard", help="gate folder (honed guard fit): out-of-domain requests get the refusal")
    dom.add_argument("--kb", help="knowledge-base folder: retrieved passages go into each chat request")
    dom.add_argument("--kb-top-k", type=int, default=4)
    dom.add_argument("--system", help="system prompt for requests without one (default: the model's scope prompt)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    net.add_argument("--port", type=int, default=8000)
    net.add_argument("--api-key", default=os.environ.get("HONED_API_KEY"), help="require 'Authorization: Bearer KEY' (or set HONED_API_KEY)")
    lim = p.add_argument_group("limits and batching")
    lim.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    lim.add_argument("--max-prompt-tokens", type=int, default=4096)
    lim.add_argument("--max-body-bytes", type=int, default=1_000_000)
    lim.add_argument("--max-concurrency", type=int, default=64, help="requests admitted at once; more get 429")
    lim.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request gets 504")
    lim.add_argument("--max-batch", type=int, default=8, help="requests merged into one generate() call")
    lim.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a lone request waits for company")
    gen = p.add_argument_group("defaults for fields a request leaves out")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    think = gen.add_mutually_exclusive_group()
    think.add_argument("--thinking", dest="enable_thinking", action="store_const", const=True, help="Qwen3: thinking on")
    think.add_argument("--no-thinking", dest="enable_thinking", action="store_const", const=False, help="Qwen3: thinking off")
    p.set_defaults(func=run_serve)


def settings_from_args(args):
    """ServeSettings and default GenerationSettings from the parsed flags (checked)."""
    from honed.errors import ConfigError
    from honed.infer.generate import GenerationSettings
    from honed.serve.settings import ServeSettings

    for flag in ("port", "max_tokens_limit", "max_prompt_tokens", "max_body_bytes", "max_concurrency", "max_batch", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    if args.request_timeout <= 0:
        raise ConfigError(f"--request-timeout must be positive (got {args.request_timeout})")
    source = args.gguf or args.adapter or args.model
    name = args.served_model_name or (Path(source).stem if args.gguf else Path(str(source).rstrip("/")).name)
    settings = ServeSettings(host=args.host, port=args.port, api_key=args.api_key or None, model_name=name,
                             max_tokens_limit=args.max_tokens_limit, default_max_tokens=min(args.max_new_tokens, args.max_tokens_limit),
                             max_prompt_tokens=args.max_prompt_tokens, max_body_bytes=args.max_body_bytes,
                             max_concurrency=args.max_concurrency, request_timeout_s=args.request_timeout,
                             max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, kb_top_k=args.kb_top_k)
    defaults = GenerationSettings(settings.default_max_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, None, args.enable_thinking)
    return settings, defaults


def build_backend(args):
    from honed.errors import ConfigError

    if args.gguf:
        if args.model or args.adapter:
            raise ConfigError("give either --gguf FILE or --model/--adapter, not both")
        from honed.serve.gguf import GGUFBackend

        return GGUFBackend.load(args.gguf, n_ctx=args.n_ctx)
    if not args.model and not args.adapter:
        raise ConfigError("give --model DIR (and optionally --adapter DIR), or --gguf FILE")
    from honed.serve.backends import HFBackend

    return HFBackend.load(args.model, adapter=args.adapter, template=args.template, device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code)


def run_serve(args) -> int:
    from honed.errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("honed serve needs FastAPI and uvicorn: pip install 'honed[serve]'") from None
    from honed.serve.app import create_app
    from honed.serve.backends import model_scope_prompt
    from honed.serve.server import run_server

    settings, defaults = settings_from_args(args)
    gguf_folder = str(Path(args.gguf).parent) if args.gguf else None  # an export writes scope_prompt.txt beside the file
    settings.system_prompt = args.system or model_scope_prompt(args.adapter, args.model, gguf_folder)
    gate = kb = None
    if args.guard:
        from honed.serve.domain import load_gate

        gate = load_gate(args.guard)
    if args.kb:
        from honed.serve.domain import KnowledgeRetriever

        kb = KnowledgeRetriever.open(args.kb, args.kb_top_k)
    backend = build_backend(args)
    run_server(create_app(backend, gate=gate, kb=kb, settings=settings, defaults=defaults), settings)
    return 0
