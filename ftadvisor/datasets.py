"""The user's training data for ``ftadvisor launch``: load, detect the format, check it fits the technique.

    from ftadvisor.datasets import load_data, check_for_technique
    data = load_data("examples/data/chat.jsonl")        # -> UserData(format="messages", records=[...])
    check_for_technique(data, "dpo+lora")                # FtAdvisorError: needs preference pairs ...

Sources: a local ``.jsonl``/``.ndjson``, ``.json``, ``.csv`` or ``.parquet`` file, or a Hugging
Face dataset id (``owner/name`` or ``owner/name:split``) when the hub is reachable.
Everything here runs before any model is loaded; only Parquet (pyarrow, else pandas) and hub
ids (``datasets``) import anything heavy, and only when such a source is given.

The formats are the dataset types trl documents ("Dataset formats and types" in the trl docs):
conversational ``messages``, ``prompt``/``completion``, plain ``text``, preference
``prompt``/``chosen``/``rejected``, unpaired preference ``prompt``/``completion``/``label`` and prompt-only (``prompt``, optional ``answer``); plus
pre-tokenized ``input_ids`` and ``question``/``answer`` facts (the shape Lamini-style memory
tuning trains on). Which objective takes which format is the engine's table
(``Objective.data_formats`` in ``ftadvisor/techniques.py``); converting records for the trainers is the engine's job.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown


@dataclass(frozen=True)
class DataFormat:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    summary: str


# The same names and detection order as the training engine (ftadvisor/train/data.py), most
# specific first: a preference record also has a prompt, a prompt/completion record would
# otherwise read as prompt-only.
FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in [
        DataFormat("messages", ("messages",), (), "chat: messages = [{role, content}, ...]"),
        DataFormat("preference", ("prompt", "chosen", "rejected"), (), "preference pairs"),
        DataFormat("unpaired_preference", ("prompt", "completion", "label"), (),
                   "single answers labelled good (true) or bad (false)"),
        DataFormat("prompt_completion", ("prompt", "completion"), (), "prompt and completion"),
        DataFormat("tokens", ("input_ids",), ("labels",), "pre-tokenized ids"),
        DataFormat("qa", ("question", "answer"), (), "facts: question and answer"),
        DataFormat("text", ("text",), (), "plain text"),
        DataFormat("prompt", ("prompt",), ("answer",), "prompts for RL, optional reference answer"),
    ]
}


def objective_formats(objective: str) -> tuple[str, ...]:
    """The formats the engine trains ``objective`` on (the objective's declaration, so launch and
    engine agree)."""
    from ftadvisor.techniques import OBJECTIVES

    return OBJECTIVES[objective].data_formats


CHAT_ROLES = ("system", "user", "assistant", "tool")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class UserData:
    """Records loaded from one source, with the detected format."""

    source: str
    format: str
    records: list[dict[str, Any]]
    locations: list[str] = field(default_factory=list)
    """Where each record came from (``line 7`` of a JSONL/CSV file, ``record 3`` otherwise)."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def fields(self) -> list[str]:
        return sorted({k for r in self.records for k in r})


