"""Inference: chat and batch generation with a base model or base + adapter.

Importing this package registers the `local` generator kind of `honed.data.generators`.
"""

from honed.infer import generators as _generators  # noqa: F401 (registers the local generator kind)
