"""Run step: live progress of a launched run, read from its JSON-lines log.

The engine's log (``ftadvisor/train/engine.py``, ``StepLog``) writes one object per line:
``{"event": "start", "max_steps": …}``, then ``{"event": "step", "step", "loss", "tokens_per_s",
"eta_s", "elapsed_s", …}`` per logged step, and ``{"event": "end", "final_loss", "wall_s",
"error"?}``. Records without ``event`` are read as steps, so any log with ``step``/``loss`` works.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, RichLog, Sparkline, Static

from ftadvisor.tui.format import duration, rate
from ftadvisor.tui.runs import Run
from ftadvisor.tui.widgets.charts import CurveChart


def steps(run: Run) -> list[dict]:
    return [r for r in run.records if r.get("event", "step") == "step" and "step" in r]


def total_steps(run: Run) -> int | None:
    for r in run.records:
        if r.get("event") == "start" and isinstance(r.get("max_steps"), int) and r["max_steps"] > 0:
            return r["max_steps"]
    for r in reversed(run.records):
        for key in ("max_steps", "total_steps"):
            if isinstance(r.get(key), int) and r[key] > 0:
                return r[key]
    return None


def end_record(run: Run) -> dict | None:
    for r in reversed(run.records):
        if r.get("event") == "end":
            return r
    return None


def status_text(run: Run) -> Text:
    """``● running  step 12/100  loss 2.31  1.2K tokens/s  ETA 4 min  elapsed 30 s``."""
    status = run.status
    colour = {"running": "green", "finished": "green", "cancelling": "yellow", "cancelled": "yellow"}.get(status, "red")
    out = Text()
    out.append("● ", style=colour)
    out.append(status, style=f"bold {colour}")
    st = steps(run)
    last = st[-1] if st else {}
    total = total_steps(run)
    if last:
        out.append(f"  step {last['step']}" + (f"/{total}" if total else ""))
        if isinstance(last.get("loss"), (int, float)):
            out.append(f"  loss {last['loss']:.4g}")
        if isinstance(last.get("tokens_per_s"), (int, float)):
            out.append(f"  {rate(last['tokens_per_s'])} tokens/s")
        if run.running and isinstance(last.get("eta_s"), (int, float)):
            out.append(f"  ETA {duration(last['eta_s'] / 3600)}")
    out.append(f"  elapsed {duration(run.elapsed_s / 3600)}", style="dim")
    end = end_record(run)
    if end and end.get("error"):
        out.append(f"\nerror: {end['error']}", style="red")
    return out


MAX_SIGNAL_CURVES = 3
"""Signal curves shown under the loss (the objective's first ones, in ftadvisor.train.signals order)."""


def signal_series(run: Run) -> list[tuple[str, list[float]]]:
    """The objective's training signal per step, ``[(label, values), ...]``: the names the start
    record declares (``signals``, ftadvisor/train/signals.py) in its order, values from each step's
    ``signal`` dict (a step without a name is skipped for that curve)."""
    declared: list[tuple[str, str]] = []
    for r in run.records:
        if r.get("event") == "start" and isinstance(r.get("signals"), list):
            declared = [(d["name"], d.get("label") or d["name"]) for d in r["signals"]
                        if isinstance(d, dict) and isinstance(d.get("name"), str)]
    out = []
    for name, label in declared:
        vals = [float(st["signal"][name]) for st in steps(run)
                if isinstance(st.get("signal"), dict) and isinstance(st["signal"].get(name), (int, float))
                and not isinstance(st["signal"][name], bool)]
        if vals:
            out.append((label, vals))
    return out[:MAX_SIGNAL_CURVES]


class RunMonitor(Vertical):
    """Status line, progress bar, loss curve and the tail of the process's output."""

    DEFAULT_CSS = """
    RunMonitor {
        height: 1fr;
        padding: 0 1;
    }
    RunMonitor #run-status { height: auto; }
    RunMonitor #run-where { height: auto; color: $text-muted; }
    RunMonitor #run-progress { height: 1; margin: 1 0 0 0; }
    RunMonitor #run-progress Bar { width: 1fr; }
    RunMonitor #loss-row { height: 3; margin: 1 0 0 0; }
    RunMonitor #loss-row Label { width: 12; color: $text-muted; }
    RunMonitor #run-loss { height: 3; width: 1fr; }
    RunMonitor #run-curves { margin: 1 0 0 0; }
    RunMonitor #run-log { height: 1fr; min-height: 3; border: round $primary-darken-2; }
    RunMonitor #run-log:focus { border: round $accent; }  /* the app's focus ring (ftadvisor/tui/app.py) */
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shown_lines: list[str] = []  # here, not in on_mount: show() may come before the mount (a fast run)

    def compose(self) -> ComposeResult:
        yield Static("", id="run-status")
        yield Static("", id="run-where")
        yield ProgressBar(id="run-progress", show_eta=False)
        with Horizontal(id="loss-row"):
            yield Label("loss", id="loss-label")
            yield Sparkline([], id="run-loss")
        yield CurveChart(id="run-curves")
        # wrapped, so a long error line ("fsdp needs CUDA GPUs …") reads in full; scrollable (focus it, ↑↓ PgUp)
        yield RichLog(id="run-log", max_lines=500, auto_scroll=True, wrap=True, markup=False, highlight=False)

    def show(self, run: Run) -> None:
        self.query_one("#run-status", Static).update(status_text(run))
        self.query_one("#run-where", Static).update(Text(f"{run.run_dir}\n$ {run.display_command}"))
        st = steps(run)
        total = total_steps(run)
        bar = self.query_one(ProgressBar)
        # Only a known step count gets a bar (an unknown one would be an endless animation).
        bar.display = bool(total)
        if total:
            bar.update(total=total, progress=st[-1]["step"] if st else 0)
        losses = [float(r["loss"]) for r in st if isinstance(r.get("loss"), (int, float))]
        self.query_one(Sparkline).data = losses
        label = f"loss\n{losses[0]:.3g}→{losses[-1]:.3g}" if losses else "loss"
        self.query_one("#loss-label", Label).update(label)
        # the objective's own signal (DPO rewards and accuracy, GRPO reward and KL …), one curve each
        self.query_one(CurveChart).set_series(signal_series(run))
        tail = run.output_tail(200)
        if tail != self._shown_lines:
            log = self.query_one(RichLog)
            new = tail[len(self._shown_lines):]
            if tail[: len(self._shown_lines)] != self._shown_lines:
                log.clear()
                new = tail
            for line in new:
                log.write(Text(line))
            self._shown_lines = tail
