"""The recommender: search the plan space, drop what does not fit, rank the rest, say why.

    rec = ftadvisor.recommend("llama-3.1-8b", "rtx4090-24gb", goal="chat", examples=20000)
    for p in rec.plans: print(p.rank, p.plan.technique, p.reasons)

How it searches (all through the same pure estimator the CLI uses):
1. Which objectives the data allows (preference pairs -> DPO/ORPO, prompts with a reward ->
   GRPO/PPO, chat pairs, raw text or facts -> SFT), and which methods go with each.
2. For every technique, a grid over micro-batch x gradient checkpointing x optimizer x sharding
   (and CPU offload on several GPUs) is evaluated at once with :func:`estimate_grid`; the plans
   that fit with the requested headroom are kept, at a global batch held constant through
   gradient accumulation (each micro-batch's memory is evaluated at the accumulation it runs with).
3. Each surviving configuration gets a throughput estimate; the fastest per technique is kept:
   the shortest wall-clock time when a data size is given (micro-batches pad to their longest
   sequence, so a larger micro-batch can process more positions), else the most tokens/s. It is
   then scored with the quality model, time and cost. The score is the expected quality
   (relative to full fine-tuning) minus ``quality_per_time_doubling`` (default 0.05) for each
   doubling of wall-clock time over the fastest plan: a stated preference, not a fact, that a
   caller can change (0 ranks by quality alone).
4. Techniques with no fitting configuration are returned as ``rejected``, each with what would
   make it fit (more GPUs, a shorter sequence, another method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from ftadvisor.errors import FtAdvisorError, check_size
from ftadvisor.estimator import estimate, estimate_grid, make_plan
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.schema import Estimate, HardwareProfile, ModelProfile, SpeedEstimate, TrainingPlan
from ftadvisor.techniques import METHODS, OBJECTIVES, Technique, parse_technique

GIB = 2**30

GOALS = ("chat", "domain", "code", "math", "preference", "rl", "facts")
DATA_KINDS = ("chat", "preference", "text", "facts", "prompts")
DEFAULT_DATA = {"chat": "chat", "domain": "text", "code": "chat", "math": "chat", "preference": "preference",
                "rl": "prompts", "facts": "facts"}
# The objectives each kind of data trains, as the objectives declare them (ftadvisor/techniques/).
OBJECTIVES_FOR_DATA = {
    kind: tuple(sorted((n for n, o in OBJECTIVES.items() if kind in o.recommend_data_kinds),
                       key=lambda n: OBJECTIVES[n].recommend_priority))
    for kind in DATA_KINDS
}
DATA_REASON = {
    "chat": "supervised fine-tuning because you have instruction/chat pairs",
    "text": "continued pre-training (SFT on raw text) because you have a domain corpus",
    "facts": "supervised fine-tuning on your fact list (memory experts are an option for exact recall)",
    "preference": "a preference objective because you have chosen/rejected pairs (DPO/ORPO learn from them directly)",
    "prompts": "an RL objective because you have prompts with a reward",
}
# LoRA rank by goal: Biderman et al. 2024 ("LoRA Learns Less and Forgets Less", Fig. 2/Tables S1-S3):
# code instruction tuning reaches 0.72/0.84/1.00 of full FT at r=16/64/256, math 0.90/0.97/0.99;
# continued pre-training needs the highest ranks; chat-style instruction tuning is flat in rank.
RANK_FOR_GOAL = {"chat": 16, "preference": 16, "rl": 16, "facts": 64, "math": 64, "code": 256, "domain": 256}
RANK_REASON = {
    16: "rank 16: chat/preference tuning is insensitive to rank (Biderman et al. 2024; QLoRA paper Table 4)",
    64: "rank 64: math tuning loses ~10% at rank 16 but ~3% at 64 (Biderman et al. 2024, Table S3)",
    256: "rank 256: code and continued pre-training keep improving up to r=256 (Biderman et al. 2024, Tables S1/S3)",
}
TARGET_GLOBAL_BATCH = 16  # sequences per optimizer step held constant across plans
MICRO_BATCHES = (1, 2, 4, 8, 16, 32)  # micro-batch sizes searched


class RankedPlan(BaseModel):
    """One recommended (or rejected) plan with its estimate and the reasons in plain words."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    rank: int
    """1 = best; 0 for rejected plans."""
    plan: TrainingPlan
    """The plan."""
    estimate: Estimate
    """Memory, speed, time, cost and quality."""
    reasons: tuple[str, ...]
    """Why this plan (or why it was rejected and what would make it fit)."""
    score: float
    """Ranking key used: expected quality minus quality_per_time_doubling x log2(time / fastest
    plan's time), rounded to 4 decimals; higher is better (0 for rejected plans)."""


