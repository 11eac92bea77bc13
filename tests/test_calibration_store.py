"""Calibration runs nothing twice (issue 12, item 5), and says the same thing in fit and report.

- Two sweeps running into one results file record every case once: each case is claimed and the
  file re-read under its lock right before it runs, and appended only if still unrecorded.
- Results carry the id of the machine that measured them; "already recorded" means recorded by
  this machine, so the shipped results (another machine's) do not stop a fresh clone measuring.
- ``fit`` prints the figure ``report`` shows: after correction, leave-one-out where a technique
  has fewer than 3 samples (in-sample there is 0% by construction), in-sample otherwise.

The sweeps here replace the measuring child (``runner._run_child``) by a short sleep that returns
a fixed measurement: everything else (expansion, prediction, claims, locks, records, CLI) is the
real runner, and no torch is imported.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, append_synthetic

TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}
FAKE_PEAK = 3 * 2**20


def _sweep(tmp_path: Path, name: str = "race", techniques=("lora", "full", "adapter"), batches=(1, 2)) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "model": TINY, "backend": "cpu", "hardware": "cpu", "steps": 1,
                                 "warmup": 1, "defaults": {"seq_len": 32},
                                 "grid": {"technique": list(techniques), "micro_batch_size": list(batches)}}))
    return p


def _case_ids(sweep) -> list[str]:
    from ftadvisor.calibration.sweep import expand, load_sweep

    return [c.case_id for c in expand(load_sweep(sweep))]


@pytest.fixture
def fake_child(monkeypatch):
    """Cases 'run' in 50 ms and measure FAKE_PEAK; returns the case_ids run, in order."""
    from ftadvisor.calibration import runner

    ran: list[str] = []

    def child(case, backend, python, workdir, env, isolation="subprocess"):
        ran.append(case.case_id)
        time.sleep(0.05)
        return "ok", {"peak_allocated_bytes": FAKE_PEAK, "backend": backend}, None, 0.05

    monkeypatch.setattr(runner, "_run_child", child)
    return ran


@pytest.fixture(autouse=True)
def this_machine(monkeypatch):
    monkeypatch.setenv("FTADVISOR_MACHINE_ID", "this-machine")
    return "this-machine"


def _run(sweep, root, **kw):
    from ftadvisor.calibration.runner import run_sweep

    return run_sweep(str(sweep), results_root=root, progress=False, **kw)


# --- 1. two sweeps, one file -----------------------------------------------------------------------


RACER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from ftadvisor.calibration import runner

    def child(case, backend, python, workdir, env, isolation="subprocess"):
        time.sleep(0.4)
        return "ok", {{"peak_allocated_bytes": {peak}, "backend": backend}}, None, 0.4

    runner._run_child = child
    from ftadvisor.cli_calibrate import app
    import ftadvisor.estimator  # imported before the start line, so both start together

    me, other = sys.argv[1], sys.argv[2]
    open(me, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(other) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        app([sys.argv[3], "--results", sys.argv[4]], standalone_mode=False)
    except SystemExit as e:
        sys.exit(e.code)
""")


def test_two_concurrent_sweeps_record_each_case_exactly_once(tmp_path):
    """Before: each sweep read the recorded set once at its start, so two started together both
    ran and recorded all six cases (12 lines)."""
    sweep = _sweep(tmp_path)
    res = tmp_path / "res"
    code = RACER.format(root=str(ROOT), peak=FAKE_PEAK)
    env = {**__import__("os").environ, "FTADVISOR_MACHINE_ID": "this-machine"}
    a, b = tmp_path / "ready-a", tmp_path / "ready-b"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(me), str(other), str(sweep), str(res)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for me, other in ((a, b), (b, a))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = (res / "cpu" / "race.jsonl").read_text().splitlines()
    ids = [json.loads(x)["case_id"] for x in lines]
    assert sorted(ids) == sorted(_case_ids(sweep)), f"{len(ids)} records for 6 cases"
    # Between them the two sweeps ran the six cases once; the rest each left to the other.
    ran = [int(re.search(r": (\d+) run ", o[0]).group(1)) for o in outs]
    assert sum(ran) == 6, [o[0] for o in outs]
    assert all(json.loads(x)["machine"] == "this-machine" for x in lines)
    assert not list((res / "cpu" / ".claims").glob("*.lock"))  # claims of recorded cases are removed


