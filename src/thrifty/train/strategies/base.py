"""The interface every parameter-update strategy implements, and the byte counter they share.

The training loop calls a strategy at four points of a step::

    with strategy.accumulating(): loss.backward()   # micro-steps before the last
    strategy.backward(loss)                          # the last micro-step: gradients sync here
    optimizer.step()
    strategy.after_step()                            # periodic synchronisation happens here

and ``strategy.finish()`` once after the last step. Each strategy counts the bytes it hands
to collectives where it hands them, never from a formula.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from thrifty.train.config import StrategyConfig


@dataclass
class CommCounter:
    """Bytes this rank handed to collectives, by collective, and how many synchronisations."""

    bytes_by_op: dict[str, int] = field(default_factory=dict)
    calls_by_op: dict[str, int] = field(default_factory=dict)
    syncs: int = 0

    def add(self, op: str, tensor: torch.Tensor) -> None:
        self.add_bytes(op, tensor.numel() * tensor.element_size())

    def add_bytes(self, op: str, nbytes: int) -> None:
        self.bytes_by_op[op] = self.bytes_by_op.get(op, 0) + nbytes
        self.calls_by_op[op] = self.calls_by_op.get(op, 0) + 1

    @property
    def calls(self) -> int:
        return sum(self.calls_by_op.values())

    @property
    def bytes_sent(self) -> int:
        return sum(self.bytes_by_op.values())

    def state_dict(self) -> dict:
        return {"bytes_by_op": dict(self.bytes_by_op), "calls_by_op": dict(self.calls_by_op),
                "syncs": self.syncs}

    def load_state_dict(self, state: dict) -> None:
        self.bytes_by_op = dict(state["bytes_by_op"])
        self.calls_by_op = dict(state["calls_by_op"])
        self.syncs = int(state["syncs"])


@contextlib.contextmanager
def counting_all_reduce(counter: CommCounter) -> Iterator[None]:
    """Count every ``torch.distributed.all_reduce`` made inside the block.

    DDP's communication hooks (torch's own allreduce, fp16, bf16 and PowerSGD hooks) call
    ``dist.all_reduce`` from the autograd thread, some from future callbacks; all of them have
    completed when ``backward()`` returns. Wrapping the module function for the duration of the
    backward pass counts exactly the tensors they hand over, without copying torch's hooks.
    """
    original = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        counter.add("all_reduce", tensor)
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        yield
    finally:
        dist.all_reduce = original


class Strategy:
    """Base class: a strategy owns the module the loop runs forward on, and its sync state."""

    name = "base"
    #: True when every rank holds identical weights and optimizer state after each step, so a
    #: checkpoint needs them from one rank only.
    replicated_model = True

    def __init__(self, cfg: StrategyConfig, model: nn.Module, world_size: int, device: torch.device):
        self.cfg, self.model, self.world_size, self.device = cfg, model, world_size, device
        self.counter = CommCounter()

    @property
    def module(self) -> nn.Module:
        """The module to call forward on (a DDP wrapper, or the model itself)."""
        return self.model

    def accumulating(self) -> contextlib.AbstractContextManager:
        """Context for backward passes whose gradients are accumulated, not yet synchronised."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def finish(self) -> None:
        """Called after the last step, before the final evaluation and checkpoint."""

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """Context in which ``self.model`` holds the weights to evaluate and publish."""
        return contextlib.nullcontext()

    def plain_allreduce_bytes_per_step(self) -> int:
        """What plain fp32 all-reduce of every gradient would hand over per step: the baseline
        the savings are quoted against."""
        return sum(p.numel() * 4 for p in self.model.parameters() if p.requires_grad)

    # Checkpointing: state the same on every rank, and state of this rank only.
    def shared_state_dict(self) -> dict:
        return {"counter": self.counter.state_dict()}

    def local_state_dict(self) -> dict:
        return {}

    @staticmethod
    def per_worker_state(cfg: StrategyConfig) -> str | None:
        """What each worker holds of its own that another number of workers could not take
        over exactly (None: nothing, so a checkpoint resumes on any number of workers)."""
        return None

    def load_state_dict(self, shared: dict, local: dict) -> None:
        self.counter.load_state_dict(shared["counter"])
