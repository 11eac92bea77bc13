"""Run a sweep: every case in its own subprocess, with a timeout, results appended as they finish.

    ftadvisor calibrate cpu-tiny                         # the CLI (ftadvisor/cli_calibrate.py)
    ftadvisor.calibration.run_sweep("cpu-tiny")          # the same from Python

The parent process (:func:`run_sweep`) stays light (no torch): it expands the sweep, skips the
case_ids this machine already recorded in ``calibration/results/<hardware>/<sweep>.jsonl``
(resume; records of other machines, such as the shipped ones, do not count), and before each
case claims it and re-reads the file under its lock (``store.claim_case``): a case another
process recorded meanwhile is skipped, one it is running now is left for later and then waited
for, so two sweeps into one file record each case once. It makes the prediction
(``ftadvisor.estimate``) BEFORE each run, starts

    python -m ftadvisor.calibration.runner --case CASE.json --out RESULT.json

(or, for ``num_processes > 1``, the same module under ``accelerate launch``), waits up to the
case's ``timeout_s``, and appends one record whatever happened:

- ``ok``: the child wrote its measurement;
- ``oom``: the child caught an out-of-memory error, or died of SIGKILL that the runner did not
  send (on Linux, the kernel's OOM killer);
- ``crash``: any other exception (its last lines are kept) or fatal signal (SIGSEGV, SIGABRT ...);
- ``timeout``: the runner killed the child's process group at ``timeout_s``;
- ``skipped``: the case cannot be measured here (e.g. two GPUs on a one-GPU box).

The append itself is ``store.record_once``: one line, under the file's lock, and only if this
machine has not recorded the case yet.

Children die with the parent (``PR_SET_PDEATHSIG``), and only the parent writes results, so a
killed sweep leaves no half-recorded case: run it again and it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ftadvisor.errors import FtAdvisorError

EXIT_OK = 0
EXIT_FAILED = 3  # the child wrote a failure record (oom / crash / skipped)


# --- hardware --------------------------------------------------------------------------------


def detect_hardware() -> str:
    """The hardware profile of this machine: the first GPU nvidia-smi reports, matched against the
    profiles (ftadvisor/detect.py), else ``cpu``; FtAdvisorError for a GPU no profile matches."""
    from ftadvisor.detect import detect

    found = detect(("nvidia-smi",))
    if not found.gpus:
        return "cpu"
    return match_hardware(found.gpus[0].name, found.gpus[0].memory_bytes / 2**30)


def match_hardware(device_name: str, memory_gib: float) -> str:
    """The profile id for an nvidia-smi device name (the shared matcher in ftadvisor/profiles.py);
    FtAdvisorError when nothing matches."""
    from ftadvisor.profiles import hardware_profiles, match_device

    hw = match_device(device_name, memory_gib * 2**30)
    if hw is None:
        raise FtAdvisorError("hardware", f"no profile matches the GPU {device_name!r} ({memory_gib:.0f} GiB); "
                                         "name one in the sweep or with --hardware", sorted(hardware_profiles()))
    return hw.id


# --- parent side -----------------------------------------------------------------------------


@dataclass
class CaseOutcome:
    case_id: str
    label: str
    technique: str
    status: str
    wall_s: float
    predicted_bytes: int | None = None
    measured_bytes: int | None = None
    error: str | None = None

    @property
    def error_pct(self) -> float | None:
        if self.predicted_bytes is None or not self.measured_bytes:
            return None
        return 100.0 * (self.predicted_bytes - self.measured_bytes) / self.measured_bytes


@dataclass
class SweepSummary:
    sweep: str
    hardware: str
    results_path: Path
    total: int
    skipped_done: int
    """Cases this machine had recorded before the sweep started."""
    outcomes: list[CaseOutcome] = field(default_factory=list)
    recorded_meanwhile: int = 0
    """Cases another process (of this machine) recorded while this sweep ran: not run again."""
    machine: str = ""
    """The machine id the records carry (``store.machine_id``)."""


def predict(case, hardware_id: str) -> dict[str, Any]:
    """``ftadvisor.estimate`` for the model as measured (the traced full depth for ``trace``)."""
    from ftadvisor.estimator import estimate

    layers = None if case.backend == "trace" else case.num_layers
    model = case.config_at(layers) if layers else case.config
    # The analytic model being calibrated: no corrections applied (they are what a fit produces).
    est = estimate(model, hardware_id, plan=dict(case.plan), with_speed=True, calibrated=False)
    return est.model_dump(mode="json")


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the child when the parent dies, and start a new process group."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_command(case, case_file: Path, out_file: Path, python: str, backend: str) -> list[str]:
    args = ["-m", "ftadvisor.calibration.runner", "--case", str(case_file), "--out", str(out_file)]
    if case.num_processes <= 1:
        return [python, *args]
    from ftadvisor.calibration.sharded import is_direct, launch_command

    if is_direct(case, backend):  # ZeRO / FSDP2 on CPU: torchrun + the direct path, no accelerate
        return [*launch_command(case, python, _free_port()), *args[2:]]
    # accelerate launch, torchrun-style (one process per rank); on CPU it uses gloo.
    launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(case.num_processes),
              "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
              "--dynamo_backend", "no", "--multi_gpu"]
    return [*launch, *args]


def _skip_reason(case, backend: str) -> str | None:
    """Why a case cannot run on this machine (None if it can)."""
    if case.num_processes > 1:
        sharding = case.plan.get("sharding")
        # FSDP on CPU: accelerate would run it as DDP (it enables FSDP only for GPU-class types, not
        # MULTI_CPU: accelerate/state.py AcceleratorState.__init__), so CPU sharded cases take the
        # direct path (ftadvisor/calibration/sharded.py: torchrun, fully_shard / deepspeed over gloo).
        from ftadvisor.calibration.sharded import is_direct

        if is_direct(case, backend) and case.plan.get("technique") != "full":
            return f"{sharding} on CPU runs through the direct path, which trains technique 'full' only"
        if sharding in ("zero1", "zero2", "zero3"):
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                return f"{sharding} needs the deepspeed package, which is not installed"
        if backend == "cuda":
            n = _gpu_count()
            if n < case.num_processes:
                return f"needs {case.num_processes} GPUs, {n} visible"
    return None


def _gpu_count() -> int:
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _run_child(case, backend: str, python: str, workdir: Path, env: dict, isolation: str = "subprocess"
               ) -> tuple[str, dict | None, str | None, float]:
    """Run one case in its own process(es); returns (status, measurement, error, wall seconds).

    ``isolation``: ``subprocess`` starts ``python -m ftadvisor.calibration.runner`` (or
    ``accelerate launch`` of it); ``fork`` forks the case from a fork server that imported the
    training stack once (:func:`_fork_context`): the same isolation (own process, own process
    group, killed at the timeout, dies with the runner) without paying the imports per case. Cases
    with several processes or the cuda backend always use ``subprocess``."""
    case_file = workdir / f"{case.case_id}.case.json"
    out_file = workdir / f"{case.case_id}.out.json"
    log_file = workdir / f"{case.case_id}.log"
    case_file.write_text(case.model_copy(update={"backend": backend}).model_dump_json())
    use_fork = isolation == "fork" and case.num_processes <= 1 and backend != "cuda"
    t0 = time.monotonic()
    timed_out = False
    if use_fork:
        proc = _fork_context().Process(target=_forked_entry, args=(str(case_file), str(out_file), str(log_file), env),
                                       daemon=False)
        proc.start()
        proc.join(case.timeout_s)
        if proc.exitcode is None:
            timed_out = True
            _kill_pid_group(proc.pid)
            proc.join()
        rc = proc.exitcode
    else:
        cmd = child_command(case, case_file, out_file, python, backend)
        with open(log_file, "wb") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_pdeathsig,
                                     cwd=str(Path(__file__).resolve().parents[2]))
            try:
                rc = popen.wait(timeout=case.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_pid_group(popen.pid)
                rc = popen.wait()
    wall = time.monotonic() - t0
    return _classify(case, out_file, log_file, rc, timed_out, wall)


def _classify(case, out_file: Path, log_file: Path, rc: int | None, timed_out: bool, wall: float):
    tail = _tail(log_file)
    if timed_out:
        return "timeout", None, f"no result within {case.timeout_s:.0f} s\n{tail[-1500:]}", wall
    results = _collect(out_file, case.num_processes)
    if results is not None and results.get("status"):
        status = results.pop("status")
        err = results.pop("error", None)
        return status, results.get("measurement"), err, wall
    if rc is not None and rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        if -rc == signal.SIGKILL:
            return "oom", None, f"killed by SIGKILL, not sent by the runner (likely the kernel OOM killer)\n{tail}", wall
        return "crash", None, f"killed by {sig}\n{tail}", wall
    if _looks_oom(tail):
        return "oom", None, tail, wall
    return "crash", None, f"exit code {rc} without a result\n{tail}", wall


# Modules the fork server imports once, so forked cases start warm.
FORK_PRELOAD = ["torch", "transformers", "peft", "accelerate", "datasets", "trl",
                "ftadvisor.train.engine", "ftadvisor.train.techniques", "ftadvisor.calibration.measure"]
_FORK_CTX = None


def _fork_context():
    """A ``forkserver`` multiprocessing context whose server preloads :data:`FORK_PRELOAD`.

    The server is a fresh single-threaded process that only imports (no torch op runs, no CUDA
    init), so forking it is safe; it exits when the runner does."""
    global _FORK_CTX
    if _FORK_CTX is None:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(FORK_PRELOAD)
        _FORK_CTX = ctx
    return _FORK_CTX


def _forked_entry(case_file: str, out_file: str, log_file: str, env: dict) -> None:  # pragma: no cover - child
    """A forked case: own process group, dies with its parent, output to the log, then the child main."""
    _pdeathsig()
    os.environ.update(env)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = _child_main(["--case", case_file, "--out", out_file])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)  # multiprocessing runs its exit handlers, then leaves with this code


def _kill_pid_group(pid: int) -> None:
    """SIGKILL the child's process group (it called setsid, so the group is the case's)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode(errors="replace")


