"""Training strategies over the data (guide items 15–18): curriculum, balanced sampling, hard mining.

Configured under `data.sampling` and run by `honed.data.epochs.ShapedEpochData`; stages (16)
live in `honed.train.stages`.

>>> SamplingConfig.model_validate({"hard_mining": {"top_fraction": 0.1}}).hard_mining.factor
2
"""

from honed.data.strategies.settings import BalanceConfig, CurriculumConfig, HardMiningConfig, SamplingConfig

__all__ = ["BalanceConfig", "CurriculumConfig", "HardMiningConfig", "SamplingConfig"]
