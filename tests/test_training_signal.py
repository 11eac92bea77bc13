"""The training signal of each objective (ftadvisor/train/signals.py) in the run log and on the
progress line, and the shipped tiny DPO / GRPO examples whose signal moves within a few CPU steps.

The two launches run the shipped plans as the README shows them (``ftadvisor launch PLAN --data ...``)
on the tiny random llama of ftadvisor.train.tiny, with the plans' own seeds and learning rates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PLANS = ROOT / "examples" / "plans"
DATA = ROOT / "examples" / "data"

# what the known-noise filters remove (ftadvisor.train.engine.quiet_known_warnings)
NOISE = ("Failed to load CPU gemm_4bit_forward", "`is_gradient_checkpointing` is deprecated", "FutureWarning")


# --- pure: fixed names from trl's log keys ----------------------------------------------------


def test_every_objective_declares_its_signals():
    from ftadvisor.techniques import OBJECTIVES
    from ftadvisor.train import signals

    assert set(OBJECTIVES) == set(signals.SIGNALS) == set(signals.LEGENDS)
    for name, sigs in signals.SIGNALS.items():
        assert len({s.name for s in sigs}) == len(sigs)
        assert len([s for s in sigs if s.progress]) <= 3, name  # the progress line stays short


def test_extract_maps_trl_keys_to_fixed_names():
    from ftadvisor.train.signals import extract, progress_text

    # keys as trl 1.12 DPOTrainer logs them (trl/trainer/dpo_trainer.py _compute_loss)
    dpo_logs = {"loss": 0.61, "rewards/chosen": 0.25, "rewards/rejected": -0.5, "rewards/margins": 0.75,
                "rewards/accuracies": 0.75, "logps/chosen": -30.0, "learning_rate": 1e-3}
    assert extract("dpo", dpo_logs) == {"accuracy": 0.75, "reward_chosen": 0.25, "reward_rejected": -0.5,
                                        "margin": 0.75}
    assert progress_text("dpo", extract("dpo", dpo_logs)) == "acc 0.750  margin 0.750"
    # GRPOTrainer (trl/trainer/grpo_trainer.py): reward, reward_std, completions/mean_length; kl with beta > 0
    grpo = extract("grpo", {"reward": 0.5, "reward_std": 0.125, "completions/mean_length": 16.0, "kl": float("nan")})
    assert grpo == {"reward_mean": 0.5, "reward_std": 0.125, "completion_length": 16.0}  # NaN dropped
    assert progress_text("grpo", grpo) == "reward 0.500  std 0.125  len 16.0"
    # PPOTrainer (trl/experimental/ppo/ppo_trainer.py): objective/scores, objective/kl
    assert extract("ppo", {"objective/scores": -1.5, "objective/kl": 0.02}) == {"reward_mean": -1.5, "kl": 0.02}
    # KTO logs no accuracy, and rewards/rejected only for batches with an undesirable example
    assert extract("kto", {"rewards/chosen": 0.1, "kl": 0.0}) == {"reward_chosen": 0.1, "kl": 0.0}
    assert extract("sft", {"loss": 2.0}) == {}


# --- the shipped examples, launched ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ftadvisor.train.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _launch(tmp_path, plan, data, model):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "ftadvisor.cli", "launch", str(plan), "--data", str(data), "--model", str(model),
         "--output", str(out), "--gpu", "cpu", "--set", f"results_root={tmp_path / 'results'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return res, events[0], [e for e in events if e["event"] == "step"]


def _mean(xs):
    return sum(xs) / len(xs)


def test_dpo_example_margin_and_accuracy_move(tmp_path, tiny_model):
    res, start, steps = _launch(tmp_path, PLANS / "dpo-lora-tiny-cpu.yaml", DATA / "preference.jsonl", tiny_model)
    assert start["objective"] == "dpo"
    assert [s["name"] for s in start["signals"]] == ["accuracy", "reward_chosen", "reward_rejected", "margin"]
    sig = [e["signal"] for e in steps]
    assert len(sig) == 10
    for s in sig:
        assert set(s) == {"accuracy", "reward_chosen", "reward_rejected", "margin"}
        assert all(math.isfinite(v) for v in s.values())
        assert s["margin"] == pytest.approx(s["reward_chosen"] - s["reward_rejected"], abs=1e-5)
        assert s["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # share of a batch of 4 pairs
    # step 1: policy = reference, so every implicit reward is 0 and the loss is ln 2 (Rafailov et al. 2023)
    assert sig[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    margins = [s["margin"] for s in sig]
    # measured (seed 0, lr 3e-3): 0, 0.003, 0.07, 0.06 | ... 0.21, 0.28, 0.46, -0.14 (step 10: a batch of 2)
    assert _mean(margins[-4:]) > _mean(margins[:4]) + 0.08
    assert max(margins) > 0.3
    assert max(s["accuracy"] for s in sig[1:]) == 1.0
    # progress line: legend once, then loss with accuracy and margin
    err = res.stderr
    assert err.count("ln 2 = 0.693") == 1
    assert "step 1/10  loss 0.6931  acc 0.000  margin 0.000" in err
    for noise in NOISE:
        assert noise not in err, noise


def test_grpo_example_reward_varies_and_changes(tmp_path, tiny_model):
    res, start, steps = _launch(tmp_path, PLANS / "grpo-lora-tiny-cpu.yaml", DATA / "rl_prompts.jsonl", tiny_model)
    assert start["objective"] == "grpo"
    sig = [e["signal"] for e in steps]
    assert len(sig) == 8
    for s in sig:
        assert {"reward_mean", "reward_std", "completion_length"} <= set(s)
        assert all(math.isfinite(v) for v in s.values())
        # the length reward: 1 - |chars - 64| / 64, clipped at 0 (ftadvisor.train.techniques.reward_length)
        assert 0.0 <= s["reward_mean"] <= 1.0 and s["reward_std"] >= 0
        assert 1 <= s["completion_length"] <= 16  # rl_max_new_tokens
    assert "kl" not in sig[0]  # grpo_beta = 0: no reference model, trl logs no KL
    # a reward that can tell completions apart: spread in every group-batch, and a mean that moves
    assert min(s["reward_std"] for s in sig) > 0  # measured 0.04 .. 0.16
    means = [s["reward_mean"] for s in sig]
    assert max(means) - min(means) > 0.05  # measured 0.50 .. 0.70
    # GRPO's per-step advantages sum to zero, so its loss is ~0: the signal, not the loss, shows learning
    assert all(abs(e["loss"]) < 1e-3 for e in steps)
    err = res.stderr
    assert "reward " in err and " std " in err and " len 16.0" in err
    for noise in NOISE:
        assert noise not in err, noise


# --- every objective's trl trainer really logs the keys the mapping reads ------------------------

_PAIRS = [{"prompt": "capital of france?", "chosen": " paris", "rejected": " rome"},
          {"prompt": "seven plus three?", "chosen": " ten", "rejected": " twelve"}] * 2
_PROMPTS = [{"prompt": p["prompt"]} for p in _PAIRS] * 2


@pytest.mark.parametrize("technique,data,extra,expected", [
    ("orpo+lora", _PAIRS, {}, {"accuracy", "reward_chosen", "reward_rejected", "margin", "log_odds_ratio"}),
    ("kto+lora", _PAIRS, {}, {"reward_chosen", "reward_rejected", "margin", "kl"}),
    ("ppo+lora", _PROMPTS, {}, {"reward_mean", "kl", "rlhf_reward"}),
    ("grpo+lora", _PROMPTS, {"grpo_beta": 0.1, "micro_batch_size": 2}, {"reward_mean", "reward_std", "kl",
                                                                          "completion_length"}),
])
def test_each_trainer_fills_its_signal(tiny_model, technique, data, extra, expected):
    """Two steps of each other objective: every fixed name of the mapping is filled from what trl 1.12
    logged (a renamed key upstream fails here), and the values are finite."""
    import torch

    from ftadvisor.train.engine import TrainJob, build, run
    from ftadvisor.train.signals import SIGNALS

    torch.set_num_threads(1)
    plan = ftadvisor_plan(technique, **extra)
    session = build(TrainJob(model=str(tiny_model), plan=plan, data=data, max_steps=2, learning_rate=1e-2,
                             save_final=False, random_init=technique.startswith("ppo")))
    result = run(session)
    last = {k: v for k, v in result.signals[-1].items() if k != "step"}
    assert set(last) == expected == {s.name for s in SIGNALS[technique.split("+")[0]]}
    assert all(math.isfinite(v) for v in last.values())


def ftadvisor_plan(technique, **extra):
    import ftadvisor

    knobs = dict(seq_len=32, micro_batch_size=4, lora_r=4, rl_max_new_tokens=8, grpo_num_generations=2,
                 gradient_checkpointing=False)
    return ftadvisor.make_plan(technique, **{**knobs, **extra})