def test_a_case_recorded_meanwhile_is_not_run_again(tmp_path, fake_child):
    """The recorded set is re-read before each case: here another process 'records' the second
    case while the first runs."""
    from ftadvisor.calibration import store

    sweep = _sweep(tmp_path, techniques=("lora",))
    first, second = _case_ids(sweep)
    res = tmp_path / "res"

    def meanwhile(outcome):
        if outcome.case_id == first:
            store.append_result(res, "cpu", {"case_id": second, "sweep": "race", "status": "ok",
                                             "plan": {"technique": "lora"}})

    summary = _run(sweep, res, on_outcome=meanwhile)
    assert fake_child == [first] and summary.recorded_meanwhile == 1
    assert sorted(store.completed_ids(summary.results_path)) == sorted([first, second])
    assert len(store.load_results(summary.results_path)) == 2


def test_a_case_another_process_is_running_is_waited_for_not_duplicated(tmp_path, fake_child):
    """A claimed case is left for last, then waited for; recorded by its holder, it is not run."""
    import threading

    from ftadvisor.calibration import store

    sweep = _sweep(tmp_path, techniques=("lora",))
    first, second = _case_ids(sweep)
    res = tmp_path / "res"
    path = store.results_path(res, "cpu", "race")
    state, claim = store.claim_case(path, first)  # "another process" is running the first case
    assert state == "claimed"
    assert store.claim_case(path, first)[0] == "running"

    def finish_elsewhere():
        time.sleep(0.5)
        store.record_once(res, "cpu", {"case_id": first, "sweep": "race", "status": "ok", "plan": {"technique": "lora"}})
        claim.release(recorded=True)

    t = threading.Thread(target=finish_elsewhere)
    t.start()
    summary = _run(sweep, res)
    t.join()
    assert fake_child == [second] and summary.recorded_meanwhile == 1
    assert sorted(r["case_id"] for r in store.load_results(path)) == sorted([first, second])


def test_record_once_appends_a_case_once_per_machine(tmp_path, monkeypatch):
    from ftadvisor.calibration import store

    rec = {"case_id": "c1", "sweep": "s", "status": "ok", "plan": {"technique": "lora"}}
    assert store.record_once(tmp_path, "cpu", rec) is not None
    assert store.record_once(tmp_path, "cpu", rec) is None
    monkeypatch.setenv("FTADVISOR_MACHINE_ID", "another-machine")
    assert store.record_once(tmp_path, "cpu", rec) is not None
    recs = store.load_results(tmp_path / "cpu" / "s.jsonl")
    assert [r["machine"] for r in recs] == ["this-machine", "another-machine"]


# --- 2. shipped results are another machine's ----------------------------------------------------------


