"""The trainer: one readable step, evaluation, checkpoints, metrics and the run summary."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from thrifty.config import to_dict
from thrifty.errors import ThriftyError
from thrifty.report.terminal import fmt_bytes, plural
from thrifty.train import checkpoint as ckpt
from thrifty.train.config import TrainConfig
from thrifty.train.data import Sampler, Windows, eval_batches, load_corpus
from thrifty.train.metrics import MetricsLog, cpu_seconds, peak_flops, peak_rss_bytes, wall_clock
from thrifty.train.model import GPT
from thrifty.train.strategies import CommCounter, build


@dataclass
class Workers:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    device: torch.device
    distributed: bool  # a process group exists (every strategy but ``single``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices (linear weights, embeddings), not biases and norm gains: the usual GPT recipe.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step (or constant)."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / (t.warmup_steps + 1)
    if t.schedule == "constant":
        return t.lr
    span = max(1, cfg.max_steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, workers: Workers,
                 resume: Path | str | None = None, restarts: int = 0):
        """``resume``: a checkpoint directory, "latest" (the newest valid one, if any), or None."""
        self.cfg, self.run_dir, self.w = cfg, Path(run_dir), workers
        self.started = wall_clock()
        self.restarts = restarts
        self.micro, self.accum = cfg.layout(workers.world_size)

        corpus = load_corpus(cfg.data, cfg.model.block_size)
        self.corpus_fingerprint = corpus.fingerprint
        self.train_windows = Windows(corpus.train, cfg.model.block_size, cfg.train.seed)
        self.val_windows = Windows(corpus.val, cfg.model.block_size, cfg.train.seed + 1)
        self.sampler = Sampler(
            self.train_windows, cfg.train.batch_size, self.micro, workers.rank, workers.world_size
        )

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        self.model = GPT(cfg.model).to(workers.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.strategy = build(cfg.strategy, self.model, workers.world_size, workers.device)
        torch.manual_seed(cfg.train.seed + 1 + workers.rank)  # dropout differs per rank
        self.aux = CommCounter()  # metrics, evaluation and checkpoint traffic, reported apart

        self.step, self.tokens = 0, 0
        self.prior_wall = self.prior_train = self.prior_cpu = 0.0
        self.train_time = 0.0
        self.last_loss: float | None = None
        self.val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.bytes_before = 0  # see _resume
        self.resized_from: int | None = None
        self.resumed_at: dict | None = None  # the checkpoint's step, tokens and bytes sent per worker
        cuda = workers.device.type == "cuda"
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        )

        peak, self.peak_method = peak_flops(workers.device)
        self.peak_per_worker = self._mean(peak) if peak else None
        self.flops_per_token = self.model.flops_per_token()

        resumed = self._resume(resume) if resume else None
        self.metrics = (
            MetricsLog(self.run_dir / "metrics.jsonl", self.resumed_at) if workers.is_main else None
        )
        if resumed and workers.is_main:
            n = self.resized_from
            resized = f", written by {n} worker{'s' * (n != 1)}" if n else ""
            self.log(f"resumed from {resumed} at step {self.step}{resized}")

    # ---- collectives the loop itself needs (not the strategy's) -------------------------------

    def _sum(self, values: list[float]) -> list[float]:
        if not self.w.distributed or self.w.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.w.device)
        self.aux.add("all_reduce", t)
        dist.all_reduce(t)
        return t.tolist()

    def _mean(self, value: float) -> float:
        return self._sum([value])[0] / self.w.world_size

    def _barrier(self) -> None:
        if self.w.distributed and self.w.world_size > 1:
            dist.barrier()

    def _gather(self, obj) -> list:
        if not self.w.distributed or self.w.world_size == 1:
            return [obj]
        out = [None] * self.w.world_size
        dist.all_gather_object(out, obj)
        return out

    def log(self, text: str) -> None:
        if self.w.is_main:
            (self.bar.write if getattr(self, "bar", None) else print)(text, flush=True)

    # ---- the loop -----------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        """One optimizer step over this rank's share of the global batch; returns its mean loss
        (a tensor, so that CUDA need not synchronise every step)."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.cfg)
        micro_batches = self.sampler.next_step()
        total = torch.zeros((), device=self.w.device)
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(self.w.device, non_blocking=True), y.to(self.w.device, non_blocking=True)
            last = i == len(micro_batches) - 1
            # Micro-steps before the last only accumulate; the last one triggers the sync.
            with contextlib.nullcontext() if last else self.strategy.accumulating():
                with self.autocast:
                    _, loss = self.strategy.module(x, y)
                loss = loss / len(micro_batches)
                if last:
                    self.strategy.backward(loss)
                else:
                    loss.backward()
            total += loss.detach()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.after_step()
        return total

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total = count = 0.0
        with self.strategy.eval_weights():
            for x, y in eval_batches(
                self.val_windows, self.cfg.train.batch_size, self.cfg.run.eval_batches,
                self.micro, self.w.rank, self.w.world_size,
            ):
                with self.autocast:
                    _, loss = self.model(x.to(self.w.device), y.to(self.w.device))
                total += loss.item() * x.shape[0]
                count += x.shape[0]
        self.model.train()
        total, count = self._sum([total, count])
        return total / count

    def run(self) -> dict | None:
        """Train to the token budget and return the run summary; None if stopped early by
        ``run.stop_after`` (the run continues with ``--resume``)."""
        cfg, max_steps = self.cfg, self.cfg.max_steps
        first_step = self.step
        self.log(
            f"training {self.model.num_params(non_embedding=False):,} parameters on "
            f"{self.w.world_size} x {self.w.device.type} with strategy {self._strategy_label()}: "
            f"{plural(max_steps, 'step')} of {cfg.tokens_per_step:,} tokens ({cfg.train.tokens:,} budget)"
        )
        self.bar = None
        if self.w.is_main and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        zero = torch.zeros((), device=self.w.device)
        window_steps, window_time, window_loss = 0, 0.0, zero
        sent_before = self.strategy.counter.bytes_sent
        while self.step < max_steps:
            t0 = wall_clock()
            loss = self.train_step()
            self.step += 1
            self.tokens += cfg.tokens_per_step
            window_loss = window_loss + loss
            window_steps += 1
            if self.bar is not None:
                self.bar.update(1)
            # a slice that run.stop_after ends is logged at its last step, so that the ledger
            # charges it for all the steps it took, and its --resume for none of them again
            stopping = bool(cfg.run.stop_after) and self.step - first_step >= cfg.run.stop_after
            log_now = self.step % cfg.run.log_interval == 0 or self.step == max_steps or stopping
            if log_now:
                mean_loss = self._mean(window_loss.item() / window_steps)
                if self.w.device.type == "cuda":
                    torch.cuda.synchronize()
            dt_step = wall_clock() - t0
            self.train_time += dt_step
            window_time += dt_step
            if log_now:
                self.last_loss = mean_loss
                sent = self.strategy.counter.bytes_sent
                self._record_step(mean_loss, window_steps * cfg.tokens_per_step, window_time,
                                  sent - sent_before)
                window_steps, window_time, window_loss = 0, 0.0, zero
                sent_before = sent
            if self.step % cfg.run.eval_interval == 0 and self.step < max_steps:
                self._record_eval()
            if (
                cfg.run.checkpoint_interval
                and self.step % cfg.run.checkpoint_interval == 0
                and self.step < max_steps
            ):
                self.save_checkpoint()
            if stopping and self.step < max_steps:
                return self._stop_early()
        self.strategy.finish()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._record_eval()
        self.save_checkpoint()
        summary = self._summary()
        if self.w.is_main:
            ckpt.write_atomic(self.run_dir / "run.json", json.dumps(summary, indent=1).encode())
            self.metrics.close()
        return summary

    def _stop_early(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.save_checkpoint()
        if self.metrics is not None:
            self.metrics.close()
        self.log(f"stopped after step {self.step} (run.stop_after); continue with "
                 f"thrifty train --resume {self.run_dir}")
        return None

    def _strategy_label(self) -> str:
        s = self.cfg.strategy
        if s.name == "ddp" and s.ddp_hook != "none":
            return f"ddp+{s.ddp_hook}" + (f"(rank {s.powersgd_rank})" if s.ddp_hook == "powersgd" else "")
        if s.name == "diloco":
            return f"diloco(H={s.inner_steps}" + (f", {s.quantize})" if s.quantize != "none" else ")")
        return s.name

    def _record_step(self, loss: float, tokens: int, seconds: float, sent: int) -> None:
        tps = tokens / seconds if seconds > 0 else 0.0
        mfu = (
            self.flops_per_token * tps / (self.peak_per_worker * self.w.world_size)
            if self.peak_per_worker
            else None
        )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.metrics is not None:
            self.metrics.write({
                "event": "train", "step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                "tokens_per_s": tps, "flops_per_token": self.flops_per_token, "mfu": mfu,
                "bytes_sent": sent, "bytes_sent_cum": self.strategy.counter.bytes_sent,
                "wall_s": self.prior_wall + wall_clock() - self.started,
                "cpu_s": self.prior_cpu + cpu_seconds(),
            })
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} {tps:,.0f} tok/s")
        else:
            mfu_text = f" | MFU {mfu:.1%}" if mfu is not None else ""
            self.log(
                f"step {self.step:>5}/{self.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{tps:,.0f} tok/s{mfu_text} | sent {fmt_bytes(self.strategy.counter.bytes_sent)}"
            )

    def _record_eval(self) -> None:
        self.val_loss = self.evaluate()
        if self.metrics is not None:
            self.metrics.write({"event": "val", "step": self.step, "tokens": self.tokens,
                                "val_loss": self.val_loss})
        self.log(f"step {self.step:>5}/{self.cfg.max_steps} | val loss {self.val_loss:.4f}")

    # ---- checkpoints ----------------------------------------------------------------------------

    def _shared_state(self, cpu_total: float) -> dict:
        with self.strategy.eval_weights():
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state = {
            "step": self.step, "tokens": self.tokens, "config": to_dict(self.cfg),
            "corpus": self.corpus_fingerprint, "world_size": self.w.world_size,
            "bytes_before": self.bytes_before,
            "weights": weights, "sampler": self.sampler.state_dict(),
            "strategy": self.strategy.shared_state_dict(), "aux": self.aux.state_dict(),
            "progress": {"wall_s": self.prior_wall + wall_clock() - self.started,
                         "train_s": self.prior_train + self.train_time,
                         "cpu_s": cpu_total},
            "last_loss": self.last_loss,
        }
        if self.strategy.replicated_model:
            state["model"] = self.model.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _local_state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.w.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.w.device)
        state = {"rng": rng, "strategy": self.strategy.local_state_dict()}
        if not self.strategy.replicated_model:
            state["model"] = self.model.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def save_checkpoint(self) -> None:
        final = ckpt.checkpoint_dir(self.run_dir, self.step)
        if final.exists():  # resumed from the end of the run: nothing new to write
            self.last_checkpoint = final
            return
        partial = ckpt.partial_dir(self.run_dir, self.step)
        cpu_total = self._sum([cpu_seconds()])[0] + self.prior_cpu
        if self.w.is_main:
            ckpt.prune(self.run_dir, keep=self.cfg.run.keep_checkpoints)
            partial.mkdir(parents=True)
        self._barrier()
        files = {}
        if self.w.is_main:
            files["shared.pt"] = ckpt.save_file(partial, "shared.pt", self._shared_state(cpu_total),
                                                compress=self.cfg.run.compress_checkpoints)
        files[f"rank{self.w.rank}.pt"] = ckpt.save_file(partial, f"rank{self.w.rank}.pt", self._local_state(),
                                                        compress=self.cfg.run.compress_checkpoints)
        gathered = self._gather(files)
        if self.w.is_main:
            manifest = {name: entry for part in gathered for name, entry in part.items()}
            ckpt.publish(partial, final, self.step, self.w.world_size, manifest)
            ckpt.prune(self.run_dir, keep=self.cfg.run.keep_checkpoints)
        self._barrier()
        self.last_checkpoint = final

    def _resume(self, which: Path | str) -> Path | None:
        chosen = [None]
        if self.w.is_main:
            chosen = [ckpt.latest_valid(self.run_dir) if which == "latest" else str(which)]
        if self.w.distributed and self.w.world_size > 1:
            dist.broadcast_object_list(chosen, src=0)
        path = chosen[0]
        if path is None:
            return None
        path = Path(path)
        meta = ckpt.read_meta(path)
        before = meta["world_size"]
        resized = before != self.w.world_size
        held = self.strategy.per_worker_state(self.cfg.strategy)
        if resized and held:
            raise ThriftyError(
                f"checkpoint {path} holds per-worker {held} (world size {before}); resume it "
                f"with {before} workers"
            )
        shared = ckpt.load_file(path, "shared.pt", self.w.device)
        # On another number of workers the model, optimizer and sampler (all global) carry over
        # as they are; each worker's file holds only its random state, drawn afresh below.
        local = None if resized else ckpt.load_file(path, f"rank{self.w.rank}.pt", self.w.device)
        if shared["corpus"] != self.corpus_fingerprint:
            raise ThriftyError(f"checkpoint {path} was trained on a different corpus")
        if shared["config"]["model"] != to_dict(self.cfg)["model"]:
            raise ThriftyError(f"checkpoint {path} holds a different model shape than the config")
        if shared["config"]["strategy"]["name"] != self.cfg.strategy.name:
            raise ThriftyError(f"checkpoint {path} was written by strategy "
                               f"{shared['config']['strategy']['name']}, not {self.cfg.strategy.name}")
        owner = shared if self.strategy.replicated_model else local
        self.model.load_state_dict(owner["model"])
        self.optimizer.load_state_dict(owner["optimizer"])
        self.strategy.load_state_dict(shared["strategy"], local["strategy"] if local else {})
        self.aux.load_state_dict(shared["aux"])
        self.sampler.load_state_dict(shared["sampler"])
        self.step, self.tokens = int(shared["step"]), int(shared["tokens"])
        self.resumed_at = {"step": self.step, "tokens": self.tokens,
                           "bytes_sent_cum": sum(shared["strategy"]["counter"]["bytes_by_op"].values())}
        if local is None:
            torch.manual_seed(self.cfg.train.seed + 1 + self.w.rank + 7919 * self.step)
        else:
            torch.set_rng_state(local["rng"]["cpu"].cpu())
            if "cuda" in local["rng"] and self.w.device.type == "cuda":
                torch.cuda.set_rng_state(local["rng"]["cuda"].cpu(), self.w.device)
        # Bytes are counted per worker; what workers before a resize sent is kept apart so the
        # run's total stays right.
        self.bytes_before = int(shared.get("bytes_before", 0))
        if resized:
            sent = self.resumed_at["bytes_sent_cum"]  # per worker so far
            self.bytes_before += sent * before - sent * self.w.world_size
            self.resized_from = before
        self.last_loss = shared["last_loss"]
        p = shared["progress"]
        self.prior_wall, self.prior_train, self.prior_cpu = p["wall_s"], p["train_s"], p["cpu_s"]
        return path

    # ---- the summary ----------------------------------------------------------------------------

    def _summary(self) -> dict:
        counter = self.strategy.counter
        cpu_total = self._sum([cpu_seconds()])[0] + self.prior_cpu
        rss = max(self._gather(peak_rss_bytes()))
        train_s = self.prior_train + self.train_time
        tps = self.tokens / train_s if train_s else 0.0
        plain = self.strategy.plain_allreduce_bytes_per_step() * self.step
        mfu = (
            self.flops_per_token * tps / (self.peak_per_worker * self.w.world_size)
            if self.peak_per_worker
            else None
        )
        return {
            "run_dir": str(self.run_dir),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": to_dict(self.cfg),
            "strategy": self._strategy_label(),
            "world_size": self.w.world_size,
            "device": self.w.device.type,
            "parameters": self.model.num_params(non_embedding=False),
            "steps": self.step,
            "tokens": self.tokens,
            "wall_s": self.prior_wall + wall_clock() - self.started,
            "train_s": train_s,
            "cpu_s": cpu_total,
            "cpu_s_before_resume": self.prior_cpu,
            "peak_rss_bytes": rss,
            "tokens_per_s": tps,
            "flops_per_token": self.flops_per_token,
            "flops": self.flops_per_token * self.tokens,
            "peak_flops_per_worker": self.peak_per_worker,
            "peak_flops_method": self.peak_method,
            "mfu": mfu,
            "bytes_sent_per_worker": counter.bytes_sent,
            "bytes_sent_total": counter.bytes_sent * self.w.world_size + self.bytes_before,
            "bytes_by_op": counter.bytes_by_op,
            "calls_by_op": counter.calls_by_op,
            "syncs": counter.syncs,
            "plain_allreduce_bytes_per_worker": plain if self.w.world_size > 1 else 0,
            "aux_bytes_per_worker": self.aux.bytes_sent,
            "final_train_loss": self.last_loss,
            "final_val_loss": self.val_loss,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "restarts": self.restarts,
        }


