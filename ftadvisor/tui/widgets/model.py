"""Model step: the profile table filtered as the user types, and the chosen model's summary."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import Static

from ftadvisor.schema import ModelProfile
from ftadvisor.tui.format import count
from ftadvisor.tui.widgets.common import FilterTable


def _haystack(p: ModelProfile) -> str:
    a = p.arch
    kind = "moe" if a.is_moe else "dense"
    return " ".join([p.id, p.name, p.hf_id or "", *p.aliases, a.model_type, kind]).lower()


def search_models(query: str, profiles: Iterable[ModelProfile]) -> list[ModelProfile]:
    """Profiles whose id, name, HF id, aliases, family or ``moe``/``dense`` contain every word typed.

    Exact id matches come first, then ids starting with the query, then the rest by size.
    """
    words = query.lower().split()
    hits = [p for p in profiles if all(w in _haystack(p) for w in words)]
    q = query.strip().lower()

    def key(p: ModelProfile):
        return (p.id != q, not p.id.startswith(q) if q else False, p.arch.total_params)

    return sorted(hits, key=key)


def arch_summary(p: ModelProfile) -> str:
    a = p.arch
    moe = f"MoE {a.num_experts}×top{a.experts_per_token}" if a.is_moe else "dense"
    return f"{a.model_type}, {a.num_layers}×{a.hidden_size}, {moe}"


class ModelTable(FilterTable):
    """Matching model profiles: id, size, family, depth × width, MoE or dense (typing filters it)."""

    FILTER_INPUT = "model-query"

    DEFAULT_CSS = """
    ModelTable {
        height: 1fr;
        min-height: 4;
    }
    """

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_column("model", key="id")
        self.add_column("params", key="params")
        self.add_column("active", key="active")
        self.add_column("family", key="family")
        self.add_column("layers×width", key="shape")
        self.add_column("experts", key="moe")
        self.add_column("Hugging Face id", key="hf")

    def show(self, profiles: list[ModelProfile]) -> None:
        self.clear()
        for p in profiles:
            a = p.arch
            moe = Text(f"{a.num_experts}×top{a.experts_per_token}", style="magenta") if a.is_moe else Text("dense", style="dim")
            self.add_row(p.id, Text(count(a.total_params), justify="right"),
                         Text(count(a.active_params), justify="right"), a.model_type,
                         f"{a.num_layers}×{a.hidden_size}", moe, p.hf_id or "", key=p.id)


class ModelSummary(Static):
    """The highlighted or chosen model in a few words."""

    DEFAULT_CSS = """
    ModelSummary {
        height: auto;
        max-height: 3;
        padding: 0 1;
        color: $text-muted;
    }
    """

    def show(self, p: ModelProfile | None, chosen: bool = False) -> None:
        if p is None:
            self.update("")
            return
        a = p.arch
        head = Text()
        if chosen:
            head.append("✔ ", style="green")
        head.append(f"{p.name}", style="bold")
        head.append(f"  {count(a.total_params)} params ({count(a.active_params)} active), {arch_summary(p)}, "
                    f"{a.num_attention_heads} heads / {a.num_kv_heads} kv, vocab {a.vocab_size:,}"
                    + (f", context {a.max_position_embeddings:,}" if a.max_position_embeddings else ""))
        if p.notes:
            head.append(f"\n{p.notes.strip()}", style="italic")
        self.update(head)
