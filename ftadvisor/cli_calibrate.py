"""``ftadvisor calibrate``: run sweeps, fit corrections, report (see ftadvisor/calibration/).

    ftadvisor calibrate cpu-tiny                     # = calibrate run cpu-tiny
    ftadvisor calibrate run gpu-default --only lora --only qlora
    ftadvisor calibrate fit --hardware cpu
    ftadvisor calibrate report --hardware cpu --cases

Only typer is imported here; each command imports what it needs when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ftadvisor.cli_common import fail
from typer.core import TyperGroup

from ftadvisor.errors import FtAdvisorError


class _DefaultRun(TyperGroup):
    """``ftadvisor calibrate SWEEP`` means ``ftadvisor calibrate run SWEEP``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRun,
    add_completion=False,
    no_args_is_help=True,
    help="Measure techniques on this hardware and fit corrections: `ftadvisor calibrate SWEEP` runs a sweep.",
)




@app.command("run")
def run_cmd(
    sweep: str = typer.Argument(..., help="Sweep name (calibration/sweeps/NAME.yaml) or path to a sweep file."),
    hardware: Optional[str] = typer.Option(None, "--hardware", "-g", help="Hardware profile id (default: the sweep's, 'auto' detects)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="Measurement backend: auto, cuda, cpu, trace."),
    only: list[str] = typer.Option([], "--only", help="Run only these techniques or case ids (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Cases run at once (CPU backends; memory is per process)."),
    fork: bool = typer.Option(False, "--fork", help="Fork cases from a server that imported torch once (faster CPU sweeps)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder (default calibration/results)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cases (and which this machine has recorded) and exit."),
) -> None:
    """Run a sweep: each case in its own process, with a timeout; runs the cases this machine has not
    recorded (resume; shipped results of other machines do not count), each once even when another
    sweep runs into the same file."""
    from ftadvisor.calibration import store
    from ftadvisor.calibration.sweep import expand, load_sweep, with_backend

    try:
        sw = load_sweep(sweep)
        if dry_run:
            from ftadvisor.calibration.measure import resolve_backend

            cases = expand(sw, source=sw.name, backend=backend)
            cases = [with_backend(c, resolve_backend(c.backend)) if c.backend == "auto" else c for c in cases]
            from ftadvisor.calibration.runner import detect_hardware
            from ftadvisor.profiles import resolve_hardware

            hw = hardware or sw.hardware
            if hw == "auto":
                hw = "cpu" if all(c.backend != "cuda" for c in cases) else detect_hardware()
            root = results or store.results_root()
            rpath = store.results_path(root, resolve_hardware(hw).id, sw.name)
            done = store.completed_ids(rpath, machine=store.machine_id())
            anyone = store.completed_ids(rpath)
            for c in cases:
                mark = "done" if c.case_id in done else "todo"
                other = "  (recorded by another machine)" if c.case_id in anyone - done else ""
                typer.echo(f"{c.case_id}  {mark}  {c.backend:<5}  {c.label}{other}")
            return
        from ftadvisor.calibration.runner import run_sweep
        from ftadvisor.stack import require_training_stack

        require_training_stack("calibrate")

        summary = run_sweep(sw, hardware=hardware, backend=backend, results_root=results, only=only or None,
                            jobs=jobs, isolation="fork" if fork else "subprocess")
    except FtAdvisorError as err:
        fail(err)
        return
    ran = len(summary.outcomes)
    counts: dict[str, int] = {}
    for o in summary.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to run"
    meanwhile = f", {summary.recorded_meanwhile} recorded meanwhile by another run" if summary.recorded_meanwhile else ""
    typer.echo(f"{summary.sweep} on {summary.hardware}: {ran} run ({detail}), {summary.skipped_done} already recorded "
               f"on this machine{meanwhile}; results in {summary.results_path}")


@app.command("fit")
def fit_cmd(
    hardware: Optional[str] = typer.Option(None, "--hardware", "-g", help="Fit this hardware only (default: every one with results)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder (default calibration/results)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Corrections folder (default calibration/corrections)."),
) -> None:
    """Fit corrections from the results: calibration/corrections/<hardware>.yaml."""
    try:
        from ftadvisor.calibration.corrections import read_corrections
        from ftadvisor.calibration.fit import fit

        paths = fit(results, hardware, out)
    except FtAdvisorError as err:
        fail(err)
        return
    from ftadvisor.calibration.fit import headline

    for p in paths:
        c = read_corrections(p)
        typer.echo(f"{p}: {c.default.samples} samples, {len(c.techniques)} techniques, {headline(c.summary)}, "
                   f"allocator slack {'-' if c.allocator_slack is None else f'{c.allocator_slack:.3f}'}")


@app.command("report")
def report_cmd(
    hardware: Optional[str] = typer.Option(None, "--hardware", "-g", help="Only this hardware."),
    cases: bool = typer.Option(False, "--cases", help="Also list every case."),
    details: bool = typer.Option(False, "--details", help="Measured phases and largest tensors at each case's peak."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder (default calibration/results)."),
    corrections: Optional[Path] = typer.Option(None, "--corrections", help="Corrections folder (default calibration/corrections)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw predicted against measured to FILE.png or "
                                                             "FILE.svg (memory, and throughput where recorded; needs matplotlib)."),
) -> None:
    """Predicted vs measured per technique, before/after correction, and a scatter plot."""
    try:
        from ftadvisor.calibration.report import plot_rows, render

        if plot is not None:  # a bad file name fails before the report
            from ftadvisor.plots import check_plot_path

            check_plot_path(plot)
        tables = render(results, hardware, cases=cases, details=details, corrections_dir=corrections)
        if plot is not None and tables:
            from ftadvisor.plots import prediction_scatter

            typer.echo(f"picture: {prediction_scatter(plot_rows(tables), plot)}")
        elif plot is not None:
            typer.echo(f"no picture written to {plot}: there are no results to draw", err=True)
    except FtAdvisorError as err:
        fail(err)
