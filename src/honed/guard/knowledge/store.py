"""The knowledge base: document chunks in LanceDB, searched by meaning and by words at once.

A KB folder holds `kb.json` (the embedder's name, the documents with their content hash and
chunk settings) and `lance/` (one table of chunks: text, vector, source, location). Search is
hybrid: LanceDB's vector search plus its native full-text index (BM25, ICU word splitting, which
also segments Chinese), fused by reciprocal rank (LanceDB's RRF reranker, no model needed).

>>> kb = KnowledgeBase.create("/tmp/kb", embedder="char-ngram")  # doctest: +SKIP
>>> kb.add(["docs/"]).summary()  # doctest: +SKIP
'3 added, 0 replaced, 0 unchanged, 1 skipped'
>>> kb.search("fasting before a glucose test", k=3)[0].source  # doctest: +SKIP
'docs/glucose.md'
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from honed.errors import ConfigError, DataError, OutputExistsError
from honed.guard.knowledge.chunking import ChunkSettings, chunk_sections, length_function
from honed.guard.knowledge.loaders import UnreadableDocument, document_kind, load_sections, require
from honed.utils.fs import write_text_atomic

FORMAT = 1
TABLE = "chunks"
MANIFEST = "kb.json"


@dataclass
class Passage:
    """One retrieved chunk: its text, the file it came from, where in it, and its fused score."""

    text: str
    source: str
    location: str
    score: float
    page: int = 0
    chunk_id: str = ""

    def citation(self, full: bool = False) -> str:
        """`file — location`: the file's name for the model's prompt, its whole path (`full`) for people."""
        name = self.source if full else Path(self.source).name
        return f"{name} — {self.location}" if self.location else name

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "location": self.location, "score": self.score, "page": self.page, "chunk_id": self.chunk_id}


@dataclass
class AddReport:
    """What `add` did with each file: (path, reason) lists, reason empty for added files."""

    added: list[tuple[str, int]] = field(default_factory=list)  # (path, chunks)
    replaced: list[tuple[str, int]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    removed: list[str] = field(default_factory=list)  # pruned: their files are gone
    over_window: int = 0  # chunks longer than the embedder reads (full-text search still sees all)

    def summary(self) -> str:
        text = f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged, {len(self.skipped)} skipped"
        return text + (f", {len(self.removed)} removed" if self.removed else "")

    @property
    def chunks(self) -> int:
        return sum(n for _, n in self.added + self.replaced)


def _embedder_from_name(name: str):
    """Load the embedder a KB was built with, from the name it stored."""
    from honed.guard.embedders import load_embedder

    return load_embedder(name[3:] if name.startswith("st:") else name)


def _display(path: Path) -> str:
    """A path as users wrote it: relative to the working folder when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def expand_paths(paths) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to index (folders searched for known types) and (path, why) for those that cannot be."""
    files, skipped = [], []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and document_kind(p) and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                skipped.append((str(path), "folder holds no .txt/.md/.html/.pdf files"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            skipped.append((str(path), "not found"))
    return files, skipped


class KnowledgeBase:
    """Documents chunked and indexed for hybrid search. Use `create` or `open`, then `add`/`search`."""

    def __init__(self, folder: Path, manifest: dict, embedder=None):
        self.folder, self.manifest, self._embedder = folder, manifest, embedder
        lancedb = require("lancedb", "lancedb")

        self._db = lancedb.connect(str(folder / "lance"))
        self._table = self._db.open_table(TABLE) if TABLE in self._db.list_tables().tables else None

    @property
    def embedder(self):
        """The embedder the KB was built with, loaded on first use (listing a KB needs no model)."""
        if self._embedder is None:
            self._embedder = _embedder_from_name(self.manifest["embedder"])
        return self._embedder

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder, embedder: str = "default", *, exist_ok: bool = False) -> "KnowledgeBase":
        """A new, empty KB in `folder` (refused if one is there, unless `exist_ok`: then it is opened)."""
        folder = Path(folder)
        if (folder / MANIFEST).is_file():
            if exist_ok:
                return cls.open(folder, embedder=embedder)
            raise OutputExistsError(f"{folder} already holds a knowledge base; use `honed kb add --kb {folder}` to add to it")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise OutputExistsError(f"{folder} exists and is not an empty folder; choose a new --kb folder")
        emb = _embedder_from_name(embedder) if isinstance(embedder, str) else embedder
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "embedder": emb.name, "dim": emb.dim, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "documents": {}}
        write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
        return cls(folder, manifest, emb)

    @classmethod
    def open(cls, folder, embedder: str | None = None) -> "KnowledgeBase":
        """Open an existing KB; `embedder` (a name or folder), if given, must be the one it was built with."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise DataError(f"{folder}: no knowledge base here (no {MANIFEST}); create one with `honed kb add DOCS... --kb {folder}`")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"{path}: knowledge base format {manifest.get('format')!r}, this honed reads format {FORMAT}")
        stored = manifest["embedder"]
        emb = _embedder_from_name(embedder) if isinstance(embedder, str) else embedder
        if emb is not None and emb.name != stored:
            raise ConfigError(f"{folder} was built with embedder {stored!r}, not {emb.name!r}: search it with the same embedder "
                              f"(leave --embedder out), or build a new KB folder with {emb.name!r}")
        return cls(folder, manifest, emb)

    # --- adding ----------------------------------------------------------------------------------

    def add(self, paths, settings: ChunkSettings | None = None, *, prune: bool = False, progress: bool = False) -> AddReport:
        """Index files and folders; a file already indexed is replaced when its content or chunk settings changed.

        With `prune`, documents inside the given folders whose files are gone are removed too.
        """
        settings = settings or ChunkSettings()
        own_tokenizer = settings.unit == "tokens" and not settings.tokenizer
        measure = length_function(settings, getattr(getattr(self.embedder, "model", None), "tokenizer", None) if own_tokenizer else None)
        files, skipped = expand_paths(paths)
        report = AddReport(skipped=skipped)
        docs = self.manifest["documents"]
        from rich.progress import track

        for file in track(files, description="indexing", disable=not progress or len(files) < 2, transient=True):
            key, shown = str(file.resolve()), _display(file.resolve())
            try:
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
            except OSError as err:
                report.skipped.append((shown, f"cannot read ({err.strerror})"))
                continue
            old = docs.get(key)
            if old and old["sha256"] == digest and old["chunking"] == settings.to_dict():
                report.unchanged.append(shown)
                continue
            try:
                chunks = chunk_sections(load_sections(file), settings, measure)
            except UnreadableDocument as err:
                reason = str(err)
                if old:  # the file changed into something unreadable: its old text no longer stands
                    self._delete(key)
                    del docs[key]
                    self._save_manifest()
                    report.removed.append(shown)
                    reason += "; its earlier chunks were removed"
                report.skipped.append((shown, reason))
                continue
            self._replace_chunks(key, shown, digest, chunks)
            report.over_window += self._over_window([c.text for c in chunks])
            docs[key] = {"source": shown, "sha256": digest, "chunks": len(chunks), "chunking": settings.to_dict(),
                         "kind": document_kind(file), "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (report.replaced if old else report.added).append((shown, len(chunks)))
            self._save_manifest()  # after each file: an interrupted add keeps what it finished
        if prune:
            folders = [str(Path(p).resolve()) + os.sep for p in paths if Path(p).is_dir()]
            present = {str(f.resolve()) for f in files}
            gone = [key for key in docs if key not in present and any(key.startswith(f) for f in folders)]
            for key in gone:
                self._delete(key)
                report.removed.append(docs.pop(key)["source"])
            if gone:
                self._save_manifest()
        if report.added or report.replaced or report.removed:
            self._reindex()
        return report

    def remove(self, paths) -> list[str]:
        """Remove documents (by path as added); returns the ones removed."""
        removed = []
        for given in paths:
            key = str(Path(given).resolve())
            if key in self.manifest["documents"]:
                self._delete(key)
                del self.manifest["documents"][key]
                removed.append(given)
        if removed:
            self._save_manifest()
            self._reindex()
        return removed

    def _delete(self, key: str) -> None:
        if self._table is not None:
            self._table.delete(f"path = '{key.replace(chr(39), chr(39) * 2)}'")

    def _over_window(self, texts: list[str]) -> int:
        """How many texts are longer than the embedder's input window (their ends are not embedded)."""
        model = getattr(self.embedder, "model", None)
        window, tokenizer = getattr(model, "max_seq_length", None), getattr(model, "tokenizer", None)
        if not window or tokenizer is None:
            return 0
        return sum(len(ids) > window for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"])

    def _replace_chunks(self, key: str, source: str, digest: str, chunks) -> None:
        # Old rows of this path go first, also when the manifest lost them (an interrupted add).
        self._delete(key)
        texts = [f"{c.location}\n{c.text}" if c.location else c.text for c in chunks]
        vectors = self.embedder.encode(texts)
        rows = [{"id": f"{digest[:12]}-{i}", "path": key, "source": source, "location": c.location, "page": c.page,
                 "text": c.text, "search_text": text, "vector": vec.tolist()} for i, (c, text, vec) in enumerate(zip(chunks, texts, vectors))]
        if self._table is None:
            self._table = self._db.create_table(TABLE, data=rows)
        else:
            self._table.add(rows)

    def _reindex(self) -> None:
        """Rebuild the full-text index (seconds for thousands of chunks; LanceDB also scans rows added since)."""
        from lancedb.index import FTS

        if self._table is not None and self._table.count_rows():
            # ICU splits Chinese into words, so Chinese queries match without pre-segmenting.
            self._table.create_index("search_text", config=FTS(base_tokenizer="icu", with_position=False), replace=True)

    def _save_manifest(self) -> None:
        write_text_atomic(self.folder / MANIFEST, json.dumps(self.manifest, indent=1, ensure_ascii=False))

    # --- reading ---------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5) -> list[Passage]:
        """The `k` best chunks for `query` by reciprocal-rank fusion of vector and full-text search."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int = 5) -> list[list[Passage]]:
        """`search` for several queries, their embeddings computed in one batch."""
        for query in queries:
            if not query.strip():
                raise DataError("empty search query")
        if self._table is None or k <= 0:
            return [[] for _ in queries]
        from lancedb.rerankers import RRFReranker

        vectors = self.embedder.encode(list(queries))
        # The limit applies to each of the two searches before fusion: fuse deeper lists than asked
        # for, or with k=1 the two top hits tie and fusion decides nothing.
        depth = max(4 * k, 20)
        results = []
        for query, vector in zip(queries, vectors):
            rows = (self._table.search(query_type="hybrid", vector_column_name="vector", fts_columns="search_text")
                    .vector(vector.tolist()).text(query).distance_type("cosine").rerank(RRFReranker()).limit(depth).to_list())
            results.append([Passage(r["text"], r["source"], r["location"], float(r["_relevance_score"]), int(r["page"]), r["id"]) for r in rows[:k]])
        return results

    def passages(self) -> list[Passage]:
        """Every chunk (score 0), in file order; for sampling distractors and for listing."""
        if self._table is None:
            return []
        table = self._table.to_arrow().select(["id", "text", "source", "location", "page"]).to_pylist()
        return [Passage(r["text"], r["source"], r["location"], 0.0, int(r["page"]), r["id"]) for r in table]

    def documents(self) -> list[dict]:
        """One dict per indexed file: path, source, kind, chunks, sha256, added."""
        return [{"path": key, **doc} for key, doc in sorted(self.manifest["documents"].items())]

    def stats(self) -> dict:
        """Counts and settings: documents, chunks, characters, embedder, folder size."""
        chunks = self._table.count_rows() if self._table is not None else 0
        size = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
        kinds: dict[str, int] = {}
        for doc in self.manifest["documents"].values():
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        chars = sum(len(p.text) for p in self.passages()) if chunks else 0
        return {"folder": str(self.folder), "embedder": self.manifest["embedder"], "dim": self.manifest["dim"],
                "documents": len(self.manifest["documents"]), "by_kind": kinds, "chunks": chunks,
                "characters": chars, "bytes_on_disk": size, "created": self.manifest["created"]}

    def __len__(self) -> int:
        return self._table.count_rows() if self._table is not None else 0
