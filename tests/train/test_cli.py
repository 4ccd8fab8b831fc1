"""The command line as a newcomer meets it: errors, sampling, metrics, torchrun, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    SMALL_CORPUS,
    TINY,
    assert_one_line_error,
    final_weights,
    summary,
    thrifty,
    train_tiny,
)
from thrifty.cost import Ledger, prices
from thrifty.cost.charges import charges
from thrifty.cost.meter import Usage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    train_tiny(run, "--train.tokens=4096", "--run.checkpoint_interval=4", "--run.eval_interval=8",
               nproc=2)
    return run


@pytest.mark.parametrize("args, fragment", [
    (["--train.lrr=1"], "unknown config key train.lrr"),
    (["--model.n_layer=two"], "model.n_layer: expected int"),
    (["--strategy.name=zero"], "strategy.name: must be one of"),
    (["--data.corpus=/no/such/corpus"], "corpus not found: /no/such/corpus"),
    (["--nproc", "3"], "train.batch_size: 32 does not split over 3 workers"),
    (["--strategy.name=single", "--nproc", "2"], "single trains in one process"),
    (["no-such-config.toml"], "config file not found"),
    (["--resume", "/no/such/run"], "is not a run directory"),
    (["--model.n_layer"], "model.n_layer: missing value"),
])
def test_bad_input_is_one_line(args, fragment):
    assert_one_line_error(thrifty("train", *args, check=False), fragment)


def test_a_corpus_too_small_is_refused_before_a_run_directory_is_made(tmp_path):
    (tmp_path / "tiny.txt").write_text("hi\n")
    run = tmp_path / "run"
    proc = thrifty("train", f"--data.corpus={tmp_path / 'tiny.txt'}", f"--run.dir={run}",
                   "--nproc", "2", check=False)
    assert_one_line_error(proc, "tiny.txt is too small: 4 bytes, and block_size 128 needs 2561")
    assert not run.exists()


def test_unknown_command():
    proc = thrifty("frobnicate", check=False)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def test_help_lists_options_with_defaults():
    out = thrifty("train", "--help").stdout
    for text in ("--model.n_layer=4", "--strategy.inner_steps=50", "--nproc", "--max-restarts",
                 "--resume", "torchrun"):
        assert text in out


def test_metrics_and_summary(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 17))
    for key in ("loss", "lr", "tokens_per_s", "flops_per_token", "mfu", "bytes_sent", "wall_s",
                "cpu_s"):
        assert all(r[key] is not None for r in train), key
    assert all(0 < r["mfu"] < 1 for r in train)
    assert [r["step"] for r in records if r["event"] == "val"] == [8, 16]
    s = summary(trained)
    assert s["tokens"] == 4096 and s["steps"] == 16 and s["world_size"] == 2
    assert s["bytes_sent_total"] == 2 * s["bytes_sent_per_worker"] > 0
    assert s["peak_flops_method"].startswith("measured")
    assert Path(s["checkpoint"]).name == "step_00000016"
    # keep_checkpoints=2: older ones were pruned
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "step_00000012", "step_00000016"]


def test_training_is_metered_into_the_ledger(trained):
    s = summary(trained)
    row = Ledger(os.environ["THRIFTY_LEDGER"]).get(str(trained.resolve()))
    u = row["usage"]
    assert row["kind"] == "train" and row["status"] == "ok"
    assert u["tokens_read"] == s["tokens"] == 4096
    assert u["bytes_communicated"] == s["bytes_sent_total"] > 0
    # the launcher's children are the workers: their CPU time is all in, plus the launcher's own
    assert u["cpu_s"] >= 0.95 * s["cpu_s"]
    kept = [json.loads((d / "meta.json").read_text()) for d in (trained / "checkpoints").iterdir()]
    assert u["bytes_written_stored"] == sum(f["bytes"] for m in kept for f in m["files"].values())
    assert u["bytes_written_raw"] > u["bytes_written_stored"]  # checkpoints are compressed
    assert row["info"]["final_val_loss"] == s["final_val_loss"]
    assert row["info"]["strategy"] == "ddp" and row["info"]["world_size"] == 2
    points = [p for p in Ledger(os.environ["THRIFTY_LEDGER"]).points(row["id"]) if p["event"] == "train"]
    assert [p["step"] for p in points] == list(range(1, s["steps"] + 1))


def test_refuses_to_reuse_a_run_directory(trained):
    proc = thrifty("train", *TINY, f"--run.dir={trained}", check=False)
    assert_one_line_error(proc, "already holds checkpoints", "--resume")

def test_a_resumed_run_is_credited_for_the_checkpoints_it_prunes(tmp_path):
    """Each invocation is charged a retention period of storage for the checkpoints it leaves.
    When a resumed run prunes the ones the first part left, those bytes are a credit on its
    storage charge: the run directory's invocations together are charged for what it holds."""
    run = tmp_path / "run"
    every = ["--strategy.name=single", "--train.tokens=3072", "--run.checkpoint_interval=2",
             "--run.log_interval=3"]
    train_tiny(run, *every, "--run.stop_after=4")  # leaves step 2 and step 4
    first_kept = _stored_bytes(run)
    out = thrifty("train", "--resume", str(run), "--run.stop_after=0").stdout  # to step 12
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010", "step_00000012"]
    first, second = [r for r in Ledger(os.environ["THRIFTY_LEDGER"]).runs("train")
                     if r["run_dir"] == str(run.resolve())]
    assert first["usage"]["bytes_written_stored"] == first_kept > 0
    assert second["usage"]["bytes_removed_stored"] == first_kept
    assert second["usage"]["bytes_written_stored"] == _stored_bytes(run)
    assert "an earlier run left, removed" in out
    # the slice is logged at its last step (4, between logs at 3 and 6), so each part is charged
    # for the tokens of its own steps, 256 a step
    assert [first["usage"]["tokens_read"], second["usage"]["tokens_read"]] == [4 * 256, 8 * 256]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [3, 4, 6, 9, 12]
    book = prices.from_data(first["prices"])
    storage = [charges(Usage.from_dict(r["usage"]), book)["storage"]["usd"] for r in (first, second)]
    per_byte = book["storage"]["hot_usd_per_gb_month"] * book["storage"]["retention_months"] / 1e9
    assert storage[1] < storage[0] * _stored_bytes(run) / first_kept  # less its credit
    assert sum(storage) == pytest.approx(_stored_bytes(run) * per_byte)