class Recommendation(BaseModel):
    """The recommender's answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    """Model profile id."""
    hardware_id: str
    """Hardware profile id."""
    num_gpus: int
    """GPUs planned for."""
    goal: str
    """Task family."""
    data_kind: str
    """Kind of data the plans train on."""
    plans: tuple[RankedPlan, ...]
    """Fitting plans, best first."""
    rejected: tuple[RankedPlan, ...]
    """Techniques that do not fit (or break a budget), with what would make them fit."""
    notes: tuple[str, ...] = ()
    """Anything about the inputs worth saying."""


# --- building blocks ---------------------------------------------------------------------------


def _methods_for(objective: str, data_kind: str, mp: ModelProfile, goal: str) -> list[str]:
    """The methods to plan with ``objective`` on this data and model, as the methods declare."""
    sft = OBJECTIVES[objective].sft_loss
    out = []
    for name, m in METHODS.items():
        if not sft and not m.offered_for_preference:
            continue
        if m.offered_data_kinds is not None and data_kind not in m.offered_data_kinds:
            continue
        if m.requires_moe and not mp.arch.is_moe:
            continue
        out.append(name)
    return out


def _technique_name(objective: str, method: str) -> str:
    return Technique(OBJECTIVES[objective], METHODS[method]).name


def _seq_len_for(mp: ModelProfile, seq_len: int | None, avg_tokens: float | None) -> int:
    if seq_len:
        return int(seq_len)
    if avg_tokens:
        s = 2 ** math.ceil(math.log2(max(avg_tokens, 256)))
    else:
        s = 2048
    cap = mp.arch.max_position_embeddings or s
    return int(min(s, cap))


def _sharding_options(num_gpus: int) -> list[str]:
    return ["none"] if num_gpus == 1 else ["ddp", "zero2", "zero3", "fsdp"]


def max_micro_batch(model, hardware, technique: str, headroom: float = 0.0, limit: int = 4096, **plan_fields) -> int:
    """Largest micro-batch that fits (0 if not even 1 does)."""
    return _largest_fitting(model, hardware, technique, "micro_batch_size", 1, limit, headroom, plan_fields)


def max_seq_len(model, hardware, technique: str, headroom: float = 0.0, limit: int | None = None, **plan_fields) -> int:
    """Longest sequence that fits at the given micro-batch (0 if not even 128 tokens do)."""
    mp = resolve_model(model)
    limit = limit or mp.arch.max_position_embeddings or 131072
    return _largest_fitting(mp, hardware, technique, "seq_len", 128, limit, headroom, plan_fields)


def _fits(est: Estimate, headroom: float) -> bool:
    hw = resolve_hardware(est.hardware_id)
    return est.fits and est.memory.device_total_bytes <= hw.memory_bytes * (1 - headroom)


def _largest_fitting(model, hardware, technique, field, lo, hi, headroom, plan_fields) -> int:
    def ok(v):
        return _fits(estimate(model, hardware, technique, **{**plan_fields, field: v}), headroom)

    if not ok(lo):
        return 0
    # grow geometrically, then bisect
    good, bad = lo, None
    v = lo
    while v < hi:
        v = min(hi, v * 2)
        if ok(v):
            good = v
        else:
            bad = v
            break
    if bad is None:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def min_gpus(model, hardware, technique: str, max_gpus: int = 1024, gpus_per_node: int = 8, headroom: float = 0.0,
             **plan_fields) -> tuple[int, str] | None:
    """Fewest GPUs of this type (and the sharding) that fit the technique; None if even max_gpus do not."""
    n = 1
    while n <= max_gpus:
        nodes = max(1, math.ceil(n / gpus_per_node))
        if n % nodes:
            n *= 2
            continue
        for sharding in _sharding_options(n):
            fields = {**plan_fields, "num_gpus": n, "num_nodes": nodes, "sharding": sharding}
            if _fits(estimate(model, hardware, technique, **fields), headroom):
                return n, sharding
        n *= 2
    return None


# --- the search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Question:
    """What one :func:`recommend` call asks, as each technique's search reads it."""

    mp: ModelProfile
    hw: HardwareProfile
    num_gpus: int
    num_nodes: int
    goal: str
    data_kind: str
    seq_len: int
    rank: int
    headroom: float
    examples: int | None
    avg_tokens: float | None
    dataset_tokens: float | None
    epochs: float
    hourly_price_usd: float | None
    budget_hours: float | None
    budget_usd: float | None

    @property
    def sized(self) -> bool:
        """A data size is given (time and cost can be computed)."""
        return self.examples is not None or self.dataset_tokens is not None


