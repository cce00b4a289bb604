"""Knowledge base: documents chunked and indexed for hybrid (vector + full-text) retrieval, and the
passages put into prompts with numbered sources (`honed kb`, `honed chat --kb`, `honed data add-context`)."""

from honed.guard.knowledge.chunking import ChunkSettings
from honed.guard.knowledge.prompt import NO_ANSWER, build_rag_messages, retrieval_messages, sources_footer
from honed.guard.knowledge.store import AddReport, KnowledgeBase, Passage

__all__ = ["AddReport", "ChunkSettings", "KnowledgeBase", "NO_ANSWER", "Passage", "build_rag_messages", "retrieval_messages", "sources_footer"]
