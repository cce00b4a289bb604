"""The error an export raises: what cannot be exported, and what to do instead."""

from honed.errors import HonedError


class ExportError(HonedError):
    """A model, format or quant type cannot be exported (the message names it and the choices)."""
