"""The one base class of honed's config models: unknown keys are errors, assignments are checked.

A typo such as `learning_rat` must not be silently ignored, and `cfg.training.lr = "fast"` must
fail where it is written rather than deep inside a run. Every config section (train, eval, data
filters, sampling strategies) derives from `StrictModel`.

>>> class Section(StrictModel):
...     rate: float = 1.0
>>> from pydantic import ValidationError
>>> try:
...     Section.model_validate({"rat": 2})
... except ValidationError as err:
...     print(err.errors()[0]["type"], err.errors()[0]["loc"])
extra_forbidden ('rat',)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """pydantic BaseModel with `extra="forbid"` and `validate_assignment=True`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