def test_fresh_clone_measures_though_shipped_results_exist(tmp_path, fake_child):
    """The shipped cpu-tiny results (no machine id: measured elsewhere) are in the results folder;
    this machine still runs its cases, records them beside the shipped ones, and fit reads both.
    Before: every shipped case counted as done and the sweep ran nothing."""
    from ftadvisor.calibration import store
    from ftadvisor.calibration.fit import load_frame

    shipped = ROOT / "calibration" / "results" / "cpu" / "cpu-tiny.jsonl"
    res = tmp_path / "results"
    (res / "cpu").mkdir(parents=True)
    shutil.copy(shipped, res / "cpu" / "cpu-tiny.jsonl")
    ship = store.load_results(res / "cpu" / "cpu-tiny.jsonl")
    lora = next(r for r in ship if r["plan"]["technique"] == "lora")

    summary = _run("cpu-tiny", res, only=[lora["case_id"]])
    assert fake_child == [lora["case_id"]] and summary.skipped_done == 0 and len(summary.outcomes) == 1
    assert store.completed_ids(res / "cpu" / "cpu-tiny.jsonl") == {r["case_id"] for r in ship}  # anyone's
    assert store.completed_ids(res / "cpu" / "cpu-tiny.jsonl", machine="this-machine") == {lora["case_id"]}
    after = store.load_results(res / "cpu" / "cpu-tiny.jsonl")
    assert after[: len(ship)] == ship  # the shipped lines are untouched
    assert after[-1]["case_id"] == lora["case_id"] and after[-1]["machine"] == "this-machine"
    # Resume still works for this machine's own records.
    again = _run("cpu-tiny", res, only=[lora["case_id"]])
    assert again.outcomes == [] and again.skipped_done == 1 and fake_child == [lora["case_id"]]
    # fit and report read the shipped records and this machine's.
    df = load_frame(res, "cpu")
    assert len(df[df["case_id"] == lora["case_id"]]) == 2
    assert set(df["machine"]) == {"", "this-machine"}


def test_results_of_another_machine_do_not_count_as_recorded(tmp_path, fake_child, monkeypatch):
    from ftadvisor.calibration import store

    sweep = _sweep(tmp_path, techniques=("lora",))
    res = tmp_path / "res"
    monkeypatch.setenv("FTADVISOR_MACHINE_ID", "maintainers-box")
    assert len(_run(sweep, res).outcomes) == 2
    monkeypatch.setenv("FTADVISOR_MACHINE_ID", "this-machine")
    summary = _run(sweep, res)
    assert len(summary.outcomes) == 2 and summary.skipped_done == 0
    recs = store.load_results(summary.results_path)
    assert sorted(r["machine"] for r in recs) == ["maintainers-box"] * 2 + ["this-machine"] * 2


def test_dry_run_marks_cases_recorded_by_another_machine(tmp_path):
    shipped = ROOT / "calibration" / "results" / "cpu" / "cpu-tiny.jsonl"
    (tmp_path / "cpu").mkdir()
    shutil.copy(shipped, tmp_path / "cpu" / "cpu-tiny.jsonl")
    from typer.testing import CliRunner

    from ftadvisor.cli_calibrate import app

    out = CliRunner().invoke(app, ["run", "cpu-tiny", "--dry-run", "--results", str(tmp_path)],
                             env={"FTADVISOR_MACHINE_ID": "this-machine"})
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 16 and all(" todo " in ln and "recorded by another machine" in ln for ln in lines)


def test_machine_id_is_created_once_and_kept(tmp_path, monkeypatch):
    from ftadvisor.calibration import store
    from ftadvisor.errors import FtAdvisorError

    monkeypatch.delenv("FTADVISOR_MACHINE_ID")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store._stored_machine_id.cache_clear()
    first = store.machine_id()
    assert (tmp_path / "cache" / "ftadvisor" / "machine-id").read_text().strip() == first
    store._stored_machine_id.cache_clear()
    assert store.machine_id() == first and len(first) == 16
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-user"))
    assert store.machine_id() != first
    monkeypatch.setenv("FTADVISOR_MACHINE_ID", "../etc")
    with pytest.raises(FtAdvisorError):
        store.machine_id()


# --- 3. fit and report print the same honest figure ---------------------------------------------------


def _noisy_results(root: Path) -> None:
    """Records following the fit's model with per-record noise: lora and full with four samples,
    dora and ia3 with one each (fitted exactly in-sample: 0%)."""
    from ftadvisor.calibration import store

    noise = iter([1.03, 0.97, 1.05, 0.98, 0.96, 1.04, 1.02, 0.95, 1.06, 0.93])
    i = 0
    for tech, scale, shapes in (
        ("lora", 1.2, ((100e6, 20e6, 4e6), (300e6, 50e6, 1e6), (50e6, 80e6, 8e6), (1e9, 10e6, 2e6))),
        ("full", 0.9, ((200e6, 30e6, 2e6), (80e6, 60e6, 5e6), (400e6, 15e6, 1e6), (60e6, 90e6, 3e6))),
        ("dora", 1.6, ((120e6, 40e6, 3e6),)),
        ("ia3", 0.6, ((90e6, 70e6, 2e6),)),
    ):
        for static, act, ovh in shapes:
            meas = (static + scale * act + ovh) * next(noise)
            append_synthetic(root, f"c{i}", tech, static, act, ovh, meas)
            i += 1


