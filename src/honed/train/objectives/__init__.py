"""Training objectives: how samples become batches and batches become a loss (`objective:` key).

The names below load on first use, so `honed.config` can import `preference_config` (the
`preference:` section) without importing the registry, which itself needs `honed.config`.

>>> from honed.train.objectives import get_objective  # doctest: +SKIP
"""

__all__ = ["Objective", "ObjectiveData", "ObjectiveLoss", "get_objective", "register_objective"]


def __getattr__(name: str):
    if name in __all__:
        from honed.train.objectives import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