def _looks_oom(text: str) -> bool:
    t = text.lower()
    return any(s in t for s in ("out of memory", "outofmemoryerror", "can't allocate memory", "memoryerror",
                                "cannot allocate memory"))


def _collect(out_file: Path, num_processes: int) -> dict | None:
    """The child's result; for several ranks, rank 0's merged with every rank's memory."""
    if num_processes <= 1:
        if not out_file.is_file():
            return None
        return json.loads(out_file.read_text())
    ranks = []
    for r in range(num_processes):
        f = out_file.with_name(out_file.name + f".rank{r}")
        if not f.is_file():
            return None if not ranks else _merge_ranks(ranks, complete=False)
        ranks.append(json.loads(f.read_text()))
    return _merge_ranks(ranks, complete=True)


def _merge_ranks(ranks: list[dict], complete: bool) -> dict:
    bad = [r for r in ranks if r.get("status") != "ok"]
    if bad:
        return bad[0]
    meas = [r["measurement"] for r in ranks]
    merged = dict(meas[0])
    merged["ranks"] = [{k: m.get(k) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "phases_bytes",
                                                "peak_split_bytes", "device_total_bytes", "step_time_s")} for m in meas]
    merged["peak_allocated_bytes"] = max(m.get("peak_allocated_bytes") or 0 for m in meas)
    if all(m.get("peak_reserved_bytes") for m in meas):
        merged["peak_reserved_bytes"] = max(m["peak_reserved_bytes"] for m in meas)
    merged["per_rank_note"] = "peak_allocated_bytes is the largest rank's; 'ranks' lists every rank"
    out = {"status": "ok" if complete else "crash", "measurement": merged}
    if not complete:
        out["error"] = "not every rank wrote a result"
    return out


