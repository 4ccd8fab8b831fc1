import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from thrifty.cost import Ledger, Usage, charges, metered_run, prices
from thrifty.cost import ledger as ledger_lib
from thrifty.cost import meter as meter_lib
from thrifty.errors import ThriftyError

BOOK = prices.load(use_user_file=False)


def test_metered_run_measures_records_and_prices(tmp_path: Path):
    ledger = Ledger(tmp_path / "l.sqlite")
    with metered_run("test", "busy", book=BOOK, ledger=ledger, run_dir=tmp_path) as run:
        total = sum(i * i for i in range(2_000_000))  # real CPU work
        run.add(bytes_read=10**9, tokens_read=5, bytes_written_raw=4 * 10**9, bytes_written_stored=10**9,
                bytes_communicated=3 * 10**9, people_hours=2.0)
        run.info["answer"] = total
        run.points = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    row = ledger.get(run.id)
    assert row["kind"] == "test" and row["status"] == "ok" and row["run_dir"] == str(tmp_path)
    u = Usage.from_dict(row["usage"])
    assert u.wall_s > 0 and u.cpu_s > 0.05
    assert u.cpu_s == pytest.approx(u.cpu_self_s + u.cpu_children_s) and u.cpu_self_s > 0.05
    assert u.energy_method == "estimate: CPU-seconds x 5 W per core"
    assert u.energy_kwh == pytest.approx(u.cpu_s * 5 / 3.6e6)
    assert u.peak_memory_bytes > 10 << 20
    assert ledger.points(run.id) == run.points
    c = charges(u, prices.from_data(row["prices"]))
    assert c["storage"]["usd"] == pytest.approx(1 * 0.023)
    assert c["storage"]["basis"].endswith("x $0.023/GB-month (hot) x 1 month")
    assert c["people"]["usd"] == pytest.approx(2 * 89)
    assert c["network"]["usd"] == 0  # one machine: loopback
    assert c["compute"]["usd"] == pytest.approx(u.cpu_s / 3600 * 0.0446)
    assert c["compute"]["kg_co2"] == pytest.approx(u.energy_kwh * 1.56 * 0.480)
    assert c["total"]["usd"] == pytest.approx(sum(c[d]["usd"] for d in ("compute", "data", "storage",
                                                                           "network", "people")))


def test_a_failed_body_is_still_recorded(tmp_path: Path):
    ledger = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(RuntimeError), metered_run("test", book=BOOK, ledger=ledger):
        raise RuntimeError("boom")
    (row,) = ledger.runs()
    assert row["status"] == "failed"


def test_accelerators_are_charged_per_reserved_wall_second_and_across_machines():
    u = Usage(wall_s=3600, cpu_s=7200, accelerator_s={"h100-sxm": 8 * 3600}, energy_kwh=5.6,
              bytes_communicated=10**10, machines=2)
    c = charges(u, BOOK)
    assert c["compute"]["usd"] == pytest.approx(8 * 3.00)  # the host's CPUs come with the GPUs
    assert c["network"]["usd"] == 0  # collectives inside a cluster: the time is the cost
    across = prices.merge(BOOK.data, {"network": {"collectives_usd_per_gb": 0.02}}, "test")
    assert charges(u, prices.PriceBook(across))["network"]["usd"] == pytest.approx(10 * 0.02)
    assert meter_lib.energy_kwh(u, BOOK)[0] == pytest.approx((7200 * 5 + 8 * 3600 * 700) / 3.6e6)
    reprice = prices.merge(BOOK.data, {"accelerators": {"h100-sxm": {"usd_per_hour": 2.0}}}, "test")
    assert charges(u, prices.PriceBook(reprice))["compute"]["usd"] == pytest.approx(16.0)


