"""The docstring examples of the data-shaping modules run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["honed.data.quality", "honed.data.quality.filter", "honed.data.quality.minhash",
                                    "honed.data.quality.rules", "honed.data.quality.judge", "honed.data.split",
                                    "honed.data.stats_report", "honed.data.epochs", "honed.data.strategies",
                                    "honed.data.strategies.sampling", "honed.data.generators",
                                    "honed.data.augment.run", "honed.train.stages"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
