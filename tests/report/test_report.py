"""thrifty report on real runs: the terminal tables, and the HTML report rendered in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, thrifty, train_tiny
from thrifty.report.html import pareto_front
from thrifty.report.terminal import fmt_bytes

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> dict:
    """Three real runs in a ledger of their own: DDP and DiLoCo training, and a compression."""
    d = tmp_path_factory.mktemp("report")
    env = {"THRIFTY_LEDGER": str(d / "ledger.sqlite")}
    train_tiny(d / "ddp", "--train.tokens=6144", "--run.eval_interval=8", nproc=2, env=env)
    train_tiny(d / "diloco", "--train.tokens=6144", "--run.eval_interval=8", "--strategy.name=diloco",
               "--strategy.inner_steps=4", nproc=2, env=env)
    data = d / "weights.bin"
    data.write_bytes(bytes(range(256)) * 4096)
    thrifty("compress", str(data), env=env)
    # a run stopped and resumed: the second part prunes the first part's checkpoints, a credit
    parts = ["--strategy.name=single", "--train.tokens=3072", "--run.checkpoint_interval=2"]
    train_tiny(d / "parts", *parts, "--run.stop_after=4", env=env)
    thrifty("train", "--resume", str(d / "parts"), "--run.stop_after=0", "--run.keep_checkpoints=1",
            env=env)
    return {"dir": d, "env": env}


def test_terminal_report_by_driver_and_against_estimates(ledger):
    runs = json.loads(thrifty("runs", "--json", env=ledger["env"]).stdout)
    assert [r["kind"] for r in runs] == ["train", "train", "compress", "train", "train"]
    ddp, diloco = runs[0], runs[1]
    assert diloco["usage"]["bytes_communicated"] < ddp["usage"]["bytes_communicated"] / 2
    text = thrifty("report", str(ddp["id"]), str(diloco["id"]), env=ledger["env"]).stdout
    for word in ("compute", "data", "storage", "network", "people", "total", "measured vs estimated",
                 "training time (estimate at 40% MFU)", "bytes communicated (vs plain all-reduce)",
                 "saved by compression:", "saved by the strategy:"):
        assert word in text, word
    # DiLoCo's saving, as the report states it, is what plain all-reduce would have sent less
    # what it did send
    plain = diloco["info"]["plain_allreduce_bytes_per_worker"] * 2
    saved = plain - diloco["usage"]["bytes_communicated"]
    assert f"saved by the strategy: {fmt_bytes(saved)} less communicated" in text
    listing = thrifty("runs", env=ledger["env"]).stdout
    assert "diloco" in listing and "compress" in listing
    resumed = json.loads(thrifty("report", str(runs[4]["id"]), "--json", env=ledger["env"]).stdout)[0]
    assert resumed["costs"]["storage"]["usd"] < 0  # it removed two checkpoints and left one
    storage = next(line for line in thrifty("report", str(runs[4]["id"]), env=ledger["env"]).stdout
                   .splitlines() if line.startswith("storage"))
    assert "-$" in storage and "an earlier run left, removed" in storage


def test_report_reprices_with_another_price_book(ledger, tmp_path):
    dear = tmp_path / "dear.toml"
    dear.write_text("[cpu]\nusd_per_core_hour = 100.0\n[storage]\nretention_months = 12.0\n")
    stored = json.loads(thrifty("report", "1", "--json", env=ledger["env"]).stdout)[0]["costs"]
    priced = json.loads(thrifty("report", "1", "--json", "--prices", str(dear), env=ledger["env"]).stdout)
    costs = priced[0]["costs"]
    assert costs["compute"]["usd"] == pytest.approx(stored["compute"]["usd"] * 100 / 0.0446)
    assert costs["storage"]["usd"] == pytest.approx(stored["storage"]["usd"] * 12)


def test_html_report_is_self_contained_and_every_plot_renders_in_chromium(ledger):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
    out = ledger["dir"] / "report.html"
    thrifty("report", "--all", "--html", str(out), env=ledger["env"])
    page = out.read_text()
    # nothing is fetched: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    figures = re.findall(r"<figure class='plot' id='([^']+)'", page)
    assert figures == ["cost-by-driver", "loss-vs-cost", "throughput", "bytes-per-strategy",
                       "quality-vs-cost"]

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars"]
    profile = ledger["dir"] / "chromium-profile"
    dom = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rendered = dict(re.findall(r'<figure class="plot" id="([^"]+)" data-rendered="(yes|no)"', dom))
    assert rendered == {f: "yes" for f in figures}, rendered
    assert f'data-plots-rendered="{len(figures)}"' in dom

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, *flags, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1200,3600", out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_pareto_front():
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (2.0, 2.2), (0.5, 3.5)]
    assert pareto_front(points) == [5, 0, 1, 3]
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_a_measured_run_projected_onto_a_cluster(ledger):
    ddp = json.loads(thrifty("runs", "--json", env=ledger["env"]).stdout)[0]
    args = ["estimate", "project", str(ddp["id"]), "--accelerator", "h100-sxm", "--count", "16",
            "--interconnect", "ib-ndr"]
    p = json.loads(thrifty(*args, "--json", env=ledger["env"]).stdout)
    assert p["flops"] == ddp["info"]["flops"] and p["syncs"] == ddp["info"]["syncs"] > 0
    assert p["compute_s"] == pytest.approx(ddp["info"]["flops"] / (16 * 989e12 * 0.40))
    assert p["charges"]["compute"]["usd"] == pytest.approx(p["wall_s"] * 16 / 3600 * 3.00)
    assert "projected onto 16 x h100-sxm" in thrifty(*args, env=ledger["env"]).stdout
    assert_one_line_error(thrifty("estimate", "project", "3", env=ledger["env"], check=False),
                          "only training runs can be projected")


def test_plural():
    from thrifty.report.terminal import plural

    assert [plural(n, "step") for n in (0, 1, 2, 1000)] == ["0 steps", "1 step", "2 steps", "1,000 steps"]
    assert [plural(n, "month") for n in (1.0, 1.5, 12.0)] == ["1 month", "1.5 months", "12 months"]
