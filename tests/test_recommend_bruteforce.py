"""The recommender against an exhaustive search (issue 14: "no test checks that the chosen configuration
is the fastest one that fits").

For seeded random questions (model, GPU, GPU count, goal, data size, sequence length) every point of the
grid the recommender says it searches is estimated on its own through the public API
(:func:`ftadvisor.estimate`, one plan at a time, never the recommender's helpers), and:

1. for every technique it keeps, its configuration fits and no fitting grid point is faster: shortest
   wall-clock time when a data size is given (what the plans are then ranked by), most tokens/s
   otherwise;
2. every technique it turns down for memory has no fitting grid point at all, and every other
   rejection names a budget that the plan really breaks or an objective that does not apply;
3. the ranking follows its stated rule, recomputed here from each plan's quality, range, evidence and
   time: the risk-aware score ``quality - 0.5 x (quality - low) - 0.05 x log2(hours / fastest hours)``,
   best first, ties to the faster; then a plan on weak evidence moves to just below the last plan with
   moderate or strong evidence and at least its expected quality (when that one ranks below it);
4. every technique the data allows appears, ranked or rejected.

The grid, written out here from the recommender's docstring and comments (so that a change to the
search shows up as a failure here, not as a silent change of what is checked):

- micro-batch 1, 2, 4, 8, 16, 32 (from 2 for KTO, whose trainer needs two) with gradient accumulation ceil(16 / (micro-batch x GPUs)), at least 1
  (a global batch of 16 sequences held constant);
- gradient checkpointing off and on;
- optimizer adamw, adamw_8bit and paged_adamw_8bit for full-weight methods (full, half_ft, moe), adamw
  for the others;
- sharding "none" on one GPU; ddp, zero2, zero3 and fsdp on several, with CPU offload off and on for
  zero2, zero3 and fsdp;
- sequence length: the caller's, else the next power of two above the average example length (at
  least 256), else 2048, capped at the model's context;
- LoRA rank by goal (Biderman et al. 2024): chat/preference/rl 16, facts/math 64, code/domain 256;
- "fits": ``estimate(...).fits`` and the device total within (1 - memory_headroom) of the card.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import pytest

import ftadvisor as fa

MODELS = ["qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "gemma-2-2b", "llama-3.2-3b", "phi-3-mini",
          "llama-3.1-8b", "mistral-7b", "qwen2.5-14b", "mixtral-8x7b", "qwen3-30b-a3b", "llama-3.1-70b"]
GPUS = ["t4", "l4", "rtx4090-24gb", "a100-40gb", "a100-80gb", "h100-sxm", "h200", "mi300x"]
GOALS = ["chat", "domain", "code", "math", "preference", "rl", "facts"]
RANK = {"chat": 16, "preference": 16, "rl": 16, "facts": 64, "math": 64, "code": 256, "domain": 256}
DATA_FOR_GOAL = {"chat": "chat", "domain": "text", "code": "chat", "math": "chat", "preference": "preference",
                 "rl": "prompts", "facts": "facts"}
HEADROOM = 0.05
GLOBAL_BATCH = 16
# other seeds and more questions: FTADVISOR_BRUTEFORCE_SEED=3 FTADVISOR_BRUTEFORCE_N=40 pytest ...
SEED = int(os.environ.get("FTADVISOR_BRUTEFORCE_SEED", "14"))
N_QUESTIONS = int(os.environ.get("FTADVISOR_BRUTEFORCE_N", "16"))


@dataclass(frozen=True)
class Question:
    model: str
    gpu: str
    num_gpus: int
    goal: str
    examples: int | None
    avg_tokens: float | None
    seq_len: int | None
    budget_hours: float | None

    def kwargs(self) -> dict[str, Any]:
        return dict(num_gpus=self.num_gpus, num_nodes=1, goal=self.goal, examples=self.examples,
                    avg_tokens=self.avg_tokens, seq_len=self.seq_len, budget_hours=self.budget_hours)

    @property
    def sized(self) -> bool:
        return self.examples is not None

    def __str__(self) -> str:
        return (f"{self.model}-{self.gpu}x{self.num_gpus}-{self.goal}-ex{self.examples}-avg{self.avg_tokens}"
                f"-s{self.seq_len}-b{self.budget_hours}")


def questions(seed: int = SEED, n: int = N_QUESTIONS) -> list[Question]:
    """Seeded random questions; half of them without a data size (ranked by tokens/s, where the
    recommender keeps only the largest fitting micro-batch of each group), half with one (ranked by
    wall-clock time, padding included)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        sized = k % 2 == 0
        out.append(Question(
            model=rng.choice(MODELS), gpu=rng.choice(GPUS), num_gpus=rng.choice([1, 1, 2, 4, 8]),
            goal=rng.choice(GOALS),
            examples=rng.choice([2_000, 50_000]) if sized else None,
            avg_tokens=rng.choice([None, 300.0, 1500.0]),
            seq_len=rng.choice([None, None, 512, 4096]),
            budget_hours=rng.choice([None, None, 2.0, 20.0]) if sized else None,
        ))
    return out


