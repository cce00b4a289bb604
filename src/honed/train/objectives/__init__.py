"""Training objectives: how samples become batches and batches become a loss (`objective:` key).

>>> from honed.train.objectives import get_objective  # doctest: +SKIP
"""

from honed.train.objectives.base import Objective, ObjectiveData, ObjectiveLoss, get_objective, register_objective

__all__ = ["Objective", "ObjectiveData", "ObjectiveLoss", "get_objective", "register_objective"]
