"""The wizard takes what the command line takes (issue 10): a Hub id ``org/name[@rev]`` in the model search,
a card YAML file in the hardware search, and ``ftadvisor tui -m MODEL -g GPU``.

The Hub is the local stand-in of tests/test_hub.py (a real HTTP server answering the file endpoint, HF_ENDPOINT
pointed at it); nothing of ftadvisor is mocked.

    .venv/bin/python -m pytest -q tests/test_tui_inputs.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_hub import TINY_V1_PARAMS, hub  # noqa: F401 - hub is the fixture (local Hub endpoint)
from tests.test_nodes import CARD
from tests.test_tui import make_app, paste, settle

pytest.importorskip("textual")


def _rows(app) -> list[str]:
    table = app.screen.query_one("#model-table")
    return [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]


def test_model_search_takes_a_hub_id_with_revision(hub):  # noqa: F811
    async def walk():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await paste(pilot, "acme/tiny-llama@v1")
            await settle(pilot)
            # no profile matches: the line says Enter will fetch it, instead of "nothing picked"
            hint = app.screen.query_one("#model-nomatch").message
            assert "Hugging Face Hub" in hint and "acme/tiny-llama@v1" in hint
            await pilot.press("enter")
            await settle(pilot)
            assert app.current_mode == "hardware"
            model = app.state.model
            # revision v1 is the 3-layer config: 312,768 parameters by hand (tests/test_hub.py TINY)
            assert (model.id, model.arch.total_params) == ("hub:acme/tiny-llama@v1", TINY_V1_PARAMS)
            assert app.state.model_ref == "acme/tiny-llama@v1"

    asyncio.run(walk())


def test_failed_hub_fetch_shows_the_hub_error_not_a_highlighted_row(hub):  # noqa: F811
    async def walk():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            # reads as a Hub id and also matches the Llama profiles' HF ids, so rows are highlighted
            await paste(pilot, "meta-llama/llama")
            await settle(pilot)
            assert _rows(app) and all(r.startswith("llama") for r in _rows(app))
            await pilot.press("enter")
            await settle(pilot)
            err = app.screen.query_one("#model-error").message
            assert app.current_mode == "model" and app.state.model is None
            assert err.startswith("model") and "was not found" in err and "closest profiles" in err
            assert "\n" not in err
            await pilot.press("end", "ctrl+u")
            await paste(pilot, "acme/gated")
            await pilot.press("enter")
            await settle(pilot)
            assert "gated" in app.screen.query_one("#model-error").message and app.state.model is None

    asyncio.run(walk())


def test_hardware_search_takes_a_card_file(tmp_path):
    card = tmp_path / "my-card.yaml"
    card.write_text(CARD)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus_tflops: 3\n" + CARD)

    async def walk():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press(*"qwen2.5-0.5b", "enter")
            await settle(pilot)
            assert app.current_mode == "hardware"
            # a file with an unknown key: its one-line error, and no shipped card picked in its place
            await pilot.press("end", "ctrl+u")
            await paste(pilot, str(bad))
            await settle(pilot)
            assert "bogus_tflops" in app.screen.query_one("#hw-nomatch").message
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert app.current_mode == "hardware" and "bogus_tflops" in app.screen.query_one("#hw-error").message
            assert app.state.hardware.id == "cpu"  # still what detection set
            await pilot.press("end", "ctrl+u")
            await paste(pilot, str(card))
            await settle(pilot)
            assert str(app.screen.query_one("#hw-total").render()) == f"= 1 × my-card from {card}"
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert app.current_mode == "goal"
            hw = app.state.hardware
            assert (hw.id, hw.memory_gib, hw.node.gpus_per_node, app.state.hardware_ref) == ("my-card", 47.5, 4,
                                                                                               str(card))
            await pilot.press("f2")  # back on the step, the search still holds the path, not the card's id
            await settle(pilot)
            assert app.screen.query_one("#hw-query").value == str(card)

    asyncio.run(walk())


def test_tui_command_passes_model_and_gpu_through(tmp_path, monkeypatch):
    from ftadvisor.tui import main
    from ftadvisor.tui.app import FtAdvisorApp

    card = tmp_path / "my-card.yaml"
    card.write_text(CARD)
    seen = []
    monkeypatch.setattr(FtAdvisorApp, "run", lambda self: seen.append(
        (self.start_mode, self.state.model and self.state.model.id, self.state.hardware and self.state.hardware.id,
         self.state.hardware_ref)))
    main(model="qwen2.5-0.5b", gpu=str(card))
    main(model="Qwen/Qwen2.5-0.5B")  # the HF id a profile carries
    main()
    assert seen == [("goal", "qwen2.5-0.5b", "my-card", str(card)), ("hardware", "qwen2.5-0.5b", None, None),
                    ("model", None, None, None)]
    # a bad value is one line naming the field, before any screen is drawn (no terminal needed)
    for args, words in ((["-g", str(tmp_path / "nope.yaml")], "error: gpu: no such hardware file"),
                        (["-m", "llama-9000"], "error: model: unknown value 'llama-9000'")):
        out = subprocess.run([sys.executable, "-m", "ftadvisor.cli", "tui", *args], capture_output=True, text=True,
                             cwd=ROOT, stdin=subprocess.DEVNULL)
        assert out.returncode == 2 and out.stderr.startswith(words) and "Traceback" not in out.stderr


def test_launch_keeps_the_hub_revision_the_user_typed():
    """A model fetched from the Hub as org/name@rev is launched at that revision, not at the branch head."""
    from ftadvisor.profiles import resolve_model
    from ftadvisor.tui.state import WizardState

    fetched = resolve_model("llama-3.2-1b").model_copy(update={"id": "hub:someorg/tiny@v2.0", "hf_id": "someorg/tiny"})
    assert WizardState(model=fetched, model_ref="someorg/tiny@v2.0").launch_model == "someorg/tiny@v2.0"
    profile = resolve_model("llama-3.2-1b")  # a shipped profile still launches by its Hugging Face id
    assert WizardState(model=profile, model_ref="llama-3.2-1b").launch_model == profile.hf_id
