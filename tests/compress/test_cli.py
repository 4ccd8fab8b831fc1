"""thrifty compress / decompress / inspect / bench as a user meets them, on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SMALL_CORPUS, assert_one_line_error, thrifty


@pytest.fixture
def weights(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a.weight": (torch.randn(256, 128, generator=g) * 0.05).to(torch.bfloat16),
               "a.bias": torch.zeros(128), "b.weight": torch.randn(64, 64, generator=g)}, path)
    return path


def test_compress_then_decompress_restores_the_file_and_keeps_the_source(weights, tmp_path):
    original = weights.read_bytes()
    proc = thrifty("compress", str(weights), "--verify")
    packed = tmp_path / "model.safetensors.thz"
    assert packed.exists() and weights.read_bytes() == original  # source kept, untouched
    assert "verified" in proc.stderr
    weights.unlink()
    thrifty("decompress", str(packed))
    assert weights.read_bytes() == original and packed.exists()


def test_existing_output_is_not_overwritten_without_force(weights, tmp_path):
    thrifty("compress", str(weights))
    packed = tmp_path / "model.safetensors.thz"
    before = packed.read_bytes()
    assert_one_line_error(thrifty("compress", str(weights), check=False), "already exists")
    assert packed.read_bytes() == before
    thrifty("compress", str(weights), "-f", "-l", "19")
    assert_one_line_error(thrifty("decompress", str(packed), check=False), "already exists")
    thrifty("decompress", str(packed), "-f", "--rm")
    assert not packed.exists() and weights.exists()


def test_directories_need_r_and_every_file_round_trips(tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    files = {src / "a.py": (SMALL_CORPUS / "decoder.py").read_bytes(),
             src / "sub" / "b.bin": os.urandom(5000), src / "sub" / "empty": b""}
    for p, data in files.items():
        p.write_bytes(data)
    assert_one_line_error(thrifty("compress", str(src), check=False), "is a directory", "-r")
    thrifty("compress", "-r", "--rm", str(src))
    assert sorted(p.name for p in src.rglob("*") if p.is_file()) == ["a.py.thz", "b.bin.thz", "empty.thz"]
    thrifty("decompress", "-r", "--rm", str(src))
    assert {p: p.read_bytes() for p in files} == files


def test_r_skips_symbolic_links_and_special_files_unless_forced(tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    (src / "link.txt").symlink_to("a.txt")
    (src / "outside").symlink_to(tmp_path)  # a link to a directory is never descended into
    os.mkfifo(src / "fifo")  # reading it would wait forever
    proc = thrifty("compress", "-r", str(src))
    assert "link.txt: symbolic link skipped (-f follows it)" in proc.stderr
    assert sorted(p.name for p in src.iterdir()) == ["a.txt", "a.txt.thz", "fifo", "link.txt", "outside"]
    thrifty("compress", "-r", "-f", str(src))
    assert (src / "link.txt.thz").exists() and (src / "link.txt").is_symlink()


def test_weights_through_a_pipe_or_to_stdout_keep_their_transform(weights, tmp_path):
    """A safetensors or npy file says its layout in its first bytes, so a pipe gets the same
    dtype-aware coding as the file, byte for byte; so does -c on a file. A stream shorter or
    longer than its header says is refused in one line, and -o leaves nothing behind."""
    import io as _io

    thrifty("compress", "-k", str(weights))
    as_file = (tmp_path / "model.safetensors.thz").read_bytes()
    data = weights.read_bytes()
    piped = subprocess.run([sys.executable, "-m", "thrifty", "compress"], input=data,
                           capture_output=True, check=True).stdout
    assert piped == as_file == subprocess.run([sys.executable, "-m", "thrifty", "compress", "-c",
                                               str(weights)], capture_output=True, check=True).stdout
    from thrifty.compress import container

    header = container.Archive(_io.BytesIO(piped), "piped").header
    assert header["kind"] == "safetensors" and len(header["tensors"]) == 3
    # stdin redirected from a file is that file: measured, and any layout read, a torch
    # checkpoint's too (its directory is at its end, out of a pipe's reach)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"w": torch.randn(64, 64)}, ckpt)
    thrifty("compress", "-k", str(ckpt))
    with open(ckpt, "rb") as redirected:
        from_stdin = subprocess.run([sys.executable, "-m", "thrifty", "compress"], stdin=redirected,
                                    capture_output=True, check=True).stdout
    assert from_stdin == (tmp_path / "ckpt.pt.thz").read_bytes()
    assert container.Archive(_io.BytesIO(from_stdin), "x").header["kind"] == "torch"
    piped_pt = subprocess.run([sys.executable, "-m", "thrifty", "compress"], input=ckpt.read_bytes(),
                              capture_output=True, check=True).stdout
    assert container.Archive(_io.BytesIO(piped_pt), "x").header["kind"] == "bytes"
    buf = _io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal(50_000).astype(np.float32))
    (tmp_path / "x.npy").write_bytes(buf.getvalue())
    thrifty("compress", "-k", str(tmp_path / "x.npy"))
    assert subprocess.run([sys.executable, "-m", "thrifty", "compress"], input=buf.getvalue(),
                          capture_output=True, check=True).stdout == (tmp_path / "x.npy.thz").read_bytes()
    for wrong in (data[:-100], data + b"extra"):
        proc = subprocess.run([sys.executable, "-m", "thrifty", "compress", "-o", str(tmp_path / "w.thz")],
                              input=wrong, capture_output=True, text=False)
        proc.stderr = proc.stderr.decode()
        assert_one_line_error(proc, f"stdin: does not match its safetensors header ({len(data):,} bytes)")
        assert not (tmp_path / "w.thz").exists()


def test_pipes(tmp_path):
    data = (SMALL_CORPUS / "encoder.py").read_bytes() * 20
    packed = subprocess.run([sys.executable, "-m", "thrifty", "compress", "-", "-c"],
                            input=data, capture_output=True, check=True).stdout
    back = subprocess.run([sys.executable, "-m", "thrifty", "decompress", "-", "-c"],
                          input=packed, capture_output=True, check=True).stdout
    assert back == data and len(packed) < len(data) / 4
    # with no path, or `-` and no -c, each command is a filter, as zstd and gzip are
    packed = subprocess.run([sys.executable, "-m", "thrifty", "compress"],
                            input=data, capture_output=True, check=True).stdout
    back = subprocess.run([sys.executable, "-m", "thrifty", "decompress", "-"],
                          input=packed, capture_output=True, check=True).stdout
    assert back == data
    other = tmp_path / "other.txt"
    other.write_bytes(b"x")
    mixed = subprocess.run([sys.executable, "-m", "thrifty", "compress", "-", str(other)],
                           input=data.decode(), capture_output=True, text=True)
    assert_one_line_error(mixed, "stdin among other inputs needs -c")
    # containers back to back would not decompress (each ends with its index): refused up front
    both = subprocess.run([sys.executable, "-m", "thrifty", "compress", "-c", str(other), str(other)],
                          capture_output=True, text=True)
    assert_one_line_error(both, "-c takes one input")
    assert both.stdout == ""


def test_coded_data_is_not_read_from_or_written_to_a_terminal(tmp_path):
    import pty

    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    leader, follower = pty.openpty()
    try:
        def run(*args, stdin=follower, stdout=subprocess.PIPE):
            return subprocess.run([sys.executable, "-m", "thrifty", *args], stdin=stdin,
                                  stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)

        for command in ("compress", "decompress"):  # a user who forgot the input: no hang
            assert_one_line_error(run(command), "stdin is a terminal")
        with open(src, "rb") as f:
            proc = run("compress", "-c", str(src), stdin=f, stdout=follower)
        assert_one_line_error(proc, "refusing to write compressed data to a terminal")
    finally:
        os.close(leader)
        os.close(follower)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_corrupt_input_is_named_in_one_line_and_leaves_nothing(weights, tmp_path):
    thrifty("compress", str(weights), "--chunk-size=16384")
    packed = tmp_path / "model.safetensors.thz"
    blob = bytearray(packed.read_bytes())
    weights.unlink()
    blob[len(blob) // 2] ^= 0x08
    packed.write_bytes(blob)
    assert_one_line_error(thrifty("decompress", str(packed), check=False), str(packed), "chunk")
    assert not weights.exists() and not list(tmp_path.glob(".*tmp*"))
    packed.write_bytes(blob[: len(blob) // 3])
    assert_one_line_error(thrifty("decompress", str(packed), check=False), "truncated")
    not_ours = tmp_path / "x.thz"
    not_ours.write_bytes(b"hello world")
    assert_one_line_error(thrifty("decompress", str(not_ours), check=False), "not a thrifty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors.thz", "x.thz"]


def test_bad_arguments(tmp_path, weights):
    assert_one_line_error(thrifty("compress", str(tmp_path / "nope"), check=False), "nope")
    assert_one_line_error(thrifty("compress", str(tmp_path / "nope.thz"), check=False),
                          "nope.thz: No such file or directory")  # not "already has the suffix"
    (tmp_path / "y.thz").write_bytes(b"y")
    assert_one_line_error(thrifty("compress", str(tmp_path / "y.thz"), check=False),
                          "y.thz: already has the .thz suffix")
    assert_one_line_error(thrifty("compress", str(weights), "-l", "99", check=False), "level")
    assert_one_line_error(thrifty("compress", str(weights), "--dtype", "q7", check=False), "dtype")
    assert_one_line_error(thrifty("decompress", str(weights), check=False), "suffix")
    for command in ("inspect", "bench"):  # files these commands cannot open: one line each
        assert_one_line_error(thrifty(command, str(tmp_path / "nope.thz"), check=False),
                              "nope.thz: No such file or directory")
        assert_one_line_error(thrifty(command, str(tmp_path), check=False), "Is a directory")
    bad_threads = thrifty("compress", str(weights), "-T", "-1", check=False)
    assert bad_threads.returncode == 2 and "'-1' is not a thread count" in bad_threads.stderr
    bad_size = thrifty("compress", str(weights), "--chunk-size", "1.5M", check=False)
    assert bad_size.returncode == 2 and "'1.5M' is not a size" in bad_size.stderr  # argparse's way
    # an output the user named is what the error names, never the temporary file beside it
    missing = tmp_path / "no" / "out.thz"
    assert_one_line_error(thrifty("compress", str(weights), "-o", str(missing), check=False),
                          f"{missing}: No such file or directory")
    a_dir = tmp_path / "d"
    a_dir.mkdir()
    assert_one_line_error(thrifty("compress", str(weights), "-f", "-o", str(a_dir), check=False),
                          f"{a_dir}: is a directory")
    assert a_dir.is_dir() and not list(a_dir.iterdir())
    before = weights.read_bytes()
    assert_one_line_error(thrifty("compress", str(weights), "-f", "-o", str(weights), check=False),
                          "input and output are the same file")
    assert weights.read_bytes() == before
    # the same through stdin: `thrifty compress -f -o x < x` would replace x with its own coding
    with open(weights, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "thrifty", "compress", "-", "-f", "-o", str(weights)],
                              stdin=stdin, capture_output=True, text=True)
    assert_one_line_error(proc, "stdin: input and output are the same file")
    assert weights.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_torch_checkpoints_get_the_float_transform(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.Linear(256, 64)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 128, dtype=torch.bfloat16)).float().sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": 3}, path)
    assert zipfile.is_zipfile(path)
    thrifty("compress", str(path))
    info = json.loads(thrifty("inspect", str(tmp_path / "ckpt.pt.thz"), "--json").stdout)
    assert info["kind"] == "torch"
    assert {s["dtype"] for s in info["segments"]} == {"BF16", ""}  # big bf16 storages get planes
    from thrifty import compress

    archive = compress.open_archive(tmp_path / "ckpt.pt.thz")
    archive.f.close()
    # every storage's dtype is known, the fp32 step counters of AdamW included
    assert {t.dtype for t in archive.tensors} == {"BF16", "F32"}
    assert len(archive.tensors) == 4 + 4 * 3  # weights; AdamW's step, exp_avg, exp_avg_sq each
    # named where the pickle puts them (read from its opcodes' structure, nothing run)
    names = [t.name for t in archive.tensors]
    assert names[:4] == ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"]
    assert {"opt.state.0.exp_avg", "opt.state.3.exp_avg_sq", "opt.state.2.step"} < set(names)
    assert info["segments"][0]["name"] == "model.0.weight"
    path.rename(tmp_path / "orig.pt")
    thrifty("decompress", str(tmp_path / "ckpt.pt.thz"))
    assert path.read_bytes() == (tmp_path / "orig.pt").read_bytes()
    assert torch.load(path)["step"] == 3


def test_token_shards_as_npy_and_raw(tmp_path):
    tokens = np.random.default_rng(0).zipf(1.3, 200_000).clip(0, 50_000).astype(np.uint16)
    np.save(tmp_path / "shard.npy", tokens)
    tokens.tofile(tmp_path / "shard.bin")
    thrifty("compress", str(tmp_path / "shard.npy"), str(tmp_path / "shard.bin"))
    thrifty("compress", str(tmp_path / "shard.bin"), "--dtype=u16", "-o", str(tmp_path / "typed.thz"))
    info = json.loads(thrifty("inspect", str(tmp_path / "shard.npy.thz"), "--json").stdout)
    assert info["kind"] == "npy" and any(s["dtype"] == "U16" for s in info["segments"])
    assert next(s for s in info["segments"] if s["dtype"] == "U16")["coding"] == "varint"
    thrifty("decompress", str(tmp_path / "typed.thz"), "-o", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == tokens.tobytes()


def test_text_is_coded_as_words_and_inspect_says_so(tmp_path):
    source = Path(sysconfig.get_paths()["stdlib"]) / "typing.py"  # about 100 KB of Python
    (tmp_path / "typing.py").write_bytes(source.read_bytes())
    thrifty("compress", str(tmp_path / "typing.py"))
    info = json.loads(thrifty("inspect", str(tmp_path / "typing.py.thz"), "--json").stdout)
    assert [s["coding"] for s in info["segments"]] == ["words"]
    thrifty("decompress", str(tmp_path / "typing.py.thz"), "-o", str(tmp_path / "back.py"))
    assert (tmp_path / "back.py").read_bytes() == source.read_bytes()


def test_inspect_shows_ratio_per_tensor_and_plane(weights, tmp_path):
    thrifty("compress", str(weights))
    out = thrifty("inspect", str(tmp_path / "model.safetensors.thz")).stdout
    assert "safetensors" in out and "a.weight" in out and "BF16" in out
    row = next(line for line in out.splitlines() if line.startswith("a.weight"))
    assert row.split()[4:] == ["float-planes", row.split()[5], row.split()[6]]  # two planes for bf16


def test_inspect_counts_chunks_in_words(tmp_path):
    (tmp_path / "small.txt").write_bytes(b"one chunk of text\n" * 100)
    thrifty("compress", str(tmp_path / "small.txt"))
    out = thrifty("inspect", str(tmp_path / "small.txt.thz")).stdout
    assert ", 1 chunk of up to 1,048,576 bytes" in out.splitlines()[0]


def test_inspect_takes_several_files_and_names_the_bad_one(weights, tmp_path):
    """As zstd -l: every file shown, one line for each that cannot be read, exit status 1."""
    (tmp_path / "small.txt").write_bytes(b"one chunk of text\n" * 100)
    thrifty("compress", str(tmp_path / "small.txt"), str(weights))
    files = [str(tmp_path / "small.txt.thz"), str(tmp_path / "model.safetensors.thz")]
    out = thrifty("inspect", *files).stdout
    assert [line.split(":")[0] for line in out.splitlines() if ".thz:" in line] == files
    proc = thrifty("inspect", files[0], str(tmp_path / "nope.thz"), files[1], check=False)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("nope.thz: No such file or directory")
    assert proc.stdout == out
    listed = json.loads(thrifty("inspect", "--json", *files).stdout)
    assert [d["file"] for d in listed] == files and listed[1]["kind"] == "safetensors"
    one = json.loads(thrifty("inspect", "--json", files[0]).stdout)
    assert one["file"] == files[0] and one["chunks"] == 1  # one file: the object itself


def test_bench_compares_codecs(weights):
    out = thrifty("bench", str(weights), "--repeat", "1").stdout
    for name in ("thrifty", "zstd -3", "zstd -19", "lz4", "zlib -6", "ZipNN"):
        assert name in out
    assert "thrifty's plane transform: compiled" in out
    assert "1 thread, best of 1" in out.splitlines()[0]
    report = json.loads(thrifty("bench", str(weights), "--repeat", "1", "--json", "-T", "2").stdout)
    assert report["plane_transform"] == "compiled" and report["threads"] == 2
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["thrifty"]["ratio"] > by_name["zstd -3"]["ratio"] > 1


def test_bench_refuses_what_it_cannot_measure(weights, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert_one_line_error(thrifty("bench", str(tmp_path / "empty"), check=False), "empty, nothing to measure")
    for repeat in ("0", "-2", "x"):
        proc = thrifty("bench", str(weights), "--repeat", repeat, check=False)
        assert proc.returncode == 2 and f"'{repeat}' is not a positive whole number" in proc.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # in ZipNN's import
def test_bench_says_when_the_planes_fall_back_to_numpy(weights, monkeypatch, capsys):
    """Without a C compiler at install thrifty still works, slower; bench says so."""
    from thrifty.cli.compress import run_bench
    from thrifty.compress import bench, planes

    monkeypatch.setattr(planes, "compiled", None)
    monkeypatch.setattr(bench, "fresh_malloc", lambda: False)  # it would last for the test session
    assert run_bench([str(weights), "--repeat", "1"]) == 0
    assert "plane transform: NumPy (thrifty.compress._planes was not built" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["--json", "--table"])
def test_a_closed_pipe_ends_quietly(tmp_path, form):
    """thrifty inspect ... | head: more output than a pipe holds, then the reader goes away.
    The table is written file by file, where a closed pipe once read as an error of the file."""
    from safetensors.torch import save_file

    save_file({f"t{i}": torch.zeros(32768, dtype=torch.bfloat16) for i in range(300)},
              tmp_path / "many.safetensors")
    thrifty("compress", str(tmp_path / "many.safetensors"))
    flag = "--json " if form == "--json" else ""
    cmd = f"{sys.executable} -m thrifty inspect {flag}{tmp_path / 'many.safetensors.thz'} | head -1"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    first = "{" if form == "--json" else f"{tmp_path / 'many.safetensors.thz'}: safetensors, "
    assert proc.stdout.startswith(first) and proc.stdout.count("\n") == 1 and proc.stderr == ""


def test_inspect_reports_a_corrupt_frame_header_in_one_line(weights, tmp_path):
    from thrifty import compress

    thrifty("compress", str(weights), "--chunk-size=16384")
    packed = tmp_path / "model.safetensors.thz"
    archive = compress.open_archive(packed)
    offset = archive.index["chunks"][1][0]
    archive.f.close()
    blob = bytearray(packed.read_bytes())
    blob[offset + 6] ^= 0x10  # inside chunk 1's raw length
    packed.write_bytes(blob)
    assert_one_line_error(thrifty("inspect", str(packed), check=False), "chunk 1", "corrupt frame header")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_removes_the_partial_output(tmp_path, sig):
    """kill PID while a stream is being compressed: one line, 128 + the signal, nothing left."""
    import signal
    import time

    out = tmp_path / "out.thz"
    proc = subprocess.Popen([sys.executable, "-m", "thrifty", "compress", "-", "-o", str(out)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(os.urandom(3 << 20))  # some chunks written; the pipe stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not [p for p in tmp_path.iterdir() if ".tmp-" in p.name] and time.monotonic() < deadline:
        time.sleep(0.05)
    number = getattr(signal, sig)
    proc.send_signal(number)
    assert proc.wait(timeout=60) == 128 + number
    proc.stdin.close()
    err = proc.stderr.read().decode().strip().splitlines()
    assert err == [f"thrifty: terminated by {sig}"]
    assert list(tmp_path.iterdir()) == []


def test_chunk_size_takes_binary_units(weights, tmp_path):
    thrifty("compress", str(weights), "--chunk-size", "64K", "-o", str(tmp_path / "k.thz"))
    info = json.loads(thrifty("inspect", "--json", str(tmp_path / "k.thz")).stdout)
    assert info["chunk_size"] == 65536


def test_a_named_pipe_is_compressed_as_a_stream(tmp_path):
    """A FIFO (or <(process substitution)) has no size and cannot be read twice: it is coded
    as a stream into NAME.thz, not refused with 'not seekable'."""
    import threading

    data = (SMALL_CORPUS / "decoder.py").read_bytes() * 50
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    proc = thrifty("compress", str(fifo))
    writer.join()
    assert f"{fifo} -> {fifo}.thz: {len(data):,} -> " in proc.stderr  # summarised like a file
    thrifty("decompress", str(tmp_path / "feed.thz"), "-o", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == data


def test_a_process_substitution_needs_an_output(tmp_path):
    """<(...) is /dev/fd/N, where no N.thz can be written: one line asks for -o or -c, and with
    -o it is coded like any stream."""
    cmd = f"{sys.executable} -m thrifty compress <(printf hello)"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "not a regular file" in proc.stderr and "give -o FILE or -c" in proc.stderr
    out = tmp_path / "hello.thz"
    proc = subprocess.run(["bash", "-c", f"{cmd} -o {out}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    thrifty("decompress", str(out), "-o", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == b"hello"


def test_the_signal_watchdog_ends_a_stuck_command_and_removes_its_temporaries(tmp_path):
    """If the main thread cannot unwind (here: a handler that returns, as if it never ran),
    the watchdog removes the temporary files being written and ends the process itself."""
    import signal

    script = f"""
import signal, sys, time
from pathlib import Path
import thrifty.cli as cli
from thrifty import files
signal.pthread_sigmask(signal.SIG_BLOCK, cli.STOPPING_SIGNALS)
cli._stop_on_signals(0.5)
signal.pthread_sigmask(signal.SIG_UNBLOCK, cli.STOPPING_SIGNALS)
signal.signal(signal.SIGTERM, lambda *a: None)  # the main thread does not unwind
tmp = Path({str(tmp_path)!r}) / ".out.thz.tmp-1"
tmp.write_bytes(b"partial")
files.TEMPORARIES.add(tmp)
print("ready", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert proc.stderr.read().strip() == "thrifty: terminated by SIGTERM"
    assert list(tmp_path.iterdir()) == []


def test_a_full_output_is_named_not_the_input(weights):
    with open("/dev/full", "wb") as full:  # every write fails with ENOSPC
        proc = subprocess.run([sys.executable, "-m", "thrifty", "compress", str(weights), "-c", "-f"],
                              stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "thrifty: error: stdout: No space left on device"
