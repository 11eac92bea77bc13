"""Plans step: the ranked table, the memory bar, the knobs and the detail pane of one plan.

Every number shown comes from an :class:`ftadvisor.Estimate` (``.memory``, and where the
recommender filled them in ``.speed``, ``.time_cost`` and ``.quality``); nothing is computed here
but layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, DataTable, Input, Label, Select, Static

from ftadvisor.recommend import MEMORY_HEADROOM, fits_card
from ftadvisor.schema import Estimate, Optimizer, Sharding, TrainingPlan
from ftadvisor.tui.format import capacity_bar, count, duration, money, rate, size, stacked_bar

# MemoryBreakdown components in the order they stack, with a short label and a colour
# (Tableau-10 palette, so neighbours stay distinguishable).
MEMORY_PARTS: tuple[tuple[str, str, str], ...] = (
    ("weights_bytes", "weights", "#4e79a7"),
    ("master_weights_bytes", "master", "#76b7b2"),
    ("gradients_bytes", "grads", "#f28e2b"),
    ("optimizer_state_bytes", "optim", "#e15759"),
    ("activations_bytes", "activ", "#59a14f"),
    ("logits_bytes", "logits", "#edc948"),
    ("extra_models_bytes", "models", "#b07aa1"),
    ("generation_cache_bytes", "KV", "#ff9da7"),
    ("quantization_workspace_bytes", "dequant", "#9c755f"),
    ("communication_bytes", "comm", "#bab0ac"),
    ("framework_overhead_bytes", "framework", "#8cd17d"),
)
# What sits on the card beyond the allocated tensors (estimator: reserved = allocated + slack,
# device total = reserved + runtime overhead + resident paged state).
SLACK_COLOUR, RUNTIME_COLOUR, PAGED_COLOUR = "grey50", "grey35", "#d37295"


def memory_parts(est: Estimate) -> list[tuple[str, float, str]]:
    """The device total of one estimate as stacked segments ``(label, bytes, colour)``."""
    m = est.memory
    parts = [(label, float(getattr(m, key)), colour) for key, label, colour in MEMORY_PARTS]
    parts.append(("allocator", float(m.peak_reserved_bytes - m.peak_allocated_bytes), SLACK_COLOUR))
    parts.append(("CUDA ctx", float(m.runtime_overhead_bytes), RUNTIME_COLOUR))
    parts.append(("paged", float(m.paged_bytes), PAGED_COLOUR))
    return [p for p in parts if p[1] > 0]


def _attr(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) if obj is not None else None


def quality_text(q: Any) -> str:
    rel, low, high = _attr(q, "relative_to_full"), _attr(q, "low"), _attr(q, "high")
    if rel is None:
        return "-"
    if low is None or high is None:
        return f"{rel:.2f}"
    return f"{rel:.2f} ({low:.2f}–{high:.2f})"


def quality_cell(q: Any) -> Text:
    """The table's quality cell, ``1.00 0.86–1.17``, marked ``weak`` when thin evidence is behind it
    (the recommender never ranks such a plan above a better-evidenced one of at least its quality);
    no parentheses, so the marked cell still fits an 80-column table."""
    rel, low, high = _attr(q, "relative_to_full"), _attr(q, "low"), _attr(q, "high")
    cell = Text(f"{rel:.2f} {low:.2f}–{high:.2f}" if None not in (rel, low, high) else quality_text(q))
    if _attr(q, "evidence_strength") == "weak":
        cell.append(" weak", style="yellow")
    return cell


def citation_text(src: Any) -> str:
    """One quality source as a line: ``paper — where: figure``."""
    source, where, figure = _attr(src, "source"), _attr(src, "where"), _attr(src, "figure")
    if source is None:
        return str(src)
    return f"{source} — {where}: {figure}" if where and figure else str(source)


@dataclass
class PlanRow:
    """One line of the plans table: a ranked plan, a rejected one, or a plain estimate."""

    key: str
    rank: int | None
    plan: TrainingPlan
    estimate: Estimate
    reasons: tuple[str, ...] = ()
    rejected: bool = False
    edited: bool = False
    base: PlanRow | None = None
    """The row as the recommender gave it, before any knob was turned (None: not edited)."""

    @property
    def fits(self) -> bool:
        return fits_card(self.estimate) and not self.rejected


# Knobs and figures compared between a recommended plan and its edited copy: (label, getter, format).
KNOB_FIELDS = (("seq_len", "seq_len"), ("micro-batch", "micro_batch_size"), ("LoRA r", "lora_r"),
               ("checkpointing", "gradient_checkpointing"), ("sharding", "sharding"), ("optimizer", "optimizer"),
               ("accumulation", "gradient_accumulation_steps"), ("framework", "framework"))


def _framework_names() -> list[str]:
    """The registered training frameworks, the launcher's own first (ftadvisor.frameworks)."""
    from ftadvisor.frameworks import DEFAULT_FRAMEWORK, FRAMEWORKS

    return [DEFAULT_FRAMEWORK, *sorted(f for f in FRAMEWORKS if f != DEFAULT_FRAMEWORK)]


