"""``thrifty compress``, ``decompress``, ``inspect`` and ``bench``: the habits of zstd and gzip.

Sources are kept (as zstd does; ``--rm`` removes them once the output is safely in place), an
existing output is never replaced without ``-f``, directories need ``-r``, ``-`` is stdin or
stdout, and with no path (or ``-``) the command is a filter from stdin to stdout. Each
failing input gets one line on stderr and the exit status is 1; the others are still done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from thrifty import compress as thz
from thrifty.compress import container, planes
from thrifty.cost.meter import metered_run
from thrifty.errors import ThriftyError
from thrifty.report.terminal import plural


def _threads(value: str) -> int:
    """``-T N``: N threads; 0 for one per core, as zstd -T0."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a thread count (0 for one per core)")
    n = int(value)
    return n if n > 0 else len(os.sched_getaffinity(0))


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["-"], metavar="PATH",
                        help="files, directories with -r; - or none: stdin, to stdout unless -o")
    parser.add_argument("-o", "--output", help="output file (one input only); - for stdout")
    parser.add_argument("-c", "--stdout", action="store_true", help="write to stdout")
    parser.add_argument("-T", "--threads", type=_threads, default=_threads("0"),
                        help="worker threads; 0: one per core (default)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite existing outputs; with -r, follow symbolic links")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-k", "--keep", action="store_true", help="keep the source (the default)")
    source.add_argument("--rm", action="store_true", help="remove the source after success")
    parser.add_argument("-r", "--recursive", action="store_true", help="descend into directories")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary lines")


def _inputs(args, want_thz: bool) -> list[Path | None]:
    """Expand the paths: None stands for stdin. In directories, only files that do (or do not)
    end in .thz are taken."""
    out: list[Path | None] = []
    for raw in args.paths:
        if raw == "-":
            out.append(None)
            continue
        p = Path(raw)
        if p.is_dir():
            if not args.recursive:
                raise ThriftyError(f"{p}: is a directory (use -r)")
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if (f.suffix == thz.SUFFIX) != want_thz:
                    continue
                if f.is_symlink() and not args.force:  # as gzip and zstd -r: links are not files
                    print(f"thrifty: warning: {f}: symbolic link skipped (-f follows it)",
                          file=sys.stderr)
                    continue
                out.append(f)
        else:
            out.append(p)
    if args.output and len(out) != 1:
        raise ThriftyError("-o takes exactly one input")
    return out


@contextlib.contextmanager
def _progress(total: int | None, name: str, quiet: bool):
    """A byte counter for a progress bar on a terminal, for inputs worth waiting for."""
    if quiet or not sys.stderr.isatty() or (total is not None and total < (64 << 20)):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, leave=False) as bar:
        yield bar.update


def _stream(src: Path | None, args, to_stdout: bool, code, dst: Path | None = None) -> None:
    """Run ``code(f_in, f_out, name)`` from a file or stdin to stdout, or to ``-o`` (or ``dst``)
    atomically."""
    from thrifty.files import atomic_writer, naming

    name = "stdin" if src is None else str(src)
    f = sys.stdin.buffer if src is None else open(src, "rb")  # noqa: SIM115
    try:
        if to_stdout:
            with naming("stdout", writing=True):  # a full disk is the output's, not the input's
                code(f, sys.stdout.buffer, name)
                sys.stdout.buffer.flush()
            return
        dst = Path(args.output) if args.output else dst
        if dst.exists() and os.path.samestat(os.fstat(f.fileno()), os.stat(dst)):
            raise ThriftyError(f"{name}: input and output are the same file")  # < x -o x -f
        if dst.exists() and not args.force:
            raise ThriftyError(f"{dst}: already exists (use -f to overwrite)")
        with atomic_writer(dst, overwrite=args.force) as out:
            code(f, out, name)
    finally:
        if src is not None:
            f.close()


