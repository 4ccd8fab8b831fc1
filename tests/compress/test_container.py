"""The container round-trips every input, and every corruption of it is caught."""

from __future__ import annotations

import collections
import io
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thrifty import compress
from thrifty.compress import container, planes
from thrifty.errors import ThriftyError

SMALL = dict(chunk_size=4096)  # many chunks from little data
_STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
_STDLIB_TEXT = b"".join(p.read_bytes() for p in _STDLIB[:40])  # about 1 MB of Python


def _float_bytes(n: int, dtype: torch.dtype, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(n, generator=g) * 0.02).to(dtype)
    return t.view(torch.uint8).numpy().tobytes() if dtype != torch.float32 else t.numpy().tobytes()


@pytest.fixture(params=["compiled", "numpy"])
def impl(request, monkeypatch):
    """Each plane test runs on the compiled transform and on the NumPy one it falls back to."""
    if request.param == "numpy":
        monkeypatch.setattr(planes, "compiled", None)
    return request.param


def test_the_compiled_transform_was_built():
    """make's install builds it; without it thrifty still works, several times slower."""
    assert planes.compiled is not None, "thrifty.compress._planes was not built (no C compiler?)"


@pytest.mark.parametrize("transform", [planes.FLOAT, planes.BYTES])
@pytest.mark.parametrize("width", [2, 4, 8])
def test_planes_split_and_merge_are_inverse(transform, width, impl):
    data = np.random.default_rng(width).integers(0, 256, 64 * width, dtype=np.uint8).tobytes()
    parts = planes.split(data, transform, width)
    assert len(parts) == width and all(len(p) == 64 for p in parts)
    assert planes.merge([bytes(p) for p in parts], transform, width) == data


@pytest.mark.parametrize("transform,width", [(planes.NONE, 1), (planes.FLOAT, 2), (planes.FLOAT, 4),
                                             (planes.FLOAT, 8), (planes.BYTES, 2), (planes.BYTES, 4)])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_planes_merge_into_a_given_buffer_aligned_or_not(transform, width, offset, impl):
    """Decoding fills its final buffer in place; chunks may start at any byte of it."""
    data = np.random.default_rng(offset).integers(0, 256, 1000 * width, dtype=np.uint8).tobytes()
    parts = [bytes(p) for p in planes.split(data, transform, width)]
    buffer = np.full(len(data) + 2 * offset, 0xAA, dtype=np.uint8)
    target = memoryview(buffer)[offset:offset + len(data)]
    planes.merge(parts, transform, width, target)
    assert bytes(target) == data
    assert (buffer[:offset] == 0xAA).all() and (buffer[offset + len(data):] == 0xAA).all()


def test_float_planes_put_the_bfloat16_exponent_in_plane_0(impl):
    values = torch.tensor([1.0, -1.0, 2.0, -0.5], dtype=torch.bfloat16)
    exponent, rest = planes.split(values.view(torch.uint8).numpy().tobytes(), planes.FLOAT, 2)
    assert list(exponent) == [127, 127, 128, 126]  # the biased exponent, sign moved out
    assert [b >> 7 for b in rest] == [0, 1, 0, 1]  # the sign, moved beside the mantissa


@given(st.binary(max_size=4000), st.sampled_from([planes.FLOAT, planes.BYTES]),
       st.sampled_from([2, 4, 8]))
