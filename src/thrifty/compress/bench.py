"""One input, every codec a user might reach for, side by side: ratio and MB/s each way.

Every codec gets its own copy of the input (ZipNN 0.5.4 rewrites its input buffer in place),
every result is decoded and compared with the input, the codecs take turns round by round, and
each time is the best of ``repeat`` rounds, so that a noisy moment on a shared machine counts
against nobody, and against no codec more than the others. Every output of 8 MiB or more is
fresh memory (:func:`fresh_malloc`), as for a command that codes one file.
"""

from __future__ import annotations

import ctypes
import io
import platform
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from thrifty.compress import layouts


@dataclass
class Result:
    name: str
    ratio: float
    compress_mb_s: float
    decompress_mb_s: float
    threads: int
    note: str = ""


@dataclass
class _Codec:
    name: str
    enc: Callable[[bytes], bytes]
    dec: Callable[[bytes], bytes]
    rounds: int
    threads: int
    note: str = ""


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def fresh_malloc() -> bool:
    """Fix glibc's malloc thresholds for the rest of the process, so that every buffer of
    8 MiB or more (every codec's output here) is fresh memory; False where the C library is not
    glibc.

    glibc keeps freed memory for reuse when it came from the heap, and the size from which it
    maps fresh memory instead moves with what the process has freed. So in a loop of codings,
    an output that comes from malloc sometimes reuses the pages of the round before and
    sometimes faults in new ones: back to back, ZipNN decoded MiniLM bf16 in 20 ms with 1 page
    fault, then 44 ms with 11,095 (benchmarks/compress_limits.py, table 6), and thrifty's own
    compressed output did the same. Best-of-N keeps the lucky rounds, which a command that codes
    one file never has. Buffers from 8 MiB are mapped afresh and unmapped when freed; the heap
    keeps up to 16 MiB of freed memory, so the smaller buffers a codec reuses chunk after chunk
    stay as warm as by default."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 8 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 16 << 20))


def _measure(codecs: list[_Codec], data: bytes) -> list[Result]:
    """Ratio and best MB/s each way for every codec. The codecs take turns, one compression and
    one decompression each per round, so that a noisy stretch of a shared machine falls on all
    of them alike rather than on whichever ran then. Every run gets a fresh copy of its input,
    made outside the clock, and every decoding is compared with the input."""
    best = {c.name: [float("inf"), float("inf"), 0] for c in codecs}
    for r in range(max(c.rounds for c in codecs)):
        for c in codecs:
            if r >= c.rounds:
                continue
            arg = bytes(bytearray(data))  # bytes(b) would hand back b itself, not a copy
            t0 = time.perf_counter()
            blob = c.enc(arg)
            t_c = time.perf_counter() - t0
            arg = bytes(bytearray(blob))
            t0 = time.perf_counter()
            back = c.dec(arg)
            t_d = time.perf_counter() - t0
            if bytes(back) != data:
                raise AssertionError(f"{c.name} did not round-trip")
            b = best[c.name]
            b[0], b[1], b[2] = min(b[0], t_c), min(b[1], t_d), len(blob)
            del blob, arg, back
    mb = len(data) / 1e6
    return [Result(c.name, len(data) / best[c.name][2], mb / best[c.name][0], mb / best[c.name][1],
                   c.threads, c.note) for c in codecs]


def float_dtype(data: bytes) -> str | None:
    """The float dtype that dominates ``data`` by bytes, if its layout says (for ZipNN)."""
    kind, segments = layouts.detect(io.BytesIO(data), len(data))
    totals: dict[str, int] = {}
    for s in segments:
        if s.dtype in ("F32", "BF16", "F16"):
            totals[s.dtype] = totals.get(s.dtype, 0) + s.length
    if not totals or max(totals.values()) < len(data) / 2:
        return None
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[max(totals, key=totals.get)]


def run_all(data: bytes, threads: int = 1, repeat: int = 3, zstd19: bool = True) -> list[Result]:
    """Every codec on ``data``, best of ``repeat`` rounds (zstd -19, at about 2 MB/s, runs once),
    in fresh memory (:func:`fresh_malloc`, which stays in force for the rest of the process)."""
    import lz4.frame
    import zstandard

    from thrifty import compress

    codecs = [_Codec("thrifty", lambda d: compress.compress_bytes(d, threads=threads),
                     lambda b: compress.decompress_bytes(b, threads=threads), repeat, threads)]
    zthreads = threads if threads > 1 else 0  # 0: zstd's single-threaded mode
    for level in (3, 19) if zstd19 else (3,):
        c = zstandard.ZstdCompressor(level=level, threads=zthreads)
        codecs.append(_Codec(f"zstd -{level}", c.compress, zstandard.ZstdDecompressor().decompress,
                             repeat if level < 10 else 1, threads,
                             "" if threads == 1 else "decompression single-threaded"))
    codecs.append(_Codec("lz4", lz4.frame.compress, lz4.frame.decompress, repeat, 1,
                         "single-threaded"))
    codecs.append(_Codec("zlib -6", lambda d: zlib.compress(d, 6), zlib.decompress, repeat, 1,
                         "single-threaded"))
    dtype = float_dtype(data)
    try:
        from zipnn import ZipNN
    except ImportError:
        ZipNN = None  # noqa: N806
    missing = None
    if ZipNN is None:
        missing = Result("ZipNN", 0, 0, 0, threads, "not installed")
    elif dtype is None:
        missing = Result("ZipNN", 0, 0, 0, threads, "not float weights")
    else:
        z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        codecs.append(_Codec("ZipNN", z.compress, z.decompress, repeat, threads, f"as {dtype}"))
    fresh_malloc()
    results = _measure(codecs, data)
    return results + ([missing] if missing else [])


def table(results: list[Result]) -> str:
    head = f"{'codec':<10} {'ratio':>7} {'compress MB/s':>14} {'decompress MB/s':>16}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.ratio == 0:
            lines.append(f"{r.name:<10} {'-':>7} {'-':>14} {'-':>16}  {r.note}")
        else:
            lines.append(f"{r.name:<10} {r.ratio:>7.3f} {r.compress_mb_s:>14,.0f} "
                         f"{r.decompress_mb_s:>16,.0f}  {r.note}")
    return "\n".join(lines)
