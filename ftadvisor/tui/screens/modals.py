"""Dialogs: confirm a launch (run directory and the exact command), and what to do with a run on quit."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Select, Static

from ftadvisor.errors import FtAdvisorError
from ftadvisor.validate import write_text_atomic
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


def plan_file_document(row: PlanRow, state: WizardState, model: str | None, data: str | None) -> dict:
    """A plan file that stands alone (``ftadvisor launch FILE``, ``ftadvisor export FILE``): the plan,
    the run settings, and the model, data and card it was planned for (launch reads these keys,
    ftadvisor.plans.split_plan_file; a command-line value still wins over them)."""
    doc = plan_document(row, state)
    extra = {"model": model or state.launch_model, "data": data or state.data_path,
             "gpu": (state.hardware_ref or state.hardware.id) if state.hardware else None}  # a card file: its path
    return {**{k: v for k, v in extra.items() if v}, **doc}




def save_plan(row: PlanRow, state: WizardState, path: Path, model: str | None = None, data: str | None = None) -> Path:
    """Write the plan file ``ftadvisor launch`` reads to ``path`` (atomically); returns the path."""
    head = ("# written by the ftadvisor TUI; train it with\n"
            f"#   ftadvisor launch {shlex.quote(str(path))} --output RUN_DIR\n")
    write_text_atomic(path, head + yaml.safe_dump(plan_file_document(row, state, model, data), sort_keys=False))
    return path


def export_available() -> tuple[str, ...]:
    """The frameworks ``ftadvisor.export`` can write for, or () where this install has no such module.
    Imported by name (importlib): the module is optional, and the TUI works without it."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("ftadvisor.export") is None:
        return ()
    try:
        return tuple(importlib.import_module("ftadvisor.export").FRAMEWORKS)
    except Exception:  # noqa: BLE001 - a half-written module must not stop the dialog
        return ()


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


