from pathlib import Path

import pytest

from thrifty.cost import prices
from thrifty.errors import ThriftyError

REQUIRED = ["a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "mi300x", "l4", "t4", "tpu-v4",
            "tpu-v5e"]


def test_shipped_book_has_every_required_entry_with_a_source_and_date():
    book = prices.load(use_user_file=False)
    for key in REQUIRED:
        entry = book["accelerators"][key]
        assert entry["source"] and entry["date"], key
        assert entry["price_source"] and entry["price_date"], key
        for field in ("bf16_tflops", "memory_gb", "memory_bandwidth_gbs", "usd_per_hour"):
            assert entry[field] > 0, (key, field)
    for section in ("energy", "carbon", "storage", "network", "people", "data"):
        assert book[section]["source"] and book[section]["date"], section
    assert book.carbon_g_per_kwh("world") > book.carbon_g_per_kwh("france")


def test_user_file_overrides_adds_and_names_bad_entries(tmp_path: Path):
    good = tmp_path / "mine.toml"
    good.write_text('[accelerators.h100-sxm]\nusd_per_hour = 2\n'
                    '[accelerators.tpu-v5e]\ntdp_w = 200\n'
                    '[accelerators.my-gpu]\nbf16_tflops = 100\nusd_per_hour = 1.5\n'
                    '[carbon.g_per_kwh]\nnorway = 20\n')
    book = prices.load(good, use_user_file=False)
    assert book.accelerator("h100-sxm").usd_per_hour == 2.0
    assert book.accelerator("h100-sxm").tdp_w == 700.0  # the rest of the entry is kept
    assert book.accelerator("tpu-v5e").tdp_w == 200.0
    assert book.accelerator("my-gpu").bf16_tflops == 100.0
    assert book.carbon_g_per_kwh("norway") == 20.0
    assert book.files == [str(good)]

    cases = {
        '[energy]\nusd_per_kwh = "cheap"\n': "energy.usd_per_kwh: expected a number",
        '[accelerators.h100-sxm]\nusd_per_hr = 2\n': "accelerators.h100-sxm.usd_per_hr: unknown entry",
        '[energy]\npue = -1\n': "energy.pue: must not be negative",
        '[storage]\ntier = 3\n': "storage.tier: expected str",
        'energy = 3\n': "energy: expected a table",
        '[accelerators.new]\nfoo = 1\n': "accelerators.new.foo: unknown entry",
        'not toml [': "not valid TOML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ThriftyError, match=message.replace(".", r"\.")):
            prices.load(bad, use_user_file=False)
    with pytest.raises(ThriftyError, match="no such file"):
        prices.load(tmp_path / "missing.toml", use_user_file=False)


def test_per_user_file_is_read_from_the_config_directory(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert prices.user_file() == tmp_path / "thrifty" / "prices.toml"
    (tmp_path / "thrifty").mkdir()
    prices.user_file().write_text("[people]\nusd_per_hour = 150\n")
    assert prices.load()["people"]["usd_per_hour"] == 150.0
    explicit = tmp_path / "x.toml"
    explicit.write_text("[people]\nusd_per_hour = 10\n")
    assert prices.load(explicit)["people"]["usd_per_hour"] == 10.0  # --prices wins


def test_unknown_names_and_missing_figures_are_errors():
    book = prices.load(use_user_file=False)
    with pytest.raises(ThriftyError, match="unknown accelerator 'h900'"):
        book.accelerator("h900")
    with pytest.raises(ThriftyError, match="tpu-v5e.tdp_w is not known"):
        book.accelerator("tpu-v5e").need("tdp_w")
    with pytest.raises(ThriftyError, match="unknown carbon region"):
        book.carbon_g_per_kwh("atlantis")


def test_device_names_map_to_price_book_keys():
    assert prices.accelerator_key("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert prices.accelerator_key("NVIDIA H100 PCIe") == "h100-pcie"
    assert prices.accelerator_key("NVIDIA H200") == "h200"
    assert prices.accelerator_key("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert prices.accelerator_key("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert prices.accelerator_key("Quadro X") == "cuda:Quadro X"
    assert prices.accelerator_key("NVIDIA L4") == "l4"
    # a longer name that merely starts like a priced one is not priced as it
    assert prices.accelerator_key("NVIDIA L40S") == "cuda:NVIDIA L40S"