def _outcome(case, status, wall, prediction, measurement, error) -> CaseOutcome:
    return CaseOutcome(
        case_id=case.case_id,
        label=case.label,
        technique=case.plan["technique"],
        status=status,
        wall_s=wall,
        predicted_bytes=(prediction or {}).get("memory", {}).get("peak_allocated_bytes"),
        measured_bytes=(measurement or {}).get("peak_allocated_bytes"),
        error=error,
    )


def _select_cases(sw: Any, backend: str | None, only: list[str] | None) -> list:
    """The sweep's cases, kept to ``only`` where given, with ``auto`` backends resolved for this machine."""
    from ftadvisor.calibration.measure import resolve_backend
    from ftadvisor.calibration.sweep import expand, with_backend

    cases = expand(sw, source=sw.name, backend=backend)
    if only:
        want = {o.strip() for o in only}
        cases = [c for c in cases if c.plan["technique"] in want or c.case_id in want or c.label in want]
        if not cases:
            raise FtAdvisorError("only", f"no case matches {sorted(want)}")
    # 'auto' becomes the backend this machine has, so the id names what was really measured.
    return [with_backend(c, resolve_backend(c.backend)) if c.backend == "auto" else c for c in cases]


def _sweep_hardware(hw: str, resolved: dict[str, str]) -> str:
    """The hardware profile id the results are filed under (``auto``: this machine's)."""
    from ftadvisor.profiles import resolve_hardware

    if hw == "auto":
        hw = "cpu" if all(b != "cuda" for b in resolved.values()) else detect_hardware()
    return resolve_hardware(hw).id


