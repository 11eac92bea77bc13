"""Expected quality of a fine-tuning technique relative to full fine-tuning, from published evidence.

    from ftadvisor.quality import estimate_quality
    q = estimate_quality("dpo+qlora", "preference", examples=60_000, total_params=8_030_261_248)
    q.relative_to_full, q.low, q.high      # expected target-task quality, full fine-tuning = 1.0
    q.retention, q.retention_low, q.retention_high   # share of the base model's general ability kept
    q.sources, q.notes, q.evidence_strength

Pure and light: pydantic and pyyaml only. The evidence is data in ``profiles/quality/evidence.yaml``
(every number there names its paper, table and the published scores), loaded on first use and cached;
estimates are cached per distinct input, so a recommender can call this thousands of times.

How an estimate is built
1. Reference (= 1.0): full fine-tuning with the task's own objective - SFT for chat, domain, code,
   math and facts; DPO for preference (the common offline method); PPO for rl.
2. Objective factor: the technique's objective against that reference objective on the task
   (PPO vs DPO on preference; SFT then GRPO vs SFT alone on math; ...). Chains multiply: ORPO on
   chat = (ORPO vs SFT+DPO) x (SFT+DPO vs SFT). SFT alone on a preference or RL task is marked not
   applicable (it ignores the rejected answers / the reward) but still scored from the evidence; a
   preference or RL objective on domain or facts trains nothing towards the target and scores 0.
3. Method factor: the method against full fine-tuning with the same objective. LoRA follows a rank
   curve for code, math and continued pretraining (Biderman et al. 2024) and a rank-free factor for
   chat (QLoRA Fig. 4); DoRA multiplies its gain over LoRA; a quantized base multiplies the NF4/Int8
   factor; attention-only targets multiply their penalty. Adapters = LoRA(r=32) x adapter/LoRA.
   Preference and RL tasks use the chat evidence for the method factor.
4. relative_to_full = objective factor x method factor. low = product of the factors' lows and
   high = product of their highs; each factor's range spans every figure behind it (a set factor's
   point is the median of its figures). Range-only evidence then extends the range (QLoRA's Orca-Math
   result for math, small-data results, the continued-pretraining gap at large data scale).
5. Widening (evidence.yaml `policy`): weak evidence - vendor claims, a single group, analogy from
   another task, a rank or model size outside what was measured - widens the range by the policy
   half-width on each side; a factor resting on a single measurement is widened by half of that.
6. Retention: Biderman et al.'s forgetting metric (HellaSwag/ARC-C/WinoGrande) after full FT or
   LoRA on the matching task, divided by the base model's, clamped to 1.

evidence_strength is the weakest of the factors behind the point (a set factor counts as its median
figure's strength), and "weak" whenever a widening for weak evidence applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftadvisor.errors import FtAdvisorError
from ftadvisor.schema import Citation, QualityEstimate, Strength
from ftadvisor.techniques import METHODS, OBJECTIVES, parse_technique

TASKS = ("chat", "domain", "code", "math", "preference", "rl", "facts")
"""Task families: instruction/chat, domain adaptation (continued pretraining), code, math,
preference alignment, RL with a reward or verifiable reward, factual recall of a fixed fact set."""
REGIMES = ("small", "medium", "large")
QUANTIZATIONS = ("none", "nf4", "int8")
SFT_TASKS = ("chat", "domain", "code", "math", "facts")
REFERENCE_OBJECTIVE = {"preference": "dpo", "rl": "ppo"}  # every other task: sft

# Module names (transformers attribute names, as in ftadvisor/architecture.py) by block.
ATTENTION_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "dense"})
MLP_MODULES = frozenset(
    {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h", "w1", "w2", "w3"}
)
ROUTER_MODULES = frozenset({"gate", "shared_expert_gate"})

_STRENGTHS = ("weak", "moderate", "strong")


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Evidence file schema (validated with extra="forbid")
# --------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceEntry(_Strict):
    cite: str
    url: str | None = None


class FigureEntry(_Strict):
    source: str
    where: str
    figure: str
    value: float | None = Field(default=None, ge=0)
    ratio_of: tuple[float, float] | None = None
    checked: bool
    checked_via: str | None = None
    strength: Strength
    params_b: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _one_value(self) -> "FigureEntry":
        if self.value is not None and self.ratio_of is not None:
            raise ValueError("give either value or ratio_of, not both")
        if self.ratio_of is not None and (self.ratio_of[1] <= 0 or self.ratio_of[0] < 0):
            raise ValueError("ratio_of needs a non-negative numerator and a positive denominator")
        if any(p <= 0 for p in self.params_b):
            raise ValueError("params_b must be positive")
        return self

    @property
    def ratio(self) -> float | None:
        if self.ratio_of is not None:
            return self.ratio_of[0] / self.ratio_of[1]
        return self.value


class FactorEntry(_Strict):
    about: str
    kind: Literal["set", "rank_curve"]
    figures: tuple[str, ...] = ()
    point: str = "median"
    range_only: tuple[str, ...] = ()
    cite_also: tuple[str, ...] = ()
    curve: dict[int, tuple[str, ...]] = {}
    curve_range_only: dict[int, tuple[str, ...]] = {}

    @model_validator(mode="after")
    def _shape(self) -> "FactorEntry":
        if self.kind == "set":
            if not self.figures or self.curve or self.curve_range_only:
                raise ValueError("a set factor lists figures (and no curve)")
            if self.point != "median" and self.point not in self.figures:
                raise ValueError(f"point {self.point!r} is not one of its figures")
        else:
            if len(self.curve) < 2 or self.figures or self.range_only:
                raise ValueError("a rank_curve lists at least two ranks under curve (and no figures)")
            if any(r < 1 for r in self.curve) or any(r not in self.curve for r in self.curve_range_only):
                raise ValueError("curve ranks must be >= 1 and curve_range_only ranks must be in curve")
        return self


class PolicyEntry(_Strict):
    weak_halfwidth_spread_of: tuple[str, str]
    weak_halfwidth_fraction: float = Field(gt=0, le=1)
    single_figure_fraction: float = Field(ge=0, le=1)
    size_tolerance: float = Field(ge=1)


class RegimesEntry(_Strict):
    small_max_examples: int = Field(gt=0)
    large_min_examples: int = Field(gt=0)
    sources: tuple[str, ...]


class EvidenceFile(_Strict):
    """Schema of ``profiles/quality/evidence.yaml``."""

    version: Literal[1]
    policy: PolicyEntry
    regimes: RegimesEntry
    sources: dict[str, SourceEntry]
    figures: dict[str, FigureEntry]
    factors: dict[str, FactorEntry]

    @model_validator(mode="after")
    def _references(self) -> "EvidenceFile":
        for fid, fig in self.figures.items():
            if fig.source not in self.sources:
                raise ValueError(f"figure {fid}: unknown source {fig.source!r}")
        for name, fac in self.factors.items():
            ids = [*fac.figures, *fac.range_only, *fac.cite_also]
            ids += [f for fs in fac.curve.values() for f in fs] + [f for fs in fac.curve_range_only.values() for f in fs]
            for fid in ids:
                if fid not in self.figures:
                    raise ValueError(f"factor {name}: unknown figure {fid!r}")
            numeric = [*fac.figures, *fac.range_only] + [f for fs in fac.curve.values() for f in fs]
            numeric += [f for fs in fac.curve_range_only.values() for f in fs]
            for fid in numeric:
                if self.figures[fid].ratio is None:
                    raise ValueError(f"factor {name}: figure {fid!r} has no value (only cite_also may be qualitative)")
        for fid in self.policy.weak_halfwidth_spread_of:
            if fid not in self.figures or self.figures[fid].ratio is None:
                raise ValueError(f"policy: figure {fid!r} missing or without a value")
        for sid in self.regimes.sources:
            if sid not in self.sources:
                raise ValueError(f"regimes: unknown source {sid!r}")
        if self.regimes.small_max_examples >= self.regimes.large_min_examples:
            raise ValueError("regimes: small_max_examples must be below large_min_examples")
        missing = sorted(REQUIRED_FACTORS - set(self.factors))
        if missing:
            raise ValueError(f"factors missing: {', '.join(missing)}")
        missing = sorted(declared_evidence() - set(self.factors) - set(self.figures))
        if missing:
            raise ValueError(f"evidence keys declared by techniques but missing: {', '.join(missing)}")
        return self


# Factors the quality core itself uses (the LoRA-vs-full rank curves every low-rank method is scored
# against, quantized bases, retention); each technique module declares its own keys (``evidence``).
REQUIRED_FACTORS = frozenset(
    {
        "lora.rank.code", "lora.rank.math", "lora.rank.cpt", "lora.chat", "lora.small_data",
        "quant.nf4", "quant.nf4.math_risk", "quant.int8",
        *(f"retention.{m}.{t}" for m in ("full", "lora") for t in SFT_TASKS),
    }
)


def declared_evidence() -> set[str]:
    """Evidence keys (factors or figures) the registered techniques declare."""
    keys: set[str] = set()
    for part in (*METHODS.values(), *OBJECTIVES.values()):
        keys.update(part.evidence)
        if getattr(part, "definition_figure", None):
            keys.add(part.definition_figure)
    return keys


# --------------------------------------------------------------------------
# Compiled evidence
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fig:
    id: str
    value: float | None
    strength: int  # index in _STRENGTHS
    params_b: tuple[float, ...]
    citation: Citation


@dataclass(frozen=True, slots=True)
class _SetFactor:
    name: str
    about: str
    point: float
    low: float
    high: float
    strength: int
    single: bool
    params_b: tuple[float, ...]
    cites: tuple[Citation, ...]
    raw_low: float
    """Smallest figure, before any widening (used when the factor only extends another's range)."""
    raw_high: float


@dataclass(frozen=True, slots=True)
class _Curve:
    name: str
    about: str
    anchors: tuple[tuple[int, _SetFactor], ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """The evidence file, compiled: factors with their point, range and citations."""

    path: Path
    halfwidth: float
    """Widening for weak evidence (fraction of full FT), derived from the policy figures."""
    single_halfwidth: float
    size_tolerance: float
    small_max_examples: int
    large_min_examples: int
    regime_cites: tuple[Citation, ...]
    sets: dict[str, _SetFactor]
    curves: dict[str, _Curve]
    figures: dict[str, _Fig]
    raw: EvidenceFile


def evidence_path() -> Path:
    """``profiles/quality/evidence.yaml`` in the profiles folder ($FTADVISOR_PROFILES or the repository's)."""
    from ftadvisor.profiles import profiles_dir

    return profiles_dir() / "quality" / "evidence.yaml"


def _compile_set(name: str, about: str, point_ids, range_ids, cite_ids, point_sel: str, figs: dict[str, _Fig],
                 single_halfwidth: float) -> _SetFactor:
    pts = [figs[i] for i in point_ids]
    rng = [figs[i] for i in range_ids]
    values = sorted(f.value for f in pts)
    if point_sel == "median":
        n = len(values)
        point = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        strength = sorted(f.strength for f in pts)[(len(pts) - 1) // 2]
    else:
        point = figs[point_sel].value
        strength = figs[point_sel].strength
    allv = [f.value for f in pts + rng]
    low = raw_low = min(allv)
    high = raw_high = max(allv)
    single = len(pts) + len(rng) == 1
    if single:
        # One measurement has no spread of its own: widen by half the weak-evidence width (evidence.yaml policy).
        low, high = low - single_halfwidth, high + single_halfwidth
    params = tuple(sorted({p for f in pts for p in f.params_b}))
    cites = tuple(f.citation for f in pts + rng + [figs[i] for i in cite_ids])
    return _SetFactor(name, about, point, max(low, 0.0), high, strength, single, params, cites, raw_low, raw_high)


def load_evidence_file(path: str | Path) -> Evidence:
    """Read, validate and compile one evidence file (no caching; see :func:`evidence`)."""
    import yaml

    path = Path(path)
    label = "profiles/quality/evidence.yaml" if path.name == "evidence.yaml" else str(path)
    try:
        # libyaml's loader when present (about 10x faster than the pure-Python one); same safe subset.
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise FtAdvisorError(label, f"not found at {path}") from None
    except yaml.YAMLError as err:
        raise FtAdvisorError(label, f"not valid YAML ({err})") from None
    try:
        raw = EvidenceFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "file"
        raise FtAdvisorError(label, f"{loc}: {first['msg']}") from None

    figs: dict[str, _Fig] = {}
    for fid, f in raw.figures.items():
        src = raw.sources[f.source]
        ratio = f.ratio
        cite = Citation(source=src.cite, where=f.where, figure=f.figure,
                        value=None if ratio is None else round(ratio, 4), url=src.url, checked=f.checked)
        figs[fid] = _Fig(fid, ratio, _STRENGTHS.index(f.strength), f.params_b, cite)

    pol = raw.policy
    a, b = (figs[i].value for i in pol.weak_halfwidth_spread_of)
    halfwidth = pol.weak_halfwidth_fraction * abs(a - b)
    single_halfwidth = pol.single_figure_fraction * halfwidth

    sets: dict[str, _SetFactor] = {}
    curves: dict[str, _Curve] = {}
    for name, fac in raw.factors.items():
        if fac.kind == "set":
            sets[name] = _compile_set(name, fac.about, fac.figures, fac.range_only, fac.cite_also, fac.point, figs,
                                      single_halfwidth)
        else:
            anchors = tuple(
                (r, _compile_set(f"{name}@{r}", fac.about, fac.curve[r], fac.curve_range_only.get(r, ()),
                                 fac.cite_also, "median", figs, single_halfwidth))
                for r in sorted(fac.curve)
            )
            curves[name] = _Curve(name, fac.about, anchors)
    regime_cites = tuple(
        Citation(source=raw.sources[s].cite, where="data-regime thresholds", url=raw.sources[s].url, checked=True,
                 figure=f"small < {raw.regimes.small_max_examples:,} examples <= medium < "
                        f"{raw.regimes.large_min_examples:,} <= large")
        for s in raw.regimes.sources
    )
    return Evidence(path, halfwidth, single_halfwidth, pol.size_tolerance, raw.regimes.small_max_examples,
                    raw.regimes.large_min_examples, regime_cites, sets, curves, figs, raw)


@lru_cache(maxsize=1)
def evidence() -> Evidence:
    """The shipped evidence, loaded once."""
    return load_evidence_file(evidence_path())


# --------------------------------------------------------------------------
# Terms: one factor evaluated for this request
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Term:
    label: str
    point: float
    low: float
    high: float
    strength: int
    cites: list[Citation]
    params_b: tuple[float, ...] = ()


@dataclass(slots=True)
class _Acc:
    """Accumulates terms, range-only extensions, weak-evidence reasons and notes."""

    terms: list[_Term] = field(default_factory=list)
    extra_cites: list[Citation] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    final_low: list[float] = field(default_factory=list)
    final_high: list[float] = field(default_factory=list)
    cap: int = 2  # strength cap

    def add(self, t: _Term) -> _Term:
        self.terms.append(t)
        return t


def _term(sf: _SetFactor, label: str | None = None) -> _Term:
    return _Term(label or sf.about, sf.point, sf.low, sf.high, sf.strength, list(sf.cites), sf.params_b)


def _curve_term(ev: Evidence, name: str, r: int, acc: _Acc) -> _Term:
    """Evaluate a rank curve at rank r: linear in log2(rank) between measured ranks, flat outside."""
    cv = ev.curves[name]
    ranks = [a for a, _ in cv.anchors]
    if r <= ranks[0]:
        t = _term(cv.anchors[0][1], cv.about)
        if r < ranks[0]:
            acc.weak.append(f"rank {r} is below the smallest measured rank ({ranks[0]})")
        return t
    if r >= ranks[-1]:
        sf = cv.anchors[-1][1]
        if r > ranks[-1]:
            acc.notes.append(f"ranks above {ranks[-1]} were not measured; the r={ranks[-1]} figure is used.")
        return _term(sf, cv.about)
    for (r0, a), (r1, b) in zip(cv.anchors, cv.anchors[1:]):
        if r0 <= r <= r1:
            w = (math.log2(r) - math.log2(r0)) / (math.log2(r1) - math.log2(r0))
            lerp = lambda x, y: x + w * (y - x)  # noqa: E731
            return _Term(cv.about, lerp(a.point, b.point), lerp(a.low, b.low), lerp(a.high, b.high),
                         min(a.strength, b.strength), list(a.cites) + list(b.cites),
                         tuple(sorted(set(a.params_b) | set(b.params_b))))
    raise AssertionError("unreachable")


def _extend(t: _Term, sf: _SetFactor) -> None:
    """Range-only evidence: widen a term's range to cover the factor's figures (the point stays)."""
    t.low = min(t.low, sf.raw_low)
    t.high = max(t.high, sf.raw_high)
    t.cites.extend(c for c in sf.cites if c not in t.cites)


# --------------------------------------------------------------------------
# Objective and method factors
# --------------------------------------------------------------------------


def _orpo_term(ev: Evidence, total_params: int | None, acc: _Acc) -> _Term:
    big = ev.sets["obj.orpo_vs_dpo"]
    small = ev.sets["obj.orpo_vs_dpo.small"]
    if total_params is not None and total_params < 1e9:
        acc.notes.append("Below ~1B parameters ORPO lost to DPO head to head (ORPO paper, 125M), so it is scored "
                         "below DPO here.")
        acc.weak.append("ORPO below 1B: a single head-to-head win rate")
        return _term(small, "ORPO vs DPO below 1B (win rate / 50%)")
    t = _term(big, "ORPO (single stage) vs SFT+DPO")
    if total_params is None:
        _extend(t, small)
        acc.notes.append("Model size not given: the range includes ORPO's result below 1B, where it lost to DPO.")
    return t


def _lora_base(ev: Evidence, method_task: str, r: int, acc: _Acc, regime: str) -> _Term:
    """LoRA on all linear layers vs full FT for this task and rank."""
    curve = {"code": "lora.rank.code", "math": "lora.rank.math", "domain": "lora.rank.cpt", "facts": "lora.rank.cpt"}
    if method_task == "chat":
        return _term(ev.sets["lora.chat"], "LoRA vs full FT on instruction following (rank-insensitive)")
    t = _curve_term(ev, curve[method_task], r, acc)
    t.label = f"{t.label} (r={r})"
    if method_task == "facts":
        acc.weak.append("facts: no LoRA-vs-full figure for fact memorisation; the continued-pretraining gap is used")
    if regime == "large" and method_task in ("code", "math"):
        cpt = _curve_term(ev, "lora.rank.cpt", r, _Acc())
        t.low = min(t.low, cpt.low)
        t.cites.extend(cpt.cites)
        acc.notes.append("With this much data LoRA's gap can grow towards the continued-pretraining gap "
                         "(Biderman et al.), which sets the low end.")
    return t


def _low_rank(ev: Evidence, t: _Term, r: int, dora: bool, chat: bool, acc: _Acc) -> None:
    """Below the smallest rank measured for the task (16; 8 on chat data, QLoRA Fig. 4) the low end
    takes the collapse seen at r=4/8 relative to r=16 (DoRA repository): severe for LoRA, mild for DoRA."""
    if r >= (8 if chat else 16):
        return
    key = ("dora" if dora else "lora") + (".low_rank.r4" if r <= 4 else ".low_rank.r8")
    sf = ev.sets[key]
    t.low = t.low * min(sf.raw_low, 1.0)
    t.cites.extend(c for c in sf.cites if c not in t.cites)
    if chat:
        acc.weak.append(f"rank {r} is below the ranks compared on instruction data (8-64)")
    acc.notes.append("At low rank LoRA collapsed in one study (DoRA repository) while DoRA held up; this sets "
                     "the low end.")


def _targets_kind(targets) -> str:
    # LoRA on lm_head / embed_tokens (beside the decoder linears) has no evidence of its own: the
    # decoder targets decide the kind
    outer = {"lm_head", "embed_tokens"}
    if not isinstance(targets, str) and set(targets) & outer:
        targets = tuple(t for t in targets if t not in outer)
        if not targets:
            raise FtAdvisorError("lora_targets", "the quality model rates LoRA on decoder linears; add attention or "
                                 "MLP modules (or all-linear) beside lm_head/embed_tokens", ["all-linear"])
    if targets in ("all-linear", ("all-linear",)):
        return "all"
    names = set(targets)
    unknown = names - ATTENTION_MODULES - MLP_MODULES - ROUTER_MODULES
    if unknown:
        raise FtAdvisorError(
            "lora_targets", f"unknown module {sorted(unknown)[0]!r}",
            ["all-linear", *sorted(ATTENTION_MODULES | MLP_MODULES | ROUTER_MODULES)],
        )
    has_attn, has_mlp = bool(names & ATTENTION_MODULES), bool(names & MLP_MODULES)
    if has_attn and has_mlp:
        return "all"
    if has_attn:
        return "attention"
    if has_mlp:
        return "mlp"
    return "router"


class _Draft:
    """The quality model's toolkit, handed to each technique part's ``quality_terms`` hook
    (``ftadvisor/techniques/<part>.py``): what the estimate is about (task, regime, rank, targets)
    and how a part adds evidence (a factor, the LoRA-vs-full base, notes, thin-evidence reasons)."""

    def __init__(self, ev: Evidence, acc: _Acc, task: str, regime: str, rank: int | None, targets: str,
                 total_params: int | None, lora_init: str = "default"):
        self.ev, self.acc = ev, acc
        self.task, self.regime, self.rank, self.targets, self.total_params = task, regime, rank, targets, total_params
        self.lora_init = lora_init
        """How the LoRA matrices start (plan.lora_init): default, gaussian, pissa, pissa_niter_N."""
        self.method_task = task if task in SFT_TASKS else "chat"
        self.base: _Term | None = None
        """The term the small-data extension widens (set by a method that has one)."""

    def term(self, key: str, label: str) -> _Term:
        """Multiply the estimate by the evidence factor ``key``."""
        return self.acc.add(_term(self.ev.sets[key], label))

    def lora_base(self, rank: int) -> _Term:
        """Multiply by LoRA on all linear layers vs full FT for this task at ``rank``."""
        return self.acc.add(_lora_base(self.ev, self.method_task, rank, self.acc, self.regime))

    def low_rank(self, t: _Term, dora: bool) -> None:
        _low_rank(self.ev, t, self.rank, dora, self.method_task == "chat", self.acc)

    def orpo_term(self) -> _Term:
        return self.acc.add(_orpo_term(self.ev, self.total_params, self.acc))

    def final_high(self, key: str) -> None:
        """Range-only evidence for the high end of the whole estimate."""
        sf = self.ev.sets[key]
        self.acc.final_high.append(sf.raw_high)
        self.acc.extra_cites.extend(sf.cites)

    def final_low(self, key: str) -> None:
        sf = self.ev.sets[key]
        self.acc.final_low.append(sf.raw_low)
        self.acc.extra_cites.extend(sf.cites)

    def note(self, text: str) -> None:
        self.acc.notes.append(text)

    def weak(self, reason: str) -> None:
        self.acc.weak.append(reason)


def _method_terms(ev: Evidence, draft: _Draft, m, objective, quant: str) -> None:
    """The method's factors (its module's ``quality_terms``), then a quantized base and small data."""
    acc = draft.acc
    if (draft.task not in SFT_TASKS or not objective.sft_loss) and not m.reference_method:
        acc.notes.append("The method factor uses instruction-tuning evidence (no direct comparison under a "
                         "preference/RL objective was collected).")
        acc.cap = min(acc.cap, 1)
    m.quality_terms(draft)
    if m.reference_method:
        return
    # a quantized frozen base
    s = ev.sets
    if quant == "nf4":
        acc.add(_term(s["quant.nf4"], "NF4 base vs BF16 base (LoRA on top)"))
        if draft.task == "math":
            draft.final_low("quant.nf4.math_risk")
            acc.notes.append("Math risk: one Orca-Math run saw QLoRA at about half of full FT (Answer.AI); it sets "
                             "the low end.")
    elif quant == "int8":
        acc.add(_term(s["quant.int8"], "Int8 base vs BF16 base (LoRA on top)"))
    if draft.regime == "small" and draft.base is not None:
        _extend(draft.base, s["lora.small_data"])
        acc.notes.append("With under 10k examples full fine-tuning can overfit; LoRA matched or beat it on small "
                         "tasks (LoRA paper Table 2), which raises the high end.")


def _retention(ev: Evidence, m, objective, task: str
               ) -> tuple[float, float, float, int, list[Citation], list[str]]:
    """Share of general ability kept, its range, strength, citations and weak reasons."""
    rt_task = task if task in SFT_TASKS else "chat"
    weak: list[str] = []
    if rt_task in ("chat", "facts"):
        weak.append(f"retention on {rt_task}: no direct measurement")
    if task not in SFT_TASKS or not objective.sft_loss:
        weak.append("retention after preference/RL training: not measured")
    full = ev.sets[f"retention.full.{rt_task}"]
    lora = ev.sets[f"retention.lora.{rt_task}"]
    if m.retention == "between":
        # e.g. HFT forgets less than full FT (HFT abstract), so it sits between full FT and LoRA;
        # the point is placed half way.
        point = (min(full.point, 1.0) + min(lora.point, 1.0)) / 2
        low, high = full.low, lora.high
        strength = min(full.strength, lora.strength)
        cites = list(full.cites) + list(lora.cites)
    else:
        sf = full if m.retention == "full" else lora
        point, low, high, strength = sf.point, sf.low, sf.high, sf.strength
        cites = list(sf.cites)
    if m.retention_note:
        weak.append(m.retention_note)
    if weak:
        low, high = low - ev.halfwidth, high + ev.halfwidth
        strength = 0
    point = min(point, 1.0)
    return point, min(max(low, 0.0), point), min(max(high, point), 1.0), strength, cites, weak


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def regime_for(examples: int) -> str:
    """small / medium / large for a number of training examples (thresholds in evidence.yaml)."""
    ev = evidence()
    if examples < ev.small_max_examples:
        return "small"
    if examples >= ev.large_min_examples:
        return "large"
    return "medium"


def _check_int(field_name: str, value, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FtAdvisorError(field_name, f"must be a whole number >= {minimum}, got {value!r}")
    return value


def estimate_quality(
    technique: str,
    task: str,
    data_regime: str | None = None,
    *,
    examples: int | None = None,
    lora_r: int | None = None,
    total_params: int | None = None,
    quantization: str | None = None,
    lora_targets: str | tuple[str, ...] | list[str] = "all-linear",
    lora_init: str = "default",
) -> QualityEstimate:
    """Expected quality of ``technique`` on ``task`` relative to full fine-tuning (see the module docstring).

    technique: a name from ftadvisor.techniques (``lora``, ``dpo+qlora`` ...); task: one of TASKS;
    data_regime: small/medium/large, or derived from ``examples``; lora_r: LoRA/DoRA rank (also the
    rank of Lamini memory experts; 16 when not given); total_params: base-model parameters (for the
    size-dependent evidence); quantization: none/nf4/int8 (None = the method's default);
    lora_targets: ``all-linear`` or module names; lora_init: how LoRA starts (``default``,
    ``gaussian``, ``pissa``, ``pissa_niter_N``).
    """
    tech = parse_technique(technique)
    if not isinstance(task, str) or task.strip().lower() not in TASKS:
        raise FtAdvisorError("task", f"unknown task family {task!r}", TASKS)
    task = task.strip().lower()
    if data_regime is not None and (not isinstance(data_regime, str) or data_regime.strip().lower() not in REGIMES):
        raise FtAdvisorError("data_regime", f"unknown regime {data_regime!r}", REGIMES)
    data_regime = data_regime.strip().lower() if data_regime is not None else None
    examples = _check_int("examples", examples)
    lora_r = _check_int("lora_r", lora_r)
    total_params = _check_int("total_params", total_params)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise FtAdvisorError("quantization", f"unknown value {quantization!r}", QUANTIZATIONS)
    if isinstance(lora_targets, str):
        targets = ("all-linear",) if lora_targets.strip() == "all-linear" else tuple(
            t.strip() for t in lora_targets.split(",") if t.strip())
    elif isinstance(lora_targets, (tuple, list)) and all(isinstance(t, str) for t in lora_targets):
        targets = tuple(lora_targets)
    else:
        raise FtAdvisorError("lora_targets", f"expected 'all-linear' or module names, got {lora_targets!r}")
    if not targets:
        raise FtAdvisorError("lora_targets", "names no module", ["all-linear"])
    from ftadvisor.schema import check_lora_init

    lora_init = check_lora_init(lora_init)
    return _estimate(tech.objective.name, tech.method.name, tech.name, task, data_regime, examples, lora_r,
                     total_params, quantization, targets, lora_init)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _data_regime(ev: Evidence, regime: str | None, examples: int | None) -> tuple[str, bool]:
    """(regime, assumed): the one derived from ``examples`` (a given regime must agree), else the
    given one, else medium (assumed)."""
    if examples is not None:
        derived = regime_for(examples)
        if regime is not None and regime != derived:
            raise FtAdvisorError(
                "data_regime",
                f"{regime!r} contradicts examples={examples:,} (that is {derived!r}: small < "
                f"{ev.small_max_examples:,} <= medium < {ev.large_min_examples:,} <= large)",
                REGIMES,
            )
        regime = derived
    assumed = regime is None
    return regime or "medium", assumed


def _base_quantization(m, method: str, quantization: str | None) -> str:
    """The frozen base's storage (same rules as the memory model)."""
    quant = quantization if quantization is not None else m.default_quantization
    if quant != "none" and not m.peft:
        raise FtAdvisorError("quantization", f"{quant} stores a frozen base; {method} trains the base weights", ["none"])
    if quant == "none" and m.quantized_base:
        raise FtAdvisorError("quantization", f"{method} means a quantized base", ["nf4", "int8"])
    return quant


def _not_applicable(ev: Evidence, m, obj, objective: str, name: str, task: str, regime: str) -> QualityEstimate:
    """An objective that cannot learn the target (a preference or reward objective on a corpus or a
    fact list): nothing is learned towards it (0); retention as usual."""
    fig = ev.figures[obj.definition_figure]
    r_point, r_low, r_high, _r_strength, r_cites, _ = _retention(ev, m, obj, task)
    what = "a domain corpus" if task == "domain" else "a fixed fact list"
    notes = (f"Not applicable: {objective.upper()} optimises preferences or a reward, so it does not fit {what}; "
             f"nothing is learned towards the target (0). Train with SFT (continued pretraining) instead.")
    return QualityEstimate(
        technique=name, task=task, data_regime=regime, applicable=False, relative_to_full=0.0, low=0.0, high=0.0,
        retention=round(r_point, 3), retention_low=round(r_low, 3), retention_high=round(r_high, 3),
        sources=_dedupe([fig.citation, *r_cites]), notes=notes, evidence_strength="strong",
    )


def _size_warnings(ev: Evidence, acc: _Acc, total_params: int | None) -> None:
    """Thin evidence: the model's size is outside what a factor's figures cover."""
    if total_params is None:
        return
    billions = total_params / 1e9
    for t in acc.terms:
        if t.params_b and not (min(t.params_b) / ev.size_tolerance <= billions <= max(t.params_b) * ev.size_tolerance):
            acc.weak.append(f"{t.label}: measured on {_span(t.params_b)} parameters, the model has {billions:.3g}B")


def _compose(ev: Evidence, acc: _Acc) -> tuple[float, float, float, int]:
    """(point, low, high, strength): the factors multiply, and so do their ranges; range-only
    evidence moves the ends; thin evidence widens the range by ``halfwidth`` each side."""
    point = low = high = 1.0
    strength = acc.cap
    for t in acc.terms:
        point *= t.point
        low *= t.low
        high *= t.high
        strength = min(strength, t.strength)
    if acc.final_low:
        low = min(low, *acc.final_low)
    if acc.final_high:
        high = max(high, *acc.final_high)
    if acc.weak:
        low, high = low - ev.halfwidth, high + ev.halfwidth
        strength = 0
    low = min(max(low, 0.0), point)
    high = max(high, point)
    return point, low, high, strength


def _notes(ev: Evidence, acc: _Acc, head: list[str], n_objective: int, retention: tuple) -> str:
    """The estimate in words: the reference, each factor, how they combine, why the range is wide,
    the factors' own notes and retention."""
    parts = []
    if acc.terms:
        parts.append("; ".join(f"{t.label}: {_fmt(t.point)}" for t in acc.terms) + ".")
    if n_objective and len(acc.terms) > n_objective:
        parts.append(f"Combined as objective factor ({_fmt(_prod(acc.terms[:n_objective]))}) x method factor "
                     f"({_fmt(_prod(acc.terms[n_objective:]))}); the range multiplies the factors' ranges.")
    elif len(acc.terms) > 1:
        parts.append("Factors multiply; the range multiplies the factors' ranges.")
    if not acc.terms:
        parts.append("This is the reference itself.")
    if acc.weak:
        parts.append(f"Range widened by {_fmt(ev.halfwidth)} each side for thin evidence: " + "; ".join(acc.weak) + ".")
    r_point, r_low, r_high, _r_strength, _r_cites, r_weak = retention
    retention_note = f"Retention {_fmt(r_point)} ({_fmt(r_low)}-{_fmt(r_high)}) from Biderman et al.'s forgetting metric"
    retention_note += " (widened: " + "; ".join(r_weak) + ")." if r_weak else "."
    return " ".join(head + parts + acc.notes + [retention_note])


def _citations(ev: Evidence, acc: _Acc, r_cites: list[Citation], examples: int | None) -> tuple[Citation, ...]:
    """Every factor's citations, range-only evidence, retention, and the regime thresholds' sources
    when the regime was derived from an example count."""
    cites: list[Citation] = []
    for t in acc.terms:
        cites.extend(t.cites)
    cites.extend(acc.extra_cites)
    cites.extend(r_cites)
    if examples is not None:
        cites.extend(ev.regime_cites)
    return _dedupe(cites)


@lru_cache(maxsize=16384)
def _estimate(objective: str, method: str, name: str, task: str, regime: str | None, examples: int | None,
              lora_r: int | None, total_params: int | None, quantization: str | None,
              targets: tuple[str, ...], lora_init: str = "default") -> QualityEstimate:
    ev = evidence()
    m = METHODS[method]
    obj = OBJECTIVES[objective]
    acc = _Acc()
    # data regime
    regime, assumed = _data_regime(ev, regime, examples)
    # quantized base (same rules as the memory model)
    quant = _base_quantization(m, method, quantization)

    rank = None
    if m.uses_rank:
        rank = lora_r if lora_r is not None else 16  # TrainingPlan's default lora_r
        if lora_r is None and m.rank_matters(task):
            acc.notes.append("Rank not given: r=16 assumed.")
    tkind = _targets_kind(targets) if m.lora else "all"

    ref = REFERENCE_OBJECTIVE.get(task, "sft")
    head = [f"Reference (= 1.0): full fine-tuning with {ref.upper()} on this task."]
    if assumed:
        head.append("Data size not given: medium regime assumed.")

    # an objective that cannot learn the target
    if not obj.learns_corpus() and task in ("domain", "facts"):
        return _not_applicable(ev, m, obj, objective, name, task, regime)
    applicable = bool(obj.applicable(task))

    draft = _Draft(ev, acc, task, regime, rank, tkind, total_params, lora_init)
    obj.quality_terms(draft)
    n_objective = len(acc.terms)
    _method_terms(ev, draft, m, obj, quant)
    # model size outside what a factor's figures cover
    _size_warnings(ev, acc, total_params)
    # compose
    point, low, high, strength = _compose(ev, acc)
    # notes
    retention = _retention(ev, m, obj, task)
    notes = _notes(ev, acc, head, n_objective, retention)
    r_point, r_low, r_high, _r_strength, r_cites, _r_weak = retention
    return QualityEstimate(
        technique=name, task=task, data_regime=regime, applicable=applicable,
        relative_to_full=round(point, 3), low=round(low, 3), high=round(high, 3),
        retention=round(r_point, 3), retention_low=round(r_low, 3), retention_high=round(r_high, 3),
        sources=_citations(ev, acc, r_cites, examples), notes=notes, evidence_strength=_STRENGTHS[strength],
    )


def _prod(terms: list[_Term]) -> float:
    out = 1.0
    for t in terms:
        out *= t.point
    return out


def _span(params_b: tuple[float, ...]) -> str:
    lo, hi = min(params_b), max(params_b)
    return f"{lo:g}B" if lo == hi else f"{lo:g}-{hi:g}B"


def _dedupe(cites) -> tuple[Citation, ...]:
    seen: set[int] = set()
    out = []
    for c in cites:
        if id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return tuple(out)
