"""thrifty bench's measuring: fair turns, fresh inputs, every result checked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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


def test_fresh_malloc_gives_every_round_fresh_pages():
    """(glibc, as on every machine thrifty is tested on.) 24 MiB allocated, written and freed
    five times: with glibc's default the later rounds
    reuse the pages of the earlier ones (no page faults), so a codec that allocates with malloc
    would be timed without the faults that a command decoding one file pays; with fresh_malloc
    every round faults its pages in anew. In child processes: the setting lasts for a process."""
    code = textwrap.dedent("""
        import resource, sys
        from thrifty.compress import bench
        if sys.argv[1] == "fresh":
            assert bench.fresh_malloc()
        counts = []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            b = b"x" * (24 << 20)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del b
        print(*counts)
    """)
    pages = (24 << 20) // 4096
    runs = {how: [int(n) for n in subprocess.run([sys.executable, "-c", code, how], check=True,
                                                 capture_output=True, text=True).stdout.split()]
            for how in ("default", "fresh")}
    assert min(runs["default"][2:]) < pages // 10  # reused
    assert min(runs["fresh"]) >= pages * 0.9  # faulted in every time
