"""Issue 12, "the run directory as a transaction": one run per directory (a lock), a trainer that
ends with its launcher, checkpoints that count only once complete, refused writes (full disk,
permissions) as one line, and a finished run that a resume leaves alone.

Training runs use the tiny local model of tests/test_launch.py (4 LoRA steps, a checkpoint every 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_launch import DATA, _launch, _plan, _steps, cli, config_dir, tiny_model  # noqa: F401 - fixtures

PLAN = """technique: lora
precision: fp32
seq_len: 64
micro_batch_size: 2
lora_r: 4
gradient_checkpointing: false
run:
  max_steps: 4
  learning_rate: 0.003
  save_steps: 2
"""

MARKER = "ftadvisor_complete.json"  # ftadvisor.train.engine.CHECKPOINT_COMPLETE


def module(*args, timeout: int = 240):
    """``python -m ftadvisor.launch ARGS``: the training process, as command.sh runs it."""
    return subprocess.run([sys.executable, "-m", "ftadvisor.launch", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout, check=False)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a failed command (other lines may be progress or library notes)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def alive(pid: int) -> bool:
    """Running (a zombie, which nobody may reap in a container, has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] not in "ZX"


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: field 4 of each stat)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2:].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def write_lock(run_dir: Path, **fields) -> None:
    (run_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "started": "earlier", **fields}))


def tree_digest(path: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model):  # noqa: F811 - the imported fixture
    """A finished 4-step run: complete checkpoint-2 and checkpoint-4, final/, result.json."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "run"
    _launch(tmp, PLAN, DATA / "chat.jsonl", tiny_model, out)
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    for step in (2, 4):
        assert (out / "checkpoints" / f"checkpoint-{step}" / MARKER).is_file()
    assert not (out / "run.lock").exists()  # released on exit
    return out


def copy_run(src: Path, dst: Path, *, unfinish: bool = False) -> Path:
    shutil.copytree(src, dst)
    if unfinish:  # as if it had been stopped after its last checkpoint
        (dst / "result.json").unlink()
        shutil.rmtree(dst / "final")
    return dst


# --------------------------------------------------------------------------------------------
# 1. the lock
# --------------------------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, config_dir):  # noqa: F811
    out = tmp_path / "run"
    args = ("--data", DATA / "chat.jsonl", "--model", config_dir, "--output", out, "--gpu", "cpu", "--dry-run")
    assert cli(*args).returncode == 0
    plan_mtime = (out / "plan.yaml").stat().st_mtime_ns
    holder = sleeper()
    try:
        write_lock(out, pid=holder.pid)
        for res in (cli(*args, "--overwrite"), cli("--output", out, "--resume", "--dry-run"), module(out, "--resume")):
            assert res.returncode == 2
            assert res.stderr.strip().count("\n") == 0, res.stderr  # one line
            assert res.stderr.startswith("error: --output: ") and f"in use by process {holder.pid}" in res.stderr
        assert (out / "plan.yaml").stat().st_mtime_ns == plan_mtime  # nothing rewritten
        assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, taken over with a note, and released at the end
    res = cli(*args, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert f"taking over the stale lock of process {holder.pid}" in res.stdout
    assert not (out / "run.lock").exists()
    # a live pid that started at another time is another process (the holder's pid was reused)
    write_lock(out, pid=os.getpid(), pid_start="1")
    res = cli(*args, "--overwrite")
    assert res.returncode == 0 and "taking over the stale lock" in res.stdout, res.stderr


# --------------------------------------------------------------------------------------------
# 2. the trainer ends with its launcher
# --------------------------------------------------------------------------------------------


def test_killing_the_launcher_ends_the_trainer(tmp_path, tiny_model):  # noqa: F811
    out = tmp_path / "run"
    plan = _plan(tmp_path, PLAN.replace("max_steps: 4", "max_steps: 100000").replace("  save_steps: 2\n", ""))
    proc = subprocess.Popen([sys.executable, "-m", "ftadvisor.cli", "launch", str(plan), "--data", str(DATA / "chat.jsonl"),
                             "--model", str(tiny_model), "--output", str(out), "--gpu", "cpu",
                             "--set", f"results_root={tmp_path / 'results'}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer = None
    started: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            log = out / "train_log.jsonl"
            if log.is_file() and _steps(log):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the launch ended early"
        started = children(proc.pid)  # for the clean-up, whatever happens below
        lock = json.loads((out / "run.lock").read_text())
        trainer = lock["child"]
        assert lock["pid"] == proc.pid and trainer != proc.pid and alive(trainer)
        # its own process group: a Ctrl-C at the terminal reaches the launcher, which decides
        assert os.getpgid(trainer) == trainer != os.getpgid(proc.pid)
        # while it trains, a resume into the same directory is refused
        res = cli("--output", out, "--resume")
        assert res.returncode == 2 and f"in use by process {proc.pid}" in res.stderr, res.stderr
        proc.send_signal(signal.SIGKILL)  # the launcher only: no handler, no clean-up of its own
        proc.wait()
        end = time.time() + 10
        while alive(trainer) and time.time() < end:
            time.sleep(0.1)
        assert not alive(trainer), "the trainer outlived its launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in {*started, *([trainer] if trainer else [])}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # both are gone: the lock they left is stale, and a new launch would take it over
    from ftadvisor.launch import RunLock

    RunLock(out).check()


# --------------------------------------------------------------------------------------------
# 3. only complete checkpoints count
# --------------------------------------------------------------------------------------------


def test_resume_skips_an_incomplete_checkpoint(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run", unfinish=True)
    # a save cut off part way (the full disk: no trainer_state.json, no marker)
    cut = out / "checkpoints" / "checkpoint-4"
    (cut / MARKER).unlink()
    (cut / "trainer_state.json").unlink()
    n_before = len(_steps(out / "train_log.jsonl"))
    res = module(out, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipping checkpoint-4" in res.stderr and "resuming from checkpoint-2" in res.stderr
    assert [e["step"] for e in _steps(out / "train_log.jsonl")[n_before:]] == [3, 4]
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    assert (cut / MARKER).is_file() and (cut / "trainer_state.json").is_file()  # saved again, whole


# --------------------------------------------------------------------------------------------
# 4. refused writes: a full disk, a read-only directory
# --------------------------------------------------------------------------------------------

# torch.save raising ENOSPC inside checkpoint-4 (after the adapter weights of that checkpoint are
# written), in the training process only (ftadvisor launch sets FTADVISOR_SUPERVISOR_PID for it)
ENOSPC_AT_CHECKPOINT_4 = """
import errno, os
if os.environ.get("FTADVISOR_SUPERVISOR_PID"):
    import torch
    _save = torch.save
    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return _save(obj, f, *args, **kwargs)
    torch.save = save
