"""Inference: chat and batch generation with a base model or base + adapter."""
