"""Step 5: the launched run, live. The run belongs to the app, so it goes on while other steps are shown."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from ftadvisor.tui.screens.base import WizardScreen
from ftadvisor.tui.widgets.run import RunMonitor


class RunScreen(WizardScreen):
    STEP = "run"
    BINDINGS = [Binding("c", "cancel_run", "Cancel run")]
    DEFAULT_CSS = """
    RunScreen #run-empty { padding: 1 2; color: $text-muted; }
    """

    def compose_body(self) -> ComposeResult:
        yield Static("No run yet. Pick a plan on the Plans step (F4) and press l to launch it.", id="run-empty")
        yield RunMonitor(id="run-monitor")

    def on_mount(self) -> None:
        self.set_interval(0.5, self.refresh_run)
        self.refresh_run()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.refresh_run()

    def refresh_run(self) -> None:
        run = self.app.job
        can_cancel = run is not None and run.running and not run.cancelled
        if can_cancel != getattr(self, "_can_cancel", None):
            self._can_cancel = can_cancel
            self.refresh_bindings()  # show or hide "c Cancel run" in the footer
        self.query_one("#run-empty").display = run is None
        monitor = self.query_one(RunMonitor)
        monitor.display = run is not None
        if run is not None:
            monitor.show(run)
        self.refresh_bar()

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "cancel_run":
            run = self.app.job
            return run is not None and run.running and not run.cancelled
        return True

    def action_cancel_run(self) -> None:
        self.app.cancel_run()
