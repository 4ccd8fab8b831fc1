"""Analytic estimates for training, inference and communication at any scale.

Every figure is a formula over public facts (the model's shape, the accelerator's data sheet,
the price book) and says so: estimates are labelled as estimates wherever they are shown.

Sources of the formulas:
- training FLOPs per token 6N + 12·L·H·Q·T (Chowdhery et al. 2022, PaLM, appendix B), N the
  parameters in matrix multiplies, H·Q the attention width, T the sequence length;
- model-state memory 2+2+12 bytes per parameter for mixed-precision Adam, sharded by ZeRO stage
  (Rajbhandari et al. 2020, ZeRO, section 3 and figure 1);
- activation memory s·b·h·(34 + 5·a·s/h) bytes per layer (Korthikanti et al. 2022, "Reducing
  activation recomputation", equation 1, no tensor parallelism); with flash attention the a·s²
  score term is not stored; with full activation checkpointing only each layer's input (2·s·b·h)
  is kept, plus one layer's activations while it is recomputed;
- ring all-reduce time 2(p-1)/p · bytes / bandwidth + 2(p-1) · latency (Patarasuk & Yuan 2009).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from thrifty.cost.prices import Accelerator, Interconnect, PriceBook
from thrifty.errors import ThriftyError


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer. ``gated_mlp``: SwiGLU (three d x d_ff matrices), else GELU (two)."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    vocab: int
    seq_len: int
    gated_mlp: bool = True
    tied_embeddings: bool = False
    learned_positions: bool = False
    tokens: float | None = None  # the published training-token count, for presets
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def attn_width(self) -> int:
        return self.n_head * self.head_dim

    def layer_matmul_params(self) -> int:
        d, kv = self.d_model, self.n_kv_head * self.head_dim
        attention = d * self.attn_width * 2 + d * kv * 2  # q, o and k, v
        mlp = (3 if self.gated_mlp else 2) * d * self.d_ff
        return attention + mlp

    def matmul_params(self) -> int:
        """Parameters that take part in matrix multiplies: the layers and the output head."""
        return self.n_layer * self.layer_matmul_params() + self.vocab * self.d_model

    def params(self) -> int:
        d = self.d_model
        embeddings = self.vocab * d * (1 if self.tied_embeddings else 2)
        positions = self.seq_len * d if self.learned_positions else 0
        norms = (2 * self.n_layer + 1) * d
        return self.n_layer * self.layer_matmul_params() + embeddings + positions + norms

    def train_flops_per_token(self) -> float:
        return 6 * self.matmul_params() + 12 * self.n_layer * self.attn_width * self.seq_len

    def kv_bytes_per_token(self, bytes_per_value: float = 2) -> float:
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_value


# Public architecture facts. Llama: the model cards and papers (Touvron et al. 2023, Llama 2,
# table 1 and the released configs; Dubey et al. 2024, The Llama 3 herd of models, table 3).
# GPT-3: Brown et al. 2020, table 2.1 (300B training tokens, section 2.2).
_LLAMA2 = dict(vocab=32000, seq_len=4096, tokens=2e12,
               source="Touvron et al. 2023 (Llama 2), table 1; released config")
_LLAMA31 = dict(vocab=128256, seq_len=8192, tokens=15e12,
                source="Dubey et al. 2024 (Llama 3), table 3; model card: 15T+ tokens")
PRESETS: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("gpt3-175b", 96, 12288, 96, 96, 4 * 12288, 50257, 2048, gated_mlp=False,
              tied_embeddings=True, learned_positions=True, tokens=300e9,
              source="Brown et al. 2020, table 2.1"),
        Shape("llama2-7b", 32, 4096, 32, 32, 11008, **_LLAMA2),
        Shape("llama2-13b", 40, 5120, 40, 40, 13824, **_LLAMA2),
        Shape("llama2-70b", 80, 8192, 64, 8, 28672, **_LLAMA2),
        Shape("llama3.1-8b", 32, 4096, 32, 8, 14336, **_LLAMA31),
        Shape("llama3.1-70b", 80, 8192, 64, 8, 28672, **_LLAMA31),
        Shape("llama3.1-405b", 126, 16384, 128, 8, 53248, **{
            **_LLAMA31, "tokens": 15.6e12,
            "source": "Dubey et al. 2024 (Llama 3), table 3 and section 3.3: 15.6T tokens"}),
    ]
}


def preset(name: str) -> Shape:
    if name not in PRESETS:
        raise ThriftyError(f"unknown model {name!r}; presets: {', '.join(PRESETS)} "
                           f"(or give a custom shape with --layers/--d-model/...)")
    return PRESETS[name]


# ---- training ----------------------------------------------------------------------------------------


def model_state_bytes(params: float, zero_stage: int, shards: int) -> dict:
    """Weights (bf16), gradients (bf16) and Adam state (fp32 master, m, v) per accelerator."""
    if zero_stage not in (0, 1, 2, 3):
        raise ThriftyError(f"--zero must be 0, 1, 2 or 3, not {zero_stage}")
    weights, grads, optimizer = 2 * params, 2 * params, 12 * params
    return {
        "weights": weights / shards if zero_stage >= 3 else weights,
        "gradients": grads / shards if zero_stage >= 2 else grads,
        "optimizer": optimizer / shards if zero_stage >= 1 else optimizer,
    }


def activation_bytes(shape: Shape, micro_batch: int, checkpointing: bool, flash: bool = True) -> float:
    s, b, h, a = shape.seq_len, micro_batch, shape.d_model, shape.n_head
    per_layer = s * b * h * (34 + (0 if flash else 5 * a * s / h))
    if checkpointing:
        return shape.n_layer * 2 * s * b * h + per_layer
    return shape.n_layer * per_layer


def train(shape: Shape, tokens: float, acc: Accelerator, count: int, book: PriceBook, *,
          mfu: float | None = None, region: str | None = None, zero_stage: int = 0,
          micro_batch: int = 1, checkpointing: bool = False, flash: bool = True) -> dict:
    if count < 1:
        raise ThriftyError("--count must be at least 1")
    mfu = book.mfu if mfu is None else mfu
    if not 0 < mfu <= 1:
        raise ThriftyError(f"--mfu must be in (0, 1], not {mfu}")
    peak = acc.need("bf16_tflops") * 1e12
    flops_per_token = shape.train_flops_per_token()
    flops = flops_per_token * tokens
    acc_hours = flops / (peak * mfu) / 3600
    states = model_state_bytes(shape.params(), zero_stage, count)
    activations = activation_bytes(shape, micro_batch, checkpointing, flash)
    per_device = sum(states.values()) + activations
    options = [
        {"zero_stage": stage, "activation_checkpointing": ckpt,
         "total": sum(model_state_bytes(shape.params(), stage, count).values())
                  + activation_bytes(shape, micro_batch, ckpt, flash)}
        for stage in (0, 1, 2, 3) for ckpt in (False, True)
    ]
    out = {
        "model": shape.name, "params": shape.params(), "matmul_params": shape.matmul_params(),
        "tokens": tokens, "flops_per_token": flops_per_token, "flops": flops,
        "accelerator": acc.key, "count": count, "mfu": mfu,
        "accelerator_hours": acc_hours, "wall_hours": acc_hours / count,
        "memory_per_accelerator": {**states, "activations": activations, "total": per_device},
        "memory_fits": None if acc.memory_gb is None else per_device <= acc.memory_gb * 1e9,
        "memory_options": options,
        "zero_stage": zero_stage, "activation_checkpointing": checkpointing, "micro_batch": micro_batch,
        "checkpoint_bytes": {"weights_bf16": 2 * shape.params(),
                             "training_state": 14 * shape.params()},
        "method": "6N + 12·L·H·Q·T FLOPs per token (PaLM appendix B) at the given MFU",
    }
    out.update(_energy_money(acc, acc_hours, book, region))
    return out


def energy_kwh(acc: Accelerator, acc_hours: float, pue: float) -> float:
    """Accelerator-hours at the data-sheet TDP, times the data centre's PUE (an upper bound)."""
    return acc_hours * acc.need("tdp_w") / 1000 * pue


