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
        self.message = message
        self.choices = list(choices) if choices is not None else None
        text = f"{field}: {message}"
        if self.choices:
            text += f" (valid: {', '.join(self.choices)})"
        super().__init__(one_line(text))  # always one line, whatever the user's input held


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` for an error message: never raises (a 5000-digit int, a cyclic or deeply
    nested value), one line, at most ``limit`` characters."""
    try:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
            text = f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
        elif isinstance(value, (str, int, float, bool, type(None))):
            text = repr(value[: limit + 2] if isinstance(value, str) else value)
        else:  # bounded: YAML aliases can make a structure whose full repr is exponentially long
            text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a number too long to print, a user object's __repr__ ...
        text = f"<{type(value).__name__}>"
    text = one_line(text)
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def _bounded_repr():
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = 60, 60, 40
    return r


_REPR = _bounded_repr()


# Every character str.splitlines() breaks a line at.
_LINE_BREAKS = {c: f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAKS.update({"\n": "\\n", "\r": "\\r"})
_ONE_LINE = str.maketrans(_LINE_BREAKS)


def one_line(text: str) -> str:
    """``text`` with every line break escaped (``\\n``), so an error is always exactly one line."""
    return str(text).translate(_ONE_LINE)


def check_size(name: str, value, allow_zero: bool = False, maximum: float = 1e18) -> float | None:
    """A finite number > 0 (>= 0 with ``allow_zero``) and <= ``maximum``, or None; anything else is
    the user's mistake."""
    import math

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FtAdvisorError(name, f"must be a number, got {shown(value)}")
    try:
        bad = math.isnan(value) or math.isinf(value)
    except OverflowError:  # an int too large for a float
        bad = True
    if bad or value > maximum:
        raise FtAdvisorError(name, f"must be a finite number up to {maximum:g}, got {shown(value)}")
    if value < 0 or (value == 0 and not allow_zero):
        raise FtAdvisorError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {shown(value)}")
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
    near = closest(name, cands) if len(name) <= 200 else []
    if near:
        msg = f"unknown value {shown(name)}; closest: {', '.join(near)}"
    else:
        msg = f"unknown value {shown(name)}; {len(cands)} known, list them with `ftadvisor profiles list`"
    return FtAdvisorError(field, msg)


def from_validation(err, where: str = "", default_field: str = "value") -> FtAdvisorError:
    """The one translation of a pydantic ``ValidationError`` into a one-line :class:`FtAdvisorError`:
    the first error's location (prefixed by ``where``), its message, the offending input, and the
    valid choices where pydantic lists them (a Literal field)."""
    first = err.errors()[0]
    inner = (first.get("ctx") or {}).get("error")
    if isinstance(inner, FtAdvisorError):  # raised by a validator: it already names its field
        return FtAdvisorError(f"{where}{inner.field}", inner.message, inner.choices) if where else inner
    loc = ".".join(str(x) for x in first["loc"]) or default_field
    got = shown(first.get("input"))
    choices = None
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        choices = [x.strip(" '") for x in str(ctx["expected"]).replace(" or ", ",").split(",") if x.strip(" '")]
    return FtAdvisorError(f"{where}{loc}", f"{first['msg']} (got {got})", choices)
