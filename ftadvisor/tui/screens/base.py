"""The frame every wizard step shares: step bar on top, the step's body, key bindings at the bottom."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from ftadvisor.tui.widgets.common import StepBar


class WizardScreen(Screen):
    """A wizard step. Subclasses set ``STEP`` and write :meth:`compose_body` and :meth:`commit`."""

    STEP = ""

    DEFAULT_CSS = """
    WizardScreen {
        layout: vertical;
    }
    WizardScreen .heading {
        padding: 0 1;
        text-style: bold;
        height: 1;
    }
    WizardScreen .hint {
        padding: 0 1;
        color: $text-muted;
        height: auto;
    }
    """

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        return iter(())

    def on_screen_resume(self) -> None:
        self.refresh_bar()

    def refresh_bar(self) -> None:
        for bar in self.query(StepBar):
            bar.update_bar()

    @property
    def state(self):
        return self.app.state

    def commit(self, leaving: bool = False) -> bool:
        """Take what the user entered into the wizard state; False (with an inline error) if it is not usable.

        ``leaving`` is True when the user jumps to another step (F-key, click) rather than asking
        for the next one: a step left untouched may then stay empty.
        """
        return True
