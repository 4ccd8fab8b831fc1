"""What every benchmark script ends with: the machine, the report, the verdict."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    return (f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, python {platform.python_version()}")


def verdict(failures: list[str], json_path: str | None, report: dict) -> int:
    """Write ``report`` to ``json_path`` if given, print each missed target; the exit status."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    for failure in failures:
        print(f"TARGET MISSED: {failure}")
    print("all targets met" if not failures else f"{len(failures)} target(s) missed")
    return 1 if failures else 0
