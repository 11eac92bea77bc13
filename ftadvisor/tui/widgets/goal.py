"""Goal & data step: a labelled form row (label on the left, one control on the right)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label


class FormRow(Horizontal):
    """``label  [control]`` on one line, so the whole form fits 80×24."""

    DEFAULT_CSS = """
    FormRow {
        height: auto;
        min-height: 1;
        padding: 0 1;
    }
    FormRow > Label.form-label {
        width: 24;
        color: $text-muted;
    }
    FormRow > Input, FormRow > Select {
        width: 1fr;
    }
    FormRow > .narrow {
        width: 14;
    }
    FormRow > .unit {
        padding: 0 1;
        color: $text-muted;
        width: auto;
    }
    """

    def __init__(self, label: str, *controls: Widget, unit: str = "", **kw) -> None:
        super().__init__(**kw)
        self._label = label
        self._controls = controls
        self._unit = unit

    def compose(self) -> ComposeResult:
        yield Label(self._label, classes="form-label")
        yield from self._controls
        if self._unit:
            yield Label(self._unit, classes="unit")
