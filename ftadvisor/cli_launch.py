"""``ftadvisor launch``: run a plan for real (see ftadvisor/launch.py)."""

import typer

app = typer.Typer(add_completion=False, help="Launch a fine-tuning run from a plan.")