def _fit_word(est: Estimate) -> str:
    if fits_card(est):
        return "fits"
    return f"does not fit with {MEMORY_HEADROOM:.0%} kept free" if est.fits else "does not fit"


def edit_lines(row: PlanRow) -> list[str]:
    """What the knobs changed against the recommended plan, in the two estimates' own figures:
    the knob values, memory per GPU and whether it fits, tokens/s, time, cost and quality."""
    base = row.base
    if base is None:
        return []
    old, new = base.estimate, row.estimate
    out = []
    knobs = [f"{label} {getattr(base.plan, f)} → {getattr(row.plan, f)}" for label, f in KNOB_FIELDS
             if getattr(base.plan, f) != getattr(row.plan, f)]
    if knobs:
        out.append(", ".join(knobs))
    a, b = old.memory.device_total_bytes, new.memory.device_total_bytes
    out.append(f"memory per GPU {size(a)} → {size(b)} ({'+' if b > a else '−'}{size(abs(b - a))}): {_fit_word(new)}"
               if a != b else f"memory per GPU unchanged at {size(b)}: {_fit_word(new)}")
    s0, s1 = _attr(_attr(old, "speed"), "tokens_per_second_total"), _attr(_attr(new, "speed"), "tokens_per_second_total")
    if s0 is not None and s1 is not None:
        out.append(f"throughput {rate(s0)} → {rate(s1)} tokens/s")
    t0, t1 = _attr(old, "time_cost"), _attr(new, "time_cost")
    if t0 is not None and t1 is not None:
        out.append(f"time {duration(t0.wall_clock_hours)} → {duration(t1.wall_clock_hours)}, "
                   f"cost {money(t0.cost_usd)} → {money(t1.cost_usd)}")
    q0, q1 = quality_text(_attr(old, "quality")), quality_text(_attr(new, "quality"))
    if q0 != q1:
        out.append(f"quality {q0} → {q1}")
    return out


class PlanTable(DataTable):
    """Ranked plans, then the rejected ones greyed out."""

    DEFAULT_CSS = """
    PlanTable {
        height: 40%;
        min-height: 5;
    }
    """

    COLUMNS = (("#", "rank"), ("technique", "technique"), ("memory per GPU", "memory"), ("fits", "fits"),
               ("tok/s", "speed"), ("time", "time"), ("cost", "cost"), ("quality", "quality"))

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for label, key in self.COLUMNS:
            self.add_column(label, key=key)

    def cells(self, row: PlanRow, capacity: float) -> list[Text]:
        est = row.estimate
        m = est.memory
        speed, tc, q = _attr(est, "speed"), _attr(est, "time_cost"), _attr(est, "quality")
        bar = capacity_bar(m.device_total_bytes, capacity, 4)  # 4 cells: room for a "weak" mark at 80 columns
        bar.append(f"{size(m.device_total_bytes):>9}")
        fits_here = fits_card(est)  # the recommender's meaning: within the card less the headroom
        if row.rejected and fits_here:
            fits = Text("budget", style="yellow")  # fits in memory but breaks a time or money budget
        else:
            fits = Text("yes", style="green") if fits_here else Text("no", style="red")
        cells = [
            Text("-" if row.rank is None else str(row.rank), justify="right"),
            Text(est.technique + (" *" if row.edited else "")),
            bar,
            fits,
            Text(rate(_attr(speed, "tokens_per_second_total")), justify="right"),
            Text(duration(_attr(tc, "wall_clock_hours")), justify="right"),
            Text(money(_attr(tc, "cost_usd")), justify="right"),
            quality_cell(q),
        ]
        if row.rejected:
            for c in cells:
                c.stylize("dim")
        return cells

    def show(self, rows: list[PlanRow], capacity: float) -> None:
        self.clear()
        for row in rows:
            self.add_row(*self.cells(row, capacity), key=row.key)
        self._fit_columns()

    def update_plan(self, row: PlanRow, capacity: float) -> None:
        for (_, key), cell in zip(self.COLUMNS, self.cells(row, capacity)):
            self.update_cell(row.key, key, cell, update_width=True)
        self._fit_columns()

    def _fit_columns(self) -> None:
        """Size every column to its widest cell now. DataTable measures new cells only when its
        message queue runs dry (on idle); a table drawn before that, as under load, cut numbers
        ("26,78" for 26,787)."""
        for key, column in self.columns.items():
            widths = [c.cell_len for c in self.get_column(key) if isinstance(c, Text)]
            column.content_width = max([column.label.cell_len, *widths])
        self.refresh()


