"""Where the compression targets that `compress.py` misses stand, measured rather than argued.

Eleven tables, no targets (exit status 0 unless something fails to round-trip):

1. Decompressing MiniLM's weights (bf16 and fp32) on one thread: ZipNN's time beside thrifty's,
   thrifty's time split into its stages (zstd, merging planes compiled and, as where no C
   compiler was at hand, in NumPy, the digests of the decoded chunks, and getting a fresh
   output buffer's pages from the kernel).
2. What ZipNN and thrifty each make of a random flipped bit in the compressed file.
3. Independent chunks against one whole-file frame, zstd alone, on the standard library's text
   and the token shard: what each chunk size and level gives up in ratio, and at what speed;
   and what might win it back inside 1 MiB chunks: match finders between level 3 and 5, a
   zstd dictionary built from the input (sampled as RocksDB does, or trained), and thrifty's
   own transforms: varints for the token shard, words for the text.
4. What a second thread buys on this machine: the same 1 MiB chunks of MiniLM's bf16 weights
   coded by one thread, then split between two plain threads (no pool, nothing shared), for
   zstd alone and for thrifty's per-chunk coding; beside it thrifty's and ZipNN's own
   1- and 2-thread runs. Where zstd alone gains little from a second thread, no Python-level
   change will make a codec that calls it scale better.
5. What ``decompress_bytes`` decodes into: NumPy's buffer (which asks for huge pages), an
   anonymous mapping populated in one call, one faulted in as the decoders write it, and
   ``container.new_buffer`` (a mapping each decoder populates chunk by chunk), each measured
   inside the side-by-side run of every codec that ``compress.py`` makes.
6. Why the benchmarks fix glibc's malloc thresholds: five back-to-back decodes of MiniLM bf16
   by ZipNN and by thrifty, each in a child process with glibc's default malloc and in one
   with ``thrifty.compress.bench.fresh_malloc``: time and page faults of every round.

7. What the container costs a small file: the standard library's ``email`` package, file by
   file, under thrifty and under zstd -3 with its checksum (as ``zstd`` writes it): the bytes
   thrifty adds per file (header, chunk frame, index, trailer, digests).
8. What the reader's checks cost: MiniLM bf16 and fp32 decoded at 1 and 2 threads as the
   reader checks them now (each decoded chunk's digest, then the index's digest of those
   digests), with a pass over the whole output (files from before ``chunks_xxh3``), and as the
   reader checked them before (each payload's digest, then the whole output's); ZipNN beside.
9. What keeping the thread pools buys: two-thread compression of the text and decompression
   of MiniLM bf16 with the pool the process keeps, and with a new pool per call.
10. What keeping the words coder's working memory per thread buys: the text compressed five
    times on one thread in a fresh process, with it kept, with it allocated and freed for every
    chunk, and by zstd -3, each alone and the three in turns; MB/s and page faults per round.
11. How ``decompress_bytes`` decodes MiniLM bf16 and fp32 at 1 and 2 threads: the ordinary way
    (several calls per chunk, frames parsed in order by the calling thread), with the compiled
    chunk decoder, and with that, the frames found through the index and the calling thread
    decoding beside the pool; ZipNN beside.

Tables 1 to 5 run with fresh_malloc, as every ``bench.run_all`` does.

Usage: python benchmarks/compress_limits.py [--buffers | --checks | --decode]
(--buffers: only the time a fresh 95 MiB buffer's pages take with and without transparent huge
pages, round after round, then table 5 for MiniLM bf16 and for fp32; --checks: only tables 8
to 10; --decode: only table 11)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import xxhash
import zstandard
from _common import machine
from compress import converted, minilm_path, stdlib_text, token_shard

from thrifty.compress import bench, codecs, compress_bytes, container, decompress_bytes, planes

REPEAT = 7


def best_ms(fn, make_arg=lambda: None) -> float:
    """Best of REPEAT runs of ``fn(arg)``, each on a fresh argument made outside the clock."""
    best = float("inf")
    for _ in range(REPEAT):
        arg = make_arg()
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


DECODE_HEAD = ["| input | ZipNN | thrifty | zstd | plane merge, compiled (output already faulted "
               "in) | the same in NumPy (the fallback) | digests of the decoded chunks | a fresh "
               "output buffer, populated |",
               "|---|---|---|---|---|---|---|---|"]


def decode_row(name: str, data: bytes, dtype: str) -> str:
    from zipnn import ZipNN

    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    zblob = z.compress(bytes(bytearray(data)))
    blob = compress_bytes(data)
    if bytes(decompress_bytes(blob)) != data or bytes(z.decompress(bytes(zblob))) != data:
        sys.exit(f"{name}: did not round-trip")
    chunks = list(container.Reader(container.ViewReader(memoryview(blob)), "x").chunks())

    def stage_planes(_=None):
        return [container.decode_planes(c) for c in chunks]

    decoded = stage_planes()
    target = np.empty(len(data), dtype=np.uint8)

    def stage_merge(_):
        for c, parts in zip(chunks, decoded, strict=True):
            planes.merge(parts, c.transform, c.width,
                         memoryview(target)[c.raw_offset:c.raw_offset + c.raw_len])

    def stage_merge_numpy(_):
        kept, planes.compiled = planes.compiled, None
        try:
            stage_merge(_)
        finally:
            planes.compiled = kept

    zipnn_ms = best_ms(z.decompress, lambda: bytes(bytearray(zblob)))
    ours_ms = best_ms(decompress_bytes, lambda: bytes(bytearray(blob)))
    zstd_ms = best_ms(stage_planes)
    merge_ms = best_ms(stage_merge, lambda: target.fill(0))
    numpy_ms = best_ms(stage_merge_numpy, lambda: target.fill(0))
    view = memoryview(data)
    digests_ms = best_ms(lambda _: [xxhash.xxh3_64_intdigest(view[c.raw_offset:c.raw_offset + c.raw_len])
                                    for c in chunks])
    buffer_ms = best_ms(lambda _: container.populate(container.new_buffer(len(data))))
    return (f"| {name} ({len(data) / 1e6:.1f} MB) | {zipnn_ms:.1f} ms | {ours_ms:.1f} ms | "
            f"{zstd_ms:.1f} ms | {merge_ms:.1f} ms | {numpy_ms:.1f} ms | {digests_ms:.1f} ms | "
            f"{buffer_ms:.1f} ms |")


def flip_row(name: str, data: bytes, dtype: str, trials: int = 20) -> str:
    """What each format makes of the same number of random single-bit flips."""
    from zipnn import ZipNN

    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    rng = np.random.default_rng(0)
    counts = []
    for encode, decode in ((z.compress, z.decompress), (compress_bytes, decompress_bytes)):
        blob = bytes(encode(bytes(bytearray(data))))
        wrong = caught = same = 0
        for _ in range(trials):
            flipped = bytearray(blob)
            flipped[int(rng.integers(0, len(blob)))] ^= 1 << int(rng.integers(0, 8))
            try:
                out = decode(bytes(flipped))
            except Exception:  # noqa: BLE001 - any error counts as caught
                caught += 1
                continue
            if bytes(out) == data:
                same += 1
            else:
                wrong += 1
        counts.append(f"{caught} errors, {wrong} wrong outputs, {same} unharmed")
    return f"| {name} | {trials} | {counts[0]} | {counts[1]} |"


FLIP_HEAD = ["| input | random bit flips | ZipNN | thrifty |", "|---|---|---|---|"]
CHUNK_HEAD = ["| input | coding | ratio | MB/s |", "|---|---|---|---|"]


def _pieces(data: bytes, total: int, piece: int = 4096) -> list[bytes]:
    """``total`` bytes of ``data`` as evenly spaced pieces (samples for a dictionary)."""
    step = len(data) // (total // piece)
    return [data[i * step:i * step + piece] for i in range(total // piece)]


def chunk_rows(name: str, data: bytes, width: int | None = None) -> list[str]:
    """Each coding's ratio (a dictionary's own bytes counted once) and speed (building the
    dictionary included): what independent chunks give up, and what might win it back. For
    integers of ``width`` bytes, also thrifty's varint transform before level 3."""
    def level(n):
        return lambda: (zstandard.ZstdCompressor(level=n), 0)

    def params(strategy, hash_log, search_log, min_match):
        return lambda: (zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
            window_log=20, hash_log=hash_log, chain_log=hash_log, search_log=search_log,
            min_match=min_match, strategy=strategy)), 0)

    def with_dict(d: zstandard.ZstdCompressionDict, content: bytes):
        # Level 3's parameters for a 1 MiB input, as the chunks get without a dictionary: a
        # dictionary prepared on its own (precompute_compress) gets those for an input of unknown
        # size, with far smaller tables. The dictionary is counted as it would be stored, coded.
        p = zstandard.ZstdCompressionParameters.from_level(3, source_size=1 << 20, dict_size=len(content))
        return (zstandard.ZstdCompressor(compression_params=p, dict_data=d),
                len(zstandard.ZstdCompressor(level=3).compress(content)))

    def raw_dict(size):  # the way RocksDB samples one per file: pieces of the data, as they are
        def make():
            content = b"".join(_pieces(data, size))
            return with_dict(zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
                             content)
        return make

    def trained_dict(size):
        def make():
            d = zstandard.train_dictionary(size, _pieces(data, 16 * size), k=1024, d=8, steps=1,
                                           threads=1, level=3)
            return with_dict(d, d.as_bytes())
        return make

    variants = [("whole file, level 3", len(data), level(3))]
    variants += [(f"chunks of {mib} MiB, level 3", mib << 20, level(3)) for mib in (1, 2, 4, 8)]
    variants += [(f"chunks of 1 MiB, level {n}", 1 << 20, level(n)) for n in (4, 5)]
    variants += [
        ("chunks of 1 MiB, double-fast, hash log 20, min match 5", 1 << 20,
         params(zstandard.STRATEGY_DFAST, 20, 1, 5)),
        ("chunks of 1 MiB, greedy, hash log 18, search log 2, min match 6", 1 << 20,
         params(zstandard.STRATEGY_GREEDY, 18, 2, 6)),
        ("chunks of 1 MiB, level 3, 64 KiB dictionary sampled from the input", 1 << 20, raw_dict(64 << 10)),
        ("chunks of 1 MiB, level 3, 32 KiB dictionary trained on the input", 1 << 20, trained_dict(32 << 10)),
    ]
    if width:
        variants.append(("chunks of 1 MiB, varint (thrifty's transform), then level 3", 1 << 20,
                         lambda: (_Transformed(planes.VARINT, width, 3), 0)))
    else:
        variants += [
            ("chunks of 1 MiB, words (thrifty's transform), then level 3", 1 << 20,
             lambda: (_Transformed(planes.WORDS, 1, 3), 0)),
            ("chunks of 1 MiB, words, then zstd fast, hash log 14, min match 5 (thrifty's)", 1 << 20,
             lambda: (_Transformed(planes.WORDS, 1, codecs.IDS), 0)),
        ]
    rows = []
    for label, size, make in variants:
        def run(_=None, size=size, make=make):
            c, extra = make()
            return extra + sum(len(c.compress(data[i:i + size])) for i in range(0, len(data), size))
        stored = run()
        ms = best_ms(run)
        rows.append(f"| {name} | {label} | {len(data) / stored:.3f} | {len(data) / 1e3 / ms:.0f} |")
    return rows


