"""Throughput and MFU: the device's peak FLOP/s, and the per-step JSON-lines log."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

from thrifty.cost.meter import process_cpu_seconds
from thrifty.cost.prices import names_device
from thrifty.report.terminal import plural
from thrifty.train.checkpoint import write_atomic

# Peak dense bf16 tensor-core TFLOP/s (without sparsity), from the vendors' data sheets. Matched
# as whole words against torch.cuda.get_device_name(), in order: more specific names first.
GPU_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),  # NVIDIA H200 SXM data sheet
    ("H100 PCIe", 756.0),  # NVIDIA H100 data sheet, PCIe
    ("H100", 989.0),  # NVIDIA H100 data sheet, SXM
    ("GH200", 989.0),
    ("B200", 2250.0),  # NVIDIA DGX B200 data sheet, per GPU, dense
    ("A100", 312.0),  # NVIDIA A100 data sheet (40 and 80 GB)
    ("A10", 125.0),  # NVIDIA A10 data sheet
    ("L40S", 362.0),  # NVIDIA L40S data sheet
    ("L40", 181.0),  # NVIDIA L40 data sheet
    ("L4", 121.0),  # NVIDIA L4 data sheet
    ("RTX 4090", 165.2),  # NVIDIA Ada whitepaper: bf16 with fp32 accumulate, dense
    ("V100", 125.0),  # fp16 tensor cores (V100 has no bf16)
    ("T4", 65.0),  # fp16 tensor cores (T4 has no bf16)
]


def gpu_peak_flops(device: torch.device) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, tflops in GPU_PEAK_TFLOPS:
        if names_device(key, name):
            return tflops * 1e12, f"table: {name}"
    return None, f"unknown GPU {name!r}: no peak on record, MFU not reported"


def cpu_peak_flops(threads: int, size: int = 512, seconds: float = 0.3) -> float:
    """Measured fp32 matmul FLOP/s of this process at its thread count: the CPU's practical
    peak, since data sheets rarely give one. Best of repeated runs over ``seconds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with _threads(threads):
        torch.mm(a, b)  # warm-up: first call pays for allocation and kernel selection
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """Peak FLOP/s of one worker's device and how it was obtained."""
    if device.type == "cuda":
        return gpu_peak_flops(device)
    threads = torch.get_num_threads()
    return cpu_peak_flops(threads), f"measured: fp32 matmul probe, {plural(threads, 'thread')}"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    return sum(process_cpu_seconds())


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MetricsLog:
    """Appends one JSON object per line. On resume, drops the records past the step resumed
    from: those steps are done again. What they had used (tokens, and bytes sent per worker:
    the last dropped record's counts less ``resumed_at``'s) is first appended to
    redone.jsonl beside the log, which only ever grows, so that the meter charges the work to
    the invocation that redoes it (see thrifty.train.accounting)."""

    def __init__(self, path: Path, resumed_at: dict | None):
        self.path = Path(path)
        redone = self.path.with_name(REDONE)
        if resumed_at is not None and self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            records = [json.loads(line) for line in lines]
            step = resumed_at["step"]
            cut = [r for r in records if r.get("step", 0) > step and r.get("event") == "train"]
            if cut:
                last = cut[-1]
                with open(redone, "a") as f:
                    f.write(json.dumps({
                        "from_step": last["step"], "to_step": step,
                        "tokens": max(0, last["tokens"] - resumed_at["tokens"]),
                        "bytes_sent": max(0, last["bytes_sent_cum"] - resumed_at["bytes_sent_cum"]),
                    }) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            kept = [line for line, r in zip(lines, records, strict=True) if r.get("step", 0) <= step]
            write_atomic(self.path, "".join(f"{line}\n" for line in kept).encode())
        elif resumed_at is None:
            for stale in (self.path, redone):
                stale.unlink(missing_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


REDONE = "redone.jsonl"


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wall_clock() -> float:
    return time.perf_counter()


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))
