"""Parameter-update strategies, one file each, behind :class:`Strategy`."""

from __future__ import annotations

import torch
import torch.nn as nn

from thrifty.train.config import StrategyConfig
from thrifty.train.strategies.base import CommCounter, Strategy
from thrifty.train.strategies.ddp import DDP
from thrifty.train.strategies.diloco import DiLoCo
from thrifty.train.strategies.single import Single

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Single, DDP, DiLoCo)}


def build(cfg: StrategyConfig, model: nn.Module, world_size: int, device: torch.device) -> Strategy:
    return STRATEGIES[cfg.name](cfg, model, world_size, device)


__all__ = ["STRATEGIES", "CommCounter", "Strategy", "build"]
