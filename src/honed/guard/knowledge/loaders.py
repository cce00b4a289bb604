"""Documents in, sections out: each section is text plus where it sits (a heading path or a page).

Text and Markdown split at headings, HTML at `<h1>`–`<h6>` (scripts, styles and navigation
dropped), PDF by page through pypdf. A document that yields no text raises `UnreadableDocument`
with the reason, which `KnowledgeBase.add` reports as a skipped file.

>>> [(s.location, s.text) for s in markdown_sections("# Glucose\\nFasting first.\\n## Range\\n3.9-6.1 mmol/L")]
[('Glucose', 'Fasting first.'), ('Glucose > Range', '3.9-6.1 mmol/L')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".pdf": "pdf"}


def require(module: str, package: str):
    """Import an optional dependency of the knowledge base, or say how to install it."""
    import importlib

    from honed.errors import ConfigError

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"the knowledge base needs the package {package}: pip install honed (a core dependency is missing) ({err})") from None


class UnreadableDocument(Exception):
    """A document honed cannot take text from; the message is the reason shown to the user."""


@dataclass
class Section:
    text: str
    location: str = ""  # "Heading > Subheading", or "page 3"
    page: int = 0  # 1-based PDF page, 0 elsewhere


def document_kind(path: Path) -> str | None:
    """'text', 'markdown', 'html', 'pdf', or None for a type honed does not read."""
    return SUFFIXES.get(path.suffix.lower())


def load_sections(path: Path) -> list[Section]:
    """The non-empty sections of a document; raises UnreadableDocument when there is no text."""
    kind = document_kind(path)
    if kind is None:
        raise UnreadableDocument(f"unsupported type {path.suffix or '(no suffix)'}; use one of {', '.join(sorted(SUFFIXES))}")
    if kind == "pdf":
        sections = pdf_sections(path)
    else:
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise UnreadableDocument(f"not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
        sections = {"text": text_sections, "markdown": markdown_sections, "html": html_sections}[kind](raw)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        hint = " (a scanned PDF needs OCR first)" if kind == "pdf" else ""
        raise UnreadableDocument(f"no text found{hint}")
    return sections


def text_sections(raw: str) -> list[Section]:
    """Plain text is one section; paragraphs are split later by the chunker."""
    return [Section(raw.strip())]


_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_sections(raw: str) -> list[Section]:
    """Split at ATX headings (`#`…`######`), not inside code fences; location is the heading path."""
    raw = re.sub(r"\A---\n.*?\n---\n", "", raw, flags=re.S)  # YAML front matter is metadata, not text
    # Setext headings (a line underlined with === or ---) become ATX ones, as CommonMark reads them.
    raw = re.sub(r"^([^\s#>`~|-][^\n]*)\n=+[ \t]*$", r"# \1", raw, flags=re.M)
    raw = re.sub(r"^([^\s#>`~|-][^\n]*)\n-{2,}[ \t]*$", r"## \1", raw, flags=re.M)
    sections, path, lines, fenced = [], [], [], False

    def flush():
        if "\n".join(lines).strip():
            sections.append(Section("\n".join(lines).strip(), " > ".join(t for _, t in path)))
        lines.clear()

    for line in raw.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _ATX.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, heading.group(2))]
        else:
            lines.append(line)
    flush()
    return sections


_BLOCKS = {"p", "li", "pre", "blockquote", "td", "th", "dd", "dt", "figcaption", "caption", "div", "section", "article"}
_DROP = {"script", "style", "nav", "header", "footer", "noscript", "template", "svg", "head"}


def html_sections(raw: str) -> list[Section]:
    """Visible text of an HTML page split at headings; paragraphs (block elements) kept apart."""
    lxml_html = require("lxml.html", "lxml")
    try:
        root = lxml_html.document_fromstring(raw)
    except Exception as err:  # lxml raises several types for broken or empty markup
        raise UnreadableDocument(f"HTML could not be parsed ({err})") from None
    title = (root.findtext(".//title") or "").strip()
    for bad in root.xpath("|".join(f"//{t}" for t in _DROP)):
        bad.drop_tree()
    sections, path, paragraphs = [], [], []

    def flush():
        text = "\n\n".join(p for p in paragraphs if p)
        if text.strip():
            sections.append(Section(text, " > ".join(t for _, t in path) or title))
        paragraphs.clear()

    def walk(node):
        tag = node.tag if isinstance(node.tag, str) else ""
        if re.fullmatch(r"h[1-6]", tag):
            flush()
            level = int(tag[1])
            nonlocal path
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, " ".join(node.text_content().split()))]
            return
        if tag in _BLOCKS and not any(isinstance(c.tag, str) and (c.tag in _BLOCKS or re.fullmatch(r"h[1-6]", c.tag)) for c in node):
            text = node.text_content() if tag == "pre" else " ".join(node.text_content().split())
            paragraphs.append(text.strip())
            return
        if node.text and node.text.strip() and tag not in ("html", "body"):
            paragraphs.append(" ".join(node.text.split()))
        for child in node:
            walk(child)
            if child.tail and child.tail.strip():
                paragraphs.append(" ".join(child.tail.split()))

    body = root.find("body")
    walk(body if body is not None else root)
    flush()
    return sections


def pdf_sections(path: Path) -> list[Section]:
    """One section per page with text (pypdf's text layer; scanned pages have none)."""
    import logging

    require("pypdf", "pypdf")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its repair warnings; the skip reason says enough
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001 - any failure means "needs a password"
                raise UnreadableDocument("encrypted PDF; save an unencrypted copy first") from None
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableDocument:
        raise
    except (PdfReadError, ValueError, OSError, KeyError) as err:
        raise UnreadableDocument(f"unreadable PDF ({err})") from None
    return [Section(text.strip(), f"page {i}", i) for i, text in enumerate(pages, 1) if text.strip()]