QUESTIONS = questions()


# --- the spec, independent of the recommender's code -------------------------------------------------


def expected_techniques(model: str, goal: str) -> set[str]:
    data = DATA_FOR_GOAL[goal]
    if data in ("chat", "text", "facts"):
        techs = {"full", "lora", "qlora", "dora", "ia3", "adapter", "half_ft"}
        if data == "facts":
            techs.add("lamini")
        if fa.resolve_model(model).arch.is_moe:
            techs.add("moe")
        return techs
    objs = ("dpo", "orpo", "kto") if data == "preference" else ("grpo", "ppo")
    return {t for o in objs for t in (o, f"{o}+lora", f"{o}+qlora")}


def seq_len_for(q: Question) -> int:
    if q.seq_len:
        return q.seq_len
    s = 2 ** math.ceil(math.log2(max(q.avg_tokens, 256))) if q.avg_tokens else 2048
    cap = fa.resolve_model(q.model).arch.max_position_embeddings or s
    return int(min(s, cap))


def grid(q: Question, technique: str) -> list[dict[str, Any]]:
    method = fa.parse_technique(technique).method.name
    full_weight = method in ("full", "half_ft", "moe")
    optimizers = ["adamw", "adamw_8bit", "paged_adamw_8bit"] if full_weight else ["adamw"]
    shardings = ["none"] if q.num_gpus == 1 else ["ddp", "zero2", "zero3", "fsdp"]
    r = RANK[q.goal] if method in ("lora", "qlora", "dora") else 16
    points = []
    for sharding in shardings:
        offloads = (False, True) if sharding in ("zero2", "zero3", "fsdp") else (False,)
        for mb in (1, 2, 4, 8, 16, 32) if not technique.startswith("kto") else (2, 4, 8, 16, 32):
            for ckpt in (False, True):
                for opt in optimizers:
                    for off in offloads:
                        points.append(dict(
                            technique=technique, num_gpus=q.num_gpus, num_nodes=1, sharding=sharding,
                            micro_batch_size=mb,
                            gradient_accumulation_steps=max(1, math.ceil(GLOBAL_BATCH / (mb * q.num_gpus))),
                            gradient_checkpointing=ckpt, optimizer=opt, cpu_offload=off, seq_len=seq_len_for(q),
                            lora_r=r))
    return points


def fits(q: Question, est: fa.Estimate) -> bool:
    cap = fa.resolve_hardware(q.gpu).memory_bytes * (1 - HEADROOM)
    return est.fits and est.memory.device_total_bytes <= cap


def hours(q: Question, est: fa.Estimate) -> float:
    """The time the recommender ranks by: wall-clock hours with a data size, else seconds per token."""
    if est.time_cost is not None:
        return est.time_cost.wall_clock_hours
    return 1 / max(est.speed.tokens_per_second_total, 1e-9)


def fitting_points(q: Question, technique: str) -> list[fa.Estimate]:
    """Every grid point that fits, each estimated on its own (memory first; speed and time for the
    fitting ones)."""
    out = []
    for fields in grid(q, technique):
        if not fits(q, fa.estimate(q.model, q.gpu, plan=fields)):
            continue
        out.append(fa.estimate(q.model, q.gpu, plan=fields, with_speed=True, goal=q.goal, examples=q.examples,
                               avg_tokens=q.avg_tokens))
    return out


def same_point(plan: fa.TrainingPlan, fields: dict[str, Any]) -> bool:
    return all(getattr(plan, k) == v for k, v in fields.items())


