"""The configuration of ``thrifty train``: one dataclass per section, each validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from thrifty.config import option, section
from thrifty.errors import ConfigError


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {what}")


@dataclass
class ModelConfig:
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "width of the residual stream")
    block_size: int = option(128, "context length in tokens")
    dropout: float = option(0.0, "dropout probability (0 keeps runs deterministic)")
    bias: bool = option(False, "biases in linear layers and layer norms")

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            _require(getattr(self, key) > 0, key, "must be positive")
        _require(self.n_embd % self.n_head == 0, "n_embd", "must be a multiple of n_head")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass
class DataConfig:
    corpus: str = option("", "text file or directory; empty: this Python's standard library")
    pattern: str = option("*.py", "file name pattern when corpus is a directory")
    val_fraction: float = option(0.05, "share of files held out for validation")

    def __post_init__(self) -> None:
        _require(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


@dataclass
class TrainLoopConfig:
    tokens: int = option(1_000_000, "token budget: training stops after this many tokens")
    batch_size: int = option(32, "global batch in sequences per optimizer step, all workers")
    micro_batch: int = option(0, "sequences per forward pass per worker; 0: batch_size/workers")
    optimizer: str = option("adamw", "inner optimizer", choices=("adamw", "sgd"))
    lr: float = option(2e-3, "peak learning rate")
    min_lr: float = option(2e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = option(20, "steps of linear warm-up")
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "constant"))
    weight_decay: float = option(0.1, "decoupled weight decay on matrices")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    momentum: float = option(0.0, "SGD momentum")
    grad_clip: float = option(1.0, "clip the global gradient norm; 0 disables")
    seed: int = option(1337, "seed for initialisation and data order")

    def __post_init__(self) -> None:
        _require(self.tokens > 0, "tokens", "must be positive")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(self.micro_batch >= 0, "micro_batch", "must be >= 0")
        _require(self.lr > 0, "lr", "must be positive")
        _require(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class StrategyConfig:
    name: str = option("ddp", "how workers combine updates", choices=("single", "ddp", "diloco"))
    ddp_hook: str = option(
        "none", "ddp: gradient compression hook", choices=("none", "fp16", "bf16", "powersgd")
    )
    powersgd_rank: int = option(4, "ddp: PowerSGD matrix approximation rank")
    powersgd_start: int = option(2, "ddp: plain all-reduce for this many steps before PowerSGD")
    inner_steps: int = option(50, "diloco: inner steps H between synchronisations")
    outer_lr: float = option(0.7, "diloco: outer SGD learning rate")
    outer_momentum: float = option(0.9, "diloco: outer Nesterov momentum; 0 disables")
    quantize: str = option(
        "none", "diloco: pseudo-gradient quantization", choices=("none", "fp16", "int8")
    )

    def __post_init__(self) -> None:
        _require(self.powersgd_rank > 0, "powersgd_rank", "must be positive")
        _require(self.powersgd_start >= 2, "powersgd_start", "must be >= 2 (DDP rebuilds buckets)")
        _require(self.inner_steps > 0, "inner_steps", "must be positive")
        _require(self.outer_lr > 0, "outer_lr", "must be positive")
        _require(0 <= self.outer_momentum < 1, "outer_momentum", "must be in [0, 1)")


@dataclass
class RunConfig:
    name: str = option("gpt", "run name; the run directory defaults to runs/<name>-<time>")
    dir: str = option("", "run directory for metrics and checkpoints")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    log_interval: int = option(10, "steps between log lines and metrics records")
    eval_interval: int = option(100, "steps between validation passes (and one at the end)")
    eval_batches: int = option(4, "global batches per validation pass")
    checkpoint_interval: int = option(100, "steps between checkpoints (and one at the end); 0: end")
    keep_checkpoints: int = option(2, "newest complete checkpoints kept; older ones are removed")
    compress_checkpoints: bool = option(
        True, "store checkpoint files in the thrifty container (.thz): smaller, still exact"
    )
    stop_after: int = option(
        0, "checkpoint and exit after this many steps (a time slice); 0: run to the budget"
    )

    def __post_init__(self) -> None:
        for key in ("log_interval", "eval_interval", "eval_batches", "keep_checkpoints"):
            _require(getattr(self, key) > 0, key, "must be positive")
        _require(self.checkpoint_interval >= 0, "checkpoint_interval", "must be >= 0")
        _require(self.stop_after >= 0, "stop_after", "must be >= 0")


@dataclass
class TrainConfig:
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    train: TrainLoopConfig = section(TrainLoopConfig)
    strategy: StrategyConfig = section(StrategyConfig)
    run: RunConfig = section(RunConfig)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.block_size

    @property
    def max_steps(self) -> int:
        """Optimizer steps that spend the token budget (the last one may overshoot it)."""
        return -(-self.train.tokens // self.tokens_per_step)

    def layout(self, world_size: int) -> tuple[int, int]:
        """(micro batch, accumulation steps) per worker, or ConfigError if the batch won't split."""
        batch = self.train.batch_size
        if batch % world_size:
            raise ConfigError(f"train.batch_size: {batch} does not split over {world_size} workers")
        per_worker = batch // world_size
        micro = self.train.micro_batch or per_worker
        if per_worker % micro:
            raise ConfigError(
                f"train.micro_batch: {micro} does not divide the {per_worker} sequences per worker"
            )
        return micro, per_worker // micro
