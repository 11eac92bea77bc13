"""Results files: one JSON object per line in ``calibration/results/<hardware>/<sweep>.jsonl``.

Writing is safe against crashes and concurrent writers: :func:`append_result` takes an
exclusive ``flock`` on ``<file>.lock``, repairs a torn last line left by a writer that died
mid-write, writes the whole line with one ``write`` on an ``O_APPEND`` descriptor, and
``fsync``\\ s before releasing the lock. Readers skip a torn last line, so a killed sweep loses
at most the line being written (and that case runs again on resume) and never duplicates one.

Every record names the machine that measured it (``machine``, :func:`machine_id`: a random id
kept in ``~/.cache/ftadvisor/machine-id``, or ``$FTADVISOR_MACHINE_ID``). A results file can hold
several machines' records (the shipped ones were measured elsewhere); "already recorded" always
means recorded by *this* machine (:func:`completed_ids` with ``machine``), so a fresh clone
measures the shipped sweeps again, and ``fit`` / ``report`` read every machine's records.

A sweep records each case once per machine even when several processes run it into the same
file: :func:`claim_case` holds a per-case ``flock`` while the case runs (another process skips
it, and later waits for it) and re-reads the file under its lock; :func:`record_once` appends
only if this machine has not recorded the case meanwhile, checked under the same lock.

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
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
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
    machine: str = ""
    """Id of the machine that wrote the record (:func:`machine_id`); empty in records from before
    machine ids, which therefore count as another machine's."""
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


MACHINE_ID_ENV = "FTADVISOR_MACHINE_ID"
_MACHINE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def cache_dir() -> Path:
    """ftadvisor's per-user cache folder: ``$XDG_CACHE_HOME/ftadvisor`` (default ``~/.cache/ftadvisor``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ftadvisor"


def machine_id() -> str:
    """The id this machine's records carry: ``$FTADVISOR_MACHINE_ID`` when set, else a random id
    created once in ``<cache_dir>/machine-id`` (so clones and checkouts on one machine share it,
    and a copy of someone else's results never counts as this machine's). Where the cache cannot
    be written, a fingerprint of the host (hostname, /etc/machine-id, CPU model)."""
    env = os.environ.get(MACHINE_ID_ENV, "").strip()
    if env:
        if not _MACHINE_ID_RE.match(env):
            raise FtAdvisorError(MACHINE_ID_ENV, f"{env!r} is not a machine id (letters, digits, '.', '_', '-'; at most 64)")
        return env
    return _stored_machine_id(str(cache_dir() / "machine-id"))


@lru_cache(maxsize=8)
def _stored_machine_id(path_str: str) -> str:
    path = Path(path_str)
    try:
        old = path.read_text().strip()
        if _MACHINE_ID_RE.match(old):
            return old
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".machine-id.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(uuid.uuid4().hex[:16] + "\n")
        try:
            os.link(tmp, path)  # atomic and exclusive: two first runs at once agree on one id
        except FileExistsError:
            if not _MACHINE_ID_RE.match(path.read_text().strip()):
                os.replace(tmp, path)  # an unreadable id: replace it
        finally:
            tmp.unlink(missing_ok=True)
        found = path.read_text().strip()
        if _MACHINE_ID_RE.match(found):
            return found
    except OSError:
        pass
    return _host_fingerprint()


def _host_fingerprint() -> str:
    parts = [socket.gethostname()]
    for f, key in (("/etc/machine-id", None), ("/proc/cpuinfo", "model name")):
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        if key:
            text = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key)), "")
        parts.append(text.strip())
    return "host-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


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

    The record's ``hardware`` field defaults to ``hardware_id``, ``started_at`` to now and
    ``machine`` to :func:`machine_id`. Returns the file's path. Safe to call from several
    processes at once."""
    rec, path = _prepare(results_root, hardware_id, record, sweep)
    with locked(path):
        _append_line(path, rec)
    return path