def _each(inputs, work) -> int:
    failed = 0
    for src in inputs:
        try:
            work(src)
        except ThriftyError as e:
            print(f"thrifty: error: {e}", file=sys.stderr)
            failed += 1
        except BrokenPipeError:  # our reader went away, not this file's fault: stop quietly
            raise
        except OSError as e:
            where = e.filename or (src if src is not None else "stdin")
            print(f"thrifty: error: {where}: {e.strerror or e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _to_stdout(args, inputs: list[Path | None], compressing: bool) -> bool:
    """Whether the output goes to stdout: -c, -o -, or stdin without -o (a filter, as zstd and
    gzip are). Like zstd, never read stdin from a terminal, nor write compressed data to one
    (``-f`` allows that, as it does for zstd and gzip)."""
    if None in inputs and sys.stdin.isatty():
        raise ThriftyError("stdin is a terminal: give a file, or pipe the data in")
    to = args.stdout or args.output == "-" or (inputs == [None] and not args.output)
    if None in inputs and len(inputs) > 1 and not to:
        raise ThriftyError("stdin among other inputs needs -c")  # nowhere else to write it
    if to and compressing and sys.stdout.isatty() and not args.force:
        raise ThriftyError("refusing to write compressed data to a terminal (use -f to force)")
    return to


def _system_path(p: Path) -> bool:
    """Under /dev or /proc: a process substitution, a device, nowhere to write a file beside."""
    return p.absolute().parts[1:2] in (("dev",), ("proc",))


def byte_size(text: str) -> int:
    """``4096``, ``64K``, ``64KiB``, ``4M``, ``1MiB``, ``1G``: binary units, as zstd reads them."""
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
             "gib": 1 << 30}
    number = text.rstrip("kKmMgGiIbB")
    unit = text[len(number):].lower()
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (say 262144, 256K or 4M)")
    return int(number) * units[unit]


def _summary(src, dst, stats: container.Stats, verified: bool) -> None:
    ratio = stats.original / stats.stored if stats.stored else 0
    print(f"{src} -> {dst}: {stats.original:,} -> {stats.stored:,} bytes ({ratio:.3f}x)"
          + (", verified" if verified else ""), file=sys.stderr)


def run_compress(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thrifty compress",
        description="Compress files losslessly into the thrifty container (FILE -> FILE.thz). "
                    "Float tensors (safetensors, .npy, torch.save checkpoints) are split into "
                    "byte planes first, integer tensors into byte planes or varints; text may be "
                    "coded as words; everything else is coded as bytes.",
    )
    _common(parser)
    parser.add_argument("-l", "--level", type=int, help="codec level (zstd: -7..22, default 3)")
    parser.add_argument("--codec", default="zstd", choices=["zstd", "lz4", "zlib"],
                        help="codec for bytes that are not tensors (default zstd)")
    parser.add_argument("--dtype", help="treat the input as raw values of this type (bf16, f32, u16, ...)")
    parser.add_argument("--chunk-size", type=byte_size, default=container.DEFAULT_CHUNK,
                        help="bytes per independently coded chunk: 262144, 256K, 4M "
                             "(K and M are KiB and MiB, as zstd reads them; default 1M)")
    parser.add_argument("--verify", action="store_true",
                        help="decode the output and check it before keeping it")
    args = parser.parse_args(argv)
    opts = dict(codec=args.codec, level=args.level, threads=args.threads, chunk_size=args.chunk_size)
    container.Options(**opts)  # bad options: one error before any file is touched
    inputs = _inputs(args, want_thz=False)
    to_stdout = _to_stdout(args, inputs, compressing=True)
    if to_stdout and len(inputs) > 1:  # gzip -c would concatenate; a .thz ends with its index
        raise ThriftyError("-c takes one input: containers written back to back do not decompress "
                           "(tar the files first, or compress them one by one)")

    def work(src: Path | None) -> None:
        # A FIFO, a device or a process substitution <(...) cannot be measured or re-read: it
        # is coded as a stream, like stdin, into -o or -c or else NAME.thz beside it.
        piped = src is not None and src.exists() and not src.is_dir() and not src.is_file()
        if src is None or to_stdout or piped:
            options = container.Options(**opts)
            done: list[container.Stats] = []

            def code(f, out, name):
                reader, size, layout = thz.source_layout(f, args.dtype)
                try:
                    stats = container.write(reader, out, options, size=size, **layout)
                except ThriftyError as e:
                    if reader is f or size is None:
                        raise
                    # the size came from the stream's own header
                    raise ThriftyError(f"{name}: does not match its {layout['kind']} header "
                                       f"({size:,} bytes): {e}") from None
                metered.add(bytes_read=stats.original, bytes_written_raw=stats.original,
                            bytes_written_stored=stats.stored)
                done.append(stats)

            dst = src.with_name(src.name + thz.SUFFIX) if piped else None
            if dst is not None and not (args.output or to_stdout) and _system_path(src):
                # <(...) is /dev/fd/N: no NAME.thz can be made beside it
                raise ThriftyError(f"{src}: not a regular file, and no {src.name}{thz.SUFFIX} can "
                                   "be written beside it; give -o FILE or -c")
            _stream(src, args, to_stdout, code, dst)
            if done and not args.quiet and not to_stdout:
                _summary(src or "stdin", args.output or dst, done[0], False)
            return
        if src.suffix == thz.SUFFIX and not args.force and src.exists():  # (else: no such file)
            raise ThriftyError(f"{src}: already has the {thz.SUFFIX} suffix (use -f to compress anyway)")
        dst = Path(args.output) if args.output else src.with_name(src.name + thz.SUFFIX)
        with _progress(src.stat().st_size, src.name, args.quiet) as tick:
            stats = thz.compress_file(src, dst, dtype=args.dtype, overwrite=args.force,
                                      verify=args.verify, progress=tick, **opts)
        metered.add(bytes_read=stats.original, bytes_written_raw=stats.original,
                    bytes_written_stored=stats.stored)
        if args.rm:
            src.unlink()
        if not args.quiet:
            _summary(src, dst, stats, args.verify)

    with metered_run("compress", _run_name(inputs)) as metered:
        metered.info.update(codec=args.codec, level=args.level, threads=args.threads)
        status = _each(inputs, work)
        metered.status = "ok" if status == 0 else "failed"
    return status


