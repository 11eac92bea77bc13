"""Charts drawn with Unicode block characters: stacked memory bars per plan, columns (throughput
against micro-batch size) and curves (loss and reward during a run).

The drawing functions are pure (numbers in, rich ``Text`` out), so they are tested on known numbers
and give the same cells on every terminal (snapshot-stable); the widgets only hold the numbers and
redraw at their width. Nothing is estimated here: the plans screen passes the estimates' own figures
(``ftadvisor.tui.advice.throughput_by_micro_batch`` asks the estimator for the columns).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from ftadvisor.tui.format import allot, rate, size

EIGHTHS = " ▁▂▃▄▅▆▇█"
"""A cell filled to 0/8 … 8/8 of its height (Unicode block elements U+2581–U+2588)."""

Parts = Sequence[tuple[str, float, str]]
"""Stacked segments ``(label, value, colour)``, as ``ftadvisor.tui.widgets.plans.memory_parts`` gives them."""


# --- pure drawing ----------------------------------------------------------------------------------


def resample(values: Sequence[float], width: int) -> list[float]:
    """At most ``width`` values: each the mean of an equal share of ``values`` (all of them when they fit)."""
    n = len(values)
    if n <= width or width <= 0:
        return [float(v) for v in values]
    out = []
    for i in range(width):
        chunk = values[i * n // width:(i + 1) * n // width]
        out.append(sum(chunk) / len(chunk))
    return out


def levels(values: Sequence[float], height: int, lo: float | None = None, hi: float | None = None,
           floor: int = 0) -> list[int]:
    """Each value as a number of eighth-cells out of ``height * 8``, linear between ``lo`` (default the
    smallest value) and ``hi`` (default the largest). ``floor`` eighths are given to the lowest value,
    so a curve's minimum still shows; all values equal: every column half full."""
    if not values:
        return []
    top = height * 8
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:
        return [top // 2] * len(values)
    span = top - floor
    return [max(0, min(top, floor + round((v - lo) / (hi - lo) * span))) for v in values]


def column_rows(lv: Sequence[int], height: int, col_width: int = 1, gap: int = 0) -> list[str]:
    """Rows (top first) of columns ``lv`` eighth-cells high, each ``col_width`` cells wide with ``gap`` between."""
    rows = []
    for r in range(height - 1, -1, -1):  # r: rows below this one
        cells = [EIGHTHS[max(0, min(8, n - 8 * r))] * col_width for n in lv]
        rows.append((" " * gap).join(cells))
    return rows


def stacked_bar_scaled(parts: Parts, scale: float, capacity: float, width: int) -> Text:
    """One stacked bar on a scale shared with other bars: ``scale`` bytes span ``width`` cells.

    Segments are split by largest remainder (``allot``); cells past ``capacity`` are on red; in the
    free part of the bar a ``│`` marks where the capacity ends."""
    used = float(sum(v for _, v, _ in parts))
    if scale <= 0 or width <= 0:
        return Text("")
    used_cells = min(width, round(used / scale * width))
    cap_cell = round(capacity / scale * width) if capacity > 0 else width
    out = Text()
    pos = 0
    for (_, _, colour), n in zip(parts, allot([v for _, v, _ in parts], used_cells)):
        inside = max(0, min(n, cap_cell - pos))
        out.append("█" * inside, style=colour)
        out.append("█" * (n - inside), style=f"{colour} on red")
        pos += n
    for i in range(pos, width):
        out.append("│" if i == cap_cell else "·", style="bold" if i == cap_cell else "dim")
    return out


def memory_chart(plans: Sequence[tuple[str, Parts, bool]], capacity: float, width: int) -> Text:
    """One line per plan, ``label  bar  total``: the memory breakdown of every plan on one scale (the
    larger of the card and the biggest plan), so plans compare at a glance. ``plans``: ``(label,
    parts, fits)``; a plan that does not fit has its total in red."""
    if not plans:
        return Text("")
    label_w = max(len(label) for label, _, _ in plans)
    totals = [sum(v for _, v, _ in parts) for _, parts, _ in plans]
    scale = max([capacity, *totals])
    bar_w = max(4, width - label_w - 11)
    out = Text()
    for i, ((label, parts, fits), total) in enumerate(zip(plans, totals)):
        if i:
            out.append("\n")
        out.append(f"{label:<{label_w}} ")
        out.append_text(stacked_bar_scaled(parts, scale, capacity, bar_w))
        out.append(f" {size(total):>9}", style="" if fits else "red")
    return out


def column_chart(xs: Sequence[object], ys: Sequence[float | None], height: int, ok: Sequence[bool] | None = None,
                 col_width: int = 4) -> Text:
    """Columns from zero for categorical ``xs`` (a missing y draws nothing), the x labels under them.
    Columns whose ``ok`` is False are red (e.g. a micro-batch that does not fit the card)."""
    known = [y for y in ys if y is not None]
    hi = max(known) if known else 0.0
    lv = levels([y if y is not None else 0.0 for y in ys], height, lo=0.0, hi=hi) if hi > 0 else [0] * len(ys)
    ok = list(ok) if ok is not None else [True] * len(ys)
    out = Text()
    for row in column_rows(lv, height, col_width, gap=1):
        for j, x in enumerate(xs):
            cell = row[j * (col_width + 1):j * (col_width + 1) + col_width]
            out.append(cell, style="green" if ok[j] else "red")
            out.append(" ")
        out.append("\n")
    for j, x in enumerate(xs):
        out.append(f"{str(x):^{col_width}} ", style="" if ok[j] else "red")
    return out


def curve(values: Sequence[float], width: int, height: int, colour: str = "cyan") -> Text:
    """A curve of ``values`` across ``width`` columns (resampled when more, each value widened to
    ``width // n`` columns when fewer), scaled between its min and max, the lowest value one eighth
    high so it shows."""
    vals = resample(values, width)
    lv = levels(vals, height, floor=1)
    return Text("\n".join(column_rows(lv, height, col_width=max(1, width // max(1, len(vals))))), style=colour)


# --- widgets -----------------------------------------------------------------------------------------


class MemoryChart(Widget):
    """Memory per GPU of every plan as stacked bars on one scale, ``│`` at the card's memory."""

    DEFAULT_CSS = """
    MemoryChart { height: auto; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.plans: list[tuple[str, Parts, bool]] = []
        self.capacity = 0.0

    def set_plans(self, plans: list[tuple[str, Parts, bool]], capacity: float) -> None:
        self.plans, self.capacity = plans, capacity
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.plans)

    def render(self) -> Text:
        return memory_chart(self.plans, self.capacity, self.size.width)


class ThroughputChart(Widget):
    """Tokens/s of one plan at each micro-batch size (red: does not fit the card)."""

    DEFAULT_CSS = """
    ThroughputChart { height: auto; }
    """
    HEIGHT = 3

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.points: list[tuple[int, float | None, bool]] = []

    def set_points(self, points: list[tuple[int, float | None, bool]]) -> None:
        """``(micro_batch_size, tokens_per_second or None, fits)`` per column."""
        self.points = points
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return self.HEIGHT + 2 if self.points else 1

    def render(self) -> Text:
        if not self.points:
            return Text("working out throughput per micro-batch …", style="dim")
        xs = [mb for mb, _, _ in self.points]
        ys = [tps for _, tps, _ in self.points]
        fit = [(mb, tps) for mb, tps, ok in self.points if ok and tps is not None]
        head = Text("tokens/s by micro-batch", style="bold")
        if fit:
            best = max(fit, key=lambda p: p[1])
            head.append(f"  best that fits: {rate(best[1])} at {best[0]}", style="")
        if any(not ok for _, _, ok in self.points):
            head.append("  red: does not fit", style="red")
        return head + Text("\n") + column_chart(xs, ys, self.HEIGHT, [ok for _, _, ok in self.points])


class CurveChart(Widget):
    """Named curves stacked one under another (``label first→last`` on the left), for the run's loss
    and the objective's training signal (rewards, margin, accuracy, KL)."""

    DEFAULT_CSS = """
    CurveChart { height: auto; }
    """
    HEIGHT = 2
    LABEL = 12  # as wide as the loss label above it (RunMonitor #loss-row Label)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.series: list[tuple[str, list[float]]] = []

    def set_series(self, series: list[tuple[str, list[float]]]) -> None:
        series = [(name, vals) for name, vals in series if vals]
        self.display = bool(series)
        if series != self.series:
            self.series = series
            self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.series) * self.HEIGHT

    def render(self) -> Text:
        out = Text()
        width = max(4, self.size.width - self.LABEL)
        for i, (name, vals) in enumerate(self.series):
            rows = curve(vals, width, self.HEIGHT).split("\n")
            labels = [name, f"{vals[0]:.3g}→{vals[-1]:.3g}"]
            for r, row in enumerate(rows):
                if i or r:
                    out.append("\n")
                out.append(f"{labels[r] if r < len(labels) else '':<{self.LABEL}}"[: self.LABEL],
                           style="bold" if r == 0 else "dim")
                out.append_text(row)
        return out
