"""Training: readable loops (sft.py), losses, optimizers, checkpoints and run outputs."""

# A recipe's synthetic steps may name a `local` generator model (honed.data.generators); honed.infer
# registers that kind, so a training run can build it.
import honed.infer  # noqa: F401,E402
