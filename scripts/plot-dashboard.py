#!/usr/bin/env python3
"""Draws the smtpfleet dashboard's panels as one PNG, from the query results of a real
run: monitoring/run.sh with SMTPFLEET_MONITORING_OUT=DIR writes DIR/panels.json (every
dashboard query, answered by the test's Prometheus over the run).

  SMTPFLEET_MONITORING_OUT=/tmp/out SMTPFLEET_MONITORING_LOAD_SECONDS=60 monitoring/run.sh -run TestLive
  scripts/plot-dashboard.py /tmp/out/panels.json docs/dashboard.png
"""

import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLUMNS = 4


def legend(fmt, metric):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)
    return " ".join(text.split()) or "value"


def formatter(unit):
    def fmt(value, _):
        if unit == "percentunit":
            return f"{value * 100:.0f}%"
        if unit == "s":
            if value and abs(value) < 1:
                return f"{value * 1000:.3g} ms"
            return f"{value:.3g} s"
        if unit == "ops":
            return f"{value:.3g}/s"
        return f"{value:.3g}"

    return FuncFormatter(fmt)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = json.load(open(sys.argv[1]))
    start = data["start"]
    panels = {}
    for entry in data["panels"]:
        panel = panels.setdefault(entry["panel"], {"unit": entry["unit"], "lines": []})
        for series in entry["series"] or []:
            points = [(float(t) - start, float(v)) for t, v in series["values"]]
            points = [(t, v) for t, v in points if not math.isnan(v)]
            if points:
                panel["lines"].append((legend(entry["legend"], series["metric"]), points))

    rows = math.ceil(len(panels) / COLUMNS)
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * 4.6, rows * 2.7), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        ax.set_facecolor("#181b1f")
        for name, points in panel["lines"][:8]:
            ax.plot([t for t, _ in points], [v for _, v in points], linewidth=1.3, label=name)
        ax.set_title(title, fontsize=9, loc="left", color="#d8d9da")
        ax.yaxis.set_major_formatter(formatter(panel["unit"]))
        ax.tick_params(labelsize=7, colors="#9fa7b3")
        ax.set_ylim(bottom=0)
        ax.grid(color="#2c3036", linewidth=0.5)
        for spine in ax.spines.values():
            spine.set_color("#2c3036")
        if panel["lines"]:
            ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"smtpfleet dashboard: {len(panels)} panels over a {int(data['end'] - start)} s test run "
                 "(two nodes in two data centres, SMTP load, the operator); x: seconds",
                 fontsize=11, color="#d8d9da", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(sys.argv[2], dpi=80, facecolor=fig.get_facecolor())


if __name__ == "__main__":
    main()
