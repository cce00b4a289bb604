"""Training: readable loops (sft.py), losses, optimizers, checkpoints and run outputs."""
