"""The ``thrifty`` command: one subcommand per module, each a thin layer over the library."""

from __future__ import annotations

import sys

from thrifty.errors import Terminated, ThriftyError

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


def _stop_on_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; a caller embedding main() keeps its own

    def stop(signum, _frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def _usage() -> str:
    lines = ["usage: thrifty COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "thrifty COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    command = getattr(importlib.import_module(module_name), function or "run")
    _stop_on_signals()
    try:
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except OSError as exc:  # a file the user named is missing, a directory, unreadable, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"thrifty: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