class _Transformed:
    """A chunk as one of thrifty's transforms and zstd at ``level`` code it, plane by plane."""

    def __init__(self, transform: int, width: int, level: int):
        self.transform, self.width, self.level = transform, width, level

    def compress(self, chunk: bytes) -> bytes:
        return b"".join(codecs.encode(p, codecs.ZSTD, self.level)
                        for p in planes.split(chunk, self.transform, self.width))


SCALE_HEAD = ["| work on MiniLM bf16 | 1 thread | 2 threads | speed-up |", "|---|---|---|---|"]


def split_ms(fn, items: list, threads: int) -> float:
    """Best time for ``fn`` over ``items``, which ``threads`` plain threads share round-robin."""
    def once(_):
        workers = [threading.Thread(target=lambda part=items[k::threads]: [fn(x) for x in part])
                   for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return best_ms(once)


def scale_rows(data: bytes) -> list[str]:
    from zipnn import ZipNN

    view = memoryview(data)[:len(data) - len(data) % 2]  # whole bf16 values
    chunks = [view[i:i + (1 << 20)] for i in range(0, len(view), 1 << 20)]
    local = threading.local()

    def zstd3(c):
        if not hasattr(local, "z"):
            local.z = zstandard.ZstdCompressor(level=3)
        return local.z.compress(c)

    frames = [zstd3(c) for c in chunks]
    blob = compress_bytes(data)
    ours = list(container.Reader(container.ViewReader(memoryview(blob)), "x").chunks())
    rows = []
    work = [("zstd -3 compress, plain threads", zstd3, chunks),
            ("zstd decompress, plain threads", lambda f: zstandard.ZstdDecompressor().decompress(f), frames),
            ("thrifty encode_chunk, plain threads",
             lambda c: container.encode_chunk(c, planes.FLOAT, 2, codecs.ZSTD, 3), chunks),
            ("thrifty decode_chunk, plain threads", container.decode_chunk, ours)]
    for label, fn, items in work:
        one, two = split_ms(fn, items, 1), split_ms(fn, items, 2)
        rows.append(f"| {label} | {one:.1f} ms | {two:.1f} ms | {one / two:.2f}x |")
    zs = {t: ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=t) for t in (1, 2)}
    zblob = bytes(zs[1].compress(bytes(bytearray(data))))
    def fresh(b: bytes):  # each run gets its own copy, made outside the clock (ZipNN writes to it)
        return lambda: bytes(bytearray(b))

    whole = [("thrifty compress_bytes", lambda t: lambda d: compress_bytes(d, threads=t), fresh(data)),
             ("thrifty decompress_bytes", lambda t: lambda b: decompress_bytes(b, threads=t), fresh(blob)),
             ("ZipNN compress", lambda t: zs[t].compress, fresh(data)),
             ("ZipNN decompress", lambda t: zs[t].decompress, fresh(zblob))]
    for label, make, arg in whole:
        one, two = best_ms(make(1), arg), best_ms(make(2), arg)
        rows.append(f"| {label} | {one:.1f} ms | {two:.1f} ms | {one / two:.2f}x |")
    return rows


