"""thrifty compress: a checksummed, streaming, multi-threaded container for weights and data.

Lossless for every input; floating-point and integer tensors are split into byte planes first,
or integers written as varints, and text may be coded as words (see
:mod:`thrifty.compress.planes`), so that a general-purpose codec does far better on them.

    from thrifty import compress
    blob = compress.compress_bytes(data)                 # a memoryview of a new buffer
    compress.compress_file("model.safetensors", "model.safetensors.thz")
    compress.save_tensors({"w": w}, "weights.thz")       # a dict of tensors, straight to disk
    w = compress.read_tensor("weights.thz", "w")         # one tensor, nothing else decoded

The byte format is specified in docs/format.md.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from thrifty.compress import container, layouts
from thrifty.compress.container import Archive, Options, Stats, ViewReader
from thrifty.errors import ThriftyError
from thrifty.files import atomic_writer

SUFFIX = ".thz"

__all__ = [
    "SUFFIX", "Archive", "Options", "Stats", "compress_bytes", "compress_file", "decompress_bytes",
    "decompress_file", "load_tensors", "open_archive", "read_tensor", "save_tensors", "source_layout",
]


def source_layout(f, dtype: str | None = None) -> tuple[io.RawIOBase, int | None, dict]:
    """What :func:`container.write` needs to code ``f``: a reader, the size if known, and the
    layout. A regular file read from its start (stdin redirected from one included) is measured
    and its layout read as for any file. Any other stream cannot be measured or read twice: its
    layout comes from its first bytes where the format puts it there (safetensors, npy), and
    the reader gives those bytes again, then the rest; anything else is plain bytes."""
    try:
        st = os.fstat(f.fileno())
        regular = stat.S_ISREG(st.st_mode) and f.seekable() and f.tell() == 0
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        regular = False
    if regular:
        return f, st.st_size, _layout(f, st.st_size, dtype)
    if dtype is not None:
        raise ThriftyError("--dtype needs a file, not a stream")
    head = layouts.read_head(f)
    reader = _Prefixed(head, f)
    size = layouts.head_size(head)
    if size is None:
        return reader, None, {}
    return reader, size, _layout(io.BytesIO(head), size, None)


class _Prefixed(io.RawIOBase):
    """``head``, then whatever ``rest`` has."""

    def __init__(self, head: bytes, rest):
        self.head, self.rest = memoryview(head), rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        part = self.head if n < 0 else self.head[:n]
        self.head = self.head[len(part):]
        return bytes(part)


def _layout(f, size: int, dtype: str | None) -> dict:
    """Keyword arguments for container.write: kind, coding segments and tensors."""
    if dtype is None:
        kind, found = layouts.detect(f, size)
    else:
        kind, found = "bytes", [layouts.Segment(0, size, "", layouts.normalize_dtype(dtype))]
    return {"kind": kind, "segments": layouts.coding_segments(found) if size else [],
            "tensors": [s for s in found if s.name]}


def compress_bytes(data: bytes | bytearray | memoryview, *, dtype: str | None = None,
                   **options) -> memoryview:
    """Compress ``data`` (never modified) into a thrifty container, returned as a memoryview
    of a new buffer (``bytes(result)`` makes a copy when bytes are wanted). From 32 MiB of input
    the coding threads copy the frames straight into that buffer as they finish them.
    ``dtype`` (``bf16``, ``f32``, ``u16``, ...) declares raw values of one type; without it the
    layout is detected.
    Options: ``codec``, ``level``, ``threads``, ``chunk_size``."""
    view = memoryview(data).cast("B")
    out = _Place() if len(view) >= _PLACE_FROM else _Collect()
    _compress_view(view, out, Options(**options), dtype)
    return out.view()


# From this size compress_bytes copies frames into one buffer as they are coded; below it, it
# joins them at the end. glibc serves allocations up to 32 MiB from its heap once memory of that
# size has been freed, so a process that compresses one smaller buffer after another (a trainer
# saving checkpoints) gets the joined output in pages it already has, where a new buffer the
# size of the input would be fresh pages each time. Above it every buffer is fresh either way,
# and copying as the frames come costs less: they are still in cache, and they are freed at
# once rather than all held until the join.
_PLACE_FROM = 32 << 20


def _compress_view(view: memoryview, out, opts: Options, dtype: str | None) -> Stats:
    src = ViewReader(view)  # hands out slices of the caller's buffer: no copy, no writes
    return container.write(src, out, opts, size=len(view), **_layout(src, len(view), dtype))


def decompress_bytes(blob: bytes | bytearray | memoryview, threads: int = 1) -> memoryview:
    """The original bytes of a container, as a writable memoryview of a new buffer that the
    chunks were decoded straight into (``bytes(result)`` makes a copy when bytes are wanted)."""
    out = _Fill()
    container.read_all(ViewReader(memoryview(blob).cast("B")), "<bytes>", out, threads)
    return out.view()


def compress_file(
    src: str | Path, dst: str | Path, *, dtype: str | None = None, overwrite: bool = False,
    verify: bool = False, progress: Callable[[int], None] | None = None, **options,
) -> Stats:
    """Compress the file ``src`` into ``dst`` (written atomically; ``src`` is only read).
    With ``verify`` the new file is decoded and checked before it is put in place."""
    opts = Options(**options)
    src, dst = Path(src), Path(dst)
    _check_output(dst, overwrite, src)
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        layout = _layout(f, size, dtype)
        with atomic_writer(dst, overwrite=overwrite) as out:
            stats = container.write(f, out, opts, size=size, progress=progress, **layout)
            if verify:
                out.flush()
                with open(out.name, "rb") as check:
                    container.read_all(check, str(dst), _Discard(), opts.threads)
    return stats


def decompress_file(
    src: str | Path, dst: str | Path, *, threads: int = 1, overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Decode ``src`` into ``dst``, written atomically and only once every check has passed."""
    src, dst = Path(src), Path(dst)
    _check_output(dst, overwrite, src)
    with open(src, "rb") as f, atomic_writer(dst, overwrite=overwrite) as out:
        return container.read_all(f, str(src), out, threads, progress)


