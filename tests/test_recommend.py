"""The recommender: only fitting plans, the right objectives for the data, QLoRA when only it fits, reasons."""

import subprocess
import sys

import pytest

import ftadvisor as fa
from ftadvisor.recommend import fits_card, max_micro_batch, max_seq_len, min_gpus, recommend
from tests.conftest import ROOT

CASES = [
    ("llama-3.1-8b", "rtx4090-24gb", 1, "chat"),
    ("qwen2.5-7b", "a100-80gb", 1, "code"),
    ("llama-3.1-70b", "h100-sxm", 8, "preference"),
    ("mixtral-8x7b", "h100-sxm", 8, "chat"),
    ("qwen2.5-1.5b", "t4", 1, "rl"),
]


@pytest.mark.parametrize("model,gpu,n,goal", CASES)
def test_never_returns_a_plan_that_does_not_fit(model, gpu, n, goal):
    rec = recommend(model, gpu, num_gpus=n, num_nodes=1, goal=goal, examples=10_000)
    cap = fa.resolve_hardware(gpu).memory_bytes
    assert rec.plans, rec.rejected
    for p in rec.plans:
        # re-estimate independently of the recommender's grid path
        est = fa.estimate(model, gpu, plan=p.plan)
        assert est.fits and est.memory.device_total_bytes <= cap * 0.95
        assert p.reasons
    assert [p.rank for p in rec.plans] == list(range(1, len(rec.plans) + 1))


def test_preference_methods_only_with_preference_data():
    chat = recommend("llama-3.2-3b", "a100-80gb", goal="chat", examples=5000)
    assert all(fa.parse_technique(p.plan.technique).objective.name == "sft" for p in chat.plans)
    pref = recommend("llama-3.2-3b", "a100-80gb", goal="preference", examples=5000)
    objs = {fa.parse_technique(p.plan.technique).objective.name for p in pref.plans}
    assert objs <= {"dpo", "orpo", "kto"} and objs
    # single answers labelled good or bad train KTO only (Ethayarajh et al. 2024: no pairs needed)
    fb = recommend("llama-3.2-3b", "a100-80gb", goal="preference", data_kind="feedback", examples=5000)
    assert {fa.parse_technique(p.plan.technique).objective.name for p in fb.plans} == {"kto"}
    assert all(p.plan.micro_batch_size >= 2 for p in fb.plans)  # KTO's KL term needs two per micro-batch
    assert any("preference" in r for p in pref.plans for r in p.reasons)
    rl = recommend("qwen2.5-0.5b", "a100-80gb", goal="rl", examples=2000)
    assert {fa.parse_technique(p.plan.technique).objective.name for p in rl.plans} <= {"grpo", "ppo"}


def test_prefers_qlora_when_only_a_quantized_base_fits():
    # Llama-3.1-70B on one 80 GB H100: the bf16 base alone is 141 GB, the NF4 base ~40 GB.
    rec = recommend("llama-3.1-70b", "h100-sxm", goal="chat", examples=20000)
    assert rec.plans
    techs = [p.plan.technique for p in rec.plans]
    assert all(t in ("qlora",) for t in techs), techs
    assert any("QLoRA because LoRA" in r for r in rec.plans[0].reasons)
    rejected = {p.plan.technique for p in rec.rejected}
    assert {"full", "lora"} <= rejected
    why = next(p for p in rec.rejected if p.plan.technique == "lora").reasons
    assert any("would fit on" in r for r in why)


def test_explains_rank_choice_for_code():
    rec = recommend("qwen2.5-7b", "a100-80gb", goal="code", examples=50_000)
    lora = [p for p in rec.plans if p.plan.technique in ("lora", "qlora", "dora")]
    assert lora and all(p.plan.lora_r == 256 for p in lora)
    assert any("Biderman" in r for r in lora[0].reasons)


def test_budgets_drop_plans():
    rec = recommend("llama-3.1-8b", "a100-80gb", goal="chat", examples=200_000, budget_hours=0.001)
    assert not rec.plans
    assert all(any("budget" in r for r in p.reasons) for p in rec.rejected if p.estimate.fits)


def test_capacity_questions():
    # "fits" is the one shared meaning: the card less MEMORY_HEADROOM (5%), as recommend uses
    mb = max_micro_batch("llama-3.1-8b", "a100-80gb", "lora", seq_len=2048)
    assert mb >= 1
    assert fits_card(fa.estimate("llama-3.1-8b", "a100-80gb", "lora", seq_len=2048, micro_batch_size=mb))
    assert not fits_card(fa.estimate("llama-3.1-8b", "a100-80gb", "lora", seq_len=2048, micro_batch_size=mb + 1))
    s = max_seq_len("llama-3.1-8b", "rtx4090-24gb", "qlora", micro_batch_size=1)
    assert fits_card(fa.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=s))
    assert not fits_card(fa.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=s + 1))
    n, sharding = min_gpus("llama-3.1-70b", "h100-sxm", "full")
    assert fits_card(fa.estimate("llama-3.1-70b", "h100-sxm", "full", num_gpus=n, num_nodes=max(1, n // 8),
                                 sharding=sharding))
    # the next smaller count a job can use (node-sized steps: 1..8, then whole nodes) does not fit
    smaller = n - 8 if n > 8 else n - 1
    assert not any(
        fits_card(fa.estimate("llama-3.1-70b", "h100-sxm", "full", num_gpus=smaller, num_nodes=max(1, smaller // 8),
                              sharding=s))
        for s in ("zero2", "zero3", "fsdp")
    )


def test_bad_inputs():
    with pytest.raises(fa.FtAdvisorError, match="goal"):
        recommend("llama-3.1-8b", "h100", goal="poetry")
    with pytest.raises(fa.FtAdvisorError, match="data_kind"):
        recommend("llama-3.1-8b", "h100", data_kind="images")
    with pytest.raises(fa.FtAdvisorError, match="examples"):
        recommend("llama-3.1-8b", "h100", examples=-5)


def test_cli_recommend_table():
    out = subprocess.run([sys.executable, "-m", "ftadvisor.cli", "recommend", "--model", "llama-3.1-8b", "--gpu",
                          "rtx4090-24gb", "--goal", "chat", "--data-examples", "20000"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "qlora" in out.stdout and "tok/s" in out.stdout