BUFFER_HEAD = ["| threads | decoded into | thrifty decompress MB/s | ZipNN's, same run | thrifty / ZipNN |",
               "|---|---|---|---|---|"]


def buffer_rows(data: bytes, rounds: int = 3) -> list[str]:
    """decompress_bytes inside the side-by-side measurement (every codec in turn, as
    compress.py runs them), decoding into NumPy's buffer, into a mapping populated up front,
    into one whose pages are faulted in as the decoders write them, and into what
    container.new_buffer gives (a mapping that each decoder populates chunk by chunk, in one
    madvise call per chunk)."""
    import mmap

    import thrifty.compress as tc

    def numpy_buffer(self, size):
        self.buffer = memoryview(np.empty(size, np.uint8))
        return self.buffer

    def mapping(flags):
        def reserve(self, size):
            self.buffer = memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags))
            return self.buffer
        return reserve

    ways = {"np.empty (huge pages), faulted in as written": (numpy_buffer, False),
            "a mapping, populated up front (MAP_POPULATE)": (mapping(mmap.MAP_POPULATE), False),
            "a mapping, faulted in as written": (mapping(0), False),
            "container.new_buffer, populated chunk by chunk": (tc._Fill.reserve, True)}
    rows, kept, madvise = [], tc._Fill.reserve, container._MADVISE
    try:
        for threads in (1, 2):
            for label, (reserve, populating) in ways.items():
                tc._Fill.reserve, container._MADVISE = reserve, madvise if populating else None
                by = {r.name: r for r in bench.run_all(data, threads, rounds, zstd19=False)}
                ours, zipnn = by["thrifty"].decompress_mb_s, by["ZipNN"].decompress_mb_s
                rows.append(f"| {threads} | {label} | {ours:,.0f} | {zipnn:,.0f} | {ours / zipnn:.2f}x |")
    finally:
        tc._Fill.reserve, container._MADVISE = kept, madvise
    return rows


