"""``ftadvisor recommend --save-plan FILE [--pick N]`` (ftadvisor/planfile.py): the plan file it writes is
the one ``ftadvisor launch`` (launch.build_spec) and ``ftadvisor export`` (export.export_plan) read, and
reading it back gives plan #N exactly.
"""

from __future__ import annotations

import yaml
import pytest
from typer.testing import CliRunner

import ftadvisor
from ftadvisor.cli import app
from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT

DATA = ROOT / "examples" / "data" / "chat.jsonl"
ARGS = ["recommend", "--model", "llama-3.1-8b", "--gpu", "rtx4090-24gb", "--top", "3"]


@pytest.fixture(scope="module")
def ranked():
    from ftadvisor.recommend import recommend

    return recommend("llama-3.1-8b", "rtx4090-24gb", top=3)


def test_saved_plan_round_trips_through_launch_and_export(tmp_path, ranked):
    from ftadvisor.export import export_plan
    from ftadvisor.launch import build_spec

    path = tmp_path / "sub" / "plan.yaml"  # the folder is created
    res = CliRunner().invoke(app, [*ARGS, "--save-plan", str(path), "--pick", "2", "--data", str(DATA)])
    assert res.exit_code == 0, res.output
    want = ranked.plans[1].plan
    hint = [ln for ln in res.output.splitlines() if "next step:" in ln]
    assert len(hint) == 1 and f"ftadvisor launch {path}" in hint[0] and f"ftadvisor export {path}" in hint[0]
    assert "--data DATA" not in hint[0]  # the data is in the file
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed into place

    spec = build_spec(path)  # as `ftadvisor launch plan.yaml` reads it: no command-line values needed
    assert spec.plan.model_dump() == want.model_dump()
    assert (spec.model, spec.gpu, spec.data) == ("llama-3.1-8b", "rtx4090-24gb", str(DATA))
    assert spec.run.num_epochs == 1.0

    out = export_plan(path, "axolotl", tmp_path / "ax")
    cfg = yaml.safe_load((tmp_path / "ax" / "axolotl.yaml").read_text())
    assert cfg["base_model"] == "meta-llama/Llama-3.1-8B"  # the profile's Hub id (profiles/models)
    assert (cfg["micro_batch_size"], cfg["gradient_accumulation_steps"], cfg["sequence_len"]) == \
        (want.micro_batch_size, want.gradient_accumulation_steps, want.seq_len)
    adapter = {"lora": "lora", "qlora": "qlora"}.get(want.technique)
    if adapter is not None:
        assert (cfg["adapter"], cfg["lora_r"]) == (adapter, want.lora_r)
    assert out.framework == "axolotl"


def test_without_data_the_file_says_so_and_launch_asks_for_it(tmp_path, ranked):
    from ftadvisor.launch import build_spec

    path = tmp_path / "plan.yaml"
    res = CliRunner().invoke(app, [*ARGS, "--save-plan", str(path)])
    assert res.exit_code == 0, res.output
    text = path.read_text()
    assert "# data:" in text and "\ndata:" not in text
    with pytest.raises(FtAdvisorError) as err:
        build_spec(path)
    assert err.value.field == "--data"
    spec = build_spec(path, data=str(DATA))
    assert spec.plan.model_dump() == ranked.plans[0].plan.model_dump()  # --pick defaults to the top plan
    assert f"ftadvisor launch {path} --data DATA" in res.output


def test_bad_pick_and_folder_are_one_line_errors(tmp_path):
    res = CliRunner().invoke(app, [*ARGS, "--save-plan", str(tmp_path / "p.yaml"), "--pick", "4"])
    assert res.exit_code == 2 and "--pick" in res.output and "1 to 3" in res.output
    assert not (tmp_path / "p.yaml").exists()
    res = CliRunner().invoke(app, [*ARGS, "--save-plan", str(tmp_path)])
    assert res.exit_code == 2 and "--save-plan" in res.output and "Traceback" not in res.output


def test_other_framework_points_to_export_only(tmp_path):
    path = tmp_path / "plan.yaml"
    res = CliRunner().invoke(app, [*ARGS, "--framework", "axolotl", "--save-plan", str(path)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(path.read_text())["framework"] == "axolotl"
    hint = [ln for ln in res.output.splitlines() if "next step:" in ln][0]
    assert f"ftadvisor export {path} --to axolotl --data DATA" in hint and "ftadvisor launch" not in hint


@pytest.mark.parametrize("technique,fields,written", [
    # KTO's trainer needs two examples per micro-batch: make_plan's own default for it (objective.min_micro_batch)
    ("kto+lora", {}, {"technique": "kto+lora"}),
    ("kto+lora", {"micro_batch_size": 4}, {"technique": "kto+lora", "micro_batch_size": 4}),
    # GRPO's completion length defaults to half a short seq_len (schema.default_rl_max_new_tokens): 256 -> 128,
    # derived again on reading, so not written
    ("grpo+lora", {"seq_len": 256}, {"technique": "grpo+lora", "seq_len": 256}),
    ("grpo+lora", {"seq_len": 2048, "rl_max_new_tokens": 512}, {"technique": "grpo+lora"}),
    ("grpo+lora", {"seq_len": 512, "rl_max_new_tokens": 300},
     {"technique": "grpo+lora", "seq_len": 512, "rl_max_new_tokens": 300}),
    ("lora", {"lora_targets": ["q_proj", "v_proj"], "lora_r": 8},
     {"technique": "lora", "lora_r": 8, "lora_targets": ["q_proj", "v_proj"]}),
])
def test_only_the_fields_that_change_the_plan_are_written(technique, fields, written):
    from ftadvisor.planfile import plan_fields

    plan = ftadvisor.make_plan(technique, **fields)
    assert plan_fields(plan) == written
    assert ftadvisor.make_plan(plan=plan_fields(plan)) == plan
