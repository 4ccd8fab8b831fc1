"""One input, every codec a user might reach for, side by side: ratio and MB/s each way.

Every codec gets its own copy of the input (ZipNN 0.5.4 rewrites its input buffer in place),
every result is decoded and compared with the input, and each time is the best of ``repeat``
runs so that a noisy moment on a shared machine counts against nobody.
"""

from __future__ import annotations

import io
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


def _best(fn: Callable[[bytes], bytes], data: bytes, repeat: int) -> tuple[float, bytes]:
    """Best time of ``fn`` over ``repeat`` runs, each on a fresh copy made outside the clock."""
    best, out = float("inf"), b""
    for _ in range(repeat):
        arg = bytes(bytearray(data))  # bytes(b) would hand back b itself, not a copy
        t0 = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _measure(name: str, data: bytes, enc, dec, repeat: int, threads: int, note: str = "") -> Result:
    t_c, blob = _best(enc, data, repeat)
    blob = bytes(bytearray(blob))
    t_d, back = _best(dec, blob, repeat)
    if bytes(back) != data:
        raise AssertionError(f"{name} did not round-trip")
    mb = len(data) / 1e6
    return Result(name, len(data) / len(blob), mb / t_c, mb / t_d, threads, note)


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
    import lz4.frame
    import zstandard

    from thrifty import compress

    results = [_measure(
        "thrifty", data,
        lambda d: compress.compress_bytes(d, threads=threads),
        lambda b: compress.decompress_bytes(b, threads=threads), repeat, threads,
    )]
    zthreads = threads if threads > 1 else 0  # 0: zstd's single-threaded mode
    for level in (3, 19) if zstd19 else (3,):
        c = zstandard.ZstdCompressor(level=level, threads=zthreads)
        d = zstandard.ZstdDecompressor()
        results.append(_measure(f"zstd -{level}", data, c.compress, d.decompress,
                                repeat if level < 10 else 1, threads,
                                "" if threads == 1 else "decompression single-threaded"))
    results.append(_measure("lz4", data, lz4.frame.compress, lz4.frame.decompress, repeat, 1,
                            "single-threaded"))
    results.append(_measure("zlib -6", data, lambda d: zlib.compress(d, 6), zlib.decompress,
                            repeat, 1, "single-threaded"))
    dtype = float_dtype(data)
    try:
        from zipnn import ZipNN
    except ImportError:
        ZipNN = None  # noqa: N806
    if ZipNN is None:
        results.append(Result("ZipNN", 0, 0, 0, threads, "not installed"))
    elif dtype is None:
        results.append(Result("ZipNN", 0, 0, 0, threads, "not float weights"))
    else:
        z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        results.append(_measure("ZipNN", data, z.compress, z.decompress, repeat, threads,
                                f"as {dtype}"))
    return results


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