def _energy_money(acc: Accelerator, acc_hours: float, book: PriceBook, region: str | None) -> dict:
    out = {}
    if acc.tdp_w is not None:
        kwh = energy_kwh(acc, acc_hours, book.pue)
        out["energy_kwh"] = kwh
        out["co2_tonnes"] = kwh * book.carbon_g_per_kwh(region) / 1e6
    else:
        out["energy_kwh"] = out["co2_tonnes"] = None
    out["usd"] = acc_hours * acc.usd_per_hour if acc.usd_per_hour is not None else None
    out["pue"], out["carbon_g_per_kwh"] = book.pue, book.carbon_g_per_kwh(region)
    return out


# ---- inference ---------------------------------------------------------------------------------------


def inference(shape: Shape, acc: Accelerator, count: int, book: PriceBook, *, batch: int = 1,
              context: int | None = None, mfu: float | None = None, bytes_per_param: float = 2,
              kv_bytes_per_value: float = 2) -> dict:
    """Decode-step costs. Each step reads every weight once and the whole KV cache of the batch
    (memory-bound floor), and does ``batch`` tokens of work (compute-bound floor)."""
    if batch < 1 or count < 1:
        raise ThriftyError("--batch and --count must be at least 1")
    context = context or shape.seq_len
    mfu = book.mfu if mfu is None else mfu
    bandwidth = acc.need("memory_bandwidth_gbs") * 1e9 * count
    compute = acc.need("bf16_tflops") * 1e12 * count * mfu
    weights = shape.params() * bytes_per_param
    kv = shape.kv_bytes_per_token(kv_bytes_per_value)
    flops = 2 * shape.matmul_params() + 4 * shape.n_layer * shape.attn_width * context

    def step_s(b: int) -> tuple[float, float]:
        return (weights + b * context * kv) / bandwidth, b * flops / compute

    mem_s, compute_s = step_s(batch)
    step = max(mem_s, compute_s)
    tokens_per_s = batch / step
    # memory time = compute time: W/bw + b·c·K/bw = b·F/C
    denominator = flops / compute - context * kv / bandwidth
    crossover = (weights / bandwidth) / denominator if denominator > 0 else None
    memory = weights + batch * context * kv
    usd = acc.usd_per_hour
    return {
        "model": shape.name, "accelerator": acc.key, "count": count, "batch": batch,
        "context": context, "mfu": mfu,
        "flops_per_token": flops, "kv_cache_bytes_per_token": kv, "weights_bytes": weights,
        "memory_bytes": memory,
        "memory_fits": None if acc.memory_gb is None else memory <= acc.memory_gb * 1e9 * count,
        "decode_latency_floor_s": step_s(1)[0], "step_s": step,
        "bound": "memory" if mem_s >= compute_s else "compute",
        "tokens_per_s": tokens_per_s,
        "compute_bound_tokens_per_s": compute / flops,
        "crossover_batch": crossover,
        "usd_per_million_tokens": count * usd / (tokens_per_s * 3600) * 1e6 if usd is not None else None,
        "method": "per decode step: max(bytes read / memory bandwidth, FLOPs / (peak x MFU))",
    }


