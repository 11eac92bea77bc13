"""The wizard's plans screen on a live recommender answer (the snapshot tests replay a recorded one, so
they cannot notice a recommender that picks the wrong configuration; issue 14).

The walk asks for Llama-3.2-1B on one A100 80GB for a chat goal with no data size: the recommender
ranks each technique's fastest fitting configuration by tokens/s. The screen must show exactly what
``ftadvisor.recommend`` answers, and every shown configuration must be the fastest that fits, checked
against the exhaustive search of tests/test_recommend_bruteforce.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("textual")

import ftadvisor  # noqa: E402
from tests.test_recommend_bruteforce import Question, fitting_points  # noqa: E402
from tests.test_tui import make_app, screen_text, settle  # noqa: E402


async def settle_until(pilot, done, rounds: int = 40) -> None:
    """Settle until ``done()`` holds (the recommender runs in a worker; under load it takes longer
    than a fixed number of rounds)."""
    for _ in range(rounds):
        await settle(pilot)
        if done():
            return


def test_plans_screen_shows_the_fastest_fitting_configurations():
    async def walk():
        app = make_app()  # the real advisor: ftadvisor.recommend
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot)
            await pilot.press(*"llama-3.2-1b", "enter")
            await settle_until(pilot, lambda: app.current_mode == "hardware")
            await pilot.press("end", "ctrl+u", *"a100-80gb", "enter")
            await settle_until(pilot, lambda: app.current_mode == "goal")
            assert app.current_mode == "goal" and app.state.hardware.id == "a100-80gb"
            await pilot.press("ctrl+n")  # goal "chat", no data: everything else is optional
            await settle_until(pilot, lambda: app.current_mode == "plans" and bool(getattr(app.screen, "rows", None)))
            await settle(pilot)
            assert app.current_mode == "plans", screen_text(app)
            return app.state, dict(app.screen.rows), screen_text(app), {
                "micro_batch_size": app.screen.query_one("#knob-micro_batch_size").value,
                "gradient_checkpointing": app.screen.query_one("#knob-gradient_checkpointing").value,
            }

    state, rows, text, knobs = asyncio.run(walk())
    kwargs = state.recommend_kwargs()
    assert "examples" not in kwargs and "dataset_tokens" not in kwargs  # ranked by tokens/s
    rec = ftadvisor.recommend(state.model, state.hardware, **kwargs)
    ranked = sorted((r for r in rows.values() if not r.rejected), key=lambda r: r.rank)
    # the screen shows the live answer, plan for plan
    assert [(r.rank, r.plan) for r in ranked] == [(p.rank, p.plan) for p in rec.plans]
    assert len(ranked) >= 4
    for r in ranked:
        line = next(ln for ln in text.splitlines() if re.match(rf"\s*{r.rank}\s+{re.escape(r.plan.technique)}\s", ln))
        assert f"{r.estimate.speed.tokens_per_second_total:,.0f}" in line, line
    # the selected plan's knobs show its configuration
    best = ranked[0].plan
    assert knobs == {"micro_batch_size": str(best.micro_batch_size),
                     "gradient_checkpointing": best.gradient_checkpointing}
    # and each shown configuration is the fastest that fits, by exhaustive search
    q = Question(model="llama-3.2-1b", gpu="a100-80gb", num_gpus=1, goal="chat", examples=None, avg_tokens=None,
                 seq_len=None, budget_hours=None)
    for r in ranked:
        best_tps = max(e.speed.tokens_per_second_total for e in fitting_points(q, r.plan.technique))
        assert r.estimate.speed.tokens_per_second_total >= best_tps * (1 - 1e-9), (
            r.plan.technique, r.plan.micro_batch_size, r.estimate.speed.tokens_per_second_total, best_tps)


def test_plan_table_columns_hold_their_widest_cell_before_any_idle():
    """DataTable measures added cells only when its queue runs dry; under load the plans table was
    drawn first and cut 26,787 tokens/s to "26,78" (CI, stop 15). The table sizes its columns as it
    fills them: no pause between ``show`` and the check."""
    from textual.app import App

    from ftadvisor.tui.widgets.plans import PlanRow, PlanTable

    plan = ftadvisor.TrainingPlan(technique="lora", micro_batch_size=64, seq_len=512)
    est = ftadvisor.estimate("llama-3.2-1b", "h100-sxm", plan=plan, with_speed=True)
    assert est.speed.tokens_per_second_total >= 10_000  # a six-character rate, wider than "tok/s"

    class One(App):
        def compose(self):
            yield PlanTable()

    async def walk():
        app = One()
        async with app.run_test(size=(120, 10)):
            table = app.query_one(PlanTable)
            table.show([PlanRow(key="a", rank=1, plan=plan, estimate=est)], capacity=80e9)
            return {key: col.content_width for key, col in table.columns.items()}

    widths = asyncio.run(walk())
    assert widths["speed"] == len(f"{est.speed.tokens_per_second_total:,.0f}")
    assert widths["technique"] == len("technique")  # the label is wider than "lora"