def hardware_warning(row: PlanRow, state: WizardState, detection) -> str | None:
    """Why this plan's hardware is not what this machine has (``ftadvisor.detect.Detection``), or None
    when it is. Checks the card type, the GPUs per node the plan uses, and a plan over several nodes
    (one launch starts this machine's share only)."""
    hw = state.hardware
    if hw is None:
        return None
    if detection is None:
        return "GPU detection has not answered yet: cannot check that this machine has the plan's hardware"
    plan = row.plan
    per_node = plan.num_gpus // max(1, state.num_nodes)
    here = detection.profile_id
    if detection.gpus and here == "cpu":
        names = ", ".join(sorted({g.name for g in detection.gpus}))
        return f"this machine has {detection.count}× {names} (no profile matches it), the plan is for {hw.id}"
    if hw.id != here and hw.vendor == "cpu":
        return (f"the plan is for the CPU but this machine has {detection.count}× {here}: it would train on the "
                "CPU; plan for the card instead (F2)")
    if hw.id != here:
        have = f"{detection.count}× {here}" if detection.gpus else "no GPU (cpu)"
        return (f"the plan is for {plan.num_gpus}× {hw.id} but this machine has {have}: "
                "the run will fail here, or run far slower than estimated")
    if hw.vendor != "cpu" and per_node > detection.count:
        return f"the plan uses {per_node} {hw.id} GPUs per node but this machine has {detection.count}"
    if state.num_nodes > 1:
        return f"the plan spans {state.num_nodes} nodes: this launch starts only this machine's share"
    return None


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
    LaunchScreen #launch-warning { color: $text-warning; height: auto; margin-top: 1; }
    LaunchScreen #launch-command {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 1;
        background: $boost;
    }
    LaunchScreen #launch-buttons { height: auto; margin-top: 1; align-horizontal: right; }
    LaunchScreen #launch-buttons Button { margin-left: 2; }
    LaunchScreen #launch-more { height: auto; margin-top: 1; }
    LaunchScreen #launch-more Button { margin-right: 2; }
    LaunchScreen #launch-more Select { width: 18; }
    """

    def __init__(self, row: PlanRow, state: WizardState, run_dir: Path, detection=None) -> None:
        """``detection`` is the app's GPU detection (``ftadvisor.detect.Detection``; None: not known)."""
        super().__init__()
        self.row, self.state, self.default_dir = row, state, run_dir
        self.warning = hardware_warning(row, state, detection)

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
            if self.warning:
                yield Static(Text(f"⚠ {self.warning}"), id="launch-warning")
            yield ErrorLine(id="launch-error")
            with Horizontal(id="launch-more"):
                # without launching: the plan file, the launcher's dry run, another framework's config
                yield Button("Save plan", id="launch-save", compact=True)
                yield Button("Dry run", id="launch-dry", compact=True)
                frameworks = export_available()
                if frameworks:
                    yield Button("Export to", id="launch-export", compact=True)
                    yield Select([(f, f) for f in frameworks], value=frameworks[0], allow_blank=False, compact=True,
                                 id="launch-to")
            with Horizontal(id="launch-buttons"):
                yield Button("Cancel", id="launch-cancel", compact=True)
                yield Button("Launch anyway ▸" if self.warning else "Launch ▸", id="launch-go",
                             variant="warning" if self.warning else "success", compact=True)

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

    # --- without launching: save the plan, write a dry run, export for another framework ----------

    def plan_path(self) -> Path:
        """Where Save plan writes: next to the run directory, named after it (``<runs folder>/NAME.yaml``,
        the app's run_root: ftadvisor.runs.runs_dir by default)."""
        run_dir = self._values()[0]
        return run_dir.with_name(run_dir.name + ".yaml")

    def _say(self, text: str) -> None:
        self.query_one(ErrorLine).clear()
        self.query_one("#launch-command", Static).update(Text(text))

    @on(Button.Pressed, "#launch-save")
    def action_save(self) -> Path | None:
        _, model, data, _ = self._values()
        try:
            path = save_plan(self.row, self.state, self.plan_path(), model or None, data or None)
        except OSError as err:
            self.query_one(ErrorLine).show(f"plan file: {err}")
            return None
        self._say(f"plan saved: {path}\n$ ftadvisor launch {shlex.quote(str(path))} --output RUN_DIR")
        self.app.notify(f"plan saved to {path}")
        return path

    @on(Button.Pressed, "#launch-dry")
    def action_dry_run(self) -> None:
        """``ftadvisor launch --dry-run`` (ftadvisor.launch.prepare): check the plan, data and model,
        write the run directory and show the command, training nothing."""
        try:
            run = self._check()
        except FtAdvisorError as err:
            self.query_one(ErrorLine).show(str(err))
            return
        self._say(f"dry run into {run.run_dir} …")
        self._dry_run(run.run_dir, self._values()[1], self._values()[2], self._values()[3])

    @work(thread=True, exclusive=True, group="dry-run")
    def _dry_run(self, run_dir: Path, model: str, data: str, steps: int | None) -> None:
        from ftadvisor.launch import prepare

        lines: list[str] = []
        try:
            plan_file = run_dir / PLAN_NAME
            write_text_atomic(plan_file, yaml.safe_dump(plan_document(self.row, self.state), sort_keys=False))
            # --overwrite: the TUI's own plan file is the only thing in the directory (checked above)
            prepare(plan_file, data=data, model=model, output=run_dir, max_steps=steps, dry_run=True,
                    overwrite=True, echo=lines.append)
        except FtAdvisorError as err:
            self.app.call_from_thread(self.query_one(ErrorLine).show, str(err))
            return
        except OSError as err:
            self.app.call_from_thread(self.query_one(ErrorLine).show, f"run directory: {err}")
            return
        self.app.call_from_thread(self._say, "dry run (nothing trained):\n" + "\n".join(lines))

    @on(Button.Pressed, "#launch-export")
    def action_export(self) -> None:
        """Write the chosen framework's own config and command (``ftadvisor.export.export_plan``) into
        ``RUN_DIR-FRAMEWORK/``, from the saved plan file."""
        import importlib

        to = self.query_one("#launch-to", Select).value
        path = self.action_save()
        if path is None:
            return
        out = path.with_name(f"{path.stem}-{to}")
        try:
            export = importlib.import_module("ftadvisor.export")  # optional module (export_available)
            res = export.export_plan(path, to, out)
        except FtAdvisorError as err:
            self.query_one(ErrorLine).show(str(err))
            return
        except OSError as err:
            self.query_one(ErrorLine).show(f"export: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a bug in an exporter must not close the wizard
            self.query_one(ErrorLine).show(f"export to {to} failed: {type(err).__name__}: {err}")
            return
        files = ", ".join(str(f) for f in res.files)
        self._say(f"exported for {res.framework}: {files}\n$ {res.command}"
                  + "".join(f"\nnote: {n}" for n in res.notes))
        self.app.notify(f"{res.framework} config written to {out}")


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
