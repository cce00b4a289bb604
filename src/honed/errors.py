"""Errors a user can act on: each says what was wrong, where, and what to do."""


class HonedError(Exception):
    """Base class for errors that honed reports to the user without a traceback."""


class ConfigError(HonedError):
    """A config key or value is wrong (the message names the key)."""


class DataError(HonedError):
    """A data file or record is wrong (the message names file:line and field)."""


class ModelError(HonedError):
    """A model cannot be loaded or is not supported (the message names the model)."""


class OutputExistsError(HonedError):
    """An output folder already holds files and `overwrite` is not set."""
