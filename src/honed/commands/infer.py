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
    p.add_argument("--system", help="system prompt for every conversation (default: the scope prompt saved with the model)")
    p.add_argument("--no-scope-prompt", action="store_true", help="do not use the scope prompt saved with the model")
    p.add_argument("--guard", metavar="DIR", help="out-of-domain gate (honed guard fit): refused questions get its refusal, the LLM is not called")
    p.add_argument("--guard-log", metavar="FILE", help="append each gate decision as a JSON line (input of honed guard drift)")
    p.add_argument("--refusal-calibration", metavar="FILE", help="refusal calibration (honed guard fit-refusal): a reply whose "
                   "P(refuse) is below its threshold may not open with a refusal")
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


class _LazyBot:
    """Loads the model on first use, so questions the gate refuses never wait for (or reach) it."""

    def __init__(self, args):
        self._args, self._bot = args, None

    def __getattr__(self, name):
        if self._bot is None:
            from honed.infer.generate import ChatModel

            a = self._args
            self._bot = ChatModel.load(a.model, adapter=a.adapter, template=a.template, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code,
                                       allow_pickle=a.allow_pickle, refusal_calibration=getattr(a, "calibration", None))
        return getattr(self._bot, name)


def load_refusal_calibration(path: str | None):
    """The `--refusal-calibration` file, read before any model loads (None without the flag)."""
    if path is None:
        return None
    from honed.infer.refusal_calibration import RefusalCalibration, RefusalCalibrationError

    try:
        return RefusalCalibration.load(path)
    except RefusalCalibrationError as err:
        raise RefusalCalibrationError(f"--refusal-calibration {err}") from None


def system_prompt(args) -> str | None:
    """`--system`, else the scope prompt the model was trained with (saved beside its weights)."""
    from honed.model.scope import find_scope_prompt

    if args.system is not None or args.no_scope_prompt:
        return args.system
    found = find_scope_prompt(args.adapter, args.model)
    if found:
        print(f"using the scope prompt saved with the model ({found[1]}); --no-scope-prompt leaves it out", file=sys.stderr)
        return found[0]
    return None


def _load(args):
    from honed.errors import ConfigError
    from honed.infer.generate import GenerationSettings

    if not args.model and not args.adapter:
        raise ConfigError("give --model DIR (and optionally --adapter DIR)")
    if args.guard_log and not args.guard:
        raise ConfigError("--guard-log needs --guard DIR (the gate whose decisions it records)")
    gate = query_log = None
    if args.guard:
        from honed.guard.gate import load_gate
        from honed.infer.gating import QueryLog

        gate, query_log = load_gate(args.guard), QueryLog(args.guard_log)
    args.calibration = load_refusal_calibration(args.refusal_calibration)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed, args.enable_thinking)
    return _LazyBot(args), settings, gate, query_log


def _refused(gate, query_log, text: str) -> str | None:
    """The gate's refusal when it refuses `text` (the decision is logged either way)."""
    if gate is None:
        return None
    from honed.data.conversation import Conversation, Message
    from honed.infer.gating import gate_conversations

    decision = gate_conversations(gate, [Conversation([Message("user", text)])], query_log, source="chat")[0]
    return None if decision.in_domain else gate.refusal_for(text)


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
    bot, settings, gate, query_log = _load(args)
    ask = _with_kb(bot, settings, kb, args.kb_k)
    system = system_prompt(args)
    history = [Message("system", system)] if system else []
    if args.prompt is not None:
        refusal = _refused(gate, query_log, args.prompt)
        if refusal is not None:
            print(refusal)
            return 0
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
            history = history[:1] if system else []
            continue
        if not line:
            continue
        refusal = _refused(gate, query_log, line)
        if refusal is not None:
            print(f"bot> {refusal}")  # kept out of the history: the model never saw this turn
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
    bot, settings, gate, query_log = _load(args)
    retrieve = None
    if kb is not None:
        from honed.guard.knowledge import retrieval_messages

        def retrieve(messages):
            messages, passages = retrieval_messages(kb, messages, args.kb_k)
            return messages, [p.citation(full=True) for p in passages]

    n = generate_file(bot, args.input, args.output, settings, system=system_prompt(args), batch_size=args.batch_size, overwrite=args.overwrite,
                      retrieve=retrieve, gate=gate, query_log=query_log)
    print(f"wrote {n} answers to {args.output}", file=sys.stderr)
    return 0
