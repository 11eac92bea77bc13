"""The ``ftadvisor`` command line: a thin face over :mod:`ftadvisor.estimator`.

    ftadvisor estimate --model llama-3.1-8b --gpu rtx4090-24gb --technique all
    ftadvisor estimate --model qwen2.5-7b --gpu h100 --num-gpus 8 --technique full --set sharding=zero3 --json
    ftadvisor profiles list
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ftadvisor.cli_common import OneLineErrors, fail, parse_sets
from ftadvisor.errors import FtAdvisorError

# add_completion: --install-completion/--show-completion (and `ftadvisor completion SHELL`, cli_extras)
app = typer.Typer(cls=OneLineErrors, add_completion=True, help="Which fine-tuning technique fits, how fast, how good.")
profiles_app = typer.Typer(add_completion=False, no_args_is_help=True, help="List and show model and hardware profiles.")
app.add_typer(profiles_app, name="profiles")

# Sub-command groups live in their own modules; each imports its heavy stack inside its commands.
from ftadvisor import cli_calibrate, cli_export, cli_extras, cli_launch  # noqa: E402

app.command("launch")(cli_launch.launch)
app.command("export")(cli_export.export)
app.add_typer(cli_calibrate.app, name="calibrate")
app.command("data-stats")(cli_extras.data_stats)
app.command("completion")(cli_extras.completion)

GIB = 2**30


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", is_eager=True, callback=cli_extras.show_version,
                                       help="Print the version and exit.")) -> None:
    """Which fine-tuning technique fits, how fast, how good."""
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():  # a terminal: open the wizard (textual loads only now)
            from ftadvisor.tui import main as run_tui

            run_tui()
            raise typer.Exit(0)
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _bar(frac: float, width: int = 16) -> str:
    if frac > 1:  # over the card: full bar whose last cell is a red ">" (the width stays fixed)
        return "[red]" + "█" * (width - 1) + ">[/]"
    filled = min(width, int(round(frac * width)))
    return "[green]" + "█" * filled + "[/]" + "·" * (width - filled)


# short labels for the table's narrow "largest" column
COMPONENT_NAMES = {
    "gradients": "grads",
    "optimizer_state": "optim",
    "master_weights": "master",
    "activations": "activ.",
    "extra_models": "models",
    "generation_cache": "KV",
    "quantization_workspace": "dequant",
    "communication": "comm",
}


PHASE_NAMES = {"forward_backward": "fwd/bwd", "optimizer_step": "step", "generation": "gen"}


def _largest(est) -> str:
    name, size = est.memory.largest_component()
    return f"{COMPONENT_NAMES.get(name, name.replace('_', ' '))} {size / GIB:.1f}"


def _flat_row(est) -> dict[str, Any]:
    row = {
        "model": est.model_id,
        "gpu": est.hardware_id,
        "technique": est.technique,
        "num_gpus": est.plan.num_gpus,
        "total_params": est.total_params,
        "trainable_params": est.trainable_params,
        "fits": est.fits,
        "headroom_bytes": est.headroom_bytes,
        "host_bytes_per_node": est.host.bytes_per_node if est.host else None,
        "host_capacity_bytes": est.host.capacity_bytes if est.host else None,
        "num_nodes": est.plan.num_nodes,
    }
    mem = est.memory.model_dump()
    for k, v in mem.items():
        if isinstance(v, (int, str)):
            row[k] = v
    row["warnings"] = " | ".join(est.warnings)
    return row


def _technique_names(technique: list[str], mp) -> list[str]:
    """The techniques asked for: comma-separated lists, ``all`` = every one the model allows."""
    from ftadvisor.techniques import TECHNIQUE_NAMES, techniques_for

    names: list[str] = []
    for t in technique:
        for part in t.split(","):
            part = part.strip()
            if part == "all":
                names += techniques_for(mp.arch)
            elif part:
                names.append(part)
    if not names:
        raise FtAdvisorError("--technique", "names no technique", ["all", *TECHNIQUE_NAMES])
    return names


# estimate options that are not plan fields: `--set goal=chat` points at the option instead
_OPTIONS_NOT_FIELDS = {"goal": "--goal", "examples": "--data-examples", "data_examples": "--data-examples",
                       "avg_tokens": "--avg-tokens", "dataset_tokens": "--data-tokens", "data_tokens": "--data-tokens",
                       "epochs": "--epochs", "price": "--price", "hourly_price_usd": "--price", "model": "--model",
                       "gpu": "--gpu", "hardware": "--gpu", "plan": "--plan", "calibrated": None, "with_speed": None,
                       "headroom": "--headroom", "max_gpus": "--max-gpus", "gpus_per_node": "--gpus-per-node",
                       "limit": None}


def _technique_value(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FtAdvisorError(field, f"must be a technique name such as lora or dpo+qlora, got {type(value).__name__}")
    return value


def _plan_sets(sets: list[str]) -> dict[str, Any]:
    """``--set`` values of estimate and capacity: plan fields only (``technique`` included); the
    command's own options are named instead of being taken as fields."""
    fields = parse_sets(sets)
    for k in fields:
        if k in _OPTIONS_NOT_FIELDS:
            opt = _OPTIONS_NOT_FIELDS[k]
            raise FtAdvisorError(f"--set {k}", "is not a plan field" + (f"; use {opt}" if opt else ""))
    from ftadvisor.plans import PLAN_FIELDS, make_plan

    for k, v in fields.items():
        if k not in PLAN_FIELDS:
            make_plan(**{k: v})  # names it, and the closest plan fields
    return fields


