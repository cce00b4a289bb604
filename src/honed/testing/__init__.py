"""Helpers for tests and demos: tiny random models of each supported family, built offline."""

from honed.testing.tiny import FAMILIES, Family, build_tiny_model, default_corpus, train_tokenizer

__all__ = ["FAMILIES", "Family", "build_tiny_model", "default_corpus", "train_tokenizer"]
