"""``thrifty runs``, ``thrifty report`` and ``thrifty prices``: what the ledger holds and what it cost."""

from __future__ import annotations

import argparse
import json
import sys

from thrifty.cost import prices as prices_lib
from thrifty.cost.charges import charges
from thrifty.cost.ledger import open_ledger
from thrifty.cost.meter import Usage
from thrifty.errors import ThriftyError
from thrifty.report.terminal import cost_table, fmt_bytes, fmt_seconds, fmt_usd, plural, table


def _priced(run: dict, book: prices_lib.PriceBook | None, region: str | None) -> dict:
    """The run with ``costs`` attached: under its stored price book, or re-priced under ``book``."""
    used = book or prices_lib.from_data(run["prices"])
    return {**run, "costs": charges(Usage.from_dict(run["usage"]), used, region)}


def run_runs(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="thrifty runs", description="List the runs in the ledger.")
    p.add_argument("--ledger", metavar="FILE", help="ledger file (default: THRIFTY_LEDGER or the user's)")
    p.add_argument("--kind", help="only runs of this kind (train, compress, decompress)")
    p.add_argument("--last", type=int, metavar="N", help="only the newest N runs")
    p.add_argument("--json", action="store_true", help="one JSON array for scripts")
    args = p.parse_args(argv)
    ledger = open_ledger(args.ledger)
    runs = [_priced(r, None, None) for r in ledger.runs(args.kind)]
    if args.last is not None:
        runs = runs[-args.last:] if args.last > 0 else []
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "prices"} for r in runs], indent=1))
        return 0
    if not runs:
        print(f"no runs in {ledger.path}", file=sys.stderr)
        return 0
    rows = []
    for r in runs:
        loss = r["info"].get("final_val_loss")
        rows.append((r["id"], r["started_at"].replace("T", " ")[:19], r["kind"], r["name"], r["status"],
                     fmt_seconds(r["usage"]["wall_s"]), fmt_usd(r["costs"]["total"]["usd"]),
                     "" if loss is None else f"{loss:.4f}", r.get("run_dir") or ""))
    head = ("id", "started (UTC)", "kind", "name", "status", "wall", "cost", "val loss", "run dir")
    print(table(rows, head))
    return 0


def run_report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="thrifty report",
        description="What runs cost, by driver, measured against estimates. Without RUN: the newest run.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run id, uid prefix or run directory")
    p.add_argument("--all", action="store_true", help="every run in the ledger")
    p.add_argument("--ledger", metavar="FILE")
    p.add_argument("--prices", metavar="FILE", help="re-price the runs with this price file")
    p.add_argument("--region", help="grid region for CO2 (default: the price book's)")
    p.add_argument("--html", metavar="FILE", help="also write one self-contained HTML file with plots")
    p.add_argument("--json", action="store_true", help="print the runs and their costs as JSON")
    args = p.parse_args(argv)
    ledger = open_ledger(args.ledger)
    book = prices_lib.load(args.prices) if args.prices else None
    if args.all:
        rows = ledger.runs()
    elif args.runs:
        rows = [ledger.get(ref) for ref in args.runs]
    else:
        rows = ledger.runs()[-1:]
    if not rows:
        raise ThriftyError(f"no runs in the ledger {ledger.path}")
    runs = [{**_priced(r, book, args.region), "points": ledger.points(r["id"])} for r in rows]
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "prices"} for r in runs], indent=1))
    else:
        print("\n\n".join(_run_text(r, book) for r in runs))
    if args.html:
        from thrifty.files import write_atomic
        from thrifty.report.html import render

        write_atomic(args.html, render(runs).encode())
        print(f"\nwrote {args.html}", file=sys.stderr)
    return 0


def _run_text(r: dict, book: prices_lib.PriceBook | None) -> str:
    u = r["usage"]
    lines = [f"run {r['id']}: {r['kind']} {r['name']} ({r['status']}), "
             f"started {r['started_at']} on {r['host']}"]
    if r.get("run_dir"):
        lines.append(f"  directory {r['run_dir']}")
    lines.append(f"  priced with {'the given price file' if book else 'the price book stored with the run'}")
    lines.append(cost_table(r["costs"]))
    compare = _measured_vs_estimated(r, book or prices_lib.from_data(r["prices"]))
    if compare:
        lines.append("")
        lines.append(table(compare, ("measured vs estimated", "measured", "estimate", "ratio")))
    used = book or prices_lib.from_data(r["prices"])
    lines += [f"saved by {line}" for line in _savings(r, used)]
    lines.append(f"energy: {u['energy_method']}; CPU: {u['cpu_method']}")
    return "\n".join(lines)