def open_archive(path: str | Path, threads: int = 1) -> Archive:
    """An :class:`Archive` for random access; the caller closes ``archive.f``."""
    f = open(path, "rb")  # noqa: SIM115 - owned by the archive
    try:
        return Archive(f, str(path), threads)
    except BaseException:
        f.close()
        raise


def save_tensors(tensors: dict, path: str | Path, *, overwrite: bool = True, **options) -> Stats:
    """Save a dict of tensors (safetensors layout inside, so each tensor gets its dtype's
    transform and can be read back alone)."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in tensors.items()})
    opts = Options(**options)
    with atomic_writer(Path(path), overwrite=overwrite) as out:
        return _compress_view(memoryview(blob), out, opts, None)


def load_tensors(path: str | Path, threads: int = 1) -> dict:
    """Every tensor in a compressed safetensors file. The file is decoded into one buffer and
    the tensors are views of it, not copies (so one kept tensor keeps the whole buffer alive;
    ``.clone()`` it to let the rest go)."""
    out = _Fill()
    with open(path, "rb") as f:
        header = container.read_all(f, str(path), out, threads)
    if header.get("kind") != "safetensors":
        raise ThriftyError(f"{path}: holds {header.get('kind')}, not tensors")
    return _safetensors_views(out.view(), str(path))


def _safetensors_views(buf: memoryview, name: str) -> dict:
    """The tensors of the safetensors file in ``buf``, as views of it where aligned."""
    import torch
    from safetensors.torch import _TYPES  # safetensors' own dtype-name table

    head = layouts.safetensors_header(buf)
    if head is None:
        raise ThriftyError(f"{name}: the decoded file is not valid safetensors")
    base, entries = head
    tensors = {}
    for key, (dtype_name, shape, begin, end) in entries.items():
        dtype = _TYPES.get(dtype_name)
        count = math.prod(shape)
        if dtype is None or end - begin != count * dtype.itemsize or base + end > len(buf):
            raise ThriftyError(f"{name}: tensor {key!r} in the decoded file does not match its "
                               f"dtype {dtype_name} and shape {shape}")
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        view = buf[base + begin:base + end]
        if (np.frombuffer(view, np.uint8).ctypes.data % dtype.itemsize) != 0:
            view = bytearray(view)  # misaligned: a copy, since a view would be unsafe to compute on
        tensors[key] = torch.frombuffer(view, dtype=dtype).reshape(shape)
    return tensors


def read_tensor(path: str | Path, name: str, threads: int = 1):
    """One tensor from a compressed safetensors file or torch.save checkpoint (by its dotted
    state-dict key there, ``model.lm_head.weight``), decoding only the chunks that hold it."""
    import torch
    from safetensors.torch import _TYPES  # safetensors' own dtype-name table

    archive = open_archive(path, threads)
    try:
        seg = next((t for t in archive.tensors if t.name == name), None)
        if seg is None:
            raise ThriftyError(f"{path}: no tensor named {name!r}")
        dtype = _TYPES[seg.dtype]
        if math.prod(seg.shape) * dtype.itemsize != seg.length:
            raise ThriftyError(f"{path}: {name!r} is a view into a larger storage and has no shape "
                               "of its own; decompress the file and torch.load it")
        data = archive.read(seg.offset, seg.length)  # a writable buffer of its own: no copy
    finally:
        archive.f.close()
    if not data:
        return torch.empty(seg.shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(seg.shape)


def _check_output(dst: Path, overwrite: bool, src: Path) -> None:
    if dst.is_dir():
        raise ThriftyError(f"{dst}: is a directory")
    if dst.exists() and os.path.samefile(src, dst):  # -o onto the input (or a hard link of it)
        raise ThriftyError(f"{src}: input and output are the same file")
    if dst.exists() and not overwrite:
        raise ThriftyError(f"{dst}: already exists (use -f to overwrite)")


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return len(b)


class _Collect:
    """compress_bytes' sink below _PLACE_FROM: the frames, kept uncopied and joined at the end."""

    def __init__(self):
        self.parts: list = []

    def write(self, b) -> int:
        self.parts.append(b)
        return memoryview(b).nbytes

    def view(self) -> memoryview:
        return memoryview(b"".join(self.parts))