def _run_estimates(model: str | None, gpu: str | None, num_gpus: int | None, technique: list[str] | None,
                   sets: list[str], plan: Path | None, extra: dict[str, Any]) -> tuple[Any, Any, list]:
    """(model profile, hardware profile, one estimate per technique). Precedence, lowest first:
    the defaults, the plan file (plan fields; it may also name the model, gpu and technique, and
    carry launch's ``run:`` settings, checked and not used here), ``--model``/``--gpu``/``-t``,
    ``--set`` (``--set technique=T`` is ``-t T``), then ``--num-gpus``."""
    from ftadvisor.estimator import estimate as run_estimate
    from ftadvisor.profiles import resolve_hardware, resolve_model

    fields: dict[str, Any] = {}
    file_fields: dict[str, Any] = {}
    if plan is not None:
        from pydantic import ValidationError

        from ftadvisor.errors import from_validation
        from ftadvisor.launch import RUN_FIELDS, RunSettings
        from ftadvisor.plans import read_plan_file, split_plan_file

        parts = split_plan_file(read_plan_file(plan, "--plan"), "--plan", RUN_FIELDS)
        try:  # the run: settings are launch's; checked here so that estimate and launch accept the same files
            RunSettings(**parts["run"])
        except ValidationError as err:
            raise from_validation(err, "--plan: run.") from None
        file_fields = dict(parts["plan"])
        fields.update(parts["plan"])
        model = model or parts["model"]
        gpu = gpu or parts["gpu"]
        if "technique" in fields:
            file_technique = _technique_value(fields.pop("technique"), "--plan: technique")
            technique = technique or [file_technique]
    sets_fields = _plan_sets(sets)
    if "technique" in sets_fields:
        technique = [_technique_value(sets_fields.pop("technique"), "--set technique")]
    fields.update(sets_fields)
    if num_gpus is not None:
        fields["num_gpus"] = num_gpus
    mp = resolve_model(model or DEFAULT_MODEL)
    hw = resolve_hardware(gpu or DEFAULT_GPU)
    names = _technique_names(technique or ["all"], mp)
    try:
        return mp, hw, [run_estimate(mp, hw, name, plan=fields, **extra) for name in names]
    except FtAdvisorError as err:
        # a value the plan file gave (and nothing on the command line replaced): name the file too
        key = err.field.split(".")[0]
        if plan is not None and key in file_fields and key not in sets_fields and not (
                key == "num_gpus" and num_gpus is not None):
            from ftadvisor.errors import shown

            raise FtAdvisorError(f"--plan {shown(str(plan), 200)}: {err.field}", err.message, err.choices) from None
        raise