def test_compiled_planes_match_numpy_byte_for_byte(data, transform, width):
    data = data[:len(data) // width * width]
    ours, theirs = planes.compiled.split(data, transform, width), planes.split_numpy(data, transform, width)
    assert [bytes(p) for p in ours] == [bytes(p) for p in theirs]
    a, b = np.full(len(data), 1, np.uint8), np.full(len(data), 2, np.uint8)
    planes.compiled.merge(ours, transform, width, a)
    planes.merge_numpy(ours, transform, width, b)
    assert bytes(a) == bytes(b) == data


@pytest.mark.parametrize("call,message", [
    (lambda c: c.split(b"abc", planes.FLOAT, 2), "not whole values"),
    (lambda c: c.split(b"abcd", planes.FLOAT, 3), "no plane transform"),
    (lambda c: c.split(b"abcd", planes.NONE, 2), "no plane transform"),
    (lambda c: c.merge([b"ab"], planes.FLOAT, 2, bytearray(4)), "1 planes for values of width 2"),
    (lambda c: c.merge([b"ab", b"a"], planes.FLOAT, 2, bytearray(4)), "differ in length"),
    (lambda c: c.merge([b"ab", b"ab"], planes.FLOAT, 2, bytearray(5)), "output holds 5"),
    (lambda c: c.merge([b"ab", b"ab"], planes.FLOAT, 2, b"read"), "read-write"),
    (lambda c: c.varint_encode(b"abc", 3), "no varint for width 3"),
    (lambda c: c.varint_encode(b"abc", 2), "not whole values"),
    (lambda c: c.varint_decode(b"\x01", 2, bytearray(3)), "not whole values"),
    (lambda c: c.varint_decode(b"\x01", 2, b"re"), "read-write"),
])
def test_compiled_planes_refuse_what_does_not_fit(call, message):
    """Checked in C before any byte is written: a mismatch would otherwise write out of bounds."""
    with pytest.raises((ValueError, TypeError), match=message):
        call(planes.compiled)


def test_the_compiled_chunk_decoder_is_in_use():
    """It needs the system's libzstd and python-xxhash's XXH3_64bits; both are on this machine,
    so decoding weights here goes through it (the tests below also run without it)."""
    assert planes.whole_decoder() is not None


def _coded_chunk(data: bytes, transform: int, width: int, codings: list[int]):
    """(payload, planes) of ``data`` split into planes, plane k coded by codings[k]."""
    import zstandard

    parts, table = [], []
    for k, plane in enumerate(planes.split(data, transform, width)):
        coded = zstandard.ZstdCompressor(level=3).compress(plane) if codings[k] else bytes(plane)
        parts.append(coded)
        table.append((codings[k], len(coded)))
    return b"".join(parts), table


@given(st.binary(min_size=1, max_size=6000), st.sampled_from([planes.FLOAT, planes.BYTES]),
       st.sampled_from([2, 4, 8]), st.lists(st.booleans(), min_size=8, max_size=8),
       st.integers(0, 3))
def test_compiled_chunks_match_the_ordinary_path(data, transform, width, codings, offset):
    """The compiled decoder's bytes and digest, for any mix of stored and zstd planes, into a
    buffer at any offset, are those of the plain merge and xxh3."""
    import xxhash

    data = data[:len(data) // width * width] or bytes(width)
    payload, table = _coded_chunk(data, transform, width, [int(c) for c in codings[:width]])
    buffer = np.full(len(data) + 2 * offset, 0xAA, np.uint8)
    out = memoryview(buffer)[offset:offset + len(data)]
    (digest,) = planes.compiled.decode_chunks(planes.whole_decoder(),
                                              [(payload, table, transform, width, out)], False)
    assert bytes(out) == data and digest == xxhash.xxh3_64_intdigest(data)
    assert (buffer[:offset] == 0xAA).all() and (buffer[offset + len(data):] == 0xAA).all()


def test_compiled_chunks_say_which_did_not_decode():
    """A plane that is not exactly one zstd frame of exactly its share of the chunk comes back
    as None, and the others in the batch decode all the same."""
    data = _float_bytes(2048, torch.bfloat16)
    payload, table = _coded_chunk(data, planes.FLOAT, 2, [1, 0])
    coded, rest = payload[:table[0][1]], payload[table[0][1]:]
    short, _ = _coded_chunk(data[:-2], planes.FLOAT, 2, [1, 0])

    def item(first: bytes, second: bytes = rest):
        return (first + second, [(1, len(first)), (0, len(second))], planes.FLOAT, 2,
                bytearray(len(data)))

    got = planes.compiled.decode_chunks(planes.whole_decoder(), [
        item(coded),
        item(coded[:-3] + bytes(3)),  # the end of the frame zeroed
        item(coded + coded),  # two frames
        item(short[:len(short) - len(rest) + 1]),  # a frame of one value too few
        item(coded, rest[:-1] + b"\x00\x00"),  # a stored plane of one byte too many
        item(coded),
    ], False)
    assert got[0] == got[5] is not None and got[1:5] == [None] * 4


@pytest.mark.parametrize("item,message", [
    ((b"ab", [(0, 2)], planes.FLOAT, 2, bytearray(4)), "do not make up the chunk"),
    ((b"abcd", [(0, 2), (0, 1)], planes.FLOAT, 2, bytearray(4)), "do not make up the chunk"),
    ((b"abcd", [(0, 2), (2, 2)], planes.FLOAT, 2, bytearray(4)), "do not make up the chunk"),
    ((b"abcd", [(0, 2), (0, 2)], planes.FLOAT, 2, bytearray(5)), "do not make up the chunk"),
    ((b"abcd", [(0, 2), (0, 2)], planes.FLOAT, 3, bytearray(4)), "no plane transform"),
    ((b"abcd", [(0, 2), (0, 2)], planes.FLOAT, 2, b"read"), "read-write"),
])
def test_compiled_chunks_refuse_what_does_not_fit(item, message):
    """Checked before any byte is written, for the whole batch."""
    out = bytearray(4)
    good = (b"abcd", [(0, 2), (0, 2)], planes.FLOAT, 2, out)
    with pytest.raises((ValueError, TypeError), match=message):
        planes.compiled.decode_chunks(planes.whole_decoder(), [good, item], False)
    assert out == bytearray(4)


@pytest.fixture(params=["compiled", "ordinary"])
def chunk_decoder(request, monkeypatch):
    """Container tests of weights run with the compiled chunk decoder and without it."""
    if request.param == "ordinary":
        monkeypatch.setattr(planes, "whole_decoder", lambda: None)
    return request.param


def test_a_damaged_float_chunk_is_told_the_same_either_way(chunk_decoder):
    data = _float_bytes(8192, torch.bfloat16)
    blob = bytearray(compress.compress_bytes(data, dtype="bfloat16", **SMALL))
    chunks = list(container.Reader(io.BytesIO(bytes(blob)), "x").chunks())
    assert all(c.planes[0][0] == 1 for c in chunks)  # the exponents zstd-coded
    second = chunks[1]
    payload_at = second.offset + 1 + container._CHUNK.size + 5 * len(second.planes) + 4
    blob[payload_at + 7] ^= 0x04
    with pytest.raises(ThriftyError, match="chunk 1 at byte .*checksum mismatch in its coded data"):
        compress.decompress_bytes(blob, threads=2)
    assert bytes(compress.decompress_bytes(compress.compress_bytes(data, dtype="bfloat16", **SMALL),
                                           threads=2)) == data


def test_without_libzstd_decoding_takes_the_ordinary_path(monkeypatch):
    monkeypatch.setattr(planes, "_ZSTD_NAMES", ("libthrifty-has-no-such-library.so",))
    assert planes._bind_whole() is False
    monkeypatch.setitem(planes._WHOLE, "ready", False)
    assert planes.whole_decoder() is None
    data = _float_bytes(20000, torch.float32)
    assert bytes(compress.decompress_bytes(compress.compress_bytes(data, **SMALL), threads=2)) == data


def test_without_xxhash_s_compiled_module_decoding_takes_the_ordinary_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "xxhash._xxhash", None)  # as if python-xxhash were laid out otherwise
    assert planes._bind_whole() is False


def _edges(width: int) -> np.ndarray:
    """Every value at which a varint gains a byte, either side of it, and the largest."""
    top = (1 << 8 * width) - 1
    at = [v for k in range(1, 10) for v in ((1 << 7 * k) - 1, 1 << 7 * k) if v <= top]
    return np.array([0, 1, *at, top - 1, top], dtype=f"<u{width}")


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("offset", [0, 1])
def test_varints_round_trip_at_every_length(width, offset, impl):
    values = _edges(width)
    data = values.tobytes()
    (stream,) = planes.split(data, planes.VARINT, width)
    expect = sum(max(1, -(-int(v).bit_length() // 7)) for v in values)  # bytes of 7 bits each
    assert len(stream) == expect
    buffer = np.zeros(len(data) + offset, np.uint8)
    planes.merge([bytes(stream)], planes.VARINT, width, memoryview(buffer)[offset:])
    assert buffer[offset:].tobytes() == data


def test_varints_are_leb128(impl):
    # The example of the DWARF and protobuf specifications: 300 is 0xAC 0x02.
    assert bytes(planes.split(np.array([300, 1, 0], "<u2").tobytes(), planes.VARINT, 2)[0]) == \
        b"\xac\x02\x01\x00"


@given(st.binary(max_size=4000), st.sampled_from([2, 4, 8]))
def test_compiled_varints_match_numpy_byte_for_byte(data, width):
    data = data[:len(data) // width * width]
    ours = planes.compiled.varint_encode(data, width)
    assert ours == planes.varint_encode_numpy(data, width)
    a, b = bytearray(len(data)), np.full(len(data), 7, np.uint8)
    planes.compiled.varint_decode(ours, width, a)
    planes.varint_decode_numpy(ours, width, b)
    assert bytes(a) == b.tobytes() == data


@pytest.mark.parametrize("stream,values,message", [
    (b"", 1, "exactly 1 values"),  # nothing there
    (b"\x80", 1, "exactly 1 values"),  # ends inside a value
    (b"\x01\x01", 1, "exactly 1 values"),  # a value too many
    (b"\x01", 2, "exactly 2 values"),  # a value too few
    (b"\x80\x80\x80\x01", 1, "varint 1 does not fit in 2 bytes"),  # four bytes for a uint16
    (b"\x05\xff\xff\x04", 2, "varint 2 does not fit in 2 bytes"),  # 65536
])
def test_varint_decoders_refuse_a_stream_that_does_not_hold_the_values(stream, values, message, impl):
    """The compiled decoder checks before it writes past the end; both name what is wrong."""
    with pytest.raises(ValueError, match=message):
        planes.merge([stream], planes.VARINT, 2, bytearray(2 * values))


@pytest.mark.parametrize("text", [
    b"", b"a", b" ", b"  ", b"\x00", b"\x00\x00 x", b"\xff", b"\xc3\xa9t\xc3\xa9 caf\xc3\xa9",
    b"def f(x):\n    return x  + x\n", b"a" * 64, b"a" * 63 + b" ", b"  " * 32, b"\t\n" * 40 + b"z",
    b"x" * 100 + b"  " + b"y" * 20,
    # same length and the same first and last 8 bytes: told apart by the middle
    b"abcdefgh1ijklmnop abcdefgh2ijklmnop abcdefgh1ijklmnop",
])
def test_words_round_trip(text, impl):
    parts = planes.split(text, planes.WORDS, 1)
    out = bytearray(len(text))
    planes.merge([bytes(p) for p in parts], planes.WORDS, 1, out)
    assert bytes(out) == text


def test_words_are_a_vocabulary_and_a_stream(impl):
    """The layout docs/format.md gives: most frequent first, each token then a 0 byte; codes in
    place of tokens, other bytes as they are."""
    vocab, stream = planes.split(b"x(y) = x  ", planes.WORDS, 1)
    assert bytes(vocab) == b"x\0y\0  \0"
    assert bytes(stream) == b"\x80(\x81) = \x80\x82"
    # places from 64 on take a second byte, from 8192 a third (64 + 7 bits, then 7 more)
    for distinct, last in ((64, b"\xbf"), (65, b"\xc0\x01"), (8192, b"\xff\x7f"),
                           (8193, b"\xc0\x80\x01")):
        words = b" ".join(b"w%d" % i for i in range(distinct))  # each once: in order of appearance
        assert bytes(planes.split(words, planes.WORDS, 1)[1]).endswith(b" " + last)


def test_words_past_a_million_distinct_tokens_round_trip():
    """Places from 2^20 on take the compiled coder's slower path."""
    text = b" ".join(b"%x" % i for i in range((1 << 20) + 5000))
    vocab, stream = planes.compiled.words_encode(text)
    assert bytes(stream)[-4:-3] >= b"\xc0"  # the last code has more than three bytes
    out = bytearray(len(text))
    planes.compiled.words_decode(vocab, stream, out)
    assert bytes(out) == text


_DIRTY = bytearray(planes.compiled.words_scratch(600)) if planes.compiled else bytearray()


def test_words_scratch_must_be_big_enough_and_writable():
    text = b"some words, some words"
    need = planes.compiled.words_scratch(len(text))
    assert planes.compiled.words_encode(text, bytearray(need)) == planes.compiled.words_encode(text)
    with pytest.raises(ValueError, match="scratch holds"):
        planes.compiled.words_encode(text, bytearray(need - 1))
    with pytest.raises(BufferError):
        planes.compiled.words_encode(text, bytes(need))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600).map(lambda b: bytes(b" \t\nab_(\x00\xff"[x % 9] for x in b)))
def test_compiled_words_match_python_byte_for_byte(text):
    ours = planes.compiled.words_encode(text)
    assert ours == planes.words_encode_python(text)
    # the same with working memory kept from earlier calls, whatever they left in it
    _DIRTY[:] = bytes([0xAB]) * len(_DIRTY)
    assert planes.compiled.words_encode(text, _DIRTY) == ours
    a, b = bytearray(len(text)), np.full(len(text), 7, np.uint8)
    planes.compiled.words_decode(*ours, a)
    planes.words_decode_python(*ours, b)
    assert bytes(a) == b.tobytes() == text


@pytest.mark.parametrize("vocab,stream,size,message", [
    (b"ab", b"\x80", 2, "does not end with a 0 byte"),
    (b"a\0", b"\x81", 1, "past the end of the vocabulary"),
    (b"a\0", b"\xc0", 1, "not well formed"),  # a code cut short
    (b"a\0", b"\xc0\x80", 1, "not well formed"),
    (b"a\0", b"\x80\x80", 1, "more text than the chunk holds"),
    (b"a\0", b"xyz", 2, "more text than the chunk holds"),
    (b"a\0", b"\x80", 2, "less text than the chunk holds"),
])
def test_words_decoders_refuse_what_does_not_make_the_chunk(vocab, stream, size, message, impl):
    with pytest.raises(ValueError, match=message):
        planes.merge([vocab, stream], planes.WORDS, 1, bytearray(size))


def test_text_is_coded_as_words_where_that_pays():
    text = _STDLIB_TEXT  # about 1 MB: one chunk
    blob = compress.compress_bytes(text)
    assert _transforms(blob) == {planes.WORDS}
    assert bytes(compress.decompress_bytes(blob, threads=2)) == text
    plain = container._size(container.encode_chunk(memoryview(text), planes.NONE, 1, 1, 3))
    assert len(blob) < 0.97 * plain  # 0.952 when written
    many = compress.compress_bytes(text, chunk_size=1 << 18, threads=2)  # four chunks
    assert _transforms(many) == {planes.WORDS}
    assert bytes(compress.decompress_bytes(many, threads=2)) == text
    # not where the codec is not zstd, nor below zstd's default level (asked for speed), nor
    # on bytes that are not text
    for codec in ("lz4", "zlib"):
        assert _transforms(compress.compress_bytes(text, codec=codec, **SMALL)) == {planes.NONE}
    for level, coded in ((-5, planes.NONE), (2, planes.NONE), (3, planes.WORDS)):
        assert _transforms(compress.compress_bytes(text, level=level)) == {coded}, level
    noise = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    assert _transforms(compress.compress_bytes(noise, **SMALL)) == {planes.NONE}


def test_a_words_chunk_that_does_not_decode_is_named():
    import xxhash

    raw = b"ab"
    vocab, stream = b"ab\0", b"\x81"
    payload = vocab + stream
    chunk = container.Chunk(0, 0, 0, len(raw), planes.WORDS, 1, xxhash.xxh3_64_intdigest(raw),
                            xxhash.xxh3_64_intdigest(payload), [(0, 3), (0, 1)], payload)
    with pytest.raises(ThriftyError, match="does not decode .*past the end of the vocabulary"):
        container.decode_chunk(chunk)


def _words_as_ids(limit: int) -> np.ndarray:
    """Token ids as a tokenizer makes them: the stdlib's words numbered by frequency."""
    text = b"".join(p.read_bytes() for p in _STDLIB)[:limit]
    words = re.findall(rb"\w+|[^\w\s]|\s+", text)
    rank = {w: i for i, (w, _) in enumerate(collections.Counter(words).most_common())}
    return np.array([rank[w] for w in words], dtype=np.uint16)


def _transforms(blob) -> set[int]:
    return {c.transform for c in container.Reader(io.BytesIO(bytes(blob)), "x").chunks()}


def test_token_ids_are_coded_as_varints_where_that_pays():
    ids = _words_as_ids(1 << 20)
    assert (ids >= 128).mean() > 0.1  # a good part take two bytes
    blob = compress.compress_bytes(ids.tobytes(), dtype="u16", chunk_size=1 << 18)
    assert _transforms(blob) == {planes.VARINT}
    assert bytes(compress.decompress_bytes(blob)) == ids.tobytes()
    # smaller than either other choice the encoder had
    plain = compress.compress_bytes(ids.tobytes(), chunk_size=1 << 18)
    as_planes = [container.encode_chunk(memoryview(ids.tobytes())[i:i + (1 << 18)], planes.BYTES, 2,
                                        1, 3) for i in range(0, ids.nbytes, 1 << 18)]
    assert len(blob) < 0.97 * len(plain)
    assert len(blob) < sum(container._size(f) for f in as_planes)
    # the same ids as int64, as torch keeps them: a varint is one to three bytes of eight
    wide = ids.astype(np.int64).tobytes()
    coded = compress.compress_bytes(wide, dtype="i64", chunk_size=1 << 18)
    assert _transforms(coded) == {planes.VARINT}
    assert len(coded) < 0.9 * len(compress.compress_bytes(wide, chunk_size=1 << 18))
    # ids that look random keep byte planes or plain bytes
    noise = np.random.default_rng(0).integers(0, 1 << 16, 1 << 17, dtype=np.uint16).tobytes()
    assert planes.VARINT not in _transforms(compress.compress_bytes(noise, dtype="u16", **SMALL))


def test_a_varint_chunk_that_does_not_decode_is_named():
    """Checksums hold but the stream is wrong (a writer's bug, not a bit flip): still an error."""
    import xxhash

    raw = np.array([1, 2], "<u2").tobytes()
    for stream in (b"\x01", b"\x01\x02\x03", b"\xff\xff\xff\x01"):
        chunk = container.Chunk(0, 0, 0, len(raw), planes.VARINT, 2, xxhash.xxh3_64_intdigest(raw),
                                xxhash.xxh3_64_intdigest(stream), [(0, len(stream))], stream)
        with pytest.raises(ThriftyError, match="does not decode"):
            container.decode_chunk(chunk)
    bad = container.Chunk(0, 0, 0, len(raw), 9, 2, 0, xxhash.xxh3_64_intdigest(raw),
                          [(0, len(raw))], raw)
    with pytest.raises(ThriftyError, match="unknown transform 9"):
        container.decode_chunk(bad)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 8191, 8192, 12287, 1 << 20])
def test_plane_entropy_estimate(size):
    """The estimate that decides whether a mantissa plane is worth coding, at every sample
    size it can meet, against the entropy worked out directly from the same sample."""
    rng = np.random.default_rng(size)
    for plane in (rng.integers(0, 256, size, dtype=np.uint8), np.full(size, 7, np.uint8),
                  rng.integers(0, 2, size, dtype=np.uint8) * 255):
        sample = plane[::max(1, size // 4096)]
        p = np.bincount(sample, minlength=256) / max(sample.size, 1)
        want = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
        assert planes.entropy_bits(memoryview(plane)) == pytest.approx(want, abs=1e-9)
    if size >= 4096:
        assert planes.entropy_bits(rng.integers(0, 256, size, dtype=np.uint8)) > 7.9


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_float_weights_compress_better_than_zstd(dtype):
    import zstandard

    tdtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    data = _float_bytes(200_000, tdtype)
    ours = compress.compress_bytes(data, dtype=dtype)
    assert compress.decompress_bytes(ours) == data
    assert len(ours) < len(zstandard.ZstdCompressor(level=3).compress(data))


def test_caller_buffers_are_never_modified():
    data = bytearray(_float_bytes(50_000, torch.bfloat16))
    before = bytes(data)
    blob = compress.compress_bytes(data, dtype="bf16", threads=2, **SMALL)
    assert data == before
    blob_copy = bytearray(blob)
    compress.decompress_bytes(blob_copy, threads=2)
    assert bytes(blob_copy) == blob


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_size", [4096, container.SMALL_CHUNK])  # coded inline / on the pool
def test_threads_do_not_change_the_output(threads, chunk_size):
    data = _float_bytes(5 * chunk_size // 4 + 1000, torch.float32)  # five chunks and a bit
    blob = compress.compress_bytes(data, dtype="f32", threads=threads, chunk_size=chunk_size)
    assert blob == compress.compress_bytes(data, dtype="f32", threads=1, chunk_size=chunk_size)
    assert compress.decompress_bytes(blob, threads=threads) == data


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("place", [True, False], ids=["copied-as-coded", "joined"])
def test_bytes_in_memory_match_the_file_written_from_them(tmp_path, monkeypatch, threads, place):
    """compress_bytes copies frames into a buffer sized in advance, on the coding threads (from
    32 MiB; here forced, on many small chunks of tensors of random bytes, which hardly shrink),
    or joins them at the end. Either way it gives exactly the bytes that compress_file streams
    to disk."""
    monkeypatch.setattr(compress, "_PLACE_FROM", 0 if place else 1 << 40)
    from safetensors.numpy import save

    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 300, 400) * 4
    tensors = {f"t{i:03}": rng.integers(0, 256, int(n), dtype=np.uint8).view([np.uint8, np.float32][i % 2])
               for i, n in enumerate(sizes)}  # alternating dtypes
    tensors["tail"] = rng.integers(0, 256, 50_000, dtype=np.uint8)
    data = save(tensors)
    blob = compress.compress_bytes(data, threads=threads, **SMALL)
    assert isinstance(blob, memoryview)
    assert len(container.Archive(io.BytesIO(blob), "x").index["chunks"]) > 50
    (tmp_path / "in").write_bytes(data)
    compress.compress_file(tmp_path / "in", tmp_path / "out.thz", threads=threads, **SMALL)
    assert blob == (tmp_path / "out.thz").read_bytes()
    assert compress.decompress_bytes(blob, threads=threads) == data


@pytest.mark.parametrize("codec,level", [("zstd", 1), ("zstd", 19), ("lz4", 0), ("lz4", 9), ("zlib", 6)])
def test_every_codec_round_trips(codec, level):
    data = b"".join(f"line {i} of some text\n".encode() for i in range(3000))
    blob = compress.compress_bytes(data, codec=codec, level=level, **SMALL)
    assert compress.decompress_bytes(blob) == data
    assert len(blob) < len(data) / 3


def test_incompressible_chunks_are_stored_raw():
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    blob = compress.compress_bytes(data, **SMALL)
    chunks = -(-len(data) // SMALL["chunk_size"])
    assert len(blob) < len(data) + 80 * chunks + 400  # frame headers and index only: no expansion
    assert compress.decompress_bytes(blob) == data


@pytest.mark.parametrize("kind", ["torch", "npy", "safetensors"])
def test_in_memory_files_get_their_layout(kind):
    import io as _io

    tensors = {"w": torch.randn(300, 200).to(torch.bfloat16), "step": torch.tensor(3.0)}
    buffer = _io.BytesIO()
    if kind == "torch":
        torch.save(tensors, buffer)
    elif kind == "npy":
        np.save(buffer, np.random.default_rng(0).standard_normal(30_000).astype(np.float32))
    else:
        from safetensors.torch import save

        buffer.write(save(tensors))
    data = buffer.getvalue()
    blob = compress.compress_bytes(data)
    archive = container.Archive(_io.BytesIO(blob), "mem")
    assert archive.header["kind"] == kind
    assert any(s.dtype for s in archive.segments)  # a typed segment: planes were used
    assert compress.decompress_bytes(blob) == data


class _RunsACommand:
    """Pickles as a call of os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoints_pickle_is_read_never_run(tmp_path):
    """Tensor names and dtypes come from data.pkl's structure; nothing in it is imported or
    called, a hostile global included."""
    from thrifty.compress import layouts

    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"net": {"w": torch.randn(64, 64).to(torch.bfloat16)}, "x": _RunsACommand(marker)}, buffer)
    buffer.seek(0)
    kind, segments = layouts.detect(buffer, len(buffer.getvalue()))
    assert kind == "torch" and not marker.exists()
    assert [(s.name, s.dtype) for s in segments if s.dtype] == [("net.w", "BF16")]
    assert compress.decompress_bytes(compress.compress_bytes(buffer.getvalue())) == buffer.getvalue()
    assert not marker.exists()


def test_one_tensor_is_read_from_a_torch_checkpoint_by_its_key(tmp_path):
    model = torch.nn.Linear(64, 32)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    whole = torch.arange(100.0).reshape(10, 10)
    src = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "view": whole[2:5]}, src)
    compress.compress_file(src, tmp_path / "ckpt.pt.thz")
    packed = tmp_path / "ckpt.pt.thz"
    assert torch.equal(compress.read_tensor(packed, "model.weight"), model.weight.detach())
    assert torch.equal(compress.read_tensor(packed, "opt.state.1.exp_avg_sq"),
                       opt.state[model.bias]["exp_avg_sq"])
    assert compress.read_tensor(packed, "opt.state.0.step").shape == ()
    with pytest.raises(ThriftyError, match="'view' is a view into a larger storage"):
        compress.read_tensor(packed, "view")  # its bytes are rows 0-9; it is rows 2-4


def test_a_stream_of_unknown_size_decodes_from_memory():
    """A pipe's container has no original size in its header: nothing can be reserved."""
    data = _float_bytes(20_000, torch.bfloat16) + b"tail"
    sink = io.BytesIO()
    container.write(io.BytesIO(data), sink, container.Options(chunk_size=4096))
    assert compress.decompress_bytes(sink.getvalue(), threads=2) == data


def test_empty_input():
    blob = compress.compress_bytes(b"")
    assert compress.decompress_bytes(blob) == b""


def test_read_one_tensor_without_decoding_the_rest(tmp_path):
    tensors = {
        "embed": torch.randn(500, 64).to(torch.bfloat16),
        "ids": torch.arange(10_000, dtype=torch.int64),
        "scale": torch.ones(7, dtype=torch.float16),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "w.thz"
    compress.save_tensors(tensors, path, chunk_size=4096)
    back = compress.load_tensors(path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert torch.equal(compress.read_tensor(path, "empty"), tensors["empty"])  # it holds no bytes
    # Loaded tensors are views of the one decoded buffer, not copies: their addresses differ by
    # their offsets in the file.
    ids, scale = back["ids"].data_ptr(), back["scale"].data_ptr()
    archive = compress.open_archive(path)
    at = {t.name: t.offset for t in archive.tensors}
    archive.f.close()
    assert scale - ids == at["scale"] - at["ids"]
    # Corrupt a chunk of "ids": "embed" still reads, "ids" does not.
    archive = compress.open_archive(path)
    seg = next(t for t in archive.tensors if t.name == "ids")
    first = next(i for i, (_, ro, _) in enumerate(archive.index["chunks"]) if ro >= seg.offset)
    offset = archive.index["chunks"][first][0]
    archive.f.close()
    raw = bytearray(path.read_bytes())
    raw[offset + 60] ^= 0x40
    path.write_bytes(raw)
    assert torch.equal(compress.read_tensor(path, "embed"), tensors["embed"])
    with pytest.raises(ThriftyError, match=f"chunk {first}"):
        compress.read_tensor(path, "ids")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [0, 1000, 4 << 20, (4 << 20) + 3])
def test_decoded_buffers_are_writable_and_outlive_everything_but_their_views(size, threads, tmp_path):
    """Big outputs come from an anonymous mapping, small ones from NumPy; either way the result
    is writable, exactly as long as the original, and lives as long as a view of it does
    (decompress_bytes' memoryview, or load_tensors' tensors)."""
    import gc
    import mmap

    buf = container.new_buffer(size)
    assert len(buf) == size and not buf.readonly
    assert isinstance(buf.obj, mmap.mmap) == (size >= 4 << 20 and hasattr(mmap, "MAP_ANONYMOUS"))
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    out = compress.decompress_bytes(compress.compress_bytes(data, threads=threads), threads=threads)
    gc.collect()
    assert bytes(out) == data and not out.readonly
    if size:
        out[0] ^= 1  # the caller may write to it
    from safetensors.torch import save_file

    weights = torch.randn(size // 4 + 1)
    save_file({"w": weights}, tmp_path / "w.safetensors")
    compress.compress_file(tmp_path / "w.safetensors", tmp_path / "w.thz")
    loaded = compress.load_tensors(tmp_path / "w.thz")["w"]
    gc.collect()
    assert torch.equal(loaded, weights)


def test_populate_takes_the_pages_from_the_kernel_and_changes_no_byte():
    """On Linux, populate makes the pages under a view resident in one call (the process's
    anonymous memory grows by the view's size before anything is written to it), a view that
    starts and ends inside a page included. Anywhere, it leaves every byte as it was."""
    import re

    def anon_kib() -> int:
        if sys.platform != "linux":
            return 0
        return int(re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    buf = container.new_buffer(16 << 20)
    buf[:5] = b"first"
    buf[-4:] = b"last"
    before = anon_kib()
    container.populate(buf[4096 + 17:(12 << 20) + 5])
    grown = anon_kib() - before
    assert bytes(buf[:5]) == b"first" and bytes(buf[-4:]) == b"last"
    assert not np.frombuffer(buf, np.uint8)[4096:12 << 20].any()  # new pages read as zeros
    if sys.platform == "linux":
        assert container._MADVISE is not None, "madvise(MADV_POPULATE_WRITE) failed on this kernel"
        assert 11 << 10 < grown <= 16 << 10, grown  # KiB: about 12 MiB
    else:
        assert container._MADVISE is None  # not attempted: the pages come as they are written


def _safetensors(entries: list[tuple[str, str, list[int], bytes]]) -> bytes:
    """A safetensors file written by hand, its data starting 8-aligned as safetensors does."""
    import json

    header, data = {}, b""
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data


def test_load_tensors_copies_only_what_is_misaligned(tmp_path):
    # One byte of U8 first puts the float32 tensor at an odd address: it is copied, still right.
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    raw = _safetensors([("flag", "U8", [1], b"\x07"), ("w", "F32", [2, 3], w.numpy().tobytes())])
    src = tmp_path / "odd.safetensors"
    src.write_bytes(raw)
    compress.compress_file(src, tmp_path / "odd.thz")
    back = compress.load_tensors(tmp_path / "odd.thz")
    assert back["flag"].tolist() == [7] and torch.equal(back["w"], w)
    assert back["w"].data_ptr() % 4 == 0 and back["w"].data_ptr() != back["flag"].data_ptr() + 1


def test_load_tensors_refuses_a_header_that_does_not_fit_its_data(tmp_path):
    raw = _safetensors([("w", "F32", [4, 4], bytes(64))])
    src = tmp_path / "bad.safetensors"
    src.write_bytes(raw[:-8])  # the data is 8 bytes short of what the header says
    compress.compress_file(src, tmp_path / "bad.thz")
    with pytest.raises(ThriftyError, match="'w' in the decoded file does not match"):
        compress.load_tensors(tmp_path / "bad.thz")


def test_archive_reads_any_byte_range():
    data = bytes(range(256)) * 100
    blob = compress.compress_bytes(data, **SMALL)
    archive = container.Archive(io.BytesIO(blob), "mem")
    for start, length in [(0, 0), (0, 1), (4095, 2), (5000, 12_000), (len(data) - 1, 1)]:
        assert archive.read(start, length) == data[start:start + length]
    with pytest.raises(ThriftyError, match="outside"):
        archive.read(len(data), 1)


# ---------------------------------------------------------------- properties

_inputs = st.one_of(
    st.binary(max_size=20_000),
    st.tuples(st.integers(0, len(_STDLIB_TEXT)), st.integers(0, 20_000)).map(
        lambda a: _STDLIB_TEXT[a[0]:a[0] + a[1]]),  # text (too short to pay as words)
    st.integers(0, 30_000).map(lambda n: _float_bytes(n, torch.bfloat16, seed=n)),
    st.integers(0, 10_000).map(lambda n: _float_bytes(n, torch.float32, seed=n)),
)
_dtypes = st.sampled_from([None, "bf16", "f32", "u16", "i64", "f64"])
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


_WORDS = {}


def _words_blob() -> bytes:
    """The stdlib text in 256 KiB chunks, each coded as words (made once)."""
    if not _WORDS:
        _WORDS["blob"] = bytes(compress.compress_bytes(_STDLIB_TEXT, chunk_size=1 << 18))
        assert _transforms(_WORDS["blob"]) == {planes.WORDS}
    return _WORDS["blob"]


def test_without_the_compiled_coder_text_stays_plain_and_words_still_decode(monkeypatch):
    blob = _words_blob()
    monkeypatch.setattr(planes, "compiled", None)
    assert _transforms(compress.compress_bytes(_STDLIB_TEXT[:300_000])) == {planes.NONE}
    assert bytes(compress.decompress_bytes(blob)) == _STDLIB_TEXT


def test_an_archive_reads_any_byte_range_of_words():
    archive = container.Archive(io.BytesIO(_words_blob()), "mem")
    for start, length in [(0, 1), (262_143, 2), (100_000, 500_000), (len(_STDLIB_TEXT) - 1, 1)]:
        assert archive.read(start, length) == _STDLIB_TEXT[start:start + length]


@_settings
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), cut=st.booleans())
def test_every_corruption_of_words_is_detected(where, bit, cut):
    blob = bytearray(_words_blob())
    at = int(len(blob) * where)
    if cut:
        del blob[at:]
    else:
        blob[at] ^= 1 << bit
    with pytest.raises(ThriftyError):
        compress.decompress_bytes(blob, threads=2)


@_settings
@given(data=_inputs, dtype=_dtypes, threads=st.sampled_from([1, 2]))
def test_every_valid_file_decodes_to_its_original(data, dtype, threads):
    blob = compress.compress_bytes(data, dtype=dtype, threads=threads, **SMALL)
    assert compress.decompress_bytes(blob, threads=threads) == data
    out = io.BytesIO()
    container.read_all(io.BytesIO(bytes(blob)), "x", out, threads)
    assert out.getvalue() == data


@_settings
@given(data=_inputs, cut=st.floats(0, 1, exclude_max=True))
def test_every_truncation_is_detected(data, cut):
    blob = compress.compress_bytes(data, **SMALL)
    with pytest.raises(ThriftyError):
        compress.decompress_bytes(blob[: int(len(blob) * cut)])


@_settings
@given(data=_inputs, where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       dtype=_dtypes)
def test_every_bit_flip_is_detected(data, where, bit, dtype):
    """In memory (frames found through the index, when it checks out) and as a stream (frames
    read in order)."""
    blob = bytearray(compress.compress_bytes(data, dtype=dtype, **SMALL))
    blob[int(len(blob) * where)] ^= 1 << bit
    with pytest.raises(ThriftyError):
        compress.decompress_bytes(blob, threads=2)
    with pytest.raises(ThriftyError):
        container.read_all(io.BytesIO(blob), "x", io.BytesIO())


def _swap_chunks(blob: bytes) -> bytes:
    blob = bytes(blob)
    a, b = list(container.Reader(io.BytesIO(blob), "x").chunks())
    index_at = int.from_bytes(blob[-16:-8], "little")  # the trailer's offset of the index
    swapped = blob[:a.offset] + blob[b.offset:index_at] + blob[a.offset:b.offset] + blob[index_at:]
    assert len(swapped) == len(blob) and swapped != blob
    return swapped


def _noise(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_intact_chunks_out_of_place_are_caught():
    """Each chunk checks out on its own: the index finds frames that moved, and the digest of
    the chunks' digests in order chunks of the same size that traded places."""
    data = bytes(range(256)) * 16 + bytes(4096)  # two chunks of 4096 bytes, coded to unequal sizes
    swapped = _swap_chunks(compress.compress_bytes(data, **SMALL))
    # Found through the index (in memory, two threads), chunk 0's frame is too long for its
    # place; read in order, chunk 0's frame is read whole, and chunk 1's starts elsewhere.
    with pytest.raises(ThriftyError, match="chunk 0 at byte .*not where the index puts it"):
        compress.decompress_bytes(swapped, threads=2)
    with pytest.raises(ThriftyError, match="chunk 1 at byte .*not where the index puts it"):
        compress.decompress_bytes(swapped)
    noise = _noise(8192, 0)  # stored raw: frames of the same size
    swapped = _swap_chunks(compress.compress_bytes(noise, **SMALL))
    for threads in (1, 2):
        with pytest.raises(ThriftyError, match="checksum of the whole file"):
            compress.decompress_bytes(swapped, threads=threads)


def test_damage_is_told_the_same_in_memory_and_as_a_stream():
    """In memory, on more than one thread, the frames are found through the index; where the
    end of the file does not check out, the reader goes back to reading from the start, so each
    of these says the same either way."""
    blob = bytes(compress.compress_bytes(_float_bytes(6000, torch.bfloat16), dtype="bf16", **SMALL))
    index_at = int.from_bytes(blob[-16:-8], "little")
    second = list(container.Reader(io.BytesIO(blob), "x").chunks())[1].offset

    def flipped(at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 0x20]) + blob[at + 1:]

    cases = {"corrupt index": flipped(index_at + 10), "corrupt trailer": flipped(len(blob) - 12),
             "truncated in the index": blob[:index_at + 6],
             "chunk 1 at byte .*corrupt frame header": flipped(second + 6),
             "chunk 1 at byte .*checksum mismatch in its coded data": flipped(second + 40)}
    for message, damaged in cases.items():
        told = []
        for read in (lambda b: compress.decompress_bytes(b, threads=2),
                     lambda b: container.read_all(io.BytesIO(b), "<bytes>", io.BytesIO(), 2)):
            with pytest.raises(ThriftyError, match=message) as caught:
                read(damaged)
            told.append(str(caught.value))
        assert told[0] == told[1]


def test_an_index_that_checks_out_but_lists_nonsense_is_an_error_not_a_crash():
    """An index is trusted only as far as its digest goes: one rewritten with its digest made
    to match (a crafted file) is read from the start and refused in one line."""
    import xxhash

    blob = bytes(compress.compress_bytes(_noise(3 * 4096, 3), **SMALL))
    index_at = int.from_bytes(blob[-16:-8], "little")
    reader = container.Reader.at(container.ViewReader(memoryview(blob)), "x", index_at + 1)
    index = reader.index_body()
    for entries in ([index["chunks"][0], 7, index["chunks"][2]], index["chunks"][:2] + [[1, 2]]):
        ijson = container._pack_json({**index, "chunks": entries})
        frame = (b"I" + container._U32.pack(len(ijson)) + ijson
                 + container._U64.pack(xxhash.xxh3_64_intdigest(ijson)))
        crafted = blob[:index_at] + frame + container._TRAILER.pack(index_at, container.END_MAGIC)
        for threads in (1, 2):
            with pytest.raises(ThriftyError, match="the index does not match the chunks|"
                                                   "not where the index puts it"):
                compress.decompress_bytes(crafted, threads=threads)


def test_shared_work_comes_back_in_order_from_both_threads():
    import threading
    import time

    who = set()

    def job(k):
        who.add(threading.get_ident())
        time.sleep(0.001)  # (lets the GIL go, as decoding does)
        return k * k

    assert container._shared(job, list(range(60)), container.executor(2), 1) == \
        [k * k for k in range(60)]
    assert len(who) == 2  # the calling thread worked too


def test_shared_work_raises_the_first_failure_in_order_after_every_thread_stopped():
    import time

    started = []

    def job(k):
        started.append(k)
        time.sleep(0.05 if k == 10 else 0.001)  # 30 fails first in time, 10 first in order
        if k in (10, 30):
            raise ThriftyError(f"job {k}")
        return k

    with pytest.raises(ThriftyError, match="job 10"):
        container._shared(job, list(range(60)), container.executor(2), 1)
    seen = len(started)
    time.sleep(0.05)
    assert len(started) == seen < 60  # nothing went on after it returned, nor to the end


def test_a_chunk_from_another_file_is_caught():
    """A frame that checks out by itself, at the right place, but from another container."""
    a = bytes(compress.compress_bytes(_noise(8192, 1), **SMALL))
    b = bytes(compress.compress_bytes(_noise(8192, 2), **SMALL))
    start = list(container.Reader(io.BytesIO(a), "x").chunks())[1].offset  # the last chunk's
    end = int.from_bytes(a[-16:-8], "little")  # the index's, from the trailer
    assert len(a) == len(b) and b[-16:-8] == a[-16:-8]  # (stored raw: the same layout)
    mixed = a[:start] + b[start:end] + a[end:]
    with pytest.raises(ThriftyError, match="checksum of the whole file"):
        compress.decompress_bytes(mixed)


def test_the_index_digests_the_original_and_its_chunks():
    import xxhash

    data = _noise(10_000, 3)
    blob = compress.compress_bytes(data, **SMALL)
    reader = container.Reader(io.BytesIO(bytes(blob)), "x")
    chunks = list(reader.chunks())
    assert reader.header["chunks_xxh3"] is True
    # the whole original's, as `xxhsum -H3` gives it, for checking the output with other tools
    assert reader.index["xxh3_64"] == xxhash.xxh3_64(data).hexdigest()
    # and the one readers check: every chunk's raw-byte digest, in order, little-endian
    listed = b"".join(xxhash.xxh3_64(data[c.raw_offset:c.raw_offset + c.raw_len]).intdigest()
                      .to_bytes(8, "little") for c in chunks)
    assert len(chunks) == 3 and reader.index["chunks_xxh3"] == xxhash.xxh3_64(listed).hexdigest()


def test_files_without_the_chunks_digest_are_checked_whole(monkeypatch):
    """Files written before the index had chunks_xxh3 are checked against the whole-file
    digest: still read, and still caught when equal chunks trade places."""
    pack = container._pack_json

    def as_before(obj):
        return pack({k: v for k, v in obj.items() if k != "chunks_xxh3"})

    monkeypatch.setattr(container, "_pack_json", as_before)
    noise = _noise(8192, 0)
    blob = bytes(compress.compress_bytes(noise, **SMALL))
    monkeypatch.undo()
    assert "chunks_xxh3" not in container.Reader(io.BytesIO(blob), "x").header
    assert bytes(compress.decompress_bytes(blob, threads=2)) == noise
    with pytest.raises(ThriftyError, match="checksum of the whole file"):
        compress.decompress_bytes(_swap_chunks(blob))
    old = (DATA / "v3-text.txt.thz").read_bytes()  # written by 6340552, before chunks_xxh3
    assert "chunks_xxh3" not in container.Reader(io.BytesIO(old), "x").header
    assert bytes(compress.decompress_bytes(old)) == (DATA / "v3-text.txt").read_bytes()


def test_a_damaged_chunk_is_told_from_one_that_never_made_its_bytes():
    """Decoding is checked on the decoded bytes; when they are wrong, the payload's digest
    says whether the file was damaged or the coded data was wrong from the start."""
    data = _STDLIB_TEXT[:4096]
    blob = bytearray(compress.compress_bytes(data, **SMALL))
    chunk = next(container.Reader(io.BytesIO(bytes(blob)), "x").chunks())
    assert chunk.planes[0][0] != 0  # coded, not stored
    payload_at = chunk.offset + 1 + container._CHUNK.size + 5 * len(chunk.planes) + 4
    blob[payload_at + len(chunk.payload) // 2] ^= 0x10
    with pytest.raises(ThriftyError, match="chunk 0 at byte .*checksum mismatch in its coded data"):
        compress.decompress_bytes(blob)
    wrong = container.Chunk(0, 0, 0, chunk.raw_len, chunk.transform, chunk.width, chunk.raw_xxh ^ 1,
                            chunk.payload_xxh, chunk.planes, chunk.payload)
    with pytest.raises(ThriftyError, match="checksum mismatch after decoding"):
        container.decode_chunk(wrong)


def test_a_flipped_version_bit_is_caught():
    """3 with bit 0 flipped is 2, a version this reader also reads, laid out the same: the
    header, under its checksum, says the version again."""
    blob = bytearray(compress.compress_bytes(b"", **SMALL))
    assert blob[8:10] == b"\x03\x00"
    blob[8] ^= 1
    with pytest.raises(ThriftyError, match="corrupt header .version 2 here, 3 in the header"):
        compress.decompress_bytes(blob)


def test_wrong_magic_and_version_are_named():
    blob = bytearray(compress.compress_bytes(b"hello"))
    with pytest.raises(ThriftyError, match="not a thrifty compressed file"):
        compress.decompress_bytes(b"PK\x03\x04" + bytes(blob[4:]))
    blob[8] = 9  # version, little-endian u16 after the 8-byte magic
    with pytest.raises(ThriftyError, match="version 9"):
        compress.decompress_bytes(blob)


DATA = Path(__file__).parent / "data"


def test_version_1_files_still_read(tmp_path):
    """A file written by the version-1 writer (commit 569b844): plain header and index JSON."""
    original = (DATA / "v1-safetensors.safetensors").read_bytes()
    old = DATA / "v1-safetensors.safetensors.thz"
    assert old.read_bytes()[8:10] == b"\x01\x00"
    assert bytes(compress.decompress_bytes(old.read_bytes())) == original
    from safetensors.torch import load

    expected = load(original)
    assert torch.equal(compress.read_tensor(old, "w"), expected["w"])
    archive = compress.open_archive(old)
    try:
        assert archive.read(100, 30000) == original[100:30100]  # spans chunks; the index is v1 too
    finally:
        archive.f.close()
    # what is written now is version 2, its header compressed, and reads back the same
    new = compress.compress_bytes(original, chunk_size=16384)
    assert new[8:10] == b"\x03\x00"
    assert bytes(compress.decompress_bytes(new)) == original


def test_version_2_files_still_read():
    """A token shard written by the version-2 writer (commit 6e95b95), before varints."""
    old = (DATA / "v2-tokens.npy.thz").read_bytes()
    assert old[8:10] == b"\x02\x00"
    assert bytes(compress.decompress_bytes(old)) == (DATA / "v2-tokens.npy").read_bytes()


def test_a_safetensors_header_longer_than_the_first_read_is_still_understood(tmp_path):
    # 3,000 tensors: a header of well over 64 KiB, the part read before looking at it
    tensors = {f"layer.{i}.weight": torch.full((4,), float(i)) for i in range(3000)}
    compress.save_tensors(tensors, tmp_path / "many.thz")
    archive = compress.open_archive(tmp_path / "many.thz")
    archive.f.close()
    assert archive.header["kind"] == "safetensors" and len(archive.tensors) == 3000
    assert archive.tensors[0].offset > (1 << 16)
    assert torch.equal(compress.read_tensor(tmp_path / "many.thz", "layer.2999.weight"),
                       tensors["layer.2999.weight"])


POOLED = dict(chunk_size=1 << 19)  # chunks big enough to go to the pool, not the calling thread


def test_the_pool_is_kept_and_outlives_a_failed_call():
    data = _STDLIB_TEXT
    blob = bytes(compress.compress_bytes(data, threads=2, **POOLED))
    assert container.executor(2) is container.executor(2)
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 1
    with pytest.raises(ThriftyError):
        compress.decompress_bytes(damaged, threads=2)
    assert bytes(compress.decompress_bytes(blob, threads=2)) == data


def _round_trip_in_child(queue, data):
    blob = compress.compress_bytes(data, threads=2, **POOLED)
    queue.put(bytes(compress.decompress_bytes(blob, threads=2)) == data)


def test_a_forked_child_makes_a_pool_of_its_own():
    """The parent's pool threads are not in a forked child (a DataLoader worker, say)."""
    import multiprocessing

    data = _STDLIB_TEXT
    compress.compress_bytes(data, threads=2, **POOLED)  # the parent's pool exists, idle
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_round_trip_in_child, args=(queue, data))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0 and queue.get(timeout=5) is True
