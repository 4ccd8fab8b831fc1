"""Start N local workers through torch.distributed's elastic launcher (what ``torchrun`` runs)."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

from thrifty.errors import Terminated, ThriftyError
from thrifty.report.terminal import plural


def launch(config_path: Path, nproc: int, max_restarts: int, resume: Path | None) -> None:
    """Run ``python -m thrifty.train CONFIG`` in ``nproc`` processes on this machine.

    If a worker dies, the elastic agent stops the others and restarts the whole group, at most
    ``max_restarts`` times; restarted workers resume from the newest complete checkpoint.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Split the cores between the workers, as torchrun does; oversubscribed BLAS threads make
    # every worker slower than one thread each.
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    # The agent narrates every state change at INFO/WARNING; the workers say what matters.
    # (Its modules' loggers carry levels of their own, so each is set, not just the parent.)
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # like torchrun --standalone: a free port on this machine
        max_restarts=max_restarts,
        monitor_interval=0.5,
    )
    args = ["-u", "-m", "thrifty.train", str(config_path)]
    if resume:
        args += ["--resume", str(resume)]
    try:
        elastic_launch(config, sys.executable)(*args)
    except SignalException as exc:  # the agent has stopped the workers; say so in one line
        raise Terminated(int(exc.sigval)) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise ThriftyError(
            f"worker {rank} failed with exit code {failure.exitcode}"
            + (f" after {plural(max_restarts, 'restart')}" if max_restarts else "")
        ) from None