def run_decompress(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thrifty decompress",
        description="Decode thrifty containers (FILE.thz -> FILE). Every chunk and the whole file "
                    "are checked; nothing is left behind when a check fails.",
    )
    _common(parser)
    args = parser.parse_args(argv)
    inputs = _inputs(args, want_thz=True)
    to_stdout = _to_stdout(args, inputs, compressing=False)

    def work(src: Path | None) -> None:
        if src is None or to_stdout:
            reader, writer = _Counting(), _Counting()

            def code(f, out, name):
                reader.f_in, writer.f_out = f, out
                container.read_all(reader, name, writer, args.threads)

            _stream(src, args, to_stdout, code)
            metered.add(bytes_read=reader.read_bytes, bytes_written_raw=writer.written,
                        bytes_written_stored=writer.written)
            return
        if args.output:
            dst = Path(args.output)
        elif src.suffix == thz.SUFFIX:
            dst = src.with_suffix("")
        else:
            raise ThriftyError(f"{src}: unknown suffix (expected {thz.SUFFIX}; use -o to name the output)")
        with _progress(None, src.name, args.quiet) as tick:
            thz.decompress_file(src, dst, threads=args.threads, overwrite=args.force, progress=tick)
        size = dst.stat().st_size
        metered.add(bytes_read=src.stat().st_size, bytes_written_raw=size, bytes_written_stored=size)
        if args.rm:
            src.unlink()
        if not args.quiet:
            print(f"{src} -> {dst}", file=sys.stderr)

    with metered_run("decompress", _run_name(inputs)) as metered:
        status = _each(inputs, work)
        metered.status = "ok" if status == 0 else "failed"
    return status


def _run_name(inputs: list[Path | None]) -> str:
    names = ["stdin" if p is None else p.name for p in inputs]
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


class _Counting:
    """A file wrapper that counts the bytes read through it, or written through it."""

    def __init__(self, f_in=None, f_out=None):
        self.f_in, self.f_out, self.read_bytes, self.written = f_in, f_out, 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f_in.read(n)
        self.read_bytes += len(data)
        return data

    def readinto(self, buffer) -> int:
        n = self.f_in.readinto(buffer)
        self.read_bytes += n or 0
        return n

    def write(self, data) -> int:
        self.written += memoryview(data).nbytes
        return self.f_out.write(data)

    def __getattr__(self, name):
        return getattr(self.f_in if self.f_in is not None else self.f_out, name)


def _fmt_ratio(raw: int, stored: int) -> str:
    return f"{raw / stored:.2f}x" if stored else "-"


def run_inspect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thrifty inspect",
        description="Show what thrifty containers hold and how well each tensor and plane compressed.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help=".thz files")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (a list when several files are given)")
    args = parser.parse_args(argv)
    found: list[dict] = []

    def work(path: str) -> None:
        summary = _inspect(path)
        found.append(summary)
        if not args.json:
            print(("\n" if len(found) > 1 else "") + _inspect_text(summary), flush=True)

    status = _each(args.files, work)
    if args.json and found:
        print(json.dumps(found if len(args.files) > 1 else found[0], indent=1))
    return status