def swapped(owner, name: str, value, fn):
    """``fn`` made to run with ``owner.name`` set to ``value`` for the length of each call."""
    def run(arg):
        kept = getattr(owner, name)
        setattr(owner, name, value)
        try:
            return fn(arg)
        finally:
            setattr(owner, name, kept)
    return run


CHECKS_HEAD = ["| input | threads | ZipNN | thrifty: decoded chunks' digests, then their digest "
               "(the reader now) | the same, then the whole output's digest (files from before "
               "`chunks_xxh3`) | payload digests, then the whole output's (the reader before) |",
               "|---|---|---|---|---|---|"]


def checks_rows(name: str, data: bytes, dtype: str, rounds: int = 9) -> list[str]:
    """What the reader's checks cost: ``decompress_bytes`` on the same data as written now,
    as written before the index had ``chunks_xxh3`` (read with a pass over the whole output),
    and read as the reader before this table did (each payload's digest before decoding, no
    digest of the decoded chunks, then the whole output's); ZipNN beside them. The four take
    turns round by round; each cell is the best round, in MB/s. thrifty's three decode the
    ordinary way, chunk by chunk from Python, as when this table was made: the compiled chunk
    decoder (table 11) checks each decoded chunk's digest in C."""
    from zipnn import ZipNN

    pack = container._pack_json
    before = swapped(container, "_pack_json",
                     lambda obj: pack({k: v for k, v in obj.items() if k != "chunks_xxh3"}),
                     compress_bytes)(data)
    now = compress_bytes(data)

    def previous(chunk, out=None):  # the reader before: payload first, decoded bytes unchecked
        if xxhash.xxh3_64_intdigest(chunk.payload) != chunk.payload_xxh:
            raise AssertionError("damaged")
        if out is not None:
            container.populate(out)
        return planes.merge(container.decode_planes(chunk), chunk.transform, chunk.width, out)

    rows = []
    for threads in (1, 2):
        z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        decode = swapped(planes, "whole_decoder", lambda: None,  # the ordinary path: see above
                         lambda b, t=threads: decompress_bytes(b, threads=t))
        ways = [(z.decompress, z.compress(bytes(bytearray(data)))), (decode, now), (decode, before),
                (swapped(container, "decode_chunk", previous, decode), before)]
        best = [float("inf")] * len(ways)
        for _ in range(rounds):
            for k, (fn, blob) in enumerate(ways):
                arg = bytes(bytearray(blob))  # a fresh copy outside the clock (ZipNN writes to it)
                t0 = time.perf_counter()
                out = fn(arg)
                best[k] = min(best[k], time.perf_counter() - t0)
                if len(out) != len(data):
                    sys.exit(f"{name}: did not round-trip")
                del out
        mb = [len(data) / 1e6 / t for t in best]
        rows.append(f"| {name} | {threads} | {mb[0]:,.0f} | " + " | ".join(
            f"{m:,.0f} ({m / mb[0]:.2f}x)" for m in mb[1:]) + " |")
    return rows


