"""Exports: merged Hugging Face weights, GGUF for llama.cpp, Ollama folders, and their model cards."""
