"""Dialogs: confirm a launch (run directory and the exact command), and what to do with a run on quit."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui.runs import Run, python_command
from ftadvisor.tui.state import WizardState
from ftadvisor.tui.widgets.common import ErrorLine
from ftadvisor.tui.widgets.goal import FormRow
from ftadvisor.tui.widgets.plans import PlanRow

PLAN_NAME = "tui-plan.yaml"
"""The plan file the TUI writes into the run directory before launching."""


def launch_log_path(run_dir: Path) -> Path:
    """Where the launcher's engine writes its JSON-lines step log (ftadvisor.launch.LOG_FILE)."""
    from ftadvisor.launch import LOG_FILE

    return run_dir / LOG_FILE


def plan_document(row: PlanRow, state: WizardState) -> dict:
    """The plan YAML ``ftadvisor launch`` reads: ``plan:`` (every TrainingPlan field) and ``run:`` settings."""
    return {"plan": row.plan.model_dump(mode="json"), "run": {"num_epochs": state.epochs}}


def build_run(row: PlanRow, state: WizardState, run_dir: Path, model: str, data: str, max_steps: int | None) -> Run:
    """The launch command for this plan (``python -m ftadvisor.cli launch …``), as a not-yet-started Run."""
    plan_path = run_dir / PLAN_NAME
    args = ["launch", str(plan_path), "--data", data, "--model", model, "--output", str(run_dir),
            # The TUI's own two files (this plan and the output log) are the only things in the
            # directory (checked before launch); --overwrite lets the launcher write next to them.
            "--overwrite"]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    # The package's parent folder on the path, so `python -m ftadvisor.cli` works from a source checkout too.
    pkg_root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p)
    return Run(python_command(*args), run_dir, launch_log_path(run_dir), env={"PYTHONPATH": path})


class LaunchScreen(ModalScreen[Run | None]):
    """Shows the run directory and the exact command; Launch returns a Run ready to start."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    LaunchScreen { align: center middle; }
    LaunchScreen > Vertical {
        width: 96%;
        max-width: 110;
        height: auto;
        max-height: 96%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    LaunchScreen #launch-title { text-style: bold; height: 1; }
    LaunchScreen #launch-command {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 1;
        background: $boost;
    }
    LaunchScreen #launch-buttons { height: auto; margin-top: 1; align-horizontal: right; }
    LaunchScreen #launch-buttons Button { margin-left: 2; }
    """

    def __init__(self, row: PlanRow, state: WizardState, run_dir: Path) -> None:
        super().__init__()
        self.row, self.state, self.default_dir = row, state, run_dir

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Launch {self.row.estimate.technique}"
                         + (f" (plan #{self.row.rank})" if self.row.rank else ""), id="launch-title")
            yield FormRow("run directory", Input(str(self.default_dir), compact=True, id="launch-dir"))
            yield FormRow("model", Input(self.state.launch_model or "", compact=True, id="launch-model",
                                         placeholder="local model directory or Hugging Face id"))
            yield FormRow("data", Input(self.state.data_path or "", compact=True, id="launch-data",
                                        placeholder="dataset file (set it on the Goal step)"))
            yield FormRow("max steps", Input("", compact=True, id="launch-steps", restrict=r"[0-9]*",
                                             placeholder=f"all ({self.state.epochs:g} epoch)"))
            yield Static("", id="launch-command")
            yield ErrorLine(id="launch-error")
            with Horizontal(id="launch-buttons"):
                yield Button("Cancel", id="launch-cancel", compact=True)
                yield Button("Launch ▸", id="launch-go", variant="success", compact=True)

    def on_mount(self) -> None:
        self._update_command()
        self.query_one("#launch-go", Button).focus()

    def _values(self) -> tuple[Path, str, str, int | None]:
        val = lambda i: self.query_one(f"#{i}", Input).value.strip()  # noqa: E731
        steps = val("launch-steps")
        return Path(val("launch-dir")).expanduser(), val("launch-model"), val("launch-data"), int(steps) if steps else None

    def _update_command(self) -> None:
        run_dir, model, data, steps = self._values()
        run = build_run(self.row, self.state, run_dir, model or "MODEL", data or "DATA", steps)
        self.query_one("#launch-command", Static).update(f"$ {shlex.join(run.command)}")

    @on(Input.Changed)
    def _changed(self) -> None:
        self.query_one(ErrorLine).clear()
        self._update_command()

    def _check(self) -> Run:
        run_dir, model, data, steps = self._values()
        if not str(run_dir) or str(run_dir) == ".":
            raise FtAdvisorError("run directory", "give a directory for the run")
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise FtAdvisorError("run directory", f"{run_dir} exists and is not empty; choose a new directory")
        if not model:
            raise FtAdvisorError("model", "give a local model directory or a Hugging Face id")
        if not data:
            raise FtAdvisorError("data", "give a dataset file (the Goal step detects its format)")
        if steps is not None and steps < 1:
            raise FtAdvisorError("max steps", "must be at least 1")
        if Path(data).expanduser().is_file():
            # the launcher's own check, run now so a mismatch shows here rather than as a failed run
            from ftadvisor.datasets import check_for_technique, load_data

            check_for_technique(load_data(data), self.row.plan.technique)
        return build_run(self.row, self.state, run_dir, model, data, steps)

    @on(Button.Pressed, "#launch-go")
    @on(Input.Submitted)
    def action_launch(self) -> None:
        try:
            run = self._check()
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / PLAN_NAME).write_text(
                "# written by the ftadvisor TUI; the launcher reads it with --overwrite next to tui-output.log\n"
                + yaml.safe_dump(plan_document(self.row, self.state), sort_keys=False))
        except FtAdvisorError as err:
            self.query_one(ErrorLine).show(str(err))
            return
        except OSError as err:
            self.query_one(ErrorLine).show(f"run directory: {err}")
            return
        self.dismiss(run)

    @on(Button.Pressed, "#launch-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitScreen(ModalScreen[str | None]):
    """A run is still going: stop it, leave it running, or stay."""

    BINDINGS = [
        Binding("s", "answer('stop')", "Stop run and quit"),
        Binding("l", "answer('detach')", "Leave it running"),
        Binding("escape", "answer(None)", "Stay"),
    ]
    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical {
        width: 70;
        max-width: 96%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    QuitScreen #quit-buttons { height: auto; margin-top: 1; }
    QuitScreen #quit-buttons Button { margin-right: 2; }
    """

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.job = run

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"A run is still going in {self.job.run_dir}.\n"
                         "Stop it (it is interrupted cleanly), or leave it running in the background?")
            with Horizontal(id="quit-buttons"):
                yield Button("Stop run and quit (s)", id="stop", variant="error", compact=True)
                yield Button("Leave it running (l)", id="detach", variant="primary", compact=True)
                yield Button("Stay (esc)", id="stay", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "stay" else event.button.id)

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)