# --- the checks --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def answers():
    cache: dict[Question, fa.Recommendation] = {}

    def get(q: Question) -> fa.Recommendation:
        if q not in cache:
            cache[q] = fa.recommend(q.model, q.gpu, top=1000, **q.kwargs())
        return cache[q]

    return get


def test_questions_cover_the_space():
    # enough variety to mean something: both rankings, single and multi GPU, MoE and dense,
    # all three data families
    assert {q.sized for q in QUESTIONS} == {True, False}
    assert {q.num_gpus > 1 for q in QUESTIONS} == {True, False}
    assert any(fa.resolve_model(q.model).arch.is_moe for q in QUESTIONS)
    assert {DATA_FOR_GOAL[q.goal] in ("chat", "text", "facts") for q in QUESTIONS} == {True, False}
    assert len({q.gpu for q in QUESTIONS}) >= 5 and len({q.model for q in QUESTIONS}) >= 6


@pytest.mark.parametrize("q", QUESTIONS, ids=str)
def test_each_kept_technique_uses_its_fastest_fitting_configuration(q, answers):
    rec = answers(q)
    for p in rec.plans + tuple(r for r in rec.rejected if any("budget" in x for x in r.reasons)):
        tech = p.plan.technique
        points = fitting_points(q, tech)
        assert points, f"{tech}: recommended, but no grid point fits"
        # the chosen plan is a grid point, and it fits
        assert any(same_point(p.plan, f) for f in grid(q, tech)), (tech, p.plan)
        chosen = fa.estimate(q.model, q.gpu, plan=p.plan, with_speed=True, goal=q.goal, examples=q.examples,
                             avg_tokens=q.avg_tokens)
        assert fits(q, chosen), tech
        if q.sized:
            best = min(points, key=lambda e: e.time_cost.wall_clock_hours)
            assert chosen.time_cost.wall_clock_hours <= best.time_cost.wall_clock_hours * (1 + 1e-9), (
                f"{tech}: chose mb {p.plan.micro_batch_size}, ckpt {p.plan.gradient_checkpointing}, "
                f"{p.plan.optimizer}, {p.plan.sharding}: {chosen.time_cost.wall_clock_hours:.4f} h; "
                f"{best.plan.micro_batch_size}/{best.plan.gradient_checkpointing}/{best.plan.optimizer}/"
                f"{best.plan.sharding}/offload {best.plan.cpu_offload} takes {best.time_cost.wall_clock_hours:.4f} h")
        else:
            best = max(points, key=lambda e: e.speed.tokens_per_second_total)
            assert chosen.speed.tokens_per_second_total >= best.speed.tokens_per_second_total * (1 - 1e-9), (
                f"{tech}: chose mb {p.plan.micro_batch_size}, ckpt {p.plan.gradient_checkpointing}, "
                f"{p.plan.optimizer}, {p.plan.sharding}: {chosen.speed.tokens_per_second_total:.0f} tok/s; "
                f"mb {best.plan.micro_batch_size}/{best.plan.gradient_checkpointing}/{best.plan.optimizer}/"
                f"{best.plan.sharding}/offload {best.plan.cpu_offload} gives {best.speed.tokens_per_second_total:.0f}")
        # what the recommender reports for the plan is what the estimator says
        assert p.estimate.speed.tokens_per_second_total == pytest.approx(chosen.speed.tokens_per_second_total)


@pytest.mark.parametrize("q", QUESTIONS, ids=str)
def test_rejections_are_true(q, answers):
    rec = answers(q)
    for p in rec.rejected:
        tech = p.plan.technique
        if any("does not fit" in r for r in p.reasons):
            assert not fitting_points(q, tech), f"{tech} rejected as not fitting, but a grid point fits"
            assert not fits(q, fa.estimate(q.model, q.gpu, plan=p.plan)), tech
        elif any("budget" in r for r in p.reasons):
            assert q.budget_hours is not None
            assert p.estimate.time_cost.wall_clock_hours > q.budget_hours, tech
        else:
            assert p.estimate.quality is not None and not p.estimate.quality.applicable, (tech, p.reasons)


@pytest.mark.parametrize("q", QUESTIONS, ids=str)
def test_every_allowed_technique_is_answered_once(q, answers):
    rec = answers(q)
    answered = [p.plan.technique for p in rec.plans + rec.rejected]
    assert sorted(answered) == sorted(expected_techniques(q.model, q.goal))


