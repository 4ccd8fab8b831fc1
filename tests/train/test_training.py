"""End-to-end training runs through the real CLI, on 1 and 2 CPU worker processes (gloo).

Every claim about the strategies is checked against the ``single`` reference or against each
other, under a fixed seed, in fp32 on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import final_weights, losses, summary, train_tiny
from thrifty.train.strategies.diloco import INT8_BLOCK

pytestmark = pytest.mark.slow

STEPS = 12
BUDGET = [f"--train.tokens={STEPS * 8 * 32}"]  # 8 sequences x 32 tokens per step


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        diff = (a[name] - b[name]).abs().max().item()
        assert diff <= atol, f"{name}: max difference {diff:.3g} > {atol}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference runs several tests compare against, trained once per session."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, nproc, extra in [
        ("single", 1, ["--strategy.name=single"]),
        ("ddp", 2, []),
        ("diloco4", 2, ["--strategy.name=diloco", "--strategy.inner_steps=4"]),
    ]:
        train_tiny(base / name, *BUDGET, *extra, nproc=nproc)
        out[name] = base / name
    return out


def test_ddp_on_two_workers_matches_single_process(runs):
    single, ddp = losses(runs["single"]), losses(runs["ddp"])
    assert len(single) == len(ddp) == STEPS
    for a, b in zip(single, ddp, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert_weights_close(final_weights(runs["single"]), final_weights(runs["ddp"]), atol=1e-5)
    assert single[-1] < single[0] - 0.5  # and it learns


def test_diloco_with_one_inner_sgd_step_is_ddp_with_sgd(tmp_path):
    sgd = ["--train.optimizer=sgd", "--train.lr=0.1", "--train.schedule=constant",
           "--train.warmup_steps=0", "--train.grad_clip=0"]
    train_tiny(tmp_path / "ddp", *BUDGET, *sgd, nproc=2)
    train_tiny(tmp_path / "diloco", *BUDGET, *sgd, "--strategy.name=diloco",
               "--strategy.inner_steps=1", "--strategy.outer_lr=1.0",
               "--strategy.outer_momentum=0", nproc=2)
    assert_weights_close(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "diloco"), 1e-5)
    for a, b in zip(losses(tmp_path / "ddp"), losses(tmp_path / "diloco"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_diloco_communicates_once_every_h_steps(runs):
    ddp, diloco = summary(runs["ddp"]), summary(runs["diloco4"])
    assert ddp["steps"] == diloco["steps"] == STEPS
    assert ddp["syncs"] == STEPS and diloco["syncs"] == STEPS // 4
    # Both send every parameter in fp32 per sync, so the bytes are exactly 1/H.
    reduced = ddp["bytes_by_op"]["all_reduce"]
    assert diloco["bytes_sent_per_worker"] * 4 == reduced == ddp["plain_allreduce_bytes_per_worker"]
    # DDP starts by broadcasting rank 0's weights (every parameter, fp32), which counts too.
    assert ddp["bytes_by_op"]["broadcast"] == reduced // STEPS and ddp["calls_by_op"]["broadcast"] == 1
    assert ddp["bytes_sent_per_worker"] == reduced + reduced // STEPS


@pytest.mark.parametrize("quantize, wire_bytes", [
    ("fp16", lambda n: 2 * n),
    ("int8", lambda n: n + math.ceil(n / INT8_BLOCK) * INT8_BLOCK // INT8_BLOCK * 4 + (-n) % INT8_BLOCK),
])
def test_diloco_quantized_pseudo_gradient(runs, tmp_path, quantize, wire_bytes):
    train_tiny(tmp_path, *BUDGET, "--strategy.name=diloco", "--strategy.inner_steps=4",
               f"--strategy.quantize={quantize}", nproc=2)
    s, full = summary(tmp_path), summary(runs["diloco4"])
    numel = full["bytes_sent_per_worker"] // (4 * full["syncs"])
    assert s["bytes_sent_per_worker"] == s["syncs"] * wire_bytes(numel)
    # Quantization error on the pseudo-gradient barely moves the result at this scale.
    assert s["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=0.02)


@pytest.mark.parametrize("hook", ["fp16", "powersgd"])
def test_ddp_hooks_send_fewer_bytes_and_still_learn(runs, tmp_path, hook):
    train_tiny(tmp_path, *BUDGET, f"--strategy.ddp_hook={hook}", "--strategy.powersgd_rank=1",
               nproc=2)
    s, plain = summary(tmp_path), summary(runs["ddp"])
    reduced, plain_reduced = s["bytes_by_op"]["all_reduce"], plain["bytes_by_op"]["all_reduce"]
    assert reduced < plain_reduced * (0.51 if hook == "fp16" else 0.5)
    assert s["final_val_loss"] == pytest.approx(plain["final_val_loss"], rel=0.05)


@pytest.mark.parametrize("strategy", [
    ["--strategy.name=single"],
    ["--strategy.name=ddp"],
    ["--strategy.name=ddp", "--strategy.ddp_hook=powersgd", "--strategy.powersgd_rank=2"],
    ["--strategy.name=diloco", "--strategy.inner_steps=4"],  # stops mid-round, at step 5
], ids=["single", "ddp", "powersgd", "diloco"])
def test_stop_and_resume_gives_the_same_weights(tmp_path, strategy):
    nproc = 1 if "single" in strategy[0] else 2
    train_tiny(tmp_path / "whole", *BUDGET, *strategy, nproc=nproc)
    proc = train_tiny(tmp_path / "parts", *BUDGET, *strategy, "--run.stop_after=5", nproc=nproc)
    assert "stopped after step 5" in proc.stdout
    assert not (tmp_path / "parts" / "run.json").exists()
    from tests.conftest import thrifty

    thrifty("train", "--resume", str(tmp_path / "parts"), "--run.stop_after=0", "--nproc", str(nproc))
    whole, parts = final_weights(tmp_path / "whole"), final_weights(tmp_path / "parts")
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    assert losses(tmp_path / "whole") == losses(tmp_path / "parts")
    assert summary(tmp_path / "parts")["steps"] == STEPS


def test_resume_on_another_number_of_workers(runs, tmp_path):
    """A ddp checkpoint holds nothing of any one worker's own, so it resumes on another number of
    workers: the global batch and the data order are the same, and so is the arithmetic."""
    from tests.conftest import thrifty

    train_tiny(tmp_path, *BUDGET, "--run.stop_after=5", nproc=2)
    proc = thrifty("train", "--resume", str(tmp_path), "--run.stop_after=0", "--nproc", "1")
    assert "at step 5, written by 2 workers" in proc.stdout
    assert_weights_close(final_weights(runs["ddp"]), final_weights(tmp_path), atol=1e-5)
    for a, b in zip(losses(runs["ddp"]), losses(tmp_path), strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    # Bytes: two workers' worth up to step 5, then one worker's.
    from thrifty.train import checkpoint

    at5 = checkpoint.load_file(tmp_path / "checkpoints" / "step_00000005", "shared.pt")
    before = sum(at5["strategy"]["counter"]["bytes_by_op"].values())
    s = summary(tmp_path)
    assert s["world_size"] == 1 and s["steps"] == STEPS
    assert s["bytes_sent_total"] == 2 * before + (s["bytes_sent_per_worker"] - before)
    assert s["bytes_sent_per_worker"] == before  # a group of one sends nothing
    assert s["syncs"] == at5["strategy"]["counter"]["syncs"] == 5  # and syncs with nobody


@pytest.mark.parametrize("strategy, held", [
    (["--strategy.name=diloco", "--strategy.inner_steps=4"], "inner optimizer state and drifted weights"),
    (["--strategy.ddp_hook=powersgd", "--strategy.powersgd_rank=1"], "PowerSGD error feedback"),
], ids=["diloco", "powersgd"])
def test_per_worker_state_resumes_only_on_as_many_workers(tmp_path, strategy, held):
    from tests.conftest import assert_one_line_error, thrifty

    train_tiny(tmp_path, *BUDGET, *strategy, "--run.stop_after=4", nproc=2)
    proc = thrifty("train", "--resume", str(tmp_path), "--nproc", "1", check=False)
    assert_one_line_error(proc, f"holds per-worker {held} (world size 2)", "--nproc 2")


# Run in a fresh interpreter: torch._dynamo must not be imported yet, as in a real worker.
_LEAVES = """
import gc, sys, weakref
from pathlib import Path
import torch.distributed as dist
from thrifty import config
from thrifty.train import worker
from thrifty.train.config import TrainConfig

