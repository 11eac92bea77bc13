"""Hardware step: the profile table filtered as the user types."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from ftadvisor.schema import HardwareProfile
from ftadvisor.tui.widgets.common import FilterTable


def search_hardware(query: str, profiles: Iterable[HardwareProfile]) -> list[HardwareProfile]:
    """Profiles whose id, name or aliases contain every word typed; exact id/alias matches first."""
    words = query.lower().split()
    q = query.strip().lower()

    def hay(h: HardwareProfile) -> str:
        return " ".join([h.id, h.name, *h.aliases, h.vendor]).lower()

    hits = [h for h in profiles if all(w in hay(h) for w in words)]
    return sorted(hits, key=lambda h: h.id != q and q not in h.aliases)


class HardwareTable(FilterTable):
    """Cards: memory, dense BF16 throughput, memory bandwidth, default price (typing filters it)."""

    FILTER_INPUT = "hw-query"

    DEFAULT_CSS = """
    HardwareTable {
        height: 1fr;
        min-height: 4;
    }
    """

    detected: str | None = None

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_column("card", key="id")
        self.add_column("GiB", key="gib")
        self.add_column("bf16 TFLOP/s", key="tflops")
        self.add_column("HBM GB/s", key="bw")
        self.add_column("$/GPU-h", key="price")
        self.add_column("name", key="name")

    def show(self, profiles: list[HardwareProfile]) -> None:
        self.clear()
        for h in profiles:
            mark = Text(" ◆", style="green") if h.id == self.detected else Text("")
            self.add_row(Text(h.id) + mark, Text(f"{h.memory_gib:.0f}", justify="right"),
                         Text(f"{h.bf16_dense_tflops:.0f}" if h.bf16_dense_tflops else "-", justify="right"),
                         Text(f"{h.hbm_bandwidth_gbps:,.0f}", justify="right"),
                         Text(f"{h.hourly_price_usd:.2f}" if h.hourly_price_usd is not None else "-", justify="right"),
                         h.name, key=h.id)