def record_once(
    results_root: str | os.PathLike, hardware_id: str, record: dict[str, Any] | ResultRecord, sweep: str | None = None
) -> Path | None:
    """:func:`append_result`, unless the record's machine has already recorded its ``case_id`` in
    that file (checked under the file's lock, so two processes cannot both append a case); returns
    the path, or None when nothing was written."""
    rec, path = _prepare(results_root, hardware_id, record, sweep)
    with locked(path):
        if rec.case_id in completed_ids(path, machine=rec.machine):
            return None
        _append_line(path, rec)
    return path


def _prepare(results_root, hardware_id: str, record, sweep: str | None) -> tuple[ResultRecord, Path]:
    if isinstance(record, dict):
        record = {"hardware": hardware_id, "started_at": now_iso(), "machine": machine_id(), **record}
    rec = validate_record(record)
    return rec, results_path(results_root, hardware_id, sweep or rec.sweep)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of a results file (``<file>.lock``): every append, and every
    read-then-decide of the runner, happens under it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _append_line(path: Path, rec: ResultRecord) -> None:
    """Write one record as one line (caller holds :func:`locked`)."""
    line = (json.dumps(rec.model_dump(mode="json"), separators=(",", ":"), sort_keys=False) + "\n").encode()
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


class Claim:
    """This process runs one case (see :func:`claim_case`); ``release`` when it is recorded."""

    def __init__(self, handle, path: Path):
        self._handle = handle
        self.path = path

    def release(self, recorded: bool) -> None:
        """Let go of the case. ``recorded``: the case is now in the results file, so the claim file
        can go (whoever opens it later re-reads the file and finds the case recorded)."""
        if self._handle is None:
            return
        if recorded:
            try:
                self.path.unlink()
            except OSError:
                pass
        self._handle.close()  # closing releases the flock
        self._handle = None


def claim_path(path: str | os.PathLike, case_id: str, machine: str) -> Path:
    """``<hardware>/.claims/<sweep>.<case key>.<machine>.lock`` next to the results file."""
    path = Path(path)
    key = case_id if re.match(r"^[A-Za-z0-9._-]{1,64}$", case_id) else hashlib.sha256(case_id.encode()).hexdigest()[:32]
    return path.parent / ".claims" / f"{path.stem}.{key}.{machine}.lock"


def claim_case(path: str | os.PathLike, case_id: str, *, machine: str | None = None, wait: bool = False
               ) -> tuple[Literal["claimed", "recorded", "running"], Claim | None]:
    """Before running a case: ``("claimed", claim)`` when this process should run it (then record
    it and ``claim.release``), ``("recorded", None)`` when this machine's record of it is in the
    file (re-read under the file's lock: another process may have just written it),
    ``("running", None)`` when another process of this machine is running it now (only with
    ``wait=False``; with ``wait=True`` this blocks until that process lets go, then decides)."""
    path = Path(path)
    machine = machine or machine_id()
    cpath = claim_path(path, case_id, machine)
    cpath.parent.mkdir(parents=True, exist_ok=True)
    handle = open(cpath, "a")  # noqa: SIM115 - held open (locked) until Claim.release
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return "running", None
    except BaseException:
        handle.close()
        raise
    claim = Claim(handle, cpath)
    try:
        with locked(path):
            recorded = case_id in completed_ids(path, machine=machine)
    except BaseException:
        claim.release(recorded=False)
        raise
    if recorded:
        claim.release(recorded=True)
        return "recorded", None
    return "claimed", claim


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


def completed_ids(path: str | os.PathLike, machine: str | None = None) -> set[str]:
    """case_ids already recorded in a results file (any status: a crash is a result too); with
    ``machine``, only those that machine recorded (records without one are no machine's)."""
    return {r.get("case_id") for r in iter_results(path)
            if r.get("case_id") and (machine is None or (r.get("machine") or "") == machine)}


def all_result_files(results_root: str | os.PathLike, hardware_id: str | None = None) -> list[Path]:
    """Every ``*.jsonl`` under ``results_root`` (one hardware's folder when given)."""
    root = Path(results_root)
    if hardware_id:
        root = root / hardware_id
    return sorted(root.rglob("*.jsonl")) if root.is_dir() else []
