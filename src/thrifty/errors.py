"""The exceptions that reach the user as a single line on stderr."""


class ThriftyError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``thrifty: error: <message>`` and exits non-zero; anything else that escapes
    is a bug and keeps its traceback.
    """


class ConfigError(ThriftyError):
    """An unknown, ill-typed or out-of-range configuration key."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (the CLI turns them into this): unwound like Ctrl-C, so that
    what is half written (a temporary output, a partial checkpoint) is removed on the way out,
    as zstd and gzip do."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum
