"""Step 1: which model. Search the profiles as you type, or give a local model directory / config.json,
or a Hugging Face Hub id ``org/name[@revision]`` (its config.json is fetched: ftadvisor.hub)."""

from __future__ import annotations

import os

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui.screens.base import WizardScreen
from ftadvisor.tui.widgets.common import SearchInput, ErrorLine, no_match_text
from ftadvisor.tui.widgets.model import ModelSummary, ModelTable, search_models


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.endswith(".json") or os.path.exists(text)


def _looks_like_hub_id(text: str) -> bool:
    """``org/name[@revision]`` that is not a local path: resolve_model fetches it from the Hub."""
    from ftadvisor.hub import parse_hub_id

    return not _looks_like_path(text) and parse_hub_id(text) is not None


class ModelScreen(WizardScreen):
    STEP = "model"
    BINDINGS = [
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
    ]
    DEFAULT_CSS = """
    ModelScreen #model-query { margin: 0 1; }
    """

    def compose_body(self) -> ComposeResult:
        yield Static("Which model? Type to search, ↑↓ to pick, Enter to choose.", classes="heading")
        yield SearchInput(placeholder="name, Hub id org/name[@rev], or path to a model directory / config.json",
                          id="model-query")
        yield ErrorLine(id="model-error")
        yield ErrorLine(id="model-nomatch")
        yield ModelTable(id="model-table")
        yield ModelSummary(id="model-summary")

    def on_mount(self) -> None:
        from ftadvisor.profiles import model_profiles

        self._profiles = list(model_profiles().values())
        query = self.query_one("#model-query", Input)
        if self.state.model_ref:
            query.value = self.state.model_ref
        self._filter(query.value)
        query.focus()

    # --- filtering ---------------------------------------------------------------------------

    def _filter(self, text: str) -> None:
        table = self.query_one(ModelTable)
        hits = search_models(text, self._profiles)
        table.show(hits)
        self.query_one(ModelSummary).show(hits[0] if hits else None)
        nomatch = self.query_one("#model-nomatch", ErrorLine)
        if text.strip() and not hits and _looks_like_hub_id(text.strip()):
            nomatch.show(f"no model profile matches {text.strip()!r}: Enter fetches its config.json from the "
                         "Hugging Face Hub")
        elif text.strip() and not hits and not _looks_like_path(text.strip()):
            nomatch.show(no_match_text("model profile", text, "llama, qwen 7b, moe, or a local model directory"))
        else:
            nomatch.clear()

    @on(Input.Changed, "#model-query")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#model-error", ErrorLine).clear()
        self._filter(event.value)

    @on(DataTable.RowHighlighted, "#model-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        from ftadvisor.profiles import model_profiles

        if event.row_key is not None and event.row_key.value in model_profiles():
            self.query_one(ModelSummary).show(model_profiles()[event.row_key.value])

    def action_move(self, step: int) -> None:
        table = self.query_one(ModelTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + step)))

    # --- choosing ----------------------------------------------------------------------------

    def _highlighted_id(self) -> str | None:
        table = self.query_one(ModelTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def choose(self, ref: str) -> bool:
        """Resolve ``ref`` (profile id, HF id or path) and make it the wizard's model."""
        from ftadvisor.profiles import resolve_model

        errors = self.query_one("#model-error", ErrorLine)
        try:
            profile = resolve_model(ref)
        except FtAdvisorError as err:
            errors.show(str(err))
            return False
        errors.clear()
        state = self.state
        if state.model is None or state.model.id != profile.id or state.model_ref != ref:
            state.model, state.model_ref = profile, ref
            state.touch()
        self.query_one(ModelSummary).show(profile, chosen=True)
        self.refresh_bar()
        return True

    def commit(self, leaving: bool = False) -> bool:
        text = self.query_one("#model-query", Input).value.strip()
        if not text and leaving:
            return True
        if not text:
            pid = self._highlighted_id()
            if pid is None:
                self.query_one("#model-error", ErrorLine).show("model: type a model name or a path")
                return False
            return self.choose(pid)
        from ftadvisor.profiles import resolve_model

        try:
            resolve_model(text)
        except FtAdvisorError as err:
            pid = self._highlighted_id()
            # a path or a Hub id that fails says why (gated, not found, offline ...): no silent pick of a row
            if _looks_like_path(text) or _looks_like_hub_id(text) or pid is None:
                self.query_one("#model-error", ErrorLine).show(str(err))
                return False
            return self.choose(pid)
        return self.choose(text)

    @on(Input.Submitted, "#model-query")
    def _submitted(self) -> None:
        self.app.action_next()

    @on(DataTable.RowSelected, "#model-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value and self.choose(event.row_key.value):
            self.query_one("#model-query", Input).value = event.row_key.value
            self.app.goto("hardware", commit=False)
