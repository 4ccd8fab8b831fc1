"""The ``thrifty`` command: one subcommand per module, each a thin layer over the library."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from thrifty.errors import STOPPING_SIGNALS, Terminated, ThriftyError

COMMANDS = {
    "train": ("thrifty.cli.train", "train a GPT on one or more workers"),
    "sample": ("thrifty.cli.sample", "generate text from a checkpoint"),
    "compress": ("thrifty.cli.compress:run_compress", "compress files losslessly (FILE -> FILE.thz)"),
    "decompress": ("thrifty.cli.compress:run_decompress", "restore compressed files"),
    "inspect": ("thrifty.cli.compress:run_inspect", "what a .thz file holds, ratio per tensor and plane"),
    "bench": ("thrifty.cli.compress:run_bench", "one file under thrifty and the usual codecs"),
    "estimate": ("thrifty.cli.estimate", "plan training, inference and communication: time, energy, money"),
    "runs": ("thrifty.cli.report:run_runs", "list the runs in the ledger"),
    "report": ("thrifty.cli.report:run_report", "what runs cost, by driver; --html for plots"),
    "prices": ("thrifty.cli.report:run_prices", "show the price book in force"),
}


def _stop_on_signals(grace_s: float) -> None:
    """Handlers that unwind on SIGTERM and SIGHUP (as Python does on SIGINT), and a watchdog.
    Called with the signals blocked, so that the watchdog thread is born blocking them."""

    def stop(signum, _frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    # Python runs a handler only when the main thread next runs Python code. A signal that
    # lands just before a blocking read (of an idle pipe, say) waits for data that may never
    # come, and an exception raised at an arbitrary point can leave a lock taken. So the C
    # handler also writes the signal's number to a pipe that a watchdog thread waits on: if
    # the command has not ended ``grace_s`` later, the watchdog removes the temporary files
    # being written and ends the process itself, as zstd and gzip do on a signal.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(wake_r, grace_s), daemon=True,
                     name="thrifty-signals").start()


# How long a command may take to unwind after a stopping signal. A training launcher stops
# its workers first, and torch's agent gives them 30 s before it kills them.
GRACE_S = {"train": 40.0}
DEFAULT_GRACE_S = 5.0


def _watchdog(wake_r: int, grace_s: float) -> None:
    while True:
        got = os.read(wake_r, 1)
        if not got:
            return
        if got[0] in STOPPING_SIGNALS:
            break
    time.sleep(grace_s)  # the main thread unwinds meanwhile; this ends the process if it hangs
    from thrifty.files import remove_temporaries

    remove_temporaries()
    name = signal.Signals(got[0]).name
    os.write(2, f"thrifty: {'interrupted' if name == 'SIGINT' else 'terminated by ' + name}\n".encode())
    os._exit(128 + got[0])


def _usage() -> str:
    lines = ["usage: thrifty COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "thrifty COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    as_process = argv is None  # the console script or python -m thrifty: signals are ours
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from thrifty import __version__

        print(f"thrifty {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"thrifty: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import importlib

    module_name, _, function = COMMANDS[name][0].partition(":")
    held = STOPPING_SIGNALS if as_process else set()  # an embedding caller keeps its own
    try:
        # Threads started meanwhile (the watchdog; OpenBLAS's, as NumPy is imported) are born
        # blocking the stopping signals, so the kernel hands those to the main thread, where
        # Python runs the handlers; one taken by another thread goes unnoticed while the main
        # thread waits in a read.
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            if as_process:
                _stop_on_signals(GRACE_S.get(name, DEFAULT_GRACE_S))
            command = getattr(importlib.import_module(module_name), function or "run")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        return command(rest)
    except ThriftyError as exc:
        print(f"thrifty: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thrifty: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"thrifty: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:  # the reader went away (thrifty inspect ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except OSError as exc:  # a file the user named is missing, a directory, unreadable, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"thrifty: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
