"""Results files: one JSON object per line in ``calibration/results/<hardware>/<sweep>.jsonl``.

Writing is safe against crashes and concurrent writers: :func:`append_result` takes an
exclusive ``flock`` on ``<file>.lock``, repairs a torn last line left by a writer that died
mid-write, writes the whole line with one ``write`` on an ``O_APPEND`` descriptor, and
``fsync``\\ s before releasing the lock. Readers skip a torn last line, so a killed sweep loses
at most the line being written (and that case runs again on resume) and never duplicates one.

Recording a real run (what ``ftadvisor launch`` does)::

    from ftadvisor.calibration.store import append_result, results_root
    append_result(results_root(), "h100-sxm", {
        "case_id": "launch-20260101-120000",   # any id unique within the file
        "sweep": "launch",                     # file name (default "launch")
        "status": "ok",                        # ok / oom / crash / timeout / skipped
        "source": "launch",
        "plan": plan.model_dump(mode="json"),
        "model": {"ref": "llama-3.1-8b"},
        "backend": "cuda",
        "prediction": estimate.model_dump(mode="json"),
        "measurement": {"peak_allocated_bytes": ..., "peak_reserved_bytes": ...},
    })

Pure module (standard library and pydantic only).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftadvisor.errors import FtAdvisorError, from_validation

SCHEMA_VERSION = 1
Status = Literal["ok", "oom", "crash", "timeout", "skipped"]
STATUSES = ("ok", "oom", "crash", "timeout", "skipped")


class ResultRecord(BaseModel):
    """One line of a results file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    schema_version: int = SCHEMA_VERSION
    """Format version of this record."""
    case_id: str = Field(min_length=1)
    """Stable id of the case (sweep cases: hash of model, layers, plan, backend, processes)."""
    sweep: str = "launch"
    """Sweep name (= the results file's name)."""
    label: str = ""
    """Human-readable case description."""
    status: Status
    """ok, oom (out of memory), crash (error or fatal signal), timeout, skipped (not runnable here)."""
    source: Literal["calibrate", "launch"] = "calibrate"
    """Who wrote the record: a calibration sweep or a real launch."""
    model: dict[str, Any] = {}
    """``ref`` (profile id or models key), ``config`` (config.json fields), ``num_layers`` (built depth)."""
    plan: dict[str, Any]
    """The resolved TrainingPlan (JSON)."""
    hardware: str
    """Hardware profile id the prediction used."""
    backend: str = ""
    """How memory was measured: cuda, cpu, trace."""
    prediction: dict[str, Any] | None = None
    """``ftadvisor.estimate(...)`` as JSON, computed before the run."""
    measurement: dict[str, Any] | None = None
    """What the backend measured (bytes, phases, step times) and how (``method``)."""
    environment: dict[str, Any] = {}
    """Device name, driver, library versions, git revision, host."""
    error: str | None = None
    """Why a case did not end ok (last lines of the error)."""
    started_at: str = ""
    """UTC start time (ISO 8601)."""
    wall_s: float | None = None
    """Wall-clock seconds of the whole case (subprocess start to end)."""


def results_root() -> Path:
    """``calibration/results`` (under ``$FTADVISOR_CALIBRATION`` when set)."""
    from ftadvisor.profiles import calibration_dir

    return calibration_dir() / "results"


def results_path(results_root: str | os.PathLike, hardware_id: str, sweep: str) -> Path:
    """``<results_root>/<hardware_id>/<sweep>.jsonl``."""
    for what, val in (("hardware", hardware_id), ("sweep", sweep)):
        if not val or "/" in val or val.startswith("."):
            raise FtAdvisorError(what, f"{val!r} cannot name a results file")
    return Path(results_root) / hardware_id / f"{sweep}.jsonl"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def validate_record(record: dict[str, Any] | ResultRecord) -> ResultRecord:
    """A record as :class:`ResultRecord`; FtAdvisorError naming the bad field otherwise."""
    if isinstance(record, ResultRecord):
        return record
    if not isinstance(record, dict):
        raise FtAdvisorError("record", f"must be a dict, got {type(record).__name__}")
    try:
        return ResultRecord.model_validate(record)
    except ValidationError as err:
        raise from_validation(err, "record.", default_field="record") from None


def append_result(
    results_root: str | os.PathLike, hardware_id: str, record: dict[str, Any] | ResultRecord, sweep: str | None = None
) -> Path:
    """Validate ``record`` and append it as one line to ``<results_root>/<hardware_id>/<sweep>.jsonl``
    (``sweep`` defaults to the record's ``sweep`` field, itself defaulting to ``launch``).

    The record's ``hardware`` field defaults to ``hardware_id`` and ``started_at`` to now.
    Returns the file's path. Safe to call from several processes at once."""
    if isinstance(record, dict):
        record = {"hardware": hardware_id, "started_at": now_iso(), **record}
    rec = validate_record(record)
    path = results_path(results_root, hardware_id, sweep or rec.sweep)
    line = (json.dumps(rec.model_dump(mode="json"), separators=(",", ":"), sort_keys=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _repair_torn_tail(fd)
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def _repair_torn_tail(fd: int) -> None:
    """Cut an incomplete last line (a writer killed mid-write) so the next line starts clean."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    # Find the last newline; everything after it is the torn record.
    pos = size
    chunk = 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        buf = os.pread(fd, pos - start, start)
        i = buf.rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def iter_results(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of one results file; a torn (unterminated, unparsable) last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn last line: the writer died mid-write
                return
            raise FtAdvisorError(str(path), f"line {i + 1} is not valid JSON") from None


def load_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    return list(iter_results(path))


def completed_ids(path: str | os.PathLike) -> set[str]:
    """case_ids already recorded in a results file (any status: a crash is a result too)."""
    return {r.get("case_id") for r in iter_results(path) if r.get("case_id")}


def all_result_files(results_root: str | os.PathLike, hardware_id: str | None = None) -> list[Path]:
    """Every ``*.jsonl`` under ``results_root`` (one hardware's folder when given)."""
    root = Path(results_root)
    if hardware_id:
        root = root / hardware_id
    return sorted(root.rglob("*.jsonl")) if root.is_dir() else []
