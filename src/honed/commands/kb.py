"""`honed kb add|search|list|stats|remove`: a knowledge base of documents for retrieval."""

from __future__ import annotations

import json


def register(sub) -> None:
    kb = sub.add_parser("kb", help="knowledge base: index documents, search them (retrieval for chat, serve, training data)")
    verbs = kb.add_subparsers(dest="kb_command", metavar="VERB")

    p = verbs.add_parser("add", help="index documents (.txt .md .html .pdf, or folders of them); re-adding a changed file replaces it")
    p.add_argument("docs", nargs="+", help="files or folders")
    p.add_argument("--kb", required=True, help="knowledge base folder (created if missing)")
    p.add_argument("--embedder", help="default (all-MiniLM-L6-v2), char-ngram, or a sentence-transformers folder; "
                   "only when creating: a KB keeps the embedder it was built with")
    p.add_argument("--chunk-size", type=int, default=800, help="chunk size in --chunk-unit (default 800)")
    p.add_argument("--overlap", type=int, default=100, help="units shared by neighbouring chunks (default 100)")
    p.add_argument("--chunk-unit", choices=["chars", "tokens"], default="chars")
    p.add_argument("--tokenizer", help="model folder whose tokenizer counts tokens (default: the embedder's)")
    p.add_argument("--prune", action="store_true", help="also remove documents under the given folders whose files are gone")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_add)

    p = verbs.add_parser("search", help="the best passages for a query (table of score, source, snippet)")
    p.add_argument("query")
    p.add_argument("--kb", required=True)
    p.add_argument("-k", type=int, default=5, help="how many passages (default 5)")
    p.add_argument("--embedder", help="must be the KB's own (checked)")
    p.add_argument("--json", action="store_true", help="print the passages as JSON")
    p.set_defaults(func=run_search)

    p = verbs.add_parser("list", help="the indexed documents")
    p.add_argument("--kb", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_list)

    p = verbs.add_parser("stats", help="counts, embedder and size of a knowledge base")
    p.add_argument("--kb", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_stats)

    p = verbs.add_parser("remove", help="remove documents (by the path they were added with)")
    p.add_argument("docs", nargs="+")
    p.add_argument("--kb", required=True)
    p.set_defaults(func=run_remove)
    kb.set_defaults(func=lambda args: kb.print_help() or 2)


def _console():
    from rich.console import Console

    return Console()


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def run_add(args) -> int:
    from pathlib import Path

    from honed.guard.knowledge import ChunkSettings, KnowledgeBase

    settings = ChunkSettings(args.chunk_size, args.overlap, args.chunk_unit, args.tokenizer)
    if (Path(args.kb) / "kb.json").is_file():
        kb = KnowledgeBase.open(args.kb, embedder=args.embedder)
    else:
        kb = KnowledgeBase.create(args.kb, embedder=args.embedder or "default")
    report = kb.add(args.docs, settings, prune=args.prune, progress=not args.json)
    if args.json:
        print(json.dumps({"added": report.added, "replaced": report.replaced, "unchanged": report.unchanged, "skipped": report.skipped,
                          "removed": report.removed, "over_window": report.over_window}, ensure_ascii=False, indent=1))
        return 0
    from rich.table import Table

    table = Table("file", "result", "chunks / reason")
    for path, n in report.added:
        table.add_row(path, "[green]added[/]", str(n))
    for path, n in report.replaced:
        table.add_row(path, "[cyan]replaced[/]", str(n))
    for path in report.unchanged:
        table.add_row(path, "unchanged", "same content and chunking")
    for path, why in report.skipped:
        table.add_row(path, "[yellow]skipped[/]", why)
    for path in report.removed:
        if not any(path == skipped for skipped, _ in report.skipped):
            table.add_row(path, "[red]removed[/]", "file is gone (--prune)")
    console = _console()
    console.print(table)
    console.print(f"{report.summary()}; {report.chunks} chunks written; {len(kb)} chunks in {args.kb}")
    if report.over_window:
        console.print(f"[yellow]{report.over_window} chunks are longer than the embedder's input window[/]: their ends are "
                      "found by full-text search only; a smaller --chunk-size (or --chunk-unit tokens) avoids it")
    return 0


def _emit(args, data, make_table) -> int:
    """JSON with --json, else the rich table `make_table(Table)` builds."""
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=1))
    else:
        from rich.table import Table

        _console().print(make_table(Table))
    return 0


def run_search(args) -> int:
    from honed.guard.knowledge import KnowledgeBase

    passages = KnowledgeBase.open(args.kb, embedder=args.embedder).search(args.query, k=args.k)

    def table(Table):
        t = Table("#", "score", "source", "snippet", title=f"top {len(passages)} for {args.query!r}")
        for i, p in enumerate(passages, 1):
            t.add_row(str(i), f"{p.score:.4f}", p.citation(full=True), _snippet(p.text))
        return t

    return _emit(args, [p.to_dict() for p in passages], table)


def run_list(args) -> int:
    from honed.guard.knowledge import KnowledgeBase

    docs = KnowledgeBase.open(args.kb).documents()

    def table(Table):
        t = Table("source", "kind", "chunks", "chunking", "added", title=f"{len(docs)} documents in {args.kb}")
        for d in docs:
            c = d["chunking"]
            t.add_row(d["source"], d["kind"], str(d["chunks"]), f"{c['size']}/{c['overlap']} {c['unit']}", d["added"])
        return t

    return _emit(args, docs, table)


def run_stats(args) -> int:
    from honed.guard.knowledge import KnowledgeBase

    stats = KnowledgeBase.open(args.kb).stats()

    def table(Table):
        t = Table("", "", show_header=False, title=f"knowledge base {args.kb}")
        for key, value in stats.items():
            t.add_row(key, ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        return t

    return _emit(args, stats, table)


def run_remove(args) -> int:
    from honed.guard.knowledge import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    removed = kb.remove(args.docs)
    missing = [d for d in args.docs if d not in removed]
    print(f"removed {len(removed)} documents; {len(kb)} chunks left" + (f"; not in the KB: {', '.join(missing)}" if missing else ""))
    return 0
