"""The two calls the plans screen makes: ask the recommender, and re-estimate one plan after a knob turns.

Both go through the public API (``ftadvisor.recommend``, ``ftadvisor.estimate``); this module only
turns their answers into table rows. When the recommender cannot run (not installed in this
build, or one of its parts missing) the screen still works: every technique is estimated for
memory, unranked, and a note says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftadvisor.tui.state import WizardState
from ftadvisor.tui.widgets.plans import PlanRow


@dataclass
class Advice:
    rows: list[PlanRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ranked: bool = True
    """False when the rows are plain estimates (the recommender was not available)."""


def from_recommendation(rec: Any) -> Advice:
    """Table rows for a :class:`ftadvisor.recommend.Recommendation`: ranked plans, then the rejected ones."""
    rows = [PlanRow(f"p{i}", rp.rank, rp.plan, rp.estimate, tuple(rp.reasons)) for i, rp in enumerate(rec.plans)]
    rows += [PlanRow(f"r{i}", None, rp.plan, rp.estimate, tuple(rp.reasons), rejected=True)
             for i, rp in enumerate(rec.rejected)]
    notes = list(getattr(rec, "notes", ()))
    if not rec.plans:
        notes.append("nothing fits: the greyed rows say what would make each one fit")
    return Advice(rows, notes)


def _estimates_only(state: WizardState, why: str) -> Advice:
    from ftadvisor.estimator import estimate
    from ftadvisor.tui.format import gib
    from ftadvisor.techniques import all_techniques

    mp, hw = state.model, state.hardware
    fields: dict[str, Any] = dict(num_gpus=state.num_gpus, num_nodes=state.num_nodes)
    if state.seq_len:
        fields["seq_len"] = state.seq_len
    rows = []
    for i, name in enumerate(n for n in all_techniques() if mp.arch.is_moe or n != "moe"):
        est = estimate(mp, hw, name, **fields)
        reasons = () if est.fits else (
            f"needs {gib(est.memory.device_total_bytes)} GiB per GPU of {hw.memory_gib:.0f}; try the knobs below",)
        rows.append(PlanRow(f"e{i}", None, est.plan, est, reasons, rejected=not est.fits))
    note = f"memory estimates for every technique at the default plan, unranked (ranking unavailable: {why})"
    return Advice(rows, [note], ranked=False)


def advise(state: WizardState) -> Advice:
    """Ranked plans for the wizard's choices (raises FtAdvisorError for bad inputs)."""
    try:
        from ftadvisor.recommend import recommend

        rec = recommend(state.model, state.hardware, **state.recommend_kwargs())
    except ImportError as err:
        return _estimates_only(state, str(err))
    return from_recommendation(rec)


def reestimate(state: WizardState, row: PlanRow, fields: dict[str, Any]) -> PlanRow:
    """``row``'s plan with ``fields`` changed, estimated again (raises FtAdvisorError for bad values).

    Memory comes from :func:`ftadvisor.estimate`. When the recommender offers
    ``evaluate_plan(model, hardware, plan, **recommend_kwargs)`` (the call it makes for each of its
    own plans) that supplies speed, time, cost and quality too; otherwise throughput comes from
    :func:`ftadvisor.speed.estimate_speed` (a function of the plan alone), the quality estimate is
    kept while the LoRA rank is unchanged, and time and cost are left out rather than guessed.
    """
    from ftadvisor.estimator import estimate

    est = estimate(state.model, state.hardware, row.plan.technique, plan=row.plan, **fields)
    import importlib

    try:
        # the module, not the package attribute of the same name (ftadvisor.recommend is also the function)
        rec_mod = importlib.import_module("ftadvisor.recommend")
    except ImportError:
        rec_mod = None
    evaluate = getattr(rec_mod, "evaluate_plan", None)
    if evaluate is not None:
        per_plan = ("goal", "examples", "avg_tokens", "dataset_tokens", "epochs", "hourly_price_usd")
        kw = {k: v for k, v in state.recommend_kwargs().items() if k in per_plan}
        est = evaluate(state.model, state.hardware, est.plan, **kw)
    else:
        extra: dict[str, Any] = {"time_cost": None}
        try:
            from ftadvisor.speed import estimate_speed

            extra["speed"] = estimate_speed(state.model, state.hardware, est.plan)
        except ImportError:
            extra["speed"] = None
        same_rank = est.plan.lora_r == row.plan.lora_r
        extra["quality"] = getattr(row.estimate, "quality", None) if same_rank else None
        est = est.model_copy(update=extra)
    return PlanRow(row.key, row.rank, est.plan, est, row.reasons, rejected=not est.fits, edited=True)
