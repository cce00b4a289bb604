"""`honed chat` (interactive or one-shot) and `honed generate` (JSONL in, JSONL out)."""

from __future__ import annotations

import argparse
import sys


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder or hub id (or a trained adapter/run folder)")
    p.add_argument("--adapter", help="LoRA adapter folder (peft format)")
    p.add_argument("--template", default="auto", help="chat template name (default: the tokenizer's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.add_argument("--system", help="system prompt for every conversation")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--kb", help="knowledge base folder: put the best passages into each prompt and cite them")
    p.add_argument("--kb-k", type=int, default=4, help="passages per question with --kb (default 4)")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--thinking", dest="enable_thinking", action="store_const", const=True, help="Qwen3: thinking on")
    think.add_argument("--no-thinking", dest="enable_thinking", action="store_const", const=False, help="Qwen3: thinking off")


def register(sub) -> None:
    chat = sub.add_parser("chat", help="talk to a model (interactive, or one answer with --prompt)")
    add_model_args(chat)
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--show-thinking", action="store_true", help="print the model's reasoning too")
    chat.set_defaults(func=run_chat)

    gen = sub.add_parser("generate", help="batch generation: JSONL of prompts in, JSONL of answers out")
    add_model_args(gen)
    gen.add_argument("--input", required=True, help="JSONL: {prompt} or {instruction, input} or {messages}")
    gen.add_argument("--output", required=True, help="JSONL to write (each input record + response)")
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=run_generate)


def _load(args):
    from honed.errors import ConfigError
    from honed.infer.generate import ChatModel, GenerationSettings

    if not args.model and not args.adapter:
        raise ConfigError("give --model DIR (and optionally --adapter DIR)")
    bot = ChatModel.load(args.model, adapter=args.adapter, template=args.template, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed, args.enable_thinking)
    return bot, settings


def _open_kb(args):
    """The --kb knowledge base, opened before the model loads so a wrong folder fails fast."""
    if not args.kb:
        return None
    from honed.guard.knowledge import KnowledgeBase

    return KnowledgeBase.open(args.kb)


def _with_kb(bot, settings, kb, k):
    """`ask(history) -> (reply, sources)`: plain, or with a KB the best passages put into the last turn."""
    if kb is None:
        return lambda history: (bot.reply(history, settings), "")
    from honed.guard.knowledge import retrieval_messages, sources_footer

    def ask(history):
        messages, passages = retrieval_messages(kb, history, k)
        return bot.reply(messages, settings), sources_footer(passages) if passages else ""

    return ask


def run_chat(args) -> int:
    from honed.data.conversation import Message

    kb = _open_kb(args)
    bot, settings = _load(args)
    ask = _with_kb(bot, settings, kb, args.kb_k)
    history = [Message("system", args.system)] if args.system else []
    if args.prompt is not None:
        reply, sources = ask([*history, Message("user", args.prompt)])
        if args.show_thinking and reply.reasoning:
            print(f"<think>\n{reply.reasoning}\n</think>")
        print(reply.text)
        if sources:
            print(sources)
        return 0
    print("honed chat — /reset clears the conversation, /exit quits", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line:
            continue
        history.append(Message("user", line))
        reply, sources = ask(history)
        if args.show_thinking and reply.reasoning:
            print(f"(thinking) {reply.reasoning}")
        print(f"bot> {reply.text}")
        if sources:
            print(sources)
        history.append(Message("assistant", reply.text))


def run_generate(args) -> int:
    from honed.infer.batch import generate_file

    kb = _open_kb(args)
    bot, settings = _load(args)
    retrieve = None
    if kb is not None:
        from honed.guard.knowledge import retrieval_messages

        def retrieve(messages):
            messages, passages = retrieval_messages(kb, messages, args.kb_k)
            return messages, [p.citation(full=True) for p in passages]

    n = generate_file(bot, args.input, args.output, settings, system=args.system, batch_size=args.batch_size, overwrite=args.overwrite, retrieve=retrieve)
    print(f"wrote {n} answers to {args.output}", file=sys.stderr)
    return 0
