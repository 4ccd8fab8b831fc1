"""Plain-text tables and number formats shared by every command that prints costs."""

from __future__ import annotations


def table(rows: list[tuple], head: tuple | None = None) -> str:
    """Left-aligned columns; with ``head``, a header and a rule."""
    rows = [tuple("" if c is None else str(c) for c in r) for r in rows]
    if head is None:  # a two-column key/value block
        width = max((len(r[0]) for r in rows), default=0)
        return "\n".join(f"  {r[0].ljust(width)}  {'  '.join(r[1:])}" for r in rows)
    all_rows = [tuple(head), *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    if value < 0:  # a credit
        return "-" + fmt_usd(-value)
    if value < 0.01:
        return f"${value:.2g}"
    if value < 1000:
        return f"${value:,.2f}"
    return f"${value:,.0f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def plural(n: float, noun: str) -> str:
    """``1 step``, ``2 steps``, ``1,000 chunks``, ``1.5 months``."""
    count = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{count} {noun}{'' if n == 1 else 's'}"


def fmt_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:,.1f} days"


def _scaled(value: float | None, units: list[tuple[float, str, str]]) -> str:
    """``value`` in the first of ``units`` (size, name, format) it reaches; the last one
    catches the rest."""
    if value is None:
        return "n/a"
    size, name, spec = next((u for u in units if abs(value) >= u[0]), units[-1])
    return f"{value / size:{spec}} {name}"


def fmt_energy(kwh: float | None) -> str:
    return _scaled(kwh, [(1e6, "GWh", ",.2f"), (1e3, "MWh", ",.1f"), (1.0, "kWh", ",.2f"),
                         (1e-3, "Wh", ".3g")])


def fmt_co2(kg: float | None) -> str:
    return _scaled(kg, [(1e3, "t", ",.1f"), (1.0, "kg", ",.2f"), (1e-3, "g", ".3g")])


def cost_table(costs: dict) -> str:
    """One row per driver and the total: money, energy, CO2 and what the charge is based on."""
    rows = [(driver, fmt_usd(c["usd"]), fmt_energy(c["kwh"]), fmt_co2(c["kg_co2"]), c.get("basis", ""))
            for driver, c in costs.items() if driver != "total"]
    t = costs["total"]
    rows.append(("total", fmt_usd(t["usd"]), fmt_energy(t["kwh"]), fmt_co2(t["kg_co2"]), ""))
    return table(rows, ("driver", "money", "energy", "CO2", "basis"))
