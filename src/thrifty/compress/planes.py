"""Split fixed-width values into byte planes, so that bytes of one kind sit together.

A float's exponent is spread over two bytes by the sign bit in front of it. Rotating the value
left by one bit moves the sign to the bottom, and the top byte then holds the exponent alone
(exactly, for float32 and bfloat16; the exponent and three mantissa bits for float16; eight of
the eleven exponent bits for float64). Plane 0 is the most significant byte of every value,
plane ``width - 1`` the least. The exponent plane carries under 3 bits per byte on trained
weights and entropy-codes well; the mantissa planes are close to random and are coded only
where that pays.

Integers (token ids) get the same split without the rotation: their high bytes are mostly
zero or repeat.
"""

from __future__ import annotations

import numpy as np

NONE, FLOAT, BYTES = 0, 1, 2
NAMES = {NONE: "bytes", FLOAT: "float-planes", BYTES: "byte-planes"}
_UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def usable(transform: int, width: int, nbytes: int) -> bool:
    return transform == NONE or (width in _UINT and nbytes % width == 0 and nbytes > 0)


def split(data: memoryview | bytes, transform: int, width: int) -> list[memoryview | np.ndarray]:
    """Planes of ``data`` (little-endian values of ``width`` bytes); ``data`` is not modified."""
    if transform == NONE:
        return [memoryview(data)]
    values = np.frombuffer(data, dtype=_UINT[width])
    if transform == FLOAT:
        bits = 8 * width
        values = (values << 1) | (values >> (bits - 1))  # a new array: the input stays as it was
    as_bytes = values.view(np.uint8).reshape(-1, width)
    return [np.ascontiguousarray(as_bytes[:, width - 1 - k]) for k in range(width)]


def merge(planes: list[bytes | memoryview], transform: int, width: int) -> bytes:
    """Inverse of :func:`split`."""
    if transform == NONE:
        return bytes(planes[0])
    n = len(planes[0])
    out = np.empty((n, width), dtype=np.uint8)
    for k, plane in enumerate(planes):
        out[:, width - 1 - k] = np.frombuffer(plane, dtype=np.uint8)
    values = out.view(_UINT[width]).reshape(-1)
    if transform == FLOAT:
        bits = 8 * width
        values = (values >> 1) | (values << (bits - 1))
    return values.tobytes()


def entropy_bits(plane: np.ndarray | memoryview, sample_every: int = 16) -> float:
    """Order-0 entropy in bits per byte, estimated from every ``sample_every``-th byte."""
    arr = np.frombuffer(plane, dtype=np.uint8)[::sample_every]
    if arr.size == 0:
        return 0.0
    counts = np.bincount(arr, minlength=256)
    p = counts[counts > 0] / arr.size
    return float(-(p * np.log2(p)).sum())
