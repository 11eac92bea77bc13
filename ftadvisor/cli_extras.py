"""Conveniences of the command line: ``--version``, ``completion``, ``data-stats`` and the
``--plot`` pictures of ``estimate`` (registered on the app in ftadvisor/cli.py).

    ftadvisor --version
    eval "$(ftadvisor completion bash)"       # or: ftadvisor --install-completion
    ftadvisor data-stats examples/data/chat.jsonl -m ./my-model --seq-len 1024 --plot lengths.svg
    ftadvisor estimate -m llama-3.1-8b -g rtx4090 --plot memory.png

Imports only typer at module level; each command imports what it needs when it runs
(transformers only for a local tokenizer, matplotlib only for --plot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ftadvisor.cli_common import fail
from ftadvisor.errors import FtAdvisorError

PROG = "ftadvisor"
SHELLS = ("bash", "zsh", "fish", "powershell")


# --------------------------------------------------------------------------------------------
# --version
# --------------------------------------------------------------------------------------------


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), else the one in the checkout's
    pyproject.toml (running from a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def show_version(value: bool) -> None:
    """The eager ``--version`` option of the root command: print ``ftadvisor X.Y.Z`` and exit."""
    if value:
        typer.echo(f"{PROG} {package_version()}")
        raise typer.Exit(0)


# --------------------------------------------------------------------------------------------
# completion
# --------------------------------------------------------------------------------------------


def completion(shell: str = typer.Argument(..., help="bash, zsh, fish or powershell.")) -> None:
    """Print the shell completion script (bash, zsh, fish, powershell).

    Bash: add `eval "$(ftadvisor completion bash)"` to ~/.bashrc; zsh: `ftadvisor completion zsh >
    ~/.zfunc/_ftadvisor`; fish: `ftadvisor completion fish > ~/.config/fish/completions/ftadvisor.fish`.
    `ftadvisor --install-completion` does this for the current shell."""
    try:
        if shell not in SHELLS:
            raise FtAdvisorError("shell", f"unknown shell {shell!r}", SHELLS)
    except FtAdvisorError as err:
        fail(err)
        return
    # typer's own scripts (typer/_completion_shared.py), so they speak the protocol of the
    # completion classes typer registers for the app (add_completion=True in ftadvisor/cli.py)
    from typer.completion import get_completion_script

    typer.echo(get_completion_script(prog_name=PROG, complete_var=f"_{PROG.upper()}_COMPLETE", shell=shell))


# --------------------------------------------------------------------------------------------
# estimate --plot
# --------------------------------------------------------------------------------------------


def plot_estimates(path: Path, mp, hw, results: list) -> Path:
    """The stacked memory breakdown per technique of ``ftadvisor estimate`` (ftadvisor.plots)."""
    from ftadvisor.plots import memory_breakdown

    p = results[0].plan
    title = (f"{mp.name} on {p.num_gpus}x {hw.name}: seq {p.seq_len}, micro-batch {p.micro_batch_size}, "
             f"{p.precision}, sharding {p.sharding}, checkpointing {'on' if p.gradient_checkpointing else 'off'}")
    return memory_breakdown(results, hw.memory_bytes, hw.name, path, title=title)


# --------------------------------------------------------------------------------------------
# data-stats
# --------------------------------------------------------------------------------------------


def data_stats(
    data: str = typer.Argument(..., help="A .jsonl/.json/.csv/.parquet file in a format launch reads."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model directory with tokenizer files, or a profile / Hub id whose "
                                             "tokenizer is in the local Hugging Face cache."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Truncation length of the plan (tokens)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the length histogram to FILE.png or FILE.svg."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
) -> None:
    """Token lengths of a dataset and the share truncated at --seq-len.

    Counted with the model's own tokenizer when one is on this machine (else estimated as
    characters / 4): min, median, p90, p99, max and a histogram."""
    from ftadvisor.datastats import data_stats as compute

    try:
        if plot is not None:
            from ftadvisor.plots import check_plot_path

            check_plot_path(plot)
        stats = compute(data, model, seq_len=seq_len)
        summary = stats.summary()
        drawn = None
        if plot is not None:
            from ftadvisor.plots import length_histogram

            unit = "tokens" if stats.exact else "tokens, estimated as chars/4"
            drawn = length_histogram(stats.lengths, seq_len, plot, f"{stats.source}: {stats.format} data, "
                                     f"{stats.sequences} sequences", unit=unit)
    except FtAdvisorError as err:
        fail(err)
        return
    if as_json:
        typer.echo(json.dumps({
            "source": stats.source, "format": stats.format, "records": stats.records, "sequences": stats.sequences,
            "exact": stats.exact, "counted_with": stats.counted_with, "note": stats.note, "seq_len": seq_len,
            **{k: round(v, 3) for k, v in summary.items()}, "truncated": stats.truncated,
            "truncated_share": round(stats.truncated_share, 6),
            "histogram": [{"low": round(lo, 3), "high": round(hi, 3), "count": c} for lo, hi, c in stats.histogram()],
            "plot": str(drawn) if drawn else None}, indent=2))
        return
    _print_stats(stats, summary, drawn)


def _print_stats(stats, summary: dict[str, float], drawn: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    per = f", {stats.sequences:,} sequences" if stats.sequences != stats.records else ""
    console.print(f"[bold]{stats.source}[/]: {stats.format} data, {stats.records:,} records{per}; "
                  f"tokens counted with {stats.counted_with}", highlight=False)
    if stats.note:
        console.print(f"[yellow]note:[/] {stats.note}; falling back to the characters / 4 estimate", highlight=False)
    t = Table(title="tokens per sequence" + ("" if stats.exact else " (estimated: characters / 4)"),
              title_justify="left", pad_edge=False, padding=(0, 1))
    for name in ("min", "median", "p90", "p99", "max", "mean"):
        t.add_column(name, justify="right")
    t.add_row(*(f"{summary[k]:,.0f}" for k in ("min", "median", "p90", "p99", "max", "mean")))
    console.print(t)
    bins = stats.histogram()
    top = max(c for _, _, c in bins)
    width = 40
    for lo, hi, c in bins:
        bar = "█" * (round(c / top * width) if top else 0)
        mark = "[red]" if lo >= stats.seq_len else "[green]" if hi <= stats.seq_len else "[yellow]"
        console.print(f"{lo:>9,.0f} - {hi:<9,.0f} {mark}{bar}[/] {c:,}", highlight=False)
    share = stats.truncated_share
    color = "green" if share == 0 else "yellow" if share < 0.05 else "red"
    console.print(f"truncated at seq_len {stats.seq_len:,}: [{color}]{stats.truncated:,} of {stats.sequences:,} "
                  f"sequences ({share:.1%})[/]", highlight=False)
    if drawn is not None:
        console.print(f"picture: {drawn}", highlight=False)
