"""What a training run used, for the meter: read from what the workers left in the run directory.

The workers write per-step metrics (metrics.jsonl), checkpoints with their raw and stored sizes
(meta.json), and at the end the run summary (run.json). The process that meters the run (the one
``thrifty train`` runs in, or rank 0 under ``torchrun``) turns them into counters, so a run that
died midway is still charged for the tokens, bytes and checkpoints it got through.

Storage: an invocation is charged for the checkpoints that are there when it ends and were not
when it began. A ``--resume`` may prune checkpoints that an earlier invocation left (and was
charged for as if they would be kept); the resumed one records their stored bytes as removed, a
credit against its own storage charge, so the invocations of a run directory are together
charged for what it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from thrifty.cost.prices import accelerator_key
from thrifty.train import checkpoint as ckpt
from thrifty.train.metrics import REDONE, read_metrics


def progress(run_dir: Path) -> dict:
    """Where the run stands now: the last logged step's tokens and cumulative bytes sent, how
    many records redone.jsonl holds, which run.json is there (by inode and modification time),
    and the complete checkpoints there are (name -> raw bytes, stored bytes)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    records = [r for r in read_metrics(path) if r.get("event") == "train"] if path.exists() else []
    last = records[-1] if records else {}
    try:
        st = (run_dir / "run.json").stat()
        summary = (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        summary = None
    return {"step": last.get("step", 0), "tokens": last.get("tokens", 0),
            "bytes_sent_cum": last.get("bytes_sent_cum", 0), "redone": len(_redone(run_dir)),
            "summary": summary, "checkpoints": _checkpoints(run_dir)}


def _redone(run_dir: Path) -> list[dict]:
    path = run_dir / REDONE
    return read_metrics(path) if path.exists() else []


def _checkpoints(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Each complete checkpoint's raw and stored bytes, by name (a damaged one is left out:
    it is not storage we can size)."""
    sizes = {}
    for directory in ckpt.complete_checkpoints(run_dir):
        try:
            meta = ckpt.read_meta(directory)
        except Exception:  # noqa: BLE001
            continue
        files = meta["files"].values()
        sizes[directory.name] = (sum(e.get("raw_bytes", e["bytes"]) for e in files),
                                 sum(e["bytes"] for e in files))
    return sizes


def absorb(run, run_dir: Path, before: dict, world_size: int, machines: int = 1) -> dict | None:
    """Add what the workers did since ``before`` to the metered ``run``; returns the summary.

    Steps this invocation did twice (a restart, or a resume from a checkpoint older than the
    last log) count twice: the log was cut back to the checkpoint, and redone.jsonl says what the
    steps cut had used. Steps done after the last log of a worker group that died are not known
    to anyone and are not counted (their CPU time is: it is measured)."""
    run_dir = Path(run_dir)
    after = progress(run_dir)
    redone = _redone(run_dir)[before["redone"]:]
    start = min([before["step"]] + [r["to_step"] for r in redone])  # where this invocation began
    path = run_dir / "metrics.jsonl"
    records = [r for r in read_metrics(path) if r.get("step", 0) > start] if path.exists() else []
    tokens = max(0, after["tokens"] - before["tokens"]) + sum(r["tokens"] for r in redone)
    sent = (max(0, after["bytes_sent_cum"] - before["bytes_sent_cum"])
            + sum(r["bytes_sent"] for r in redone)) * world_size
    held, now = before["checkpoints"], after["checkpoints"]
    new = [size for name, size in now.items() if name not in held]
    removed = sum(stored for name, (_, stored) in held.items() if name not in now)
    run.add(tokens_read=tokens, bytes_read=tokens, bytes_communicated=sent,
            bytes_written_raw=sum(raw for raw, _ in new), bytes_written_stored=sum(s for _, s in new),
            bytes_removed_stored=removed, machines=machines)
    run.points = [
        {k: r[k] for k in ("step", "tokens", "loss", "val_loss", "tokens_per_s", "wall_s", "cpu_s",
                           "bytes_sent_cum", "mfu") if k in r} | {"event": r.get("event")}
        for r in records
    ]
    summary = None
    if after["summary"] is not None and after["summary"] != before["summary"]:  # not an earlier one's
        summary = json.loads((run_dir / "run.json").read_text())
    info = {"tokens": tokens, "world_size": world_size, "resumed_from_step": start or None}
    if summary:
        info.update({k: summary.get(k) for k in (
            "strategy", "device", "parameters", "flops_per_token", "mfu", "tokens_per_s", "steps",
            "final_train_loss", "final_val_loss", "peak_flops_per_worker", "peak_flops_method",
            "plain_allreduce_bytes_per_worker", "checkpoint", "restarts")})
        info["config"] = summary.get("config")
        info["flops"] = summary["flops_per_token"] * tokens
        # this invocation's share of the run's steps (all take the same tokens), those it did
        # twice counted twice: the steps it took, and what plain all-reduce would have sent for
        # them, all workers
        share = tokens / summary["tokens"] if summary.get("tokens") else 0
        info["steps_done"] = round(share * summary["steps"])
        info["syncs"] = summary.get("syncs")
        info["bytes_sent_per_worker"] = sent / world_size
        plain = summary.get("plain_allreduce_bytes_per_worker") or 0
        info["plain_allreduce_bytes"] = plain * world_size * share
        if summary.get("device") == "cuda":
            key = accelerator_key(summary.get("peak_flops_method", ""))
            run.reserve(key, world_size)
    run.info.update(info)
    return summary