def _echo_csv(results: list) -> None:
    import csv

    rows = [_flat_row(r) for r in results]
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _estimate_table(mp, hw, results: list):
    """The comparison table: one row per technique; trainable and largest part only when no time or
    quality columns are shown (the table stays within 80 columns)."""
    from rich.table import Table

    first = results[0]
    # a technique whose trainer needs more per micro-batch (KTO: 2) runs at its own minimum
    own = sorted({f"{r.plan.technique} {r.plan.micro_batch_size}" for r in results
                  if r.plan.micro_batch_size != first.plan.micro_batch_size})
    title = (
        f"{mp.name} ({first.total_params / 1e9:.2f}B) on {first.plan.num_gpus}× {hw.name}\n"
        f"seq {first.plan.seq_len}, micro-batch {first.plan.micro_batch_size}"
        f"{' (' + ', '.join(own) + ')' if own else ''}, {first.plan.precision}, "
        f"sharding {first.plan.sharding}, checkpointing {'on' if first.plan.gradient_checkpointing else 'off'}, "
        f"framework {first.plan.framework}\n"
        "GiB = device total per GPU (what nvidia-smi shows)"
        + (f"; host = host RAM GiB per node (of {first.host.capacity_bytes / GIB:,.0f})" if first.host else "")
    )
    table = Table(title=title, title_justify="left", pad_edge=False, padding=(0, 1))
    timed = any(r.time_cost for r in results)
    rated = any(r.quality for r in results)
    compact = timed or rated  # keep the table within 80 columns
    table.add_column("technique", no_wrap=True)
    if not compact:
        table.add_column("trainable", justify="right", no_wrap=True)
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column(f"of {hw.memory_gib:.0f}", no_wrap=True)
    table.add_column("fits", no_wrap=True)
    if not compact:
        table.add_column("largest", no_wrap=True)
    table.add_column("host", justify="right", no_wrap=True)
    table.add_column("tok/s", justify="right", no_wrap=True)
    if timed:
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("cost", justify="right", no_wrap=True)
    if rated:
        table.add_column("quality", no_wrap=True)
    for r in results:
        table.add_row(*_estimate_row(r, hw.memory_bytes, compact, timed, rated))
    return table


def _estimate_row(r, cap: float, compact: bool, timed: bool, rated: bool) -> list[str]:
    m = r.memory
    tr = r.trainable_params
    row = [r.technique]
    if not compact:
        row.append(f"{tr / 1e9:.2f}B" if tr >= 1e9 else f"{tr / 1e6:.1f}M")
    row += [f"{m.device_total_bytes / GIB:.1f}", _bar(m.device_total_bytes / cap, 8),
            "[green]yes[/]" if r.fits else "[red]no[/]"]
    if not compact:
        row.append(_largest(r))
    row.append(_host_cell(r))
    row.append(f"{r.speed.tokens_per_second_total:,.0f}" if r.speed else "-")
    if timed:
        tc = r.time_cost
        row += [_hours(tc.wall_clock_hours) if tc else "-", _money(tc.cost_usd) if tc else "-"]
    if rated:
        q = r.quality
        row.append(("n/a" if not q.applicable else _quality_cell(q)) if q else "-")
    return row


def _host_cell(est) -> str:
    """Host RAM per node (red when over the node's)."""
    if est.host is None:
        return "-"
    text = f"{est.host.bytes_per_node / GIB:,.0f}"
    return text if est.host.fits else f"[red]{text}[/]"


def _node_words(est) -> str:
    """One line on the node the estimate assumed (ftadvisor.host.node_for)."""
    n = est.host.node
    return (f"node: {n.form_factor}, {n.gpus_per_node} GPUs, {n.host_ram_gib:,.0f} GiB host RAM, "
            f"{n.intra_node_link}{'' if n.p2p else ' without peer-to-peer'}, {est.plan.num_nodes} node(s) "
            "(override: --set gpus_per_node=N --set host_ram_gib=G, or -g my-card.yaml with node: fields)")


def _print_estimate_notes(console, hw, results: list) -> None:
    if results and results[0].host is not None:
        console.print(f"[dim]{_node_words(results[0])}[/]")
    for source in sorted({r.architecture_source for r in results} - {"analytic family"}):
        console.print(f"[dim]{source}[/]")  # the generic path (ftadvisor.derive) described the model
    warned = {w for r in results for w in r.warnings}
    for w in sorted(warned):
        console.print(f"[yellow]note:[/] {w}")
    corrected = sorted({c for r in results for c in r.corrections})
    if corrected:
        console.print(f"[cyan]calibrated:[/] {len(corrected)} correction(s) from calibration/corrections/{hw.id}.yaml "
                      "applied (see --json 'corrections'; calibrated=False in the API for the bare model)")
    console.print("[dim]Change knobs with --set field=value (seq_len, micro_batch_size, gradient_checkpointing, lora_r, "
                  "sharding, optimizer ...); --json for the full breakdown.[/]")


DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_GPU = "rtx4090-24gb"


