"""The ftadvisor wizard: model → hardware → goal & data → plans → run.

    ftadvisor            # (in a terminal) or: ftadvisor tui
    python -m ftadvisor.tui

Each step is a mode of the app (F1–F5 jump between them, Ctrl+N / Ctrl+B go forward and back),
so every step keeps what was typed in it. The wizard state and the launched run belong to the app,
not to a screen: a run keeps going, and its log keeps being read, whichever step is shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen

from ftadvisor.tui.advice import Advice, advise, throughput_by_micro_batch
from ftadvisor.detect import Detection, detect
from ftadvisor.tui.runs import Run
from ftadvisor.tui.screens.goal import GoalScreen
from ftadvisor.tui.screens.hardware import HardwareScreen
from ftadvisor.tui.screens.model import ModelScreen
from ftadvisor.tui.screens.modals import LaunchScreen, QuitScreen
from ftadvisor.tui.screens.plans import PlansScreen
from ftadvisor.tui.screens.run import RunScreen
from ftadvisor.tui.state import WizardState
from ftadvisor.tui.widgets.common import STEPS
from ftadvisor.tui.widgets.plans import PlanRow

ORDER = [mode for mode, _, _ in STEPS]


class FtAdvisorApp(App[None]):
    TITLE = "ftadvisor"
    ENABLE_COMMAND_PALETTE = False
    MODES = {"model": ModelScreen, "hardware": HardwareScreen, "goal": GoalScreen, "plans": PlansScreen,
             "run": RunScreen}
    BINDINGS = [
        Binding("f1", "goto('model')", "Model", show=False, priority=True),
        Binding("f2", "goto('hardware')", "Hardware", show=False, priority=True),
        Binding("f3", "goto('goal')", "Goal", show=False, priority=True),
        Binding("f4", "goto('plans')", "Plans", show=False, priority=True),
        Binding("f5", "goto('run')", "Run", show=False, priority=True),
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+b", "back", "Back", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        # priority, so it works over the step's own keys; check_action lets "?" type into a text
        # field that already holds text (a path, a search) instead of opening the help
        Binding("question_mark", "help", "Keys", priority=True),
    ]
    DEFAULT_CSS = """
    /* Focus ring: the control that gets typed keys is marked in the accent colour, whatever kind
       it is (issue 13: typed keys landed in fields the user did not know were focused). Full-size
       controls recolour their border; one-line (compact) ones, which have no border, take an accent
       background; a table's header row turns accent (no layout shift, no extra glyph in the rows). */
    Input:focus { border: tall $accent; }
    Input.-textual-compact:focus { background: $accent 35%; }
    Select:focus > SelectCurrent { border: tall $accent; }
    Select.-textual-compact:focus > SelectCurrent { background: $accent 35%; }
    DataTable:focus > .datatable--header { background: $accent 45%; }
    /* !important: a button's variant colours (primary, success …) are more specific selectors */
    Screen Button:focus { background: $accent !important; color: $text !important; text-style: bold; }
    Screen ToggleButton:focus { background: $accent 35%; }
    Screen Log:focus, Screen RichLog:focus { border: round $accent; }
    Screen ScrollableContainer:focus { scrollbar-color: $accent; }
    """

    def __init__(
        self,
        *,
        state: WizardState | None = None,
        detector: Callable[[], Detection] | None = detect,
        run_root: str | Path | None = None,
        start: str = "model",
        advisor: Callable[[WizardState], Advice] = advise,
        throughput: Callable[[WizardState, PlanRow], list] = throughput_by_micro_batch,
    ) -> None:
        """``detector`` finds the local GPUs (None skips detection); ``run_root`` is where runs (and saved
        plans) go by default, None: the runs folder of ``ftadvisor launch`` (ftadvisor.runs.runs_dir:
        ``$FTADVISOR_RUNS``, else ~/ftadvisor-runs), never the current directory; ``advisor`` turns the
        wizard state into plan rows (the recommender; replaceable for tests);
        ``throughput`` gives the plans screen's tokens/s-by-micro-batch chart (the estimator; replaceable too)."""
        super().__init__()
        self.advisor = advisor
        self.throughput = throughput
        self.state = state or WizardState()
        self.detector = detector
        self.detection: Detection | None = None
        self.job: Run | None = None
        if run_root is None:
            from ftadvisor.runs import runs_dir

            run_root = runs_dir()
        self.run_root = Path(run_root)
        self.start_mode = start
        self._run_timer = None

    def on_mount(self) -> None:
        self.switch_mode(self.start_mode)
        if self.detector is not None:
            self.call_after_refresh(self.detect_gpus)  # after the first screen is on the terminal

    # --- GPU detection (in the background, so the first screen never waits for it) ---------------

    @work(thread=True, exclusive=True, group="detect")
    def detect_gpus(self) -> None:
        try:
            det = self.detector()
        except Exception as err:  # noqa: BLE001 - detection is a convenience; failing it must not stop the app
            det = Detection(note=f"GPU detection failed ({type(err).__name__}: {err}); pick a card below")
        self.call_from_thread(self._detected, det)

    def _detected(self, det: Detection) -> None:
        from ftadvisor.profiles import resolve_hardware

        self.detection = det
        s = self.state
        if s.hardware is None:
            s.hardware = resolve_hardware(det.profile_id)
            s.gpus_per_node = max(1, det.count)
            s.touch()
        # planning for this machine's own hardware uses its detected host RAM (WizardState.planning_hardware)
        s.local_hardware_id = det.profile_id
        s.host_ram_gib = det.host_memory_bytes / 2**30 if det.host_memory_bytes else None
        if s.hardware.id == det.profile_id and s.host_ram_gib is not None:
            s.touch()
            if isinstance(self.screen, PlansScreen):
                self.screen.action_replan()
        if isinstance(self.screen, HardwareScreen):
            self.screen.show_detection()
        self._refresh_bars()

    # --- moving between steps -----------------------------------------------------------------------

    def goto(self, mode: str, commit: bool = True) -> None:
        """Show step ``mode``, first taking what was typed on this one (an inline error keeps it here)."""
        if isinstance(self.screen, ModalScreen) or mode == self.current_mode:
            return
        take = getattr(self.screen, "commit", None)
        if commit and take is not None and not take(leaving=True):
            return
        self.switch_mode(mode)

    def action_goto(self, mode: str) -> None:
        self.goto(mode)

    def action_next(self) -> None:
        if isinstance(self.screen, ModalScreen):
            return
        commit = getattr(self.screen, "commit", None)
        if commit is not None and not commit():
            return
        i = ORDER.index(self.current_mode)
        if i + 1 < len(ORDER):
            self.goto(ORDER[i + 1], commit=False)

    # --- the key list -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "help":
            from textual.widgets import Input

            if isinstance(self.screen, ModalScreen) and type(self.screen).__name__ == "HelpScreen":
                return True  # "?" again closes it (HelpScreen's own binding)
            focused = self.focused
            if isinstance(focused, Input) and focused.value and focused.check_consume_key("?", "?"):
                return None  # disabled here (shown dimmed in the footer): the key goes on into the field
            return True
        return True

    def action_help(self) -> None:
        from ftadvisor.tui.screens.help import HelpScreen, binding_groups

        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(HelpScreen(binding_groups(self, self.screen, self.focused)))

    def action_back(self) -> None:
        if isinstance(self.screen, ModalScreen):
            return
        i = ORDER.index(self.current_mode)
        if i > 0:
            self.goto(ORDER[i - 1])

    def _refresh_bars(self) -> None:
        refresh = getattr(self.screen, "refresh_bar", None)
        if refresh is not None:
            refresh()

    # --- launching and following a run ------------------------------------------------------------

    def default_run_dir(self, row: PlanRow) -> Path:
        model = (self.state.model.id if self.state.model else "model").replace("config:", "").replace("/", "-")
        return self.run_root / f"{model}-{row.plan.technique.replace('+', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"

    def confirm_launch(self, row: PlanRow) -> None:
        if self.job is not None and self.job.running:
            self.notify("a run is already going: cancel it on the Run step (F5) first", severity="warning")
            return
        self.push_screen(LaunchScreen(row, self.state, self.default_run_dir(row), self.detection), self._launch_answer)

    def _launch_answer(self, run: Run | None) -> None:
        if run is not None:
            self.start_run(run)

    def start_run(self, run: Run) -> None:
        """Start ``run`` in the background, follow its log, and show the Run step."""
        try:
            run.start()
        except OSError as err:
            self.notify(f"could not start the run: {err}", severity="error")
            return
        self.job = run
        if self._run_timer is not None:
            self._run_timer.stop()
        self._run_timer = self.set_interval(0.5, self._poll_run)
        self.goto("run", commit=False)

    def _poll_run(self) -> None:
        run = self.job
        if run is None:
            return
        run.poll()
        if not run.running:
            run.poll()
            if self._run_timer is not None:
                self._run_timer.stop()
                self._run_timer = None
            status = run.status
            self.notify(f"run {status}: {run.run_dir}", severity="information" if status == "finished" else "warning")
        self._refresh_bars()
        if isinstance(self.screen, RunScreen):
            self.screen.refresh_run()

    def cancel_run(self) -> None:
        if self.job is None or not self.job.running:
            return
        self.job.cancelled = True
        self.notify("stopping the run (interrupt, then terminate if it does not stop)…")
        self._cancel_worker()

    @work(thread=True, exclusive=True, group="cancel")
    def _cancel_worker(self, then_exit: bool = False) -> None:
        self.job.cancel()
        if then_exit:
            self.call_from_thread(self.exit)

    # --- quitting -----------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        if self.job is not None and self.job.running:
            self.push_screen(QuitScreen(self.job), self._quit_answer)
            return
        self.exit()

    def _quit_answer(self, answer: str | None) -> None:
        run = self.job
        if answer == "stop" and run is not None:
            run.cancelled = True
            self._cancel_worker(then_exit=True)
        elif answer == "detach" and run is not None:
            pid = run.proc.pid if run.proc else "?"
            self.exit(message=f"The run goes on in the background (process group {pid}).\n"
                              f"  log:  {run.log_path}\n  stop: kill -INT -{pid}")