HEADLINE = re.compile(r"peak MdAPE (\d+\.\d)% -> (\d+\.\d)% after correction \(([^)]*)\)")


def test_fit_and_report_print_the_same_honest_figure(tmp_path):
    """Before: fit printed the pooled default's in-sample error (which can be worse than before),
    report the per-technique in-sample one, where a technique's only sample is fitted to 0.0%."""
    from rich.console import Console
    from typer.testing import CliRunner

    from ftadvisor.calibration.corrections import read_corrections
    from ftadvisor.calibration.report import render
    from ftadvisor.cli_calibrate import app

    res, corr = tmp_path / "results", tmp_path / "corr"
    _noisy_results(res)
    out = CliRunner().invoke(app, ["fit", "--hardware", "cpu", "--results", str(res), "--out", str(corr)])
    assert out.exit_code == 0, out.output
    fit_line = HEADLINE.search(out.output)
    assert fit_line, out.output
    c = read_corrections(corr / "cpu.yaml")
    s = c.summary
    assert s.samples == 10 and s.loo_samples == 2
    # The in-sample error of a single sample is 0 by construction: the figure shown is leave-one-out.
    assert c.techniques["dora"].mdape_after == 0.0 and c.techniques["dora"].mdape_loo > 5
    assert s.mdape_after != s.mdape_in_sample

    console = Console(record=True, width=200)
    tables = render(res, "cpu", corrections_dir=corr, console=console)
    text = console.export_text()
    report_line = HEADLINE.search(text)
    assert report_line and report_line.groups() == fit_line.groups()
    assert f"{s.mdape_before:.1f}% -> {s.mdape_after:.1f}%" in fit_line.group(0)
    all_row = next(ln for ln in text.splitlines() if ln.strip("│ ").startswith("all"))
    assert f"{s.mdape_after:.1f}%" in all_row and f"{s.mdape_loo:.1f}%" in all_row
    rows = {r["technique"]: r for r in tables["cpu"]["summary"]}
    for tech in ("dora", "ia3"):
        r = rows[tech]
        assert r["after_kind"] == "leave-one-out" and r["mdape_in_sample"] < 0.01  # (coefficients rounded as stored)
        assert r["mdape_after"] == r["mdape_loo"] == pytest.approx(c.techniques[tech].mdape_loo, abs=1e-3)
        line = next(ln for ln in text.splitlines() if ln.strip("│ ").startswith(tech))
        assert f"{r['mdape_loo']:.1f}%*" in line and " 0.0%" not in line
    assert rows["lora"]["after_kind"] == "in-sample"
    assert rows["lora"]["mdape_after"] == pytest.approx(c.techniques["lora"].mdape_after, abs=1e-3)


def test_estimate_note_shows_leave_one_out_for_a_single_sample():
    from ftadvisor.calibration.corrections import apply_corrections, parse_corrections

    base = {"activations_scale": 1.0, "overhead_scale": 1.0, "residual_bytes": 0.0}
    corr = parse_corrections({"hardware": "cpu", "created_at": "2026-01-01T00:00:00+00:00", "sources": [], "backends": [],
                              "default": {**base, "samples": 5},
                              "techniques": {"dora": {**base, "samples": 1, "mdape_before": 4.0, "mdape_after": 0.0,
                                                      "mdape_loo": 6.5}}})
    _, note = apply_corrections({"activations": 1.0}, "dora", corr)
    assert "4.0% -> 6.5% leave-one-out" in note and "-> 0.0%" not in note
