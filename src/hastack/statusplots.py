"""The status page's plots of the last hour, drawn by matplotlib (Agg) into PNG bytes.

Each plot is one of hastack.status.RANGE_QUERIES (the same PromQL `hastack status` asks for
the current value) over the last hour at a 15 s step. Pure: series in, PNG out; a Figure of
its own per call (no pyplot state), so the page's threads can draw concurrently.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from hastack.status import Series

WINDOW_SECONDS = 3600
STEP_SECONDS = 15
SIZE_INCHES = (6.4, 2.6)
DPI = 100  # 640 x 260 pixels


@dataclass(frozen=True)
class Plot:
    name: str          # /plots/<name>.png; its query: hastack.status.RANGE_QUERIES[name]
    title: str
    unit: str
    scale: float       # Prometheus' value -> the unit shown (ratio -> %, s -> ms)
    min_top: float     # the y axis shows at least 0..min_top (a flat zero line is legible)
    legend_label: str | None = None  # one line per value of this label, named in a legend


PLOTS = (
    Plot("requests", "Edge requests/s (all load balancers)", "req/s", 1, 1),
    Plot("error_ratio", "5xx share of edge responses", "%", 100, 1),
    Plot("p99", "App p99 latency", "ms", 1000, 10),
    Plot("lag", "Replication lag per replica", "s", 1, 1, legend_label="machine"),
)
BY_NAME = {p.name: p for p in PLOTS}


def render(plot: Plot, found: list[Series], start: float, end: float,
           empty: str = "no data") -> bytes:
    """One plot as PNG: every series of `found` over [start, end] (unix times, UTC axis);
    `empty` is written across it when there is nothing to draw."""
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    top = 0.0
    for labels, points in sorted(found, key=lambda s: sorted(s[0].items())):
        times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
        values = [math.nan if v is None else v * plot.scale for _, v in points]
        top = max([top, *(v for v in values if not math.isnan(v))])
        name = labels.get(plot.legend_label, "?") if plot.legend_label else None
        ax.plot(times, values, linewidth=1.4, label=name)
    if not any(points for _, points in found):
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center",
                color="grey")
    elif plot.legend_label:
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    ax.set_ylim(0, max(top * 1.15, plot.min_top))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))
    ax.set_title(plot.title, fontsize="medium")
    ax.set_ylabel(plot.unit)
    ax.set_xlabel("UTC")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
