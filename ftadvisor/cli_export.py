"""``ftadvisor export``: write a plan as another framework's config (the work is in ftadvisor/export.py).

    ftadvisor export [PLAN.yaml] --to axolotl|llama-factory|torchtune|litgpt|trl [--out DIR]
                     [--model MODEL] [--data DATA] [--set field=value] [--overwrite]

Imported by ``ftadvisor.cli`` on every command, so it imports nothing heavy at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ftadvisor.errors import FtAdvisorError


def export(
    plan: Optional[Path] = typer.Argument(None, help="Plan YAML, as ftadvisor launch reads it (plan fields, model, "
                                          "data, run:); without it, the plan is --set's fields."),
    to: Optional[str] = typer.Option(None, "--to", "-t", show_default="the plan's framework field",
                                     help="axolotl, llama-factory, torchtune, litgpt or trl."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default="./export-FRAMEWORK",
                                       help="Folder to write the config, any converted data and run.sh into."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data: .jsonl/.json/.csv/.parquet or a HF dataset id."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local model directory, profile id or HF model id."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan or run field=value (repeatable), e.g. lora_r=8."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files an earlier export wrote in --out."),
) -> None:
    """Write the plan as the chosen framework's own config, and the command that runs it."""
    from ftadvisor.cli_common import fail, parse_sets
    from ftadvisor.export import export_plan, read_spec, resolve_framework

    try:
        spec = read_spec(plan, data=data, model=model, sets=parse_sets(sets))
        framework = resolve_framework(to, spec.plan)
        result = export_plan(spec, framework, out or Path(f"export-{framework}"), overwrite=overwrite)
    except FtAdvisorError as err:
        fail(err)
        return
    folder = result.files[0].parent
    typer.echo(f"wrote {len(result.files)} files for {result.framework} in {folder}:")
    for p in result.files:
        typer.echo(f"  {p.name}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"run it with:  bash {folder / 'run.sh'}   # which runs:")
    for line in result.command.splitlines():
        typer.echo(f"  {line}")
