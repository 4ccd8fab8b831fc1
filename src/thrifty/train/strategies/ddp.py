"""``ddp``: DistributedDataParallel, gradients all-reduced every step, optionally compressed.

The hooks are torch's own: plain all-reduce, fp16 or bf16 compression, and PowerSGD of a given
rank with error feedback and warm start (Vogels et al., 2019).
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn.parallel import DistributedDataParallel

from thrifty.train.config import StrategyConfig
from thrifty.train.strategies.base import Strategy, counting_all_reduce

_POWERSGD_STATE = ("iter", "total_numel_before_compression", "total_numel_after_compression")


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
        self._count_initial_broadcast()
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
            self.names = {p.data_ptr(): n for n, p in model.named_parameters()}
            self.shapes = {n: p.shape for n, p in model.named_parameters()}
            self.layout: list[str] | None = None  # parameter order of the flat PowerSGD state
            self.pending: dict | None = None  # per-parameter state loaded from a checkpoint
            # The reducer (C++) holds the hook where the garbage collector cannot see it: a bound
            # method would keep this strategy, its DDP module and so the process group alive for
            # good, and destroy_process_group could not stop gloo's threads before exit.
            method = weakref.WeakMethod(self._powersgd_hook)
            self.ddp.register_comm_hook(self.powersgd, lambda state, bucket: method()(state, bucket))
        else:
            hook = {
                "none": default_hooks.allreduce_hook,
                "fp16": default_hooks.fp16_compress_hook,
                "bf16": default_hooks.bf16_compress_hook,
            }[cfg.ddp_hook]
            self.ddp.register_comm_hook(None, hook)

    def _count_initial_broadcast(self) -> None:
        # DDP's constructor broadcasts rank 0's parameters and buffers to the others (coalesced,
        # through torch internals rather than dist.broadcast): counted here as one broadcast, on
        # every start, a resumed one included.
        if self.world_size > 1:
            self.counter.add_bytes("broadcast", sum(
                t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers())))

    @property
    def module(self) -> nn.Module:
        return self.ddp

    def accumulating(self) -> contextlib.AbstractContextManager:
        # Gradients of micro-steps before the last are summed locally: syncing them would send
        # the same bytes several times per step for nothing.
        return self.ddp.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        if self.world_size == 1:  # DDP still calls all-reduce on a group of one: nothing is sent
            loss.backward()
            return
        with counting_all_reduce(self.counter):
            loss.backward()
        self.counter.syncs += 1

    # PowerSGD keeps its error feedback and warm-start factors as one flat tensor per bucket, in
    # the bucket's parameter order. DDP builds its first bucket in registration order and
    # rebuilds it after one step in the order gradients become ready, so a resumed run sees a
    # different order for one step. PowerSGD's arithmetic is per tensor, so the state is saved
    # per parameter and laid out again in whatever order the bucket has when it is used.

    def _powersgd_hook(self, state: psgd.PowerSGDState, bucket):
        layout = [self.names[p.data_ptr()] for p in bucket.parameters()]
        if self.pending is not None:
            self._assemble(self.pending, layout)
            self.pending = None
        elif self.layout is not None and layout != self.layout and state.error_dict:
            self._assemble(self._split(self.layout), layout)
        self.layout = layout
        return psgd.powerSGD_hook(state, bucket)

    def _slices(self, layout: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
        """Offsets of each parameter's error, P and Q within the flat tensors for ``layout``."""
        rank, rate = self.powersgd.matrix_approximation_rank, self.powersgd.min_compression_rate
        out, offset, by_shape = {}, 0, {}
        for name in layout:
            shape = self.shapes[name]
            numel = shape.numel()
            out[name] = {"error": (offset, numel)}
            offset += numel
            n, m = shape[0], numel // shape[0]
            if psgd._should_compress(n, m, min(n, m, rank), rate)[0]:
                by_shape.setdefault((n, m), []).append(name)
        # P and Q are laid out grouped by matrix shape, in order of each shape's first appearance.
        p_off = q_off = 0
        for (n, m), names in by_shape.items():
            r = min(n, m, rank)
            for name in names:
                out[name]["p"], out[name]["q"] = (p_off, n * r), (q_off, m * r)
                p_off, q_off = p_off + n * r, q_off + m * r
        return out

    def _split(self, layout: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        state, slices = self.powersgd, self._slices(layout)
        flat = {"error": state.error_dict.get(0), "p": state.p_memory_dict.get(0),
                "q": state.q_memory_dict.get(0)}
        return {
            name: {key: flat[key][o : o + n].clone() for key, (o, n) in parts.items()
                   if flat[key] is not None}
            for name, parts in slices.items()
        }

    def _assemble(self, per_param: dict[str, dict[str, torch.Tensor]], layout: list[str]) -> None:
        state, slices = self.powersgd, self._slices(layout)
        for key, store in (("error", state.error_dict), ("p", state.p_memory_dict),
                           ("q", state.q_memory_dict)):
            pieces = sorted((parts[key][0], per_param[name][key])
                            for name, parts in slices.items() if key in per_param.get(name, {}))
            if pieces:
                store[0] = torch.cat([t for _, t in pieces])

    @staticmethod
    def per_worker_state(cfg: StrategyConfig) -> str | None:
        return "PowerSGD error feedback" if cfg.ddp_hook == "powersgd" else None

    def local_state_dict(self) -> dict:
        if self.powersgd is None:
            return {}
        if self.pending is not None:
            per_param = self.pending
        elif self.layout is not None and self.powersgd.error_dict:
            per_param = self._split(self.layout)
        else:
            per_param = {}
        state = {name: getattr(self.powersgd, name) for name in _POWERSGD_STATE}
        state["per_param"] = per_param
        # PowerSGD draws its random projections from a NumPy generator: resume it exactly.
        kind, keys, pos, has_gauss, cached = self.powersgd.rng.get_state()
        state["rng"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}
        return {"powersgd": state}

    def load_state_dict(self, shared: dict, local: dict) -> None:
        super().load_state_dict(shared, local)
        self._count_initial_broadcast()  # this start's, on top of the counts restored
        if self.powersgd is None:
            return
        state = dict(local["powersgd"])
        rng = state.pop("rng")
        self.pending = state.pop("per_param") or None
        for name, value in state.items():
            setattr(self.powersgd, name, value)
        self.powersgd.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"],
                                     rng["has_gauss"], rng["cached"]))