def _stored_bytes(run: Path) -> int:
    metas = [json.loads((d / "meta.json").read_text()) for d in (run / "checkpoints").iterdir()]
    return sum(f["bytes"] for m in metas for f in m["files"].values())



def test_sample_generates_from_a_checkpoint(trained):
    out = thrifty("sample", str(trained), "--prompt", "import ", "--tokens", "40").stdout
    assert out.startswith("import ") and len(out.rstrip("\n")) >= len("import ") + 10
    greedy = [thrifty("sample", str(trained / "checkpoints" / "step_00000016"), "--temperature",
                      "0", "--tokens", "20").stdout for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_resuming_a_finished_run_says_how_to_extend_it(trained):
    config = (trained / "config.toml").read_bytes()
    proc = thrifty("train", "--resume", str(trained), "--nproc", "2", check=False)
    assert_one_line_error(proc, "has spent its budget (16 steps, train.tokens=4,096)",
                          "--train.tokens=N")
    assert (trained / "config.toml").read_bytes() == config  # nothing touched


def test_corrupt_checkpoint_is_reported_and_never_loaded(trained, tmp_path):
    run = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(trained), str(run)], check=True)
    for ckpt in (run / "checkpoints").iterdir():
        data = bytearray((ckpt / "shared.pt.thz").read_bytes())
        data[len(data) // 3] ^= 0x01
        (ckpt / "shared.pt.thz").write_bytes(bytes(data))
    proc = thrifty("train", "--resume", str(run), "--nproc", "2", check=False)
    assert_one_line_error(proc, "no valid checkpoint", "shared.pt.thz fails its SHA-256 checksum")
    proc = thrifty("sample", str(run / "checkpoints" / "step_00000016"), check=False)
    assert_one_line_error(proc, "step_00000016: shared.pt.thz fails its SHA-256 checksum")
    # a truncated file is caught the same way
    (run / "checkpoints" / "step_00000012" / "rank1.pt.thz").write_bytes(b"")
    proc = thrifty("sample", str(run / "checkpoints" / "step_00000012"), check=False)
    assert_one_line_error(proc, "fails its SHA-256")  # shared.pt is checked first


def test_resume_with_a_newer_corrupt_checkpoint_falls_back(trained, tmp_path):
    run = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(trained), str(run)], check=True)
    (run / "checkpoints" / "step_00000016" / "rank0.pt.thz").write_bytes(b"truncated")
    (run / "run.json").unlink()
    proc = thrifty("train", "--resume", str(run), "--nproc", "2")
    assert "rank0.pt.thz is truncated" in proc.stderr and "resumed from" in proc.stdout
    assert "step_00000012" in proc.stdout
    assert summary(run)["steps"] == 16
    # Steps 13 to 16 were done twice, and the resumed invocation is charged for doing them again
    # (it used to be charged nothing: the log stood at step 16 before it began and after it ended).
    row = Ledger(os.environ["THRIFTY_LEDGER"]).get(str(run.resolve()))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cum = {r["step"]: r["bytes_sent_cum"] for r in records if r["event"] == "train"}
    assert row["status"] == "ok" and row["info"]["resumed_from_step"] == 12
    assert row["usage"]["tokens_read"] == 4 * 256 and row["info"]["steps_done"] == 4
    assert row["usage"]["bytes_communicated"] == (cum[16] - cum[12]) * 2 > 0
    points = Ledger(os.environ["THRIFTY_LEDGER"]).points(row["id"])
    assert [p["step"] for p in points if p["event"] == "train"] == [13, 14, 15, 16]


