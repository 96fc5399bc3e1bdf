"""The plugin's error types.

Every error that a user can fix from the config or the data folder is a
:class:`RecboleMMError`; ``run_recbole_mm.py`` prints it as one line (``error: <message>``)
and exits with status 2, where any other exception keeps its traceback. Both kinds are also
``ValueError`` subclasses, so code that catches ``ValueError`` keeps working.
"""


class RecboleMMError(Exception):
    """Base class of the errors a user fixes in the config or the data, not in the code."""


class ConfigError(RecboleMMError, ValueError):
    """A config value is missing, of the wrong type, out of range or names something unknown;
    the message names the key."""


class DataError(RecboleMMError, ValueError):
    """A dataset file is missing or does not fit the config; the message names the file."""


class MissingFileError(DataError, FileNotFoundError):
    """An input file or folder named in the config or on the command line does not exist."""


class OutputExistsError(ConfigError, FileExistsError):
    """An output file would be overwritten without the option that allows it."""
