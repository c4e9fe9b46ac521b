"""A small server-rendered SVG chart: issued and redeemed offers per day (no script)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    label: str
    css_class: str
    values: list[int]


def _nice_max(value: int) -> int:
    """Three gridline steps of 1, 2 or 5 x 10^k that reach ``value`` (whole numbers).

    >>> _nice_max(0), _nice_max(7), _nice_max(1300)
    (3, 15, 1500)
    """
    scale = 1
    while True:
        for m in (1, 2, 5):
            if 3 * m * scale >= value:
                return 3 * m * scale
        scale *= 10


def daily_bars(days: list[str], series: list[Series], width: int = 880, height: int = 240) -> str:
    """Grouped bars per day, a y axis with three gridlines and a few date labels.

    Every text in the SVG is a number or an ISO date made here, so nothing needs escaping
    beyond what Jinja does for the labels passed through the template.
    """
    left, right, top, bottom = 44, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((max(s.values, default=0) for s in series), default=0))
    slot = plot_w / max(len(days), 1)
    bar = max(1.0, slot * 0.8 / max(len(series), 1))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Issued and redeemed offers per day" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i in range(4):
        value = top_value * i / 3
        y = top + plot_h - plot_h * i / 3
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{value:,.0f}</text>")  # fmt: skip
    for d, day in enumerate(days):
        x0 = left + d * slot + slot * 0.1
        for k, s in enumerate(series):
            v = s.values[d]
            h = plot_h * v / top_value
            out.append(
                f'<rect class="{s.css_class}" x="{x0 + k * bar:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{day}: {v:,} {s.label}</title></rect>'
            )
    label_every = max(1, len(days) // 6)
    for d in range(0, len(days), label_every):
        x = left + d * slot + slot / 2
        out.append(f'<text class="axis" x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
                   f"{days[d][5:]}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)
