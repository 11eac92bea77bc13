"""The one validation layer for what users hand in: numbers, names, files and their parsing.

Every input path (CLI options, ``--set`` values, plan YAML files, ``config.json`` files and
dicts, data files, API arguments) comes through these checks, so the same mistake gets the same
answer everywhere: an :class:`~ftadvisor.errors.FtAdvisorError` naming the field (and the file),
never another exception. The rules:

* types: a number is an ``int``/``float`` (never a bool or a string), a name is a non-empty string;
* ranges and bounds: sizes that cannot exist are errors (:data:`ARCH_LIMITS` for architectures,
  ``TrainingPlan``'s bounds for plans), numbers are finite;
* parsing: whatever a parser raises on hostile input (nesting deeper than the interpreter's stack,
  bytes that are not UTF-8, numbers with thousands of digits, file names the OS refuses) becomes
  one line naming the field and the file.

Imports nothing heavy (pyyaml only when a YAML text is parsed).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown

MAX_NAME_CHARS = 4096
"""Longest model, hardware or file name accepted (Linux' PATH_MAX)."""

MAX_FILE_BYTES = 64 * 2**20
"""Largest plan or config file read (64 MiB; real ones are a few KiB)."""

# Largest values of config.json fields that a real model could have, with a wide margin (the
# largest published models have ~200 layers, hidden size ~25k, vocabularies ~260k, 256 experts).
# Beyond these, sizes are typos or attacks, and loops over layers would not finish.
ARCH_LIMITS: dict[str, int] = {
    "num_hidden_layers": 10_000,
    "hidden_size": 1_048_576,
    "n_embed": 1_048_576,
    "intermediate_size": 4_194_304,
    "moe_intermediate_size": 4_194_304,
    "shared_expert_intermediate_size": 4_194_304,
    "ffn_hidden_size": 4_194_304,
    "vocab_size": 16_777_216,
    "num_attention_heads": 65_536,
    "num_key_value_heads": 65_536,
    "num_kv_heads": 65_536,
    "head_dim": 65_536,
    "num_experts": 65_536,
    "num_local_experts": 65_536,
    "num_experts_per_tok": 65_536,
    "decoder_sparse_step": 10_000,
    "num_ln_in_parallel_attn": 2,
    "max_position_embeddings": 1_073_741_824,
}
ARCH_INT_LIMIT = 2**31 - 1
"""Bound for any other integer config field."""
ARCH_PARAMS_LIMIT = 10**16
"""Most parameters a model may have (10 quadrillion: far beyond any model that exists)."""


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def real(field: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, none_ok: bool = False) -> float | None:
    """A finite ``int``/``float`` within [low, high] (open ends with ``low_open``/``high_open``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FtAdvisorError(field, f"must be a number, got {shown(value)}")
    try:
        x = float(value)
    except OverflowError:
        raise FtAdvisorError(field, f"must be a finite number, got {shown(value)}") from None
    if math.isnan(x) or math.isinf(x):
        raise FtAdvisorError(field, f"must be a finite number, got {shown(value)}")
    if low is not None and (x < low or (low_open and x == low)):
        raise FtAdvisorError(field, f"must be {'>' if low_open else '>='} {low:g}, got {shown(value)}")
    if high is not None and (x > high or (high_open and x == high)):
        raise FtAdvisorError(field, f"must be {'<' if high_open else '<='} {high:g}, got {shown(value)}")
    return x


def integer(field: str, value: Any, *, low: int | None = None, high: int | None = None,
            none_ok: bool = False) -> int | None:
    """A whole number within [low, high] (an integral float such as ``2.0`` counts)."""
    if value is None and none_ok:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers count
        raise FtAdvisorError(field, f"must be a whole number, got {shown(value)}")
    value = int(value)
    if low is not None and value < low:
        raise FtAdvisorError(field, f"must be >= {low}, got {shown(value)}")
    if high is not None and value > high:
        raise FtAdvisorError(field, f"must be <= {high}, got {shown(value)}")
    return int(value)


def fraction(field: str, value: Any) -> float:
    """A share of something kept back: finite, in [0, 1)."""
    x = real(field, value)
    if not 0 <= x < 1:
        raise FtAdvisorError(field, f"must be a fraction in [0, 1), got {shown(value)}")
    return x


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FtAdvisorError(field, f"must be true or false, got {shown(value)}")
    return value


def name(field: str, value: Any, *, none_ok: bool = False, max_chars: int = MAX_NAME_CHARS) -> str | None:
    """A non-empty name (a profile id, a path) of at most ``max_chars`` characters, without NUL bytes."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str):
        raise FtAdvisorError(field, f"must be a name, got {type(value).__name__} {shown(value)}")
    if not value.strip():
        raise FtAdvisorError(field, "must not be empty")
    if len(value) > max_chars:
        raise FtAdvisorError(field, f"name too long ({len(value)} characters; at most {max_chars})")
    if "\x00" in value:
        raise FtAdvisorError(field, f"contains a NUL byte: {shown(value)}")
    return value


def choice(field: str, value: Any, choices: tuple[str, ...] | list[str], *, none_ok: bool = False) -> str | None:
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or value not in choices:
        raise FtAdvisorError(field, f"unknown {shown(value)}", choices)
    return value


def mapping(value: Any, field: str, what: str = "a mapping") -> dict[str, Any]:
    """A dict whose keys are all strings (YAML also allows numbers, nulls and lists as keys)."""
    if not isinstance(value, dict):
        raise FtAdvisorError(field, f"must be {what}, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise FtAdvisorError(field, f"keys must be field names, got {shown(k)}")
    return dict(value)


# --------------------------------------------------------------------------------------------
# Paths and files
# --------------------------------------------------------------------------------------------


def _stat_check(path: Any, kind: str) -> bool:
    try:
        p = Path(path).expanduser()
        return p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    except (OSError, ValueError, RuntimeError, TypeError):
        # ENAMETOOLONG, EACCES, an embedded NUL byte, "~nosuchuser": no such file here
        return False


def is_file(path: Any) -> bool:
    """``Path(path).expanduser().is_file()`` that never raises (a name the OS refuses is no file)."""
    return _stat_check(path, "file")


def is_dir(path: Any) -> bool:
    return _stat_check(path, "dir")


def exists(path: Any) -> bool:
    return _stat_check(path, "any")


def _where(path: Any) -> str:
    return shown(str(path), 200)


def read_text(path: Any, field: str) -> str:
    """The UTF-8 text of a file; a missing, unreadable, oversized or non-UTF-8 file is one error
    naming ``field`` and the file."""
    where = _where(path)
    if not is_file(path):
        raise FtAdvisorError(field, f"no such file {where}")
    p = Path(path).expanduser()
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FtAdvisorError(field, f"{where} is too large ({size:,} bytes; at most {MAX_FILE_BYTES:,})")
        data = p.read_bytes()
    except OSError as err:
        raise FtAdvisorError(field, f"cannot read {where} ({err.strerror or type(err).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FtAdvisorError(field, f"{where} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_yaml(text: str, field: str, source: str) -> Any:
    """``yaml.safe_load`` whose every failure names ``field`` and ``source``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FtAdvisorError(field, f"{source} is not valid YAML ({first})") from None
    except RecursionError:
        raise FtAdvisorError(field, f"{source} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError, AttributeError) as err:
        # int() of a number with thousands of digits, an impossible date, a malformed tagged value
        raise FtAdvisorError(field, f"{source} holds a value that cannot be read ({parse_reason(err)})") from None


def parse_json(text: str, field: str, source: str) -> Any:
    """``json.loads`` whose every failure names ``field`` and ``source``."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FtAdvisorError(field, f"{source} is not valid JSON ({err.msg} at line {err.lineno} "
                                    f"column {err.colno})") from None
    except RecursionError:
        raise FtAdvisorError(field, f"{source} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        raise FtAdvisorError(field, f"{source} holds a value that cannot be read ({parse_reason(err)})") from None


def parse_reason(err: Exception) -> str:
    """A parser's exception in a few words (a number of thousands of digits says so)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "integer string conversion" in text or "Exceeds the limit" in text:
        return "a number with too many digits"
    return shown(text, 120).strip("'\"")


def load_yaml_file(path: Any, field: str) -> Any:
    return parse_yaml(read_text(path, field), field, _where(path))


def load_json_file(path: Any, field: str) -> Any:
    return parse_json(read_text(path, field), field, _where(path))


# --------------------------------------------------------------------------------------------
# Options shared by estimate, recommend and the capacity search
# --------------------------------------------------------------------------------------------

MAX_EXAMPLES = 1e15
MAX_TOKENS = 1e18
MAX_EPOCHS = 1e6
MAX_PRICE = 1e6
MAX_GPUS = 65_536


GOALS = ("chat", "domain", "code", "math", "preference", "rl", "facts")
"""The task families (ftadvisor.quality.TASKS; tests/test_properties.py checks they agree)."""


def job_options(*, goal: Any = None, examples: Any = None, avg_tokens: Any = None, dataset_tokens: Any = None,
                epochs: Any = 1.0, hourly_price_usd: Any = None, budget_hours: Any = None,
                budget_usd: Any = None) -> None:
    """The dataset size, goal and price options of estimate and recommend: numbers where numbers
    are meant (finite, in range), a goal from the task families."""
    choice("goal", goal, GOALS, none_ok=True)
    real("examples", examples, low=0, high=MAX_EXAMPLES, none_ok=True)
    real("avg_tokens", avg_tokens, low=0, low_open=True, high=1e9, none_ok=True)
    real("dataset_tokens", dataset_tokens, low=0, high=MAX_TOKENS, none_ok=True)
    real("epochs", epochs, low=0, low_open=True, high=MAX_EPOCHS)
    real("hourly_price_usd", hourly_price_usd, low=0, high=MAX_PRICE, none_ok=True)
    real("budget_hours", budget_hours, low=0, low_open=True, high=1e12, none_ok=True)
    real("budget_usd", budget_usd, low=0, low_open=True, high=1e15, none_ok=True)


_UNSET: Any = object()


def gpu_search(*, headroom: Any = _UNSET, max_gpus: Any = _UNSET, gpus_per_node: Any = _UNSET,
               limit: Any = _UNSET, limit_optional: bool = False) -> None:
    """The capacity search's options (max_micro_batch, max_seq_len, gpus_needed, min_gpus): each
    one given must be valid (``limit`` may be None where ``limit_optional``)."""
    if headroom is not _UNSET:
        fraction("headroom", headroom)
    if max_gpus is not _UNSET:
        integer("max_gpus", max_gpus, low=1, high=MAX_GPUS)
    if gpus_per_node is not _UNSET:
        integer("gpus_per_node", gpus_per_node, low=1, high=1024)
    if limit is not _UNSET:
        integer("limit", limit, low=1, high=10_000_000, none_ok=limit_optional)


def recommend_options(*, num_gpus: Any, num_nodes: Any, goal: Any, data_kind: Any, seq_len: Any, top: Any,
                      memory_headroom: Any, quality_per_time_doubling: Any, risk_aversion: Any, **sizes: Any) -> None:
    """recommend()'s arguments: types and ranges (a seq_len of 0 is an error, not "not given")."""
    integer("num_gpus", num_gpus, low=1, high=MAX_GPUS)
    integer("num_nodes", num_nodes, low=1, high=8192)
    if not isinstance(goal, str):
        raise FtAdvisorError("goal", f"must be a task family, got {shown(goal)}")
    if data_kind is not None and not isinstance(data_kind, str):
        raise FtAdvisorError("data_kind", f"must be a data kind, got {shown(data_kind)}")
    integer("seq_len", seq_len, low=1, high=10_000_000, none_ok=True)
    integer("top", top, low=1, high=10_000)
    fraction("memory_headroom", memory_headroom)
    real("quality_per_time_doubling", quality_per_time_doubling, low=0, high=1e6)
    real("risk_aversion", risk_aversion, low=0, high=1)
    job_options(**sizes)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name in the same folder (made if missing), fsynced,
    then renamed over it: a reader sees the old file or the new one, never half of one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
