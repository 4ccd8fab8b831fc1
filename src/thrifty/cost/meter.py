"""The meter: what a run used, measured where it can be and labelled where it is estimated.

Every command that does work runs inside ``metered_run(...)``. It clocks wall and CPU time
(the process and its children, so workers a launcher started are included), reads energy from
RAPL or NVML where the machine exposes them and otherwise estimates it from CPU-seconds and the
accelerators' TDP (the record names the method), and takes the counters the command adds
(bytes and tokens read, bytes written raw and stored, bytes communicated, people-hours). On exit
it prices the usage with the price book in force and writes the run to the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import resource
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from thrifty.cost import prices as prices_lib
from thrifty.errors import Terminated


@dataclass
class Usage:
    wall_s: float = 0.0
    cpu_s: float = 0.0  # cpu_self_s + cpu_children_s, unless a trainer reported its ranks' sum
    cpu_self_s: float = 0.0
    cpu_children_s: float = 0.0
    cpu_method: str = "getrusage: this process and its children"
    cores: int = 1  # CPU cores this process could use
    accelerator_s: dict[str, float] = field(default_factory=dict)  # price-book key -> seconds
    energy_kwh: float = 0.0  # IT energy, before the data centre's PUE
    energy_method: str = ""
    bytes_read: int = 0
    tokens_read: int = 0
    bytes_written_raw: int = 0
    bytes_written_stored: int = 0
    # stored bytes this run removed that an earlier run left, and was charged for: a resumed
    # training run pruning the checkpoints of the invocation before it. A credit on storage.
    bytes_removed_stored: int = 0
    bytes_communicated: int = 0
    machines: int = 1
    peak_memory_bytes: int = 0
    people_hours: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Usage:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---- energy ----------------------------------------------------------------------------------------

RAPL_ROOT = Path("/sys/class/powercap")


def _rapl_packages(root: Path = RAPL_ROOT) -> list[Path]:
    """Top-level RAPL domains (whole packages), readable by this user."""
    found = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") == 1 and os.access(zone / "energy_uj", os.R_OK):
            found.append(zone)
    return found


def _rapl_read(zones: list[Path]) -> list[int] | None:
    try:
        return [int((z / "energy_uj").read_text()) for z in zones]
    except (OSError, ValueError):
        return None


def _rapl_joules(zones: list[Path], before: list[int], after: list[int]) -> float:
    total = 0
    for zone, a, b in zip(zones, before, after, strict=True):
        delta = b - a
        if delta < 0:  # the counter wrapped
            delta += int((zone / "max_energy_range_uj").read_text())
        total += delta
    return total / 1e6


class _Nvml:
    """Total energy of every visible NVIDIA GPU, through NVML (nvidia-ml-py), when present."""

    def __init__(self):
        import pynvml  # noqa: PLC0415 - optional

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def millijoules(self) -> list[int]:
        return [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]


# ---- the metered run -------------------------------------------------------------------------------


class Run:
    """A run being metered: add counters with ``add``, attach facts with ``info`` and a time
    series with ``points``."""

    def __init__(self, name: str, run_dir: str | None):
        self.name, self.run_dir = name, run_dir
        self.uid = uuid.uuid4().hex
        self.usage = Usage(cores=len(os.sched_getaffinity(0)))
        self.info: dict = {}
        self.points: list[dict] = []
        self.status = "ok"
        self.cpu_override: tuple[float, str] | None = None  # (seconds, method) from a trainer
        self.id: int | None = None
        self.reserved: dict[str, int] = {}

    def reserve(self, device: str, count: int) -> None:
        """``count`` accelerators of kind ``device`` are held for the whole run (charged per
        wall-clock second, as a cloud bills them)."""
        self.reserved[device] = count

    def add(self, **counters) -> None:
        for key, value in counters.items():
            if key == "accelerator_s":
                for device, seconds in value.items():
                    self.usage.accelerator_s[device] = self.usage.accelerator_s.get(device, 0.0) + seconds
            elif key in ("machines", "peak_memory_bytes"):
                setattr(self.usage, key, max(getattr(self.usage, key), value))
            else:
                setattr(self.usage, key, getattr(self.usage, key) + value)


def process_cpu_seconds() -> tuple[float, float]:
    """(this process, its finished children), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _peak_rss() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * 1024  # Linux reports KiB