def test_rapl_counters_are_read_and_wraps_handled(tmp_path: Path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("900\n")
    (zone / "max_energy_range_uj").write_text("1000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain: not counted twice
    zones = meter_lib._rapl_packages(tmp_path)
    assert zones == [zone]
    before = meter_lib._rapl_read(zones)
    (zone / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 -> 100 is 200 uJ
    assert meter_lib._rapl_joules(zones, before, meter_lib._rapl_read(zones)) == pytest.approx(200e-6)


def _write_runs(path: str, worker: int, n: int) -> None:
    ledger = Ledger(path)
    for i in range(n):
        with metered_run("test", f"w{worker}-{i}", book=BOOK, ledger=ledger):
            pass


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    path = str(tmp_path / "l.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_runs, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = Ledger(path).runs()
    assert len(rows) == 60
    assert len({r["uid"] for r in rows}) == 60
    assert sorted(r["name"] for r in rows) == sorted(f"w{w}-{i}" for w in range(4) for i in range(15))


def test_schema_version_and_migrations(tmp_path: Path, monkeypatch):
    path = tmp_path / "l.sqlite"
    assert Ledger(path).version == ledger_lib.VERSION
    # a newer thrifty added a migration: an old file is moved forward and keeps its runs
    _write_runs(str(path), 0, 1)
    newer = [*ledger_lib.MIGRATIONS, ["ALTER TABLE runs ADD COLUMN tag TEXT"]]
    monkeypatch.setattr(ledger_lib, "MIGRATIONS", newer)
    monkeypatch.setattr(ledger_lib, "VERSION", ledger_lib.VERSION + 1)
    upgraded = Ledger(path)
    assert upgraded.version == ledger_lib.VERSION and len(upgraded.runs()) == 1
    assert "tag" in upgraded.runs()[0]
    # a file from a newer thrifty is refused, not damaged
    monkeypatch.setattr(ledger_lib, "VERSION", ledger_lib.VERSION - 1)
    with pytest.raises(ThriftyError, match="schema version 2; this thrifty knows up to 1"):
        Ledger(path)
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ThriftyError, match="junk.sqlite"):
        Ledger(bad)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_are_found_by_id_uid_prefix_and_directory(tmp_path: Path):
    ledger = Ledger(tmp_path / "l.sqlite")
    with metered_run("test", book=BOOK, ledger=ledger, run_dir=tmp_path / "a") as run:
        pass
    assert ledger.get(str(run.id))["uid"] == run.uid
    assert ledger.get(run.uid[:8])["id"] == run.id
    assert ledger.get(str(tmp_path / "a"))["id"] == run.id
    with pytest.raises(ThriftyError, match="no run 'nope'"):
        ledger.get("nope")
    # a uid whose prefix is digits alone (one in 40 for 8 characters) is still found by it
    with metered_run("test", book=BOOK, ledger=ledger, run_dir=tmp_path / "b") as other:
        other.uid = "18354158" + other.uid[8:]
    assert ledger.get("18354158")["id"] == other.id
    assert ledger.get(str(other.id))["id"] == other.id  # a number is an id first
    with pytest.raises(ThriftyError, match="no run '9{30}'"):
        ledger.get("9" * 30)  # too big for an id: a one-line error, not OverflowError


def test_a_stored_price_book_is_used_as_it_was(tmp_path: Path):
    old = prices.merge(BOOK.data, {"people": {"usd_per_hour": 10.0}}, "test")
    del old["network"]  # a book stored before this section existed
    old["retired"] = {"x": 1}  # and one with an entry today's book no longer has
    book = prices.from_data(old)
    assert book["people"]["usd_per_hour"] == 10.0
    assert book["network"] == BOOK["network"]
    charges(Usage(cpu_s=1.0), book)  # prices without complaint


def test_reading_a_ledger_that_does_not_exist_is_an_error_not_a_new_file(tmp_path: Path):
    with pytest.raises(ThriftyError, match="no ledger at .*nothing has been recorded"):
        ledger_lib.open_ledger(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()


def test_nvml_energy_is_used_when_present(tmp_path: Path, monkeypatch):
    """With NVIDIA's NVML importable, GPU energy is read from its counters (millijoules)."""
    import types

    counters = {0: 1_000_000, 1: 5_000_000}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h],
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    ledger = Ledger(tmp_path / "l.sqlite")
    with metered_run("test", book=BOOK, ledger=ledger) as run:
        counters[0] += 3_600_000  # 3.6 kJ on GPU 0
        counters[1] += 7_200_000  # 7.2 kJ on GPU 1
    u = Usage.from_dict(ledger.get(run.id)["usage"])
    assert u.energy_method == "estimate: CPU-seconds x 5 W per core; measured: NVML, every visible GPU"
    assert u.energy_kwh == pytest.approx((10_800 + u.cpu_s * 5) / 3.6e6)
