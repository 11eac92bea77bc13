"""Widgets every screen uses: the step bar at the top and the inline error line."""

from __future__ import annotations

from rich.text import Text
from textual.markup import escape
from textual.widgets import Static

STEPS: tuple[tuple[str, str, str], ...] = (
    # (mode, key, label)
    ("model", "F1", "Model"),
    ("hardware", "F2", "Hardware"),
    ("goal", "F3", "Goal & data"),
    ("plans", "F4", "Plans"),
    ("run", "F5", "Run"),
)


class StepBar(Static):
    """The wizard's steps with their keys (click one to go there), and what has been chosen so far."""

    DEFAULT_CSS = """
    StepBar {
        height: 2;
        width: 100%;
        background: $panel;
        padding: 0 1;
    }
    """

    def __init__(self, current: str, **kw) -> None:
        super().__init__(**kw)
        self.current = current

    def on_mount(self) -> None:
        self.update_bar()

    def update_bar(self) -> None:
        app = self.app
        segs = []
        for mode, key, label in STEPS:
            style = "bold reverse" if mode == self.current else "not bold"
            segs.append(f"[{style} @click=app.goto('{mode}')] {key} {label} [/]")
        line = "[dim]›[/]".join(segs)
        run = getattr(app, "job", None)
        if run is not None and run.proc is not None:
            status = run.status
            colour = "green" if status in ("running", "finished") else "yellow" if status.startswith("cancel") else "red"
            line += f"  [{colour}]● run {escape(status)}[/]"
        state = getattr(app, "state", None)
        bits = []
        if state is not None:
            if state.model is not None:
                bits.append(state.model.id)
            if state.hardware is not None:
                nodes = f" × {state.num_nodes} nodes" if state.num_nodes > 1 else ""
                bits.append(f"{state.gpus_per_node}× {state.hardware.id}{nodes}")
            bits.append(state.goal)
            if state.data_path:
                bits.append(state.data_path)
        self.update(line + "\n[dim]" + escape(" · ".join(bits)) + "[/]")


class ErrorLine(Static):
    """One line of red text under a form; hidden while empty."""

    DEFAULT_CSS = """
    ErrorLine {
        color: $text-error;
        height: auto;
        display: none;
        padding: 0 1;
    }
    ErrorLine.-shown { display: block; }
    """

    message: str = ""

    def show(self, message: str) -> None:
        self.message = message
        self.update(Text(message))
        self.add_class("-shown")

    def clear(self) -> None:
        self.message = ""
        self.update("")
        self.remove_class("-shown")


class InfoLine(Static):
    """One line of status text (detection results, notes)."""

    DEFAULT_CSS = """
    InfoLine {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    InfoLine.-ok { color: $text-success; }
    InfoLine.-warn { color: $text-warning; }
    """

    def say(self, message: str, kind: str = "") -> None:
        self.set_class(kind == "ok", "-ok")
        self.set_class(kind == "warn", "-warn")
        self.update(Text(message))
