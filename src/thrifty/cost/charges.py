"""Usage x price book = what a run cost, per driver, in money, energy and CO2."""

from __future__ import annotations

from thrifty.cost.meter import Usage
from thrifty.cost.prices import PriceBook
from thrifty.errors import ThriftyError
from thrifty.report.terminal import fmt_bytes, fmt_energy, plural

DRIVERS = ("compute", "data", "storage", "network", "people")
GB = 1e9


def charges(usage: Usage, book: PriceBook, region: str | None = None) -> dict:
    """``{driver: {"usd", "kwh", "kg_co2", "basis"}, ..., "total": {...}}``.

    Compute is charged per accelerator-hour at its on-demand price (the host's CPUs come with
    it); a run without accelerators per CPU core-hour used. Energy is the measured or estimated
    IT energy times the PUE; CO2 is that energy times the grid's carbon intensity. Storage is the
    bytes a run left behind (as stored) for the retention period, less what it removed of an
    earlier run's (which that run was charged for; a credit); network is the bytes sent
    between machines (a one-machine run's collectives stay on loopback and are not billed).
    """
    out: dict[str, dict] = {}
    g_per_kwh = book.carbon_g_per_kwh(region)
    kwh = usage.energy_kwh * book.pue
    if usage.accelerator_s:
        usd, parts = 0.0, []
        for device, seconds in usage.accelerator_s.items():
            try:
                price = book.accelerator(device).need("usd_per_hour")
            except ThriftyError:
                parts.append(f"{seconds / 3600:.3g} h {device} (no price on record)")
                continue
            usd += seconds / 3600 * price
            parts.append(f"{seconds / 3600:.4g} {device}-hours x ${price:g}/h")
        basis = ", ".join(parts)
    else:
        price = book["cpu"]["usd_per_core_hour"]
        usd = usage.cpu_s / 3600 * price
        basis = f"{usage.cpu_s / 3600:.3g} CPU core-hours x ${price:g}/h"
    out["compute"] = {"usd": usd, "kwh": kwh, "kg_co2": kwh * g_per_kwh / 1000,
                      "basis": f"{basis}; {fmt_energy(usage.energy_kwh)} x PUE {book.pue:g} "
                               f"x {g_per_kwh:g} g/kWh"}

    read_price = book["data"]["usd_per_gb_read"]
    out["data"] = {"usd": usage.bytes_read / GB * read_price, "kwh": 0.0, "kg_co2": 0.0,
                   "basis": f"{fmt_bytes(usage.bytes_read)} read x ${read_price:g}/GB"
                            + (f", {usage.tokens_read:,} tokens" if usage.tokens_read else "")}

    s = book["storage"]
    tier = s["tier"]
    if tier not in ("hot", "cold"):
        raise ThriftyError(f"price book: storage.tier must be 'hot' or 'cold', not {tier!r}")
    month_price = s[f"{tier}_usd_per_gb_month"]
    net = usage.bytes_written_stored - usage.bytes_removed_stored
    held = f"{fmt_bytes(usage.bytes_written_stored)} stored ({fmt_bytes(usage.bytes_written_raw)} raw)"
    if usage.bytes_removed_stored:
        held = f"({held} - {fmt_bytes(usage.bytes_removed_stored)} an earlier run left, removed)"
    out["storage"] = {"usd": net / GB * month_price * s["retention_months"], "kwh": 0.0, "kg_co2": 0.0,
                      "basis": f"{held} x ${month_price:g}/GB-month ({tier}) "
                               f"x {plural(s['retention_months'], 'month')}"}

    net_price = book["network"]["collectives_usd_per_gb"]
    if usage.machines > 1:
        out["network"] = {"usd": usage.bytes_communicated / GB * net_price, "kwh": 0.0, "kg_co2": 0.0,
                          "basis": f"{fmt_bytes(usage.bytes_communicated)} between {usage.machines} machines "
                                   f"x ${net_price:g}/GB (inside a cluster its cost is the time it takes)"}
    else:
        out["network"] = {"usd": 0.0, "kwh": 0.0, "kg_co2": 0.0,
                          "basis": f"{fmt_bytes(usage.bytes_communicated)} within one machine "
                                   "(loopback, not billed)"}

    rate = book["people"]["usd_per_hour"]
    out["people"] = {"usd": usage.people_hours * rate, "kwh": 0.0, "kg_co2": 0.0,
                     "basis": f"{usage.people_hours:g} h declared x ${rate:g}/h"}
    out["total"] = {k: sum(out[d][k] for d in DRIVERS) for k in ("usd", "kwh", "kg_co2")}
    return out
