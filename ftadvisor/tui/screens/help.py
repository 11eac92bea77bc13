"""The ``?`` screen: every key the wizard answers to, read from the live bindings (never a hand-kept list).

Three groups, in the order textual looks a key up: the app's keys (every step), the keys of the
step that was showing, and those of the control that had the focus (a table, a field). A key the
step disables right now (``c`` without a run to cancel) is listed dimmed.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Static


def _as_binding(b: BindingType) -> Binding:
    """``BINDINGS`` entries may be Binding objects or ``(key, action[, description])`` tuples."""
    return b if isinstance(b, Binding) else Binding(*b)


def node_bindings(node: DOMNode) -> list[Binding]:
    """The bindings a node declares, its own class first, then inherited ones it does not override
    (textual merges ``BINDINGS`` along the class hierarchy the same way)."""
    seen: set[str] = set()
    out: list[Binding] = []
    for cls in type(node).__mro__:
        for raw in cls.__dict__.get("BINDINGS", ()):
            b = _as_binding(raw)
            for key in b.key.split(","):
                key = key.strip()
                if key and key not in seen:
                    seen.add(key)
                    out.append(Binding(key, b.action, b.description, show=b.show, key_display=b.key_display,
                                       priority=b.priority))
    return out


def binding_groups(app, screen, focused=None) -> list[tuple[str, list[tuple[str, str, bool]]]]:
    """``[(group title, [(key as shown, what it does, enabled now), ...]), ...]`` for the app,
    ``screen`` and the ``focused`` widget; a key listed in an earlier group is not repeated."""
    groups = []
    listed: set[str] = set()
    for title, node in (("Everywhere", app), (f"This step ({_name(screen)})", screen),
                        (f"In the focused {type(focused).__name__}", focused)):
        if node is None:
            continue
        rows = []
        for b in node_bindings(node):
            if b.key in listed:
                continue
            listed.add(b.key)
            action, _, params = b.action.partition("(")
            try:
                enabled = node.check_action(action, ()) is not False
            except Exception:  # noqa: BLE001 - a check that needs more state than the help screen has
                enabled = True
            rows.append((b.key_display or app.get_key_display(b), b.description or action.replace("_", " "), enabled))
        if rows:
            groups.append((title, rows))
    return groups


def _name(node) -> str:
    if node is None:
        return ""
    step = getattr(node, "STEP", "")
    return step or type(node).__name__.removesuffix("Screen").lower()


class HelpScreen(ModalScreen[None]):
    """Every key binding of the app, the step underneath and its focused control; Esc or ? closes it."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 70;
        max-width: 96%;
        height: auto;
        max-height: 90%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; height: 1; }
    HelpScreen #help-scroll { height: auto; max-height: 100%; }
    HelpScreen #help-keys { height: auto; }
    HelpScreen #help-foot { color: $text-muted; height: 1; }
    """

    def __init__(self, groups: list[tuple[str, list[tuple[str, str, bool]]]]) -> None:
        super().__init__()
        self.groups = groups

    def render_keys(self) -> Group:
        parts = []
        for i, (title, rows) in enumerate(self.groups):
            parts.append(Text(("\n" if i else "") + title, style="bold underline"))
            table = Table.grid(padding=(0, 2))
            table.add_column(no_wrap=True, min_width=10)
            table.add_column()
            for key, what, enabled in rows:
                table.add_row(Text(key, style="bold" if enabled else "dim"),
                              Text(what + ("" if enabled else " (not now)"), style="" if enabled else "dim"))
            parts.append(table)
        return Group(*parts)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Keys", id="help-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(self.render_keys(), id="help-keys")
            yield Static("esc or ? closes", id="help-foot")

    def action_close(self) -> None:
        self.dismiss(None)
