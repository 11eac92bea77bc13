"""What every command-line face shares: one-line errors with exit code 2, and ``--set`` parsing.

Imported by ``ftadvisor.cli``, ``ftadvisor.cli_launch`` and ``ftadvisor.cli_calibrate``; imports
nothing heavy.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from ftadvisor.errors import FtAdvisorError, one_line, shown


def fail(err: Exception) -> None:
    """Print ``error: <one line>`` to stderr and exit 2 (the user's mistake, no traceback)."""
    typer.echo(f"error: {one_line(str(err))}", err=True)
    raise typer.Exit(2)


def parse_value(text: str, key: str = "--set") -> Any:
    """A ``--set`` value as YAML (numbers, booleans, lists), or the text itself. A value YAML reads
    but Python cannot hold (a number of thousands of digits, nesting deeper than the stack) is an
    error naming the field."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise FtAdvisorError(f"--set {key}", "value is nested too deeply") from None
    except (ValueError, TypeError, OverflowError, AttributeError) as err:
        from ftadvisor.validate import parse_reason

        raise FtAdvisorError(f"--set {key}", f"cannot read the value ({parse_reason(err)})") from None


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["a=1", "lora_targets=q_proj,v_proj"]`` -> ``{"a": 1, "lora_targets": ["q_proj", "v_proj"]}``."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise FtAdvisorError("--set", f"expected field=value, got {shown(item)}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k.isidentifier():
            raise FtAdvisorError("--set", f"expected field=value with a field name, got {shown(item)}")
        val = parse_value(v, k)
        if k == "lora_targets" and isinstance(val, str) and "," in val:
            val = [x.strip() for x in val.split(",")]
        out[k] = val
    return out


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, UsageError, NoArgsIsHelpError, Abort) classes of the click typer runs on:
    typer >= 0.2x vendors its own (typer._click), older ones use click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    aborts = [typer.Abort] + [m.Abort for m in mods if hasattr(m, "Abort")]
    return (tuple(m.ClickException for m in mods), tuple(m.UsageError for m in mods),
            tuple(m.NoArgsIsHelpError for m in mods if hasattr(m, "NoArgsIsHelpError")), tuple(aborts))


class OneLineErrors(TyperGroup):
    """The command group of every ftadvisor command line: a usage mistake (an unknown option, a
    value of the wrong type, a missing argument) is one ``error:`` line and exit code 2, like
    every other mistake, instead of click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        click_error, usage_error, help_error, abort = _click_errors()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except help_error as err:  # `ftadvisor profiles`: its help (asked for, not a mistake)
            typer.echo(err.format_message())
            sys.exit(0)
        except click_error as err:
            typer.echo(f"error: {one_line(err.format_message())}", err=True)
            sys.exit(2 if isinstance(err, usage_error) else err.exit_code)
        except abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)
