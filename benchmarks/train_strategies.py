"""Parameter-update strategies side by side: throughput, bytes communicated, final loss.

Trains the default model (examples/demo.toml's shape) on 2 CPU workers at one token budget
with each strategy, plus a bare hand-written DDP loop for the throughput baseline, all in this
one run, and prints one table. Exits non-zero when a target is missed:

* thrifty's ddp loop reaches >= 0.95x the tokens/s of the bare DDP loop (best of 3 runs each,
  interleaved, so that a noisy moment hurts both);
* diloco with H=50 sends >= 40x fewer bytes than ddp and ends within 3% of its val loss;
* ddp with PowerSGD rank 4 sends >= 10x fewer bytes than ddp and ends within 3% of its val loss.

Communication time on a link is modelled, not measured: a ring all-reduce of B bytes over p
workers moves 2(p-1)/p * B per worker and pays 2(p-1) hops of latency; an all-gather moves
(p-1) * B and pays (p-1) hops; a broadcast (DDP's start) moves B and pays (p-1) hops.

Usage: python benchmarks/train_strategies.py [--tokens N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, verdict

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
BATCH = 32
BLOCK = 128
# (name, bits per second, latency per hop in seconds): typical Ethernet and InfiniBand figures.
LINKS = [("1 Gbit/s", 1e9, 50e-6), ("10 Gbit/s", 10e9, 20e-6), ("100 Gbit/s", 100e9, 5e-6)]

STRATEGIES = {
    "ddp": [],
    "ddp+fp16": ["--strategy.ddp_hook=fp16"],
    "ddp+powersgd(r4)": ["--strategy.ddp_hook=powersgd", "--strategy.powersgd_rank=4"],
    "diloco(H=50)": ["--strategy.name=diloco", "--strategy.inner_steps=50"],
    "diloco(H=50,int8)": ["--strategy.name=diloco", "--strategy.inner_steps=50",
                          "--strategy.quantize=int8"],
}


def comm_seconds(run: dict, bits_per_s: float, hop_latency: float) -> float:
    p = run["world_size"]
    total = 0.0
    for op, nbytes in run["bytes_by_op"].items():
        calls = run["calls_by_op"][op]
        if op == "all_reduce":
            total += 2 * (p - 1) / p * nbytes * 8 / bits_per_s + calls * 2 * (p - 1) * hop_latency
        elif op == "all_gather":
            total += (p - 1) * nbytes * 8 / bits_per_s + calls * (p - 1) * hop_latency
        elif op == "broadcast":  # pipelined along a chain: every link carries the bytes once
            total += nbytes * 8 / bits_per_s + calls * (p - 1) * hop_latency
        else:
            raise ValueError(f"no cost model for {op}")
    return total


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // WORKERS)),
            "PYTHONUNBUFFERED": "1"}


def thrifty_run(name: str, extra: list[str], tokens: int, workdir: Path) -> dict:
    run_dir = workdir / name.replace("(", "-").replace(")", "").replace(",", "-")
    cmd = [sys.executable, "-m", "thrifty", "train", str(ROOT / "examples" / "demo.toml"),
           "--nproc", str(WORKERS), f"--train.tokens={tokens}", f"--run.dir={run_dir}",
           "--run.eval_interval=1000000", "--run.checkpoint_interval=0", "--run.log_interval=50",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / "run.json").read_text())


def bare_run(steps: int, workdir: Path) -> float:
    out = workdir / "bare.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(WORKERS),
           str(ROOT / "benchmarks" / "bare_ddp.py"), str(steps), str(BATCH), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        sys.exit(f"bare DDP loop failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())["tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2_048_000, help="token budget per run")
    parser.add_argument("--speed-steps", type=int, default=120, help="steps per throughput run")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. Throughput: thrifty's ddp loop against a bare DDP loop, interleaved.
        speed_tokens = args.speed_steps * BATCH * BLOCK
        bare, ours = [], []
        for i in range(3):
            bare.append(bare_run(args.speed_steps, work))
            ours.append(thrifty_run(f"speed{i}", [], speed_tokens, work)["tokens_per_s"])
        ratio = max(ours) / max(bare)
        print(f"throughput: thrifty ddp {max(ours):,.0f} tok/s, bare DDP loop {max(bare):,.0f} "
              f"tok/s, ratio {ratio:.3f} (best of 3 each; all: thrifty "
              f"{[round(x) for x in ours]}, bare {[round(x) for x in bare]})\n")
        if ratio < 0.95:
            failures.append(f"thrifty ddp reaches {ratio:.3f}x the bare DDP loop (< 0.95x)")

        # 2. Strategies at one token budget.
        runs = {name: thrifty_run(name, extra, args.tokens, work)
                for name, extra in STRATEGIES.items()}

    ddp = runs["ddp"]
    head = ["strategy", "tokens/s", "bytes/step", "bytes total", "vs ddp", "val loss", "vs ddp"]
    head += [f"comm @{name}" for name, _, _ in LINKS]
    rows = []
    for name, r in runs.items():
        per_step = r["bytes_sent_per_worker"] / r["steps"]
        rows.append([
            name, f"{r['tokens_per_s']:,.0f}", f"{per_step / 1e6:.3f} MB",
            f"{r['bytes_sent_per_worker'] / 1e6:,.1f} MB",
            f"{ddp['bytes_sent_per_worker'] / r['bytes_sent_per_worker']:.1f}x less",
            f"{r['final_val_loss']:.4f}",
            f"{(r['final_val_loss'] / ddp['final_val_loss'] - 1) * 100:+.2f}%",
            *[f"{comm_seconds(r, bw, lat):,.2f} s" for _, bw, lat in LINKS],
        ])
    print(f"{WORKERS} workers, {ddp['steps']} steps of {BATCH}x{BLOCK} tokens "
          f"({ddp['tokens']:,} tokens), {ddp['parameters']:,} parameters; bytes are per worker\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n" + machine())

    def check(name: str, min_reduction: float) -> None:
        r = runs[name]
        reduction = ddp["bytes_sent_per_worker"] / r["bytes_sent_per_worker"]
        loss_gap = r["final_val_loss"] / ddp["final_val_loss"] - 1
        if reduction < min_reduction:
            failures.append(f"{name} sends {reduction:.1f}x fewer bytes than ddp (< {min_reduction}x)")
        if loss_gap > 0.03:
            failures.append(f"{name} ends {loss_gap:.1%} above ddp's val loss (> 3%)")

    check("diloco(H=50)", 40)
    check("ddp+powersgd(r4)", 10)
    return verdict(failures, args.json, {"ratio": ratio, "runs": runs})

if __name__ == "__main__":
    sys.exit(main())
