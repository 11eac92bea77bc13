"""Calibration: sweep files, the results store, the runner (isolation, timeouts, kill + resume),
the CPU and trace backends against the analytic model, fitting, corrections and the report.

The expensive part runs once per module: the shipped ``cpu-tiny`` sweep (every technique for a
warm-up step and a measured step on tiny random-weight models, plus DDP with two ranks) and two
``trace`` cases of Llama-3.1-8B; the rest are small.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT, append_synthetic

MIB = 2**20
SWEEPS = sorted((ROOT / "calibration" / "sweeps").glob("*.yaml"))

# The bound on |predicted - measured| / measured of the peak allocated bytes on the CPU. The cpu
# backend counts tensor storages exactly, so a model that counts the same tensors lands within a
# few percent; 10% (the target) leaves room for small transients no formula names (SDPA's
# CPU workspace, loss and grad-norm scalars, RNG state).
BOUND_PCT = 10.0

# Techniques the analytic model misses by more than BOUND_PCT on cpu-tiny, each with its measured
# cause and its own two-sided bound on the signed error (predicted - measured) / measured in %:
# the case fails if the model drifts further off (or past the other side), and when the cause is
# modelled the entry must go (the bound's upper end is below -BOUND_PCT).
KNOWN_OFF: dict[str, tuple[float, float, str]] = {
    # (empty: DPO -17.2% and ORPO -15.9% were here until trl's CPU log-prob gather was modelled,
    # memory.CPU_LOG_PROB_GATHER_EXTRA_BYTES; now +1.1% and +1.0%, KTO -5.9%)
}


# --- sweep files -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweeps_validate(path):
    from ftadvisor.calibration.sweep import expand, load_sweep

    sw = load_sweep(path)
    assert sw.name == path.stem
    cases = expand(sw)
    assert cases and len({c.case_id for c in cases}) == len(cases)
    text = path.read_text()
    assert f"ftadvisor calibrate {path.stem}" in text  # the header shows the exact command


def test_cpu_tiny_covers_every_technique():
    from ftadvisor.calibration.sweep import expand, load_sweep
    from ftadvisor.techniques import METHODS, OBJECTIVES, parse_technique

    cases = expand(load_sweep("cpu-tiny"))
    methods = {parse_technique(c.technique).method.name for c in cases}
    objectives = {parse_technique(c.technique).objective.name for c in cases}
    assert methods == set(METHODS) and objectives == set(OBJECTIVES)
    assert {c.plan["sharding"] for c in cases if c.num_processes == 2} == {"ddp"}
    # the sharded layouts, two CPU processes each, are the cpu-sharded sweep's (tests/test_calibration_sharded.py)
    sharded = expand(load_sweep("cpu-sharded"))
    assert {c.plan["sharding"] for c in sharded if c.num_processes == 2} == {"zero2", "zero3", "fsdp"}


def test_gpu_default_covers_every_technique_and_multi_gpu():
    from ftadvisor.calibration.sweep import expand, load_sweep
    from ftadvisor.techniques import METHODS, OBJECTIVES, parse_technique

    cases = expand(load_sweep("gpu-default"))
    assert {parse_technique(c.technique).method.name for c in cases} == set(METHODS)
    assert {parse_technique(c.technique).objective.name for c in cases} == set(OBJECTIVES)
    assert {c.plan["sharding"] for c in cases if c.num_processes > 1} >= {"ddp", "fsdp"}
    assert all(c.backend in ("auto", "cuda") for c in cases)


def _sweep(tmp_path, body: dict, name="t") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, **body}))
    return p


TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}


def test_case_ids_are_stable_and_sensitive(tmp_path):
    from ftadvisor.calibration.sweep import expand, load_sweep

    a = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "backend": "cpu", "cases": [
        {"technique": "lora", "seq_len": 64, "label": "first"}]})))[0]
    # Same case written differently (defaults, key order, another label, a field at its default value).
    b = expand(load_sweep(_sweep(tmp_path, {"backend": "cpu", "defaults": {"seq_len": 64}, "model": dict(reversed(TINY.items())),
                                            "cases": [{"label": "other", "lora_r": 16, "technique": "lora"}]}, "u")))[0]
    assert a.case_id == b.case_id and len(a.case_id) == 16
    # The id is the SHA-256 of the canonical JSON of (model config, layers, non-default plan fields,
    # backend, processes): recompute it by hand from those inputs.
    key = {"backend": "cpu", "model": TINY, "num_layers": None, "num_processes": 1,
           "plan": {"seq_len": 64, "technique": "lora"}}
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    assert a.case_id == hashlib.sha256(text.encode()).hexdigest()[:16]
    for change in ({"seq_len": 128}, {"lora_r": 8}, {"technique": "qlora"}):
        c = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "backend": "cpu",
                                                "cases": [{"technique": "lora", "seq_len": 64, **change}]}, "v")))[0]
        assert c.case_id != a.case_id
    d = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "backend": "trace",
                                            "cases": [{"technique": "lora", "seq_len": 64}]}, "w")))[0]
    assert d.case_id != a.case_id


def test_grid_expands_to_the_product(tmp_path):
    from ftadvisor.calibration.sweep import expand, load_sweep

    cases = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "grid": {
        "technique": ["lora", "full"], "micro_batch_size": [1, 2], "gradient_checkpointing": [True, False]}})))
    assert len(cases) == 8
    assert {(c.technique, c.plan["micro_batch_size"], c.plan["gradient_checkpointing"]) for c in cases} == {
        (t, m, g) for t in ("lora", "full") for m in (1, 2) for g in (True, False)}


@pytest.mark.parametrize(
    "body,field",
    [
        ({"model": TINY, "cases": [{"technique": "lora", "seq_lenn": 64}]}, "seq_lenn"),
        ({"model": TINY, "cases": [{"technique": "moe"}]}, "technique"),
        ({"model": TINY, "cases": [{"seq_len": 64}]}, "technique"),
        ({"model": TINY, "cases": [{"technique": "lora", "micro_batch_size": 0}]}, "micro_batch_size"),
        ({"model": TINY, "backend": "tpu", "cases": [{"technique": "lora"}]}, "backend"),
        ({"model": "no-such-model", "cases": [{"technique": "lora"}]}, "model"),
        ({"model": TINY, "cases": [{"technique": "lora"}, {"technique": "lora"}]}, "duplicates"),
        ({"model": TINY, "cases": [{"technique": "full", "num_processes": 2, "num_gpus": 4}]}, "num_gpus"),
        ({"model": TINY}, "cases"),
    ],
)
def test_bad_sweeps_name_the_field(tmp_path, body, field):
    from ftadvisor.calibration.sweep import load_sweep

    with pytest.raises(FtAdvisorError) as err:
        load_sweep(_sweep(tmp_path, body))
    assert field in str(err.value)


# --- results store ---------------------------------------------------------------------------


def _record(i: int, **kw) -> dict:
    return {"case_id": f"c{i}", "sweep": "s", "status": "ok", "plan": {"technique": "lora"}, **kw}


def test_append_result_is_line_atomic_and_repairs_a_torn_tail(tmp_path):
    from ftadvisor.calibration import store

    p = store.append_result(tmp_path, "cpu", _record(1))
    assert p == tmp_path / "cpu" / "s.jsonl"
    # A writer killed mid-line leaves an unterminated fragment: readers skip it ...
    with open(p, "ab") as fh:
        fh.write(b'{"case_id": "c2", "sta')
    assert [r["case_id"] for r in store.load_results(p)] == ["c1"]
    assert store.completed_ids(p) == {"c1"}
    # ... and the next append cuts it before writing a whole line.
    store.append_result(tmp_path, "cpu", _record(3))
    lines = p.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])
    assert [r["case_id"] for r in store.load_results(p)] == ["c1", "c3"]
    rec = store.load_results(p)[0]
    assert rec["hardware"] == "cpu" and rec["schema_version"] == 1 and rec["started_at"]


def test_concurrent_appends_lose_nothing(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from ftadvisor.calibration.store import append_result
        w = int(sys.argv[1])
        for i in range(40):
            append_result({str(tmp_path)!r}, "cpu", {{"case_id": f"w{{w}}-{{i}}", "sweep": "s", "status": "ok",
                          "plan": {{"technique": "lora"}}, "error": "x" * 5000}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    from ftadvisor.calibration import store

    ids = [r["case_id"] for r in store.load_results(tmp_path / "cpu" / "s.jsonl")]
    assert len(ids) == 160 and len(set(ids)) == 160


def test_bad_records_are_refused(tmp_path):
    from ftadvisor.calibration import store

    with pytest.raises(FtAdvisorError) as err:
        store.append_result(tmp_path, "cpu", _record(1, status="exploded"))
    assert "status" in str(err.value) and "oom" in str(err.value)
    with pytest.raises(FtAdvisorError):
        store.append_result(tmp_path, "cpu", {"status": "ok", "plan": {}})  # no case_id
    with pytest.raises(FtAdvisorError):
        store.append_result(tmp_path, "../x", _record(1))


# --- outcome classification (no processes) ------------------------------------------------------


def test_exit_classification(tmp_path):
    from ftadvisor.calibration.runner import _classify
    from ftadvisor.calibration.sweep import expand, load_sweep

    case = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "cases": [{"technique": "lora"}]})))[0]
    out, log = tmp_path / "out.json", tmp_path / "log"
    log.write_text("Traceback ...\nRuntimeError: DefaultCPUAllocator: can't allocate memory\n")
    assert _classify(case, out, log, 1, False, 1.0)[0] == "oom"
    log.write_text("Fatal Python error: Segmentation fault\n")
    assert _classify(case, out, log, -signal.SIGSEGV, False, 1.0)[0] == "crash"
    assert _classify(case, out, log, -signal.SIGKILL, False, 1.0)[0] == "oom"  # not sent by the runner
    assert _classify(case, out, log, -signal.SIGKILL, True, 1.0)[0] == "timeout"
    out.write_text(json.dumps({"status": "skipped", "error": "why"}))
    assert _classify(case, out, log, 3, False, 1.0)[:3] == ("skipped", None, "why")


def test_hardware_detection_matches_nvidia_smi_names():
    from ftadvisor.calibration.runner import match_hardware

    assert match_hardware("NVIDIA H100 80GB HBM3", 79.6) == "h100-sxm"
    assert match_hardware("NVIDIA A100-SXM4-40GB", 39.4) == "a100-40gb"
    assert match_hardware("NVIDIA A100-SXM4-80GB", 79.2) == "a100-80gb"
    assert match_hardware("NVIDIA GeForce RTX 4090", 23.99) == "rtx4090-24gb"
    assert match_hardware("NVIDIA H200", 140.4) == "h200"
    with pytest.raises(FtAdvisorError):
        match_hardware("Some Unknown Accelerator", 10)


# --- corrections -------------------------------------------------------------------------------


def _corr(**tech) -> dict:
    base = {"activations_scale": 1.0, "overhead_scale": 1.0, "residual_bytes": 0.0, "samples": 3}
    return {"hardware": "cpu", "created_at": "2026-01-01T00:00:00+00:00", "sources": ["x.jsonl"], "backends": ["cpu"],
            "default": base, "techniques": {k: {**base, **v} for k, v in tech.items()}}


def test_apply_corrections_by_hand():
    from ftadvisor.calibration.corrections import apply_corrections, parse_corrections

    corr = parse_corrections(_corr(lora={"activations_scale": 1.5, "overhead_scale": 2.0, "residual_bytes": 1024,
                                         "mdape_before": 12.0, "mdape_after": 3.0}))
    comps = {"weights": 100.0, "gradients": 10.0, "activations": 40.0, "logits": 20.0, "generation_cache": 0.0,
             "quantization_workspace": 5.0, "communication": 0.0, "framework_overhead": 1.0}
    out, note = apply_corrections(comps, "lora", corr)
    # activations 40*1.5, logits 20*1.5, workspace 5*2, framework 1*2 + 1024; static terms untouched
    assert out == {"weights": 100.0, "gradients": 10.0, "activations": 60.0, "logits": 30.0, "generation_cache": 0.0,
                   "quantization_workspace": 10.0, "communication": 0.0, "framework_overhead": 1026.0}
    assert "[lora]" in note and "x1.500" in note and "12.0% -> 3.0%" in note
    # *_bytes keys (MemoryBreakdown names) work too; an unfitted technique gets the default (identity).
    out2, note2 = apply_corrections({"activations_bytes": 40, "weights_bytes": 7}, "qlora", corr)
    assert out2 == {"activations_bytes": 40, "weights_bytes": 7, "framework_overhead": 0.0} and "[default]" in note2


def test_corrections_files_validate_and_load(tmp_path, monkeypatch):
    from ftadvisor.calibration import corrections as C

    for path in sorted((ROOT / "calibration" / "corrections").glob("*.yaml")):
        c = C.read_corrections(path)
        assert c.hardware == path.stem
    monkeypatch.setenv("FTADVISOR_CALIBRATION", str(tmp_path))
    assert C.load_corrections("cpu") is None
    (tmp_path / "corrections").mkdir()
    (tmp_path / "corrections" / "cpu.yaml").write_text(yaml.safe_dump(_corr(lora={"activations_scale": 1.2})))
    assert C.load_corrections("cpu").techniques["lora"].activations_scale == 1.2
    time.sleep(0.01)
    (tmp_path / "corrections" / "cpu.yaml").write_text(yaml.safe_dump(_corr(lora={"activations_scale": 1.3})))
    os.utime(tmp_path / "corrections" / "cpu.yaml", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert C.load_corrections("cpu").techniques["lora"].activations_scale == 1.3  # cache keyed on mtime
    bad = _corr()
    bad["default"]["activations_scale"] = -1
    (tmp_path / "corrections" / "cpu.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(FtAdvisorError) as err:
        C.read_corrections(tmp_path / "corrections" / "cpu.yaml")
    assert "activations_scale" in str(err.value)


def _synthetic_results(root: Path, a: dict, b: float, g: float) -> None:
    """Records whose measured peak follows the fit's model with known coefficients."""
    from ftadvisor.calibration import store

    i = 0
    for tech, scale in a.items():
        for static, act, ovh in ((100e6, 20e6, 4e6), (300e6, 50e6, 1e6), (50e6, 80e6, 8e6), (1e9, 10e6, 2e6)):
            meas = static + scale * act + b * ovh + g
            append_synthetic(root, f"c{i}", tech, static, act, ovh, meas)
            i += 1
    store.append_result(root, "cpu", {"case_id": "crashed", "sweep": "syn", "status": "crash", "plan": {"technique": "lora"}})


def test_fit_recovers_known_coefficients(tmp_path):
    from ftadvisor.calibration.corrections import read_corrections
    from ftadvisor.calibration.fit import fit

    _synthetic_results(tmp_path / "results", {"lora": 1.25, "full": 0.8}, b=1.5, g=2e6)
    (path,) = fit(tmp_path / "results", "cpu", tmp_path / "corr")
    c = read_corrections(path)
    assert c.techniques["lora"].activations_scale == pytest.approx(1.25, rel=1e-3)
    assert c.techniques["full"].activations_scale == pytest.approx(0.8, rel=1e-3)
    assert c.default.overhead_scale == pytest.approx(1.5, rel=1e-3)
    assert c.default.residual_bytes == pytest.approx(2e6, rel=1e-3)
    assert c.techniques["lora"].samples == 4 and c.techniques["lora"].mdape_after < 0.01
    assert c.techniques["lora"].mdape_before > 1 and c.allocator_slack is None


# --- the runner, end to end ------------------------------------------------------------------------


def _run_sweep(path, root, **kw):
    from ftadvisor.calibration.runner import run_sweep

    return run_sweep(str(path), results_root=root, progress=False, **kw)


@pytest.fixture(scope="module")
def cpu_tiny(tmp_path_factory):
    """The shipped cpu-tiny sweep, run once (every technique + DDP), into a temporary results folder."""
    root = tmp_path_factory.mktemp("results")
    t0 = time.monotonic()
    summary = _run_sweep("cpu-tiny", root, jobs=2, isolation="fork")
    from ftadvisor.calibration import store

    recs = {r["label"]: r for r in store.load_results(summary.results_path)}
    return {"summary": summary, "records": recs, "root": root, "seconds": time.monotonic() - t0}


def _err(rec) -> float:
    p = rec["prediction"]["memory"]["peak_allocated_bytes"]
    m = rec["measurement"]["peak_allocated_bytes"]
    return 100.0 * (p - m) / m


def test_cpu_tiny_side_by_side(cpu_tiny, capsys):
    recs = cpu_tiny["records"]
    rows = []
    for label, r in recs.items():
        if r["status"] == "ok":
            rows.append(f"{label[:46]:<46} {r['measurement']['peak_allocated_bytes'] / MIB:9.2f} "
                        f"{r['prediction']['memory']['peak_allocated_bytes'] / MIB:9.2f} {_err(r):+7.1f}%")
    errs = sorted(abs(_err(r)) for r in recs.values() if r["status"] == "ok")
    median = errs[len(errs) // 2] if len(errs) % 2 else (errs[len(errs) // 2 - 1] + errs[len(errs) // 2]) / 2
    with capsys.disabled():
        print(f"\ncpu-tiny ({cpu_tiny['seconds']:.0f} s): case, measured MiB, predicted MiB, error (uncalibrated)")
        print("\n".join(rows))
        print(f"median absolute error {median:.1f}% over {len(errs)} cases")
    statuses = {label: r["status"] for label, r in recs.items()}
    assert all(s == "ok" for s in statuses.values()), statuses  # FSDP/ZeRO on CPU: tests/test_calibration_sharded.py
    assert median <= BOUND_PCT


def _tech_params():
    from ftadvisor.calibration.sweep import expand, load_sweep

    out = []
    for c in expand(load_sweep("cpu-tiny")):
        if c.num_processes > 1:
            continue
        out.append(pytest.param(c.label, c.technique, id=c.technique))
    return out


@pytest.mark.parametrize("label,technique", _tech_params())
def test_cpu_tiny_within_bound(cpu_tiny, label, technique):
    rec = cpu_tiny["records"][label]
    assert rec["status"] == "ok", rec.get("error")
    err = _err(rec)
    if technique in KNOWN_OFF:
        lo, hi, why = KNOWN_OFF[technique]
        assert hi < -BOUND_PCT or lo > BOUND_PCT  # an entry inside the general bound must go
        assert lo <= err <= hi, f"{label}: predicted {err:+.1f}% off the measured peak, outside [{lo}, {hi}] ({why})"
    else:
        assert abs(err) <= BOUND_PCT, f"{label}: predicted {err:+.1f}% off the measured peak"


def test_cpu_tiny_static_terms_are_exact(cpu_tiny):
    """Parameters and optimizer state are counted, not estimated: the engine's model and the
    estimate must agree to the byte (trainable counts) and within 0.1% (stored bytes)."""
    for label, r in cpu_tiny["records"].items():
        if r["status"] != "ok":
            continue
        m, p = r["measurement"], r["prediction"]
        assert m["trainable_params"] == p["trainable_params"], label
        if p["plan"]["technique"].startswith("ppo"):
            continue  # the reward and value models are 'extra_models' in the estimate
        extra = 0
        if p["plan"]["technique"] == "qlora":
            # bitsandbytes keeps per quantized tensor a QuantState with its own nested-quantization
            # code table (256 fp32), the NF4 code (16 fp32) and an offset (1 fp32): 1,092 bytes x 7
            # linears x 3 layers, which the per-parameter NF4 formula leaves out; plus up to 4 bytes
            # per tensor of rounding up the nested blocks (704 / 256 -> 3 blocks of fp32 absmax).
            extra = 21 * (256 * 4 + 16 * 4 + 4)
            assert m["weights_bytes"] - p["memory"]["weights_bytes"] == pytest.approx(extra, abs=21 * 4), label
            continue
        if p["plan"]["technique"] in ("dpo+lora", "kto+lora"):
            # trl's DPOTrainer (and KTOTrainer), given a peft model and no reference, adds a frozen copy of the adapter
            # ("ref" adapter, trl/trainer/dpo_trainer.py) that the estimate does not count: r=8 LoRA on
            # every linear of tiny-llama is 3 x (8*(256+192+192+256) + 3*8*480) = 56,064 parameters,
            # kept frozen in bf16 (2 bytes).
            assert m["weights_bytes"] - p["memory"]["weights_bytes"] == 56_064 * 2, label
            continue
        assert m["weights_bytes"] == pytest.approx(p["memory"]["weights_bytes"], rel=1e-3), label
        if p["plan"]["technique"] == "ia3":
            # torch's AdamW keeps a 4-byte fp32 'step' per parameter tensor (torch/optim/adamw.py), which
            # the per-parameter state (8 B) leaves out: visible only where tensors are this small --
            # 3 (IA)^3 vectors x 3 layers = 9 tensors of 1,440 parameters in all
            assert m["optimizer_state_bytes"] - p["memory"]["optimizer_state_bytes"] == 9 * 4, label
            continue
        assert m["optimizer_state_bytes"] == pytest.approx(p["memory"]["optimizer_state_bytes"], rel=1e-3), label


def test_ddp_measures_every_rank(cpu_tiny):
    rec = next(r for label, r in cpu_tiny["records"].items() if "ddp" in label)
    m = rec["measurement"]
    assert [x["peak_allocated_bytes"] > 0 for x in m["ranks"]] == [True, True]
    # Both ranks hold the same replica: their peaks agree to 1%.
    a, b = (x["peak_allocated_bytes"] for x in m["ranks"])
    assert abs(a - b) / max(a, b) < 0.01
    # DDP's reducer buckets (a gradient-sized flat copy, the estimate's communication term) are
    # allocated by C++ inside the run and must be in the measurement: against the single-process
    # full case the per-rank peak grows by about that much.
    single = next(r for label, r in cpu_tiny["records"].items() if label == "full tiny-llama")
    comm = rec["prediction"]["memory"]["communication_bytes"]
    assert comm > 0
    grow = m["peak_allocated_bytes"] - single["measurement"]["peak_allocated_bytes"]
    assert grow == pytest.approx(comm, rel=0.25)
    assert abs(_err(rec)) <= BOUND_PCT


def test_fit_and_report_on_measured_results(cpu_tiny, tmp_path):
    from rich.console import Console

    from ftadvisor.calibration.corrections import read_corrections
    from ftadvisor.calibration.fit import fit
    from ftadvisor.calibration.report import render

    (path,) = fit(cpu_tiny["root"], "cpu", tmp_path)
    c = read_corrections(path)
    assert c.hardware == "cpu" and c.default.samples >= 12 and "lora" in c.techniques
    assert c.default.mdape_loo is not None
    assert all(t.mdape_after <= t.mdape_before + 0.5 for t in c.techniques.values())
    console = Console(record=True, width=120)
    tables = render(cpu_tiny["root"], "cpu", cases=True, details=True, corrections_dir=tmp_path, console=console)
    text = console.export_text()
    assert "before" in text and "LOO" in text and "ppo+lora" in text and "x: predicted peak allocated" in text
    assert tables["cpu"]["rows"]["ape_after"].median() <= tables["cpu"]["rows"]["ape_before"].median()
    # fit's summary (what `calibrate fit` prints) is the report's 'all' row; one-sample techniques
    # show their leave-one-out error, not the 0% of fitting one sample exactly.
    assert tables["cpu"]["overall"] == c.summary.model_dump()
    for s in tables["cpu"]["summary"]:
        if s["n"] < 3:
            assert s["after_kind"] == "leave-one-out" and s["mdape_after"] == s["mdape_loo"]


# --- trace: a 7B-class model without its weights ------------------------------------------------------


TRACE_LONG = "lora llama-3.1-8b@2L micro_batch_size=8 seq_len=4096"


@pytest.fixture(scope="module")
def trace_8b(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace")
    summary = _run_sweep("trace-llama-3.1-8b", root, only=["full llama-3.1-8b@2L", "lora llama-3.1-8b@2L",
                                                          TRACE_LONG], isolation="fork")
    from ftadvisor.calibration import store

    return [r for r in store.load_results(summary.results_path)]


def test_trace_llama_8b_long_sequence_large_batch_checkpointed(trace_8b, capsys):
    """Issue 14: LoRA on Llama-3.1-8B at sequence 4096, micro-batch 8, with checkpointing, traced
    under FakeTensorMode. Activations are 18.7 of the 35 GiB here, so the checkpoint term (32 layer
    inputs), the recomputed layer and the backward working set are what this checks: keeping one
    layer's input instead of 32 is -22%, dropping the recompute -19%, a 2-intermediate backward
    working set -5%."""
    r = next(r for r in trace_8b if r["label"] == TRACE_LONG)
    m = r["measurement"]
    assert r["status"] == "ok" and m["extrapolated"] and m["num_layers"] == 32
    with capsys.disabled():
        print(f"\ntrace {r['label']}: measured {m['peak_allocated_bytes'] / 2**30:.2f} GiB, predicted "
              f"{r['prediction']['memory']['peak_allocated_bytes'] / 2**30:.2f} GiB ({_err(r):+.2f}%)")
    assert r["prediction"]["memory"]["activations_bytes"] > 0.5 * m["peak_allocated_bytes"]
    assert abs(_err(r)) <= 2.0


def test_trace_llama_8b_full_and_lora(trace_8b, capsys):
    recs = {r["plan"]["technique"]: r for r in trace_8b if r["label"] != TRACE_LONG}
    assert len(recs) == 2
    full, lora = recs["full"], recs["lora"]
    with capsys.disabled():
        for r in (full, lora):
            m = r["measurement"]
            print(f"\ntrace {r['label']}: traced at {m['traced_layers']} layers, extrapolated to {m['num_layers']}: "
                  f"measured {m['peak_allocated_bytes'] / 2**30:.2f} GiB, predicted "
                  f"{r['prediction']['memory']['peak_allocated_bytes'] / 2**30:.2f} GiB ({_err(r):+.2f}%)")
    for r in (full, lora):
        m = r["measurement"]
        assert r["status"] == "ok" and m["extrapolated"] and m["traced_layers"] == [2, 3] and m["num_layers"] == 32
        assert abs(_err(r)) <= 5.0
    # Full fine-tuning at the optimizer step is 16 bytes per parameter (fp32 weights, grads, two
    # Adam moments; ZeRO paper section 3.1) - exact in the trace: 8,030,261,248 params (Llama-3.1-8B).
    assert full["measurement"]["total_params"] == 8_030_261_248
    assert full["measurement"]["phases_bytes"]["optimizer_step"] == pytest.approx(16 * 8_030_261_248, rel=1e-4)
    # LoRA r=16 on all linears: 41,943,040 trainable (peft's printout for Llama-3-8B).
    assert lora["measurement"]["trainable_params"] == 41_943_040


def test_trace_depths_differ_by_exactly_one_layer(trace_8b):
    """The extrapolation's slope is one decoder layer: between the 2- and 3-layer traces of full
    fine-tuning the stored weights grow by one Llama-3.1-8B layer in fp32 and the Adam state by
    two fp32 moments of it. One layer, by hand: q, o 4096x4096; k, v 4096x1024; gate, up, down
    3 x 4096x14336; two RMSNorm weights of 4096 = 218,112,000 parameters."""
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert layer == 218_112_000
    full = next(r for r in trace_8b if r["plan"]["technique"] == "full")
    two, three = full["measurement"]["traced"]["2"], full["measurement"]["traced"]["3"]
    assert three["weights_bytes"] - two["weights_bytes"] == 4 * layer
    assert three["optimizer_state_bytes"] - two["optimizer_state_bytes"] == pytest.approx(8 * layer, abs=64)
    assert three["trainable_params"] - two["trainable_params"] == layer


def test_trace_refuses_quantized_bases(tmp_path):
    from ftadvisor.calibration.measure import Unsupported, measure_case
    from ftadvisor.calibration.sweep import expand, load_sweep

    case = expand(load_sweep(_sweep(tmp_path, {"model": TINY, "backend": "trace", "cases": [{"technique": "qlora"}]})))[0]
    with pytest.raises(Unsupported):
        measure_case(case)


# --- isolation: subprocess path, crash, timeout, kill + resume -------------------------------------


def test_subprocess_isolation_records_ok_crash_and_timeout(tmp_path):
    sweep = _sweep(tmp_path, {"model": TINY, "backend": "cpu", "hardware": "cpu", "steps": 1, "warmup": 1, "timeout_s": 240,
                              "defaults": {"seq_len": 32}, "cases": [
                                  {"technique": "lora", "label": "ok"},
                                  # fp16-mixed needs CUDA: the engine raises inside the child -> crash, with its message
                                  {"technique": "lora", "precision": "fp16-mixed", "label": "crash"},
                                  # killed long before torch even imports -> timeout
                                  {"technique": "full", "timeout_s": 0.5, "label": "timeout"},
                              ]}, "iso")
    summary = _run_sweep(sweep, tmp_path / "res", jobs=2)
    from ftadvisor.calibration import store

    recs = {r["label"]: r for r in store.load_results(summary.results_path)}
    assert recs["ok"]["status"] == "ok" and recs["ok"]["measurement"]["peak_allocated_bytes"] > 0
    assert recs["crash"]["status"] == "crash" and "fp16-mixed needs a CUDA GPU" in recs["crash"]["error"]
    assert recs["timeout"]["status"] == "timeout"
    env = recs["ok"]["environment"]
    assert env["torch"] and env["transformers"] and env["peft"] and env["trl"] and env["device"] == "cpu"
    assert recs["ok"]["prediction"]["technique"] == "lora"
    # Everything is recorded, so a rerun has nothing to do.
    assert _run_sweep(sweep, tmp_path / "res").outcomes == []


def test_sigkill_mid_sweep_then_resume_records_every_case_once(tmp_path):
    import psutil

    sweep = _sweep(tmp_path, {"model": TINY, "backend": "cpu", "hardware": "cpu", "steps": 1, "warmup": 1, "timeout_s": 240,
                              "defaults": {"seq_len": 32}, "grid": {"technique": ["lora", "full", "adapter"],
                                                                     "micro_batch_size": [1, 2]}}, "kill")
    res = tmp_path / "res"
    out_file = res / "cpu" / "kill.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "ftadvisor.cli", "calibrate", str(sweep), "--results", str(res), "--fork"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if out_file.is_file() and len(out_file.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the sweep recorded nothing in time")
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)  # the runner only: its children must not outlive it
    proc.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, f"orphans: {[p.pid for p in alive]}"
    before = [json.loads(x)["case_id"] for x in out_file.read_bytes().splitlines() if x.strip()]
    assert 2 <= len(before) < 6
    summary = _run_sweep(sweep, res, isolation="fork")
    assert summary.skipped_done == len(before) and len(summary.outcomes) == 6 - len(before)
    from ftadvisor.calibration import store

    ids = [r["case_id"] for r in store.load_results(out_file)]
    from ftadvisor.calibration.sweep import expand, load_sweep

    assert sorted(ids) == sorted(c.case_id for c in expand(load_sweep(sweep)))  # each exactly once
    assert all(r["status"] == "ok" for r in store.load_results(out_file))


# --- CLI and import hygiene ---------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", "calibrate", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_errors_are_one_line():
    out = _cli("no-such-sweep")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: sweep: no sweep file 'no-such-sweep'") and "cpu-tiny" in out.stderr
    out = _cli("run", "cpu-tiny", "--backend", "tpu", "--dry-run")
    assert out.returncode == 2 and "backend" in out.stderr and "Traceback" not in out.stderr
    out = _cli("fit", "--hardware", "h100-sxm", "--results", "/nonexistent")
    assert out.returncode == 2 and "no results" in out.stderr


def test_cli_dry_run_lists_cases_without_the_training_stack(tmp_path):
    code = ("import sys\nfrom ftadvisor.cli import app\n"
            "try:\n    app(['calibrate', 'cpu-tiny', '--dry-run', '--results', sys.argv[1]], standalone_mode=False)\n"
            "except SystemExit:\n    pass\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    n_cases = len(yaml.safe_load((ROOT / "calibration" / "sweeps" / "cpu-tiny.yaml").read_text())["cases"])
    assert n_cases == 16  # the sweep file's case list, counted by hand (its FSDP case moved to cpu-sharded.yaml)
    assert len(lines) == n_cases and all(" todo " in ln for ln in lines)  # (loads nothing heavy: test_layers)


# --- GPU (skipped without one) ---------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_lora_case_measures_allocator_and_device_total(tmp_path):
    from ftadvisor.calibration.measure import cuda_visible

    if not cuda_visible():
        pytest.skip("no CUDA GPU")
    summary = _run_sweep("gpu-default", tmp_path, only=["lora"])
    from ftadvisor.calibration import store

    recs = store.load_results(summary.results_path)
    assert recs and all(r["status"] == "ok" for r in recs)
    m = recs[0]["measurement"]
    assert m["backend"] == "cuda" and m["peak_reserved_bytes"] >= m["peak_allocated_bytes"] > 0
    assert m["device_total_bytes"] >= m["peak_reserved_bytes"]