groups = []
real_init = dist.init_process_group
def init(*args, **kwargs):
    real_init(*args, **kwargs)
    groups.append(weakref.ref(dist.group.WORLD))
dist.init_process_group = init

cfg = config.load(TrainConfig, None, config.parse_overrides(sys.argv[2:]))
worker.train(cfg, Path(sys.argv[1]), None)
gc.collect()
assert len(groups) == 1 and groups[0]() is None, "the process group outlived the run"
"""


@pytest.mark.parametrize("strategy", [
    ["--strategy.name=ddp"],
    ["--strategy.name=ddp", "--strategy.ddp_hook=powersgd", "--strategy.powersgd_rank=2"],
    ["--strategy.name=diloco", "--strategy.inner_steps=2"],
], ids=["ddp", "powersgd", "diloco"])
def test_the_process_group_is_freed_when_training_ends(tmp_path, strategy):
    # Anything that keeps the group alive keeps gloo's threads running into the interpreter's
    # teardown, where a worker can die of SIGABRT after a finished run (seen in CI). Here the
    # group is one process (no launcher), which holds the same references.
    import subprocess
    import sys

    from tests.conftest import TINY

    proc = subprocess.run(
        [sys.executable, "-c", _LEAVES, str(tmp_path / "run"), *TINY, "--train.tokens=1024",
         *strategy], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