# ---- communication -----------------------------------------------------------------------------------


def allreduce_seconds(nbytes: float, workers: int, link: Interconnect) -> float:
    if workers <= 1:
        return 0.0
    p = workers
    return 2 * (p - 1) / p * nbytes / link.bytes_per_s + 2 * (p - 1) * link.latency_us * 1e-6


SYNC_BYTES = {"ddp": 2, "diloco": 4}  # bf16 gradients every step; fp32 pseudo-gradients
QUANT_BYTES = {"none": None, "fp16": 2, "bf16": 2, "int8": 1}


def communication(params: float, workers: int, link: Interconnect, *, steps: int,
                  step_compute_s: float, inner_steps: int = 100, quantize: str = "none",
                  usd_per_worker_hour: float | None = None) -> dict:
    """DDP (an all-reduce of bf16 gradients every step) against DiLoCo (an all-reduce of the
    pseudo-gradient every ``inner_steps`` steps), with no overlap of compute and communication."""
    if quantize not in QUANT_BYTES:
        raise ThriftyError(f"--quantize must be one of {', '.join(QUANT_BYTES)}")
    rows = {}
    for name, every in (("ddp", 1), ("diloco", inner_steps)):
        width = SYNC_BYTES[name] if name == "ddp" or quantize == "none" else QUANT_BYTES[quantize]
        nbytes = params * width
        sync_s = allreduce_seconds(nbytes, workers, link)
        syncs = steps // every
        comm_s = syncs * sync_s
        wall_s = steps * step_compute_s + comm_s
        rows[name] = {
            "sync_every": every, "bytes_per_sync": nbytes, "sync_s": sync_s, "syncs": syncs,
            "comm_s": comm_s, "wall_s": wall_s, "comm_fraction": comm_s / wall_s if wall_s else 0.0,
            "usd": wall_s / 3600 * workers * usd_per_worker_hour if usd_per_worker_hour is not None else None,
        }
    return {"params": params, "workers": workers, "interconnect": link.key, "steps": steps,
            "step_compute_s": step_compute_s, "strategies": rows,
            "method": "ring all-reduce 2(p-1)/p·bytes/bandwidth + 2(p-1)·latency, no overlap"}


