"""What every benchmark script shares: the machine, the verdict, and fresh memory for every codec."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

# glibc's malloc keeps freed memory for reuse when it came from the heap; the size at which it
# maps fresh memory instead moves with what the process has freed. So in a loop of decodes, a
# codec whose output comes from malloc sometimes reuses the pages of the previous round's
# output and sometimes gets new ones: back to back, ZipNN decoded MiniLM bf16 in 20 ms with 1
# page fault, then 44 ms with 11,095 (benchmarks/compress_limits.py, last table). Best-of-N
# picks the first kind, which a command that decodes one file never sees. Fixed thresholds
# make every allocation of 1 MiB or more fresh memory, for every codec alike.
FRESH_MALLOC = "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=1048576"


def with_fresh_malloc() -> None:
    """Re-run this script with FRESH_MALLOC in its environment (it takes effect at start)."""
    if os.environ.get("GLIBC_TUNABLES") != FRESH_MALLOC:
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "GLIBC_TUNABLES": FRESH_MALLOC})


def machine() -> str:
    malloc = os.environ.get("GLIBC_TUNABLES")
    return (f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, python {platform.python_version()}"
            + (f"; GLIBC_TUNABLES={malloc}" if malloc else ""))


def verdict(failures: list[str], json_path: str | None, report: dict) -> int:
    """Write ``report`` to ``json_path`` if given, print each missed target; the exit status."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    for failure in failures:
        print(f"TARGET MISSED: {failure}")
    print("all targets met" if not failures else f"{len(failures)} target(s) missed")
    return 1 if failures else 0
