"""Evaluation: pure metric functions (`honed.eval.metrics`); the runner and report build on them."""
