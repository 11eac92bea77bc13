"""``ftadvisor calibrate``: run sweeps, fit corrections, report (see ftadvisor/calibration/)."""

import typer

app = typer.Typer(add_completion=False, help="Measure techniques on this hardware and fit corrections.")
