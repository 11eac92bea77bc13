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

from ftadvisor.errors import FtAdvisorError

app = typer.Typer(add_completion=False, help="Which fine-tuning technique fits, how fast, how good.")
profiles_app = typer.Typer(add_completion=False, no_args_is_help=True, help="List and show model and hardware profiles.")
app.add_typer(profiles_app, name="profiles")

# Sub-command groups live in their own modules; each imports its heavy stack inside its commands.
from ftadvisor import cli_calibrate, cli_launch  # noqa: E402

app.add_typer(cli_launch.app, name="launch")
app.add_typer(cli_calibrate.app, name="calibrate")

GIB = 2**30


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    """Which fine-tuning technique fits, how fast, how good."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise FtAdvisorError("--set", f"expected field=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        val = _parse_value(v)
        if k == "lora_targets" and isinstance(val, str) and "," in val:
            val = [x.strip() for x in val.split(",")]
        out[k] = val
    return out


def _load_plan_file(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FtAdvisorError("--plan", f"no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FtAdvisorError("--plan", f"{path} is not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise FtAdvisorError("--plan", f"{path} must hold a mapping of plan fields")
    return data


def _bar(frac: float, width: int = 16) -> str:
    filled = min(width, int(round(frac * width)))
    over = frac > 1
    return ("[red]" if over else "[green]") + "█" * filled + "[/]" + "·" * (width - filled) + (" [red]>[/]" if over else "")


COMPONENT_NAMES = {
    "weights_bytes": "weights",
    "gradients_bytes": "grads",
    "optimizer_state_bytes": "optim",
    "master_weights_bytes": "master",
    "activations_bytes": "activ.",
    "logits_bytes": "logits",
    "extra_models_bytes": "models",
    "generation_cache_bytes": "KV",
    "quantization_workspace_bytes": "dequant",
    "communication_bytes": "comm",
    "framework_overhead_bytes": "framework",
}


PHASE_NAMES = {"forward_backward": "fwd/bwd", "optimizer_step": "step", "generation": "gen"}


def _largest(est) -> str:
    m = est.memory.model_dump()
    k = max(COMPONENT_NAMES, key=lambda c: m[c])
    return f"{COMPONENT_NAMES[k]} {m[k] / GIB:.1f}"


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
    }
    mem = est.memory.model_dump()
    for k, v in mem.items():
        if isinstance(v, (int, str)):
            row[k] = v
    row["warnings"] = " | ".join(est.warnings)
    return row


@app.command()
def estimate(
    model: str = typer.Option("llama-3.1-8b", "--model", "-m", help="Profile id, HF id, config.json path or directory."),
    gpu: str = typer.Option("rtx4090-24gb", "--gpu", "-g", help="Hardware profile id or alias (h100, a100, rtx4090 ...)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", "-n", help="GPUs in total."),
    technique: list[str] = typer.Option(["all"], "--technique", "-t", help="Technique(s), e.g. lora, dpo+qlora; 'all' compares every one."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Plan field=value (repeatable), e.g. seq_len=4096."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="YAML file of plan fields (may also hold model, gpu, technique)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON (a list of estimates)."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per technique."),
) -> None:
    """Peak memory per GPU for each technique, with the breakdown and whether it fits."""
    from ftadvisor.estimator import estimate as run_estimate
    from ftadvisor.profiles import resolve_hardware, resolve_model
    from ftadvisor.techniques import all_techniques

    try:
        fields: dict[str, Any] = {}
        if plan is not None:
            fields.update(_load_plan_file(plan))
            model = fields.pop("model", model)
            gpu = fields.pop("gpu", fields.pop("hardware", gpu))
            if "technique" in fields and technique == ["all"]:
                technique = [fields.pop("technique")]
            fields.pop("technique", None)
        fields.update(_parse_sets(sets))
        if num_gpus is not None:
            fields["num_gpus"] = num_gpus
        mp = resolve_model(model)
        hw = resolve_hardware(gpu)
        names: list[str] = []
        for t in technique:
            for part in t.split(","):
                part = part.strip()
                if part == "all":
                    names += [n for n in all_techniques() if mp.arch.is_moe or n != "moe"]
                elif part:
                    names.append(part)
        results = [run_estimate(mp, hw, name, **fields) for name in names]
    except FtAdvisorError as err:
        _fail(err)
        return

    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
        return
    if as_csv:
        import csv

        rows = [_flat_row(r) for r in results]
        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return

    from rich.console import Console
    from rich.table import Table

    first = results[0]
    cap = hw.memory_bytes
    title = (
        f"{mp.name} ({first.total_params / 1e9:.2f}B) on {first.plan.num_gpus}× {hw.name}\n"
        f"seq {first.plan.seq_len}, micro-batch {first.plan.micro_batch_size}, {first.plan.precision}, "
        f"sharding {first.plan.sharding}, checkpointing {'on' if first.plan.gradient_checkpointing else 'off'}\n"
        "GiB = device total per GPU (what nvidia-smi shows)"
    )
    table = Table(title=title, title_justify="left", pad_edge=False, padding=(0, 1))
    table.add_column("technique", no_wrap=True)
    table.add_column("trainable", justify="right", no_wrap=True)
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column(f"of {hw.memory_gib:.0f}", no_wrap=True)
    table.add_column("fits", no_wrap=True)
    table.add_column("largest GiB", no_wrap=True)
    table.add_column("peak", no_wrap=True)
    for r in results:
        m = r.memory
        tr = r.trainable_params
        tr_s = f"{tr / 1e9:.2f}B" if tr >= 1e9 else f"{tr / 1e6:.1f}M"
        table.add_row(
            r.technique,
            tr_s,
            f"{m.device_total_bytes / GIB:.1f}",
            _bar(m.device_total_bytes / cap, 8),
            "[green]yes[/]" if r.fits else "[red]no[/]",
            _largest(r),
            PHASE_NAMES.get(m.peak_phase, m.peak_phase),
        )
    console = Console()
    console.print(table)
    warned = {w for r in results for w in r.warnings}
    for w in sorted(warned):
        console.print(f"[yellow]note:[/] {w}")
    console.print("[dim]Change knobs with --set field=value (seq_len, micro_batch_size, gradient_checkpointing, lora_r, "
                  "sharding, optimizer ...); --json for the full breakdown.[/]")


@profiles_app.command("list")
def profiles_list(kind: str = typer.Argument("all", help="models, hardware or all")) -> None:
    """List the shipped profiles."""
    from rich.console import Console
    from rich.table import Table

    from ftadvisor.profiles import hardware_profiles, model_profiles

    if kind not in ("all", "models", "hardware"):
        _fail(FtAdvisorError("kind", f"unknown {kind!r}", ["models", "hardware", "all"]))
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
        _fail(err)


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="A model or hardware id/alias.")) -> None:
    """Show one profile (model: config fields and derived architecture; hardware: all fields)."""
    from ftadvisor.profiles import _hardware_index, _model_index, resolve_hardware, resolve_model

    try:
        key = name.strip().lower()
        if key in _model_index() or Path(name).exists():
            p = resolve_model(name)
            data = p.model_dump(mode="json")
            data["derived"] = {"total_params": p.arch.total_params, "active_params": p.arch.active_params}
        elif key in _hardware_index():
            data = resolve_hardware(name).model_dump(mode="json")
        else:
            from ftadvisor.errors import unknown
            from ftadvisor.profiles import hardware_profiles, model_profiles

            raise unknown("name", name, list(model_profiles()) + list(hardware_profiles()))
    except FtAdvisorError as err:
        _fail(err)
        return
    typer.echo(json.dumps(data, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
