"""Load the published weights of a checkpoint and generate text from them."""

from __future__ import annotations

from pathlib import Path

import torch

from thrifty import config as config_lib
from thrifty.errors import ThriftyError
from thrifty.train import checkpoint as ckpt
from thrifty.train.config import ModelConfig
from thrifty.train.model import GPT


def resolve(path: Path) -> Path:
    """A checkpoint directory, or a run directory (its newest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise ThriftyError(f"no such checkpoint or run directory: {path}")
    if (path / "meta.json").exists():
        return path
    latest = ckpt.latest_valid(path)
    if latest is None:
        raise ThriftyError(f"{path} is neither a checkpoint nor a run directory with one")
    return latest


def load_model(path: Path, device: torch.device) -> GPT:
    shared = ckpt.load_file(resolve(path), "shared.pt", device)
    model_cfg = config_lib.from_dict(ModelConfig, shared["config"]["model"])
    model = GPT(model_cfg).to(device)
    model.load_state_dict(shared["weights"])
    return model.eval()


def generate(model: GPT, prompt: str, tokens: int, temperature: float, top_k: int | None,
             seed: int) -> str:
    data = prompt.encode() or b"\n"
    device = next(model.parameters()).device
    idx = torch.tensor([list(data)], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=gen)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