def energy_kwh(usage: Usage, book: prices_lib.PriceBook, cpu_joules: float | None = None,
               gpu_joules: float | None = None) -> tuple[float, str]:
    """IT energy and how it was obtained. The CPU part is RAPL's reading when there is one,
    else CPU-seconds x watts per core; the accelerator part is NVML's reading when there is
    one, else accelerator-seconds x TDP (an upper bound)."""
    parts = []
    if cpu_joules is not None:
        joules = cpu_joules
        parts.append("measured: RAPL, whole CPU packages (every process on them)")
    else:
        watts = book["cpu"]["watts_per_core"]
        joules = usage.cpu_s * watts
        parts.append(f"estimate: CPU-seconds x {watts:g} W per core")
    if gpu_joules is not None:
        joules += gpu_joules
        parts.append("measured: NVML, every visible GPU")
    else:
        for device, seconds in usage.accelerator_s.items():
            try:
                tdp = book.accelerator(device).need("tdp_w")
            except Exception:  # noqa: BLE001 - an unknown device: say so rather than guess
                parts.append(f"{device}: no TDP on record, not counted")
                continue
            joules += seconds * tdp
            parts.append(f"estimate: {device}-seconds x {tdp:g} W TDP (upper bound)")
    return joules / 3.6e6, "; ".join(parts)


@contextlib.contextmanager
def metered_run(kind: str, name: str | None = None, *, run_dir: str | Path | None = None,
                book: prices_lib.PriceBook | None = None, ledger=None):
    """Meter the body; on exit price it and write it to the ledger (``ledger`` or the default).

    A body that raises is still recorded, with status ``failed`` (``interrupted`` for Ctrl-C,
    SIGTERM or SIGHUP): what it used was spent.
    """
    book = book or prices_lib.load()
    run = Run(name or kind, str(run_dir) if run_dir else None)
    started_at = dt.datetime.now(dt.UTC)
    t0, cpu0 = time.perf_counter(), process_cpu_seconds()
    zones = _rapl_packages()
    rapl0 = _rapl_read(zones) if zones else None
    nvml = None
    with contextlib.suppress(Exception):
        nvml = _Nvml()
    nvml0 = nvml.millijoules() if nvml else None
    try:
        yield run
    except (KeyboardInterrupt, Terminated):
        run.status = "interrupted" if run.status == "ok" else run.status
        raise
    except BaseException:
        run.status = "failed" if run.status == "ok" else run.status
        raise
    finally:
        u = run.usage
        u.wall_s = time.perf_counter() - t0
        cpu1 = process_cpu_seconds()
        u.cpu_self_s, u.cpu_children_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        u.cpu_s = u.cpu_self_s + u.cpu_children_s
        for device, count in run.reserved.items():
            u.accelerator_s[device] = u.accelerator_s.get(device, 0.0) + count * u.wall_s
        if run.cpu_override:
            u.cpu_s, u.cpu_method = run.cpu_override
        u.peak_memory_bytes = max(u.peak_memory_bytes, _peak_rss())
        rapl1 = _rapl_read(zones) if rapl0 is not None else None
        cpu_j = _rapl_joules(zones, rapl0, rapl1) if rapl1 is not None else None
        gpu_j = None
        if nvml0 is not None:
            gpu_j = sum(b - a for a, b in zip(nvml0, nvml.millijoules(), strict=True)) / 1e3
        u.energy_kwh, u.energy_method = energy_kwh(u, book, cpu_j, gpu_j)
        entry = {
            "uid": run.uid, "kind": kind, "name": run.name, "status": run.status,
            "started_at": started_at.isoformat(timespec="seconds"),
            "ended_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "command": " ".join(["thrifty", *sys.argv[1:]]),
            "run_dir": run.run_dir, "usage": u.to_dict(), "prices": book.data,
            "info": run.info, "points": run.points,
        }
        _record(entry, run, ledger)


def _record(entry: dict, run: Run, ledger) -> None:
    """Write the run to the ledger. The work is done by now: a ledger that cannot take it (a
    damaged file, a newer schema, a full disk) is warned about, never a reason to fail."""
    import sqlite3

    from thrifty.cost import ledger as ledger_lib
    from thrifty.errors import ThriftyError

    try:
        target = ledger if ledger is not None else ledger_lib.default()
        if target is not None:
            run.id = target.record(entry)
    except (ThriftyError, sqlite3.Error, OSError) as exc:
        print(f"thrifty: warning: the run was not recorded in the ledger: {exc}", file=sys.stderr)
