"""What every command-line face shares: one-line errors with exit code 2, and ``--set`` parsing.

Imported by ``ftadvisor.cli``, ``ftadvisor.cli_launch`` and ``ftadvisor.cli_calibrate``; imports
nothing heavy.
"""

from __future__ import annotations

from typing import Any

import typer

from ftadvisor.errors import FtAdvisorError


def fail(err: Exception) -> None:
    """Print ``error: <one line>`` to stderr and exit 2 (the user's mistake, no traceback)."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (numbers, booleans, lists), or the text itself."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["a=1", "lora_targets=q_proj,v_proj"]`` -> ``{"a": 1, "lora_targets": ["q_proj", "v_proj"]}``."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise FtAdvisorError("--set", f"expected field=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        val = parse_value(v)
        if k == "lora_targets" and isinstance(val, str) and "," in val:
            val = [x.strip() for x in val.split(",")]
        out[k] = val
    return out
