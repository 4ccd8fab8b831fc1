"""The one exception type that reaches the user as a single line on stderr."""


class ThriftyError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``thrifty: error: <message>`` and exits non-zero; anything else that escapes
    is a bug and keeps its traceback.
    """


class ConfigError(ThriftyError):
    """An unknown, ill-typed or out-of-range configuration key."""
