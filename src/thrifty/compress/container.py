"""The thrifty container: a header, independently coded chunks, an index, a trailer.

The byte layout is specified in docs/format.md. In short::

    header   MAGIC, version, zstd-framed JSON (codec, chunk size, kind, size, segments), xxh3
    chunk*   'C', transform, width, planes, raw length, xxh3 of the raw bytes and of the payload,
             per plane (coding, stored length), crc32 of this frame header, then the planes
    index    'I', zstd-framed JSON (chunk table, original size, xxh3 of the original and of the
             chunks' digests in order), xxh3
    trailer  offset of the index, END_MAGIC

Every byte is covered by a checksum, so truncation or a flipped bit is found before a byte of
wrong output is accepted. Chunks decode independently: in parallel, and one tensor or one byte
range at a time through the index.

Writing streams: input is read one chunk at a time and coded on a thread pool with a bounded
number of chunks in flight, so memory does not grow with the file.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import itertools
import json
import mmap
import os
import signal
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import xxhash
import zstandard

from thrifty.compress import codecs, planes
from thrifty.compress.layouts import Segment
from thrifty.errors import STOPPING_SIGNALS, ThriftyError
from thrifty.files import read_exact

MAGIC = b"\x89THZ\r\n\x1a\n"  # PNG's trick: a text-mode transfer or a 7-bit channel breaks it
END_MAGIC = b"THZ-END\x00"
VERSION = 3  # written; 1 and 2 are still read (3 added varints and words; 1 has plain JSON)
READABLE = (1, 2, 3)
DEFAULT_CHUNK = 1 << 20
_HEAD = struct.Struct("<8sHI")  # magic, version, JSON length
_CHUNK = struct.Struct("<BBBBIQQ")  # transform, width, planes, reserved, raw length, xxh3 raw/payload
_PLANE = struct.Struct("<BI")  # coding, stored length
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_TRAILER = struct.Struct("<Q8s")
# The most a frame adds to its chunk (marker, chunk header, a plane entry per byte of the widest
# type, CRC), and the most one chunk's row adds to the index JSON ("[offset,offset,length],").
_FRAME_MAX = 1 + _CHUNK.size + 8 * _PLANE.size + 4
_ROW_MAX = 3 * 20 + 4
# Integer and text segments choose their transform by coding this much of their start each way.
TRIAL_BYTES = 256 << 10
# A float mantissa plane is entropy-coded only when its order-0 entropy promises this saving.
MIN_PLANE_SAVING = 0.01


@dataclass
class Options:
    codec: str = "zstd"
    level: int | None = None
    threads: int = 1
    chunk_size: int = DEFAULT_CHUNK

    def __post_init__(self):
        if self.codec not in codecs.BY_NAME or self.codec == "stored":
            raise ThriftyError(f"codec: must be one of zstd, lz4, zlib; got {self.codec!r}")
        method = codecs.BY_NAME[self.codec]
        if self.level is None:
            self.level = codecs.DEFAULT_LEVEL[method]
        if self.level not in codecs.LEVELS[method]:
            r = codecs.LEVELS[method]
            raise ThriftyError(f"level: {self.codec} takes {r.start}..{r.stop - 1}; got {self.level}")
        if self.threads < 1:
            raise ThriftyError(f"threads: must be at least 1; got {self.threads}")
        if self.chunk_size < 4096 or self.chunk_size % 8 or self.chunk_size > (1 << 30):
            raise ThriftyError("chunk size: must be a multiple of 8 between 4 KiB and 1 GiB")


@dataclass
class Chunk:
    """One coded chunk as the reader finds it."""

    index: int
    offset: int  # of its frame in the container
    raw_offset: int
    raw_len: int
    transform: int
    width: int
    raw_xxh: int
    payload_xxh: int
    planes: list[tuple[int, int]]  # (coding, stored length)
    payload: bytes = b""


@dataclass
class Stats:
    original: int = 0
    stored: int = 0
    # (segment number, plane number) -> [raw bytes, stored bytes]
    planes: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    # segment number -> the transforms its chunks were coded with
    transforms: dict[int, set[int]] = field(default_factory=dict)


class _Inline:
    """An executor that runs each task at once in the calling thread: threads=1 means one."""

    def submit(self, fn, *args):
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(e)
        return f


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def executor(threads: int):
    """Where chunks are coded: the calling thread for ``threads=1``, else a pool of that many
    threads, made on first use and kept for the life of the process. A kept pool's threads
    keep their zstd contexts (cached per thread) and their malloc arenas warm from one call to
    the next, as zstd's own multi-threaded context does with its workers, and no call pays
    for starting threads. On two threads the standard library's text compressed 1.00x-1.20x as
    fast as with a pool per call, and MiniLM decoded 0.88x-1.02x as fast
    (``benchmarks/compress_limits.py --checks``, table 9, five runs). A call that
    fails cancels its own work and waits for what had started (:func:`_settle`); it never
    shuts a pool down."""
    if threads == 1:
        return _INLINE
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix=f"thz{threads}", initializer=_leave_signals_to_main)
        return pool


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist here, nor may its lock be
    free."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _finish(futures) -> None:
    """Wait until all of ``futures`` are done or one has failed: one wake-up for the calling
    thread instead of one per future, each a system call or two of its CPU time."""
    wait(list(futures), return_when=FIRST_EXCEPTION)


def _settle(futures) -> None:
    """Cancel those of ``futures`` that have not started and wait for the rest, so that no
    work of a call goes on after it returns, whether it succeeded or not."""
    wait([f for f in futures if not f.cancel()])


def _leave_signals_to_main() -> None:
    """Pool threads block the signals that stop a command, so that the kernel hands them to the
    main thread, where Python runs its handlers at once (see thrifty.cli)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)