def _child_environment(jobs: int) -> dict[str, str]:
    """The environment of the case processes: this one's, with quiet tokenizers and unbuffered output."""
    child_env = dict(os.environ)
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if jobs > 1 and "OMP_NUM_THREADS" not in child_env:
        child_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return child_env


@dataclass
class _SweepRun:
    """What the cases of one running sweep share: where they are recorded, how they run, the summary."""

    sw: Any
    hw: str
    resolved: dict[str, str]
    root: Path
    path: Path
    machine: str
    summary: SweepSummary
    env_info: dict[str, Any]
    python: str
    child_env: dict[str, str]
    isolation: str
    bar: Any
    workdir: Path
    tlock: Any
    on_outcome: Callable[[CaseOutcome], None] | None = None


def _record_case(run: _SweepRun, case, status, measurement, error, wall, prediction, started) -> bool:
    """Append one case's record (once per machine) and count it in the summary and the progress bar."""
    from ftadvisor.calibration import store

    rec = {
        "case_id": case.case_id,
        "sweep": run.sw.name,
        "label": case.label,
        "status": status,
        "source": "calibrate",
        "model": {"ref": case.model_ref, "config": case.config, "num_layers": case.num_layers},
        "plan": case.plan,
        "hardware": run.hw,
        "backend": run.resolved[case.case_id],
        "prediction": prediction,
        "measurement": measurement,
        "environment": run.env_info,
        "machine": run.machine,
        "error": error[-4000:] if error else None,
        "started_at": started,
        "wall_s": round(wall, 3),
    }
    written = store.record_once(run.root, run.hw, rec, sweep=run.sw.name) is not None
    with run.tlock:
        if not written:  # another process recorded it first (a backstop: the claim prevents this)
            run.summary.recorded_meanwhile += 1
            run.bar.elsewhere(case)
            return True
        oc = _outcome(case, status, wall, prediction, measurement, error)
        run.summary.outcomes.append(oc)
        run.bar.advance(oc)
    if run.on_outcome:
        run.on_outcome(oc)
    return True


