"""``ftadvisor launch``: run a plan for real (the work is in ftadvisor/launch.py).

    ftadvisor launch PLAN.yaml --data DATA --model MODEL [--output DIR | --runs-dir DIR] [--dry-run] [--gpu G] [--num-gpus N]
                     [--resume] [--overwrite] [--trust-remote-code] [--force] [--max-steps N] [--merge]
                     [--set field=value]

This module is imported by ``ftadvisor.cli`` on every command, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from ftadvisor.errors import FtAdvisorError


def _export_hint(err: FtAdvisorError, plan: Optional[Path], model: Optional[str], data: Optional[str],
                 sets: list[str]) -> FtAdvisorError:
    """launch trains with hf-trl only (launch.build_spec refuses another ``framework``): where that
    framework has an exporter (ftadvisor.export), the one line says how to hand the plan over to it."""
    if err.field != "framework" or plan is None:
        return err
    import shlex

    from ftadvisor.cli_common import parse_sets
    from ftadvisor.export import read_spec, resolve_framework

    try:
        spec = read_spec(plan, model=model, data=data, sets=parse_sets(sets))
        to = resolve_framework(None, spec.plan)
    except FtAdvisorError:
        return err  # no exporter for it (unsloth), or the plan has other faults: the launcher's own line
    cmd = ["ftadvisor", "export", str(plan), "--to", to] + (["--model", model] if model else []) \
        + (["--data", data] if data else []) + [x for s in sets if not s.startswith("framework=") for x in ("--set", s)]
    return FtAdvisorError("framework", f"launch trains with hf-trl only; this plan is for {spec.plan.framework}: "
                          f"write its own config and command with  {shlex.join(cmd)}", ["hf-trl"])


def launch(
    plan: Optional[Path] = typer.Argument(None, help="Plan YAML: plan fields, optionally model, data, gpu and a run: mapping."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data: .jsonl/.json/.csv/.parquet or a HF dataset id."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local model directory, profile id or HF model id."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory to write (and train into); "
                                          "default: a new one in the runs folder."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Runs folder for a run without --output and "
                                            "for the calibration records (default: $FTADVISOR_RUNS or ~/ftadvisor-runs)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", "-g", help="Hardware profile to check against (default: detect)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", "-n", help="GPUs (processes) in total."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the run directory and print the command; train nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in a non-empty --output."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Let the model repository run its own code."),
    force: bool = typer.Option(False, "--force", help="Train even if the estimate says it does not fit."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default: one epoch)."),
    merge: bool = typer.Option(False, "--merge", help="After an adapter run, also write RUN_DIR/merged: the "
                               "adapter merged into a 16-bit copy of its base (QLoRA: the base reloaded in 16-bit)."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan or run field=value (repeatable), e.g. lora_r=8, save_steps=50."),
) -> None:
    """Check a plan against the data and the hardware, write a run directory, and train it."""
    from ftadvisor.cli_common import fail, parse_sets
    from ftadvisor.launch import RunLock, prepare, storage_error

    if runs_dir is not None:
        import os

        from ftadvisor.runs import RUNS_ENV

        os.environ[RUNS_ENV] = str(runs_dir.expanduser().absolute())  # read again by the training process
    if output is None:
        try:
            output = _default_output(plan, model, sets, resume)
        except FtAdvisorError as err:
            fail(_export_hint(err, plan, model, data, sets))
            return

    # Held from the first write into --output until the training process has ended: a second
    # launch or resume into the same directory is refused meanwhile.
    lock = RunLock(output, echo=typer.echo)
    try:
        try:
            _, cmd = prepare(
                plan, data=data, model=model, output=output, gpu=gpu, num_gpus=num_gpus,
                sets={**parse_sets(sets), **({"merge": True} if merge else {})},
                max_steps=max_steps, dry_run=dry_run, resume=resume, overwrite=overwrite,
                trust_remote_code=trust_remote_code, force=force, echo=typer.echo, lock=lock,
            )
        except FtAdvisorError as err:
            fail(_export_hint(err, plan, model, data, sets))
            return
        except OSError as err:  # a write refused outside prepare's own writes (the lock file, say)
            refused = storage_error(err, output)
            if refused is None:
                raise
            fail(refused)
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
        code, stopped_by = run_supervised(cmd, lock)
    finally:
        lock.release()
    if stopped_by is not None:
        typer.echo(f"interrupted; continue later with: ftadvisor launch --output {output} --resume", err=True)
        raise typer.Exit(128 + stopped_by)
    if code not in (0, 2):  # 2: the run has said why in one line already (a user error)
        typer.echo(f"error: the run exited with status {code}", err=True)
    raise typer.Exit(code)


def _default_output(plan: Optional[Path], model: Optional[str], sets: list[str], resume: bool) -> Path:
    """A new run directory in the runs folder (ftadvisor.runs), named after the time, technique and model."""
    from ftadvisor.cli_common import parse_sets
    from ftadvisor.launch import RUN_FIELDS
    from ftadvisor.plans import read_plan_file, split_plan_file
    from ftadvisor.runs import default_output

    if resume:
        raise FtAdvisorError("--output", "name the run directory to resume (--output DIR --resume)")
    parts = split_plan_file(read_plan_file(plan, "plan") if plan is not None else {}, "plan", RUN_FIELDS)
    technique = str({**parts["plan"], **parse_sets(sets)}.get("technique") or "lora")
    return default_output(technique, str(model or parts["model"] or "model"))


def run_supervised(cmd: list[str], lock=None, grace_s: float = 30.0) -> tuple[int, int | None]:
    """Run the training command in its own session and process group, tied to this process.

    Returns (exit status, the signal that stopped us or None). SIGINT (Ctrl-C), SIGTERM and SIGHUP
    sent to this launcher are passed on to the training group (SIGINT as SIGINT, so the trainer
    stops as on Ctrl-C; the others as SIGTERM), and we wait for it; a second signal, or ``grace_s``
    without an exit, escalates to SIGKILL. Whatever way this function is left, no process of the
    group survives it. If this launcher is killed outright (SIGKILL), the trainer notices by itself
    (``FTADVISOR_SUPERVISOR_PID``: ftadvisor.launch._bind_to_supervisor).
    """
    import os
    import signal
    import time

    from ftadvisor.launch import SUPERVISOR_ENV

    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    # start_new_session: its own group, so a terminal's Ctrl-C reaches only us and we decide
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    if lock is not None:
        lock.set_child(proc.pid)
    stopped: list[int] = []
    deadline = [None]

    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def on_signal(signum, frame):
        if stopped:  # a second signal: no more waiting
            send(signal.SIGKILL)
            return
        stopped.append(signum)
        send(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        deadline[0] = time.monotonic() + grace_s

    watched = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, on_signal) for s in watched}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if deadline[0] is not None and time.monotonic() > deadline[0]:
                    send(signal.SIGKILL)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _end_group(proc.pid, send)
    return code, (stopped[0] if stopped else None)


def _end_group(pgid: int, send, grace_s: float = 5.0) -> None:
    """Stop what is left of the training group (helpers it started) after its leader has exited."""
    import os
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        send(sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
