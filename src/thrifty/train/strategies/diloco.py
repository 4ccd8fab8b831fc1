"""``diloco``: local steps, then an outer Nesterov step on the averaged pseudo-gradient.

DiLoCo (Douillard et al., 2023, arXiv:2311.08105): every worker takes H inner AdamW steps on its
own data; then the workers average the pseudo-gradient ``global - local`` and apply it to the
global weights with SGD + Nesterov momentum (paper: lr 0.7, momentum 0.9), and every worker starts
the next round from the new global weights. One all-reduce every H steps instead of every step.

The pseudo-gradient can be sent as fp16 (half the bytes) or int8 with one fp32 scale per block of
``INT8_BLOCK`` values (about a quarter). int8 values cannot be summed in int8 without overflow,
so they are all-gathered and each rank averages the dequantised copies, identically on all ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from thrifty.train.config import StrategyConfig
from thrifty.train.strategies.base import Strategy

INT8_BLOCK = 4096


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-block int8: values in [-127, 127] and one fp32 scale per block."""
    pad = (-x.numel()) % INT8_BLOCK
    blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, INT8_BLOCK)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
    return (blocks / scale).round_().to(torch.int8), scale.squeeze(1)


def _flatten(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def _assign(vector: torch.Tensor, params: list[nn.Parameter]) -> None:
    # Copy, never alias: torch's vector_to_parameters would make the parameters views of the
    # vector, and the inner optimizer would then write into the global weights.
    offset = 0
    for p in params:
        p.copy_(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, numel: int) -> torch.Tensor:
    return (q.float() * scale.unsqueeze(1)).view(-1)[:numel]


class DiLoCo(Strategy):
    name = "diloco"
    replicated_model = False  # workers drift apart between synchronisations

    def __init__(self, cfg: StrategyConfig, model: nn.Module, world_size: int, device: torch.device):
        super().__init__(cfg, model, world_size, device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The global weights, kept in fp32 as one flat vector; every rank holds the same copy.
        self.global_weights = _flatten(self.params).clone().requires_grad_(True)
        self.global_weights.grad = torch.zeros_like(self.global_weights)
        self.outer = torch.optim.SGD(
            [self.global_weights],
            lr=cfg.outer_lr,
            momentum=cfg.outer_momentum,
            nesterov=cfg.outer_momentum > 0,
        )
        self.steps_since_sync = 0

    def after_step(self) -> None:
        self.steps_since_sync += 1
        if self.steps_since_sync == self.cfg.inner_steps:
            self.sync()

    def finish(self) -> None:
        if self.steps_since_sync:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        delta = self.global_weights - _flatten(self.params)
        self.global_weights.grad.copy_(self._average(delta))
        self.outer.step()
        _assign(self.global_weights, self.params)
        self.steps_since_sync = 0
        self.counter.syncs += 1

    def _average(self, delta: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return delta
        if self.cfg.quantize == "int8":
            q, scale = quantize_int8(delta)
            qs = [torch.empty_like(q) for _ in range(self.world_size)]
            ss = [torch.empty_like(scale) for _ in range(self.world_size)]
            self.counter.add("all_gather", q)
            dist.all_gather(qs, q)
            self.counter.add("all_gather", scale)
            dist.all_gather(ss, scale)
            parts = [dequantize_int8(qi, si, delta.numel()) for qi, si in zip(qs, ss, strict=True)]
            return torch.stack(parts).mean(dim=0)
        if self.cfg.quantize == "fp16":
            # Divide before the sum so the fp16 sum of N workers cannot overflow.
            wire = (delta / self.world_size).to(torch.float16)
            self.counter.add("all_reduce", wire)
            dist.all_reduce(wire)
            return wire.float()
        wire = delta.clone()
        self.counter.add("all_reduce", wire)
        dist.all_reduce(wire)
        return wire.div_(self.world_size)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        # Between synchronisations each worker holds its own drifted copy; what the run has
        # produced is the global weights.
        if not self.steps_since_sync:
            yield
            return
        local = _flatten(self.params)
        _assign(self.global_weights, self.params)
        try:
            yield
        finally:
            _assign(local, self.params)

    @staticmethod
    def per_worker_state(cfg: StrategyConfig) -> str | None:
        return "inner optimizer state and drifted weights"

    def shared_state_dict(self) -> dict:
        return {
            **super().shared_state_dict(),
            "global_weights": self.global_weights.detach(),
            "outer": self.outer.state_dict(),
            "steps_since_sync": self.steps_since_sync,
        }

    def load_state_dict(self, shared: dict, local: dict) -> None:
        super().load_state_dict(shared, local)
        with torch.no_grad():
            self.global_weights.copy_(shared["global_weights"])
        self.outer.load_state_dict(shared["outer"])
        self.steps_since_sync = int(shared["steps_since_sync"])