def describe_formats(names: Iterable[str] | None = None) -> list[str]:
    """``["messages (messages)", "preference (prompt, chosen, rejected)", ...]`` for error messages."""
    out = []
    for n in names if names is not None else FORMATS:
        f = FORMATS[n]
        out.append(f"{n} ({', '.join(f.required + tuple(o + '?' for o in f.optional))})")
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _json(text: str, where: str) -> Any:
    """``json.loads`` for one line, file or cell: every failure (bad JSON, nesting deeper than the
    stack, a number of thousands of digits) is one error naming the place."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FtAdvisorError("data", f"{where}: not valid JSON ({err.msg} at line {err.lineno} "
                             f"column {err.colno})") from None
    except RecursionError:
        raise FtAdvisorError("data", f"{where}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        from ftadvisor.validate import parse_reason

        raise FtAdvisorError("data", f"{where}: a value cannot be read ({parse_reason(err)})") from None


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    records, where = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = _json(line, f"{path} line {n}")
            if not isinstance(obj, dict):
                raise FtAdvisorError("data", f"{path} line {n}: expected a JSON object per line, got {type(obj).__name__}")
            records.append(obj)
            where.append(f"line {n}")
    return records, where


def _read_json(path: Path) -> tuple[list[dict], list[str]]:
    obj = _json(path.read_text(encoding="utf-8") or "null", str(path))
    if obj is None:
        return [], []
    if isinstance(obj, dict):
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(x, dict) for x in next(iter(lists.values()))):
            obj = next(iter(lists.values()))  # {"data": [...]} / {"train": [...]}
        elif lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            n = len(next(iter(lists.values())))  # columns: {"prompt": [...], "completion": [...]}
            obj = [{k: v[i] for k, v in lists.items()} for i in range(n)]
        else:
            raise FtAdvisorError(
                "data", f"{path}: expected a list of records, one list under a key, or equal-length columns"
            )
    if not isinstance(obj, list):
        raise FtAdvisorError("data", f"{path}: expected a list of JSON objects, got {type(obj).__name__}")
    for i, r in enumerate(obj, start=1):
        if not isinstance(r, dict):
            raise FtAdvisorError("data", f"{path} record {i}: expected a JSON object, got {type(r).__name__}")
    return obj, [f"record {i}" for i in range(1, len(obj) + 1)]


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    records, where = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return [], []
        if any(not (name or "").strip() for name in reader.fieldnames):
            raise FtAdvisorError("data", f"{path} line 1: the header has an empty column name")
        for row in reader:
            n = reader.line_num
            if None in row:  # more cells than header columns
                raise FtAdvisorError("data", f"{path} line {n}: {len(reader.fieldnames) + len(row[None])} cells, "
                                     f"the header has {len(reader.fieldnames)}")
            if all(v in (None, "") for v in row.values()):
                continue
            rec: dict[str, Any] = {}
            for k, v in row.items():
                if v is None:
                    raise FtAdvisorError("data", f"{path} line {n}: fewer cells than the header's {len(reader.fieldnames)}")
                # Nested fields (messages, conversational chosen/rejected) are stored as JSON text in a cell.
                if k in ("messages", "prompt", "chosen", "rejected", "completion") and v.lstrip().startswith("["):
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError as err:
                        raise FtAdvisorError("data", f"{path} line {n}: column {k!r} looks like JSON but is not ({err.msg})") from None
                    except (RecursionError, ValueError, TypeError, OverflowError):
                        v = _json(v, f"{path} line {n} column {k!r}")
                rec[k] = v
            records.append(rec)
            where.append(f"line {n}")
    return records, where


def _read_parquet(path: Path) -> tuple[list[dict], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with datasets/pandas in requirements/train.txt
        pq = None
    try:
        if pq is not None:
            rows = pq.read_table(path).to_pylist()
        else:
            import pandas as pd

            rows = pd.read_parquet(path).to_dict("records")
    except ImportError as err:
        raise FtAdvisorError("data", f"reading Parquet needs pyarrow or pandas ({err})") from None
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError for broken files
        raise FtAdvisorError("data", f"{path}: not a readable Parquet file ({err})") from None
    return rows, [f"record {i}" for i in range(1, len(rows) + 1)]


def _read_hub(name: str) -> tuple[list[dict], list[str]]:
    repo, _, split = name.partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError as err:
        raise FtAdvisorError("data", f"loading Hugging Face datasets needs the `datasets` package ({err})") from None
    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as err:  # noqa: BLE001 - hub/network/auth errors come as many types
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        offline = any(s in text.lower() for s in ("offline", "connection", "resolve", "timed out", "network", "couldn't reach"))
        hint = (" — the Hugging Face hub is not reachable from here; download the data and pass a local file"
                if offline else "")
        raise FtAdvisorError("data", f"could not load Hugging Face dataset {repo!r} split {split!r}: {text}{hint}") from None
    rows = [dict(r) for r in ds]
    return rows, [f"{split}[{i}]" for i in range(len(rows))]


def load_data(source: str | Path, limit: int | None = None) -> UserData:
    """Read ``source`` (file path or hub id), detect its format and validate every record."""
    from ftadvisor import validate

    if not isinstance(source, (str, Path)):
        raise FtAdvisorError("data", f"expected a file path or a dataset id, got {type(source).__name__}")
    text = str(source).strip()
    if not text:
        raise FtAdvisorError("data", "no data given (a .jsonl/.json/.csv/.parquet file or a Hugging Face dataset id)")
    validate.name("data", text)
    validate.integer("limit", limit, low=1, none_ok=True)
    path = Path(text).expanduser() if validate.exists(text) else Path(text)
    if validate.is_dir(path):
        raise FtAdvisorError("data", f"{shown(text, 200)} is a directory; pass a .jsonl, .json, .csv or .parquet file")
    if validate.is_file(path):
        kind = _SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise FtAdvisorError("data", f"{path}: unknown file type {shown(path.suffix)}", sorted(_SUFFIXES))
        try:
            records, where = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
        except UnicodeDecodeError as err:
            raise FtAdvisorError("data", f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except csv.Error as err:  # a field over the csv module's limit, a NUL byte
            raise FtAdvisorError("data", f"{path}: not a readable CSV file ({shown(str(err), 120)})") from None
        except OSError as err:
            raise FtAdvisorError("data", f"cannot read {path} ({err.strerror or type(err).__name__})") from None
    elif _HUB_ID.match(text) and path.suffix.lower() not in _SUFFIXES:
        records, where = _read_hub(text)
    else:
        raise FtAdvisorError("data", f"no such file {shown(text, 200)} "
                             "(nor a Hugging Face dataset id of the form owner/name)")
    if not records:
        raise FtAdvisorError("data", f"{text} has no records")
    if limit is not None:
        records, where = records[:limit], where[:limit]
    fmt = detect_format(records, text)
    for rec, loc in zip(records, where):
        _validate(rec, fmt, f"{text} {loc}")
    return UserData(source=text, format=fmt, records=records, locations=where)


# --------------------------------------------------------------------------------------------
# Format detection and record checks
# --------------------------------------------------------------------------------------------


def detect_format(records: list[dict[str, Any]], source: str = "data") -> str:
    """The first format (most specific first) whose required fields every record has."""
    common = set(records[0])
    for r in records[1:]:
        common &= set(r)
    for f in FORMATS.values():
        if set(f.required) <= common:
            return f.name
    seen = sorted({k for r in records for k in r})
    for f in FORMATS.values():  # a field that some records lack: name the first such record
        if set(f.required) <= set(records[0]):
            for i, r in enumerate(records, start=1):
                missing = [k for k in f.required if k not in r]
                if missing:
                    raise FtAdvisorError(
                        "data", f"{source}: record {i} lacks {', '.join(missing)} (the first record is {f.name} data)"
                    )
    raise FtAdvisorError(
        "data",
        f"{source}: fields {', '.join(seen)} match no known format; expected one of: {'; '.join(describe_formats())}",
    )


def _text(value: Any, where: str, name: str, allow_number: bool = False) -> None:
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not isinstance(value, str):
        raise FtAdvisorError("data", f"{where}: field {name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise FtAdvisorError("data", f"{where}: field {name!r} is empty")


def _messages(value: Any, where: str, name: str, need_assistant: bool) -> None:
    if not isinstance(value, list) or not value:
        raise FtAdvisorError("data", f"{where}: {name!r} must be a non-empty list of {{role, content}} messages")
    for j, m in enumerate(value, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise FtAdvisorError("data", f"{where}: {name}[{j}] must be an object with 'role' and 'content'")
        if m["role"] not in CHAT_ROLES:
            raise FtAdvisorError("data", f"{where}: {name}[{j}] has unknown role {shown(m['role'], 40)}", CHAT_ROLES)
        if not isinstance(m["content"], str):
            raise FtAdvisorError("data", f"{where}: {name}[{j}].content must be text, got {type(m['content']).__name__}")
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        raise FtAdvisorError("data", f"{where}: {name!r} has no assistant message to learn from")


def _text_or_messages(value: Any, where: str, name: str) -> None:
    if isinstance(value, list):
        _messages(value, where, name, need_assistant=False)
    else:
        _text(value, where, name)


def _validate(rec: dict[str, Any], fmt: str, where: str) -> None:
    if fmt == "messages":
        _messages(rec["messages"], where, "messages", need_assistant=False)
    elif fmt == "preference":
        for k in ("prompt", "chosen", "rejected"):
            _text_or_messages(rec[k], where, k)
        if rec["chosen"] == rec["rejected"]:
            raise FtAdvisorError("data", f"{where}: 'chosen' and 'rejected' are identical")
    elif fmt == "unpaired_preference":
        _text_or_messages(rec["prompt"], where, "prompt")
        _text_or_messages(rec["completion"], where, "completion")
        if not isinstance(rec["label"], bool):
            raise FtAdvisorError("data", f"{where}: field 'label' must be true or false, got {shown(rec['label'], 40)}")
    elif fmt == "prompt_completion":
        _text_or_messages(rec["prompt"], where, "prompt")
        _text_or_messages(rec["completion"], where, "completion")
    elif fmt == "tokens":
        for k in ("input_ids", "labels"):
            v = rec.get(k)
            if k == "labels" and v is None:
                continue
            if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise FtAdvisorError("data", f"{where}: {k!r} must be a non-empty list of integer token ids")
    elif fmt == "qa":
        _text(rec["question"], where, "question")
        _text(rec["answer"], where, "answer", allow_number=True)
    elif fmt == "text":
        _text(rec["text"], where, "text")
    elif fmt == "prompt":
        _text_or_messages(rec["prompt"], where, "prompt")
        if rec.get("answer") is not None:
            _text(rec["answer"], where, "answer", allow_number=True)


# --------------------------------------------------------------------------------------------
# Technique fit
# --------------------------------------------------------------------------------------------


def check_for_technique(data: UserData, technique: str) -> list[str]:
    """Raise if ``data`` cannot train ``technique``; return warnings for a usable but odd fit."""
    from ftadvisor.techniques import parse_technique

    tech = parse_technique(technique)
    objective = tech.objective.name
    ok = objective_formats(objective)
    if data.format not in ok:
        have = set(data.fields)
        needs = [f"{n} (missing {', '.join(k for k in FORMATS[n].required if k not in have)})" for n in ok]
        raise FtAdvisorError(
            "data",
            f"{tech.name} ({tech.objective.summary}) cannot train on {data.format} data "
            f"(fields: {', '.join(data.fields)}); it needs one of: " + "; ".join(needs),
            list(ok),
        )
    warnings = []
    if tech.objective.data_kind == "text" and data.format == "messages":
        for rec, loc in zip(data.records, data.locations):
            if not any(m["role"] == "assistant" for m in rec["messages"]):
                raise FtAdvisorError("data", f"{data.source} {loc}: 'messages' has no assistant turn to learn from")
    preferred = tech.method.preferred_format
    if preferred is not None and data.format != preferred:
        warnings.append(f"{tech.method.name} ({tech.method.summary}) is meant for {preferred} records "
                        f"({FORMATS[preferred].summary}); got {data.format} data")
    if tech.objective.generation and data.format == "prompt" and not any(r.get("answer") for r in data.records):
        warnings.append(f"{objective} prompts carry no 'answer': a reward that checks answers has nothing to check")
    return warnings
