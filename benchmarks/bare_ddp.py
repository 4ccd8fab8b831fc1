"""A bare, hand-written DDP loop on thrifty's GPT: the throughput baseline for ``thrifty train``.

Run by benchmarks/train_strategies.py under torchrun. No metrics, no checkpoints, no hooks:
forward, backward (DDP's built-in C++ all-reduce), clip, AdamW step.
Usage: torchrun --nproc-per-node 2 benchmarks/bare_ddp.py STEPS BATCH OUT.json
"""

import json
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from thrifty.train.config import DataConfig, ModelConfig
from thrifty.train.data import Windows, load_corpus
from thrifty.train.model import GPT


def main() -> None:
    steps, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = ModelConfig()
    windows = Windows(load_corpus(DataConfig(), cfg.block_size).train, cfg.block_size, 1337)
    torch.manual_seed(1337)
    model = DistributedDataParallel(GPT(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    per_worker = batch // world
    start = time.perf_counter()
    for step in range(steps):
        x, y = windows.batch(step * batch + rank * per_worker, per_worker)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    if rank == 0:
        tokens = steps * batch * cfg.block_size
        with open(out, "w") as f:
            json.dump({"tokens_per_s": tokens / seconds, "loss": loss.item()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
