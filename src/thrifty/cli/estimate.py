"""``thrifty estimate``: plan training, inference and communication before a cent is spent."""

from __future__ import annotations

import argparse
import json

from thrifty.cost import estimate as est
from thrifty.cost import prices as prices_lib
from thrifty.errors import ThriftyError
from thrifty.report.terminal import (
    fmt_bytes,
    fmt_co2,
    fmt_count,
    fmt_energy,
    fmt_seconds,
    fmt_usd,
    plural,
    table,
)

EPILOG = """
examples:
  thrifty estimate train --model llama3.1-8b --accelerator h100-sxm --count 1024
  thrifty estimate train --model llama2-70b --tokens 2e12 --zero 3 --checkpointing --json
  thrifty estimate inference --model llama2-70b --accelerator h100-sxm --count 2 --batch 16
  thrifty estimate comm --model llama2-7b --workers 64 --interconnect 100gbe --inner-steps 500
  thrifty estimate project 12 --accelerator h100-sxm --count 64 --interconnect ib-ndr
"""


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _common(p: argparse.ArgumentParser, accelerator: bool = True) -> None:
    p.add_argument("--prices", metavar="FILE", help="a price file laid over the shipped one")
    p.add_argument("--region", help="grid region for CO2 (default: the price book's, 'world')")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    if accelerator:
        p.add_argument("--accelerator", default="h100-sxm", help="price-book key (default h100-sxm)")
        p.add_argument("--count", type=int, default=8, help="number of accelerators (default 8)")
        p.add_argument("--mfu", type=_number, help="model FLOPs utilisation (default: price book, 0.40)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a preset, or a custom shape)")
    g.add_argument("--model", help=f"preset: {', '.join(est.PRESETS)}")
    for flag in ("layers", "d-model", "heads", "kv-heads", "d-ff", "vocab", "seq-len"):
        g.add_argument(f"--{flag}", type=int)
    g.add_argument("--gelu", action="store_true", help="two-matrix GELU MLP instead of SwiGLU")


