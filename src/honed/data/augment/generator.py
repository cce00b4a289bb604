"""Moved to `honed.data.generators` (the eval judge and the data filters use it too); this name stays
for code written against the old path."""

from honed.data.generators import (  # noqa: F401
    KEYS,
    KINDS,
    DryRunGenerator,
    GeneratorError,
    OpenAIGenerator,
    check_spec,
    make_generator,
    register_kind,
)