# Chunks smaller than this are coded in the calling thread even when there is a pool. Coding a
# small chunk is a dozen short calls that each let go of the GIL and take it back; two threads
# doing that at once spend more time handing the GIL to each other than they gain. Here, float32
# chunks of 64 KiB coded 0.7x as fast on 2 threads as on 1 and 512 KiB chunks 1.3x faster; the
# GPT checkpoint's 256 KiB chunks decoded slower on 2 threads than on 1.
SMALL_CHUNK = 512 << 10
# Decoding hands chunks to the pool in batches of this many bytes. One task per chunk, with
# the small ones decoded inline, kept the calling thread decoding instead of feeding the pool
# on files of many small tensors (MiniLM: 40 of its 74 bf16 chunks are under 512 KiB).
READ_BATCH = 1 << 20
_INLINE = _Inline()


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes for decoders (or the frames of compress_bytes) to
    fill, not zero-filled first.

    A big buffer is an anonymous mapping of ordinary pages whose writers take its pages from
    the kernel a chunk at a time (:func:`populate`), each just before writing them, so that
    several threads share that work out and one thread writes into pages it has just had
    zeroed. NumPy's own buffer (it asks for huge pages) is faster when the process has just
    freed memory of that size, and several times slower when it has not.
    ``benchmarks/compress_limits.py`` (table 5) measures each way inside the side-by-side
    benchmark; results in docs/benchmarks.md (fifth, sixth and ninth sessions)."""
    if size >= _MAP_FROM and hasattr(mmap, "MAP_ANONYMOUS"):
        return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    return memoryview(np.empty(size, np.uint8))


def _madvise():
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_POPULATE_WRITE = 23  # Linux 5.14 and later


def populate(view: memoryview) -> None:
    """Have the kernel supply the pages under ``view``, a part of a buffer from
    :func:`new_buffer`, ready for writing: one madvise call, made through ctypes so that it
    runs without the GIL, instead of a page fault per 4 KiB as the bytes are first written
    (faults taken while the GIL is held, in a memoryview copy, stop every other thread too).
    ``benchmarks/compress_limits.py`` table 5 measures it against the other ways. Nothing
    happens where the call is missing (not Linux, or a kernel before 5.14): the pages then come
    one fault at a time, as they always did. Never changes a byte."""
    global _MADVISE
    if not _wants_pages(view):
        return
    addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
    start = addr - addr % mmap.PAGESIZE
    if _MADVISE(start, addr + view.nbytes - start, _MADV_POPULATE_WRITE) != 0 \
            and ctypes.get_errno() == errno.EINVAL:
        _MADVISE = None  # a kernel before 5.14: stop asking (other failures: pages as written)


def _wants_pages(view: memoryview) -> bool:
    """Whether :func:`populate` does anything for ``view``: not for new_buffer's small buffers,
    which come from the heap, whose pages are mostly there already."""
    return _MADVISE is not None and view.nbytes >= mmap.PAGESIZE and isinstance(view.obj, mmap.mmap)


_MAP_FROM = 4 << 20


# ---------------------------------------------------------------- coding one chunk


def encode_chunk(data: memoryview, transform: int, width: int, method: int, level: int) -> list:
    """The frame for one chunk, as its parts: its header, then its coded planes (a plane
    stored raw is a view, not a copy: the frame is copied once, when it is written)."""
    if not planes.usable(transform, width, len(data)):
        transform, width = planes.NONE, 1
    parts = planes.split(data, transform, width)
    table, payload = [], []
    for k, plane in enumerate(parts):
        use, lvl = method, level
        if transform == planes.WORDS and method == codecs.ZSTD and level < 10:
            lvl = codecs.IDS
        elif transform in (planes.FLOAT, planes.BYTES) and method != codecs.ZLIB:
            # Planes go to zstd whatever the chosen codec: lz4 has no entropy stage, and planes
            # are all about entropy. High levels search for matches too; the rest skip that.
            params = codecs.EXPONENT if k == 0 else codecs.MANTISSA
            use, lvl = codecs.ZSTD, (level if method == codecs.ZSTD and level >= 10 else params)
        coded = None
        if not (transform == planes.FLOAT and k > 0
                and planes.entropy_bits(plane) > 8 * (1 - MIN_PLANE_SAVING)):
            coded = codecs.encode(plane, use, lvl)  # (a near-random mantissa plane is just stored)
        if coded is not None and len(coded) < len(plane):
            table.append((use, len(coded)))
            payload.append(coded)
        else:
            table.append((codecs.STORED, len(plane)))
            payload.append(plane)
    h = xxhash.xxh3_64()
    for p in payload:
        h.update(p)
    head = _CHUNK.pack(transform, width, len(parts), 0, len(data), xxhash.xxh3_64_intdigest(data),
                       h.intdigest())
    head += b"".join(_PLANE.pack(*t) for t in table)
    head = b"C" + head
    return [head + _U32.pack(zlib.crc32(head)), *payload]


def _size(frame: list) -> int:
    return sum(memoryview(p).nbytes for p in frame)


def decode_planes(chunk: Chunk) -> list:
    """The planes of ``chunk`` as its codings decode them (before the transform is undone)."""
    transform, width = chunk.transform, chunk.width
    if not (planes.usable(transform, width, chunk.raw_len) and transform <= planes.WORDS
            and len(chunk.planes) == planes.plane_count(transform, width)):
        raise ThriftyError(f"unknown transform {transform} of width {width} with "
                           f"{len(chunk.planes)} planes")
    parts, pos = [], 0
    n, exact = planes.plane_bound(transform, width, chunk.raw_len)
    for method, stored in chunk.planes:
        parts.append(codecs.decode(memoryview(chunk.payload)[pos:pos + stored], method, n,
                                   exact=exact))
        pos += stored
    return parts


def decode_chunk(chunk: Chunk, out=None) -> memoryview:
    """The raw bytes of ``chunk``, written into ``out`` (a part of a :func:`new_buffer` as long
    as the chunk's raw bytes) when given; raises ThriftyError when anything does not check out.

    The digest checked is that of the decoded bytes, while they are still in this core's cache.
    The payload's digest is looked at only when decoding fails or gives the wrong bytes, to say
    which: a damaged file, or coded data that never made these bytes (a writer's bug). Checking
    it first as well would read every payload once more for no more certainty: the decoders
    take any bytes without harm (the property tests feed them bit flips) and the decoded
    digest catches whatever they make of damaged ones."""
    try:
        parts = decode_planes(chunk)
        if out is None and chunk.transform != planes.NONE:  # (a plain chunk is its one plane)
            out = memoryview(np.empty(chunk.raw_len, np.uint8))
        elif out is not None:
            populate(out)
        try:
            raw = planes.merge(parts, chunk.transform, chunk.width, out)
        except ValueError as e:  # varints or words that do not make the chunk
            raise ThriftyError(f"does not decode ({e})") from None
        if xxhash.xxh3_64_intdigest(raw) != chunk.raw_xxh:
            raise ThriftyError("checksum mismatch after decoding")
    except ThriftyError:
        if xxhash.xxh3_64_intdigest(chunk.payload) != chunk.payload_xxh:
            raise ThriftyError("checksum mismatch in its coded data") from None
        raise
    return raw


# ---------------------------------------------------------------- writing


def write(
    src: BinaryIO, dst: BinaryIO, opts: Options, kind: str = "bytes",
    segments: list[Segment] | None = None, size: int | None = None,
    progress: Callable[[int], None] | None = None, tensors: list[Segment] | None = None,
) -> Stats:
    """Compress the stream ``src`` into ``dst``. ``segments`` (covering ``size`` bytes end to
    end) steer the transform; without them the input is one plain segment read to its end.
    ``tensors`` (name, dtype, shape, byte range) are recorded for reading one back alone."""
    method = codecs.BY_NAME[opts.codec]
    header = {
        "codec": opts.codec, "level": opts.level, "chunk_size": opts.chunk_size, "kind": kind,
        "original_size": size, "segments": [s.to_json() for s in segments or []],
        "tensors": [t.to_json() for t in tensors or []],
        "chunks_xxh3": True,  # the index will hold it (files from before it have only xxh3_64)
        "version": VERSION,  # again, under the checksum (see Reader)
    }
    hjson = _pack_json(header)
    # A sink with memory of its own (compress_bytes) has the frames copied into it on the pool's
    # threads, side by side, rather than one after another on this one; it is told at most how
    # many bytes the container can take: every frame is at most its raw bytes and a frame
    # header, and the index at most a JSON row per chunk.
    placing = hasattr(dst, "place") and size is not None
    if placing:
        most = 2 * (len(segments or ()) + 1 + size // opts.chunk_size)  # chunks, with room to spare
        dst.begin(_HEAD.size + len(hjson) + 8 + size + most * (_FRAME_MAX + _ROW_MAX) + 4096)
    dst.write(_HEAD.pack(MAGIC, VERSION, len(hjson)) + hjson + _U64.pack(xxhash.xxh3_64_intdigest(hjson)))
    written = _HEAD.size + len(hjson) + 8
    copies: list[Future] = []

    whole, listed = xxhash.xxh3_64(), xxhash.xxh3_64()  # the original; its chunks' digests
    stats = Stats()
    table: list[list[int]] = []
    pending: collections.deque = collections.deque()
    pool = executor(opts.threads)
    raw_pos = 0

    def drain(limit: int) -> None:
        nonlocal written
        if not limit:
            _finish(f for f, _ in pending)
        while len(pending) > limit:
            fut, metas = pending.popleft()
            frames = fut.result()
            start = written
            for frame, (raw_offset, raw_len, seg) in zip(frames, metas, strict=True):
                table.append([written, raw_offset, raw_len])
                listed.update(_U64.pack(_CHUNK.unpack_from(frame[0], 1)[5]))  # raw bytes' xxh3
                _account(stats, seg, frame[0])
                if not placing:
                    for part in frame:
                        dst.write(part)
                written += _size(frame)
            if placing:
                copies.append(pool.submit(dst.place, start, frames))

    # Chunks go to the pool in batches of about chunk_size bytes: a checkpoint of many small
    # tensors is many small chunks, and one task each would cost more in hand-offs than coding.
    batch: list[tuple[memoryview, int, int]] = []
    metas: list[tuple[int, int, int]] = []
    batch_bytes = 0

    def encode_batch(items: list[tuple[memoryview, int, int]]) -> list[bytes]:
        return [encode_chunk(view, t, w, method, opts.level) for view, t, w in items]

    def flush() -> None:
        nonlocal batch, metas, batch_bytes
        if batch:
            runner = _INLINE if batch_bytes < SMALL_CHUNK * len(batch) else pool
            pending.append((runner.submit(encode_batch, batch), metas))
            batch, metas, batch_bytes = [], [], 0
            drain(2 * opts.threads)

    def pieces() -> Iterator[tuple[int, bytes, int, int]]:
        if segments is None:
            while True:
                data = read_exact(src, opts.chunk_size)
                if not data:
                    return
                yield 0, data, planes.NONE, 1
        for i, seg in enumerate(segments):
            transform, width = seg.transform
            left = seg.length
            while left > 0:
                data = read_exact(src, min(left, opts.chunk_size))
                if len(data) < min(left, opts.chunk_size):
                    raise ThriftyError(f"input ended {left - len(data)} bytes early (did it change "
                                       "while being read?)")
                left -= len(data)
                yield i, data, transform, width

    current, chosen = -1, (planes.NONE, 1)
    try:
        for seg, data, transform, width in pieces():
            whole.update(data)
            view = memoryview(data)
            if seg != current:  # the first chunk of a segment
                current = seg
                chosen = (transform, width)
                options = _candidates(transform, width, method, opts.level, view)
                if len(options) > 1:  # the start of the segment decides for all of it
                    trial = view[:TRIAL_BYTES]
                    tried = {k: encode_chunk(trial, *k, method, opts.level) for k in options}
                    chosen = min(tried, key=lambda k: _size(tried[k]))
                    if len(trial) == len(view):
                        flush()  # frames are written in order
                        done: Future = Future()
                        done.set_result([tried[chosen]])
                        pending.append((done, [(raw_pos, len(data), seg)]))
                        raw_pos += len(data)
                        if progress:
                            progress(len(data))
                        continue
            batch.append((view, *chosen))
            metas.append((raw_pos, len(data), seg))
            batch_bytes += len(data)
            raw_pos += len(data)
            if progress:
                progress(len(data))
            if batch_bytes >= opts.chunk_size:
                flush()
        flush()
        drain(0)
        for copy in copies:
            copy.result()
    finally:
        _settle([f for f, _ in pending] + copies)
    if placing:
        dst.skip_to(written)
    if segments is not None and src.read(1):
        raise ThriftyError("input grew while being read")
    stats.original = raw_pos
    index = {"original_size": raw_pos, "xxh3_64": whole.hexdigest(),
             "chunks_xxh3": listed.hexdigest(), "chunks": table}
    ijson = _pack_json(index)
    tail = b"I" + _U32.pack(len(ijson)) + ijson + _U64.pack(xxhash.xxh3_64_intdigest(ijson))
    tail += _TRAILER.pack(written, END_MAGIC)
    dst.write(tail)
    stats.stored = written + len(tail)
    return stats


def _candidates(transform: int, width: int, method: int, level: int,
                start: memoryview) -> list[tuple[int, int]]:
    """The transforms worth trying on a segment that starts with ``start``.

    Integers: byte planes win on ids that look random and lose on id streams that repeat
    themselves, where plain zstd finds the repeats; varints win on those that repeat and are
    mostly small (token shards). Plain bytes that look like text (nearly all printable ASCII)
    may do better as words, when zstd codes them at its default level or above (words code at
    about 0.85x zstd -3's speed: a lower level asks for speed, which they do not give) and the
    compiled coder is at hand (the Python one, there for decoding, is a hundred times slower)."""
    if transform == planes.BYTES:
        return [(transform, width), (planes.NONE, 1), (planes.VARINT, width)]
    if (transform == planes.NONE and method == codecs.ZSTD and planes.compiled is not None
            and level >= codecs.DEFAULT_LEVEL[codecs.ZSTD]):
        head = np.frombuffer(start[:4096], dtype=np.uint8)
        text = np.count_nonzero((head - 32 < 95) | (head - 9 < 5))  # uint8: wraps below 32 / 9
        if head.size and text >= 0.95 * head.size:
            return [(planes.NONE, 1), (planes.WORDS, 1)]
    return [(transform, width)]


def _account(stats: Stats, seg: int, head: bytes) -> None:
    """Add a frame's raw and stored bytes per plane to ``stats``, from its header."""
    t, w, n, _, raw_len, _, _ = _CHUNK.unpack_from(head, 1)
    stats.transforms.setdefault(seg, set()).add(t)
    # Byte and float planes each hold one byte (or two) of every value; any other chunk's planes
    # (words: its vocabulary and its stream) together stand for all its bytes, counted as one.
    split = t in (planes.FLOAT, planes.BYTES)
    for k in range(n):
        _, stored = _PLANE.unpack_from(head, 1 + _CHUNK.size + k * _PLANE.size)
        acc = stats.planes.setdefault((seg, k if split else 0), [0, 0])
        acc[0] += raw_len // w if split else raw_len if k == 0 else 0
        acc[1] += stored


def segment_firsts(header: dict) -> list[int]:
    """The number of each segment's first chunk: segments are cut into chunk_size pieces."""
    firsts, n = [], 0
    for seg in header["segments"]:
        firsts.append(n)
        n += -(-seg["length"] // header["chunk_size"])
    return firsts or [0]


def _pack_json(obj: dict) -> bytes:
    """Header and index JSON as stored since version 2: one zstd frame. Tensor names and
    offsets repeat a lot; a model's header shrinks about tenfold. (Level 19 saves another 10% of
    that but takes milliseconds per file, more than coding a small checkpoint.)"""
    return zstandard.ZstdCompressor(level=6).compress(json.dumps(obj, separators=(",", ":")).encode())


def _unpack_json(stored: bytes, version: int, name: str, what: str) -> dict:
    try:
        raw = bytes(stored) if version == 1 else zstandard.ZstdDecompressor().decompress(stored)
        return json.loads(raw)
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError):
        raise ThriftyError(f"{name}: corrupt {what}") from None


# ---------------------------------------------------------------- reading


class ViewReader:
    """A read-only binary stream over a memoryview whose reads are zero-copy slices."""

    def __init__(self, view: memoryview):
        self.view, self.pos = view, 0

    def read_view(self, n: int = -1) -> memoryview:
        end = len(self.view) if n is None or n < 0 else min(self.pos + n, len(self.view))
        out = self.view[self.pos:end]
        self.pos = end
        return out

    def read(self, n: int = -1) -> bytes:
        return bytes(self.read_view(n))

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else len(self.view) + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True


class Reader:
    """Reads a container's frames from a binary stream, checking everything on the way: from
    the start (``Reader(f, name)`` reads and checks the header), or from a frame at a known
    offset of a seekable file (``Reader.at``)."""

    def __init__(self, f: BinaryIO, name: str):
        self.f, self.name, self.pos = f, name, 0
        self.index: dict | None = None
        start = bytes(read_exact(f, len(MAGIC)))
        if start != MAGIC[: len(start)] or not start:
            raise ThriftyError(f"{name}: not a thrifty compressed file (wrong magic number)")
        self.pos = len(start)
        if len(start) < len(MAGIC):
            raise ThriftyError(f"{name}: truncated in the header at byte {len(start)}")
        head = start + self._take(_HEAD.size - len(MAGIC), "header")
        magic, version, n = _HEAD.unpack(head)
        if version not in READABLE:
            raise ThriftyError(f"{name}: format version {version} is not supported (this thrifty "
                               f"reads versions {', '.join(map(str, READABLE))})")
        self.version = version
        if n > 1 << 30:
            raise ThriftyError(f"{name}: corrupt header (length {n})")
        hjson = self._take(n, "header")
        (digest,) = _U64.unpack(self._take(8, "header"))
        if xxhash.xxh3_64_intdigest(hjson) != digest:
            raise ThriftyError(f"{name}: corrupt header (checksum mismatch)")
        self.header = _unpack_json(hjson, version, name, "header")
        # The version number sits outside the header's checksum, and flipping bit 0 of 3 gives
        # 2, a version whose layout reads the same: so the header says it again.
        if self.header.get("version", version) != version:
            raise ThriftyError(f"{name}: corrupt header (version {version} here, "
                               f"{self.header.get('version')} in the header)")

    @classmethod
    def at(cls, f: BinaryIO, name: str, offset: int, version: int = VERSION) -> Reader:
        reader = cls.__new__(cls)
        reader.f, reader.name, reader.pos, reader.index = f, name, offset, None
        reader.version = version
        f.seek(offset)
        return reader

    def _take(self, n: int, what: str) -> bytes:
        data = read_exact(self.f, n)
        if n < 4096:
            data = bytes(data)  # small structural fields: bytes are easier to work with
        if len(data) != n:
            raise ThriftyError(f"{self.name}: truncated in the {what} at byte {self.pos + len(data)}")
        self.pos += n
        return data

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in order, payload read; then the index is checked and kept."""
        i, raw_pos, seen = 0, 0, []
        while True:
            start = self.pos
            tag = self._take(1, f"frame after chunk {i - 1}" if i else "first frame")
            if tag == b"C":
                chunk = self._chunk_frame(i, start, raw_pos)
                seen.append([start, raw_pos, chunk.raw_len])
                raw_pos += chunk.raw_len
                yield chunk
                i += 1
            elif tag == b"I":
                self._index_frame(start, seen, raw_pos)
                return
            else:
                raise ThriftyError(f"{self.name}: corrupt at byte {start} (expected chunk {i} or the "
                                   "index)")

    def frame_head(self, i: int, start: int) -> bytes:
        """Chunk ``i``'s frame header after its tag, checked against its CRC; with the tag."""
        fixed = self._take(_CHUNK.size, f"chunk {i}")
        _, _, n, reserved, _, _, _ = _CHUNK.unpack(fixed)
        if n > 8 or reserved:
            raise ThriftyError(f"{self.name}: chunk {i} at byte {start}: corrupt frame header")
        head = b"C" + fixed + self._take(n * _PLANE.size, f"chunk {i}")
        (crc,) = _U32.unpack(self._take(4, f"chunk {i}"))
        if zlib.crc32(head) != crc:
            raise ThriftyError(f"{self.name}: chunk {i} at byte {start}: corrupt frame header "
                               "(checksum mismatch)")
        return head

    def _chunk_frame(self, i: int, start: int, raw_pos: int) -> Chunk:
        head = self.frame_head(i, start)
        transform, width, n, _, raw_len, raw_xxh, payload_xxh = _CHUNK.unpack_from(head, 1)
        table = [_PLANE.unpack_from(head, 1 + _CHUNK.size + k * _PLANE.size) for k in range(n)]
        payload = self._take(sum(s for _, s in table), f"chunk {i}")
        return Chunk(i, start, raw_pos, raw_len, transform, width, raw_xxh, payload_xxh, table, payload)

    def index_body(self) -> dict:
        """The index JSON after its tag, checked against its checksum."""
        (n,) = _U32.unpack(self._take(4, "index"))
        ijson = self._take(n, "index")
        (digest,) = _U64.unpack(self._take(8, "index"))
        if xxhash.xxh3_64_intdigest(ijson) != digest:
            raise ThriftyError(f"{self.name}: corrupt index (checksum mismatch)")
        return _unpack_json(ijson, self.version, self.name, "index")

    def _index_frame(self, start: int, seen: list[list[int]], raw_total: int) -> None:
        index = self.index_body()
        offset, magic = _TRAILER.unpack(self._take(_TRAILER.size, "trailer"))
        if magic != END_MAGIC or offset != start:
            raise ThriftyError(f"{self.name}: corrupt trailer")
        if read_exact(self.f, 1):
            raise ThriftyError(f"{self.name}: unexpected data after the end of the container")
        if len(index["chunks"]) != len(seen) or index["original_size"] != raw_total:
            raise ThriftyError(f"{self.name}: the index does not match the chunks")
        for i, (found, listed) in enumerate(zip(seen, index["chunks"], strict=True)):
            if found != listed:
                raise ThriftyError(f"{self.name}: chunk {i} at byte {found[0]}: not where the index "
                                   "puts it (frames moved?)")
        self.index = index


def read_all(
    f: BinaryIO, name: str, out: BinaryIO, threads: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Decode the container in ``f`` to ``out``; returns its header. Raises ThriftyError, naming
    the chunk, on the first thing that does not check out."""
    reader = Reader(f, name)
    size = reader.header.get("original_size")
    # A sink that can hand out its own memory (decompress_bytes) has chunks decoded straight
    # into it; any other gets each chunk written to it in order.
    target = out.reserve(size) if size is not None and hasattr(out, "reserve") else None
    # Each chunk's decoded bytes are checked against their digest as they are decoded. The
    # index holds a digest of those digests in order, which ties every chunk to its place and
    # to this file: checking it does what checking the whole original's digest does, without a
    # second pass over the output. Files from before it have only the whole-file digest.
    listed = xxhash.xxh3_64()
    whole = None if reader.header.get("chunks_xxh3") else xxhash.xxh3_64()
    pool = executor(threads)
    pending: collections.deque = collections.deque()
    # How many batches may be in flight. Into a sink's own memory, decoded chunks take no more
    # room for being waited on later, so the calling thread hands out up to 64 MiB of them
    # before it waits for the oldest (waits that each cost a thread wake-up); written out in
    # order, each waits in memory until then, so a few per thread.
    ahead = max(2 * threads, (64 << 20) // READ_BATCH) if target is not None else 2 * threads

    def take(raws: list[memoryview], digests: bytes) -> None:
        listed.update(digests)
        for raw in raws:
            if whole is not None:
                whole.update(raw)
            if target is None:
                out.write(raw)
            if progress:
                progress(len(raw))

    def drain(limit: int) -> None:
        if not limit:
            _finish(f for f, _ in pending)
        while len(pending) > limit:
            future, digests = pending.popleft()
            take(future.result(), digests)

    # Chunks go to the pool in batches of at least READ_BATCH bytes: a file of many small
    # tensors is many small chunks, and one task each costs more in hand-offs than decoding.
    batch: list[tuple[Chunk, memoryview | None]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            runner = _INLINE if batch_bytes < SMALL_CHUNK else pool
            digests = b"".join(_U64.pack(chunk.raw_xxh) for chunk, _ in batch)
            pending.append((runner.submit(_decode_batch, name, batch), digests))
            batch, batch_bytes = [], 0
            drain(ahead)

    # A container held whole in memory, with an index that checks out, has its frames parsed
    # where they are decoded, found through the index, and the calling thread decodes too
    # (_shared) instead of parsing every frame first while the pool waits for the GIL. (On one
    # thread there is nothing to overlap.)
    batches = (_listed_batches(reader, f.view, len(target))
               if threads > 1 and target is not None
               and isinstance(getattr(f, "view", None), memoryview) else None)
    if batches is not None:
        for raws, digests in _shared(
                lambda frames: _decode_frames(name, reader.version, f.view, frames, target),
                batches, pool, threads - 1):
            take(raws, digests)
    else:
        try:
            for chunk in reader.chunks():
                at = chunk.raw_offset
                if target is not None and at + chunk.raw_len > len(target):
                    raise ThriftyError(f"{name}: chunk {chunk.index} at byte {chunk.offset}: runs "
                                       f"past the original size the header gives ({size})")
                batch.append((chunk, None if target is None else target[at:at + chunk.raw_len]))
                batch_bytes += chunk.raw_len
                if batch_bytes >= READ_BATCH:
                    flush()
            flush()
            drain(0)
        finally:
            _settle(f for f, _ in pending)
    if (whole.hexdigest() != reader.index["xxh3_64"] if whole is not None
            else listed.hexdigest() != reader.index.get("chunks_xxh3")):
        raise ThriftyError(f"{name}: checksum of the whole file does not match")
    if size is not None and size != reader.index["original_size"]:
        raise ThriftyError(f"{name}: header and index disagree on the original size")
    return reader.header


def _shared(fn: Callable, jobs: list, pool, helpers: int) -> list:
    """``fn(job)`` for each of ``jobs``, in order, done by the calling thread and ``helpers``
    threads of ``pool``, each taking the next job when it is free; returns the results in order.

    The calling thread works rather than waits: on this VM a woken pool thread sometimes got
    its core milliseconds late, and with the calling thread asleep nothing went on meanwhile
    (second worker starting 2-4 ms into a 16 ms decode; docs/benchmarks.md, thirteenth
    session). On failure the first failing job in order raises, once every thread has stopped:
    jobs are taken in order, so all those before it were done."""
    results: list = [None] * len(jobs)
    failed: dict[int, Exception] = {}
    taken = itertools.count()  # next() on it is one step under the GIL: no job taken twice

    def work() -> None:
        while not failed:
            k = next(taken)
            if k >= len(jobs):
                return
            try:
                results[k] = fn(jobs[k])
            except Exception as e:  # noqa: BLE001 - raised by the caller below
                failed[k] = e

    helping = [pool.submit(work) for _ in range(helpers)]
    try:
        work()
    except BaseException:
        failed.setdefault(-1, RuntimeError("stopped"))  # (tells the helpers to stop)
        raise
    finally:
        _settle(helping)  # a helper that has not started by now has nothing left to do
    if failed:
        raise failed[min(failed)]
    return results


def _listed_batches(reader: Reader, view: memoryview, size: int) -> list[list[tuple]] | None:
    """Where each chunk's frame lies in ``view``, a whole container whose header ``reader`` has
    read, as its index lists them, in batches of about READ_BATCH raw bytes: (chunk number,
    frame offset, raw offset, raw length, frame end) each. None when the trailer or index does
    not check out, or when the frames listed do not tile the space between the header and the
    index, or their chunks the ``size`` bytes of the original: the caller then reads from the
    start, which finds whatever is wrong where it is."""
    tail = len(view) - _TRAILER.size
    if tail < reader.pos:
        return None
    at, magic = _TRAILER.unpack(view[tail:])
    if magic != END_MAGIC or not reader.pos <= at < tail or view[at] != ord("I"):
        return None
    index_reader = Reader.at(ViewReader(view), reader.name, at + 1, reader.version)
    try:
        index = index_reader.index_body()
    except ThriftyError:
        return None
    listed = index.get("chunks")
    if index_reader.pos != tail or not isinstance(listed, list) or \
            index.get("original_size") != size or not all(
                isinstance(e, list) and len(e) == 3 and all(type(v) is int for v in e)
                for e in listed):
        return None
    batches, batch, batch_bytes, frame_at, raw = [], [], 0, reader.pos, 0
    for i, (offset, raw_pos, raw_len) in enumerate(listed):
        end = listed[i + 1][0] if i + 1 < len(listed) else at
        if offset != frame_at or raw_pos != raw or raw_len < 0 or end <= offset:
            return None
        batch.append((i, offset, raw_pos, raw_len, end))
        frame_at, raw, batch_bytes = end, raw + raw_len, batch_bytes + raw_len
        if batch_bytes >= READ_BATCH or i + 1 == len(listed):
            batches.append(batch)
            batch, batch_bytes = [], 0
    if frame_at != at or raw != size:
        return None
    reader.index = index
    return batches


def _decode_frames(name: str, version: int, view: memoryview, frames: list[tuple],
                   target: memoryview) -> tuple[list[memoryview], bytes]:
    """A batch of :func:`_listed_batches` parsed and checked as Reader.chunks does, then decoded
    into its places in ``target``; with the chunks' digests in order."""
    reader = Reader.at(ViewReader(view), name, frames[0][1], version)
    items = []
    for i, offset, raw_pos, raw_len, end in frames:  # (each starts where the one before ended)
        if reader._take(1, f"chunk {i}") != b"C":
            raise ThriftyError(f"{name}: corrupt at byte {offset} (expected chunk {i} or the index)")
        chunk = reader._chunk_frame(i, offset, raw_pos)
        if reader.pos != end or chunk.raw_len != raw_len:
            raise ThriftyError(f"{name}: chunk {i} at byte {offset}: not where the index puts it "
                               "(frames moved?)")
        items.append((chunk, target[raw_pos:raw_pos + raw_len]))
    digests = b"".join(_U64.pack(chunk.raw_xxh) for chunk, _ in items)
    return _decode_batch(name, items), digests


def _decode_batch(name: str, items: list[tuple[Chunk, memoryview | None]]) -> list[memoryview]:
    """decode_chunk for each (chunk, its place in the output, or None for new memory).

    Float and byte-plane chunks go to the compiled decoder together where it can be used: one
    call for the batch without the GIL, instead of several per chunk that each take the GIL
    back (planes.whole_decoder). A chunk that does not come out with its digest there is
    decoded again by decode_chunk, which says what is wrong with it."""
    decoder = planes.whole_decoder()
    quick = [] if decoder is None else [
        k for k, (chunk, _) in enumerate(items)
        if planes.whole(chunk.transform, chunk.width, chunk.raw_len, chunk.planes)]
    done = {}
    if quick:
        outs = [memoryview(np.empty(items[k][0].raw_len, np.uint8)) if items[k][1] is None
                else items[k][1] for k in quick]
        jobs = [(c.payload, c.planes, c.transform, c.width, out)
                for c, out in zip((items[k][0] for k in quick), outs, strict=True)]
        digests = planes.compiled.decode_chunks(decoder, jobs, _wants_pages(outs[0]))
        done = {k: out for k, out, digest in zip(quick, outs, digests, strict=True)
                if digest == items[k][0].raw_xxh}
    return [done[k] if k in done else _naming(name, chunk, decode_chunk, chunk, dst)
            for k, (chunk, dst) in enumerate(items)]


def _naming(name: str, chunk: Chunk, fn: Callable, *args):
    """``fn(*args)``, its ThriftyError told with the file and chunk it is about."""
    try:
        return fn(*args)
    except ThriftyError as e:
        raise ThriftyError(f"{name}: chunk {chunk.index} at byte {chunk.offset}: {e}") from None


# ---------------------------------------------------------------- random access


class Archive:
    """Random access to a container on a seekable file: the index, one range, one tensor."""

    def __init__(self, f: BinaryIO, name: str, threads: int = 1):
        self.f, self.name, self.threads = f, name, threads
        f.seek(0)
        first = Reader(f, name)
        self.header, self.version = first.header, first.version
        end = f.seek(0, 2)
        if end < _TRAILER.size:
            raise ThriftyError(f"{name}: truncated (no trailer)")
        f.seek(end - _TRAILER.size)
        offset, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != END_MAGIC or offset >= end:
            raise ThriftyError(f"{name}: truncated or corrupt (no valid trailer)")
        reader = Reader.at(f, name, offset, self.version)
        if reader._take(1, "index") != b"I":
            raise ThriftyError(f"{name}: corrupt trailer (it does not point at the index)")
        self.index = reader.index_body()
        self.chunk_ends = [c[0] for c in self.index["chunks"][1:]] + [offset]
        self.segments = [Segment(**s) for s in self.header["segments"]]
        self.tensors = [Segment(**t) for t in self.header.get("tensors", [])]

    @property
    def size(self) -> int:
        return self.index["original_size"]

    def _load(self, i: int) -> Chunk:
        offset, raw_offset, _ = self.index["chunks"][i]
        reader = Reader.at(self.f, self.name, offset)
        if reader._take(1, f"chunk {i}") != b"C":
            raise ThriftyError(f"{self.name}: chunk {i} at byte {offset}: corrupt (no frame here)")
        chunk = reader._chunk_frame(i, offset, raw_offset)
        if reader.pos != self.chunk_ends[i]:
            raise ThriftyError(f"{self.name}: chunk {i} at byte {offset}: corrupt frame length")
        return chunk

    def read(self, start: int, length: int) -> memoryview:
        """``length`` bytes of the original from ``start``, decoding only the chunks they span,
        as a writable view of a new buffer: chunks wholly inside the range decode straight into
        it, the (at most two) cut by its ends are decoded aside and their share copied in."""
        if start < 0 or length < 0 or start + length > self.size:
            raise ThriftyError(f"{self.name}: range {start}+{length} is outside 0..{self.size}")
        out = new_buffer(length)
        table = self.index["chunks"]
        wanted = [i for i, (_, ro, rl) in enumerate(table) if ro < start + length and ro + rl > start]
        pool = executor(self.threads)
        try:
            jobs = []
            for i in wanted:
                c = self._load(i)
                lo, hi = max(start - c.raw_offset, 0), min(start + length - c.raw_offset, c.raw_len)
                at = c.raw_offset + lo - start
                inside = lo == 0 and hi == c.raw_len
                fut = pool.submit(decode_chunk, c, out[at:at + c.raw_len] if inside else None)
                jobs.append((c, fut, at, lo, hi, inside))
            for c, fut, at, lo, hi, inside in jobs:
                raw = _naming(self.name, c, fut.result)
                if not inside:
                    out[at:at + hi - lo] = raw[lo:hi]
        finally:
            _settle(job[1] for job in jobs)
        return out

    def stats(self) -> Stats:
        """Raw and stored bytes per segment and plane, from the chunk frame headers alone."""
        stats = Stats(original=self.size, stored=self.f.seek(0, 2))
        firsts = segment_firsts(self.header)
        seg = 0
        for i, (offset, _, _) in enumerate(self.index["chunks"]):
            while seg + 1 < len(firsts) and i >= firsts[seg + 1]:
                seg += 1
            reader = Reader.at(self.f, self.name, offset)
            if reader._take(1, f"chunk {i}") != b"C":
                raise ThriftyError(f"{self.name}: chunk {i} at byte {offset}: corrupt (no frame here)")
            _account(stats, seg, reader.frame_head(i, offset))
        return stats
