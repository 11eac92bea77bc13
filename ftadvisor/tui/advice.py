"""The two calls the plans screen makes: ask the recommender, and re-estimate one plan after a knob turns.

Both go through the public API (``ftadvisor.recommend``, ``ftadvisor.estimate``); this module only
turns their answers into table rows.
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


def from_recommendation(rec: Any) -> Advice:
    """Table rows for a :class:`ftadvisor.recommend.Recommendation`: ranked plans, then the rejected ones."""
    rows = [PlanRow(f"p{i}", rp.rank, rp.plan, rp.estimate, tuple(rp.reasons)) for i, rp in enumerate(rec.plans)]
    rows += [PlanRow(f"r{i}", None, rp.plan, rp.estimate, tuple(rp.reasons), rejected=True)
             for i, rp in enumerate(rec.rejected)]
    # a note the recommender also gave as a plan's reason (padding against tokens/s) shows in that
    # plan's detail pane only, so the line above the table stays short
    reasons = {r for rp in rec.plans for r in rp.reasons}
    notes = [n for n in getattr(rec, "notes", ()) if n not in reasons]
    if not rec.plans:
        notes.append("nothing fits: the greyed rows say what would make each one fit")
    return Advice(rows, notes)


def advise(state: WizardState) -> Advice:
    """Ranked plans for the wizard's choices (raises FtAdvisorError for bad inputs)."""
    from ftadvisor.recommend import recommend

    rec = recommend(state.model, state.planning_hardware(), **state.recommend_kwargs())
    return from_recommendation(rec)


def reestimate(state: WizardState, row: PlanRow, fields: dict[str, Any]) -> PlanRow:
    """``row``'s plan with ``fields`` changed, estimated again (raises FtAdvisorError for bad values):
    memory, speed, time, cost and quality through the recommender's own per-plan evaluation."""
    from ftadvisor.estimator import estimate
    from ftadvisor.recommend import evaluate_plan, fits_card

    hw = state.planning_hardware()
    est = estimate(state.model, hw, row.plan.technique, plan=row.plan, **fields)
    per_plan = ("goal", "examples", "avg_tokens", "dataset_tokens", "epochs", "hourly_price_usd")
    kw = {k: v for k, v in state.recommend_kwargs().items() if k in per_plan}
    est = evaluate_plan(state.model, hw, est.plan, **kw)
    # the recommender's meaning of "fits" (the card less MEMORY_HEADROOM), not the bare card
    return PlanRow(row.key, row.rank, est.plan, est, row.reasons, rejected=not fits_card(est), edited=True,
                   base=row.base or row)


MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
"""Micro-batch sizes the plans screen charts throughput for (powers of two, as the recommender searches)."""


def throughput_by_micro_batch(state: WizardState, row: PlanRow, sizes: tuple[int, ...] = MICRO_BATCHES
                              ) -> list[tuple[int, float | None, bool]]:
    """``(micro_batch_size, tokens/s, fits)`` for ``row``'s plan at each size, every other field kept
    (gradient accumulation included), from :func:`ftadvisor.estimate` with speed; a size the
    estimator refuses gives ``(size, None, False)``. About 5 ms per size."""
    from ftadvisor.errors import FtAdvisorError
    from ftadvisor.estimator import estimate
    from ftadvisor.recommend import fits_card

    hw = state.planning_hardware()
    out: list[tuple[int, float | None, bool]] = []
    for mb in sizes:
        try:
            est = estimate(state.model, hw, row.plan.technique, plan=row.plan, micro_batch_size=mb, with_speed=True)
        except FtAdvisorError:
            out.append((mb, None, False))
            continue
        tps = est.speed.tokens_per_second_total if est.speed is not None else None
        out.append((mb, tps, fits_card(est)))
    return out