def test_torchrun_runs_the_same_module(tmp_path):
    """The documented multi-machine command, on one machine: c10d rendezvous, two workers."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", "--rdzv-id", "test-job", "-m", "thrifty.train",
           *TINY, "--train.tokens=2048", f"--run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(tmp_path / "run")
    assert s["world_size"] == 2 and s["steps"] == 8
    # nobody else meters a torchrun job: rank 0 records it, with every rank's CPU time
    row = Ledger(os.environ["THRIFTY_LEDGER"]).get(str((tmp_path / "run").resolve()))
    assert row["status"] == "ok" and row["usage"]["tokens_read"] == s["tokens"]
    assert row["usage"]["cpu_s"] == pytest.approx(s["cpu_s"])
    assert row["usage"]["cpu_method"].startswith("the trainer's sum over ranks")
    assert row["usage"]["bytes_communicated"] == s["bytes_sent_total"]


def _launch_until_checkpoint(run: Path, step: int, *args: str, own_group: bool = False) -> subprocess.Popen:
    """``thrifty train`` on 2 workers in the background, returned once checkpoint ``step`` is
    written; ``own_group``: in a process group of its own, as a shell puts a job."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "thrifty", "train", *args, f"--run.dir={run}", "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=own_group,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / f"step_{step:08d}").exists():
        if launcher.poll() is not None or time.time() > deadline:
            launcher.kill()
            raise AssertionError(f"no checkpoint {step} appeared: {launcher.communicate()}")
        time.sleep(0.05)
    return launcher