def format_summary(s: dict) -> str:
    """The human-readable end-of-run summary."""
    mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a"
    plain = s["plain_allreduce_bytes_per_worker"]
    saving = (
        f" ({plain / s['bytes_sent_per_worker']:.1f}x less than plain all-reduce)"
        if plain and s["bytes_sent_per_worker"] and plain > 1.05 * s["bytes_sent_per_worker"]
        else ""
    )
    rows = [
        ("run", s["run_dir"]),
        ("strategy", f"{s['strategy']} on {s['world_size']} x {s['device']}"),
        ("tokens", f"{s['tokens']:,} in {plural(s['steps'], 'step')}"),
        ("throughput", f"{s['tokens_per_s']:,.0f} tokens/s"),
        ("MFU", f"{mfu} ({s['peak_flops_method']})"),
        ("loss", f"train {s['final_train_loss']:.4f}, val {s['final_val_loss']:.4f}"),
        ("communicated", f"{fmt_bytes(s['bytes_sent_per_worker'])} per worker in "
                         f"{plural(s['syncs'], 'sync')}{saving}"),
        ("compute", f"{s['cpu_s']:,.1f} CPU-seconds, {s['flops'] / 1e12:,.2f} TFLOP"),
        ("peak memory", f"{fmt_bytes(s['peak_rss_bytes'])} per worker (max RSS)"),
        ("wall time", f"{s['wall_s']:,.1f} s"
         + (f", {plural(s['restarts'], 'restart')}" if s["restarts"] else "")),
        ("checkpoint", s["checkpoint"] or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