"""


def test_disk_full_at_a_checkpoint_is_one_line_and_resume_still_works(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run", unfinish=True)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(ENOSPC_AT_CHECKPOINT_4)
    res = cli("--output", out, "--resume", env={"PYTHONPATH": str(inject), "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 2, res.stderr[-3000:]
    line = one_error_line(res.stderr)
    assert "checkpoint-4" in line and "no space left on the device" in line and "--resume" in line
    assert not (out / "checkpoints" / "checkpoint-4").exists()  # the partial save is gone, not counted
    assert not (out / "run.lock").exists() and not (out / "result.json").exists()
    res = module(out, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from checkpoint-2" in res.stderr
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    assert (out / "checkpoints" / "checkpoint-4" / MARKER).is_file()


def _as_unprivileged(cmd: list[str], probe_dir: Path) -> list[str]:
    """``cmd`` run so that file permissions apply: as is for a normal user; as root (which ignores
    them) without the capabilities that let it, where setpriv can drop them; else skip."""
    if os.geteuid() != 0:
        return cmd
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, which ignores file permissions, and no setpriv to drop that")
    probe = subprocess.run([*drop, "test", "-w", str(probe_dir)], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("running as root, which ignores file permissions, and they could not be dropped")
    return [*drop, *cmd]


def test_read_only_run_dir_is_one_line(tmp_path, config_dir):  # noqa: F811
    out = tmp_path / "run"
    args = ["--data", DATA / "chat.jsonl", "--model", config_dir, "--gpu", "cpu"]
    # an --output through a file: refused at the first write, one line naming the path
    (tmp_path / "a-file").write_text("")
    res = cli(*args, "--output", tmp_path / "a-file" / "run", "--dry-run")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith(f"error: {tmp_path / 'a-file' / 'run'}: ") and "not a directory" in res.stderr
    # a run directory without write permission (chmod 0o500)
    assert cli(*args, "--output", out, "--dry-run").returncode == 0
    out.chmod(0o500)
    try:
        for cmd in ([sys.executable, "-m", "ftadvisor.launch", str(out)],
                    [sys.executable, "-m", "ftadvisor.cli", "launch", "--output", str(out), "--resume"]):
            res = subprocess.run(_as_unprivileged(cmd, out), capture_output=True, text=True, cwd=ROOT, timeout=120,
                                 check=False)
            assert res.returncode == 2, res.stderr
            assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, res.stderr
            assert res.stderr.startswith(f"error: {out}") and "permission denied" in res.stderr
    finally:
        out.chmod(0o755)
    assert not (out / "run.lock").exists()


# --------------------------------------------------------------------------------------------
# 5. a finished run is left alone
# --------------------------------------------------------------------------------------------


def test_resuming_a_finished_run_does_nothing(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    final = tree_digest(out / "final")
    result = (out / "result.json").read_text()
    log = (out / "train_log.jsonl").read_text()
    res = cli("--output", out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "train_log.jsonl").read_text() == log  # no step trained
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert tree_digest(out / "final") == final  # not rewritten (same bytes, same mtimes)
    assert (out / "result.json").read_text() == result
    assert "already finished (4 steps" in res.stderr and "nothing to resume" in res.stderr