def _shape(args) -> est.Shape:
    custom = {k: getattr(args, k) for k in ("layers", "d_model", "heads", "kv_heads", "d_ff", "vocab",
                                             "seq_len")}
    if args.model:
        shape = est.preset(args.model)
        changes = {"n_layer": custom["layers"], "d_model": custom["d_model"], "n_head": custom["heads"],
                   "n_kv_head": custom["kv_heads"], "d_ff": custom["d_ff"], "vocab": custom["vocab"],
                   "seq_len": custom["seq_len"]}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            from dataclasses import replace

            shape = replace(shape, name=f"{shape.name} (modified)", **changes)
        return shape
    missing = [f"--{k.replace('_', '-')}" for k in ("layers", "d_model", "heads") if custom[k] is None]
    if missing:
        raise ThriftyError(f"give --model PRESET or a custom shape (missing {', '.join(missing)})")
    d = custom["d_model"]
    return est.Shape("custom", custom["layers"], d, custom["heads"], custom["kv_heads"] or custom["heads"],
                     custom["d_ff"] or (4 * d if args.gelu else int(8 * d / 3)), custom["vocab"] or 50257,
                     custom["seq_len"] or 2048, gated_mlp=not args.gelu)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thrifty estimate", description="Analytic estimates from public facts and the price book.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True, metavar="{train,inference,comm,project}")
    t = sub.add_parser("train", help="FLOPs, accelerator-hours, wall time, energy, CO2, money, memory")
    _model_args(t)
    _common(t)
    t.add_argument("--tokens", type=_number, help="training tokens (default: the preset's published count)")
    t.add_argument("--zero", type=int, default=0, help="ZeRO stage 0-3 (3 = FSDP full sharding)")
    t.add_argument("--micro-batch", type=int, default=1, help="sequences per accelerator per step")
    t.add_argument("--checkpointing", action="store_true", help="full activation checkpointing")
    t.add_argument("--no-flash", action="store_true", help="attention scores stored (no flash attention)")

    i = sub.add_parser("inference", help="KV cache, latency floor, throughput, $ per million tokens")
    _model_args(i)
    _common(i)
    i.add_argument("--batch", type=int, default=1)
    i.add_argument("--context", type=int, help="tokens in context (default: the model's)")
    i.add_argument("--bytes-per-param", type=_number, default=2, help="2 = bf16, 1 = int8 weights")

    c = sub.add_parser("comm", help="time and cost of synchronising: ddp every step vs diloco every H")
    _model_args(c)
    _common(c)
    c.add_argument("--workers", type=int, help="data-parallel workers (default: --count)")
    c.add_argument("--interconnect", default="100gbe", help="price-book key (default 100gbe)")
    c.add_argument("--tokens", type=_number, help="training tokens (default: the preset's)")
    c.add_argument("--batch-tokens", type=_number, default=4e6, help="global batch in tokens (default 4M)")
    c.add_argument("--inner-steps", type=int, default=500, help="DiLoCo H (default 500)")
    c.add_argument("--quantize", default="none", help="DiLoCo pseudo-gradient: none, fp16, int8")

    j = sub.add_parser("project", help="a measured run projected onto a target cluster")
    j.add_argument("run", help="run id, uid prefix or run directory (see thrifty runs)")
    j.add_argument("--ledger", metavar="FILE")
    j.add_argument("--interconnect", default="ib-ndr")
    _common(j)
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    book = prices_lib.load(args.prices)
    acc = book.accelerator(args.accelerator)
    if args.what == "train":
        shape = _shape(args)
        tokens = args.tokens if args.tokens is not None else shape.tokens
        if tokens is None:
            raise ThriftyError("--tokens is needed for a custom shape")
        result = est.train(shape, tokens, acc, args.count, book, mfu=args.mfu, region=args.region,
                           zero_stage=args.zero, micro_batch=args.micro_batch,
                           checkpointing=args.checkpointing, flash=not args.no_flash)
        text = _train_text(result)
    elif args.what == "inference":
        shape = _shape(args)
        result = est.inference(shape, acc, args.count, book, batch=args.batch, context=args.context,
                               mfu=args.mfu, bytes_per_param=args.bytes_per_param)
        text = _inference_text(result)
    elif args.what == "comm":
        shape = _shape(args)
        workers = args.workers or args.count
        tokens = args.tokens if args.tokens is not None else shape.tokens
        if tokens is None:
            raise ThriftyError("--tokens is needed for a custom shape")
        steps = max(1, int(tokens // args.batch_tokens))
        mfu = book.mfu if args.mfu is None else args.mfu
        peak = workers * acc.need("bf16_tflops") * 1e12 * mfu
        step_s = args.batch_tokens * shape.train_flops_per_token() / peak
        result = est.communication(shape.matmul_params(), workers, book.interconnect(args.interconnect),
                                   steps=steps, step_compute_s=step_s, inner_steps=args.inner_steps,
                                   quantize=args.quantize, usd_per_worker_hour=acc.usd_per_hour)
        result.update(model=shape.name, accelerator=acc.key)
        text = _comm_text(result)
    else:
        from thrifty.cost.ledger import open_ledger

        ledger = open_ledger(args.ledger)
        result = est.project(ledger.get(args.run), acc, args.count, book.interconnect(args.interconnect),
                             book, mfu=args.mfu, region=args.region)
        text = _project_text(result)
    print(json.dumps(result, indent=1) if args.json else text)
    return 0


def _train_text(r: dict) -> str:
    m = r["memory_per_accelerator"]
    fits = {True: "fits", False: "does NOT fit", None: "capacity unknown"}[r["memory_fits"]]
    rows = [
        ("model", f"{r['model']}: {fmt_count(r['params'])} parameters, {fmt_count(r['tokens'])} tokens"),
        ("FLOPs", f"{r['flops']:.3g} ({r['flops_per_token']:.3g} per token)"),
        ("accelerator-hours", f"{r['accelerator_hours']:,.4g} {r['accelerator']} at {r['mfu']:.0%} MFU"),
        ("wall time", f"{fmt_seconds(r['wall_hours'] * 3600)} on {r['count']:,}"),
        ("energy", "unknown (no TDP)" if r["energy_kwh"] is None else
         f"{fmt_energy(r['energy_kwh'])} (TDP x hours x PUE {r['pue']:g})"),
        ("CO2", "unknown" if r["co2_tonnes"] is None else
         f"{fmt_co2(r['co2_tonnes'] * 1000)} at {r['carbon_g_per_kwh']:g} g/kWh"),
        ("money", fmt_usd(r["usd"]) + " on demand"),
        ("memory/accelerator", f"{fmt_bytes(m['total'])} ({fits}): weights {fmt_bytes(m['weights'])}, "
                               f"grads {fmt_bytes(m['gradients'])}, optimizer {fmt_bytes(m['optimizer'])}, "
                               f"activations {fmt_bytes(m['activations'])}; ZeRO {r['zero_stage']}"
                               + (", checkpointing" if r["activation_checkpointing"] else "")),
        ("checkpoint", f"{fmt_bytes(r['checkpoint_bytes']['weights_bf16'])} weights (bf16), "
                       f"{fmt_bytes(r['checkpoint_bytes']['training_state'])} with optimizer state"),
    ]
    memory = {(o["zero_stage"], o["activation_checkpointing"]): o["total"] for o in r["memory_options"]}
    grid = [(f"ZeRO {stage}" + (" (FSDP)" if stage == 3 else ""), fmt_bytes(memory[stage, False]),
             fmt_bytes(memory[stage, True])) for stage in range(4)]
    return ("estimate (training)\n" + table(rows) + "\n\nmemory per accelerator, "
            f"{r['count']:,}-way sharding, micro-batch {r['micro_batch']}\n"
            + table(grid, ("", "no checkpointing", "activation checkpointing"))
            + f"\nmethod: {r['method']}")


def _inference_text(r: dict) -> str:
    cross = "never: KV-cache reads grow faster than compute" if r["crossover_batch"] is None \
        else f"{r['crossover_batch']:,.0f} sequences"
    fits = {True: "fits", False: "does NOT fit", None: "capacity unknown"}[r["memory_fits"]]
    rows = [
        ("model", f"{r['model']} on {r['count']} x {r['accelerator']}, batch {r['batch']}, "
                  f"context {r['context']:,}"),
        ("FLOPs per token", f"{r['flops_per_token']:.3g}"),
        ("KV cache", f"{fmt_bytes(r['kv_cache_bytes_per_token'])} per token"),
        ("memory", f"{fmt_bytes(r['memory_bytes'])} ({fits}): weights {fmt_bytes(r['weights_bytes'])}"),
        ("decode latency floor", f"{r['decode_latency_floor_s'] * 1000:.2f} ms per token at batch 1 "
                                 "(memory bandwidth)"),
        ("this batch", f"{r['step_s'] * 1000:.2f} ms per step, {r['tokens_per_s']:,.0f} tokens/s, "
                       f"{r['bound']}-bound"),
        ("compute-bound ceiling", f"{r['compute_bound_tokens_per_s']:,.0f} tokens/s"),
        ("turns compute-bound at", cross),
        ("money", f"{fmt_usd(r['usd_per_million_tokens'])} per million tokens"),
    ]
    return "estimate (inference)\n" + table(rows) + f"\nmethod: {r['method']}"


def _comm_text(r: dict) -> str:
    head = ("strategy", "sync every", "bytes/sync", "time/sync", "syncs", "comm time", "wall", "comm %",
            "cost")
    rows = []
    for name, s in r["strategies"].items():
        rows.append((name, plural(s['sync_every'], 'step'), fmt_bytes(s["bytes_per_sync"]),
                     fmt_seconds(s["sync_s"]), f"{s['syncs']:,}", fmt_seconds(s["comm_s"]),
                     fmt_seconds(s["wall_s"]), f"{s['comm_fraction']:.1%}", fmt_usd(s["usd"])))
    title = (f"estimate (communication): {r['model']}, {r['workers']} x {r['accelerator']} over "
             f"{r['interconnect']}, {r['steps']:,} steps of {fmt_seconds(r['step_compute_s'])} compute")
    return title + "\n" + table(rows, head) + f"\nmethod: {r['method']}"


def _project_text(r: dict) -> str:
    head = ("driver", "money", "energy", "CO2", "basis")
    rows = [(d, fmt_usd(c["usd"]), fmt_energy(c["kwh"]), fmt_co2(c["kg_co2"]), c.get("basis", ""))
            for d, c in r["charges"].items()]
    title = (f"run {r['run']} projected onto {r['count']} x {r['accelerator']} over {r['interconnect']} at "
             f"{r['mfu']:.0%} MFU: compute {fmt_seconds(r['compute_s'])} + communication "
             f"{fmt_seconds(r['comm_s'])} ({r['syncs']} syncs) = {fmt_seconds(r['wall_s'])}")
    return title + "\n" + table(rows, head) + f"\nmethod: {r['method']}"
