"""Training strategies over the data (guide items 15–18): curriculum, balanced sampling, hard mining.

Configured under `data.sampling` (its typed settings live with the other config sections in
`honed.config`) and run by `honed.data.epochs.ShapedEpochData`; stages (16) live in
`honed.train.stages`; the scoring pass that measures per-sample losses lives in `honed.train.scoring`.

>>> SamplingConfig.model_validate({"hard_mining": {"top_fraction": 0.1}}).hard_mining.factor
2
"""

from honed.config import BalanceConfig, CurriculumConfig, HardMiningConfig, SamplingConfig

__all__ = ["BalanceConfig", "CurriculumConfig", "HardMiningConfig", "SamplingConfig"]
