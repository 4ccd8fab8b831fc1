import pytest

from thrifty.cost import estimate as est
from thrifty.cost import prices
from thrifty.cost.published import checks
from thrifty.errors import ThriftyError

BOOK = prices.load(use_user_file=False)


def test_estimator_matches_published_figures_within_stated_tolerance():
    rows = checks(BOOK)
    assert sum(c.checked for c in rows) >= 15
    for c in rows:
        if c.checked:
            assert c.ok, f"{c.what}: {c.estimate:.4g} vs published {c.published:.4g} ({c.error:+.1%})"


def test_training_estimate_is_consistent_with_itself():
    shape, acc = est.preset("llama2-7b"), BOOK.accelerator("a100-80gb")
    one = est.train(shape, 1e12, acc, 64, BOOK, mfu=0.5)
    two = est.train(shape, 2e12, acc, 128, BOOK, mfu=0.5)
    assert two["flops"] == pytest.approx(2 * one["flops"])
    assert two["accelerator_hours"] == pytest.approx(2 * one["accelerator_hours"])
    assert two["wall_hours"] == pytest.approx(one["wall_hours"])  # twice the work on twice the GPUs
    assert one["accelerator_hours"] == pytest.approx(one["flops"] / (312e12 * 0.5) / 3600)
    assert one["usd"] == pytest.approx(one["accelerator_hours"] * 1.50)
    assert one["energy_kwh"] == pytest.approx(one["accelerator_hours"] * 0.4 * 1.56)
    assert one["co2_tonnes"] == pytest.approx(one["energy_kwh"] * 480 / 1e6)
    assert one["checkpoint_bytes"]["weights_bf16"] == 2 * shape.params()


def test_memory_sharding_and_activation_checkpointing():
    shape, acc = est.preset("llama2-70b"), BOOK.accelerator("h100-sxm")
    plain = est.train(shape, 1e9, acc, 512, BOOK)["memory_per_accelerator"]
    zero3 = est.train(shape, 1e9, acc, 512, BOOK, zero_stage=3, checkpointing=True)
    m3 = zero3["memory_per_accelerator"]
    assert plain["weights"] + plain["gradients"] + plain["optimizer"] == 16 * shape.params()
    assert m3["weights"] + m3["gradients"] + m3["optimizer"] == pytest.approx(16 * shape.params() / 512)
    assert m3["activations"] < plain["activations"] / 10
    assert zero3["memory_fits"] is True
    options = {(o["zero_stage"], o["activation_checkpointing"]): o["total"] for o in zero3["memory_options"]}
    assert options[3, True] == pytest.approx(m3["total"])
    assert options[0, False] > options[1, False] > options[2, False] > options[3, False] > options[3, True]
    assert est.train(shape, 1e9, acc, 512, BOOK)["memory_fits"] is False
    with pytest.raises(ThriftyError, match="--zero"):
        est.train(shape, 1e9, acc, 8, BOOK, zero_stage=4)


def test_inference_kv_cache_latency_floor_and_crossover():
    acc = BOOK.accelerator("h100-sxm")
    r = est.inference(est.preset("llama2-70b"), acc, 2, BOOK, batch=1, context=4096)
    assert r["kv_cache_bytes_per_token"] == 2 * 80 * 8 * 128 * 2  # grouped-query attention: 8 KV heads
    assert est.preset("llama2-7b").kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2
    assert r["decode_latency_floor_s"] == pytest.approx(
        (r["weights_bytes"] + 4096 * r["kv_cache_bytes_per_token"]) / (2 * 3350e9))
    # short context: the KV reads are small, so a big enough batch becomes compute-bound
    short = est.inference(est.preset("llama3.1-8b"), acc, 1, BOOK, batch=1, context=128)
    b = short["crossover_batch"]
    assert b is not None and b > 1
    below = est.inference(est.preset("llama3.1-8b"), acc, 1, BOOK, batch=int(b * 0.8), context=128)
    above = est.inference(est.preset("llama3.1-8b"), acc, 1, BOOK, batch=int(b * 1.25) + 1, context=128)
    assert below["bound"] == "memory" and above["bound"] == "compute"
    assert above["usd_per_million_tokens"] < short["usd_per_million_tokens"]


def test_communication_model_ddp_against_diloco():
    link = BOOK.interconnect("10gbe")
    assert est.allreduce_seconds(1e9, 1, link) == 0
    assert est.allreduce_seconds(1e9, 2, link) == pytest.approx(2 * 0.5 * 1e9 / 1.25e9 + 2 * 20e-6)
    r = est.communication(7e9, 64, link, steps=1000, step_compute_s=2.0, inner_steps=100)
    ddp, diloco = r["strategies"]["ddp"], r["strategies"]["diloco"]
    assert ddp["syncs"] == 1000 and diloco["syncs"] == 10
    assert diloco["bytes_per_sync"] == 2 * ddp["bytes_per_sync"]  # fp32 pseudo-gradient vs bf16 gradients
    assert diloco["comm_s"] == pytest.approx(ddp["comm_s"] / 50, rel=1e-3)  # latency is not doubled
    assert diloco["wall_s"] < ddp["wall_s"]
    q = est.communication(7e9, 64, link, steps=1000, step_compute_s=2.0, inner_steps=100, quantize="int8")
    assert q["strategies"]["diloco"]["bytes_per_sync"] == 7e9


def test_projecting_a_measured_run():
    run = {"id": 3, "kind": "train", "usage": {"wall_s": 100.0, "bytes_written_stored": 10**9},
           "info": {"flops": 1e18, "syncs": 100, "bytes_sent_per_worker": 100 * 4e8}}
    acc, link = BOOK.accelerator("h100-sxm"), BOOK.interconnect("ib-ndr")
    p = est.project(run, acc, 16, link, BOOK, mfu=0.5)
    assert p["compute_s"] == pytest.approx(1e18 / (16 * 989e12 * 0.5))
    assert p["comm_s"] == pytest.approx(100 * est.allreduce_seconds(4e8, 16, link))
    assert p["charges"]["compute"]["usd"] == pytest.approx(p["wall_s"] * 16 / 3600 * 3.00)
    assert p["charges"]["storage"]["usd"] == pytest.approx(0.023)
    assert p["usage"]["machines"] == 2
    with pytest.raises(ThriftyError, match="only training runs"):
        est.project({"id": 1, "kind": "compress", "usage": {}, "info": {}}, acc, 1, link, BOOK)
    with pytest.raises(ThriftyError, match="no training summary .it ended stopped"):
        stopped = {"id": 2, "kind": "train", "status": "stopped", "usage": {}, "info": {}}
        est.project(stopped, acc, 1, link, BOOK)