def _run_case(run: _SweepRun, case, wait: bool) -> bool:
    """Claim, run and record one case; False when another process is running it (try later)."""
    from ftadvisor.calibration import store

    state, claim = store.claim_case(run.path, case.case_id, machine=run.machine, wait=wait)
    if state == "running":
        return False
    if state == "recorded":  # another process of this machine recorded it since the sweep started
        with run.tlock:
            run.summary.recorded_meanwhile += 1
            run.bar.elsewhere(case)
        return True
    recorded = False
    try:
        bk = run.resolved[case.case_id]
        with run.tlock:
            started = store.now_iso()
            prediction = _safe_predict(case, run.hw)
            reason = _skip_reason(case, bk)
            if not reason:
                run.bar.start(case)
        if reason:
            recorded = _record_case(run, case, "skipped", None, reason, 0.0, prediction, started)
        else:
            status, meas, err, wall = _run_child(case, bk, run.python, run.workdir, run.child_env, run.isolation)
            recorded = _record_case(run, case, status, meas, err, wall, prediction, started)
    finally:
        claim.release(recorded=recorded)
    return True


def _work_through_cases(run: _SweepRun, pending: list, deferred: list) -> None:
    """Take cases until none is left: pending ones first, then (waiting for them) the deferred ones."""
    while True:
        with run.tlock:
            if pending:
                case, wait = pending.pop(0), False
            elif deferred:
                case, wait = deferred.pop(0), True
            else:
                return
        if not _run_case(run, case, wait):
            with run.tlock:
                deferred.append(case)


