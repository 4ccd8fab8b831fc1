"""One training process: join the process group, train, leave. ``python -m thrifty.train``.

Started by ``thrifty train --nproc N`` through torch's elastic launcher, or by ``torchrun`` on
each machine of a multi-machine job; a plain ``python -m thrifty.train CONFIG`` trains alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from thrifty import config as config_lib
from thrifty.errors import ThriftyError
from thrifty.train.config import TrainConfig
from thrifty.train.loop import Trainer, Workers, format_summary


def default_run_dir(cfg: TrainConfig) -> Path:
    # Under torchrun every machine must agree on the directory: the rendezvous id is shared.
    suffix = os.environ.get("TORCHELASTIC_RUN_ID") or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.run.name}-{suffix}"


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    want = cfg.run.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ThriftyError("run.device: cuda requested but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def join(cfg: TrainConfig) -> Workers:
    """Join the process group the launcher set up (or a group of one), per strategy."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.strategy.name == "single":
        if world > 1:
            raise ThriftyError("strategy.name: single trains in one process; use --nproc 1")
        return Workers(rank=0, world_size=1, device=device, distributed=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    device_id = device if device.type == "cuda" else None
    # torch.distributed.nn.functional takes the default group as a default argument when first
    # imported, and building the first optimizer imports it (through torch._dynamo). Imported
    # after the group exists it holds the group for good: destroy_process_group cannot free it,
    # and gloo's threads still run while the interpreter tears down. That is the likely cause of
    # a worker that died with SIGABRT ("terminate called without an active exception") after a
    # finished run in CI. Imported now, it holds None.
    import torch.distributed.nn.functional  # noqa: F401
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # Under the elastic agent every attempt of the group meets in the same agent-hosted store,
        # and torch's env:// rendezvous adds no per-attempt prefix: after a restart a worker can
        # read a peer's address from the dead attempt and hang or be refused. A prefix per attempt
        # keeps each attempt's keys apart.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
            timeout=dt.timedelta(minutes=10),
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"thrifty/attempt_{attempt}/", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                device_id=device_id)
    elif "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, device_id=device_id)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Workers(rank=rank, world_size=world, device=device, distributed=True)


def train(cfg: TrainConfig, run_dir: Path, resume: Path | str | None) -> dict | None:
    """Train in this process as one worker of the job; returns the run summary (None when
    stopped early by ``run.stop_after``)."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    workers = join(cfg)
    try:
        if workers.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = run_dir / "config.toml"
            if not config_path.exists():
                from thrifty.train.checkpoint import write_atomic

                write_atomic(config_path, config_lib.dump(cfg).encode())
        # After a worker died, the launcher restarts the group: pick up where the last complete
        # checkpoint left off instead of starting over.
        if restarts:
            resume = "latest"  # the newest checkpoint, which may be newer than the one given
        trainer = Trainer(cfg, run_dir, workers, resume=resume, restarts=restarts)
        summary = trainer.run()
        if workers.is_main and summary is not None:
            print("\nrun summary\n" + format_summary(summary), flush=True)
        return summary
    finally:
        # DDP and PowerSGD hold work on the process group: release them before the group, or
        # gloo's threads can be torn down under them at exit.
        trainer = None
        gc.collect()
        if dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer may already be gone after a failure
                dist.barrier()  # leave together: no rank tears down while a peer still talks
            dist.destroy_process_group()


def _train_metered(cfg: TrainConfig, run_dir: Path, resume) -> None:
    """Train as rank 0 of a job nobody else meters. CPU time is the trainer's sum over ranks (this
    process cannot see the other machines' processes)."""
    from thrifty.cost.meter import metered_run
    from thrifty.train import accounting

    world = int(os.environ.get("WORLD_SIZE", "1"))
    machines = max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    before = accounting.progress(run_dir)
    with metered_run("train", cfg.run.name, run_dir=run_dir.resolve()) as metered:
        try:
            summary = train(cfg, run_dir, resume)
        finally:
            summary = accounting.absorb(metered, run_dir, before, world_size=world, machines=machines)
        if summary is None:
            metered.status = "stopped"
        else:
            metered.cpu_override = (summary["cpu_s"] - summary["cpu_s_before_resume"],
                                    "the trainer's sum over ranks of getrusage (self + children)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thrifty.train", add_help=True)
    parser.add_argument("config", nargs="?", help="TOML config (defaults apply without one)")
    parser.add_argument(
        "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
        help="continue from CHECKPOINT, or from the run's newest valid checkpoint",
    )
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = config_lib.load(TrainConfig, args.config, config_lib.parse_overrides(rest))
        run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
        if os.environ.get("RANK", "0") == "0" and not os.environ.get("THRIFTY_METERED"):
            _train_metered(cfg, run_dir, args.resume)  # under torchrun: rank 0 keeps the books
        else:
            train(cfg, run_dir, args.resume)
    except ThriftyError as exc:
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank not in (None, "0") else ""
        print(f"thrifty: error{where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C reaches every process in the terminal's group: the launcher (or torchrun) says
        # so in one line and stops the group; a worker leaves quietly, with the shell's status.
        return 128 + signal.SIGINT
    return 0