def _check_question(goal: str, data_kind: str | None, num_gpus: int, num_nodes: int, memory_headroom: float,
                    sizes: dict[str, float | None], hourly_price_usd: float | None) -> str:
    """Validate the inputs; returns the data kind (the goal's default when not given)."""
    if goal not in GOALS:
        raise FtAdvisorError("goal", f"unknown {goal!r}", GOALS)
    data_kind = data_kind or DEFAULT_DATA[goal]
    if data_kind not in DATA_KINDS:
        raise FtAdvisorError("data_kind", f"unknown {data_kind!r}", DATA_KINDS)
    for name, val in sizes.items():
        check_size(name, val)
    check_size("hourly_price_usd", hourly_price_usd, allow_zero=True)
    if not 0 <= memory_headroom < 1:
        raise FtAdvisorError("memory_headroom", "must be a fraction in [0, 1)")
    if num_gpus < 1 or num_nodes < 1 or num_gpus % num_nodes:
        raise FtAdvisorError("num_gpus", f"{num_gpus} GPUs cannot be split evenly over {num_nodes} nodes")
    return data_kind


def _technique_grids(q: _Question, tech: str, meth) -> list:
    """Step 2: one grid per sharding over micro-batch x checkpointing x optimizer (x CPU offload)."""
    grids = []
    for sharding in _sharding_options(q.num_gpus):
        grids.append(estimate_grid(
            q.mp, q.hw, technique=tech, num_gpus=q.num_gpus, num_nodes=q.num_nodes, seq_len=q.seq_len,
            micro_batch_size=list(MICRO_BATCHES), gradient_checkpointing=[False, True],
            optimizer=list(meth.recommend_optimizers), sharding=sharding, lora_r=q.rank if meth.lora else 16,
            # CPU offload exists for the sharded layouts only (ZeRO-Offload, FSDP CPUOffload)
            cpu_offload=[False, True] if sharding in ("zero2", "zero3", "fsdp") else False,
            # each micro-batch is evaluated at the accumulation it will run with (rows with
            # another accumulation are dropped below): accumulation > 1 keeps the gradients
            # alive across micro-batches, and GRPO/PPO generate micro-batch x accumulation
            # completions at once
            gradient_accumulation_steps=sorted({_accumulation(mb, q.num_gpus) for mb in MICRO_BATCHES}),
        ))
    return grids


def _rejected(q: _Question, est: Estimate) -> RankedPlan:
    """A technique that does not fit, with what would make it fit."""
    return RankedPlan(rank=0, plan=est.plan, estimate=est, score=0.0,
                      reasons=tuple(_why_not(q.mp, q.hw, est, q.headroom, q.num_gpus)))


def _closest_miss(q: _Question, grids: list) -> RankedPlan:
    """Step 4: the smallest configuration (at the accumulation it would run with), rejected."""
    g, i = min(((g, i) for g in grids for i in _fitting_rows(g.columns, math.inf, q.num_gpus)),
               key=lambda gi: gi[0].columns["device_total_bytes"][gi[1]])
    return _rejected(q, g.estimate(i))


