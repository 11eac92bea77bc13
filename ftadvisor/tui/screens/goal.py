"""Step 3: what the model should learn, from which data, within which budget."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Select, Static

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui.screens.base import WizardScreen
from ftadvisor.tui.screens.hardware import parse_number
from ftadvisor.tui.state import DATA_KINDS, GOALS
from ftadvisor.tui.widgets.common import ErrorLine, InfoLine
from ftadvisor.tui.widgets.goal import FormRow

AUTO = "auto"


class GoalScreen(WizardScreen):
    STEP = "goal"
    DEFAULT_CSS = """
    GoalScreen #goal-form { height: 1fr; }
    GoalScreen #goal-buttons { height: auto; padding: 0 1; }
    GoalScreen #goal-buttons Button { margin-right: 2; }
    GoalScreen #data-info { padding: 0 1 0 26; }
    """

    def compose_body(self) -> ComposeResult:
        s = self.state
        yield Static("What for, and with which data? Everything but the goal is optional.", classes="heading")
        with VerticalScroll(id="goal-form"):
            yield FormRow("goal", Select([(f"{g} — {d}", g) for g, d in GOALS.items()], value=s.goal,
                                         allow_blank=False, compact=True, id="goal"))
            yield FormRow("dataset file", Input(s.data_path or "", placeholder=".jsonl / .json / .csv / .parquet",
                                                compact=True, id="data-path"))
            yield InfoLine("Enter reads the file's format and size", id="data-info")
            yield FormRow("data kind", Select([("auto (the goal's usual data)", AUTO)] + [(k, k) for k in DATA_KINDS],
                                              value=s.data_kind or AUTO, allow_blank=False, compact=True, id="data-kind"))
            yield FormRow("examples", self._num("examples", s.examples, "e.g. 20000"))
            yield FormRow("avg tokens / example", self._num("avg-tokens", s.avg_tokens, "e.g. 512"))
            yield FormRow("epochs", self._num("epochs", s.epochs, "1"))
            yield FormRow("sequence length", self._num("seq-len", s.seq_len, "auto"), unit="tokens")
            yield FormRow("time budget", self._num("budget-hours", s.budget_hours, "none"), unit="hours")
            yield FormRow("money budget", self._num("budget-usd", s.budget_usd, "none"), unit="US$")
        yield ErrorLine(id="goal-error")
        with Horizontal(id="goal-buttons"):
            yield Button("Recommend plans ▸", id="recommend", variant="primary", compact=True)

    @staticmethod
    def _num(id_: str, value, placeholder: str) -> Input:
        text = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        return Input(text, placeholder=placeholder, compact=True, id=id_, restrict=r"[0-9.,_]*", classes="narrow")

    def on_mount(self) -> None:
        self._described: str | None = None
        self.query_one("#data-path", Input).focus()
        if self.state.data_path:
            self.detect_data(self.state.data_path)

    # --- dataset detection ----------------------------------------------------------------------

    def _model_dir(self) -> str | None:
        ref = self.state.model_ref
        return ref if ref and Path(ref).expanduser().exists() else None

    @work(thread=True, exclusive=True, group="data")
    def detect_data(self, path: str) -> None:
        from ftadvisor.tui.data import describe

        try:
            info = describe(path, self._model_dir())
        except FtAdvisorError as err:
            self.app.call_from_thread(self._data_failed, path, str(err))
            return
        self.app.call_from_thread(self._data_found, path, info)

    def _data_found(self, path: str, info) -> None:
        if self.query_one("#data-path", Input).value.strip() != path:
            return  # the user has typed another path since
        self._described = path
        self.query_one("#data-info", InfoLine).say(info.summary(), "ok")
        self.query_one("#examples", Input).value = str(info.examples)
        self.query_one("#avg-tokens", Input).value = f"{info.avg_tokens:.0f}"
        self.query_one("#data-kind", Select).value = info.kind

    def _data_failed(self, path: str, message: str) -> None:
        if self.query_one("#data-path", Input).value.strip() != path:
            return
        self._described = None
        self.query_one("#data-info", InfoLine).say(message, "warn")

    @on(Input.Submitted, "#data-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if path:
            self.query_one("#data-info", InfoLine).say(f"reading {path} …")
            self.detect_data(path)
        self.query_one("#examples", Input).focus()

    @on(Input.Changed)
    def _any_change(self) -> None:
        self.query_one(ErrorLine).clear()

    # --- committing -----------------------------------------------------------------------------

    def commit(self, leaving: bool = False) -> bool:
        errors = self.query_one(ErrorLine)
        val = lambda i: self.query_one(f"#{i}", Input).value  # noqa: E731
        try:
            path = val("data-path").strip() or None
            if path and self._described != path:
                from ftadvisor.tui.data import describe

                info = describe(path, self._model_dir())  # small files: instant; raises for a bad path
                self._data_found(path, info)
            examples = parse_number(val("examples"), "examples", integer=True, minimum=1)
            avg = parse_number(val("avg-tokens"), "avg tokens / example", minimum=0, exclusive=True)
            epochs = parse_number(val("epochs"), "epochs", minimum=0, exclusive=True) or 1.0
            seq = parse_number(val("seq-len"), "sequence length", integer=True, minimum=1)
            hours = parse_number(val("budget-hours"), "time budget", minimum=0, exclusive=True)
            usd = parse_number(val("budget-usd"), "money budget", minimum=0, exclusive=True)
        except FtAdvisorError as err:
            errors.show(str(err))
            return False
        errors.clear()
        kind = self.query_one("#data-kind", Select).value
        s = self.state
        new = dict(goal=self.query_one("#goal", Select).value, data_kind=None if kind == AUTO else kind, data_path=path,
                   examples=examples, avg_tokens=avg, epochs=float(epochs), seq_len=seq, budget_hours=hours,
                   budget_usd=usd)
        if any(getattr(s, k) != v for k, v in new.items()):
            for k, v in new.items():
                setattr(s, k, v)
            s.touch()
        self.refresh_bar()
        return True

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "data-path":
            self.app.action_next()

    @on(Button.Pressed, "#recommend")
    def _recommend(self) -> None:
        self.app.action_next()
