"""The peak a GPU's MFU is measured against, found by its name (no GPU needed to check it)."""

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
