"""The recommender: search the plan space, drop what does not fit, rank the rest, say why.

    rec = ftadvisor.recommend("llama-3.1-8b", "rtx4090-24gb", goal="chat", examples=20000)
    for p in rec.plans: print(p.rank, p.plan.technique, p.reasons)

What "fits" means, everywhere (recommend, min_gpus, max_micro_batch, max_seq_len, the capacity
command and the TUI): ``estimate(...).fits`` and the device total within ``1 - MEMORY_HEADROOM``
(5%) of the card, so a plan is never offered at 79.5 of 79.7 GiB (:func:`fits_card`).

How it searches (all through the same pure estimator the CLI uses):
1. Which objectives the data allows (preference pairs -> DPO/ORPO, prompts with a reward ->
   GRPO/PPO, chat pairs, raw text or facts -> SFT), and which methods go with each. When none of
   them can learn the goal (a preference goal with only chat data), the plans the data can train
   are still returned, scored against the goal, with a note that says what data the goal needs.
2. For every technique, a grid over micro-batch x gradient checkpointing x optimizer x sharding
   (and CPU offload on several GPUs) is evaluated at once with :func:`estimate_grid`; the plans
   that fit with the requested headroom are kept, at a global batch held constant through
   gradient accumulation (each micro-batch's memory is evaluated at the accumulation it runs with).
3. Each surviving configuration gets a throughput estimate; the fastest per technique is kept:
   the shortest wall-clock time when a data size is given (micro-batches pad to their longest
   sequence, so a larger micro-batch can process more positions), else the most tokens/s.
4. Ranking, risk-aware. Each plan's score is

       score = q - risk_aversion x (q - low) - quality_per_time_doubling x log2(hours / fastest hours)

   with q the expected quality relative to full fine-tuning and low the low end of its range:
   a plan whose evidence allows a larger shortfall pays for it (risk_aversion 0.5 by default:
   half way between the point and the low end; 1 ranks by the low end, 0 by the point alone),
   and each doubling of wall-clock time over the fastest plan costs 0.05 (a stated preference,
   not a fact; 0 ranks by quality alone). Plans are ordered by score, best first, ties to the
   faster plan; then one rule overrides the score: a plan resting on weak evidence (one group,
   analogy, extrapolation) never ranks above a plan with moderate or strong evidence and at least
   the same expected quality, however much faster it is. Such a weak plan moves to just below
   the last of those plans.
5. Techniques with no fitting configuration are returned as ``rejected``, each with what would
   make it fit (more GPUs, a shorter sequence, another method, or why more GPUs cannot help).

The data regime (small/medium/large, which moves the quality ranges) comes from ``examples`` or,
when only ``dataset_tokens`` is given, from the sequences those tokens make (tokens / avg_tokens,
else tokens / seq_len).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from ftadvisor import validate
from ftadvisor.errors import FtAdvisorError, check_size
from ftadvisor.estimator import estimate, estimate_grid, examples_for_regime, make_plan
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.schema import Estimate, HardwareProfile, ModelProfile, SpeedEstimate, TrainingPlan
from ftadvisor.techniques import METHODS, OBJECTIVES, Technique, parse_technique

GIB = 2**30

GOALS = ("chat", "domain", "code", "math", "preference", "rl", "facts")
DATA_KINDS = ("chat", "preference", "feedback", "text", "facts", "prompts")
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
    "feedback": "KTO because you have single answers labelled good or bad (no pairs needed)",
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
# The one meaning of "fits": keep this fraction of the card free (allocator fragmentation and the
# peaks a model cannot see); recommend, min_gpus, the capacity command and the TUI all use it.
MEMORY_HEADROOM = 0.05
# How much of the range below the expected quality a plan pays for (0 = point, 1 = low end).
RISK_AVERSION = 0.5
# Packing is offered when it would cut at least this share of the wall-clock time.
PACKING_OFFER_MIN_SAVING = 0.10
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
    """Risk-aware score (module docstring, step 4): expected quality minus risk_aversion x (expected
    - low end) minus quality_per_time_doubling x log2(time / fastest plan's time), rounded to 4
    decimals; higher is better (0 for rejected plans). The rank follows it except where weak
    evidence must not outrank a better-evidenced plan of at least the same expected quality."""


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


def fits_card(est: Estimate, headroom: float = MEMORY_HEADROOM) -> bool:
    """The one meaning of "fits": the estimator's verdict, and the device total within
    ``1 - headroom`` of the card (the card's size is the device total plus the estimate's headroom)."""
    if headroom != MEMORY_HEADROOM:
        validate.fraction("headroom", headroom)
    card = est.memory.device_total_bytes + est.headroom_bytes
    return est.fits and est.memory.device_total_bytes <= card * (1 - headroom)


def max_micro_batch(model, hardware, technique: str, headroom: float = MEMORY_HEADROOM, limit: int = 4096,
                    **plan_fields) -> int:
    """Largest micro-batch that fits (0 if not even 1 does)."""
    validate.gpu_search(headroom=headroom, limit=limit)
    return _largest_fitting(model, hardware, technique, "micro_batch_size", 1, limit, headroom, plan_fields)


def max_seq_len(model, hardware, technique: str, headroom: float = MEMORY_HEADROOM, limit: int | None = None,
                **plan_fields) -> int:
    """Longest sequence that fits at the given micro-batch (0 if not even 128 tokens do; for PPO/GRPO
    with ``rl_max_new_tokens`` given, 0 if not even that many plus one, the shortest prompt)."""
    validate.gpu_search(headroom=headroom, limit=limit, limit_optional=True)
    mp = resolve_model(model)
    limit = limit or mp.arch.max_position_embeddings or 131072
    lo = 128
    if plan_fields.get("rl_max_new_tokens") is not None and parse_technique(technique).objective.generation:
        lo = max(lo, validate.integer("rl_max_new_tokens", plan_fields["rl_max_new_tokens"], low=1) + 1)
    if lo > limit:
        return 0
    return _largest_fitting(mp, hardware, technique, "seq_len", lo, limit, headroom, plan_fields)


def _largest_fitting(model, hardware, technique, field, lo, hi, headroom, plan_fields) -> int:
    def ok(v):
        return fits_card(estimate(model, hardware, technique, **{**plan_fields, field: v}), headroom)

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


def gpu_counts(max_gpus: int, gpus_per_node: int) -> list[int]:
    """The GPU counts a job can use, in node-sized steps: every count up to one node
    (1, 2, ..., gpus_per_node), then whole nodes (2, 3, ... x gpus_per_node), up to ``max_gpus``."""
    one_node = list(range(1, min(gpus_per_node, max_gpus) + 1))
    return one_node + list(range(2 * gpus_per_node, max_gpus + 1, gpus_per_node))


@dataclass(frozen=True)
class GpuNeed:
    """How many GPUs of one type a plan needs (:func:`gpus_needed`)."""

    num_gpus: int | None
    """Fewest GPUs that fit; None when none up to ``max_gpus`` do."""
    num_nodes: int | None
    """Nodes those GPUs span."""
    sharding: str | None
    """Sharding used at that count (the requested one when one was given)."""
    estimate: Estimate
    """The plan at that count; when nothing fits, at the largest count with the closest sharding."""
    usable_bytes: float
    """Card memory minus the headroom."""
    floor_bytes: float
    """Per-GPU memory that no number of GPUs removes (extrapolated, see :func:`gpus_needed`)."""
    floor_parts: tuple[tuple[str, float], ...] = ()
    """The components behind the floor, largest first (name, bytes per GPU)."""

    @property
    def more_gpus_help(self) -> bool:
        """False when the floor alone is over the usable memory: only a smaller plan can fit."""
        return self.floor_bytes <= self.usable_bytes

    def why_not(self, hardware_id: str) -> str:
        """Plain words for a plan that fits on no GPU count searched."""
        parts = ", ".join(f"{name.replace('_', ' ')} {_gib(b)}" for name, b in self.floor_parts) or "-"
        n, sh = self.estimate.plan.num_gpus, self.estimate.plan.sharding
        host = self.estimate.host
        if host is not None and not host.fits and self.estimate.memory.device_total_bytes <= self.usable_bytes:
            from ftadvisor.host import host_limit_words

            return f"the node is the limit at {n} × {hardware_id} with {sh}: " + host_limit_words(host)
        if self.more_gpus_help:
            return (f"needs more than {n} × {hardware_id}: {_gib(self.estimate.memory.device_total_bytes)} per GPU "
                    f"at {n} GPUs with {sh}, and the memory still shrinks as GPUs are added")
        plan = self.estimate.plan
        # what shrinks the part that does not scale with GPUs (activations grow with tokens per micro-batch)
        fixes = [f"shorten seq_len (now {plan.seq_len})"]
        if plan.micro_batch_size > 1:
            fixes.append(f"lower the micro-batch (now {plan.micro_batch_size})")
        if not plan.gradient_checkpointing:
            fixes.append("turn on gradient checkpointing")
        return (f"more GPUs cannot help: {_gib(self.floor_bytes)} per GPU does not shrink with the GPU count "
                f"({parts}), over the {_gib(self.usable_bytes)} usable; " + ", ".join(fixes[:-1])
                + (" or " if len(fixes) > 1 else "") + fixes[-1])


def _floor(lo: Estimate, hi: Estimate) -> tuple[float, tuple[tuple[str, float], ...]]:
    """Per-GPU memory that more GPUs do not remove: each part modelled as a + b/n (sharded states
    shrink as 1/n; activations, replicated weights and buffers do not) and fitted through the two
    counts; returns (a of the device total, the components' a, largest first)."""
    n1, n2 = lo.plan.num_gpus, hi.plan.num_gpus
    if n1 == n2:
        return 0.0, ()  # one count only: nothing to extrapolate, so no claim that GPUs cannot help

    def a(v1: float, v2: float) -> float:
        # v = a + b/n through (n1, v1) and (n2, v2)
        b = (v1 - v2) / (1 / n1 - 1 / n2)
        return max(0.0, v2 - b / n2)

    total = a(lo.memory.device_total_bytes, hi.memory.device_total_bytes)
    c1, c2 = lo.memory.components(), hi.memory.components()
    parts = sorted(((k, a(c1[k], c2[k])) for k in c2), key=lambda kv: -kv[1])
    return total, tuple((k, v) for k, v in parts if v >= 0.05 * total)


def gpus_needed(model, hardware, technique: str, max_gpus: int = 1024, gpus_per_node: int | None = None,
                headroom: float = MEMORY_HEADROOM, **plan_fields) -> GpuNeed:
    """Fewest GPUs of this type that fit the plan, searched over every count in node-sized steps
    (:func:`gpu_counts`). A ``sharding`` in ``plan_fields`` is kept as given; otherwise every
    sharding is tried (ddp, zero2, zero3, fsdp; only the offloading ones when ``cpu_offload``).
    Per-GPU memory does not grow with the GPU count, so when the largest count does not fit nothing
    does, and the answer says whether more GPUs would (the floor of memory that does not shrink)."""
    mp, hw = resolve_model(model), resolve_hardware(hardware)
    if gpus_per_node is None:
        from ftadvisor.host import node_for

        gpus_per_node = node_for(hw, make_plan(**{k: v for k, v in plan_fields.items()
                                                 if k in ("gpus_per_node", "host_ram_gib")})).gpus_per_node
    validate.gpu_search(headroom=headroom, max_gpus=max_gpus, gpus_per_node=gpus_per_node)
    requested = plan_fields.pop("sharding", None)
    counts = gpu_counts(max_gpus, gpus_per_node)

    def shardings(n: int) -> list[str]:
        if requested is not None:
            return [requested]  # the user's layout, never replaced
        opts = ["zero2", "zero3", "fsdp"] if plan_fields.get("cpu_offload") else _sharding_options(n)
        return opts

    def at(n: int, sharding: str) -> Estimate:
        nodes = 1 if n <= gpus_per_node else math.ceil(n / gpus_per_node)
        return estimate(mp, hw, technique, **{**plan_fields, "num_gpus": n, "num_nodes": nodes,
                                              "sharding": sharding})

    usable = hw.memory_bytes * (1 - headroom)
    top = counts[-1]
    at_top = [at(top, sh) for sh in shardings(top)]
    if not any(fits_card(e, headroom) for e in at_top):
        closest = min(at_top, key=lambda e: e.memory.device_total_bytes)
        # the floor from the largest count and about half of it (1 when the search is one GPU wide)
        half = max((n for n in counts if n <= top // 2), default=top)
        floor, parts = _floor(at(half, closest.plan.sharding), closest)
        return GpuNeed(None, None, None, closest, usable, floor, parts)
    for n in counts:
        for sh in shardings(n):
            est = at(n, sh)
            if fits_card(est, headroom):
                return GpuNeed(n, est.plan.num_nodes, est.plan.sharding, est, usable, 0.0)
    raise AssertionError("unreachable: the largest count fits")


def min_gpus(model, hardware, technique: str, max_gpus: int = 1024, gpus_per_node: int | None = None,
             headroom: float = MEMORY_HEADROOM, **plan_fields) -> tuple[int, str] | None:
    """Fewest GPUs of this type (and the sharding) that fit the technique; None if even max_gpus do
    not (see :func:`gpus_needed` for the search and for why more GPUs may not help)."""
    need = gpus_needed(model, hardware, technique, max_gpus, gpus_per_node, headroom, **plan_fields)
    return None if need.num_gpus is None else (need.num_gpus, need.sharding)


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
    framework: str = "hf-trl"  # the training stack every plan is estimated for (ftadvisor.frameworks)

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
            micro_batch_size=[mb for mb in MICRO_BATCHES if mb >= parse_technique(tech).objective.min_micro_batch],
            framework=q.framework,
            gradient_checkpointing=[False, True],
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
        if fits_card(estimate(q.mp, q.hw, plan=plan), q.headroom):
            return plan, sp
    return None


def _plan_reasons(q: _Question, objective: str, meth, plan: TrainingPlan, est: Estimate,
                  unquantized_fits: bool) -> list[str]:
    """Why this plan: the data, the method's own reasons, the rank, the knobs, padding, the quality."""
    q_est = est.quality
    reasons = [DATA_REASON[q.data_kind]] if not OBJECTIVES[objective].sft_loss or meth.reference_method else []
    reasons += meth.recommend_reasons(_ReasonContext(q.mp, q.hw, est, unquantized_fits))
    if meth.lora:
        reasons.append(RANK_REASON[q.rank])
    reasons.append(_knob_reason(plan, est, q.hw))
    reasons += _padding_reasons(q, objective, est)
    if q_est.notes:
        reasons.append(f"quality {q_est.relative_to_full:.2f} of full FT ({q_est.low:.2f}–{q_est.high:.2f}), "
                       f"{q_est.evidence_strength} evidence: {q_est.notes}")
    return reasons


def padding_share(est: Estimate, examples: float | None, avg_tokens: float | None, epochs: float = 1.0
                  ) -> float | None:
    """Share of the positions a plan processes that are padding: unpacked examples of a known
    average length (SFT and preference objectives); None when it cannot be told (packed, tokens
    only, no average length, RL)."""
    tc = est.time_cost
    if tc is None or not tc.tokens_processed or est.plan.packing or examples is None or avg_tokens is None:
        return None
    if parse_technique(est.plan.technique).objective.generation:
        return None
    # real tokens over processed positions (truncated examples can make it exceed 1: no padding then)
    return max(0.0, 1 - examples * avg_tokens * epochs / tc.tokens_processed)


def _padding_reasons(q: _Question, objective: str, est: Estimate) -> list[str]:
    """What padding costs this plan, and packing where it would save real time (SFT only: trl's
    SFTTrainer packs; the preference trainers do not)."""
    share = padding_share(est, q.examples if q.dataset_tokens is None else None, q.avg_tokens, q.epochs)
    if not share or share < 0.01:
        return []
    mb = est.plan.micro_batch_size
    out = [f"time counts padding: each micro-batch of {mb} is padded to its longest sequence, so about "
           f"{share:.0%} of the positions processed are padding (tokens/s counts them as work)"]
    if OBJECTIVES[objective].sft_loss:
        packed = evaluate_plan(q.mp, q.hw, est.plan.model_copy(update={"packing": True}), goal=q.goal,
                               examples=q.examples, avg_tokens=q.avg_tokens, epochs=q.epochs,
                               hourly_price_usd=q.hourly_price_usd)
        before, after = est.time_cost.wall_clock_hours, packed.time_cost.wall_clock_hours
        if before > 0 and 1 - after / before >= PACKING_OFFER_MIN_SAVING:
            out.append(f"packing (plan field packing=true) would save about {1 - after / before:.0%} of the time: "
                       f"{_duration(after)} instead of {_duration(before)}, examples packed to seq_len "
                       f"{est.plan.seq_len} with no padding")
    return out


def _over_budget(q: _Question, tc) -> list[str]:
    """The budgets the plan breaks."""
    over = []
    if q.budget_hours is not None and tc is not None and tc.wall_clock_hours > q.budget_hours:
        over.append(f"takes {_duration(tc.wall_clock_hours)} > budget {q.budget_hours:g} h")
    if q.budget_usd is not None and tc is not None and tc.cost_usd is not None and tc.cost_usd > q.budget_usd:
        over.append(f"costs {_usd(tc.cost_usd)} > budget {_usd(q.budget_usd)}")
    return over


@dataclass(frozen=True)
class _Kept:
    """A technique's fastest fitting plan, before ranking."""

    hours: float
    """Wall-clock hours (seconds per token when no data size is given): the time the score reads."""
    plan: RankedPlan
    applicable: bool
    """False when its objective cannot learn the goal (kept only when nothing else can either)."""

    def as_rejected(self, q: _Question) -> RankedPlan:
        why = f"{self.plan.plan.technique} does not train on {q.data_kind} data for a {q.goal} goal"
        return self.plan.model_copy(update={"reasons": (why, *self.plan.reasons)})


def _search_technique(q: _Question, objective: str, method: str, best_fitting_by_method: dict[str, Estimate]
                      ) -> tuple[_Kept | None, RankedPlan | None]:
    """Steps 2-3 and 5 for one technique: (kept, None) or (None, rejected)."""
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
    hours = tc.wall_clock_hours if tc else 1 / max(sp.tokens_per_second_total, 1e-9)
    return _Kept(hours, RankedPlan(rank=0, plan=plan, estimate=est, score=0.0, reasons=tuple(reasons)),
                 bool(qual.applicable)), None


def _weak(p: RankedPlan) -> bool:
    return p.estimate.quality.evidence_strength == "weak"


def _weak_below_better_evidenced(order: list[RankedPlan]) -> list[RankedPlan]:
    """Step 4's evidence rule: a weak-evidence plan moves to just below the last plan with moderate
    or strong evidence and at least its expected quality, when that plan ranks below it. Weak plans
    are moved from the lowest-scored up, so those moved behind the same plan keep their score order."""
    order = list(order)
    for w in [p for p in order if _weak(p)][::-1]:
        i = next(k for k, p in enumerate(order) if p is w)
        q = w.estimate.quality.relative_to_full
        last = max((k for k, p in enumerate(order)
                    if not _weak(p) and p.estimate.quality.relative_to_full >= q), default=-1)
        if last > i:
            order.pop(i)
            order.insert(last, w)  # right after that plan (it moved up one place with the pop)
            ahead = [p.plan.technique for p in order[:last + 1]
                     if not _weak(p) and p.estimate.quality.relative_to_full >= q]
            why = (f"ranked below {', '.join(ahead)}: weak evidence never outranks better-evidenced plans of at "
                   "least the same expected quality, however much faster")
            order[last] = w.model_copy(update={"reasons": (*w.reasons, why)})
    return order


def _ranked(kept: list[_Kept], risk_aversion: float, quality_per_time_doubling: float,
            top: int) -> tuple[RankedPlan, ...]:
    """Step 4: the risk-aware score, best first, ties to the faster plan; then the evidence rule;
    the first ``top``."""
    fastest = min((k.hours for k in kept), default=1.0)
    scored = []
    for k in kept:
        qual = k.plan.estimate.quality
        point, shortfall = qual.relative_to_full, qual.relative_to_full - qual.low
        slower = math.log2(k.hours / fastest)
        # expected quality, less the share of the range below it the caller wants to insure
        # against, less the stated price of time
        score = point - risk_aversion * shortfall - quality_per_time_doubling * slower
        why = (f"score {score:.3f} = quality {point:.2f} − {risk_aversion:g} × {shortfall:.2f} below it "
               f"(low end {qual.low:.2f}, {qual.evidence_strength} evidence) − {quality_per_time_doubling:g} × "
               f"{slower:.2f} doublings of the fastest plan's time")
        scored.append((score, k.hours, k.plan.model_copy(update={"score": round(score, 4),
                                                                 "reasons": (*k.plan.reasons, why)})))
    scored.sort(key=lambda t: (-t[0], t[1]))
    order = _weak_below_better_evidenced([p for _, _, p in scored])
    return tuple(p.model_copy(update={"rank": k + 1}) for k, p in enumerate(order[:top]))


# What each goal's own data is, in words (for the note when the user's data cannot serve the goal).
DATA_NEEDED = {
    "chat": "instruction/chat pairs",
    "text": "a domain text corpus",
    "facts": "a fact list",
    "preference": "chosen/rejected answer pairs",
    "feedback": "single answers labelled good or bad",
    "prompts": "prompts with a reward (or verifiable answers)",
}


def _data_notes(q: _Question, kept: list[_Kept], rejected: list[RankedPlan]) -> tuple[list[_Kept], list[str]]:
    """Step 1's data check: the kept plans that serve the goal and the notes on the data. When some
    plans can learn the goal, the others are rejected; when none can, the plans the data trains are
    kept and a note says what the goal needs."""
    goal_data = DEFAULT_DATA[q.goal]
    serving = [k for k in kept if k.applicable]
    if serving or not kept:
        rejected += [k.as_rejected(q) for k in kept if not k.applicable]
        note = (f"goal {q.goal!r} usually trains on {goal_data} data; planning for the {q.data_kind} data you have"
                if q.data_kind != goal_data else None)
        return serving, [note] if note else []
    goal_objectives = "/".join(o.upper() for o in OBJECTIVES_FOR_DATA[goal_data])
    data_objectives = "/".join(o.upper() for o in OBJECTIVES_FOR_DATA[q.data_kind])
    best = max(k.plan.estimate.quality.relative_to_full for k in kept)
    note = (f"goal {q.goal!r} needs {DATA_NEEDED[goal_data]} ({goal_objectives} learn from them), and you have "
            f"{q.data_kind} data ({DATA_NEEDED[q.data_kind]}), which cannot train for it: the plans below are what "
            f"your data can train ({data_objectives}), scored against the {q.goal} goal (at best {best:.2f} of its "
            f"reference); add {DATA_NEEDED[goal_data]} to train for the goal itself")
    return kept, [note]


def recommend(
    model: str | dict | ModelProfile,
    hardware: str | HardwareProfile,
    *,
    num_gpus: int = 1,
    num_nodes: int | None = None,
    goal: str = "chat",
    data_kind: str | None = None,
    examples: int | None = None,
    avg_tokens: float | None = None,
    dataset_tokens: float | None = None,
    epochs: float = 1.0,
    budget_hours: float | None = None,
    budget_usd: float | None = None,
    hourly_price_usd: float | None = None,
    memory_headroom: float = MEMORY_HEADROOM,
    seq_len: int | None = None,
    top: int = 10,
    quality_per_time_doubling: float = 0.05,
    risk_aversion: float = RISK_AVERSION,
    framework: str = "hf-trl",
) -> Recommendation:
    """Ranked fine-tuning plans for this model, hardware, goal and data.

    Plans are ranked by a risk-aware score (module docstring, step 4): expected quality minus
    ``risk_aversion`` (0.5) x the part of the quality range below it, minus
    ``quality_per_time_doubling`` (0.05) per doubling of the fastest plan's time; and a plan on weak
    evidence never ranks above a better-evidenced one of at least the same expected quality.
    ``memory_headroom`` (5%) is the share of the card kept free; the data regime comes from
    ``examples`` or, failing that, from ``dataset_tokens``. ``framework`` is the training stack every
    plan is estimated for (``ftadvisor.frameworks``; default hf-trl, what ``ftadvisor launch`` runs)."""
    if num_nodes is None:
        # not given: as many nodes as the hardware's node size needs (ftadvisor.host.resolve_nodes)
        from ftadvisor.host import resolve_nodes

        validate.integer("num_gpus", num_gpus, low=1, high=validate.MAX_GPUS)
        num_nodes = resolve_nodes(resolve_hardware(hardware), make_plan(num_gpus=num_gpus))[0].num_nodes
    validate.recommend_options(num_gpus=num_gpus, num_nodes=num_nodes, goal=goal, data_kind=data_kind, seq_len=seq_len,
                               top=top, memory_headroom=memory_headroom,
                               quality_per_time_doubling=quality_per_time_doubling, risk_aversion=risk_aversion,
                               examples=examples, avg_tokens=avg_tokens, dataset_tokens=dataset_tokens, epochs=epochs,
                               budget_hours=budget_hours, budget_usd=budget_usd, hourly_price_usd=hourly_price_usd)
    data_kind = _check_question(goal, data_kind, num_gpus, num_nodes, memory_headroom,
                                {"examples": examples, "avg_tokens": avg_tokens, "dataset_tokens": dataset_tokens,
                                 "epochs": epochs, "budget_hours": budget_hours, "budget_usd": budget_usd},
                                hourly_price_usd)
    if not 0 <= risk_aversion <= 1:
        raise FtAdvisorError("risk_aversion", "must be in [0, 1] (0 ranks by the expected quality, 1 by the low end)")
    mp = resolve_model(model)
    hw = resolve_hardware(hardware)
    notes: list[str] = []
    S = _seq_len_for(mp, seq_len, avg_tokens)
    if examples is not None and avg_tokens is None and dataset_tokens is None:
        notes.append(f"no average example length given: time and cost count every example as seq_len {S} "
                     "tokens (an upper bound); pass avg_tokens to refine")
    from ftadvisor.frameworks import canonical_framework

    q = _Question(mp, hw, num_gpus, num_nodes, goal, data_kind, S, RANK_FOR_GOAL[goal], memory_headroom,
                  examples, avg_tokens, dataset_tokens, epochs, hourly_price_usd, budget_hours, budget_usd,
                  canonical_framework(framework))
    notes += _regime_notes(q)

    kept: list[_Kept] = []
    rejected: list[RankedPlan] = []
    best_fitting_by_method: dict[str, Estimate] = {}
    # 1. the objectives the data allows, and the methods that go with each
    for objective in OBJECTIVES_FOR_DATA[data_kind]:
        for method in _methods_for(objective, data_kind, mp, goal):
            # 2.-3., 5. the fastest fitting configuration of the technique, or why it is rejected
            keep, reject = _search_technique(q, objective, method, best_fitting_by_method)
            if keep is not None:
                kept.append(keep)
            else:
                rejected.append(reject)
    # 1. (again) plans whose objective cannot learn the goal: rejected, unless nothing else can
    kept, data_notes = _data_notes(q, kept, rejected)
    notes = data_notes + notes

    # 4. the risk-aware ranking
    plans = _ranked(kept, risk_aversion, quality_per_time_doubling, top)
    # where tokens/s and time disagree: said once overall and again in the slower plan's reasons
    padding = _padding_notes(plans)
    plans = tuple(p.model_copy(update={"reasons": (*p.reasons, padding[p.plan.technique])})
                  if p.plan.technique in padding else p for p in plans)
    notes += list(padding.values())
    if not plans:
        notes.append("no plan fits; see `rejected` for what would make one fit")
    return Recommendation(model_id=mp.id, hardware_id=hw.id, num_gpus=num_gpus, goal=goal, data_kind=data_kind,
                          plans=plans, rejected=tuple(rejected), notes=tuple(notes))


def _regime_notes(q: _Question) -> list[str]:
    """Where the data regime (which moves the quality ranges) comes from, when only tokens are given."""
    if q.examples is not None or q.dataset_tokens is None:
        return []
    from ftadvisor.quality import evidence, regime_for

    n = examples_for_regime(None, q.dataset_tokens, q.avg_tokens, q.seq_len)
    ev = evidence()
    per = f"{q.avg_tokens:,.0f} tokens (avg_tokens)" if q.avg_tokens else f"{q.seq_len:,} tokens (seq_len)"
    return [f"data regime {regime_for(n)} from the tokens: {q.dataset_tokens:,.0f} tokens ≈ {n:,} examples of {per}; "
            f"small < {ev.small_max_examples:,} ≤ medium < {ev.large_min_examples:,} ≤ large"]


def _padding_notes(plans: tuple[RankedPlan, ...]) -> dict[str, str]:
    """Where tokens/s and wall-clock time disagree (more tokens/s, yet slower), say why, by the
    slower plan's technique: tokens/s counts padded positions; a larger micro-batch pads more."""
    notes: dict[str, str] = {}
    timed = [p for p in plans if p.estimate.time_cost is not None and p.estimate.speed is not None]
    for a in timed:
        for b in timed:
            ta, tb = a.estimate.time_cost.wall_clock_hours, b.estimate.time_cost.wall_clock_hours
            ra, rb = a.estimate.speed.tokens_per_second_total, b.estimate.speed.tokens_per_second_total
            pa = a.estimate.time_cost.tokens_processed
            pb = b.estimate.time_cost.tokens_processed
            # more tokens/s, longer time and more positions (beyond the last partial step's rounding)
            if ra > rb and ta > tb * 1.02 and pa > pb * 1.02:
                notes[a.plan.technique] = (
                    f"{a.plan.technique} shows more tokens/s than {b.plan.technique} ({ra:,.0f} vs {rb:,.0f}) yet "
                    f"takes {ta / tb - 1:.0%} longer: it processes {pa / pb - 1:.0%} more positions, as tokens/s counts "
                    f"padding and micro-batch {a.plan.micro_batch_size} pads each batch to its longest sequence "
                    f"(vs micro-batch {b.plan.micro_batch_size}); packing removes the padding")
                break  # one comparison per plan is enough
    return notes


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
    """Bytes with two significant digits or more, in the unit that keeps them: 75.6 GiB, 1.50 GiB,
    340 MiB, 12.0 KiB (a tiny model's weights never read as "0.0 GiB")."""
    for unit, div in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= div:
            v = x / div
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"
    return f"{x:.0f} B"


def _duration(hours: float) -> str:
    """Wall-clock time with useful precision: 42 s, 3.4 min, 34 min, 2.35 h, 16.5 h, 4.2 d."""
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if hours < 10:
        return f"{hours:.2f} h"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _usd(x: float) -> str:
    """Dollars: cents below $100 ($0.87, $12.34), whole dollars above ($1,234)."""
    return f"${x:,.2f}" if abs(x) < 100 else f"${x:,.0f}"


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
    # every GPU runs its own micro-batches (DDP, ZeRO and FSDP are all data-parallel layouts)
    eff = plan.micro_batch_size * plan.gradient_accumulation_steps * plan.num_gpus
    gpus = f"{plan.num_gpus} data-parallel GPUs" if plan.num_gpus > 1 else "1 GPU"
    parts = [f"effective batch {eff} = micro-batch {plan.micro_batch_size} × accumulation "
             f"{plan.gradient_accumulation_steps} × {gpus}"]
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
    if est.host is not None and not est.host.fits and m.device_total_bytes <= hw.memory_bytes * (1 - headroom):
        from ftadvisor.host import host_limit_words

        # the card has room; the node's host RAM (or NVMe) is what runs out
        out = [f"{est.technique} does not fit the node: its smallest configuration ({est.plan.sharding}"
               f"{' with CPU offload' if est.plan.cpu_offload else ''}) needs {_gib(m.device_total_bytes)} per GPU, "
               f"within the card, but " + host_limit_words(est.host)]
    else:
        out = [f"{est.technique} does not fit: even its smallest configuration needs {_gib(m.device_total_bytes)} "
               f"per GPU of the {_gib(hw.memory_bytes * (1 - headroom))} usable on a {hw.memory_gib:.0f} GiB card "
               f"({headroom:.0%} kept free; largest part: {biggest.replace('_', ' ')} {_gib(size)})"]
    plan_fields = est.plan.model_dump(exclude={"technique", "num_gpus", "num_nodes", "sharding", "cpu_offload",
                                               "offload_device"})
    need = gpus_needed(mp, hw, est.technique, max_gpus=512, headroom=headroom, **plan_fields)
    if need.num_gpus is not None:
        out.append(f"would fit on {need.num_gpus} × {hw.id} with {need.sharding}")
    else:
        out.append(need.why_not(hw.id))
    s = max_seq_len(mp, hw, est.technique, headroom=headroom,
                    **{k: v for k, v in est.plan.model_dump().items() if k not in ("technique", "seq_len")})
    if s:
        out.append(f"would fit at seq_len ≤ {s}")
    return out