@app.command()
def estimate(
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default=DEFAULT_MODEL,
                                        help="Profile id, HF id, config.json path or directory."),
    gpu: Optional[str] = typer.Option(None, "--gpu", "-g", show_default=DEFAULT_GPU,
                                      help="Hardware profile id or alias (h100, a100, rtx4090 ...)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", "-n", help="GPUs in total."),
    technique: Optional[list[str]] = typer.Option(None, "--technique", "-t", show_default="all",
                                                  help="Technique(s), e.g. lora, dpo+qlora; 'all' compares every one."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan field=value (repeatable), e.g. seq_len=4096."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="YAML file of plan fields (may also hold model, gpu, technique)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON (a list of estimates)."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per technique."),
    goal: Optional[str] = typer.Option(None, "--goal", help="Task family for the quality column: chat, domain, code, math, preference, rl, facts."),
    examples: Optional[int] = typer.Option(None, "--data-examples", help="Training examples (for time and cost)."),
    avg_tokens: Optional[float] = typer.Option(None, "--avg-tokens", help="Average tokens per example."),
    dataset_tokens: Optional[float] = typer.Option(None, "--data-tokens", help="Total training tokens (instead of examples)."),
    epochs: float = typer.Option(1.0, "--epochs"),
    price: Optional[float] = typer.Option(None, "--price", help="Your price per GPU-hour in USD (overrides the profile default)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the memory breakdown per technique to FILE.png or FILE.svg (needs matplotlib)."),
    framework: Optional[str] = typer.Option(None, "--framework", show_default="hf-trl",
                                            help="Training stack: hf-trl, axolotl, llama-factory, torchtune, litgpt, unsloth."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Accept a Hub model whose config asks for its own code (never run here)."),
) -> None:
    """Peak memory per GPU for each technique (breakdown, fits or not), throughput, and with a
    dataset size and goal also time, cost and expected quality."""
    try:
        if plot is not None:  # a bad file name fails before any work
            from ftadvisor.plots import check_plot_path

            check_plot_path(plot)
        if trust_remote_code and model:  # a Hub config that asks for repository code (ftadvisor.hub)
            from ftadvisor.profiles import resolve_model

            model = resolve_model(model, trust_remote_code=True)
        extra = dict(with_speed=True, goal=goal, examples=examples, avg_tokens=avg_tokens,
                     dataset_tokens=dataset_tokens, epochs=epochs, hourly_price_usd=price)
        if framework is not None:  # --framework F is --set framework=F, applied last
            sets = [*sets, f"framework={framework}"]
        mp, hw, results = _run_estimates(model, gpu, num_gpus, technique, sets, plan, extra)
        drawn = cli_extras.plot_estimates(plot, mp, hw, results) if plot is not None else None
    except FtAdvisorError as err:
        fail(err)
        return
    if drawn is not None:  # on stderr: --json and --csv keep stdout machine-readable
        typer.echo(f"picture: {drawn}", err=True)

    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
        return
    if as_csv:
        _echo_csv(results)
        return

    from rich.console import Console

    console = Console()
    console.print(_estimate_table(mp, hw, results))
    _print_estimate_notes(console, hw, results)


