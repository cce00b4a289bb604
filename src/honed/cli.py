"""Command line: maps each subcommand to a function of the library, nothing else.

Every area of honed owns its subcommands in a `register(subparsers)` function next to its code,
so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from honed.errors import HonedError

# (module, help) — each module exposes register(subparsers); imported lazily so `honed --help`
# stays fast and a missing optional dependency only breaks its own verb.
COMMAND_MODULES = [
    "honed.commands.quickstart",
    "honed.commands.train",
    "honed.commands.data",
    "honed.commands.infer",
    "honed.commands.eval",
    "honed.commands.export",
    "honed.commands.merge",
    "honed.commands.sweep",
    "honed.commands.bench",
    "honed.commands.serve",
    "honed.commands.kb",
    "honed.commands.guard",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="honed", description="Turn a general open LLM into a dependable domain expert.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from honed import __version__

    parser.add_argument("--version", action="version", version=f"honed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _accept_global_flags_anywhere(parser)
    return parser


def _accept_global_flags_anywhere(parser: argparse.ArgumentParser) -> None:
    """`honed train cfg.yaml -v` works as `honed -v train cfg.yaml` does: every subcommand (and
    verb below it) takes the global flags too. SUPPRESS keeps a subcommand's unset flag from
    overwriting the value the top level parsed."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                if "--verbose" not in child._option_string_actions:
                    child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
                _accept_global_flags_anywhere(child)


def quiet_libraries() -> None:
    """Hide per-file loading bars and chatter of the libraries; honed prints its own progress."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # "Loading SentenceTransformer model from ..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.verbose:
        quiet_libraries()
    try:
        result = args.func(args)
    except HonedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