def _fastest_fitting(q: _Question, candidates: list) -> tuple[TrainingPlan, SpeedEstimate] | None:
    """Step 3: the fastest fitting configuration (plan, speed): shortest wall-clock time when the data
    size is known (padding and the last partial step depend on the micro-batch), else most tokens/s."""
    from ftadvisor.speed import estimate_speed, estimate_time_cost

    ranked = []
    for grid, i in candidates:
        row = grid.row(i)
        plan = make_plan(**{k: row[k] for k in TrainingPlan.model_fields if k in row})
        sp = estimate_speed(q.mp, q.hw, plan)
        if q.sized:
            tc = estimate_time_cost(sp, q.hw, plan, dataset_tokens=q.dataset_tokens, examples=q.examples,
                                    avg_tokens_per_example=q.avg_tokens if q.dataset_tokens is None else None,
                                    epochs=q.epochs)
            key = (tc.wall_clock_hours, -sp.tokens_per_second_total)
        else:
            key = (-sp.tokens_per_second_total,)
        ranked.append((key, len(ranked), plan, sp))
    ranked.sort(key=lambda t: t[:2])
    for _, _, plan, sp in ranked:
        # the grid and the single-plan estimate are the same model; check the chosen plan anyway
        if _fits(estimate(q.mp, q.hw, plan=plan), q.headroom):
            return plan, sp
    return None


def _plan_reasons(q: _Question, objective: str, meth, plan: TrainingPlan, est: Estimate,
                  unquantized_fits: bool) -> list[str]:
    """Why this plan: the data, the method's own reasons, the rank, the knobs, the quality."""
    q_est = est.quality
    reasons = [DATA_REASON[q.data_kind]] if not OBJECTIVES[objective].sft_loss or meth.reference_method else []
    reasons += meth.recommend_reasons(_ReasonContext(q.mp, q.hw, est, unquantized_fits))
    if meth.lora:
        reasons.append(RANK_REASON[q.rank])
    reasons.append(_knob_reason(plan, est, q.hw))
    if q_est.notes:
        reasons.append(f"quality {q_est.relative_to_full:.2f} of full FT ({q_est.low:.2f}–{q_est.high:.2f}): "
                       f"{q_est.notes}")
    return reasons


def _over_budget(q: _Question, tc) -> list[str]:
    """The budgets the plan breaks."""
    over = []
    if q.budget_hours is not None and tc is not None and tc.wall_clock_hours > q.budget_hours:
        over.append(f"takes {tc.wall_clock_hours:.1f} h > budget {q.budget_hours:g} h")
    if q.budget_usd is not None and tc is not None and tc.cost_usd is not None and tc.cost_usd > q.budget_usd:
        over.append(f"costs ${tc.cost_usd:,.0f} > budget ${q.budget_usd:,.0f}")
    return over


def _search_technique(q: _Question, objective: str, method: str, best_fitting_by_method: dict[str, Estimate]
                      ) -> tuple[tuple[float, float, RankedPlan] | None, RankedPlan | None]:
    """Steps 2-4 for one technique: (kept as (quality, hours, plan), None) or (None, rejected)."""
    tech = _technique_name(objective, method)
    meth = METHODS[method]
    grids = _technique_grids(q, tech, meth)
    candidates = [(g, i) for g in grids
                  for i in _fitting_rows(g.columns, q.hw.memory_bytes * (1 - q.headroom), q.num_gpus,
                                         every_micro_batch=q.sized)]
    if not candidates:
        # closest miss: the smallest configuration (at the accumulation it would run with)
        return None, _closest_miss(q, grids)
    # the fastest fitting configuration: shortest wall-clock time when the data size is known
    # (padding and the last partial step depend on the micro-batch), else most tokens/s
    best = _fastest_fitting(q, candidates)
    if best is None:
        g, i = candidates[0]
        return None, _rejected(q, g.estimate(i))
    plan, sp = best
    est = evaluate_plan(q.mp, q.hw, plan, goal=q.goal, examples=q.examples, avg_tokens=q.avg_tokens,
                        dataset_tokens=q.dataset_tokens, epochs=q.epochs, hourly_price_usd=q.hourly_price_usd)
    tc, qual = est.time_cost, est.quality
    best_fitting_by_method[tech] = est
    sibling = _technique_name(objective, meth.unquantized) if meth.unquantized else None
    reasons = _plan_reasons(q, objective, meth, plan, est, sibling in best_fitting_by_method)
    over = _over_budget(q, tc)
    if over:
        return None, RankedPlan(rank=0, plan=plan, estimate=est, score=0.0, reasons=tuple(over + reasons))
    if not qual.applicable:
        return None, RankedPlan(rank=0, plan=plan, estimate=est, score=0.0,
                                reasons=(f"{tech} does not train on {q.data_kind} data for a {q.goal} goal",)
                                + tuple(reasons))
    hours = tc.wall_clock_hours if tc else 1 / max(sp.tokens_per_second_total, 1e-9)
    return (qual.relative_to_full, hours, RankedPlan(rank=0, plan=plan, estimate=est, score=0.0,
                                                     reasons=tuple(reasons))), None


