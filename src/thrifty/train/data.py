"""Byte-level training data: a text corpus split into train/validation, and a resumable sampler.

Tokens are bytes (vocabulary 256), so any text trains without a tokenizer. The default corpus is
the running Python's standard library source: real text on every machine, no download.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from thrifty.errors import ThriftyError
from thrifty.train.config import DataConfig


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _corpus_files(cfg: DataConfig) -> tuple[Path, list[Path]]:
    root = Path(cfg.corpus) if cfg.corpus else stdlib_dir()
    if not root.exists():
        raise ThriftyError(f"corpus not found: {root}")
    if root.is_file():
        return root.parent, [root]
    # The standard library directory also holds site-packages: third-party code is not stdlib.
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = sorted(
        (p for p in root.rglob(cfg.pattern) if p.is_file() and not skip & set(p.parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise ThriftyError(f"corpus {root} has no files matching {cfg.pattern!r}")
    return root, files


def check_corpus(cfg: DataConfig, block_size: int) -> None:
    """Raise the error load_corpus would, from the files' sizes alone: a launcher calls this
    before it makes a run directory or starts a worker."""
    root, files = _corpus_files(cfg)
    sizes = [p.stat().st_size + 1 for p in files]  # load_corpus ends each file with a newline
    val = sum(n for n, held in zip(sizes, _held_out_files(root, files, cfg), strict=True) if held)
    _tail_split(cfg, root, sum(sizes), val, block_size)


def _held_out_files(root: Path, files: list[Path], cfg: DataConfig) -> list[bool]:
    """Which files are validation data (a corpus of one file has its tail held out instead)."""
    return [len(files) > 1 and _held_out(p.relative_to(root).as_posix(), cfg.val_fraction)
            for p in files]


def _tail_split(cfg: DataConfig, root: Path, total: int, val: int, block_size: int) -> bool:
    """Whether the corpus's tail must be held out instead of its held-out files (``val`` of its
    ``total`` bytes), because either side lacks one window; raises when even that falls short."""
    need = block_size + 1
    if min(val, total - val) >= need:
        return False
    tail = total - int(total * (1 - cfg.val_fraction))
    if min(tail, total - tail) >= need:
        return True
    raise ThriftyError(
        f"corpus {cfg.corpus or root} is too small: {total} bytes, and block_size {block_size} "
        f"needs {_smallest(need, cfg.val_fraction)} (one window of {need} bytes each for "
        f"training and for validation, {cfg.val_fraction:g} held out)"
    )


def _held_out(rel: str, val_fraction: float) -> bool:
    # A hash of the relative path, not a random draw: the split is the same on every machine and
    # a file never moves between train and validation when others are added.
    return zlib.crc32(rel.encode()) % 10_000 < val_fraction * 10_000


def _smallest(need: int, val_fraction: float) -> int:
    """The fewest bytes whose tail split leaves ``need`` on both sides."""
    n = max(2 * need, int((need - 1) / min(val_fraction, 1 - val_fraction)) - 1)
    while int(n * (1 - val_fraction)) < need or n - int(n * (1 - val_fraction)) < need:
        n += 1
    return n


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 tokens
    val: torch.Tensor
    fingerprint: str  # blake2b of all tokens: a resumed run must see the same data
    files: int

    @property
    def bytes(self) -> int:
        return self.train.numel() + self.val.numel()


def load_corpus(cfg: DataConfig, block_size: int) -> Corpus:
    root, files = _corpus_files(cfg)
    train, val = bytearray(), bytearray()
    for path, held in zip(files, _held_out_files(root, files, cfg), strict=True):
        (val if held else train).extend(path.read_bytes() + b"\n")
    if _tail_split(cfg, root, len(train) + len(val), len(val), block_size):
        # One file, or too few held-out files: hold out the tail of the text instead.
        text = bytes(train + val)
        cut = int(len(text) * (1 - cfg.val_fraction))
        train, val = bytearray(text[:cut]), bytearray(text[cut:])
    digest = hashlib.blake2b(bytes(train), digest_size=16)
    digest.update(bytes(val))
    return Corpus(
        train=torch.frombuffer(train, dtype=torch.uint8),
        val=torch.frombuffer(val, dtype=torch.uint8),
        fingerprint=digest.hexdigest(),
        files=len(files),
    )


class Windows:
    """Non-overlapping windows of block_size+1 tokens, visited in a seeded order, epoch after epoch.

    Window ``g`` of the global stream is a pure function of (seed, g): any rank of any world size
    can compute its part of any batch without talking to the others.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, seed: int):
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.count = (tokens.numel() - 1) // block_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _window_start(self, g: int) -> int:
        epoch, i = divmod(g, self.count)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=gen)
        return int(self._order[i]) * self.block_size

    def batch(self, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for global windows first .. first+n-1."""
        rows = [self._window_start(g) for g in range(first, first + n)]
        span = self.block_size + 1
        chunk = torch.stack([self.tokens[s : s + span] for s in rows]).long()
        return chunk[:, :-1], chunk[:, 1:]


class Sampler:
    """This rank's micro-batches for each optimizer step; resumable at the exact window.

    Every step consumes ``batch_size`` windows of the global stream. Rank r takes the r-th
    contiguous share of them, so ranks read disjoint data and the global batch does not depend
    on the number of workers: one process with batch B sees what N workers see together.
    """

    def __init__(self, windows: Windows, batch_size: int, micro: int, rank: int, world_size: int):
        self.windows, self.batch_size, self.micro = windows, batch_size, micro
        self.rank, self.world_size = rank, world_size
        self.position = 0  # global windows consumed so far

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        per_worker = self.batch_size // self.world_size
        start = self.position + self.rank * per_worker
        self.position += self.batch_size
        return [self.windows.batch(s, self.micro) for s in range(start, start + per_worker, self.micro)]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def eval_batches(
    windows: Windows, batch_size: int, batches: int, micro: int, rank: int, world_size: int
):
    """This rank's share of a fixed validation set: the first ``batches`` global batches."""
    per_worker = batch_size // world_size
    for b in range(batches):
        start = b * batch_size + rank * per_worker
        for s in range(start, start + per_worker, micro):
            yield windows.batch(s, micro)
