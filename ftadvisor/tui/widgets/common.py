"""Widgets every screen uses: the step bar at the top and the inline error line."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.markup import escape
from textual.widgets import DataTable, Input, Static

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


class SearchInput(Input):
    """The search field of a :class:`FilterTable`. Focused from the list while the user types, it
    keeps the cursor at the end of what was typed (an Input selects all of its text on focus
    otherwise, and the next key would replace it)."""

    _typing_from_list = False

    def continue_typing(self, text: str) -> None:
        self.value = text
        self.cursor_position = len(text)
        self._typing_from_list = True
        self.focus()

    def _on_focus(self, event: events.Focus) -> None:
        # textual runs this before Input's own focus handler (which selects all): switch that off
        # for this one focus, and back on once the event is handled
        if self._typing_from_list:
            self._typing_from_list = False
            keep, self.select_on_focus = self.select_on_focus, False
            self.call_later(setattr, self, "select_on_focus", keep)


class FilterTable(DataTable):
    """A list that filters as the user types, also while the list itself has the focus: a printable
    key (or Backspace) goes to the list's search field (``FILTER_INPUT``, an Input id on the same
    screen), which filters the list. When the field shows the highlighted row's own key (a choice
    made earlier, such as the detected card), the first key starts a new search instead of
    appending to it."""

    FILTER_INPUT = ""

    def _search_field(self) -> Input | None:
        found = self.screen.query(f"#{self.FILTER_INPUT}") if self.FILTER_INPUT else []
        return found.first() if found else None

    async def on_key(self, event: events.Key) -> None:
        field = self._search_field()
        if field is None or not (event.is_printable or event.key == "backspace"):
            return
        event.stop()
        event.prevent_default()
        chosen = None
        if self.row_count:
            chosen = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        text = field.value
        if event.key == "backspace":
            text = text[:-1]
        elif text.strip() and text.strip() == chosen:
            text = event.character or ""
        else:
            text += event.character or ""
        if isinstance(field, SearchInput):
            field.continue_typing(text)
        else:
            field.value = text
            field.focus()


def no_match_text(what: str, query: str, examples: str) -> str:
    """The line shown when a search matches nothing (nothing is picked then)."""
    return f"no {what} matches {query.strip()!r}: nothing picked; try {examples}"