class _Place:
    """compress_bytes' sink: one new buffer, big enough for the container, that the writer's
    pool copies frames into side by side (``place``), each batch's pages first taken from the
    kernel in one call. Returns a view of the part that was filled."""

    def begin(self, most: int) -> None:
        self.buffer = container.new_buffer(most)
        self.end = 0

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self.buffer[self.end:self.end + n] = b
        self.end += n
        return n

    def place(self, at: int, frames: list[list]) -> None:
        parts = [part for frame in frames for part in frame]
        sizes = [memoryview(part).nbytes for part in parts]
        container.populate(self.buffer[at:at + sum(sizes)])  # the pages in one call, no GIL held
        for part, n in zip(parts, sizes, strict=True):
            self.buffer[at:at + n] = part
            at += n

    def skip_to(self, end: int) -> None:
        self.end = end

    def view(self) -> memoryview:
        return self.buffer[:self.end]


class _Fill:
    """A sink that owns one buffer, allocated up front when the size is known, for the chunks
    to be decoded into; a stream of unknown size is collected from writes instead.

    The buffer comes from :func:`container.new_buffer`: not zero-filled first, its pages
    taken from the kernel by each decoder for the chunk it is about to write."""

    def __init__(self):
        self.buffer: memoryview | bytearray = bytearray()

    def reserve(self, size: int) -> memoryview:
        self.buffer = container.new_buffer(size)
        return self.buffer

    def write(self, b) -> int:
        self.buffer += b  # only ever called when nothing was reserved
        return len(b)

    def view(self) -> memoryview:
        return memoryview(self.buffer)
