"""Errors recbole_mm raises for a user's mistake (bad config, malformed data): one base class,
:class:`RecboleMMError`, so callers can catch everything the plugin reports."""


class RecboleMMError(Exception):
    """Base class of the errors that name a user's mistake and how to fix it."""


class ConfigError(RecboleMMError, ValueError):
    """A config value is missing, of the wrong type or out of range."""


class DataError(RecboleMMError, ValueError):
    """A dataset file is malformed: the message names the file and the layout expected."""
