"""Export: merged weights, base-tuned interpolation, GGUF and Ollama files."""