POOL_HEAD = ["| input, 2 threads | thrifty, a pool per call (as before 15bd23b) | thrifty, the pool the "
             "process keeps (now) | the reference codec, same rounds |", "|---|---|---|---|"]


def pool_rows(text: bytes, bf16: bytes, rounds: int = 7) -> list[str]:
    """thrifty at two threads with a new pool for every call (shut down at its end) and with
    the pool the process keeps, beside ZipNN (bf16) or zstd -3 (text): the three take turns
    round by round as in compress.py, one compression and one decompression each. Cells:
    compress / decompress MB/s, best round."""
    from concurrent.futures import ThreadPoolExecutor

    import zipnn

    kept, made = container.executor, []

    def fresh_pool(threads):
        if threads == 1:
            return kept(1)
        made.append(ThreadPoolExecutor(threads, initializer=container._leave_signals_to_main))
        return made[-1]

    def per_call(fn):
        def run(arg):
            try:
                return swapped(container, "executor", fresh_pool, fn)(arg)
            finally:
                while made:  # shut down at the end of the call, as the pools were
                    made.pop().shutdown(wait=True)
        return run

    enc, dec = (lambda d: compress_bytes(d, threads=2)), (lambda b: decompress_bytes(b, threads=2))
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=2)
    zstd3 = zstandard.ZstdCompressor(level=3, threads=2)
    rows = []
    for name, data, ref in (("MiniLM bf16", bf16, bench._Codec("ZipNN", z.compress, z.decompress, rounds, 2)),
                            ("text (stdlib .py)", text, bench._Codec(
                                "zstd -3", zstd3.compress, zstandard.ZstdDecompressor().decompress,
                                rounds, 2))):
        codecs_ = [bench._Codec("per call", per_call(enc), per_call(dec), rounds, 2),
                   bench._Codec("kept", enc, dec, rounds, 2), ref]
        r = bench._measure(codecs_, data)
        rows.append(f"| {name} | " + " | ".join(
            f"{c.compress_mb_s:,.0f} / {c.decompress_mb_s:,.0f}" for c in r) + f" ({ref.name}) |")
    return rows