def _inspect(path: str) -> dict:
    """What ``thrifty inspect`` shows of one file: its header, and bytes and stored bytes per
    tensor (small tensors coded together count as one row) and per plane."""
    archive = thz.open_archive(path)
    try:
        stats = archive.stats()
    finally:
        archive.f.close()
    h = archive.header
    starts = {t.offset: t for t in archive.tensors}
    rows, other = [], {"name": "(other bytes)", "dtype": "", "shape": [], "bytes": 0, "stored": 0,
                       "coding": "", "planes": [], "segments": 0}
    other_codings: set[int] = set()
    for i, seg in enumerate(archive.segments):
        per_plane = [stats.planes.get((i, k), [0, 0]) for k in range(8) if (i, k) in stats.planes]
        stored = sum(s for _, s in per_plane)
        if not seg.dtype:
            other["bytes"] += seg.length
            other["stored"] += stored
            other["segments"] += 1
            other_codings.update(stats.transforms.get(i, ()))
            continue
        tensor = starts.get(seg.offset)
        inside = sum(1 for t in archive.tensors if seg.offset <= t.offset < seg.offset + seg.length)
        name = tensor.name if tensor else f"(bytes at {seg.offset})"
        if inside > 1:
            name += f" +{inside - 1} more"  # small tensors coded with the one before them
        rows.append({
            "name": name, "dtype": seg.dtype, "tensors": inside,
            "shape": tensor.shape if tensor else [], "bytes": seg.length, "stored": stored,
            "coding": _coding(stats.transforms.get(i, ())),
            "planes": [{"bytes": r, "stored": s} for r, s in per_plane],
        })
    if other["segments"] or not rows:
        if not archive.segments:  # a stream: one run of chunks, plain or words
            other["bytes"], other["stored"] = stats.original, sum(s for _, s in stats.planes.values())
            other_codings.update(stats.transforms.get(0, ()))
        other["coding"] = _coding(other_codings)
        other["planes"] = [{"bytes": other["bytes"], "stored": other["stored"]}]
        rows.append(other)
    return {"file": path, "kind": h["kind"], "codec": h["codec"], "level": h["level"],
            "chunk_size": h["chunk_size"], "chunks": len(archive.index["chunks"]),
            "original_size": stats.original, "stored_size": stats.stored, "segments": rows}


def _coding(transforms) -> str:
    """How a segment's chunks were coded, as inspect names it (``plain`` when it has none)."""
    return "+".join(planes.NAMES[t] for t in sorted(transforms)) or "plain"


def _inspect_text(summary: dict) -> str:
    s, rows = summary, summary["segments"]
    lines = [f"{s['file']}: {s['kind']}, {s['codec']} level {s['level']}, "
             f"{plural(s['chunks'], 'chunk')} of up to {s['chunk_size']:,} bytes",
             f"{s['original_size']:,} -> {s['stored_size']:,} bytes "
             f"({_fmt_ratio(s['original_size'], s['stored_size'])})", ""]
    name_w = min(48, max([len(r["name"]) for r in rows] + [4]))
    code_w = max([len(r["coding"]) for r in rows] + [6])
    lines.append(f"{'name':<{name_w}}  {'dtype':<5}  {'bytes':>13}  {'ratio':>7}  "
                 f"{'coding':<{code_w}}  planes (most significant first)")
    for r in rows:
        per_plane = " ".join(_fmt_ratio(p["bytes"], p["stored"]) for p in r["planes"])
        name = r["name"] if len(r["name"]) <= name_w else "…" + r["name"][-name_w + 1:]
        lines.append(f"{name:<{name_w}}  {r['dtype']:<5}  {r['bytes']:>13,}  "
                     f"{_fmt_ratio(r['bytes'], r['stored']):>7}  {r['coding']:<{code_w}}  {per_plane}")
    return "\n".join(lines)


def run_bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thrifty bench",
        description="Compress one file with thrifty and with the usual codecs, side by side.",
    )
    parser.add_argument("file")
    parser.add_argument("-T", "--threads", type=_threads, default=1, help="threads (default 1)")
    parser.add_argument("--repeat", type=_positive, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    from thrifty.compress import bench

    data = Path(args.file).read_bytes()
    if not data:
        raise ThriftyError(f"{args.file}: empty, nothing to measure")
    results = bench.run_all(data, args.threads, args.repeat)
    transform = "compiled" if planes.compiled is not None else "numpy"
    if args.json:
        print(json.dumps({"file": args.file, "bytes": len(data), "threads": args.threads,
                          "repeat": args.repeat, "plane_transform": transform,
                          "results": [r.__dict__ for r in results]}, indent=1))
    else:
        print(f"{args.file}: {len(data):,} bytes, {plural(args.threads, 'thread')}, best of "
              f"{args.repeat} (zstd -19: one run)\n")
        print(bench.table(results))
        print("\nthrifty's plane transform: " + (
            "compiled" if transform == "compiled" else
            "NumPy (thrifty.compress._planes was not built: reinstall with a C compiler present "
            "for planes several times faster)"))
    return 0
