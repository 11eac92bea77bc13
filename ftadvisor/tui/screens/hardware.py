"""Step 2: which hardware. The GPUs found on this machine are pre-filled; any profile can be picked, or a
card described in a YAML file typed as its path (``my-card.yaml``, as ``-g`` takes it on the command line)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Static

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui.screens.base import WizardScreen
from ftadvisor.tui.widgets.common import SearchInput, ErrorLine, InfoLine, no_match_text
from ftadvisor.tui.widgets.hardware import HardwareTable, search_hardware


def parse_number(text: str, field: str, *, integer: bool = False, minimum: float = 0.0, allow_blank: bool = True,
                 exclusive: bool = False):
    """A form field as a number, or None when blank; FtAdvisorError names the field otherwise."""
    text = text.strip().replace(",", "").replace("_", "")
    if not text:
        if allow_blank:
            return None
        raise FtAdvisorError(field, "is required")
    try:
        val = int(text) if integer else float(text)
    except ValueError:
        raise FtAdvisorError(field, f"{text!r} is not {'a whole number' if integer else 'a number'}") from None
    if val < minimum or (exclusive and val == minimum) or val != val or val in (float("inf"),):
        raise FtAdvisorError(field, f"must be {'above' if exclusive else 'at least'} {minimum:g}, got {text}")
    return val


def _is_card_file(text: str) -> bool:
    """A path to a YAML card file (ftadvisor.profiles.resolve_hardware reads those, as ``-g`` does)."""
    return text.strip().lower().endswith((".yaml", ".yml"))


class HardwareScreen(WizardScreen):
    STEP = "hardware"
    BINDINGS = [
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
    ]
    DEFAULT_CSS = """
    HardwareScreen #hw-query { margin: 0 1; }
    HardwareScreen #hw-form { height: 1; margin: 1 1 0 1; }
    HardwareScreen #hw-form Label { padding: 0 1 0 0; }
    HardwareScreen #hw-form Input { width: 7; margin-right: 2; }
    HardwareScreen #hw-form #hw-price { width: 9; }
    HardwareScreen #hw-total { padding: 0 1; width: 1fr; color: $text-muted; }
    """

    def compose_body(self) -> ComposeResult:
        yield Static("Which hardware? Type a card, ↑↓ to pick, set the count, Enter to go on.", classes="heading")
        yield InfoLine("looking for GPUs on this machine…", id="hw-detect")
        yield SearchInput(placeholder="card: h100, a100-80gb, rtx4090, cpu … or my-card.yaml", id="hw-query")
        yield ErrorLine(id="hw-nomatch")
        yield HardwareTable(id="hw-table")
        with Horizontal(id="hw-form"):
            yield Label("GPUs/node")
            yield Input("1", id="hw-gpus", compact=True, restrict=r"[0-9]*")
            yield Label("nodes")
            yield Input("1", id="hw-nodes", compact=True, restrict=r"[0-9]*")
            yield Label("$/GPU-h")
            yield Input(id="hw-price", compact=True, restrict=r"[0-9.]*")
            yield Static("", id="hw-total")
        yield ErrorLine(id="hw-error")

    def on_mount(self) -> None:
        from ftadvisor.profiles import hardware_profiles

        self._profiles = list(hardware_profiles().values())
        self._load_state()
        self.show_detection()
        self.query_one("#hw-query", Input).focus()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self._load_state()

    def _load_state(self) -> None:
        s = self.state
        q = self.query_one("#hw-query", Input)
        if s.hardware is not None and not q.value:
            q.value = s.hardware_ref or s.hardware.id
        self.query_one("#hw-gpus", Input).value = str(s.gpus_per_node)
        self.query_one("#hw-nodes", Input).value = str(s.num_nodes)
        self.query_one("#hw-price", Input).value = "" if s.hourly_price_usd is None else f"{s.hourly_price_usd:g}"
        self._filter(q.value)

    def show_detection(self) -> None:
        """Show what the app's GPU detection found (it runs in the background from start-up)."""
        det = getattr(self.app, "detection", None)
        if det is None:
            return
        self.query_one("#hw-detect", InfoLine).say(det.note, "ok" if det.gpus else "warn")
        table = self.query_one(HardwareTable)
        table.detected = det.profile_id
        self._load_state()

    # --- filtering -------------------------------------------------------------------------------

    def _filter(self, text: str) -> None:
        from ftadvisor.profiles import resolve_hardware

        table = self.query_one(HardwareTable)
        if _is_card_file(text):
            self._filter_file(text.strip())
            return
        try:
            exact = resolve_hardware(text.strip()).id if text.strip() else None
        except FtAdvisorError:
            exact = None
        # A card named exactly (the detected one, or one chosen before): list every card, cursor on it.
        hits = self._profiles if exact else search_hardware(text, self._profiles)
        table.show(hits)
        if exact:
            table.move_cursor(row=table.get_row_index(exact))
        nomatch = self.query_one("#hw-nomatch", ErrorLine)
        if text.strip() and not hits:
            nomatch.show(no_match_text("card", text, "h100, a100, rtx4090 or cpu"))
        else:
            nomatch.clear()
        self._update_total()

    def _filter_file(self, path: str) -> None:
        """A card file typed: every shipped card stays listed, the total line names the file's card
        (``= 8 × my-card from my-card.yaml``), and the line under the search says why it cannot be read."""
        from ftadvisor.profiles import hardware_from_file

        self.query_one(HardwareTable).show(self._profiles)
        line = self.query_one("#hw-nomatch", ErrorLine)
        try:
            hardware_from_file(path)
        except FtAdvisorError as err:
            line.show(str(err))
        else:
            line.clear()
        self._update_total()

    @on(Input.Changed, "#hw-query")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#hw-error", ErrorLine).clear()
        self._filter(event.value)

    @on(Input.Changed, "#hw-gpus, #hw-nodes, #hw-price")
    def _form_changed(self) -> None:
        self.query_one("#hw-error", ErrorLine).clear()
        self._update_total()

    def _selected_profile(self):
        from ftadvisor.profiles import hardware_profiles, resolve_hardware

        text = self.query_one("#hw-query", Input).value.strip()
        if _is_card_file(text):  # a card file is what was asked for: its error, never a highlighted row instead
            return resolve_hardware(text)
        if text:
            try:
                return resolve_hardware(text)
            except FtAdvisorError:
                pass
        table = self.query_one(HardwareTable)
        if table.row_count:
            return hardware_profiles()[table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value]
        if text:
            resolve_hardware(text)  # raises the error that names the closest cards
        raise FtAdvisorError("gpu", "pick a card")

    def _update_total(self) -> None:
        total = self.query_one("#hw-total", Static)
        try:
            hw = self._selected_profile()
            g = parse_number(self.query_one("#hw-gpus", Input).value, "GPUs per node", integer=True, minimum=1) or 1
            n = parse_number(self.query_one("#hw-nodes", Input).value, "nodes", integer=True, minimum=1) or 1
        except FtAdvisorError:
            total.update("")
            self.query_one("#hw-price", Input).placeholder = "-"
            return
        text = self.query_one("#hw-query", Input).value.strip()
        total.update(f"= {g * n} × {hw.id}" + (f" from {text}" if _is_card_file(text) else ""))
        self.query_one("#hw-price", Input).placeholder = f"{hw.hourly_price_usd:.2f}" if hw.hourly_price_usd is not None else "-"

    def action_move(self, step: int) -> None:
        table = self.query_one(HardwareTable)
        if table.row_count and not table.has_focus:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + step)))

    # --- committing --------------------------------------------------------------------------------

    def commit(self, leaving: bool = False) -> bool:
        errors = self.query_one("#hw-error", ErrorLine)
        if leaving and not self.query_one("#hw-query", Input).value.strip():
            return True  # jumping away with the search cleared: keep the card chosen before, pick none
        try:
            hw = self._selected_profile()
            g = parse_number(self.query_one("#hw-gpus", Input).value, "GPUs per node", integer=True, minimum=1,
                             allow_blank=False)
            n = parse_number(self.query_one("#hw-nodes", Input).value, "nodes", integer=True, minimum=1,
                             allow_blank=False)
            price = parse_number(self.query_one("#hw-price", Input).value, "$/GPU-hour")
        except FtAdvisorError as err:
            errors.show(str(err))
            return False
        errors.clear()
        s = self.state
        text = self.query_one("#hw-query", Input).value.strip()
        ref = text if _is_card_file(text) else None
        new = (hw, g, n, price, ref)
        if (s.hardware, s.gpus_per_node, s.num_nodes, s.hourly_price_usd, s.hardware_ref) != new:
            s.hardware, s.gpus_per_node, s.num_nodes, s.hourly_price_usd, s.hardware_ref = new
            s.touch()
        self.refresh_bar()
        return True

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.app.action_next()

    @on(DataTable.RowSelected, "#hw-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.query_one("#hw-query", Input).value = event.row_key.value
        self.app.action_next()
