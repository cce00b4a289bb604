"""Reserved: synthetic samples from a generator model (item 8 of the data-diversity guide).

The registry name exists so recipes can be written against it and so the error is clear. The
intended shape: an expanding transform whose params name a generator (an OpenAI-compatible
endpoint or a local model), a prompt template built from the sample as an exemplar, `n` new
samples per exemplar and a validator (e.g. `parse_structured` for structured outputs) that
drops malformed generations; its draws would come from the recipe's rng like every other step.
"""

from __future__ import annotations

from honed.data.augment.base import Transform, register
from honed.errors import ConfigError


@register
class Synthetic(Transform):
    """Not implemented yet: building it raises ConfigError saying what to do instead."""

    name, family, expands = "synthetic", "synthetic", True
    defaults = {"generator": None, "n": 1, "prompt_template": None, "validate": None}

    def setup(self):
        where = self.where.rsplit(".params", 1)[0]
        raise ConfigError(f"{where + '.' if where != 'params' else ''}name: 'synthetic' (generator-model data) is "
                          "reserved but not implemented yet; generate the samples offline and add them as another data file")