def _savings(r: dict, book: prices_lib.PriceBook) -> list[str]:
    """What the run's levers saved, measured against doing without them."""
    u, info = r["usage"], r["info"]
    out = []
    saved = u["bytes_written_raw"] - u["bytes_written_stored"]
    if u["bytes_written_raw"] and saved > 0:
        s = book["storage"]
        price = s[f"{s['tier']}_usd_per_gb_month"]
        usd = saved / 1e9 * price * s["retention_months"]
        out.append(f"compression: {fmt_bytes(saved)} less stored ({saved / u['bytes_written_raw']:.0%}), "
                   f"{fmt_usd(usd)} over {plural(s['retention_months'], 'month')} at ${price:g}/GB-month")
    workers = info.get("world_size") or 1
    plain = info.get("plain_allreduce_bytes") or 0
    if workers > 1 and plain > u["bytes_communicated"]:
        link = book.interconnect("10gbe")
        per_worker = (plain - u["bytes_communicated"]) / workers
        seconds = 2 * (workers - 1) / workers * per_worker / link.bytes_per_s
        out.append(f"the strategy: {fmt_bytes(plain - u['bytes_communicated'])} less communicated than "
                   f"plain all-reduce, {fmt_seconds(seconds)} of transfer on {link.name} links "
                   "(ring all-reduce model)")
    return out


def _measured_vs_estimated(r: dict, book: prices_lib.PriceBook) -> list[tuple]:
    u, info = r["usage"], r["info"]
    rows = []

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else ""

    if info.get("flops") and info.get("peak_flops_per_worker") and info.get("tokens_per_s"):
        workers = info.get("world_size") or 1
        estimate = info["flops"] / (workers * info["peak_flops_per_worker"] * book.mfu)
        measured = info["tokens"] / info["tokens_per_s"]
        rows.append((f"training time (estimate at {book.mfu:.0%} MFU)", fmt_seconds(measured),
                     fmt_seconds(estimate), ratio(measured, estimate)))
    if info.get("mfu") is not None:
        rows.append(("MFU", f"{info['mfu']:.1%}", f"{book.mfu:.0%}", ratio(info["mfu"], book.mfu)))
    plain = info.get("plain_allreduce_bytes")
    if plain:
        rows.append(("bytes communicated (vs plain all-reduce)", fmt_bytes(u["bytes_communicated"]),
                     fmt_bytes(plain), ratio(u["bytes_communicated"], plain)))
    if u["bytes_written_raw"] and u["bytes_written_stored"] != u["bytes_written_raw"]:
        stored, raw = u["bytes_written_stored"], u["bytes_written_raw"]
        rows.append(("bytes stored (vs raw)", fmt_bytes(stored), fmt_bytes(raw), ratio(stored, raw)))
    return rows


def run_prices(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="thrifty prices", description="Show the price book in force.")
    p.add_argument("--prices", metavar="FILE", help="a price file laid over the shipped one")
    p.add_argument("--path", action="store_true", help="print where the per-user price file goes")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.path:
        print(prices_lib.user_file())
        return 0
    book = prices_lib.load(args.prices)
    if args.json:
        print(json.dumps(book.data, indent=1))
        return 0
    rows = []
    for key, a in book["accelerators"].items():
        rows.append((key, a.get("bf16_tflops", ""), a.get("fp32_tflops", ""), a.get("memory_gb", ""),
                     a.get("memory_bandwidth_gbs", ""), a.get("tdp_w", ""),
                     fmt_usd(a.get("usd_per_hour")) if "usd_per_hour" in a else "", a.get("source", "")))
    print(table(rows, ("accelerator", "bf16 TFLOP/s", "fp32", "GB", "GB/s", "TDP W", "$/h", "source")))
    e, c, s = book["energy"], book["carbon"], book["storage"]
    print()
    print(table([
        ("electricity", f"${e['usd_per_kwh']:g}/kWh ({e['source']})"),
        ("PUE", f"{e['pue']:g} ({e['pue_source']})"),
        ("carbon", f"{book.carbon_g_per_kwh():g} g/kWh in {c['region']!r} ({c['source']})"),
        ("storage", f"hot ${s['hot_usd_per_gb_month']:g}/GB-month, cold ${s['cold_usd_per_gb_month']:g}; "
                    f"charged {s['tier']} for {plural(s['retention_months'], 'month')}"),
        ("network", f"${book['network']['usd_per_gb']:g}/GB ({book['network']['source']})"),
        ("CPU", f"${book['cpu']['usd_per_core_hour']:g}/core-hour, {book['cpu']['watts_per_core']:g} W/core"),
        ("people", f"${book['people']['usd_per_hour']:g}/h ({book['people']['source']})"),
        ("files", ", ".join(book.files) or "shipped defaults only"),
    ]))
    return 0