def _ranked(kept: list[tuple[float, float, RankedPlan]], quality_per_time_doubling: float,
            top: int) -> tuple[RankedPlan, ...]:
    """Step 3's score: expected quality minus ``quality_per_time_doubling`` per doubling of the
    fastest plan's time; best first, ties to the faster plan, the first ``top``."""
    fastest = min((h for _, h, _ in kept), default=1.0)
    scored = []
    for quality, hours, p in kept:
        score = quality - quality_per_time_doubling * math.log2(hours / fastest)
        scored.append((score, hours, p.model_copy(update={"score": round(score, 4)})))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return tuple(p.model_copy(update={"rank": k + 1}) for k, (_, _, p) in enumerate(scored[:top]))


def recommend(
    model: str | dict | ModelProfile,
    hardware: str | HardwareProfile,
    *,
    num_gpus: int = 1,
    num_nodes: int = 1,
    goal: str = "chat",
    data_kind: str | None = None,
    examples: int | None = None,
    avg_tokens: float | None = None,
    dataset_tokens: float | None = None,
    epochs: float = 1.0,
    budget_hours: float | None = None,
    budget_usd: float | None = None,
    hourly_price_usd: float | None = None,
    memory_headroom: float = 0.05,
    seq_len: int | None = None,
    top: int = 10,
    quality_per_time_doubling: float = 0.05,
) -> Recommendation:
    """Ranked fine-tuning plans for this model, hardware, goal and data (see the module docstring)."""
    data_kind = _check_question(goal, data_kind, num_gpus, num_nodes, memory_headroom,
                                {"examples": examples, "avg_tokens": avg_tokens, "dataset_tokens": dataset_tokens,
                                 "epochs": epochs, "budget_hours": budget_hours, "budget_usd": budget_usd},
                                hourly_price_usd)
    mp = resolve_model(model)
    hw = resolve_hardware(hardware)
    notes: list[str] = []
    goal_data = DEFAULT_DATA[goal]
    if data_kind != goal_data:
        notes.append(f"goal {goal!r} usually trains on {goal_data} data; planning for the {data_kind} data you have")
    S = _seq_len_for(mp, seq_len, avg_tokens)
    if examples is not None and avg_tokens is None and dataset_tokens is None:
        notes.append(f"no average example length given: time and cost count every example as seq_len {S} "
                     "tokens (an upper bound); pass avg_tokens to refine")
    q = _Question(mp, hw, num_gpus, num_nodes, goal, data_kind, S, RANK_FOR_GOAL[goal], memory_headroom,
                  examples, avg_tokens, dataset_tokens, epochs, hourly_price_usd, budget_hours, budget_usd)

    kept: list[tuple[float, float, RankedPlan]] = []
    rejected: list[RankedPlan] = []
    best_fitting_by_method: dict[str, Estimate] = {}
    # 1. the objectives the data allows, and the methods that go with each
    for objective in OBJECTIVES_FOR_DATA[data_kind]:
        for method in _methods_for(objective, data_kind, mp, goal):
            # 2.-4. the fastest fitting configuration of the technique, or why it is rejected
            keep, reject = _search_technique(q, objective, method, best_fitting_by_method)
            if keep is not None:
                kept.append(keep)
            else:
                rejected.append(reject)

    plans = _ranked(kept, quality_per_time_doubling, top)
    if not plans:
        notes.append("no plan fits; see `rejected` for what would make one fit")
    return Recommendation(model_id=mp.id, hardware_id=hw.id, num_gpus=num_gpus, goal=goal, data_kind=data_kind,
                          plans=plans, rejected=tuple(rejected), notes=tuple(notes))


def evaluate_plan(
    model: str | dict | ModelProfile,
    hardware: str | HardwareProfile,
    plan: TrainingPlan | dict,
    *,
    goal: str = "chat",
    examples: int | None = None,
    avg_tokens: float | None = None,
    dataset_tokens: float | None = None,
    epochs: float = 1.0,
    hourly_price_usd: float | None = None,
) -> Estimate:
    """One plan scored exactly as :func:`recommend` scores it: memory, speed, time and cost (when a
    dataset size is given) and expected quality for ``goal``. The TUI calls this when a knob changes."""
    return estimate(model, hardware, plan=plan, with_speed=True, goal=goal, examples=examples,
                    avg_tokens=avg_tokens, dataset_tokens=dataset_tokens, epochs=epochs,
                    hourly_price_usd=hourly_price_usd)


