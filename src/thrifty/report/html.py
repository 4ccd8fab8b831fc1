"""One self-contained HTML report: tables and plots, no network fetches.

Plots are drawn by matplotlib and inlined as SVG (text turned into paths, so no fonts are
fetched either). A small inline script marks each figure once the browser has laid it out,
which is what the end-to-end test in headless Chromium checks.
"""

from __future__ import annotations

import html
import io

from thrifty.cost.charges import DRIVERS
from thrifty.report.terminal import fmt_bytes, fmt_co2, fmt_energy, fmt_seconds, fmt_usd

COLORS = {"compute": "#4c72b0", "data": "#55a868", "storage": "#c44e52", "network": "#8172b2",
          "people": "#ccb974"}


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _label(run: dict) -> str:
    strategy = run["info"].get("strategy")
    return f"#{run['id']} {run['name']}" + (f" ({strategy})" if strategy else "")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (x) and loss (y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _figures(runs: list[dict]) -> list[tuple[str, str, str]]:
    """(id, title, svg) for every plot the runs support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "thrifty", "font.size": 9})
    figs = []
    labels = [_label(r) for r in runs]

    # 1. cost by driver: one stacked bar per run; a credit (storage a resumed run removed)
    # stacks leftwards from zero
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(runs)))
    right, left = [0.0] * len(runs), [0.0] * len(runs)
    for driver in DRIVERS:
        values = [r["costs"][driver]["usd"] for r in runs]
        starts = [lo if v < 0 else hi for v, lo, hi in zip(values, left, right, strict=True)]
        ax.barh(labels, values, left=starts, color=COLORS[driver], label=driver)
        right = [hi + max(v, 0.0) for v, hi in zip(values, right, strict=True)]
        left = [lo + min(v, 0.0) for v, lo in zip(values, left, strict=True)]
    if min(left) < 0:
        ax.axvline(0, color="#333", linewidth=0.8)
    ax.set_xlabel("USD")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.5 / len(runs)), fontsize=8, ncols=5,
              frameon=False)
    figs.append(("cost-by-driver", "Cost by driver", _svg(fig)))

    trains = [r for r in runs if r["kind"] == "train" and r["points"]]
    if trains:
        # 2. loss against cumulative cost
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for r in trains:
            train_pts = [p for p in r["points"] if p.get("event") == "train" and "cpu_s" in p]
            if not train_pts:
                continue
            c0, c1 = train_pts[0]["cpu_s"], train_pts[-1]["cpu_s"]
            total = r["costs"]["compute"]["usd"]

            def cost_at(p, c0=c0, c1=c1, total=total):
                return total * ((p["cpu_s"] - c0) / (c1 - c0) if c1 > c0 else 1.0)

            line = ax.plot([cost_at(p) for p in train_pts], [p["loss"] for p in train_pts],
                           label=_label(r))[0]
            vals = [p for p in r["points"] if p.get("event") == "val"]
            steps = {p["step"]: p for p in train_pts}
            vx = [cost_at(steps[p["step"]]) for p in vals if p["step"] in steps]
            vy = [p["val_loss"] for p in vals if p["step"] in steps]
            ax.plot(vx, vy, "o", color=line.get_color(), markersize=4)
        ax.set_xlabel("cumulative compute cost (USD, accrued with CPU time)")
        ax.set_ylabel("loss (line: train, dots: validation)")
        ax.legend(fontsize=8)
        figs.append(("loss-vs-cost", "Loss against cumulative cost", _svg(fig)))

        # 3. throughput over time
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for r in trains:
            pts = [p for p in r["points"] if p.get("event") == "train" and "wall_s" in p]
            ax.plot([p["wall_s"] for p in pts], [p["tokens_per_s"] for p in pts], label=_label(r))
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        figs.append(("throughput", "Throughput over time", _svg(fig)))

        # 4. bytes communicated per strategy, against what plain all-reduce would send
        by_strategy: dict[str, list[float]] = {}
        for r in trains:
            info = r["info"]
            name = info.get("strategy") or "?"
            # the steps the invocation took (a row older than steps_done: the steps past its resume)
            done = info.get("steps_done") or (info.get("steps") or 1) - (info.get("resumed_from_step") or 0)
            steps = max(1, done)
            sent = r["usage"]["bytes_communicated"] / steps
            plain = (info.get("plain_allreduce_bytes") or 0) / steps
            by_strategy.setdefault(name, [0.0, 0.0, 0])
            by_strategy[name][0] += sent
            by_strategy[name][1] += plain
            by_strategy[name][2] += 1
        names = list(by_strategy)
        fig, ax = plt.subplots(figsize=(7, 0.8 + 0.5 * len(names)))
        ys = range(len(names))
        ax.barh([y + 0.2 for y in ys], [by_strategy[n][1] / by_strategy[n][2] for n in names], height=0.4,
                color="#bbbbbb", label="plain all-reduce would send")
        ax.barh([y - 0.2 for y in ys], [by_strategy[n][0] / by_strategy[n][2] for n in names], height=0.4,
                color=COLORS["network"], label="sent")
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_xlabel("bytes communicated per step, all workers (mean over runs)")
        ax.legend(fontsize=8)
        figs.append(("bytes-per-strategy", "Bytes communicated per strategy", _svg(fig)))

    # 5. quality against cost, Pareto front marked
    rated = [r for r in runs if r["kind"] == "train" and r["info"].get("final_val_loss") is not None]
    if len(rated) >= 2:
        pts = [(r["costs"]["total"]["usd"], r["info"]["final_val_loss"]) for r in rated]
        front = pareto_front(pts)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="#4c72b0", zorder=3)
        for r, (x, y) in zip(rated, pts, strict=True):
            ax.annotate(_label(r), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="#c44e52",
                label="Pareto front (nothing cheaper is better)")
        ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=80, facecolors="none",
                   edgecolors="#c44e52", zorder=4)
        ax.set_xlabel("total cost (USD)")
        ax.set_ylabel("final validation loss")
        ax.legend(fontsize=8)
        figs.append(("quality-vs-cost", "Quality against cost", _svg(fig)))
    return figs


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0 2em; } figure svg { max-width: 100%; height: auto; }
figcaption { font-weight: 600; margin-bottom: 0.3em; }
.note { color: #666; font-size: 0.9em; }
"""

CHECK = """
for (const fig of document.querySelectorAll("figure.plot")) {
  const svg = fig.querySelector("svg");
  const box = svg ? svg.getBoundingClientRect() : null;
  const marks = svg ? svg.querySelectorAll("path, use, rect").length : 0;
  fig.dataset.rendered = box && box.width > 50 && box.height > 50 && marks > 10 ? "yes" : "no";
}
document.body.dataset.plotsRendered =
  document.querySelectorAll('figure.plot[data-rendered="yes"]').length;
"""


def render(runs: list[dict], title: str = "thrifty report") -> str:
    """The report for ``runs`` (ledger rows with ``costs`` and ``points`` attached)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    head = "".join(f"<th>{h}</th>" for h in ("run", "kind", "started", "status", "wall", "total cost",
                                              "energy", "CO2", "val loss"))
    rows = []
    for r in runs:
        t = r["costs"]["total"]
        loss = r["info"].get("final_val_loss")
        started = r["started_at"].replace("T", " ")[:16]
        rows.append("<tr>" + "".join([
            f"<td>{e(_label(r))}</td>", f"<td>{e(r['kind'])}</td>", f"<td class=num>{e(started)}</td>",
            f"<td>{e(r['status'])}</td>", f"<td class=num>{fmt_seconds(r['usage']['wall_s'])}</td>",
            f"<td class=num>{fmt_usd(t['usd'])}</td>", f"<td class=num>{fmt_energy(t['kwh'])}</td>",
            f"<td class=num>{fmt_co2(t['kg_co2'])}</td>",
            f"<td class=num>{'' if loss is None else f'{loss:.4f}'}</td>"]) + "</tr>")
    parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    for fid, caption, svg in _figures(runs):
        parts.append(f"<figure class='plot' id='{fid}'><figcaption>{e(caption)}</figcaption>{svg}</figure>")
    for r in runs:
        parts.append(f"<h2>{e(_label(r))}</h2><p class=note>{e(r.get('command') or '')} — "
                     f"{e(r.get('run_dir') or '')}</p>")
        body = "".join(
            f"<tr><td>{d}</td><td class=num>{fmt_usd(c['usd'])}</td><td class=num>{fmt_energy(c['kwh'])}</td>"
            f"<td class=num>{fmt_co2(c['kg_co2'])}</td><td>{e(c.get('basis', ''))}</td></tr>"
            for d, c in r["costs"].items() if d != "total")
        parts.append("<table><tr><th>driver</th><th>money</th><th>energy</th><th>CO2</th><th>basis</th></tr>"
                     f"{body}</table>")
        u = r["usage"]
        parts.append(f"<p class=note>measured: {fmt_seconds(u['wall_s'])} wall, {u['cpu_s']:,.1f} CPU-s, "
                     f"{fmt_bytes(u['bytes_communicated'])} communicated, peak memory "
                     f"{fmt_bytes(u['peak_memory_bytes'])}; energy {e(u['energy_method'])}</p>")
    parts.append("<p class=note>Made by thrifty report. Prices are the price book stored with each run "
                 "unless the report was asked to re-price; estimates are labelled as such.</p>")
    parts.append(f"<script>{CHECK}</script></body></html>")
    return "\n".join(parts)
