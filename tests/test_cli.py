"""The CLI: output formats, exit codes, and one-line errors without tracebacks."""

import csv
import io
import json
import subprocess
import sys

import pytest

from tests.conftest import LLAMA31_8B, ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_default_table():
    out = run("estimate")
    assert out.returncode == 0, out.stderr
    assert "Llama 3.1 8B" in out.stdout and "qlora" in out.stdout and "fits" in out.stdout


@pytest.mark.parametrize("args", [(), ("-m", "llama-3.1-405b", "-g", "h100", "-n", "8", "-t", "full,dpo,ppo",
                                       "--set", "sharding=fsdp", "--set", "cpu_offload=true")])
def test_table_fits_80_columns_without_cutting_numbers(args):
    # a pipe gives rich 80 columns: every cell must be whole (stop 16 cut tok/s "1,737" to "1,7…" once the host
    # RAM column arrived; 405B full: trainable "405.85B", host "7,563", PPO's 281.8 GiB are the widest cells)
    out = subprocess.run([sys.executable, "-m", "ftadvisor.cli", "estimate", *args], capture_output=True, text=True,
                         cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("│")]
    assert table and all(len(line) <= 80 for line in table)
    assert not any("…" in line for line in table), "\n".join(table)


def test_json_and_csv():
    out = run("estimate", "-m", "qwen2.5-7b", "-g", "a100", "-t", "lora", "-t", "dpo+qlora", "--json",
              "--set", "seq_len=1024", "--set", "gradient_checkpointing=true")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [d["technique"] for d in data] == ["lora", "dpo+qlora"]
    assert data[0]["plan"]["seq_len"] == 1024 and data[0]["plan"]["gradient_checkpointing"] is True
    assert data[0]["memory"]["device_total_bytes"] > data[0]["memory"]["peak_allocated_bytes"]
    out = run("estimate", "-m", "qwen2.5-7b", "-g", "a100", "-t", "all", "--csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) >= 12 and {"technique", "device_total_bytes", "fits"} <= set(rows[0])


def test_plan_file(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: mistral-7b\ngpu: l40s\ntechnique: qlora\nseq_len: 4096\nlora_r: 64\n")
    out = run("estimate", "--plan", str(plan), "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)[0]
    assert d["model_id"] == "mistral-7b" and d["hardware_id"] == "l40s" and d["plan"]["lora_r"] == 64


@pytest.mark.parametrize(
    "args,needle",
    [
        (["estimate", "-m", "lama-3.1-8b"], "model"),
        (["estimate", "-g", "rtx4900"], "gpu"),
        (["estimate", "-t", "qlorra"], "technique"),
        (["estimate", "--set", "micro_batch_size=-4"], "micro_batch_size"),
        (["estimate", "--set", "seq_len=abc"], "seq_len"),
        (["estimate", "--set", "sharding=zero4"], "sharding"),
        (["estimate", "--set", "nonsense"], "--set"),
        (["estimate", "--plan", "/no/such/plan.yaml"], "--plan"),
        (["estimate", "-m", "/no/such/config.json"], "model"),
        (["profiles", "show", "nothing-like-this"], "name"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, needle):
    out = run(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_malformed_and_unsupported_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(LLAMA31_8B, hidden_size="big")))
    out = run("estimate", "-m", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "hidden_size" in out.stderr
    (tmp_path / "config.json").write_text('{"model_type": "t5", "d_model": 512}')
    out = run("estimate", "-m", str(tmp_path))
    assert out.returncode == 2 and "model_type" in out.stderr


def test_profiles_list_and_show():
    out = run("profiles", "list")
    assert out.returncode == 0 and "llama-3.1-405b" in out.stdout and "h200" in out.stdout
    out = run("profiles", "show", "mixtral-8x7b")
    assert json.loads(out.stdout)["derived"]["total_params"] == 46_702_792_704


def test_launch_without_training_stack_is_one_line(tmp_path):
    # A core-only install: the training packages are hidden from the child interpreter.
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n in ('torch', 'trl') else real(n, *a)\n"
        "from ftadvisor.stack import require_training_stack\n"
        "from ftadvisor.errors import FtAdvisorError\n"
        "try:\n    require_training_stack('launch')\nexcept FtAdvisorError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "launch: needs the training stack; missing torch, trl" in out.stdout


def test_capacity_command_matches_the_api():
    import ftadvisor as fa
    from ftadvisor.recommend import MEMORY_HEADROOM, fits_card

    # "fits" is the recommender's: the card less 5% (the capacity command's default headroom)
    out = run("capacity", "-m", "llama-3.1-8b", "-g", "rtx4090", "-t", "qlora", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["headroom"] == MEMORY_HEADROOM
    mb, s = d["max_micro_batch_size"], d["max_seq_len"]
    assert fits_card(fa.estimate("llama-3.1-8b", "rtx4090", "qlora", micro_batch_size=mb))
    assert not fits_card(fa.estimate("llama-3.1-8b", "rtx4090", "qlora", micro_batch_size=mb + 1))
    assert fits_card(fa.estimate("llama-3.1-8b", "rtx4090", "qlora", seq_len=s))
    assert not fits_card(fa.estimate("llama-3.1-8b", "rtx4090", "qlora", seq_len=s + 1))
    assert d["min_gpus"] == 1
    out = run("capacity", "-m", "llama-3.1-70b", "-g", "h100", "-t", "full", "--json")
    d = json.loads(out.stdout)
    # batch and sequence are reported at the fewest GPUs that fit, not at one GPU where nothing fits
    assert d["min_gpus"] > 8 and d["sharding"] in ("zero3", "fsdp")
    assert d["at"] == {"num_gpus": d["min_gpus"], "sharding": d["sharding"]} and d["max_micro_batch_size"] >= 1

def test_python_dash_m_runs_the_same_command_line():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ftadvisor", "estimate", "-t", "nonsense"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "technique" in out.stderr, out.stderr


def test_estimate_header_names_a_technique_that_runs_at_its_own_micro_batch():
    # KTO's trainer needs two sequences per micro-batch (the KL term pairs neighbours): its rows run at
    # 2 while the shared plan says 1, and the header says so
    out = run("estimate", "-m", "llama-3.2-1b", "-g", "h100", "-t", "lora,kto+lora")
    assert out.returncode == 0, out.stderr
    assert "micro-batch 1 (kto+lora 2)" in " ".join(out.stdout.split())
