"""``ftadvisor launch``: run a plan for real (the work is in ftadvisor/launch.py).

    ftadvisor launch PLAN.yaml --data DATA --model MODEL --output DIR [--dry-run] [--gpu G] [--num-gpus N]
                     [--resume] [--overwrite] [--trust-remote-code] [--force] [--max-steps N] [--set field=value]

This module is imported by ``ftadvisor.cli`` on every command, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from ftadvisor.errors import FtAdvisorError


def launch(
    plan: Optional[Path] = typer.Argument(None, help="Plan YAML: plan fields, optionally model, data, gpu and a run: mapping."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data: .jsonl/.json/.csv/.parquet or a HF dataset id."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local model directory, profile id or HF model id."),
    output: Path = typer.Option(..., "--output", "-o", help="Run directory to write (and train into)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", "-g", help="Hardware profile to check against (default: detect)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", "-n", help="GPUs (processes) in total."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the run directory and print the command; train nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in a non-empty --output."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Let the model repository run its own code."),
    force: bool = typer.Option(False, "--force", help="Train even if the estimate says it does not fit."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default: one epoch)."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan or run field=value (repeatable), e.g. lora_r=8, save_steps=50."),
) -> None:
    """Check a plan against the data and the hardware, write a run directory, and train it."""
    from ftadvisor.cli_common import fail, parse_sets
    from ftadvisor.launch import prepare

    try:
        _, cmd = prepare(
            plan, data=data, model=model, output=output, gpu=gpu, num_gpus=num_gpus, sets=parse_sets(sets),
            max_steps=max_steps, dry_run=dry_run, resume=resume, overwrite=overwrite,
            trust_remote_code=trust_remote_code, force=force, echo=typer.echo,
        )
    except FtAdvisorError as err:
        fail(err)
        return
    if dry_run:
        return
    from ftadvisor.stack import require_training_stack

    try:
        require_training_stack("launch")
    except FtAdvisorError as err:
        fail(err)
        return
    sys.stdout.flush()
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; continue later with: ftadvisor launch --output {output} --resume", err=True)
        raise typer.Exit(130)
    if code != 0:
        typer.echo(f"error: the run exited with status {code}", err=True)
    raise typer.Exit(code)