class MemoryBar(Widget):
    """The memory breakdown of one plan as a stacked bar the width of the pane, against the card."""

    DEFAULT_CSS = """
    MemoryBar {
        height: 1;
        width: 1fr;
    }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.parts: list[tuple[str, float, str]] = []
        self.capacity = 0.0

    def set_parts(self, parts: list[tuple[str, float, str]], capacity: float) -> None:
        self.parts, self.capacity = parts, capacity
        self.refresh()

    def render(self) -> Text:
        return stacked_bar(self.parts, self.capacity, self.size.width)


class MemoryLegend(Widget):
    """Each segment of the bar with its size, largest first; wrapped between entries, never inside one."""

    DEFAULT_CSS = """
    MemoryLegend {
        height: auto;
    }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.entries: list[Text] = []

    def set_parts(self, parts: list[tuple[str, float, str]]) -> None:
        total = sum(p[1] for p in parts)
        self.entries = []
        for label, n_bytes, colour in sorted(parts, key=lambda p: -p[1]):
            if n_bytes < 0.002 * total:
                continue  # below a tenth of a cell on a 50-cell bar: noise in the legend
            entry = Text()
            entry.append("■ ", style=colour)
            entry.append(f"{label} {size(n_bytes)}")
            self.entries.append(entry)
        self.refresh(layout=True)

    def _lines(self, width: int) -> list[Text]:
        lines: list[Text] = [Text()]
        for entry in self.entries:
            line = lines[-1]
            if line.cell_len and line.cell_len + 2 + entry.cell_len > width:
                lines.append(Text())
                line = lines[-1]
            if line.cell_len:
                line.append("  ")
            line.append_text(entry)
        return lines

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines(width)) if self.entries else 0

    def render(self) -> Text:
        return Text("\n").join(self._lines(self.size.width))


class KnobInput(Input):
    """A whole-number knob. It claims only digit keys, so the screen's letter keys (``l`` to launch)
    keep working while it has focus (textual lets an Input shadow every printable key otherwise)."""

    def __init__(self, **kw) -> None:
        super().__init__(compact=True, restrict=r"[0-9]*", **kw)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return character is not None and character.isdigit()

    async def _on_key(self, event) -> None:
        if event.is_printable and not (event.character or "").isdigit():
            # Not ours: skip Input's handler (textual calls each class's handler unless the default
            # is prevented) and let the key bubble on to the screen's bindings.
            event.prevent_default()