@app.command()
def recommend(
    model: str = typer.Option("llama-3.1-8b", "--model", "-m", help="Profile id, HF id, config.json path or directory."),
    gpu: str = typer.Option("rtx4090-24gb", "--gpu", "-g", help="Hardware profile id or alias."),
    num_gpus: int = typer.Option(1, "--num-gpus", "-n", help="GPUs in total."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", show_default="GPUs / the node's GPUs, rounded up",
                                            help="Nodes the GPUs are spread over."),
    goal: str = typer.Option("chat", "--goal", help="chat, domain, code, math, preference, rl or facts."),
    data_kind: Optional[str] = typer.Option(None, "--data-kind", help="chat, preference, text, facts or prompts (default: by goal)."),
    examples: Optional[int] = typer.Option(None, "--data-examples", help="Training examples."),
    avg_tokens: Optional[float] = typer.Option(None, "--avg-tokens", help="Average tokens per example."),
    dataset_tokens: Optional[float] = typer.Option(None, "--data-tokens", help="Total training tokens (instead of examples)."),
    epochs: float = typer.Option(1.0, "--epochs"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length (default: from --avg-tokens, else 2048)."),
    budget_hours: Optional[float] = typer.Option(None, "--budget-hours"),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd"),
    price: Optional[float] = typer.Option(None, "--price", help="Your price per GPU-hour in USD (overrides the profile default)."),
    top: int = typer.Option(10, "--top"),
    risk_aversion: float = typer.Option(0.5, "--risk-aversion",
                                        help="Share of the quality range below the expected value a plan pays for "
                                             "(0 = rank by the expected quality, 1 = by the low end)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    framework: str = typer.Option("hf-trl", "--framework",
                                  help="Training stack: hf-trl, axolotl, llama-factory, torchtune, litgpt, unsloth."),
    save_plan: Optional[Path] = typer.Option(None, "--save-plan", help="Write plan #N (--pick) as the plan file "
                                             "ftadvisor launch and ftadvisor export read (replaces the file)."),
    pick: int = typer.Option(1, "--pick", help="Which ranked plan --save-plan writes (1 = the top one)."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data to name in the --save-plan file."),
) -> None:
    """Ranked fine-tuning plans that fit, with time, cost, expected quality and the reasons."""
    from ftadvisor.recommend import recommend as run_recommend

    try:
        rec = run_recommend(model, gpu, num_gpus=num_gpus, num_nodes=num_nodes, goal=goal, data_kind=data_kind,
                            examples=examples, avg_tokens=avg_tokens, dataset_tokens=dataset_tokens, epochs=epochs,
                            budget_hours=budget_hours, budget_usd=budget_usd, hourly_price_usd=price,
                            seq_len=seq_len, top=top, risk_aversion=risk_aversion, framework=framework)
        saved = _save_recommended(rec, save_plan, pick, model, gpu, data, epochs) if save_plan is not None else None
    except FtAdvisorError as err:
        fail(err)
        return
    if as_json:
        typer.echo(rec.model_dump_json(indent=2))
        if saved is not None:
            typer.echo(f"saved plan #{pick} to {saved}", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    from ftadvisor.profiles import resolve_hardware
    from ftadvisor.techniques import parse_technique
    from ftadvisor.tui.format import duration, money

    hw = resolve_hardware(gpu)  # the name or YAML file the user gave (rec carries only the id)
    console = Console()

    t = Table(title=f"{rec.model_id} on {rec.num_gpus}× {hw.name} — goal {rec.goal}, {rec.data_kind} data",
              title_justify="left", pad_edge=False, padding=(0, 1), box=None, show_header=True)
    # fixed widths for the figures; the knobs column wraps, so nothing is cut at 80 columns
    for col, width, kw in (("#", 2, {"justify": "right"}), ("technique", 9, {}),
                           (f"GiB/{hw.memory_gib:.0f}", 6, {"justify": "right"}), ("tok/s", 6, {"justify": "right"}),
                           ("time", 7, {"justify": "right"}), ("cost", 6, {"justify": "right"}),
                           ("quality", 14, {})):
        t.add_column(col, no_wrap=True, min_width=width, **kw)
    t.add_column("knobs", overflow="fold", ratio=1)
    for p in rec.plans:
        e = p.estimate
        sp, tc, q = e.speed, e.time_cost, e.quality
        pl = p.plan
        # the effective batch: micro-batch x accumulation x data-parallel GPUs (every GPU runs its own)
        batch = pl.micro_batch_size * pl.gradient_accumulation_steps * pl.num_gpus
        knobs = f"b{batch} mb{pl.micro_batch_size}" + (f" ga{pl.gradient_accumulation_steps}"
                                                       if pl.gradient_accumulation_steps > 1 else "")
        knobs += " ckpt" if p.plan.gradient_checkpointing else ""
        if parse_technique(p.plan.technique).method.lora:
            knobs += f" r{p.plan.lora_r}"
        if p.plan.sharding not in ("none",):
            knobs += f" {p.plan.sharding}"
        if p.plan.optimizer != "adamw":
            knobs += " " + p.plan.optimizer.replace("adamw_", "adam").replace("paged_adam", "paged-adam")
        if e.host is not None:
            # host RAM per node (offloaded state, buffers, process baseline: ftadvisor.host)
            knobs += f" host {e.host.bytes_per_node / GIB:,.0f}/{e.host.capacity_bytes / GIB:,.0f}GiB"
        t.add_row(
            str(p.rank), p.plan.technique, f"{e.memory.device_total_bytes / GIB:.1f}",
            f"{sp.tokens_per_second_total:,.0f}" if sp else "-",
            duration(tc.wall_clock_hours) if tc else "-",
            money(tc.cost_usd) if tc else "-",
            _quality_cell(q),
            knobs,
        )
    console.print(t)
    console.print("[dim]b = effective batch = micro-batch (mb) × accumulation (ga, 1 if not shown) × GPUs. "
                  "Ranked by a risk-aware score: "
                  f"quality − {risk_aversion:g} × (quality − low end) − 0.05 per doubling of the fastest time; "
                  "[yellow]weak[/] = thin evidence (one group, analogy, extrapolation), never ranked above a "
                  "better-evidenced plan of at least the same quality.[/]")
    for p in rec.plans[:3]:
        console.print(f"[bold]#{p.rank} {p.plan.technique}[/]")
        for r in p.reasons:
            console.print(f"  • {r}")
    if rec.rejected:
        console.print("[bold]Not recommended[/]")
        for p in rec.rejected:
            console.print(f"  [dim]{p.plan.technique}:[/] " + "; ".join(p.reasons[:3]))
    shown = {r for p in rec.plans[:3] for r in p.reasons}
    for n in rec.notes:
        if n not in shown:  # said once: a note already printed as a plan's reason is not repeated
            console.print(f"[yellow]note:[/] {n}")
    console.print("[dim]Prices are profile defaults; pass --price for yours. Quality is relative to full fine-tuning (1.0).[/]")
    if saved is not None:  # the hand-over: the saved plan file, to launch here or export (ftadvisor/export.py)
        console.print(_next_step_saved(saved, rec.plans[pick - 1].plan, data), markup=False, soft_wrap=True)
    elif rec.plans:  # the hand-over (ftadvisor/export.py): plan #1 as the user's framework's config
        from ftadvisor.export import FRAMEWORKS

        console.print(f"next step: add --save-plan PLAN.yaml [--pick N], then: ftadvisor export PLAN.yaml --to "
                      f"{'|'.join(FRAMEWORKS)} --data DATA  (or ftadvisor launch PLAN.yaml --data DATA)",
                      markup=False, soft_wrap=True)


def _save_recommended(rec, path: Path, pick: int, model: str, gpu: str, data: Optional[str], epochs: float) -> Path:
    """``recommend --save-plan``: plan #``pick`` written as a plan file (ftadvisor.planfile) naming the
    model and card as given (local files made absolute), the data if given, and the epochs."""
    import shlex

    from ftadvisor import validate
    from ftadvisor.planfile import plan_file_text, write_plan_file

    if not rec.plans:
        raise FtAdvisorError("--save-plan", "no plan fits, so there is none to save (see 'Not recommended')")
    if not 1 <= pick <= len(rec.plans):
        raise FtAdvisorError("--pick", f"must be a rank shown, 1 to {len(rec.plans)}, got {pick}")
    chosen = rec.plans[pick - 1]
    local = [str(Path(x).expanduser().resolve()) if x and validate.exists(x) else x for x in (model, gpu, data)]
    model_s, gpu_s, data_s = local[0], local[1] if validate.exists(gpu) else rec.hardware_id, local[2]
    e, f = chosen.estimate, shlex.quote(str(Path(path).expanduser().absolute()))
    head = [f"written by: ftadvisor recommend -m {model} -g {gpu} (plan #{pick} of {len(rec.plans)}, "
            f"goal {rec.goal}, {rec.data_kind} data)",
            f"predicted: {e.memory.device_total_bytes / GIB:.1f} GiB per GPU"
            + (f", {e.time_cost.wall_clock_hours:.3g} h" if e.time_cost else ""),
            f"train it:  ftadvisor launch {f}" + ("" if data_s else " --data DATA"),
            f"or hand it to another framework:  ftadvisor export {f} --to FRAMEWORK" + ("" if data_s else " --data DATA")]
    text = plan_file_text(chosen.plan, model=model_s, gpu=gpu_s, data=data_s, run={"num_epochs": epochs}, header=head)
    return write_plan_file(path, text)


def _next_step_saved(path: Path, plan, data: Optional[str]) -> str:
    """The next-step line after ``--save-plan``: launch the file (hf-trl plans), or export it."""
    import shlex

    from ftadvisor.export import FRAMEWORKS

    f, tail = shlex.quote(str(path)), "" if data else " --data DATA"
    to = plan.framework if plan.framework in FRAMEWORKS else "|".join(FRAMEWORKS)
    export = f"ftadvisor export {f} --to {to}{tail}"
    if plan.framework != "hf-trl":  # launch trains with hf-trl only (launch.build_spec)
        return f"saved {f}; next step: {export}"
    return f"saved {f}; next step: ftadvisor launch {f}{tail}  (or: {export})"


@app.command()
def capacity(
    model: str = typer.Option("llama-3.1-8b", "--model", "-m", help="Profile id, HF id, config.json path or directory."),
    gpu: str = typer.Option("rtx4090-24gb", "--gpu", "-g", help="Hardware profile id or alias."),
    technique: str = typer.Option("qlora", "--technique", "-t", help="Technique, e.g. lora, dpo+qlora."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan field=value (repeatable)."),
    headroom: Optional[float] = typer.Option(None, "--headroom",
                                             help="Fraction of the card to keep free (default 0.05, as recommend)."),
    max_gpus: int = typer.Option(1024, "--max-gpus", help="Largest GPU count to search."),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", show_default="the hardware's node",
                                                help="GPUs per node (counts above it go in whole nodes)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """How many GPUs of this type the plan needs (every count, in node-sized steps above one node), and the
    largest micro-batch and longest sequence that fit there (or at the GPU count given with --set num_gpus=N)."""
    from ftadvisor.recommend import MEMORY_HEADROOM, gpus_needed, max_micro_batch, max_seq_len

    headroom = MEMORY_HEADROOM if headroom is None else headroom
    try:
        fields = _plan_sets(sets)
        if "technique" in fields:
            technique = _technique_value(fields.pop("technique"), "--set technique")
        if not 0 <= headroom < 1:
            raise FtAdvisorError("--headroom", "must be a fraction in [0, 1)")
        if max_gpus < 1 or (gpus_per_node is not None and gpus_per_node < 1):
            raise FtAdvisorError("--max-gpus", "GPU counts must be at least 1")
        # the user's sharding (if any) is kept; only the GPU count is searched
        need = gpus_needed(model, gpu, technique, max_gpus=max_gpus, gpus_per_node=gpus_per_node, headroom=headroom,
                           **{k: v for k, v in fields.items() if k not in ("num_gpus", "num_nodes")})
        # batch and sequence at the user's GPU count, else at the fewest that fit (else the largest tried)
        at = dict(fields)
        if "num_gpus" not in fields:
            plan = need.estimate.plan
            at.update(num_gpus=plan.num_gpus, num_nodes=plan.num_nodes, sharding=plan.sharding)
        mb = max_micro_batch(model, gpu, technique, headroom=headroom,
                             **{k: v for k, v in at.items() if k != "micro_batch_size"})
        sl = max_seq_len(model, gpu, technique, headroom=headroom, **{k: v for k, v in at.items() if k != "seq_len"})
    except FtAdvisorError as err:
        fail(err)
        return
    n_at = at.get("num_gpus", 1)
    where = {"num_gpus": n_at, "sharding": at.get("sharding", "none" if n_at == 1 else "ddp")}  # the plan's default
    data = {"model": model, "gpu": gpu, "technique": technique, "headroom": headroom,
            "max_micro_batch_size": mb, "max_seq_len": sl, "at": where,
            "min_gpus": need.num_gpus, "num_nodes": need.num_nodes, "sharding": need.sharding,
            "more_gpus_help": need.more_gpus_help if need.num_gpus is None else None,
            "host_bytes_per_node": need.estimate.host.bytes_per_node if need.estimate.host else None,
            "host_capacity_bytes": need.estimate.host.capacity_bytes if need.estimate.host else None,
            "floor_gib": round(need.floor_bytes / GIB, 2) if need.num_gpus is None else None}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{technique} of {model} on {gpu}" + (f" ({', '.join(f'{k}={v}' for k, v in fields.items())})" if fields else "")
               + f"; fits = within {1 - headroom:.0%} of the card")
    if need.num_gpus is None:
        gpus = f"none up to {max_gpus}: " + need.why_not(gpu)
    elif need.num_gpus == 1 and need.sharding == "none":
        gpus = "1 (a single GPU)"
    else:
        nodes = f" on {need.num_nodes} nodes" if need.num_nodes and need.num_nodes > 1 else ""
        gpus = f"{need.num_gpus} with {need.sharding}{nodes}"
    typer.echo(f"  GPUs needed:                   {gpus}")
    h = need.estimate.host
    if h is not None:
        typer.echo(f"  host RAM per node:             {h.bytes_per_node / GIB:,.0f} of {h.capacity_bytes / GIB:,.0f} GiB"
                   f" ({h.node.form_factor} node of {h.node.gpus_per_node} GPUs)")
    at_text = f"at {where['num_gpus']} GPU{'s' if where['num_gpus'] != 1 else ''}" + (
        f" with {where['sharding']}" if where["sharding"] not in ("none", None) else "")
    typer.echo(f"  largest micro-batch that fits: {mb if mb else 'none (not even 1)'} ({at_text})")
    typer.echo(f"  longest sequence that fits:    {sl if sl else 'none (not even 128 tokens)'} ({at_text})")


def _hours(h: float) -> str:
    from ftadvisor.tui.format import duration  # one time format for both faces (rich only, no textual)

    return duration(h)


def _money(usd: float | None) -> str:
    from ftadvisor.tui.format import money  # cents below $100, as in the wizard

    return money(usd)


def _quality_cell(q) -> str:
    """Expected quality and its range, marked when the evidence behind it is weak."""
    if q is None:
        return "-"
    cell = f"{q.relative_to_full:.2f} {q.low:.2f}-{q.high:.2f}"
    return cell + (" [yellow]weak[/]" if q.evidence_strength == "weak" else "")


@profiles_app.command("list")
def profiles_list(kind: str = typer.Argument("all", help="models, hardware or all")) -> None:
    """List the shipped profiles."""
    from rich.console import Console
    from rich.table import Table

    from ftadvisor.profiles import hardware_profiles, model_profiles

    if kind not in ("all", "models", "hardware"):
        fail(FtAdvisorError("kind", f"unknown {kind!r}", ["models", "hardware", "all"]))
    console = Console()
    try:
        if kind in ("all", "models"):
            t = Table(title="Models")
            for col in ("id", "hf id", "type", "params", "MoE"):
                t.add_column(col)
            for p in model_profiles().values():
                a = p.arch
                moe = f"{a.num_experts}×top{a.experts_per_token}" if a.is_moe else ""
                t.add_row(p.id, p.hf_id or "", a.model_type, f"{a.total_params / 1e9:.2f}B", moe)
            console.print(t)
        if kind in ("all", "hardware"):
            t = Table(title="Hardware (prices are defaults: override them)")
            for col in ("id", "name", "GiB", "bf16 TFLOP/s", "HBM GB/s", "$/h"):
                t.add_column(col)
            for h in hardware_profiles().values():
                t.add_row(h.id, h.name, f"{h.memory_gib:.1f}", f"{h.bf16_dense_tflops or '-'}", f"{h.hbm_bandwidth_gbps:.0f}",
                          f"{h.hourly_price_usd:.2f}" if h.hourly_price_usd is not None else "-")
            console.print(t)
    except FtAdvisorError as err:
        fail(err)


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="A model or hardware id/alias.")) -> None:
    """Show one profile (model: config fields and derived architecture; hardware: all fields)."""
    from ftadvisor.profiles import _hardware_index, _model_index, resolve_hardware, resolve_model

    try:
        from ftadvisor import validate

        validate.name("name", name)
        key = name.strip().lower()
        from ftadvisor.hub import parse_hub_id

        if key in _model_index() or validate.exists(name) or (key not in _hardware_index() and parse_hub_id(name)):
            p = resolve_model(name)  # a Hub id (org/name[@revision]): its config.json, fetched (ftadvisor.hub)
            data = p.model_dump(mode="json")
            data["derived"] = {"total_params": p.arch.total_params, "active_params": p.arch.active_params}
        elif key in _hardware_index():
            data = resolve_hardware(name).model_dump(mode="json")
        else:
            from ftadvisor.errors import unknown
            from ftadvisor.profiles import hardware_profiles, model_profiles

            raise unknown("name", name, list(model_profiles()) + list(hardware_profiles()))
    except FtAdvisorError as err:
        fail(err)
        return
    typer.echo(json.dumps(data, indent=2))


@app.command()
def tui(model: Optional[str] = typer.Option(None, "--model", "-m", help="Start with this model (as estimate takes it)."),
        gpu: Optional[str] = typer.Option(None, "--gpu", "-g", help="Start with this card: an id or a card YAML file."),
        framework: Optional[str] = typer.Option(None, "--framework",
                                                help="Plan for this training stack (default hf-trl, what launch runs).")
        ) -> None:
    """Open the interactive wizard: model, hardware, goal and data, ranked plans, launch."""
    from ftadvisor.tui import main as run_tui

    try:
        run_tui(model=model, gpu=gpu, framework=framework)
    except FtAdvisorError as err:
        fail(err)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
