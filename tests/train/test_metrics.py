"""The peak a GPU's MFU is measured against, found by its name (no GPU needed to check it),
and the per-step log a resume cuts back."""

import pytest
import torch

from thrifty.train import metrics


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA A10", 125.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("Tesla T4", 65.0),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA B200", 2250.0),
])
def test_known_gpus_get_their_data_sheet_peak(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak, method = metrics.peak_flops(torch.device("cuda", 0))
    assert peak == tflops * 1e12 and method == f"table: {name}"


@pytest.mark.parametrize("name", ["Quadro X", "NVIDIA A10G", "NVIDIA L4X"])
def test_an_unknown_gpu_gets_no_mfu_rather_than_a_guess(monkeypatch, name):
    """Including names that merely start like a known one (the A10G is not an A10)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert metrics.peak_flops(torch.device("cuda", 0)) == (
        None, f"unknown GPU {name!r}: no peak on record, MFU not reported")


def test_a_cpu_peak_is_measured():
    peak, method = metrics.peak_flops(torch.device("cpu"))
    assert peak > 1e8 and method.startswith("measured: fp32 matmul probe")


def test_a_resume_cuts_the_log_back_and_notes_what_the_cut_steps_used(tmp_path):
    """Steps logged past the checkpoint a run resumes from are dropped from metrics.jsonl (they
    are done again, and logged again), and what they had used goes to redone.jsonl, which only
    grows, for the meter to charge; a fresh run starts both files anew."""
    import json

    from thrifty.train.metrics import REDONE, MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, None)
    for step in range(1, 7):
        log.write({"event": "train", "step": step, "tokens": 100 * step, "bytes_sent_cum": 10 * step})
    log.write({"event": "val", "step": 6, "tokens": 600})
    log.close()
    MetricsLog(path, {"step": 4, "tokens": 400, "bytes_sent_cum": 40}).close()  # resumed at 4
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    cut = {"from_step": 6, "to_step": 4, "tokens": 200, "bytes_sent": 20}
    assert read_metrics(tmp_path / REDONE) == [cut]
    MetricsLog(path, {"step": 4, "tokens": 400, "bytes_sent_cum": 40}).close()  # nothing to cut
    assert len(read_metrics(tmp_path / REDONE)) == 1
    log = MetricsLog(path, {"step": 2, "tokens": 200, "bytes_sent_cum": 20})  # an older checkpoint
    log.close()
    assert [json.loads(line)["tokens"] for line in (tmp_path / REDONE).read_text().splitlines()] == [200, 200]
    MetricsLog(path, None).close()  # a fresh run
    assert path.read_text() == "" and not (tmp_path / REDONE).exists()


def test_redone_steps_are_charged_for_the_workers_that_redo_them(tmp_path):
    """4 workers log steps 1-6; a resume on 2 workers from the checkpoint at step 4 redoes 5-6
    and goes on to 8. That invocation sent steps 5-8's bytes from each of its 2 workers (a step
    hands each worker the same bytes whatever their number); the 4 workers' sending of steps
    5-6 was charged to the invocation that ran them."""
    from thrifty.train import accounting
    from thrifty.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, None)
    for step in range(1, 7):
        log.write({"event": "train", "step": step, "tokens": 100 * step, "bytes_sent_cum": 10 * step})
    log.close()
    before = accounting.progress(tmp_path)
    log = MetricsLog(path, {"step": 4, "tokens": 400, "bytes_sent_cum": 40})
    for step in range(5, 9):
        log.write({"event": "train", "step": step, "tokens": 100 * step, "bytes_sent_cum": 10 * step})
    log.close()

    class Run:  # the part of thrifty.cost.meter's run that absorb uses
        info: dict = {}

        def add(self, **used):
            self.used = used

    run = Run()
    accounting.absorb(run, tmp_path, before, world_size=2)
    assert run.used["tokens_read"] == 400  # steps 5-8, of 100 tokens each
    assert run.used["bytes_communicated"] == 4 * 10 * 2  # steps 5-8, 10 bytes per worker each