class PlanKnobs(Widget):
    """The knobs that change memory the most; each change re-estimates the plan at once."""

    DEFAULT_CSS = """
    PlanKnobs {
        height: auto;
        layout: vertical;
    }
    PlanKnobs Horizontal {
        height: 1;
        margin-bottom: 0;
    }
    PlanKnobs Label {
        color: $text-muted;
        padding: 0 1 0 0;
    }
    PlanKnobs Input {
        width: 8;
        margin-right: 2;
    }
    PlanKnobs Select {
        width: 20;
        margin-right: 2;
    }
    PlanKnobs Checkbox {
        border: none;
        padding: 0;
        height: 1;
        margin-right: 2;
        background: transparent;
    }
    PlanKnobs Checkbox.-textual-compact:focus {
        border: none;
        text-style: bold;
    }
    PlanKnobs #knob-error {
        color: $text-error;
        height: auto;
    }
    """

    class Changed(Message):
        """The user turned a knob; ``fields`` holds every knob's current value."""

        def __init__(self, fields: dict[str, Any]) -> None:
            super().__init__()
            self.fields = fields

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("seq_len")
            yield KnobInput(id="knob-seq_len")
            yield Label("micro-batch")
            yield KnobInput(id="knob-micro_batch_size")
            yield Label("LoRA r")
            yield KnobInput(id="knob-lora_r")
            yield Label("framework")  # the stack the estimate is for (ftadvisor.frameworks): where memory goes
            yield Select([(f, f) for f in _framework_names()], allow_blank=False, compact=True, id="knob-framework")
        with Horizontal():
            yield Checkbox("checkpointing", id="knob-gradient_checkpointing", compact=True)
            yield Label("sharding")
            yield Select([(s, s) for s in get_args(Sharding)], allow_blank=False, compact=True, id="knob-sharding")
            yield Label("optimizer")
            yield Select([(o, o) for o in get_args(Optimizer)], allow_blank=False, compact=True, id="knob-optimizer")
        yield Static("", id="knob-error")

    def load(self, plan: TrainingPlan, lora_like: bool) -> None:
        """Show ``plan``'s values (no Changed message results: values equal to the plan are ignored)."""
        self._plan = plan
        self.query_one("#knob-seq_len", Input).value = str(plan.seq_len)
        self.query_one("#knob-micro_batch_size", Input).value = str(plan.micro_batch_size)
        r = self.query_one("#knob-lora_r", Input)
        r.value = str(plan.lora_r)
        r.disabled = not lora_like
        self.query_one("#knob-gradient_checkpointing", Checkbox).value = plan.gradient_checkpointing
        self.query_one("#knob-sharding", Select).value = plan.sharding
        self.query_one("#knob-optimizer", Select).value = plan.optimizer
        self.query_one("#knob-framework", Select).value = plan.framework
        self.show_error("")

    def show_error(self, message: str) -> None:
        self.query_one("#knob-error", Static).update(Text(message))

    def values(self) -> dict[str, Any] | None:
        """Every knob's value, or None (with an inline error) while a number is being typed."""
        out: dict[str, Any] = {}
        for name in ("seq_len", "micro_batch_size", "lora_r"):
            text = self.query_one(f"#knob-{name}", Input).value.strip()
            if not text or int(text) < 1:
                self.show_error(f"{name}: needs a whole number ≥ 1")
                return None
            out[name] = int(text)
        out["gradient_checkpointing"] = self.query_one("#knob-gradient_checkpointing", Checkbox).value
        out["sharding"] = self.query_one("#knob-sharding", Select).value
        out["optimizer"] = self.query_one("#knob-optimizer", Select).value
        out["framework"] = self.query_one("#knob-framework", Select).value
        return out

    def _changed(self) -> None:
        vals = self.values()
        if vals is None:
            return
        plan = getattr(self, "_plan", None)
        if plan is not None and all(getattr(plan, k) == v for k, v in vals.items()):
            return
        self.post_message(self.Changed(vals))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._changed()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._changed()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self._changed()


