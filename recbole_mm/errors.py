"""recbole_mm's error types: what a user can fix (a config value, a data file)."""


class RecboleMMError(Exception):
    """Base of the errors recbole_mm raises about a user's setup."""


class ConfigError(RecboleMMError, ValueError):
    """A config value is invalid."""


class DataError(RecboleMMError, ValueError):
    """A data file is missing, unreadable or inconsistent."""
