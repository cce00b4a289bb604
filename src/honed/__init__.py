"""honed: turn a general open LLM into a dependable domain expert."""

__version__ = "0.1.0"