def _accumulation(micro_batch: int, num_gpus: int) -> int:
    """Gradient accumulation that holds the global batch at TARGET_GLOBAL_BATCH sequences (at least 1)."""
    return max(1, math.ceil(TARGET_GLOBAL_BATCH / (micro_batch * num_gpus)))


def _fitting_rows(cols, cap: float, num_gpus: int, every_micro_batch: bool = True) -> list[int]:
    """Grid rows that fit under ``cap`` at the accumulation their micro-batch runs with. All of them,
    or (``every_micro_batch=False``) only the largest fitting micro-batch of each (checkpointing,
    optimizer, sharding, offload) group: without a data size the fastest plan is the one with the
    most tokens/s, which grows with the micro-batch."""
    gas, mb = cols["gradient_accumulation_steps"], cols["micro_batch_size"]
    rows = [i for i in range(len(cols["device_total_bytes"]))
            if cols["device_total_bytes"][i] <= cap and int(gas[i]) == _accumulation(int(mb[i]), num_gpus)]
    if every_micro_batch:
        return rows
    best: dict[tuple, int] = {}
    for i in rows:
        key = tuple(cols[k][i] for k in ("gradient_checkpointing", "optimizer", "sharding", "cpu_offload") if k in cols)
        if key not in best or cols["micro_batch_size"][i] > cols["micro_batch_size"][best[key]]:
            best[key] = i
    return list(best.values())


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


class _ReasonContext:
    """What a method's ``recommend_reasons`` hook may look at: the chosen plan's estimate, the card,
    and the same plan over an unquantized base (for a quantized method)."""

    def __init__(self, mp: ModelProfile, hw: HardwareProfile, est: Estimate, unquantized_fits: bool):
        self.mp, self.hw, self.est, self.unquantized_fits = mp, hw, est, unquantized_fits

    gib = staticmethod(lambda x: _gib(x))

    def unquantized_estimate(self) -> Estimate:
        tech = parse_technique(self.est.plan.technique)
        plain = Technique(tech.objective, METHODS[tech.method.unquantized]).name
        return estimate(self.mp, self.hw, plain, **self.est.plan.model_dump(exclude={"technique", "quantization"}))


def _knob_reason(plan: TrainingPlan, est: Estimate, hw: HardwareProfile) -> str:
    parts = [f"micro-batch {plan.micro_batch_size} × accumulation {plan.gradient_accumulation_steps}"]
    parts.append("gradient checkpointing " + ("on (needed to fit)" if plan.gradient_checkpointing else "off (faster; fits)"))
    if plan.optimizer != "adamw":
        parts.append(f"{plan.optimizer} to shrink optimizer state")
    if plan.sharding not in ("none", "ddp"):
        parts.append(f"{plan.sharding}" + (" with CPU offload" if plan.cpu_offload else ""))
    sp = getattr(est, "speed", None)
    tail = f" → {sp.tokens_per_second_total:,.0f} tokens/s" if sp is not None else ""
    return ", ".join(parts) + f": the fastest configuration that fits{tail}"


def _why_not(mp: ModelProfile, hw: HardwareProfile, est: Estimate, headroom: float, num_gpus: int) -> list[str]:
    m = est.memory
    biggest, size = m.largest_component()
    out = [f"{est.technique} does not fit: even its smallest configuration needs {_gib(m.device_total_bytes)} per GPU "
           f"on a {hw.memory_gib:.0f} GiB card (largest part: {biggest.replace('_', ' ')} {_gib(size)})"]
    plan_fields = est.plan.model_dump(exclude={"technique", "num_gpus", "num_nodes", "sharding", "cpu_offload"})
    need = min_gpus(mp, hw, est.technique, max_gpus=512, headroom=headroom, **plan_fields)
    if need:
        out.append(f"would fit on {need[0]} × {hw.id} with {need[1]}")
    s = max_seq_len(mp, hw, est.technique, headroom=headroom,
                    **{k: v for k, v in est.plan.model_dump().items() if k not in ("technique", "seq_len")})
    if s:
        out.append(f"would fit at seq_len ≤ {s}")
    return out
