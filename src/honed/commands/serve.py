"""`honed serve`: an OpenAI-compatible HTTP server for a model, an adapter or a GGUF file."""

from __future__ import annotations

import os
from pathlib import Path

from honed.commands.infer import add_model_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions)")
    add_model_args(p)  # --model, --adapter, --template, --device, --dtype, sampling defaults, --system, thinking
    src = p.add_argument_group("more model sources")
    src.add_argument("--gguf", help="a GGUF file, served through llama.cpp (llama-cpp-python)")
    src.add_argument("--served-model-name", help="the model id clients send (default: the folder or file name)")
    src.add_argument("--n-ctx", type=int, default=4096, help="GGUF: context length llama.cpp allocates")
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
                             max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, kb_top_k=args.kb_k)
    defaults = GenerationSettings(settings.default_max_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed, args.enable_thinking)
    return settings, defaults


def build_backend(args):
    from honed.errors import ConfigError

    if args.gguf:
        if args.model or args.adapter:
            raise ConfigError("give either --gguf FILE or --model/--adapter, not both")
        if args.refusal_calibration:
            raise ConfigError(f"--refusal-calibration {args.refusal_calibration}: the GGUF backend (--gguf) cannot apply a refusal "
                              "calibration (it is scored and applied through the transformers model and tokenizer it was fitted with); "
                              "serve the model or adapter folder with --model/--adapter instead, or leave the flag out")
        from honed.serve.gguf import GGUFBackend

        return GGUFBackend.load(args.gguf, n_ctx=args.n_ctx)
    if not args.model and not args.adapter:
        raise ConfigError("give --model DIR (and optionally --adapter DIR), or --gguf FILE")
    from honed.serve.backends import HFBackend

    from honed.commands.infer import load_refusal_calibration

    return HFBackend.load(args.model, adapter=args.adapter, template=args.template, device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                          refusal_calibration=load_refusal_calibration(args.refusal_calibration))


def run_serve(args) -> int:
    from honed.errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"honed serve needs FastAPI and uvicorn, which failed to import ({err}): "
                          "pip install fastapi uvicorn (core dependencies of honed)") from None
    from honed.serve.app import create_app
    from honed.serve.backends import model_scope_prompt
    from honed.serve.server import run_server

    settings, defaults = settings_from_args(args)
    gguf_folder = str(Path(args.gguf).parent) if args.gguf else None  # an export writes scope_prompt.txt beside the file
    settings.system_prompt = args.system or model_scope_prompt(args.adapter, args.model, gguf_folder)
    gate = kb = None
    if args.guard:
        from honed.serve.domain import load_gate

        gate = load_gate(args.guard, args.guard_log)
    if args.kb:
        from honed.serve.domain import KnowledgeRetriever

        kb = KnowledgeRetriever.open(args.kb, args.kb_k)
    backend = build_backend(args)
    run_server(create_app(backend, gate=gate, kb=kb, settings=settings, defaults=defaults), settings)
    return 0