WAYS_HEAD = ["| input | threads | ZipNN | thrifty, ordinary decoding, frames in order (as at "
             "1eb7fcb) | compiled chunk decoder, frames in order | compiled decoder, frames found "
             "through the index and the calling thread decoding too on 2 threads, in order on 1 "
             "(now) |", "|---|---|---|---|---|---|"]


def ways_rows(name: str, data: bytes, dtype: str, rounds: int = 15) -> list[str]:
    """Table 11: ``decompress_bytes`` the ordinary way (several calls per chunk, each giving up
    the GIL and taking it back; the calling thread parsing every frame), with the compiled
    chunk decoder (planes.whole_decoder: one GIL-free call per batch), and with that and the
    frames found through the index and parsed where they are decoded, by the pool and the
    calling thread; ZipNN beside. The four take turns
    round by round, each round starting one further along; cells: best round (median round) in
    MB/s, and the best against ZipNN's."""
    from zipnn import ZipNN

    blob = compress_bytes(data)
    in_order = lambda fn: swapped(container, "_listed_batches", lambda *a: None, fn)  # noqa: E731
    rows = []
    for threads in (1, 2):
        z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        decode = lambda b, t=threads: decompress_bytes(b, threads=t)  # noqa: E731
        ways = [(z.decompress, z.compress(bytes(bytearray(data)))),
                (in_order(swapped(planes, "whole_decoder", lambda: None, decode)), blob),
                (in_order(decode), blob), (decode, blob)]
        times: list[list[float]] = [[] for _ in ways]
        for r in range(rounds):
            # Each round starts one further along: a way's place in the round moved its time by
            # some 5% (at bd421f1 two columns running the same code on one thread were so apart).
            for k in (np.arange(len(ways)) + r) % len(ways):
                fn, coded = ways[k]
                arg = bytes(bytearray(coded))  # a fresh copy outside the clock (ZipNN writes to it)
                t0 = time.perf_counter()
                out = fn(arg)
                times[k].append(time.perf_counter() - t0)
                if bytes(out) != data:
                    sys.exit(f"{name}: did not round-trip")
                del out
        mb = len(data) / 1e6
        best = [mb / min(t) for t in times]
        cells = [f"{best[0]:,.0f} ({mb / np.median(times[0]):,.0f})"] + [
            f"{b:,.0f} ({mb / np.median(t):,.0f}), {b / best[0]:.2f}x"
            for b, t in zip(best[1:], times[1:], strict=True)]
        rows.append(f"| {name} | {threads} | " + " | ".join(cells) + " |")
    return rows


SCRATCH_HEAD = ["| run | coder | each round: MB/s (page faults) |", "|---|---|---|"]


