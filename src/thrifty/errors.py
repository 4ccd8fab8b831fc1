"""The exceptions that reach the user as a single line on stderr."""

import signal


class ThriftyError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``thrifty: error: <message>`` and exits non-zero; anything else that escapes
    is a bug and keeps its traceback.
    """


class ConfigError(ThriftyError):
    """An unknown, ill-typed or out-of-range configuration key."""


#: The signals that stop a command: Ctrl-C, a scheduler's kill, a closed terminal.
STOPPING_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (the CLI turns them into this): unwound like Ctrl-C, so that
    what is half written (a temporary output, a partial checkpoint) is removed on the way out,
    as zstd and gzip do."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum
