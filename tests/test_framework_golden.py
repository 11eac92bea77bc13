"""Per-framework golden measurements against the estimator (issue 11, "measure the frameworks that
run here"). No framework is imported: the measurements are data.

- litgpt: calibration/results/frameworks/litgpt-cpu.jsonl, litgpt 0.5.13's own ``fit`` (LoRA and full
  recipes) on a tiny llama, peak live tensor bytes on CPU (calibration/frameworks/measure_litgpt.py).
- hf-trl: calibration/results/cpu/cpu-tiny.jsonl, this project's own trl stack on the same tiny llama
  (``ftadvisor calibrate cpu-tiny``), single-process cases.

Predictions are ``ftadvisor.estimate(config, "cpu", plan=..., calibrated=False)``: the analytic model
with no corrections fitted to these runs.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import pytest

from ftadvisor.estimator import estimate

ROOT = Path(__file__).resolve().parents[1]
LITGPT = ROOT / "calibration" / "results" / "frameworks" / "litgpt-cpu.jsonl"
CPU_TINY = ROOT / "calibration" / "results" / "cpu" / "cpu-tiny.jsonl"

# Per-case bound on |predicted - measured| / measured: today's worst case is full 32-true at +1.6% (the
# estimator keeps one fp32 input per trained gate/up projection; in pure fp32 they share one tensor).
# Before the litgpt declarations were read from source (fp32 logits from Fabric's convert_output, the
# fp32 base under bf16-mixed, fused qkv, fp32 RMSNorm scale, the copied attention output) the errors
# were -28% .. +3% (median 16.9%).
TOLERANCE = 0.03


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _predicted(config: dict, plan: dict) -> int:
    return int(estimate(dict(config), "cpu", plan=dict(plan), calibrated=False).memory.peak_allocated_bytes)


@functools.cache
def _litgpt_errors() -> dict[str, float]:
    out = {}
    for r in _rows(LITGPT):
        meas = r["measurement"]["peak_allocated_bytes"]
        out[r["label"]] = (_predicted(r["model_config"], r["plan"]) - meas) / meas
    return out


def test_litgpt_golden_file_records_its_run():
    rows = _rows(LITGPT)
    assert len(rows) >= 8
    recipes = {r["plan"]["technique"] for r in rows}
    precisions = {r["litgpt_args"]["precision"] for r in rows}
    assert recipes == {"full", "lora"} and {"bf16-true", "32-true"} <= precisions
    for r in rows:
        env = r["environment"]
        assert env["litgpt"] == "0.5.13" and env["torch"].startswith("2.13"), env
        assert r["framework"] == r["plan"]["framework"] == "litgpt"
        assert "measure_litgpt.py" in r["command"] and r["recipe"].startswith("litgpt/finetune/")
        assert r["measurement"]["peak_allocated_bytes"] > 0


def test_litgpt_logits_reach_the_loss_in_fp32():
    """The measured tensors at the peak show Lightning Fabric's convert_output: in bf16-true the lm_head
    chunk (micro-batch 2 x 128 positions x V 1024) reaches the loss as fp32, 2 x 128 x 1024 x 4 =
    1,048,576 bytes -- the reason the litgpt loss declares ``output_bytes=4``."""
    row = next(r for r in _rows(LITGPT) if r["label"] == "lora bf16-true mb2 s128")
    logits = [e for e in row["measurement"]["largest_at_peak"] if e["shape"] == [2, 128, 1024]]
    assert logits and all(e["dtype"] == "float32" and e["bytes"] == 1_048_576 for e in logits)


@pytest.mark.parametrize("label", sorted(_litgpt_errors()))
def test_litgpt_prediction_per_case(label):
    err = _litgpt_errors()[label]
    assert abs(err) <= TOLERANCE, f"{label}: predicted {err:+.1%} vs measured"


def test_litgpt_median_error_meets_the_issue_target():
    """Issue 11: median |error| <= 5% per framework that runs here (today 0.6% over 10 cases)."""
    assert statistics.median(abs(e) for e in _litgpt_errors().values()) <= 0.05


def test_hf_trl_median_error_on_cpu_tiny():
    """The same table for the default stack from the cpu-tiny sweep (single process; measured: 2.7%)."""
    errs = []
    for r in _rows(CPU_TINY):
        if r.get("status") != "ok" or r["plan"].get("num_gpus", 1) != 1 or r["plan"].get("sharding") != "none":
            continue
        meas = r["measurement"]["peak_allocated_bytes"]
        errs.append(abs(_predicted(r["model"]["config"], dict(r["plan"], framework="hf-trl")) - meas) / meas)
    assert len(errs) >= 10
    assert statistics.median(errs) <= 0.05