def scratch_rows() -> list[str]:
    """Table 10, from child processes that import only thrifty.compress, as the command does
    (``_words_loop.py``): the text compressed on one thread five times back to back with the
    words coder's working memory kept per thread, five times with it allocated and freed for
    every chunk, and five times by zstd -3; then the three taking turns in one process."""
    child = Path(__file__).with_name("_words_loop.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.py"
        path.write_bytes(stdlib_text(32 << 20))

        def run(modes: str) -> list[str]:
            return subprocess.run([sys.executable, str(child), str(path), modes], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()

        labels = {"per-chunk": "thrifty, working memory allocated per chunk (as before)",
                  "kept": "thrifty, kept per thread (now)", "zstd": "zstd -3"}
        for mode, label in labels.items():
            rows.append(f"| alone | {label} | {run(mode)[0]} |")
        rows += [f"| in turns | {label} | {line} |"
                 for label, line in zip(labels.values(), run("per-chunk,kept,zstd"), strict=True)]
    return rows


LOOP_HEAD = ["| malloc | codec | each round: ms (page faults) |", "|---|---|---|"]


def loop_rows(path: Path) -> list[str]:
    """Table 6, from child processes: fresh_malloc lasts for the rest of a process."""
    rows = []
    for label, malloc in (("glibc's default", "default"), ("fresh_malloc", "fresh")):
        for codec in ("ZipNN", "thrifty"):
            out = subprocess.run([sys.executable, __file__, "--loop", codec, str(path), malloc],
                                 check=True, capture_output=True, text=True).stdout.strip()
            rows.append(f"| {label} | {codec} | {out} |")
    return rows


def loop(codec: str, path: str, malloc: str, rounds: int = 5) -> None:
    """Decode ``path`` (bf16 weights) ``rounds`` times back to back; print ms (page faults)."""
    import resource

    from zipnn import ZipNN

    if malloc == "fresh":
        bench.fresh_malloc()
    data = Path(path).read_bytes()
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    blob = z.compress(bytes(bytearray(data))) if codec == "ZipNN" else compress_bytes(data)
    decode = z.decompress if codec == "ZipNN" else decompress_bytes
    cells = []
    for _ in range(rounds):
        arg = bytes(bytearray(blob))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        out = decode(arg)
        ms = (time.perf_counter() - t0) * 1e3
        cells.append(f"{ms:.1f} ({resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults:,})")
        if bytes(out) != data:
            sys.exit(f"{codec} did not round-trip")
        del out  # (the input copy lives on until the next round's replaces it)
    print(", ".join(cells))


SMALL_HEAD = ["| files | bytes | thrifty | zstd -3 | thrifty adds per file |", "|---|---|---|---|---|"]


def small_files_row() -> str:
    """The email package, each file coded alone, as ``thrifty compress -r`` and ``zstd -r`` do."""
    from thrifty.train.data import stdlib_dir

    files = sorted(p for p in (stdlib_dir() / "email").rglob("*.py"))
    raw = ours = theirs = 0
    for p in files:
        data = p.read_bytes()
        raw += len(data)
        ours += len(compress_bytes(data))
        theirs += len(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data))
    return (f"| {len(files)} (`email/**/*.py`) | {raw:,} | {raw / ours:.3f}x | {raw / theirs:.3f}x "
            f"| {(ours - theirs) / len(files):.0f} bytes |")


PAGES_HEAD = ["| pages | each round, ms (first round first) |", "|---|---|"]


def pages_rows(size: int = 95 << 20, rounds: int = 5) -> list[str]:
    """A fresh mapping of ``size`` bytes populated 1 MiB at a time, as decoders populate
    container.new_buffer's, round after round in a new process: asking for transparent huge
    pages, then with the 4 KiB pages new_buffer has. On a VM whose host backs memory only when
    the guest first touches it, a huge page from memory the guest has never used costs 512 of
    the host's faults (docs/benchmarks.md, eleventh session)."""
    rows = []
    for label, huge in (("huge pages", "1"), ("4 KiB", "0")):
        out = subprocess.run([sys.executable, __file__, "--pages", str(size), str(rounds), huge],
                             check=True, capture_output=True, text=True).stdout.strip()
        rows.append(f"| {label} | {out} |")
    return rows


def pages(size: str, rounds: str, huge: str) -> None:
    """Time a fresh mapping's pages, populated as container.new_buffer's are, ``rounds`` times;
    with ``huge`` "1" the mapping asks for transparent huge pages first (new_buffer does not)."""
    import mmap

    cells = []
    for _ in range(int(rounds)):
        t0 = time.perf_counter()
        m = mmap.mmap(-1, int(size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if huge == "1":
            m.madvise(mmap.MADV_HUGEPAGE)
        buf = memoryview(m)
        for at in range(0, len(buf), 1 << 20):
            container.populate(buf[at:at + (1 << 20)])
        cells.append(f"{(time.perf_counter() - t0) * 1e3:.1f}")
        buf.release()
        m.close()
    print(", ".join(cells))


@contextlib.contextmanager
def minilm() -> Iterator[tuple[Path, Path]]:
    """MiniLM's weights as shipped (fp32) and converted to bf16, with fresh_malloc in force."""
    bench.fresh_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = minilm_path()
        yield fp32, converted(fp32, torch.bfloat16, Path(tmp) / "bf16.safetensors")


def print_checks(fp32: Path, bf16: Path) -> None:
    """Tables 8 to 10."""
    print("## What the reader's checks cost, MB/s (and against ZipNN's)\n")
    print("\n".join([*CHECKS_HEAD, *checks_rows("MiniLM bf16", bf16.read_bytes(), "bfloat16"),
                     *checks_rows("MiniLM fp32", fp32.read_bytes(), "float32")]))
    text = stdlib_text(32 << 20)
    print("\n## A pool kept for the process against a pool per call\n")
    print("\n".join([*POOL_HEAD, *pool_rows(text, bf16.read_bytes())]))
    print("\n## Words' working memory kept per thread against allocated per chunk: the stdlib "
          "text, one thread, back to back in a fresh process each\n")
    print("\n".join([*SCRATCH_HEAD, *scratch_rows()]))


def buffers_only() -> None:
    """The pages table, then table 5 for bf16 and for fp32: ``--buffers``."""
    with minilm() as (fp32, bf16):
        print("## Fresh pages for a 95 MiB buffer, 1 MiB per populate call, one process each\n")
        print("\n".join([*PAGES_HEAD, *pages_rows()]))
        for name, path in (("bf16", bf16), ("fp32", fp32)):
            print(f"\n## What decompress_bytes decodes into, MiniLM {name}, best of 3 rounds\n")
            print("\n".join([*BUFFER_HEAD, *buffer_rows(path.read_bytes())]))
    print("\n" + machine())


def print_ways(fp32: Path, bf16: Path) -> None:
    """Table 11."""
    print("## How decompress_bytes decodes: best round (median round), MB/s, and against ZipNN\n")
    print("\n".join([*WAYS_HEAD, *ways_rows("MiniLM bf16", bf16.read_bytes(), "bfloat16"),
                     *ways_rows("MiniLM fp32", fp32.read_bytes(), "float32")]))


def ways_only() -> None:
    """Table 11 alone: ``--decode``."""
    with minilm() as (fp32, bf16):
        print_ways(fp32, bf16)
    print("\n" + machine())


def checks_only() -> None:
    """Tables 8 to 10 alone: ``--checks``."""
    with minilm() as (fp32, bf16):
        print_checks(fp32, bf16)
    print("\n" + machine())


def main() -> int:
    if sys.argv[1:2] == ["--loop"]:
        loop(*sys.argv[2:5])
        return 0
    if sys.argv[1:2] == ["--pages"]:
        pages(*sys.argv[2:5])
        return 0
    if sys.argv[1:2] == ["--buffers"]:
        buffers_only()
        return 0
    if sys.argv[1:2] == ["--checks"]:
        checks_only()
        return 0
    if sys.argv[1:2] == ["--decode"]:
        ways_only()
        return 0
    bench.fresh_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = minilm_path()
        bf16 = converted(fp32, torch.bfloat16, work / "bf16.safetensors")
        print(f"## Decompression on one thread, best of {REPEAT}\n")
        print("\n".join([*DECODE_HEAD, decode_row("MiniLM bf16", bf16.read_bytes(), "bfloat16"),
                         decode_row("MiniLM fp32", fp32.read_bytes(), "float32")]) + "\n")
        print("## One flipped bit in the compressed file\n")
        print("\n".join([*FLIP_HEAD, flip_row("MiniLM bf16", bf16.read_bytes(), "bfloat16")]) + "\n")
        print("## Independent chunks against one frame, zstd alone, one thread\n")
        print("\n".join([*CHUNK_HEAD, *chunk_rows("text (stdlib .py)", stdlib_text(32 << 20)),
                         *chunk_rows("token shard (uint16)", token_shard(work / "t.npy").read_bytes(), 2)]))
        print(f"\n## What a second thread buys on this machine, best of {REPEAT}\n")
        print("\n".join([*SCALE_HEAD, *scale_rows(bf16.read_bytes())]))
        print("\n## What decompress_bytes decodes into, MiniLM bf16, best of 3 rounds\n")
        print("\n".join([*BUFFER_HEAD, *buffer_rows(bf16.read_bytes())]))
        print("\n## Back-to-back decodes of MiniLM bf16, one thread, by malloc setting\n")
        print("\n".join([*LOOP_HEAD, *loop_rows(bf16)]))
        print("\n## What the container costs a small file\n")
        print("\n".join([*SMALL_HEAD, small_files_row()]))
        print()
        print_checks(fp32, bf16)
        print()
        print_ways(fp32, bf16)
    print("\n" + machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
