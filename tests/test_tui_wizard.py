"""The wizard as a daily driver (issue 13, part 4): focus ring, ``?`` key list, panels that follow the
knobs, wrapped run log, hardware warning at launch, type-to-filter with "no match", detected host RAM,
save / dry run / export, and the charts.

    .venv/bin/python -m pytest tests/test_tui_wizard.py -q
    FTADVISOR_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_tui_wizard.py -q -k snapshot   # re-record

Numbers are checked against hand-computed values or against an independent call of the public API
(``ftadvisor.estimate``), never against what the widget itself computed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("textual")

from tests.conftest import ROOT  # noqa: E402
from tests.test_tui import (  # noqa: E402
    GIB,
    PLANS_INPUT,
    SAMPLE_DATA,
    _shoot,
    _state,
    cpu_only,
    frozen_advisor,
    frozen_throughput,
    make_app,
    screen_text,
    settle,
)


def plans_app(**kw):
    """The app on the Plans step, replaying the recorded recommender and throughput answers."""
    kw.setdefault("state", _state("llama-3.1-8b", "rtx4090", data_path=SAMPLE_DATA))
    kw.setdefault("start", "plans")
    kw.setdefault("advisor", frozen_advisor)
    kw.setdefault("throughput", frozen_throughput)
    return make_app(**kw)


def _rgb(color) -> tuple[int, int, int]:
    return (color.r, color.g, color.b)


# ------------------------------------------------------------------------------------------------
# 1. Focus ring
# ------------------------------------------------------------------------------------------------


def test_focus_ring_marks_the_focused_control_in_the_accent_colour():
    async def walk():
        app = make_app(state=_state("llama-3.1-8b", "rtx4090"), start="goal")
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot)
            from textual.color import Color

            accent = _rgb(Color.parse(app.get_css_variables()["accent"]))
            scr = app.screen
            path, examples = scr.query_one("#data-path"), scr.query_one("#examples")
            assert app.focused is path
            focused_bg, idle_bg = _rgb(path.styles.background), _rgb(examples.styles.background)
            assert focused_bg != idle_bg
            # the focus moves, and the ring with it (compact inputs: an accent-tinted background)
            await pilot.click("#examples")
            await settle(pilot)
            assert app.focused is examples
            assert _rgb(examples.styles.background) == focused_bg and _rgb(path.styles.background) == idle_bg
            # the ring is the accent colour, see-through (35%) so the typed text stays readable
            assert focused_bg == accent and 0 < examples.styles.background.a < 1
            # a button: accent background when focused
            button = scr.query_one("#recommend")
            button.focus()
            await settle(pilot)
            assert _rgb(button.styles.background) == accent

            # full-size search field: an accent border; a table: an accent header row
            await pilot.press("f2")
            await settle(pilot)
            query, table = app.screen.query_one("#hw-query"), app.screen.query_one("#hw-table")
            assert app.focused is query
            assert _rgb(query.styles.border_top[1]) == accent
            idle_header = _rgb(table.get_component_styles("datatable--header").background)
            table.focus()
            await settle(pilot)
            assert _rgb(query.styles.border_top[1]) != accent
            assert _rgb(table.get_component_styles("datatable--header").background) != idle_header

    asyncio.run(walk())


# ------------------------------------------------------------------------------------------------
# 2. The ? key list
# ------------------------------------------------------------------------------------------------


def test_question_mark_lists_every_key_of_app_and_step():
    from textual.binding import Binding

    from ftadvisor.tui.app import FtAdvisorApp
    from ftadvisor.tui.screens.plans import PlansScreen

    async def walk():
        app = plans_app()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 3)
            await pilot.press("question_mark")
            await settle(pilot)
            assert type(app.screen).__name__ == "HelpScreen"
            text = screen_text(app)
            # every binding the app and the plans step declare, with its description
            for b in [*FtAdvisorApp.BINDINGS, *PlansScreen.BINDINGS]:
                assert isinstance(b, Binding) and b.description in text, b
            assert "^n" in text and "Next" in text and "Launch plan" in text and "This step (plans)" in text
            await pilot.press("question_mark")  # ? again closes it
            await settle(pilot)
            assert type(app.screen).__name__ == "PlansScreen"

            # in a text field holding text, ? is typed, not the help
            await pilot.press("f2")
            await settle(pilot)
            await pilot.press("end", "question_mark")
            await settle(pilot)
            assert type(app.screen).__name__ == "HardwareScreen"
            assert app.screen.query_one("#hw-query").value == "rtx4090-24gb?"

    asyncio.run(walk())


# ------------------------------------------------------------------------------------------------
# 3. The Why panel follows the knobs
# ------------------------------------------------------------------------------------------------


def test_why_panel_and_charts_follow_a_knob():
    import ftadvisor
    from ftadvisor.recommend import Recommendation

    rec = Recommendation.model_validate_json(PLANS_INPUT.read_text())
    best = rec.plans[0]

    async def walk():
        app = plans_app(throughput=None)  # the live estimator for the chart, compared below
        from ftadvisor.tui.advice import throughput_by_micro_batch

        app.throughput = throughput_by_micro_batch
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 3)
            scr = app.screen
            why_before = str(scr.query_one("#detail-why").render())
            chart_before = str(scr.query_one("#detail-memory-chart").render())
            assert "Your edits" not in why_before
            new_len = best.plan.seq_len * 2
            await pilot.click("#knob-seq_len")
            await pilot.press("end", "ctrl+u", *str(new_len))
            await settle(pilot)
            why = str(scr.query_one("#detail-why").render())
            ref = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", plan=best.plan, seq_len=new_len, with_speed=True)
            return why_before, why, chart_before, str(scr.query_one("#detail-memory-chart").render()), ref, \
                scr.query_one("#detail-throughput").points

    before, why, chart_before, chart, ref, points = asyncio.run(walk())
    assert why != before
    assert f"seq_len {best.plan.seq_len} → {2 * best.plan.seq_len}" in why
    old_gib, new_gib = best.estimate.memory.device_total_bytes / GIB, ref.memory.device_total_bytes / GIB
    assert f"memory per GPU {old_gib:.1f} GiB → {new_gib:.1f} GiB" in why, why
    assert "Why (as recommended, before your edits)" in why
    # the memory chart's row for the edited plan shows the new total, marked edited
    assert chart != chart_before and f"1 {best.plan.technique} *" in chart and f"{new_gib:.1f} GiB" in chart
    # the throughput chart is the edited plan's: at its own micro-batch, the estimator's figure
    at_mb = {mb: tps for mb, tps, _ in points}
    assert at_mb[best.plan.micro_batch_size] == pytest.approx(ref.speed.tokens_per_second_total)


# ------------------------------------------------------------------------------------------------
# 4. Wrapped, scrollable run log
# ------------------------------------------------------------------------------------------------


def test_run_log_wraps_a_long_error_line(tmp_path, monkeypatch):
    from ftadvisor.tui.runs import Run

    monkeypatch.chdir(tmp_path)
    words = [f"w{i:03d}" for i in range(60)]  # 60 × 5 characters: far wider than 80 columns
    long_line = "error: fsdp needs CUDA GPUs; " + " ".join(words) + " END-OF-LINE"
    script = tmp_path / "fail.sh"
    script.write_text(f"echo start\necho '{long_line}'\nexit 2\n")

    async def walk():
        app = make_app(state=_state(), start="run")
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot)
            run = Run(["sh", str(script)], tmp_path / "r", tmp_path / "r" / "log.jsonl")
            app.start_run(run)
            for _ in range(40):
                await pilot.pause(0.1)
                if not run.running:
                    break
            await pilot.pause(0.7)
            await settle(pilot)
            log = app.screen.query_one("#run-log")
            return screen_text(app), log, [strip.text for strip in log.lines], log.scrollable_content_region.width

    text, log, rows, width = asyncio.run(walk())
    assert type(log).__name__ == "RichLog" and log.wrap
    # the long line is wrapped over several rows of the log, none wider than the log, no word lost
    joined = " ".join(r.strip() for r in rows)
    for w in ["fsdp", "CUDA", *words, "END-OF-LINE"]:
        assert w in joined, w
    assert len(rows) >= 1 + len(long_line) // width and max(len(r.rstrip()) for r in rows) <= width
    # and on the screen, end included
    assert "END-OF-LINE" in text and "w030" in text


# ------------------------------------------------------------------------------------------------
# 5. Warning before launching on hardware that is not here
# ------------------------------------------------------------------------------------------------


def test_hardware_warning_cases():
    import ftadvisor
    from ftadvisor.detect import DetectedGPU, Detection
    from ftadvisor.tui.screens.modals import hardware_warning
    from ftadvisor.tui.widgets.plans import PlanRow

    def row(hw, n=1):
        est = ftadvisor.estimate("llama-3.2-1b", hw, "lora", num_gpus=n)
        return PlanRow("x", 1, est.plan, est)

    two_h100 = Detection([DetectedGPU("NVIDIA H100 80GB HBM3", 81559 * 2**20)] * 2, "nvidia-smi", "h100-sxm", None, "")
    assert hardware_warning(row("cpu"), _state(hardware="cpu"), cpu_only()) is None
    assert hardware_warning(row("h100-sxm", 2), _state(hardware="h100-sxm", gpus_per_node=2), two_h100) is None
    msg = hardware_warning(row("rtx4090"), _state(hardware="rtx4090"), cpu_only())
    assert "rtx4090-24gb" in msg and "no GPU" in msg
    msg = hardware_warning(row("h100-sxm", 8), _state(hardware="h100-sxm", gpus_per_node=8), two_h100)
    assert "8 h100-sxm GPUs per node" in msg and "has 2" in msg
    assert "detection has not answered" in hardware_warning(row("cpu"), _state(hardware="cpu"), None)
    assert "plan is for the CPU" in hardware_warning(row("cpu"), _state(hardware="cpu"), two_h100)


def test_launch_dialog_warns_and_saves_dry_runs_and_exports(tmp_path, monkeypatch):
    """The launch dialog: a warning (plan for an RTX 4090, this machine has none), then Save plan (a
    file ``ftadvisor launch`` reads back as the same plan), Dry run (the launcher's run directory,
    nothing trained) and, where ftadvisor.export exists, Export."""
    import yaml

    from ftadvisor.launch import PLAN_FILE, build_spec
    from ftadvisor.tui.screens.modals import export_available

    monkeypatch.chdir(ROOT)

    async def walk():
        app = plans_app(run_root=tmp_path / "runs")
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, 3)
            row = app.screen.selected
            await pilot.press("l")
            await settle(pilot)
            dlg = app.screen
            text = screen_text(app)
            assert "⚠ the plan is for 1× rtx4090-24gb but this machine has no GPU (cpu)" in text
            assert "Launch anyway" in text
            run_dir = Path(dlg.query_one("#launch-dir").value)
            await pilot.click("#launch-save")
            await settle(pilot)
            saved = run_dir.with_name(run_dir.name + ".yaml")
            assert saved.is_file() and not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]
            await pilot.click("#launch-dry")
            await settle(pilot, 4)
            dry_text = str(dlg.query_one("#launch-command").render())
            exported = None
            if export_available():
                await pilot.click("#launch-export")
                await settle(pilot)
                exported = str(dlg.query_one("#launch-command").render())
            else:
                assert not dlg.query("#launch-export")
            return row, saved, run_dir, dry_text, exported, app.job

    row, saved, run_dir, dry_text, exported, job = asyncio.run(walk())
    spec = build_spec(saved)  # the launcher's own reading of the file
    assert spec.plan == row.plan
    assert spec.model == "meta-llama/Llama-3.1-8B" and spec.data == str(ROOT / SAMPLE_DATA)
    assert yaml.safe_load(saved.read_text())["gpu"] == "rtx4090-24gb"
    assert "dry run (nothing trained)" in dry_text and "command:" in dry_text, dry_text
    assert (run_dir / PLAN_FILE).is_file() and job is None
    if exported is not None:
        assert "exported for" in exported and "$ " in exported, exported


# ------------------------------------------------------------------------------------------------
# 6. Type-to-filter in every list; "no match" picks nothing
# ------------------------------------------------------------------------------------------------


def test_lists_filter_as_you_type_and_say_no_match():
    async def walk():
        app = make_app(start="hardware")
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot, 3)
            scr = app.screen
            table = scr.query_one("#hw-table")
            table.focus()
            await settle(pilot)
            await pilot.press("h", "1")  # typed with the list focused: it goes to the search
            await settle(pilot)
            ids = [k.value for k in table.rows]
            assert scr.query_one("#hw-query").value == "h1"
            assert "h100-sxm" in ids and "h100-pcie" in ids and "a100-80gb" not in ids and "cpu" not in ids
            await pilot.press("backspace", "backspace", *"qqzz")
            await settle(pilot)
            assert table.row_count == 0
            assert "no card matches 'qqzz': nothing picked" in screen_text(app)
            await pilot.press("enter")
            await settle(pilot)
            assert app.current_mode == "hardware" and app.state.hardware.id == "cpu"  # detected, unchanged
            await pilot.press("ctrl+u", "f1")  # a cleared search picks nothing either
            await settle(pilot)
            assert app.current_mode == "model" and app.state.hardware.id == "cpu"
            await settle(pilot)
            mt = app.screen.query_one("#model-table")
            mt.focus()
            await pilot.press(*"zzqqx")
            await settle(pilot)
            assert mt.row_count == 0 and "no model profile matches 'zzqqx'" in screen_text(app)
            assert app.state.model is None

    asyncio.run(walk())


# ------------------------------------------------------------------------------------------------
# 7. Host RAM from detection
# ------------------------------------------------------------------------------------------------


def test_planning_uses_detected_host_ram():
    from ftadvisor.host import node_for

    async def walk():
        app = make_app(state=_state("qwen2.5-0.5b", "cpu"), start="plans")  # detection: cpu, 24 GiB
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot, 4)
            return app.state, str(app.screen.query_one("#detail-head").render()), screen_text(app)

    state, head, text = asyncio.run(walk())
    hw = state.planning_hardware()
    # the cpu profile says 64 GiB; this machine (the fake detection) has 24 GiB
    assert state.hardware.memory_gib == 64 and hw.memory_gib == 24
    assert node_for(hw).host_ram_gib == 24
    assert "of 24.0 GiB per GPU" in head and "24 GiB host RAM, detected" in text
    # a card that is not this machine's keeps its profile's node
    other = _state("qwen2.5-0.5b", "rtx4090", local_hardware_id="cpu", host_ram_gib=24.0)
    assert other.planning_hardware() is other.hardware


# ------------------------------------------------------------------------------------------------
# 9. Charts on known numbers
# ------------------------------------------------------------------------------------------------


def test_chart_drawing_on_known_numbers():
    from ftadvisor.tui.widgets.charts import column_rows, curve, levels, memory_chart, resample, stacked_bar_scaled

    # 0, 1, 2, 4 over two rows (16 eighths) from 0: 0, 4, 8, 16 eighths
    assert levels([0, 1, 2, 4], 2, lo=0) == [0, 4, 8, 16]
    assert column_rows([0, 4, 8, 16], 2) == ["   █", " ▄██"]
    assert column_rows([3, 12], 2, col_width=2, gap=1) == ["   ▄▄", "▃▃ ██"]
    # a curve keeps its minimum one eighth high: 2..4 on one row -> 1 + (v-2)/2 * 7
    # (round half to even: 1 + round(3.5) = 5)
    assert levels([2, 3, 4], 1, floor=1) == [1, 5, 8]
    assert levels([5, 5], 1) == [4, 4]
    assert curve([2, 3, 4], 3, 1).plain == "▁▅█"
    assert curve([2, 3, 4], 7, 1).plain == "▁▁▅▅██"  # three values on 7 columns: 2 columns each
    # ten values into five columns: means of pairs
    assert resample(list(range(10)), 5) == [0.5, 2.5, 4.5, 6.5, 8.5]
    # 6 + 2 GiB on a 12 GiB scale, 12 cells, 10 GiB card: 6 + 2 cells, capacity at cell 10
    bar = stacked_bar_scaled([("w", 6 * GIB, "blue"), ("a", 2 * GIB, "green")], 12 * GIB, 10 * GIB, 12)
    assert bar.plain == "████████··│·"
    # 12 GiB on the same scale: the two cells past the 10 GiB card are on red
    over = stacked_bar_scaled([("w", 12 * GIB, "blue")], 12 * GIB, 10 * GIB, 12)
    assert over.plain == "█" * 12 and "on red" in str(over.spans[-1].style)
    chart = memory_chart([("1 lora", [("w", 6 * GIB, "blue")], True), ("- full", [("w", 12 * GIB, "blue")], False)],
                         10 * GIB, 30)
    lines = chart.plain.split("\n")
    # label 6 + space, bar 30 - 6 - 11 = 13 cells on a 12 GiB scale (the larger plan): 6 GiB ->
    # round(6.5) = 6 cells (half to even), the 10 GiB card at round(10.83) = cell 11; total in 10 columns
    assert lines[0] == "1 lora " + "██████" + "·" * 5 + "│" + "·" + "   6.0 GiB"
    assert lines[1] == "- full " + "█" * 13 + "  12.0 GiB"


def test_signal_curves_come_from_the_step_records(tmp_path):
    from ftadvisor.tui.runs import Run
    from ftadvisor.tui.widgets.run import signal_series

    run = Run(["true"], tmp_path, tmp_path / "log.jsonl")
    run.records = [
        {"event": "start", "signals": [{"name": "reward_chosen", "label": "r+"}, {"name": "accuracy", "label": "acc"},
                                       {"name": "kl", "label": "kl"}]},
        {"event": "step", "step": 1, "loss": 0.69, "signal": {"reward_chosen": 0.0, "accuracy": 0.5}},
        {"event": "step", "step": 2, "loss": 0.60, "signal": {"reward_chosen": 0.1, "accuracy": 0.75}},
        {"event": "step", "step": 3, "loss": 0.50, "signal": {"reward_chosen": 0.3}},
    ]
    # in the declared order; a step without a name is skipped for that curve; kl never logged: no curve
    assert signal_series(run) == [("r+", [0.0, 0.1, 0.3]), ("acc", [0.5, 0.75])]


# ------------------------------------------------------------------------------------------------
# 10. Snapshots: focus, help, charts
# ------------------------------------------------------------------------------------------------


def test_snapshot_focus_help_and_charts(monkeypatch):
    from ftadvisor.recommend import Recommendation

    monkeypatch.chdir(ROOT)
    rec = Recommendation.model_validate_json(PLANS_INPUT.read_text())

    async def walk():
        app = plans_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, 3)
            await pilot.press("f3")
            await settle(pilot)
            await pilot.click("#examples")  # the focus ring on a compact field
            await settle(pilot)
            await _shoot(pilot, "focus")
            await pilot.press("f4")
            await settle(pilot)
            scr = app.screen
            detail = scr.query_one("#plan-detail")
            detail.scroll_to_widget(scr.query_one("#detail-throughput"), top=True, animate=False)
            await settle(pilot)
            await _shoot(pilot, "charts")
            # the charts show the recorded answers: every plan's total, the best fitting micro-batch
            memory = str(scr.query_one("#detail-memory-chart").render())
            for p in [*rec.plans, *rec.rejected]:
                assert f"{p.estimate.memory.device_total_bytes / GIB:.1f} GiB" in memory, (p.plan.technique, memory)
            points = frozen_throughput(app.state, scr.selected)
            mb, tps = max(((m, t) for m, t, ok in points if ok), key=lambda mt: mt[1])
            assert f"best that fits: {tps:,.0f} at {mb}" in screen_text(app)
            await pilot.press("question_mark")
            await settle(pilot)
            await _shoot(pilot, "help")
            assert "Keys" in screen_text(app) and "Everywhere" in screen_text(app)

    asyncio.run(walk())


# ------------------------------------------------------------------------------------------------
# Host RAM in the plan detail (issue 10, part 5: "show it in the tables and the TUI")
# ------------------------------------------------------------------------------------------------


def test_plan_detail_names_host_ram_when_it_is_the_limit():
    """405B full fine-tuning with FSDP + CPU offload on one 8×H100 node: the GPUs hold their shard, the
    node's 2,048 GiB of host RAM do not hold fp32 parameters, gradients and Adam state (16 B/param ×
    405.85e9 = 6,047 GiB before the rank-0 save copy), so the detail says so with both figures."""
    import ftadvisor
    from ftadvisor.tui.advice import Advice
    from ftadvisor.tui.widgets.plans import PlanRow

    est = ftadvisor.estimate("llama-3.1-405b", "h100", technique="full", num_gpus=8,
                             sharding="fsdp", cpu_offload=True)
    assert est.host is not None and not est.host.fits  # independent of the widget
    need = est.host.bytes_per_node / GIB
    assert need > 16 * 405.85e9 / GIB  # at least the offloaded fp32 state (hand count above)

    def advisor(state):
        return Advice(rows=[PlanRow("r0", None, est.plan, est, ("host RAM",), rejected=True)])

    async def look():
        app = plans_app(state=_state("llama-3.1-405b", "h100", gpus_per_node=8), advisor=advisor)
        async with app.run_test(size=(140, 40)) as pilot:
            await settle(pilot)
            text = screen_text(app)
            assert "does not fit the node's host RAM" in text
            # 7,563 GiB (the CLI's figure for this plan) = 7.4 TiB; the HGX node's 2,048 GiB = 2.0 TiB
            assert f"host RAM {need / 1024:.1f} TiB of 2.0 TiB per node" in " ".join(text.split()), text

    asyncio.run(look())


def test_framework_knob_reestimates_the_plan_for_that_stack():
    """Issue 11: the framework field flows through the wizard. Switching the selected plan to torchtune
    re-estimates it with the torchtune declaration; the figure must equal an independent API call."""
    import ftadvisor
    from ftadvisor.recommend import Recommendation
    from ftadvisor.tui.format import size

    best = Recommendation.model_validate_json(PLANS_INPUT.read_text()).plans[0]

    async def walk():
        app = plans_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, 3)
            from textual.widgets import Select

            knob = app.screen.query_one("#knob-framework", Select)
            assert knob.value == "hf-trl"  # the recommended plan is for the launcher's own stack
            knob.value = "torchtune"
            await settle(pilot)
            return str(app.screen.query_one("#detail-why").render())

    why = asyncio.run(walk())
    ref = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", plan=best.plan, framework="torchtune")
    assert ref.plan.framework == "torchtune"
    assert ref.memory.device_total_bytes != best.estimate.memory.device_total_bytes  # torchtune places memory differently
    assert "framework hf-trl → torchtune" in why, why
    assert f"→ {size(ref.memory.device_total_bytes)}" in why, why


def test_wizard_framework_reaches_the_recommender_and_bad_names_fail_in_one_line():
    import subprocess
    import sys

    from ftadvisor.tui.state import initial_state

    state, start = initial_state("llama-3.1-8b", "rtx4090", framework="TorchTune")
    assert state.framework == "torchtune" and start == "goal"
    assert state.recommend_kwargs()["framework"] == "torchtune"
    assert "framework" not in initial_state("llama-3.1-8b", "rtx4090")[0].recommend_kwargs()  # hf-trl: default
    out = subprocess.run([sys.executable, "-m", "ftadvisor", "tui", "-m", "llama-3.1-8b", "--framework", "axolotll"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "framework" in out.stderr and "axolotl" in out.stderr, out.stderr
