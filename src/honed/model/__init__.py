"""Models: loading (dtype, quantization, safety checks) and LoRA adapters in peft format."""
