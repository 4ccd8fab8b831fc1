"""thrifty bench's measuring: fair turns, fresh inputs, every result checked."""

from __future__ import annotations

import zlib

import pytest

from thrifty.compress import bench


def test_codecs_take_turns_on_fresh_copies():
    calls, data = [], bytes(range(256)) * 64

    def codec(name):
        def enc(d):
            calls.append((name, "c"))
            assert d == data and d is not data
            return zlib.compress(d)

        def dec(b):
            calls.append((name, "d"))
            return zlib.decompress(b)
        return bench._Codec(name, enc, dec, rounds=3 if name == "a" else 1, threads=1)

    results = bench._measure([codec("a"), codec("b")], data)
    # round by round, each codec compresses then decompresses; "b" only takes the first round
    assert calls == [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("a", "c"), ("a", "d"),
                     ("a", "c"), ("a", "d")]
    assert [r.name for r in results] == ["a", "b"]
    assert results[0].ratio == pytest.approx(len(data) / len(zlib.compress(data)))
    assert results[0].compress_mb_s > 0 and results[0].decompress_mb_s > 0


def test_a_codec_that_does_not_round_trip_is_caught():
    liar = bench._Codec("liar", lambda d: d[:10], lambda b: b, rounds=1, threads=1)
    with pytest.raises(AssertionError, match="liar did not round-trip"):
        bench._measure([liar], b"x" * 100)