class PlanDetail(VerticalScroll):
    """The selected plan: fit line, stacked memory bar and legend, speed/time/cost/quality, knobs, reasons."""

    DEFAULT_CSS = """
    PlanDetail {
        height: 1fr;
        padding: 0 1;
        border-top: solid $primary-darken-2;
    }
    PlanDetail:focus { border-top: solid $accent; }  /* the app's focus ring (ftadvisor/tui/app.py) */
    PlanDetail #detail-head { height: auto; }
    PlanDetail #detail-perf { height: auto; color: $text-muted; }
    PlanDetail #detail-why { height: auto; margin-top: 1; }
    PlanDetail #detail-throughput { margin-top: 1; }
    PlanDetail .chart-title { height: 1; margin-top: 1; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        from ftadvisor.tui.widgets.charts import MemoryChart, ThroughputChart

        yield Static("", id="detail-head")
        yield MemoryBar(id="detail-bar")
        yield MemoryLegend(id="detail-legend")
        yield Static("", id="detail-perf")
        yield PlanKnobs(id="detail-knobs")
        yield ThroughputChart(id="detail-throughput")
        yield Static("memory per GPU, every plan (│ = the card's memory)", classes="chart-title")
        yield MemoryChart(id="detail-memory-chart")
        yield Static("", id="detail-why")

    def show(self, row: PlanRow, capacity: float, hardware_name: str) -> None:
        from ftadvisor.techniques import parse_technique

        est = row.estimate
        m = est.memory
        head = Text()
        head.append(f"#{row.rank} " if row.rank else "", style="bold")
        head.append(est.technique, style="bold")
        head.append(" (edited)" if row.edited else "", style="italic")
        head.append("  ")
        if fits_card(est):
            head.append("fits", style="bold green")
        elif est.fits:
            head.append(f"does not fit with {MEMORY_HEADROOM:.0%} kept free", style="bold red")
        elif est.host is not None and not est.host.fits:
            head.append("does not fit the node's host RAM", style="bold red")
        else:
            head.append("does not fit", style="bold red")
        pct = m.device_total_bytes / capacity * 100 if capacity else 0
        head.append(f": {size(m.device_total_bytes)} of {size(capacity)} per GPU ({pct:.0f}%) on {hardware_name}, "
                    f"peak at {m.peak_phase.replace('_', ' ')}; {count(est.trainable_params)} trainable")
        if est.host is not None:  # host RAM per node (ftadvisor.host): offloaded state, checkpoint copy, loaders
            head.append("; host RAM ")
            head.append(f"{size(est.host.bytes_per_node)} of {size(est.host.capacity_bytes)} per node",
                        style="" if est.host.fits else "bold red")
        if row.rejected and fits_card(est):
            head.append("  over budget", style="yellow")
        self.query_one("#detail-head", Static).update(head)
        parts = memory_parts(est)
        self.query_one(MemoryBar).set_parts(parts, capacity)
        self.query_one(MemoryLegend).set_parts(parts)

        speed, tc, q = _attr(est, "speed"), _attr(est, "time_cost"), _attr(est, "quality")
        perf = []
        if speed is not None:
            perf.append(f"{rate(_attr(speed, 'tokens_per_second_total'))} tokens/s")
            if _attr(speed, "seconds_per_optimizer_step") is not None:
                perf.append(f"{_attr(speed, 'seconds_per_optimizer_step'):.2f} s/step")
            if _attr(speed, "mfu") is not None:
                perf.append(f"MFU {_attr(speed, 'mfu') * 100:.0f}%")
        if tc is not None:
            perf.append(f"{duration(_attr(tc, 'wall_clock_hours'))}")
            perf.append(money(_attr(tc, "cost_usd")))
        elif row.edited and speed is not None:
            perf.append("time and cost: Ctrl+R re-plans")
        if q is not None:
            perf.append(f"quality {quality_text(q)}")
        if not perf:
            perf.append("speed, time and cost: not estimated for this plan")
        p = row.plan
        perf.append(f"{p.precision}, {p.attention}, accumulation {p.gradient_accumulation_steps}"
                    + (", CPU offload" if p.cpu_offload else ""))
        self.query_one("#detail-perf", Static).update(Text(" · ".join(perf)))

        self.query_one(PlanKnobs).load(row.plan, parse_technique(row.plan.technique).method.lora)

        why = Text()
        edits = edit_lines(row)
        if edits:
            # the recommender's reasons were written for the plan before the edit: its figures and
            # knob choices are kept for reference, dimmed, under what the edit changed
            why.append("Your edits\n", style="bold")
            for line in edits:
                why.append(f" • {line}\n")
        if row.reasons:
            why.append("Why (as recommended, before your edits)\n" if edits else "Why\n", style="bold")
            for r in row.reasons:
                why.append(f" • {r}\n", style="dim" if edits else "")
        if q is not None:
            why.append("Expected quality\n", style="bold")
            strength = _attr(q, "evidence_strength")
            why.append(f" • {quality_text(q)} of full fine-tuning" + (f" (evidence: {strength})" if strength else "") + "\n")
            if _attr(q, "retention") is not None:
                lo, hi = _attr(q, "retention_low"), _attr(q, "retention_high")
                rng = f" ({lo:.2f}–{hi:.2f})" if lo is not None and hi is not None else ""
                why.append(f" • keeps {_attr(q, 'retention'):.2f}{rng} of the base model's other skills\n")
            if _attr(q, "notes"):
                why.append(f" • {_attr(q, 'notes')}\n", style="dim")
            sources = _attr(q, "sources") or ()
            if sources:
                why.append("Quality sources\n", style="bold")
                for src in sources:
                    why.append(f" • {citation_text(src)}\n", style="dim")
        if est.warnings:
            why.append("Notes\n", style="bold")
            for w in est.warnings:
                why.append(f" • {w}\n", style="yellow")
        self.query_one("#detail-why", Static).update(why)
