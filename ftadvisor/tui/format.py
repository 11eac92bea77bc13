"""Plain-text formatting shared by the TUI's widgets (numbers, durations, bars).

No textual here: only rich's ``Text`` for the coloured bars, so the helpers can be tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

GIB = 2**30


def gib(n_bytes: float | None, digits: int = 1) -> str:
    """Bytes as GiB without the unit (``20.5``); ``-`` when unknown."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / GIB:.{digits}f}"


def size(n_bytes: float | None) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point: ``20.5 GiB``, ``345 MiB``."""
    if n_bytes is None:
        return "-"
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n_bytes) >= div:
            val = n_bytes / div
            return f"{val:.1f} {unit}" if val < 100 else f"{val:.0f} {unit}"
    return f"{n_bytes:.0f} B"


def count(n: float | None) -> str:
    """A parameter or example count in short form: ``8.03B``, ``41.9M``, ``12.0K``."""
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            val = n / div
            return f"{val:.2f}{suffix}" if val < 10 else f"{val:.1f}{suffix}" if val < 100 else f"{val:.0f}{suffix}"
    return f"{n:.0f}"


def rate(tokens_per_s: float | None) -> str:
    """Tokens per second: ``950``, ``12,345``, ``1.23M``."""
    if tokens_per_s is None:
        return "-"
    return count(tokens_per_s) if tokens_per_s >= 100_000 else f"{tokens_per_s:,.0f}"


def duration(hours: float | None) -> str:
    """Hours as the most readable unit: ``40 s``, ``3.4 min``, ``12 min``, ``3.5 h``, ``4.2 d``."""
    if hours is None:
        return "-"
    seconds = hours * 3600
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 10 * 60:
        return f"{seconds / 60:.1f} min"  # a tenth of a minute still tells short plans apart
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


def money(usd: float | None) -> str:
    """US dollars: cents below $100 (``$0.42``, ``$12.34``), whole dollars above (``$1,234``); ``-`` when unknown."""
    if usd is None:
        return "-"
    if 0 < usd < 0.005:
        return "<$0.01"
    if usd < 100:
        return f"${usd:.2f}"
    return f"${usd:,.0f}"


def allot(values: Sequence[float], cells: int) -> list[int]:
    """Split ``cells`` between ``values`` in proportion, summing exactly to ``cells``.

    Largest-remainder (Hamilton) apportionment: each share is floored, the cells left over go to
    the largest fractional parts, so a stacked bar never gains or loses a cell to rounding.
    """
    total = float(sum(values))
    if cells <= 0 or total <= 0:
        return [0] * len(values)
    exact = [v / total * cells for v in values]
    out = [int(x) for x in exact]
    left = cells - sum(out)
    order = sorted(range(len(values)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[:left]:
        out[i] += 1
    return out


def capacity_bar(used: float, capacity: float, width: int = 10) -> Text:
    """``used`` against ``capacity`` as a bar of ``width`` cells; red with ``>`` when over."""
    frac = used / capacity if capacity > 0 else float("inf")
    filled = min(width, round(frac * width)) if frac == frac else width
    style = "red" if frac > 1 else "yellow" if frac > 0.9 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("·" * (width - filled), style="dim")
    if frac > 1:
        bar.append(">", style="bold red")
    else:
        bar.append(" ")
    return bar


def stacked_bar(parts: Sequence[tuple[str, float, str]], capacity: float, width: int) -> Text:
    """Segments ``(label, bytes, colour)`` stacked left to right on a bar of ``width`` cells.

    The bar's full width is the larger of the capacity and the sum of the parts, so a plan that
    does not fit shows how far it overshoots (the cells past the capacity are marked in red).
    """
    used = float(sum(v for _, v, _ in parts))
    scale = max(float(capacity), used)
    if scale <= 0 or width <= 0:
        return Text("")
    used_cells = min(width, round(used / scale * width))
    cap_cells = min(width, round(capacity / scale * width))
    shares = allot([v for _, v, _ in parts], used_cells)
    out = Text()
    pos = 0
    for (_, _, colour), n in zip(parts, shares):
        inside = max(0, min(n, cap_cells - pos))  # cells of this segment within the card's capacity
        out.append("█" * inside, style=colour)
        out.append("█" * (n - inside), style=f"{colour} on red")
        pos += n
    if pos < width:
        out.append("·" * (width - pos), style="dim")
    return out
