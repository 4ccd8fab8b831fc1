"""Child process of ``compress_limits.py`` table 10: compress a text file on one thread, round
after round, with the words coder's working memory allocated per chunk (as before 462688f),
kept per thread (now), or by zstd -3, taking turns; one line per mode of MB/s (page faults)
per round. It imports only thrifty.compress, as ``thrifty compress`` does: importing torch
(as the benchmark scripts do) lays out the heap so that the difference does not show.

Usage: python benchmarks/_words_loop.py TEXT_FILE MODES   (MODES: per-chunk,kept,zstd)
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import zstandard

from thrifty.compress import bench, compress_bytes, planes


def main(path: str, modes: str, rounds: int = 5) -> None:
    bench.fresh_malloc()
    text = Path(path).read_bytes()
    kept, zstd3 = planes._words_scratch, zstandard.ZstdCompressor(level=3).compress
    cells: dict[str, list[str]] = {m: [] for m in modes.split(",")}
    for _ in range(rounds):
        for mode, row in cells.items():
            planes._words_scratch = (lambda n: None) if mode == "per-chunk" else kept
            code = zstd3 if mode == "zstd" else compress_bytes
            arg = bytes(bytearray(text))
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            out = code(arg)
            mb_s = len(text) / 1e6 / (time.perf_counter() - t0)
            row.append(f"{mb_s:.0f} ({resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults:,})")
            del out
    print("\n".join(", ".join(row) for row in cells.values()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
