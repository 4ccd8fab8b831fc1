"""``thrifty train``: parse, check everything that can be checked, then launch the workers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from thrifty import config as config_lib
from thrifty.cost import prices as prices_lib
from thrifty.cost.charges import charges
from thrifty.cost.meter import metered_run
from thrifty.errors import ThriftyError
from thrifty.report.terminal import cost_table, plural
from thrifty.train import accounting, checkpoint
from thrifty.train.config import TrainConfig
from thrifty.train.data import check_corpus

DESCRIPTION = """\
Train a decoder-only transformer on byte-level text, on one or more worker processes.

Every config option can be set in a TOML file (see examples/) and overridden on the command
line as --section.key=value. Options and their defaults:
"""

EPILOG = """
examples:
  thrifty train examples/demo.toml --nproc 2
  thrifty train --strategy.name=diloco --strategy.inner_steps=50 --nproc 2
  thrifty train --resume runs/demo-20261128-140000 --nproc 2
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      --rdzv-id job1 -m thrifty.train examples/gpt-small.toml --run.dir=/shared/runs/job1
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thrifty train",
        description=DESCRIPTION + "\n".join(config_lib.help_lines(TrainConfig)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="TOML config file; defaults apply without one")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes on this machine")
    parser.add_argument(
        "--max-restarts", type=int, default=0,
        help="restart the workers this many times if one dies; they resume from a checkpoint",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest complete checkpoint",
    )
    parser.add_argument("--prices", metavar="FILE", help="price file for the cost of the run")
    parser.add_argument("--people-hours", type=float, default=0.0, metavar="H",
                        help="engineer hours spent on this run, charged as the people driver")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)
    if args.nproc < 1:
        raise ThriftyError("--nproc must be at least 1")
    if args.max_restarts < 0:
        raise ThriftyError("--max-restarts must be >= 0")

    if args.resume:
        run_dir = Path(args.resume)
        if args.config:
            raise ThriftyError("--resume takes its config from the run directory; drop CONFIG")
        if not (run_dir / "config.toml").is_file():
            raise ThriftyError(f"{run_dir} is not a run directory (no config.toml)")
        cfg = config_lib.load(TrainConfig, run_dir / "config.toml", overrides)
        problems: list[str] = []
        latest = checkpoint.latest_valid(run_dir, warn=problems.append)
        if latest is None:
            why = f" ({problems[0]})" if problems else ""
            raise ThriftyError(f"{run_dir} has no valid checkpoint to resume from{why}")
        for problem in problems:  # newer checkpoints that are damaged: say so, use an older one
            print(f"thrifty: warning: {problem}", file=sys.stderr)
        from thrifty.train.strategies import STRATEGIES

        meta = checkpoint.read_meta(latest)
        if meta["step"] >= cfg.max_steps:  # nothing left to do but pay for an evaluation
            raise ThriftyError(f"{run_dir} has spent its budget ({plural(meta['step'], 'step')}, "
                               f"train.tokens={cfg.train.tokens:,}); extend it with a larger "
                               "--train.tokens=N")
        world = meta["world_size"]
        held = STRATEGIES[cfg.strategy.name].per_worker_state(cfg.strategy)
        if world != args.nproc and held:
            raise ThriftyError(f"checkpoint {latest} holds per-worker {held} (world size {world}); "
                               f"resume it with --nproc {world}")
    else:
        latest = None
        cfg = config_lib.load(TrainConfig, args.config, overrides)
        from thrifty.train.worker import default_run_dir

        run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
        if checkpoint.complete_checkpoints(run_dir):
            raise ThriftyError(f"{run_dir} already holds checkpoints: continue it with "
                               f"--resume {run_dir}, or choose another --run.dir")
    cfg.run.dir = str(run_dir)
    if cfg.strategy.name == "single" and args.nproc > 1:
        raise ThriftyError("strategy.name: single trains in one process; use --nproc 1")
    cfg.layout(args.nproc)  # the batch must split over the workers
    check_corpus(cfg.data, cfg.model.block_size)  # fail here, once, not in every worker

    if args.people_hours < 0:
        raise ThriftyError("--people-hours must be >= 0")
    book = prices_lib.load(args.prices)

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.toml"
    checkpoint.write_atomic(config_path, config_lib.dump(cfg).encode())
    print(f"run directory: {run_dir}", flush=True)
    before = accounting.progress(run_dir)
    os.environ["THRIFTY_METERED"] = "1"  # the workers leave the ledger to this process
    with metered_run("train", cfg.run.name, run_dir=run_dir.resolve(), book=book) as metered:
        metered.add(people_hours=args.people_hours)
        try:
            if args.nproc == 1 and args.max_restarts == 0:
                from thrifty.train.worker import train

                train(cfg, run_dir, resume=latest)
            else:
                from thrifty.train.launch import launch

                launch(config_path, args.nproc, args.max_restarts, resume=latest)
        except BaseException:
            accounting.absorb(metered, run_dir, before, world_size=args.nproc)  # charged all the same
            raise
        if accounting.absorb(metered, run_dir, before, world_size=args.nproc) is None:
            metered.status = "stopped"  # run.stop_after: the run continues with --resume
    where = (f"ledger run {metered.id}; thrifty report {metered.id} for more" if metered.id is not None
             else "not recorded in a ledger")
    print(f"\ncost ({where})\n"
          + cost_table(charges(metered.usage, book)), flush=True)
    return 0
