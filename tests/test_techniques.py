"""Every registered technique part is complete: its declarations evaluate in the cost models, its
training hook exists, its evidence keys are in profiles/quality/evidence.yaml, and the CPU
calibration sweep measures it. A new method or objective is one module in ftadvisor/techniques/;
this table is what tells its author what else it needs.
"""

from __future__ import annotations

import importlib

import pytest
import yaml

import ftadvisor as fa
from ftadvisor.techniques import METHODS, OBJECTIVES, Technique, all_techniques, parse_technique
from tests.conftest import ROOT

EVIDENCE = yaml.safe_load((ROOT / "profiles" / "quality" / "evidence.yaml").read_text())
CPU_SWEEP = yaml.safe_load((ROOT / "calibration" / "sweeps" / "cpu-tiny.yaml").read_text())

TINY_MOE = dict(model_type="mixtral", vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                max_position_embeddings=1024, tie_word_embeddings=False)


def _swept_parts() -> tuple[set[str], set[str]]:
    methods, objectives = set(), set()
    for case in CPU_SWEEP["cases"]:
        t = parse_technique(case["technique"])
        methods.add(t.method.name)
        objectives.add(t.objective.name)
    return methods, objectives


def _hook(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


PARTS = [pytest.param(m, id=f"method-{n}") for n, m in METHODS.items()] + \
        [pytest.param(o, id=f"objective-{n}") for n, o in OBJECTIVES.items()]


@pytest.mark.parametrize("part", PARTS)
def test_part_is_complete(part):
    is_method = part.name in METHODS and METHODS[part.name] is part
    # 1. it declares what a user reads about it
    assert part.summary and part.source
    # 2. its declarations evaluate: memory, speed and quality for a technique that uses it
    tech = Technique(OBJECTIVES["sft"], part) if is_method else Technique(part, METHODS["lora"])
    model = TINY_MOE if (is_method and part.requires_moe) else "llama-3.2-1b"
    est = fa.estimate(model, "h100", tech.name, with_speed=True, goal="chat", examples=10_000,
                      rl_max_new_tokens=64, seq_len=512)
    assert est.memory.peak_allocated_bytes > 0 and est.trainable_params > 0
    assert est.speed.tokens_per_second_total > 0 and est.quality.high >= est.quality.low
    # 3. its training hook exists (imported the way the engine imports it)
    assert callable(_hook(part.train_hook)), part.train_hook
    # 4. its evidence keys exist
    known = set(EVIDENCE.get("factors", {})) | set(EVIDENCE.get("figures", {}))
    missing = [k for k in part.evidence if k not in known]
    assert not missing, f"{part.name}: evidence keys not in evidence.yaml: {missing}"
    if not is_method:
        # 5. an objective says which data it takes
        assert part.data_formats and part.default_learning_rate > 0
    # 6. the CPU calibration sweep measures it
    methods, objectives = _swept_parts()
    assert part.name in (methods if is_method else objectives)


def test_estimate_all_lists_every_part():
    names = all_techniques()
    assert set(METHODS) <= set(names)
    assert {o for o in OBJECTIVES if o != "sft"} <= set(names)
    assert all(f"{o}+lora" in names for o in OBJECTIVES if o != "sft")
