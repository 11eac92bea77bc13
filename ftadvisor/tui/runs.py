"""A training run started from the TUI: a background process and the JSON-lines log it writes.

The process gets its own session (process group), so it keeps running when the TUI moves to
another screen or exits ("leave it running"), and a cancel reaches every process it spawned
(accelerate launches workers): SIGINT first (the trainer stops and can save), then SIGTERM,
then SIGKILL, each after a grace period. Its stdout and stderr go to a file in the run
directory, never to a pipe, so a detached run is not killed by a closed pipe.

No textual here; the app polls :meth:`Run.poll` on a timer.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_NAME = "tui-output.log"
"""File in the run directory that receives the process's stdout and stderr."""


@dataclass
class Run:
    """One launched command, the directory it writes to and the JSONL log the TUI follows."""

    command: list[str]
    run_dir: Path
    log_path: Path
    """JSON-lines step log ({step, loss, tokens_per_s, eta_s, ...}); may appear only after start-up."""
    cwd: Path | None = None
    env: dict[str, str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    """Every log record read so far, in order."""
    proc: subprocess.Popen | None = None
    started_at: float | None = None
    ended_at: float | None = None
    cancelled: bool = False
    _offset: int = 0
    _partial: str = ""

    @property
    def display_command(self) -> str:
        return shlex.join(self.command)

    @property
    def output_path(self) -> Path:
        return self.run_dir / OUTPUT_NAME

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.output_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        finally:
            out.close()
        self.started_at = time.monotonic()

    # --- state -----------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is not None and self.ended_at is None:
            self.ended_at = time.monotonic()
        return rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    @property
    def status(self) -> str:
        """``not started``, ``running``, ``cancelled``, ``finished`` or ``failed (exit N)``."""
        if self.proc is None:
            return "not started"
        rc = self.returncode
        if rc is None:
            return "cancelling" if self.cancelled else "running"
        if self.cancelled:
            return "cancelled"
        return "finished" if rc == 0 else f"failed (exit {rc})"

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def series(self, key: str) -> list[float]:
        """The numeric values of ``key`` across the log, in order (records without it skipped)."""
        out = []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                out.append(float(v))
        return out

    # --- following the log ---------------------------------------------------------------------

    def poll(self) -> list[dict[str, Any]]:
        """Read the log lines written since the last call; returns the new records.

        Only complete lines are parsed (a line being written stays buffered); a line that is not
        a JSON object is skipped, so a stray print in the log cannot stop the monitor.
        """
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                new.append(obj)
        self.records.extend(new)
        return new

    def output_tail(self, n: int = 200) -> list[str]:
        """The last ``n`` lines the process printed."""
        try:
            with open(self.output_path, encoding="utf-8", errors="replace") as fh:
                # A progress bar redraws its line with carriage returns: keep what is on screen last.
                return [line.rstrip("\r\n").rsplit("\r", 1)[-1] for line in deque(fh, maxlen=n)]
        except FileNotFoundError:
            return []

    # --- stopping -------------------------------------------------------------------------------

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # the process leads its own group (start_new_session)
        except ProcessLookupError:
            pass

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _stop_stragglers(self, grace_s: float = 3.0) -> None:
        """Processes the run started that outlived it (a background child ignoring SIGINT, say)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._group_alive():
                return
            self._signal(sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(0.05)

    def cancel(self, grace_s: float = 10.0) -> int | None:
        """Stop the run and everything it started; returns the exit code (None if it would not die)."""
        if not self.running:
            return self.returncode
        self.cancelled = True
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            self._signal(sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.returncode is not None:
            self._stop_stragglers()
        self.poll()
        return self.returncode


def python_command(*args: str) -> list[str]:
    """``python -m ftadvisor.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "ftadvisor.cli", *args]
