"""The general-purpose codecs a plane can be coded with; thrifty writes no entropy coder.

zstandard, lz4 and zlib all release the GIL while they work, so chunks are coded in parallel
on a thread pool. Compressor objects are not thread-safe and are cached per thread.
"""

from __future__ import annotations

import threading
import zlib

import lz4.block
import zstandard

from thrifty.errors import ThriftyError

STORED, ZSTD, LZ4, ZLIB = 0, 1, 2, 3
NAMES = {STORED: "stored", ZSTD: "zstd", LZ4: "lz4", ZLIB: "zlib"}
BY_NAME = {v: k for k, v in NAMES.items()}
LEVELS = {ZSTD: range(-7, 23), LZ4: range(0, 17), ZLIB: range(0, 10)}
DEFAULT_LEVEL = {ZSTD: 3, LZ4: 0, ZLIB: 6}

# Parameters for float and integer planes: streams of one-byte symbols where zstd's Huffman
# literal coder does almost all the work. EXPONENT all but switches the match search off (a
# 64-entry hash table, the longest minimum match): an exponent plane is full of short repeats
# that cost more as matches than as literals, so this is both smaller and twice as fast as a
# normal level. MANTISSA planes get a normal level 5: mostly incompressible and fast either way,
# they hold a few real repeats (values that were once of a narrower type) worth finding.
EXPONENT, MANTISSA = -100, -101
# Both planes of the words transform (a vocabulary, and text with codes for its tokens): zstd's
# fast strategy with a 16K-entry table and 5-byte matches. Level 3 codes them 4% smaller (5.193
# against 4.994 on the standard library's source) but the whole chunk then goes at 179 MB/s
# rather than 212, under 0.8x what zstd -3 does on the whole file (238) once the container's
# own work is added (make bench-compress-limits, table 3).
IDS = -102

_local = threading.local()


def _plane_params(hash_log: int) -> zstandard.ZstdCompressionParameters:
    return zstandard.ZstdCompressionParameters(
        strategy=zstandard.STRATEGY_FAST, window_log=17, hash_log=hash_log, chain_log=hash_log,
        search_log=1, min_match=7, target_length=0, write_content_size=True, write_checksum=False,
    )


def _compressor(method: int, level: int):
    key = (method, level)
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(key)
    if c is None:
        if method == ZSTD and level == EXPONENT:
            c = zstandard.ZstdCompressor(compression_params=_plane_params(6))
        elif method == ZSTD and level == IDS:
            c = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
                strategy=zstandard.STRATEGY_FAST, window_log=20, hash_log=14, chain_log=14,
                search_log=1, min_match=5, target_length=0, write_content_size=True,
                write_checksum=False))
        elif method == ZSTD and level == MANTISSA:
            c = zstandard.ZstdCompressor(level=5)  # low mantissa bytes: a few real repeats
        elif method == ZSTD:
            c = zstandard.ZstdCompressor(level=level, write_content_size=True)
        else:
            raise ValueError(method)
        cache[key] = c
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "zstd_d", None)
    if d is None:
        d = _local.zstd_d = zstandard.ZstdDecompressor()
    return d


def encode(data, method: int, level: int) -> bytes:
    if method == ZSTD:
        return _compressor(ZSTD, level).compress(data)
    if method == LZ4:
        mode = "high_compression" if level > 0 else "default"
        return lz4.block.compress(data, mode=mode, compression=max(level, 0), store_size=False)
    if method == ZLIB:
        return zlib.compress(data, level)
    raise ValueError(f"unknown codec {method}")


def decode(data, method: int, raw_len: int, exact: bool = True) -> bytes:
    """Decode one plane; raises ThriftyError when the data does not decode to ``raw_len`` bytes
    (to at most ``raw_len`` when not ``exact``)."""
    try:
        if method == STORED:
            out = data  # a view of the payload: merging the planes copies it anyway
        elif method == ZSTD:
            out = _decompressor().decompress(data, max_output_size=raw_len)
        elif method == LZ4:
            out = lz4.block.decompress(data, uncompressed_size=raw_len)
        elif method == ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(data, raw_len)
            if not d.eof or d.unused_data or d.unconsumed_tail:
                raise ValueError("zlib stream does not end where it should")
        else:
            raise ValueError(f"unknown codec id {method}")
    except (zstandard.ZstdError, ValueError, RuntimeError, zlib.error, lz4.block.LZ4BlockError) as e:
        raise ThriftyError(f"does not decode ({e})") from None
    if len(out) != raw_len if exact else len(out) > raw_len:
        raise ThriftyError(f"decodes to {len(out)} bytes, expected {raw_len}")
    return out
