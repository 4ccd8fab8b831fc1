"""``ddp``: DistributedDataParallel, gradients all-reduced every step, optionally compressed.

The hooks are torch's own: plain all-reduce, fp16 or bf16 compression, and PowerSGD of a given
rank with error feedback and warm start (Vogels et al., 2019).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn.parallel import DistributedDataParallel

from thrifty.train.config import StrategyConfig
from thrifty.train.strategies.base import Strategy, counting_all_reduce

_POWERSGD_STATE = ("error_dict", "p_memory_dict", "q_memory_dict", "iter",
                   "total_numel_before_compression", "total_numel_after_compression")


class DDP(Strategy):
    name = "ddp"

    def __init__(self, cfg: StrategyConfig, model: nn.Module, world_size: int, device: torch.device):
        super().__init__(cfg, model, world_size, device)
        powersgd = cfg.ddp_hook == "powersgd"
        options = {}
        if powersgd:
            # PowerSGD chains several all-reduces per bucket through future callbacks, which run
            # on other threads: with two buckets in flight, ranks can issue them in different
            # orders and the collectives mismatch. One bucket keeps each step's collectives in
            # a single chain (PowerSGD's traffic is small, so losing overlap costs little).
            grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            options["bucket_cap_mb"] = grad_bytes / 2**20 + 1
            # With one bucket, DDP's re-bucketing after the first step (in the order gradients
            # become ready) yields the same layout as the initial one for this model, so the
            # error feedback PowerSGD keeps per bucket lines up again after a resume; the resume
            # test checks it. (find_unused_parameters would also stop the re-bucketing, but it
            # adds a collective of its own that races PowerSGD's callbacks.)
        self.ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **options
        )
        self.powersgd: psgd.PowerSGDState | None = None
        if powersgd:
            self.powersgd = psgd.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=cfg.powersgd_rank,
                start_powerSGD_iter=cfg.powersgd_start,
                min_compression_rate=2,
                use_error_feedback=True,
                warm_start=True,
                compression_stats_logging_frequency=1 << 62,  # torch logs at INFO otherwise
            )
            self.ddp.register_comm_hook(self.powersgd, psgd.powerSGD_hook)
        else:
            hook = {
                "none": default_hooks.allreduce_hook,
                "fp16": default_hooks.fp16_compress_hook,
                "bf16": default_hooks.bf16_compress_hook,
            }[cfg.ddp_hook]
            self.ddp.register_comm_hook(None, hook)

    @property
    def module(self) -> nn.Module:
        return self.ddp

    def accumulating(self) -> contextlib.AbstractContextManager:
        # Gradients of micro-steps before the last are summed locally: syncing them would send
        # the same bytes several times per step for nothing.
        return self.ddp.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        with counting_all_reduce(self.counter):
            loss.backward()
        self.counter.syncs += 1

    def local_state_dict(self) -> dict:
        if self.powersgd is None:
            return {}
        state = {name: getattr(self.powersgd, name) for name in _POWERSGD_STATE}
        # PowerSGD draws its random projections from a NumPy generator: resume it exactly.
        kind, keys, pos, has_gauss, cached = self.powersgd.rng.get_state()
        state["rng"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}
        return {"powersgd": state}

    def load_state_dict(self, shared: dict, local: dict) -> None:
        super().load_state_dict(shared, local)
        if self.powersgd is None:
            return
        state = dict(local["powersgd"])
        rng = state.pop("rng")
        for name, value in state.items():
            setattr(self.powersgd, name, value)
        self.powersgd.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"],
                                     rng["has_gauss"], rng["cached"]))
