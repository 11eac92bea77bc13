"""``ftadvisor launch --merge`` / ``ftadvisor.train.engine.merge_adapter``: a trained peft adapter folded
into its base is a plain Hugging Face model whose logits are the base+adapter model's.

Tiny random llama (ftadvisor.train.tiny), LoRA trained a few steps at a high learning rate so that the
adapter is far from zero (peft initialises B = 0: an untrained adapter would merge to the base).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import ftadvisor
from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT

PREFS = [{"prompt": "capital of france?", "chosen": " paris", "rejected": " rome"},
         {"prompt": "seven plus three?", "chosen": " ten", "rejected": " twelve"}]
TEXT = [{"text": "the capital of france is paris and the river is long"}] * 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ftadvisor.train.tiny import make_tiny_model_dir

    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama"))


def _train(model, technique, out, **kw):
    from ftadvisor.train.engine import TrainJob, build, run

    plan = ftadvisor.make_plan(technique, seq_len=32, micro_batch_size=2, lora_r=4, gradient_checkpointing=False,
                               **kw)
    torch.manual_seed(0)
    session = build(TrainJob(model=model, plan=plan, data=TEXT, max_steps=3, learning_rate=5e-2, output_dir=str(out)))
    return run(session).output_dir


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("technique,precision", [("lora", "fp32"), ("qlora", "bf16-mixed")])
def test_merged_logits_equal_base_plus_adapter(tiny_model, tmp_path, technique, precision):
    from transformers import AutoModelForCausalLM

    from ftadvisor.train.engine import load_trained, merge_adapter

    final = _train(tiny_model, technique, tmp_path / "run", precision=precision)
    merged_dir, note = merge_adapter(final, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()  # a plain HF model: no peft needed
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])
    if technique == "lora":
        # fp32: merged == base + adapter up to float rounding
        peft_model, _ = load_trained(final, dtype=torch.float32)
        assert torch.allclose(_logits(merged, ids), _logits(peft_model, ids), atol=1e-4)
        assert "float32" in note
    else:
        # QLoRA: merged in bf16 over the 16-bit base the nf4 weights came from (said in the note); equal to
        # the unquantized base + adapter in bf16, up to bf16 rounding of the merged weights
        assert "reloaded in 16-bit" in note and "nf4" in note
        assert json.loads((tmp_path / "merged" / "ftadvisor_merged.json").read_text())["quantization_in_training"] == "nf4"
        peft_model, _ = load_trained(final, dtype=torch.bfloat16, quantized=False)
        ref = _logits(peft_model, ids)
        assert torch.allclose(_logits(merged, ids), ref, atol=0.05 * ref.abs().max().item())
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=merged.dtype).eval()
    # the adapter learned something: merging changed the model
    assert (_logits(merged, ids) - _logits(base, ids)).abs().max() > 1e-2


def test_merge_refuses_a_full_model(tiny_model, tmp_path):
    from ftadvisor.train.engine import merge_adapter

    final = _train(tiny_model, "full", tmp_path / "run", precision="fp32")
    with pytest.raises(FtAdvisorError) as err:
        merge_adapter(final, tmp_path / "merged")
    assert err.value.field == "merge"


def test_launch_merge_flag(tiny_model, tmp_path):
    """--merge through the launcher: refused up front for a technique without a peft adapter; for LoRA,
    RUN_DIR/merged is written next to final/ and loads with AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    data = ROOT / "examples" / "data" / "chat.jsonl"

    def launch(plan, out, *extra):
        return subprocess.run(
            [sys.executable, "-m", "ftadvisor.cli", "launch", str(plan), "--data", str(data), "--model", tiny_model,
             "--output", str(out), "--gpu", "cpu", "--max-steps", "2", "--merge",
             "--set", f"results_root={tmp_path / 'results'}", *extra],
            capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})

    plan = ROOT / "examples" / "plans" / "lora-tiny-cpu.yaml"
    bad = launch(plan, tmp_path / "full", "--set", "technique=full")
    assert bad.returncode != 0 and "merge" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "full" / "final").exists()
    res = launch(plan, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "run"
    assert (out / "final" / "adapter_config.json").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["merged_dir"] == str(out / "merged")
    assert "merged:" in res.stderr
    model = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert sum(p.numel() for p in model.parameters()) > 0 and (out / "merged" / "tokenizer_config.json").is_file()


def test_merge_failure_keeps_the_training_result(tiny_model, tmp_path, monkeypatch):
    """A merge that fails after training: result.json records the training (steps, final/) and the merge
    error, the launch ends with one line naming the merge, no .merged.partial is left, and --resume then
    retries only the merge."""
    from ftadvisor.launch import MERGED_PARTIAL, RUN_ARTIFACTS, clear_run_artifacts, execute, prepare
    from ftadvisor.train import engine

    run = tmp_path / "run"
    prepare(ROOT / "examples" / "plans" / "lora-tiny-cpu.yaml", data=str(ROOT / "examples" / "data" / "chat.jsonl"),
            model=tiny_model, output=run, gpu="cpu", max_steps=2, dry_run=True, echo=lambda *_: None,
            sets={"merge": True, "results_root": str(tmp_path / "results")})

    def broken_merge(adapter_dir, out_dir):
        (out_dir / "config.json").parent.mkdir(parents=True)
        (out_dir / "config.json").write_text("{")  # half-written, as a full disk would leave it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "merge_adapter", broken_merge)
    with pytest.raises(FtAdvisorError) as err:
        execute(run, progress=False)
    assert err.value.field == "merge" and "No space left on device" in str(err.value)
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 2 and result["final_dir"] == str(run / "final")
    assert "No space left on device" in result["merge_error"] and "merged_dir" not in result
    assert (run / "final" / "adapter_config.json").is_file()
    assert not (run / "merged").exists() and not (run / MERGED_PARTIAL).exists()
    rec = json.loads((tmp_path / "results" / "cpu" / "launch.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "ok"  # the training itself is a measured, successful run

    monkeypatch.undo()
    again = execute(run, resume=True, progress=False)  # retries the merge; trains nothing more
    assert again["merged_dir"] == str(run / "merged") and "merge_error" not in again and again["steps"] == 2
    assert json.loads((run / "result.json").read_text()) == again
    assert (run / "merged" / "config.json").is_file()

    # a merge killed half-way (SIGKILL: no clean-up) leaves .merged.partial: --overwrite removes it
    assert MERGED_PARTIAL in RUN_ARTIFACTS
    (run / MERGED_PARTIAL).mkdir()
    (run / MERGED_PARTIAL / "model.safetensors").write_bytes(b"\0")
    clear_run_artifacts(run)
    assert not (run / MERGED_PARTIAL).exists() and not (run / "merged").exists()
