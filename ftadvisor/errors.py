"""User-facing errors.

Every mistake a user can make (an unknown model, a negative batch size, a
malformed config.json) raises :class:`FtAdvisorError`, which names the field
and, where there is a closed set, the valid choices. The CLI prints it as one
line and exits non-zero; no traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FtAdvisorError(ValueError):
    """A problem with the user's input, worded for the user."""

    def __init__(self, field: str, message: str, choices: Iterable[str] | None = None):
        self.field = field
        self.choices = list(choices) if choices is not None else None
        text = f"{field}: {message}"
        if self.choices:
            text += f" (valid: {', '.join(self.choices)})"
        super().__init__(text)


def check_size(name: str, value, allow_zero: bool = False) -> float | None:
    """A finite number > 0 (>= 0 with ``allow_zero``) or None; anything else is the user's mistake."""
    import math

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise FtAdvisorError(name, f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise FtAdvisorError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for 'did you mean')."""
    cands = list(candidates)
    low = name.lower()
    hits = difflib.get_close_matches(low, cands, n=n, cutoff=0.5)
    # Substring matches help with short forms such as "llama" or "4090".
    for c in cands:
        if low and low in c and c not in hits:
            hits.append(c)
    return hits[:n]


def unknown(field: str, name: str, candidates: Iterable[str]) -> FtAdvisorError:
    cands = sorted(set(candidates))
    near = closest(name, cands)
    if near:
        msg = f"unknown value {name!r}; closest: {', '.join(near)}"
    else:
        msg = f"unknown value {name!r}; {len(cands)} known, list them with `ftadvisor profiles list`"
    return FtAdvisorError(field, msg)


def from_validation(err, where: str = "", default_field: str = "value") -> FtAdvisorError:
    """The one translation of a pydantic ``ValidationError`` into a one-line :class:`FtAdvisorError`:
    the first error's location (prefixed by ``where``), its message, the offending input, and the
    valid choices where pydantic lists them (a Literal field)."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or default_field
    shown = repr(first.get("input"))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    choices = None
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        choices = [x.strip(" '") for x in str(ctx["expected"]).replace(" or ", ",").split(",") if x.strip(" '")]
    return FtAdvisorError(f"{where}{loc}", f"{first['msg']} (got {shown})", choices)