# ---- projecting a measured run -----------------------------------------------------------------------


def project(run: dict, acc: Accelerator, count: int, link: Interconnect, book: PriceBook, *,
            mfu: float | None = None, region: str | None = None) -> dict:
    """What a measured training run would take and cost on ``count`` x ``acc`` joined by
    ``link``: its FLOPs at the given MFU, its measured synchronisations over the link."""
    from thrifty.cost.charges import charges
    from thrifty.cost.meter import Usage

    info, usage = run["info"], Usage.from_dict(run["usage"])
    if run["kind"] != "train":
        raise ThriftyError(f"run {run['id']} is a {run['kind']} run; only training runs can be projected")
    if "flops" not in info:
        raise ThriftyError(f"run {run['id']} has no training summary (it ended {run.get('status')}); "
                           "project a run that finished")
    mfu = book.mfu if mfu is None else mfu
    peak = acc.need("bf16_tflops") * 1e12
    compute_s = info["flops"] / (count * peak * mfu)
    syncs = info.get("syncs") or 0
    per_sync = info["bytes_sent_per_worker"] / syncs if syncs else 0.0
    comm_s = syncs * allreduce_seconds(per_sync, count, link)
    wall_s = compute_s + comm_s
    projected = replace(
        usage, wall_s=wall_s, cpu_s=0.0, accelerator_s={acc.key: wall_s * count},
        energy_kwh=wall_s * count * acc.need("tdp_w") / 3.6e6,
        energy_method=f"estimate: {acc.key}-seconds x TDP", bytes_communicated=int(per_sync * syncs * count),
        machines=max(1, -(-count // 8)),
    )
    return {
        "run": run["id"], "accelerator": acc.key, "count": count, "interconnect": link.key, "mfu": mfu,
        "flops": info["flops"], "compute_s": compute_s, "comm_s": comm_s, "wall_s": wall_s,
        "syncs": syncs, "bytes_per_sync_per_worker": per_sync,
        "usage": asdict(projected), "charges": charges(projected, book, region),
        "method": "measured FLOPs at the given MFU + measured syncs over the link (ring all-reduce); "
                  "8 accelerators per machine",
    }