def _worker_pids(run_dir: Path) -> list[int]:
    needle = f"thrifty.train\0{run_dir}/config.toml".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_a_killed_worker_is_restarted_and_the_run_completes(tmp_path):
    """SIGKILL one worker mid-run: the group restarts from the last checkpoint, the run spends
    its whole token budget, and ends with the weights of a run that was never interrupted."""
    args = [*TINY, "--model.n_embd=64", "--model.block_size=64", "--train.tokens=76800",
            "--run.checkpoint_interval=10", "--run.log_interval=10"]  # 150 steps
    run = tmp_path / "killed"
    launcher = _launch_until_checkpoint(run, 20, *args, "--max-restarts", "1")
    try:
        pids = _worker_pids(run)
        assert len(pids) == 2
        os.kill(max(pids), signal.SIGKILL)
        out, err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    s = summary(run)
    assert s["restarts"] == 1
    assert s["steps"] == 150 and s["tokens"] == 76800
    assert "resumed from" in out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == list(range(10, 151, 10))  # no step logged twice, none missing
    # any steps logged after the checkpoint the group restarted from were done twice: the ledger
    # charges them twice (512 tokens a step), and redone.jsonl says which they were
    cut = run / "redone.jsonl"  # none when the worker died right after a checkpoint, as logged
    redone = [json.loads(line) for line in cut.read_text().splitlines()] if cut.exists() else []
    assert len(redone) <= 1 and all(r["tokens"] == (r["from_step"] - r["to_step"]) * 512 for r in redone)
    row = Ledger(os.environ["THRIFTY_LEDGER"]).get(str(run.resolve()))
    assert row["usage"]["tokens_read"] == 76800 + sum(r["tokens"] for r in redone)

    thrifty("train", *args, f"--run.dir={tmp_path / 'whole'}", "--nproc", "2")
    whole, restarted = final_weights(tmp_path / "whole"), final_weights(run)
    assert all(torch.equal(whole[k], restarted[k]) for k in whole)


def test_corpus_of_one_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes((SMALL_CORPUS / "decoder.py").read_bytes() * 3)
    args = [a for a in TINY if not a.startswith("--data.corpus")]
    thrifty("train", *args, f"--data.corpus={text}", "--train.tokens=1024",
            f"--run.dir={tmp_path / 'run'}", "--strategy.name=single")
    assert summary(tmp_path / "run")["steps"] == 4


def test_ctrl_c_stops_every_process_in_one_line(tmp_path):
    """Ctrl-C in a terminal signals the whole job, launcher and workers alike: one line, no
    worker's traceback, 128 + SIGINT."""
    run = tmp_path / "run"
    launcher = _launch_until_checkpoint(run, 5, *TINY, "--train.tokens=2560000",
                                        "--run.checkpoint_interval=5", own_group=True)
    try:
        pids = _worker_pids(run)
        os.killpg(launcher.pid, signal.SIGINT)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 128 + signal.SIGINT
    assert err.strip().splitlines() == ["thrifty: terminated by SIGINT"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigterm_stops_the_workers_and_says_so_in_one_line(tmp_path):
    """kill LAUNCHER (a scheduler ending the job): workers stopped, one line, 128 + SIGTERM,
    and the run resumes from its last checkpoint."""
    args = [*TINY, "--train.tokens=2560000", "--run.checkpoint_interval=5"]
    run = tmp_path / "run"
    launcher = _launch_until_checkpoint(run, 5, *args)
    try:
        pids = _worker_pids(run)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["thrifty: terminated by SIGTERM"]
    for pid in pids:  # the workers are gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    row = Ledger(os.environ["THRIFTY_LEDGER"]).get(str(run.resolve()))
    assert row["status"] == "interrupted" and row["usage"]["tokens_read"] > 0  # charged all the same
    proc = thrifty("train", "--resume", str(run), "--nproc", "2", "--run.stop_after=1")
    assert "resumed from" in proc.stdout and "stopped after step" in proc.stdout
