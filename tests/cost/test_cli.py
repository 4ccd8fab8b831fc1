"""thrifty estimate, runs, report and prices as a user meets them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, thrifty


def test_estimate_train_text_and_json():
    proc = thrifty("estimate", "train", "--model", "llama2-7b", "--accelerator", "a100-80gb",
                   "--count", "1024", "--mfu", "0.4")
    assert "accelerator-hours" in proc.stdout and "a100-80gb at 40% MFU" in proc.stdout
    data = json.loads(thrifty("estimate", "train", "--model", "llama2-7b", "--accelerator", "a100-80gb",
                              "--count", "1024", "--mfu", "0.4", "--json").stdout)
    assert data["tokens"] == 2e12 and data["count"] == 1024
    assert data["accelerator_hours"] == pytest.approx(205_000, rel=0.01)
    assert data["wall_hours"] == pytest.approx(data["accelerator_hours"] / 1024)
    custom = json.loads(thrifty("estimate", "train", "--layers", "4", "--d-model", "128", "--heads", "4",
                                "--vocab", "256", "--seq-len", "128", "--tokens", "1e6", "--json").stdout)
    assert custom["model"] == "custom" and custom["flops"] == pytest.approx(custom["flops_per_token"] * 1e6)


def test_estimate_inference_comm_and_prices_override(tmp_path: Path):
    inf = json.loads(thrifty("estimate", "inference", "--model", "llama2-70b", "--count", "2",
                             "--batch", "8", "--json").stdout)
    assert inf["kv_cache_bytes_per_token"] == 327_680 and inf["bound"] == "memory"
    comm = thrifty("estimate", "comm", "--model", "llama2-7b", "--count", "64", "--interconnect", "10gbe",
                   "--inner-steps", "500").stdout
    assert "ddp" in comm and "diloco" in comm and "500 steps" in comm and "1 step " in comm
    cheap = tmp_path / "cheap.toml"
    cheap.write_text("[accelerators.h100-sxm]\nusd_per_hour = 1.0\n")
    base = json.loads(thrifty("estimate", "train", "--model", "llama2-7b", "--json").stdout)
    over = json.loads(thrifty("estimate", "train", "--model", "llama2-7b", "--json", "--prices",
                              str(cheap)).stdout)
    assert over["usd"] == pytest.approx(base["usd"] / 3.0)
    assert "$1.00" in thrifty("prices", "--prices", str(cheap)).stdout


@pytest.mark.parametrize("args, fragment", [
    (["estimate", "train", "--model", "gpt5"], "unknown model 'gpt5'"),
    (["estimate", "train", "--model", "llama2-7b", "--accelerator", "h900"], "unknown accelerator 'h900'"),
    (["estimate", "train", "--layers", "2"], "missing --d-model, --heads"),
    (["estimate", "train", "--layers", "2", "--d-model", "64", "--heads", "2"], "--tokens is needed"),
    (["estimate", "train", "--model", "llama2-7b", "--mfu", "2"], "--mfu must be in (0, 1]"),
    (["estimate", "train", "--model", "llama2-7b", "--accelerator", "tpu-v5e"], None),
    (["estimate", "comm", "--model", "llama2-7b", "--interconnect", "pigeon"], "unknown interconnect"),
    (["estimate", "inference", "--model", "llama2-7b", "--batch", "0"], "--batch and --count"),
    (["prices", "--prices", "/no/such.toml"], "no such file"),
])
def test_bad_input_is_one_line(args, fragment):
    proc = thrifty(*args, check=False)
    if fragment is None:  # tpu-v5e has no published TDP: money and time, energy unknown
        assert proc.returncode == 0 and "unknown (no TDP)" in proc.stdout
        return
    assert_one_line_error(proc, fragment)


def test_report_of_an_unknown_run_or_a_missing_ledger(tmp_path: Path):
    from thrifty.cost import Ledger

    Ledger(tmp_path / "l.sqlite").close()
    assert_one_line_error(thrifty("report", "999999", "--ledger", str(tmp_path / "l.sqlite"), check=False),
                          "no run '999999'")
    assert_one_line_error(thrifty("runs", "--ledger", str(tmp_path / "none.sqlite"), check=False),
                          "no ledger at")


def test_bad_price_file_names_the_entry(tmp_path: Path):
    bad = tmp_path / "p.toml"
    bad.write_text("[storage]\nhot_usd_per_gb_month = 'free'\n")
    proc = thrifty("estimate", "train", "--model", "llama2-7b", "--prices", str(bad), check=False)
    assert_one_line_error(proc, "storage.hot_usd_per_gb_month: expected a number")


def test_compress_is_metered(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    env = {"THRIFTY_LEDGER": str(ledger)}
    src = tmp_path / "data.bin"
    src.write_bytes(b"thrifty " * 200_000)
    thrifty("compress", str(src), env=env)
    thrifty("decompress", str(src) + ".thz", "-o", str(tmp_path / "back.bin"), env=env)
    runs = json.loads(thrifty("runs", "--json", env=env).stdout)
    assert [r["kind"] for r in runs] == ["compress", "decompress"]
    stored = (tmp_path / "data.bin.thz").stat().st_size
    c, d = runs[0]["usage"], runs[1]["usage"]
    assert (c["bytes_read"], c["bytes_written_raw"]) == (1_600_000, 1_600_000)
    assert c["bytes_written_stored"] == stored
    assert (d["bytes_read"], d["bytes_written_stored"]) == (stored, 1_600_000)
    assert runs[0]["costs"]["storage"]["usd"] == pytest.approx(stored / 1e9 * 0.023)
    # streams are metered too
    with open(src, "rb") as stdin:
        subprocess.run([sys.executable, "-m", "thrifty", "compress", "-", "-o", str(tmp_path / "s.thz")],
                       stdin=stdin, env={**os.environ, **env}, check=True, capture_output=True)
    last = json.loads(thrifty("runs", "--json", "--last", "1", env=env).stdout)[0]
    assert last["usage"]["bytes_read"] == 1_600_000


def test_ledger_off_records_nothing(tmp_path: Path):
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 1000)
    thrifty("compress", str(src), env={"THRIFTY_LEDGER": "off"})
    assert_one_line_error(thrifty("runs", env={"THRIFTY_LEDGER": "off"}, check=False), "the ledger is off")


def test_a_damaged_ledger_warns_but_the_work_stands(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"not a database at all" * 100)
    src = tmp_path / "x.bin"
    src.write_bytes(b"abc" * 10_000)
    proc = thrifty("compress", str(src), env={"THRIFTY_LEDGER": str(ledger)})
    assert (tmp_path / "x.bin.thz").exists()
    assert "thrifty: warning: the run was not recorded in the ledger" in proc.stderr
    assert ledger.read_bytes() == b"not a database at all" * 100  # and it was not touched