def stated_score(p: fa.RankedPlan, hours_: float, fastest: float, risk: float = 0.5, per_doubling: float = 0.05
                 ) -> float:
    """The documented risk-aware score, from the plan's quality estimate and time."""
    qe = p.estimate.quality
    return qe.relative_to_full - risk * (qe.relative_to_full - qe.low) - per_doubling * math.log2(hours_ / fastest)


def stated_order(items: list[tuple[str, float, float, float, bool]]) -> list[str]:
    """The documented order for (name, score, hours, quality, weak) items, built by sorting on a
    position key (not by moving plans one at a time, as the recommender does): score order, then
    each weak item placed just after the last strong-or-moderate item with at least its quality
    when that item comes later, items moved behind the same one in score order."""
    by_score = sorted(items, key=lambda t: (-t[1], t[2]))
    pos = {it[0]: k for k, it in enumerate(by_score)}

    def key(it):
        name, _, _, quality, weak = it
        if weak:
            behind = [pos[o[0]] for o in by_score if not o[4] and o[3] >= quality]
            if behind and max(behind) > pos[name]:
                return (max(behind), 1, pos[name])
        return (pos[name], 0, 0)

    return [it[0] for it in sorted(by_score, key=key)]


@pytest.mark.parametrize("q", QUESTIONS, ids=str)
def test_ranking_follows_the_stated_score(q, answers):
    rec = answers(q)
    plans = rec.plans
    assert [p.rank for p in plans] == list(range(1, len(plans) + 1))
    if not plans:
        return
    h = [hours(q, p.estimate) for p in plans]
    fastest = min(h)
    scores = [stated_score(p, x, fastest) for p, x in zip(plans, h)]
    for p, s in zip(plans, scores):
        assert p.score == pytest.approx(s, abs=1e-4)
    weak = [p.estimate.quality.evidence_strength == "weak" for p in plans]
    items = [(p.plan.technique, s, x, p.estimate.quality.relative_to_full, w)
             for p, s, x, w in zip(plans, scores, h, weak)]
    assert [p.plan.technique for p in plans] == stated_order(items)
    # the property the rule exists for: no weak plan above a better-evidenced one of at least its quality
    for i, a in enumerate(plans):
        for b in plans[i + 1:]:
            assert not (weak[i] and b.estimate.quality.evidence_strength != "weak"
                        and b.estimate.quality.relative_to_full >= a.estimate.quality.relative_to_full), (
                a.plan.technique, b.plan.technique)


def test_stated_order_moves_weak_plans_only_behind_better_evidence():
    # the oracle itself, on hand-made items: (name, score, hours, quality, weak)
    items = [("w_fast", 0.99, 1.0, 1.0, True), ("s_slow", 0.97, 3.0, 1.0, False), ("m_low", 0.98, 2.0, 0.9, False),
             ("w2", 0.985, 1.5, 0.95, True)]
    # score order: w_fast, w2, m_low, s_slow; w_fast (1.0) must follow s_slow (1.0); w2 (0.95) too,
    # and keeps its place after w_fast; m_low (0.9) does not move anything
    assert stated_order(items) == ["m_low", "s_slow", "w_fast", "w2"]


def test_quality_alone_ranks_by_quality():
    # quality_per_time_doubling = 0 and risk_aversion = 0: the score is the expected quality alone
    # (the evidence rule only reorders weak plans among plans of equal expected quality then)
    rec = fa.recommend("llama-3.2-1b", "a100-80gb", goal="code", examples=20_000, quality_per_time_doubling=0,
                       risk_aversion=0)
    qs = [p.estimate.quality.relative_to_full for p in rec.plans]
    assert len(qs) > 2 and qs == sorted(qs, reverse=True)
    assert [p.score for p in rec.plans] == pytest.approx(qs, abs=1e-4)


def test_low_end_alone_ranks_by_low_end():
    # risk_aversion = 1, no price on time: the score is the low end of the quality range
    rec = fa.recommend("llama-3.2-1b", "a100-80gb", goal="code", examples=20_000, quality_per_time_doubling=0,
                       risk_aversion=1)
    assert [p.score for p in rec.plans] == pytest.approx([p.estimate.quality.low for p in rec.plans], abs=1e-4)