def _run_cases(run: _SweepRun, todo: list, jobs: int) -> None:
    """Run the cases on ``jobs`` threads, then close the progress bar and remove the work directory."""
    import threading

    pending = list(todo)
    deferred: list = []  # cases another process was running: waited for once the rest are done
    try:
        if jobs <= 1:
            _work_through_cases(run, pending, deferred)
        else:
            threads = [threading.Thread(target=_work_through_cases, args=(run, pending, deferred), daemon=True)
                       for _ in range(jobs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        run.bar.close()
        import shutil

        shutil.rmtree(run.workdir, ignore_errors=True)


def run_sweep(
    sweep: Any,
    *,
    hardware: str | None = None,
    backend: str | None = None,
    results_root: str | os.PathLike | None = None,
    only: list[str] | None = None,
    jobs: int = 1,
    progress: bool = True,
    python: str | None = None,
    on_outcome: Callable[[CaseOutcome], None] | None = None,
    console=None,
    isolation: str = "subprocess",
) -> SweepSummary:
    """Run every case of ``sweep`` (a name, a path or a :class:`Sweep`) that this machine has not
    recorded yet; other processes may run the same sweep into the same file at the same time.

    ``hardware`` / ``backend`` override the sweep's; ``only`` keeps cases whose technique or
    case_id is listed; ``jobs`` runs that many cases at once (memory is measured per process, so
    concurrent CPU cases do not disturb each other's peaks, only their timings); ``isolation`` is
    ``subprocess`` (default) or ``fork`` (see :func:`_run_child`)."""
    from ftadvisor.calibration import store
    from ftadvisor.calibration.measure import environment
    from ftadvisor.calibration.sweep import Sweep, load_sweep

    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    if isolation not in ("subprocess", "fork"):
        raise FtAdvisorError("isolation", f"unknown {isolation!r}", ["subprocess", "fork"])
    if backend is not None and backend not in ("auto", "cpu", "cuda", "trace"):
        raise FtAdvisorError("backend", f"unknown {backend!r}", ["auto", "cpu", "cuda", "trace"])
    cases = _select_cases(sw, backend, only)
    resolved = {c.case_id: c.backend for c in cases}
    hw = _sweep_hardware(hardware or sw.hardware, resolved)
    root = Path(results_root) if results_root is not None else store.results_root()
    path = store.results_path(root, hw, sw.name)
    machine = store.machine_id()
    # A first look (cheap); each case is checked again, under the file's lock, right before it runs.
    done = store.completed_ids(path, machine=machine)
    todo = [c for c in cases if c.case_id not in done]
    summary = SweepSummary(sweep=sw.name, hardware=hw, results_path=path, total=len(cases), skipped_done=len(cases) - len(todo),
                           machine=machine)
    if not todo:
        return summary
    env_info = environment()
    python = python or sys.executable
    child_env = _child_environment(jobs)
    bar = _Progress(len(todo), enabled=progress, console=console)
    workdir = Path(tempfile.mkdtemp(prefix="ftadvisor-sweep-"))
    import threading

    tlock = threading.Lock()  # the runner's own threads (jobs > 1): summary, progress, predictions
    run = _SweepRun(sw=sw, hw=hw, resolved=resolved, root=root, path=path, machine=machine, summary=summary,
                    env_info=env_info, python=python, child_env=child_env, isolation=isolation, bar=bar,
                    workdir=workdir, tlock=tlock, on_outcome=on_outcome)
    _run_cases(run, todo, jobs)
    return summary


def _safe_predict(case, hardware_id: str) -> dict[str, Any]:
    try:
        return predict(case, hardware_id)
    except FtAdvisorError as err:
        return {"error": str(err)}


class _Progress:
    """A rich progress bar (case, technique, elapsed, ETA) plus one line per finished case."""

    def __init__(self, total: int, enabled: bool, console=None):
        self.enabled = enabled
        self.progress = None
        self.console = console
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("calibrating", total=total)
        self.progress.start()

    def start(self, case) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{case.plan['technique']:<10} {case.label[:48]}")

    def elsewhere(self, case) -> None:
        """A case another process recorded meanwhile: counted, not run."""
        if self.progress is None:
            return
        self.progress.console.print(f"[dim]{'recorded':<8} {case.plan['technique']:<10} by another run meanwhile  "
                                    f"{case.label[:40]}[/]")
        self.progress.advance(self.task)

    def advance(self, oc: CaseOutcome) -> None:
        if self.progress is None:
            return
        colour = {"ok": "green", "skipped": "yellow"}.get(oc.status, "red")
        err = f"{oc.error_pct:+6.1f}%" if oc.error_pct is not None else "      "
        meas = f"{oc.measured_bytes / 2**20:9.1f} MiB" if oc.measured_bytes else " " * 13
        pred = f"{oc.predicted_bytes / 2**20:9.1f} MiB" if oc.predicted_bytes else " " * 13
        self.progress.console.print(
            f"[{colour}]{oc.status:<8}[/] {oc.technique:<10} measured {meas}  predicted {pred} {err}  "
            f"{oc.wall_s:5.1f}s  {oc.label[:40]}"
        )
        self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# --- child side --------------------------------------------------------------------------------


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of one case's process (or of one rank under accelerate launch)."""
    ap = argparse.ArgumentParser(prog="python -m ftadvisor.calibration.runner")
    ap.add_argument("--case", required=True, help="JSON file of one Case")
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    a = ap.parse_args(argv)
    from ftadvisor.calibration.sweep import Case

    case = Case.model_validate_json(Path(a.case).read_text())
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    rank = os.environ.get("RANK")
    out = Path(a.out)
    if case.num_processes > 1 and rank is not None:
        out = out.with_name(out.name + f".rank{rank}")
    try:
        from ftadvisor.calibration.measure import Unsupported, measure_case
        from ftadvisor.calibration.sharded import is_direct, measure_sharded

        try:
            # ZeRO / FSDP2 ranks on CPU (started by torchrun, see child_command): the direct path
            meas = measure_sharded(case) if is_direct(case, case.backend) else measure_case(case)
            if rank is not None:
                meas["rank"] = int(rank)
            res = {"status": "ok", "measurement": meas}
        except Unsupported as err:
            res = {"status": "skipped", "error": str(err)}
    except BaseException as err:  # noqa: BLE001 - every failure becomes a recorded outcome
        text = "".join(traceback.format_exception(err))[-4000:]
        res = {"status": "oom" if _is_oom(err) else "crash", "error": text}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, default=str))
    os.replace(tmp, out)
    return EXIT_OK if res["status"] == "ok" else EXIT_FAILED


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    name = type(err).__name__
    if name in ("OutOfMemoryError", "OutOfMemory"):
        return True
    return _looks_oom(str(err))


if __name__ == "__main__":
    sys.exit(_child_main())
