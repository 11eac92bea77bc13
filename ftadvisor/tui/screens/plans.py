"""Step 4: the ranked plans, and the selected plan's memory, reasons and knobs."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui.screens.base import WizardScreen
from ftadvisor.tui.widgets.common import ErrorLine, InfoLine
from ftadvisor.tui.widgets.plans import PlanDetail, PlanKnobs, PlanRow, PlanTable


class PlansScreen(WizardScreen):
    STEP = "plans"
    BINDINGS = [
        Binding("l", "launch", "Launch plan"),
        Binding("ctrl+r", "replan", "Re-plan"),
    ]
    DEFAULT_CSS = """
    PlansScreen #plans-note { height: auto; max-height: 3; }
    """

    def compose_body(self) -> ComposeResult:
        yield InfoLine("", id="plans-note")
        yield PlanTable(id="plans-table")
        yield PlanDetail(id="plan-detail")
        yield ErrorLine(id="plans-error")

    def on_mount(self) -> None:
        self._version: int | None = None
        self.rows: dict[str, PlanRow] = {}
        self.query_one(PlanDetail).display = False
        self._maybe_compute()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self._maybe_compute()

    # --- asking the recommender ----------------------------------------------------------------

    def _maybe_compute(self) -> None:
        s = self.state
        if s.version == self._version:
            return
        note = self.query_one("#plans-note", InfoLine)
        if s.model is None or s.hardware is None:
            note.say("choose a model (F1) and hardware (F2) first", "warn")
            return
        self._version = s.version
        note.say(f"working out plans for {s.model.id} on {s.num_gpus}× {s.hardware.id} …")
        self.compute(s.version)

    def action_replan(self) -> None:
        self._version = None
        self._maybe_compute()

    @work(thread=True, exclusive=True, group="plans")
    def compute(self, version: int) -> None:
        try:
            advice = self.app.advisor(self.state)
        except FtAdvisorError as err:
            self.app.call_from_thread(self._failed, version, str(err))
            return
        except Exception as err:  # noqa: BLE001 - a bug in the recommender must not kill the wizard
            self.app.call_from_thread(self._failed, version, f"internal error in the recommender: {type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._show_advice, version, advice)

    def _failed(self, version: int, message: str) -> None:
        if version != self.state.version:
            return
        self.query_one("#plans-note", InfoLine).say("no plans", "warn")
        self.query_one(ErrorLine).show(message)

    def _show_advice(self, version: int, advice) -> None:
        if version != self.state.version:
            return
        self.query_one(ErrorLine).clear()
        self.rows = {r.key: r for r in advice.rows}
        s = self.state
        fitting = sum(1 for r in advice.rows if r.fits)
        head = (f"{fitting} plan{'s' if fitting != 1 else ''} fit {s.num_gpus}× {s.hardware.id}"
                + (f", {len(advice.rows) - fitting} greyed out" if len(advice.rows) > fitting else ""))
        hw = s.planning_hardware()
        if hw is not s.hardware and hw.node is not None and hw.node.host_ram_gib:
            head += f" (this machine: {hw.node.host_ram_gib:,.0f} GiB host RAM, detected)"
        self.query_one("#plans-note", InfoLine).say("; ".join([head, *advice.notes]), "" if fitting else "warn")
        table = self.query_one(PlanTable)
        table.show(advice.rows, self.capacity)
        self._update_memory_chart()
        detail = self.query_one(PlanDetail)
        detail.display = bool(advice.rows)
        if advice.rows:
            table.move_cursor(row=0)
            self._select(advice.rows[0].key)

    # --- the selected plan ------------------------------------------------------------------------

    @property
    def capacity(self) -> float:
        return float(self.state.planning_hardware().memory_bytes)

    @property
    def selected(self) -> PlanRow | None:
        table = self.query_one(PlanTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.rows.get(key)

    def _select(self, key: str) -> None:
        row = self.rows.get(key)
        if row is not None:
            self.query_one(PlanDetail).show(row, self.capacity, self.state.hardware.name)
            self._update_throughput(row)

    # --- charts (redrawn from the same events as the detail pane: selection and knobs) --------------

    def _update_memory_chart(self) -> None:
        from ftadvisor.tui.widgets.charts import MemoryChart
        from ftadvisor.tui.widgets.plans import memory_parts

        plans = [(f"{r.rank or '-'} {r.estimate.technique}" + (" *" if r.edited else ""), memory_parts(r.estimate), r.fits)
                 for r in self.rows.values()]
        self.query_one(MemoryChart).set_plans(plans, self.capacity)

    def _update_throughput(self, row: PlanRow) -> None:
        from ftadvisor.tui.widgets.charts import ThroughputChart

        try:
            points = self.app.throughput(self.state, row)
        except FtAdvisorError:
            points = []
        self.query_one(ThroughputChart).set_points(points)

    @on(DataTable.RowHighlighted, "#plans-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None:
            self._select(event.row_key.value)

    @on(PlanKnobs.Changed)
    def _knob(self, event: PlanKnobs.Changed) -> None:
        from ftadvisor.tui.advice import reestimate

        row = self.selected
        if row is None:
            return
        knobs = self.query_one(PlanKnobs)
        try:
            new = reestimate(self.state, row, event.fields)
        except FtAdvisorError as err:
            knobs.show_error(str(err))
            return
        self.rows[row.key] = new
        self.query_one(PlanTable).update_plan(new, self.capacity)
        self.query_one(PlanDetail).show(new, self.capacity, self.state.hardware.name)
        self._update_memory_chart()
        self._update_throughput(new)

    # --- launching ----------------------------------------------------------------------------------

    def action_launch(self) -> None:
        row = self.selected
        errors = self.query_one(ErrorLine)
        if row is None:
            errors.show("no plan selected")
            return
        from ftadvisor.recommend import MEMORY_HEADROOM, fits_card

        if not fits_card(row.estimate):
            errors.show(f"{row.estimate.technique} does not fit this card with {MEMORY_HEADROOM:.0%} kept free; "
                        "turn the knobs or pick a plan that fits")
            return
        errors.clear()
        self.app.confirm_launch(row)
