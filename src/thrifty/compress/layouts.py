"""What is inside a file: the byte ranges that hold tensors of a known dtype, and the rest.

A layout is a list of segments covering the file end to end. Each segment says how its chunks
are transformed before coding: float planes for floating-point tensors, byte planes for
integers, nothing for everything else. Understood formats:

* safetensors: an 8-byte header length, a JSON header, then tensors at known offsets;
* ``.npy``: a NumPy header, then one array;
* PyTorch ``torch.save`` archives (``.pt``, ``.pth``, ``.bin``, ``.ckpt``): a zip file whose
  ``data/<key>`` members are the raw storages; their dtypes are read from ``data.pkl`` without
  running it (a pickle is a program; only its persistent ids are looked at);
* anything else: one segment, coded as plain bytes.

A file that claims a format but does not parse as one is compressed as plain bytes: the
layout only steers the coding, the bytes round-trip regardless.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass, field

from thrifty.compress.planes import BYTES, FLOAT, NONE
from thrifty.errors import ThriftyError
from thrifty.files import read_exact

# dtype name -> (transform, width). Names follow safetensors; NumPy and torch names map onto them.
DTYPES = {
    "F64": (FLOAT, 8), "F32": (FLOAT, 4), "F16": (FLOAT, 2), "BF16": (FLOAT, 2),
    "I64": (BYTES, 8), "U64": (BYTES, 8), "I32": (BYTES, 4), "U32": (BYTES, 4),
    "I16": (BYTES, 2), "U16": (BYTES, 2),
}
_NUMPY = {"f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "u8": "U64", "i4": "I32",
          "u4": "U32", "i2": "I16", "u2": "U16", "i1": "I8", "u1": "U8", "b1": "BOOL"}
_TORCH_STORAGE = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "UInt16Storage": "U16", "UInt32Storage": "U32",
    "UInt64Storage": "U64",
}


@dataclass
class Segment:
    offset: int
    length: int
    name: str = ""
    dtype: str = ""
    shape: list[int] = field(default_factory=list)

    @property
    def transform(self) -> tuple[int, int]:
        return DTYPES.get(self.dtype, (NONE, 1))

    def to_json(self) -> dict:
        d = {"offset": self.offset, "length": self.length}
        if self.name:
            d.update(name=self.name, dtype=self.dtype, shape=self.shape)
        elif self.dtype:
            d["dtype"] = self.dtype
        return d


def _fill(segments: list[Segment], size: int) -> list[Segment]:
    """Sort ``segments``, drop overlaps, and cover the gaps with plain segments. An empty
    tensor is kept (it can be read back by name) but holds no bytes to code."""
    out, pos = [], 0
    for s in sorted(segments, key=lambda s: (s.offset, s.length)):
        if s.offset < pos or s.offset + s.length > size or (s.length == 0 and not s.name):
            continue
        if s.offset > pos:
            out.append(Segment(pos, s.offset - pos))
        out.append(s)
        pos = s.offset + s.length
    if pos < size:
        out.append(Segment(pos, size - pos))
    return out


def safetensors_header(head) -> tuple[int, dict] | None:
    """The start of the data and, per tensor, (dtype, shape, begin, end) from the safetensors
    header at the front of ``head``; None when it is not one."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or 8 + n > len(head):
        return None
    try:
        header = json.loads(bytes(head[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = [int(x) for x in info["shape"]]
            entries[name] = (str(info["dtype"]), shape, begin, end)
        except (TypeError, KeyError, ValueError):
            return None
        if not 0 <= begin <= end or min(shape, default=0) < 0:
            return None
    return 8 + n, entries


def safetensors_layout(head: bytes, size: int) -> tuple[str, list[Segment]] | None:
    found = safetensors_header(head[:size])
    if found is None:
        return None
    base, entries = found
    segments = [Segment(base + begin, end - begin, name, dtype, shape)
                for name, (dtype, shape, begin, end) in entries.items()]
    return "safetensors", _fill(segments, size)


def npy_layout(head: bytes, size: int) -> tuple[str, list[Segment]] | None:
    import numpy as np

    if not head.startswith(b"\x93NUMPY"):
        return None
    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, SyntaxError, TypeError):
        return None
    start = f.tell()
    name = _NUMPY.get(dtype.str[1:]) if dtype.byteorder in "<|=" else None
    if not name or dtype.hasobject:
        return "npy", _fill([], size)
    length = int(np.prod(shape)) * dtype.itemsize
    return "npy", _fill([Segment(start, length, "array", name, list(shape))], size)


class _Opaque(dict):
    """Stands in for every global a pickle names: nothing it refers to is imported or run. It
    accepts whatever the pickle does to it (call, item set, append, state), and ignores it,
    except that a call with a tensor among its arguments (torch rebuilding a tensor from its
    storage, or a parameter from a tensor) stands for that tensor."""

    def __new__(cls, *args, **kwargs):
        ref = next((a for a in args if isinstance(a, _TensorRef)), None)
        if ref is None:
            return super().__new__(cls)
        # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...): a tensor that
        # is its whole storage, in order, has that storage's shape
        if len(args) >= 4 and args[0] is ref and args[1] == 0 and _contiguous(args[2], args[3]):
            return _TensorRef(ref.key, [int(n) for n in args[2]])
        return ref

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque(*args)

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _TensorRef:
    """A tensor in a torch.save pickle, known by the key of the storage it views and, where it
    spans that storage in order, its shape."""

    def __init__(self, key: str, shape: list[int] | None = None):
        self.key, self.shape, self.path = key, shape, ""

    def __setstate__(self, state):
        pass


def _contiguous(size, stride) -> bool:
    """Whether a tensor of ``size`` and ``stride`` (tuples from the pickle) is laid out in order."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        return False
    expect = 1
    for n, step in zip(reversed(size), reversed(stride), strict=True):
        if not (isinstance(n, int) and isinstance(step, int)) or (n > 1 and step != expect):
            return False
        expect *= n
    return True


def _storages(pkl: bytes) -> dict[str, tuple[str, str, list[int] | None]]:
    """Map storage key -> (dtype name, where the pickle puts a tensor of it as a dotted path
    such as ``model.lm_head.weight`` or '' if nowhere, that tensor's shape if it spans the
    storage) from a torch.save ``data.pkl``, without executing it."""
    dtypes: dict[str, str] = {}

    class Scanner(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch" and name in _TORCH_STORAGE:
                return _TORCH_STORAGE[name]
            return _Opaque

        def persistent_load(self, pid):
            if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
                if isinstance(pid[1], str):
                    dtypes[str(pid[2])] = pid[1]
                return _TensorRef(str(pid[2]))
            return _Opaque()

    found: dict[str, _TensorRef] = {}
    try:
        _walk(Scanner(io.BytesIO(pkl)).load(), "", found, set(), 0)
    except Exception:  # noqa: BLE001 - an odd pickle only costs us the dtype hints and names
        pass
    return {key: (dtype, found[key].path if key in found else "",
                  found[key].shape if key in found else None) for key, dtype in dtypes.items()}


def _walk(obj, path: str, found: dict[str, _TensorRef], seen: set[int], depth: int) -> None:
    """Record the first place each storage's tensor appears (a tied weight is named once,
    where it first appears)."""
    if isinstance(obj, _TensorRef):
        if obj.key not in found:
            obj.path = path
            found[obj.key] = obj
        return
    if depth > 64 or id(obj) in seen:
        return
    seen.add(id(obj))
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        _walk(value, f"{path}.{key}" if path else str(key), found, seen, depth + 1)


def torch_zip_layout(f, size: int) -> tuple[str, list[Segment]] | None:
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        pkl_info = next((i for i in infos if i.filename.endswith("/data.pkl")
                         or i.filename == "data.pkl"), None)
        if pkl_info is None:
            return None
        prefix = pkl_info.filename[: -len("data.pkl")]
        storages = _storages(zf.read(pkl_info))
        segments = []
        for info in infos:
            if not info.filename.startswith(prefix + "data/") or info.compress_type != 0:
                continue
            key = info.filename[len(prefix + "data/"):]
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                continue
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if key in storages:
                dtype, name, shape = storages[key]
                width = DTYPES.get(dtype, (NONE, 1))[1]  # the one-byte types are not listed
                if shape is None or math.prod(shape) * width != info.file_size:
                    shape = []  # a view into a larger storage: its bytes have no one shape
                segments.append(Segment(start, info.file_size, name or info.filename, dtype, shape))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, struct.error):
        return None
    return "torch", _fill(segments, size)


def read_head(f, size: int | None = None) -> bytes:
    """The first bytes of ``f`` (of ``size`` bytes, when known) that a layout is read from: 64
    KiB, which hold any npy header and most safetensors headers, or a whole safetensors header
    of up to 16 MiB."""
    limit = 1 << 24 if size is None else min(size, 1 << 24)
    head = bytes(read_exact(f, min(limit, 1 << 16)))
    if len(head) >= 8 and not head.startswith((b"PK\x03\x04", b"\x93NUMPY")):
        (n,) = struct.unpack("<Q", head[:8])  # a safetensors header's length, if it is one
        if len(head) < 8 + n <= limit:
            head += bytes(read_exact(f, 8 + n - len(head)))
    return head


def detect(f, size: int) -> tuple[str, list[Segment]]:
    """Layout of the seekable binary file ``f`` of ``size`` bytes; ``f`` is left at offset 0."""
    head = read_head(f, size)
    f.seek(0)
    result = None
    try:
        if head.startswith(b"PK\x03\x04"):
            result = torch_zip_layout(f, size)
        elif head.startswith(b"\x93NUMPY"):
            result = npy_layout(head, size)
        else:
            result = safetensors_layout(head, size)
    except Exception:  # noqa: BLE001 - a layout only steers the coding; plain bytes always work
        result = None
    f.seek(0)
    return result or ("bytes", _fill([], size))


def head_size(head: bytes) -> int | None:
    """The whole file's size, for a format whose header at the front says it (safetensors: the
    data ends where its last tensor does; npy: header plus array), from ``head`` alone; None
    when ``head`` is not such a header or does not hold all of it."""
    if head.startswith(b"\x93NUMPY"):
        found = npy_layout(head, 1 << 62)
        arrays = [seg for seg in found[1] if seg.name] if found else []
        return arrays[0].offset + arrays[0].length if arrays else None
    found = safetensors_header(head)
    if found is None:
        return None
    base, entries = found
    return base + max((end for _, _, _, end in entries.values()), default=0)


_ALIASES = {
    "float64": "F64", "fp64": "F64", "double": "F64", "float32": "F32", "fp32": "F32",
    "float": "F32", "float16": "F16", "fp16": "F16", "half": "F16", "bfloat16": "BF16",
    "int64": "I64", "uint64": "U64", "int32": "I32", "uint32": "U32", "int16": "I16",
    "uint16": "U16", "int8": "I8", "uint8": "U8",
}


def normalize_dtype(name: str) -> str:
    """``bf16``, ``bfloat16``, ``BF16``, ``u16``, ``uint16``, ... -> the safetensors name."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key.upper() in DTYPES or key.upper() in ("I8", "U8"):
        return key.upper()
    raise ThriftyError(f"dtype: unknown {name!r} (try f32, bf16, f16, f64, u16, i32, u32, i64)")


def coding_segments(segments: list[Segment], own: int = 65536, least: int = 4096) -> list[Segment]:
    """The segments chunks are cut along: each tensor of ``own`` bytes or more starts one, and
    the smaller tensors of the same dtype that follow it join it (a bias after its weight), so
    that every byte of a tensor gets its dtype's transform. A run of small tensors with no big
    one before it is kept if it reaches ``least`` bytes; everything else is coded as plain bytes."""
    out: list[Segment] = []
    for s in segments:
        if s.length == 0:
            continue
        dtype = s.dtype if s.transform[0] != NONE else ""
        joins = out and out[-1].dtype == dtype and out[-1].offset + out[-1].length == s.offset
        if joins and (not dtype or s.length < own):
            out[-1].length += s.length
        else:
            out.append(Segment(s.offset, s.length, dtype=dtype))
    merged: list[Segment] = []
    for seg in out:
        if seg.dtype and seg.length < least:
            seg.dtype = ""
        if merged and not merged[-1].dtype and not seg.dtype:
            merged[-1].length += seg.length
        else:
            merged.append(seg)
    return merged
