"""``thrifty sample CHECKPOINT``: see what a training run learned."""

from __future__ import annotations

import argparse

import torch

from thrifty.errors import ThriftyError
from thrifty.train.sample import generate, load_model


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="thrifty sample", description="Generate text from a training checkpoint."
    )
    parser.add_argument("checkpoint", help="checkpoint directory, or a run directory (newest)")
    parser.add_argument("--prompt", default="def ", help="text to continue (default: 'def ')")
    parser.add_argument("--tokens", type=int, default=300, help="bytes to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 samples greedily")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.tokens < 0 or args.temperature < 0:
        raise ThriftyError("--tokens and --temperature must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ThriftyError("--device cuda: no CUDA device is available")
    model = load_model(args.checkpoint, torch.device(args.device))
    text = generate(model, args.prompt, args.tokens, args.temperature, args.top_k or None, args.seed)
    print(text)
    return 0
