"""``ftadvisor launch``: run directory, data checks, safety checks, accelerate configs, and real CPU runs.

The checks that must stop a launch (bad data, a plan that cannot fit, a non-empty output directory)
are tested to stop before any model or training library is loaded. The training tests run the
shared engine on a tiny local model (ftadvisor.train.tiny) with the shipped example data.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"
PLANS = EXAMPLES / "plans"
GIB = 2**30

# A tiny Llama config written out by hand: enough for every pre-training check (the cost model reads
# config.json only), and proof that no weights are read (the directory holds none).
TINY_CONFIG = dict(
    model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    rms_norm_eps=1e-6, hidden_act="silu",
)

from tests.test_layers import HEAVY  # noqa: E402 - the one list of modules light paths must not load


@pytest.fixture()
def config_dir(tmp_path):
    d = tmp_path / "tiny-config"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_CONFIG))
    return d


def _plan(tmp_path, text: str, name: str = "plan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", "launch", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------------------------
# Data: formats, detection, errors
# --------------------------------------------------------------------------------------------


def test_example_data_formats():
    from ftadvisor.datasets import load_data

    expected = {"chat": "messages", "prompt_completion": "prompt_completion", "text": "text",
                "preference": "preference", "rl_prompts": "prompt", "facts": "qa"}
    for name, fmt in expected.items():
        d = load_data(DATA / f"{name}.jsonl")
        assert d.format == fmt, name
        assert 20 <= len(d) <= 60, name


def test_same_records_from_jsonl_json_csv_parquet(tmp_path):
    from ftadvisor.datasets import load_data

    rows = [json.loads(line) for line in (DATA / "preference.jsonl").read_text().splitlines()]
    (tmp_path / "p.json").write_text(json.dumps({"train": rows}))
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
    import csv

    with open(tmp_path / "p.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    for name in ("p.json", "cols.json", "p.csv", "p.parquet"):
        d = load_data(tmp_path / name)
        assert d.format == "preference" and d.records == rows, name
    # chat messages survive CSV as JSON text in a cell, and Parquet as a list of structs
    chat = [json.loads(line) for line in (DATA / "chat.jsonl").read_text().splitlines()]
    with open(tmp_path / "c.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["messages"])
        w.writerows([[json.dumps(r["messages"])] for r in chat])
    pq.write_table(pa.Table.from_pylist(chat), tmp_path / "c.parquet")
    for name in ("c.csv", "c.parquet"):
        d = load_data(tmp_path / name)
        assert d.format == "messages" and d.records == chat, name


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": "fine"}\n{"text": broken}\n', "line 3: not valid JSON"),
        ("list.jsonl", '{"text": "a"}\n["text"]\n', "line 2: expected a JSON object"),
        ("empty.jsonl", "\n\n", "has no records"),
        ("empty.csv", "", "has no records"),
        ("empty.json", "[]", "has no records"),
        ("short.csv", "prompt,completion\nhi,there\nonly-one\n", "line 3: fewer cells"),
        ("long.csv", "text\nhi\nsome,more\n", "line 3: 2 cells"),
        ("mixed.jsonl", '{"text": "a"}\n{"prompt": "b"}\n', "record 2 lacks text"),
        ("none.jsonl", '{"foo": 1, "bar": 2}\n', "fields bar, foo match no known format"),
        ("emptyfield.jsonl", '{"prompt": "q", "completion": "a"}\n{"prompt": "q", "completion": "  "}\n',
         "line 2: field 'completion' is empty"),
        ("role.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', "unknown role 'robot'"),
        ("data.txt", "hello\n", "unknown file type '.txt'"),
    ],
)
def test_data_errors_name_the_problem(tmp_path, name, content, needle):
    from ftadvisor.datasets import load_data

    (tmp_path / name).write_text(content)
    with pytest.raises(FtAdvisorError) as err:
        load_data(tmp_path / name)
    assert needle in str(err.value) and err.value.field == "data"


def test_missing_file_and_offline_hub_id(tmp_path):
    from ftadvisor.datasets import load_data

    with pytest.raises(FtAdvisorError, match="no such file"):
        load_data(tmp_path / "nope.jsonl")
    # A hub id with the hub unreachable: a one-line error that says so, not a traceback.
    code = ("from ftadvisor.datasets import load_data\n"
            "try:\n    load_data('someone/some-dataset')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, timeout=120)
    assert out.stdout.startswith("FtAdvisorError data: could not load Hugging Face dataset 'someone/some-dataset'")


@pytest.mark.parametrize(
    "technique,data,ok",
    [
        ("lora", "chat", True), ("lora", "prompt_completion", True), ("lora", "text", True), ("lora", "facts", True),
        ("lora", "preference", False), ("lora", "rl_prompts", False),
        ("dpo+lora", "preference", True), ("orpo", "preference", True),
        ("dpo+lora", "chat", False), ("orpo+qlora", "text", False),
        ("grpo+lora", "rl_prompts", True), ("ppo+lora", "facts", True), ("grpo+lora", "text", False),
        ("grpo", "preference", False),
    ],
)
def test_data_checked_against_technique(technique, data, ok):
    from ftadvisor.datasets import check_for_technique, load_data

    d = load_data(DATA / f"{data}.jsonl")
    if ok:
        check_for_technique(d, technique)
        return
    with pytest.raises(FtAdvisorError) as err:
        check_for_technique(d, technique)
    msg = str(err.value)
    assert "cannot train on" in msg and "missing" in msg
    if technique.startswith(("dpo", "orpo")):
        assert "preference (missing" in msg
        for f in ("chosen", "rejected"):
            assert f in msg


def test_lamini_prefers_facts():
    from ftadvisor.datasets import check_for_technique, load_data

    assert check_for_technique(load_data(DATA / "facts.jsonl"), "lamini") == []
    warnings = check_for_technique(load_data(DATA / "text.jsonl"), "lamini")
    assert len(warnings) == 1 and "facts" in warnings[0]


# --------------------------------------------------------------------------------------------
# Hardware detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,gib,expected",
    [
        # names as torch.cuda.get_device_name reports them
        ("NVIDIA H100 80GB HBM3", 79.1, "h100-sxm"),
        ("NVIDIA H100 PCIe", 79.1, "h100-pcie"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", 79.2, "a100-80gb"),
        ("NVIDIA GeForce RTX 4090", 23.6, "rtx4090-24gb"),
        ("NVIDIA L4", 22.0, "l4"),
        ("NVIDIA L40S", 44.4, "l40s"),
        ("Tesla T4", 14.6, "t4"),
        ("NVIDIA A10G", 22.0, "a10g"),
        ("NVIDIA H200", 139.8, "h200"),
        ("Tesla V100-SXM2-32GB", 31.7, "v100-32gb"),
        ("Quadro P1000", 4.0, None),
    ],
)
def test_device_names_match_profiles(name, gib, expected):
    from ftadvisor.launch import match_device

    hw = match_device(name, int(gib * GIB))
    assert (hw.id if hw else None) == expected


def test_gpu_flag_overrides_detection():
    from ftadvisor.launch import detect_hardware

    hw, note, n = detect_hardware("rtx4090")
    assert hw.id == "rtx4090-24gb" and "--gpu" in note and n == 0
    hw, note, n = detect_hardware("cpu")  # the cpu profile's memory is this machine's RAM
    from ftadvisor.launch import host_memory_bytes

    assert hw.id == "cpu" and hw.memory_bytes == pytest.approx(host_memory_bytes(), rel=1e-6)


def test_detection_without_cuda_uses_the_cpu_profile():
    """This test machine has no CUDA device: the launcher's (subprocess) query finds none."""
    from ftadvisor.launch import cuda_devices, detect_hardware

    if cuda_devices(in_process=False):
        pytest.skip("a CUDA device is present")
    hw, note, n = detect_hardware(None)
    assert hw.id == "cpu" and n == 0 and "no CUDA device" in note


# --------------------------------------------------------------------------------------------
# Accelerate / DeepSpeed configs (validated by accelerate's own config class)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,dist,procs",
    [
        (dict(num_gpus=1), "NO", 1),
        (dict(num_gpus=4), "MULTI_GPU", 4),
        (dict(num_gpus=8, sharding="fsdp"), "FSDP", 8),
        (dict(num_gpus=8, sharding="fsdp", cpu_offload=True), "FSDP", 8),
        (dict(num_gpus=4, sharding="zero2"), "DEEPSPEED", 4),
        (dict(num_gpus=4, sharding="zero2", cpu_offload=True), "DEEPSPEED", 4),
        (dict(num_gpus=16, num_nodes=2, sharding="zero3", cpu_offload=True), "DEEPSPEED", 16),
    ],
)
def test_accelerate_config_per_layout(tmp_path, fields, dist, procs):
    from accelerate.commands.config.config_args import ClusterConfig

    from ftadvisor.estimator import make_plan
    from ftadvisor.launch import accelerate_config, deepspeed_config

    plan = make_plan("full", **fields)
    cfg = accelerate_config(plan, str(tmp_path / "ds_config.json"))
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate does not know
    assert loaded.distributed_type.value == dist and loaded.num_processes == procs
    assert loaded.num_machines == (plan.num_nodes or 1)  # not given: one
    # DeepSpeed takes precision from its config file: accelerate refuses it in both (_deepspeed_config_checks)
    assert loaded.mixed_precision == (None if dist == "DEEPSPEED" else "bf16")
    if dist == "FSDP":
        fsdp = loaded.fsdp_config
        assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
        assert fsdp["fsdp_offload_params"] is plan.cpu_offload
    if dist == "DEEPSPEED":
        ds = deepspeed_config(plan)
        stage = int(plan.sharding[-1])
        zero = ds["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_optimizer" in zero) is plan.cpu_offload
        assert ("offload_param" in zero) is (plan.cpu_offload and stage == 3)
        assert loaded.deepspeed_config["deepspeed_config_file"].endswith("ds_config.json")
        assert loaded.deepspeed_config["zero3_init_flag"] is (stage == 3)


# --------------------------------------------------------------------------------------------
# The run directory (dry run) and the checks that stop a launch
# --------------------------------------------------------------------------------------------


def test_dry_run_writes_the_run_directory(tmp_path, config_dir):
    plan = _plan(tmp_path, "technique: lora\nseq_len: 128\nlora_r: 8\nrun:\n  max_steps: 7\n")
    out = tmp_path / "run"
    res = cli(plan, "--data", DATA / "chat.jsonl", "--model", config_dir, "--output", out, "--dry-run",
              "--gpu", "rtx4090", "--set", "micro_batch_size=2", "--set", "save_steps=3")
    assert res.returncode == 0, res.stderr
    for f in ("plan.yaml", "accelerate.yaml", "command.sh", "estimate.json"):
        assert (out / f).is_file(), f
    assert not (out / "ds_config.json").exists() and not (out / "final").exists()
    # the printed command is the one in command.sh, and it runs the module entry point on the run dir
    printed = [line for line in res.stdout.splitlines() if line.startswith("command: ")][0][len("command: "):]
    assert shlex.split(printed)[-3:] == ["-m", "ftadvisor.launch", str(out.resolve())]
    # command.sh runs the same module on its own directory, with the Python it finds where it runs
    assert (out / "command.sh").read_text().rstrip().endswith('exec "$PY" -m ftadvisor.launch "$RUN_DIR" "$@"')
    assert os.access(out / "command.sh", os.X_OK)
    # plan.yaml holds the resolved plan (file + --set), model, data and run settings; it reads back
    from ftadvisor.launch import load_spec

    spec = load_spec(out)
    assert spec.plan.technique == "lora" and spec.plan.lora_r == 8 and spec.plan.micro_batch_size == 2
    assert spec.plan.gradient_checkpointing is True  # a default, written out in full
    assert spec.run.max_steps == 7 and spec.run.save_steps == 3
    assert spec.model == str(config_dir.resolve()) and spec.data == str((DATA / "chat.jsonl").resolve())
    # estimate.json is the estimator's answer for the declared hardware
    import ftadvisor

    est = json.loads((out / "estimate.json").read_text())
    assert est["hardware"]["id"] == "rtx4090-24gb"
    direct = ftadvisor.estimate(str(config_dir), "rtx4090", plan=spec.plan)
    assert est["estimate"]["memory"]["device_total_bytes"] == direct.memory.device_total_bytes
    # LoRA r=8 on all seven linears of 2 layers, h=64, kv=32, I=128 (Hu et al. 2021: r*(in+out) each):
    # per layer 8*(128 + 96 + 96 + 128 + 192 + 192 + 192) = 8192
    assert est["estimate"]["trainable_params"] == 2 * 8192
    acc = yaml.safe_load((out / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "NO" and acc["num_processes"] == 1


def test_stops_before_loading_anything(tmp_path, config_dir):
    """Wrong fields, a missing file, malformed lines, an empty file and a plan that cannot fit all stop
    with a FtAdvisorError before torch, transformers or the model are touched."""
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "ok"\n')
    (tmp_path / "empty.jsonl").write_text("")
    cases = {
        "fields": dict(plan_file=None, data=str(DATA / "chat.jsonl"), model=str(config_dir),
                       sets={"technique": "dpo+lora"}, gpu="rtx4090"),
        "missing": dict(plan_file=None, data=str(tmp_path / "nope.jsonl"), model=str(config_dir), gpu="rtx4090"),
        "malformed": dict(plan_file=None, data=str(tmp_path / "broken.jsonl"), model=str(config_dir), gpu="rtx4090"),
        "empty": dict(plan_file=None, data=str(tmp_path / "empty.jsonl"), model=str(config_dir), gpu="rtx4090"),
        "misfit": dict(plan_file=None, data=str(DATA / "chat.jsonl"), model="llama-3.1-70b",
                       sets={"technique": "full"}, gpu="rtx4090"),
        "misfit_detected_cpu": dict(plan_file=None, data=str(DATA / "chat.jsonl"), model="llama-3.1-70b",
                                    sets={"technique": "full", "device": "cpu"}),
    }
    code = (
        "import json, sys\nfrom ftadvisor.launch import prepare\nfrom ftadvisor.errors import FtAdvisorError\n"
        f"cases = json.loads({json.dumps(json.dumps(cases))})\nout = {{}}\n"
        "for name, kw in cases.items():\n"
        "    try:\n        prepare(output=sys.argv[1] + '/' + name, **kw)\n        out[name] = 'NO ERROR'\n"
        "    except FtAdvisorError as e:\n        out[name] = [e.field, str(e)]\n"
        f"out['heavy'] = [m for m in {HEAVY!r} if m in sys.modules]\nprint(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "cannot train on messages data" in out["fields"][1] and "chosen" in out["fields"][1]
    assert "no such file" in out["missing"][1]
    assert "line 2: not valid JSON" in out["malformed"][1]
    assert "has no records" in out["empty"][1]
    field, msg = out["misfit"]
    assert field == "plan"
    # full FT of a 70.6B model needs far more than a 24 GB card; the message gives total, capacity and
    # the biggest component (AdamW state in fp32: 8 bytes x 70.6e9 = 526 GiB, the largest single term)
    assert "predicted" in msg and "vs 24.0 GiB capacity" in msg and "biggest component: optimizer state" in msg
    predicted = float(msg.split("predicted ")[1].split(" GiB")[0])
    assert predicted > 8 * 70.5e9 / GIB  # at least the optimizer state alone
    assert "--force" in msg
    # on the cpu profile (device=cpu: no CUDA query) the capacity is this machine's RAM
    assert out["misfit_detected_cpu"][0] == "plan" and "CPU (host only)" in out["misfit_detected_cpu"][1]
    # none of this loaded a training library, and nothing was written
    assert out["heavy"] == []
    assert not any((tmp_path / n).exists() for n in cases)


def test_cli_errors_are_one_line(tmp_path, config_dir):
    res = cli("--data", DATA / "chat.jsonl", "--model", "llama-3.1-70b", "--output", tmp_path / "r",
              "--gpu", "rtx4090", "--set", "technique=full")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: plan: ") and len(res.stderr.strip().splitlines()) == 1
    res = cli("--data", DATA / "chat.jsonl", "--model", config_dir, "--output", tmp_path / "r2", "--gpu", "rtx4090",
              "--set", "lora_rank=8")
    assert res.returncode == 2 and "lora_rank" in res.stderr and "lora_r" in res.stderr


def test_output_dir_safety(tmp_path, config_dir):
    from ftadvisor.launch import prepare

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    kw = dict(data=str(DATA / "text.jsonl"), model=str(config_dir), output=out, gpu="rtx4090", dry_run=True,
              echo=lambda *a: None)
    with pytest.raises(FtAdvisorError, match="not empty; pass --overwrite"):
        prepare(None, **kw)
    prepare(None, overwrite=True, **kw)
    assert (out / "plan.yaml").is_file() and (out / "notes.txt").read_text() == "mine"  # only our files replaced
    (out / "checkpoints").mkdir()
    prepare(None, overwrite=True, **kw)
    assert not (out / "checkpoints").exists()
    with pytest.raises(FtAdvisorError, match="no run to resume"):
        prepare(None, resume=True, **{**kw, "output": tmp_path / "other"})


def test_trust_remote_code_only_from_the_command_line_flag(tmp_path, config_dir):
    """Issue 12 (security): consent to run a model repository's code belongs to one command. It is
    never stored in the run directory and never taken from a plan file or --set."""
    from ftadvisor.launch import load_spec, prepare

    kw = dict(data=str(DATA / "text.jsonl"), model=str(config_dir), gpu="rtx4090", dry_run=True, echo=lambda *a: None)
    _, cmd = prepare(None, output=tmp_path / "a", **kw)
    assert "--trust-remote-code" not in cmd
    _, cmd = prepare(None, output=tmp_path / "b", trust_remote_code=True, **kw)
    assert cmd[-1] == "--trust-remote-code"
    for run in ("a", "b"):  # nothing on disk carries the consent
        stored = yaml.safe_load((tmp_path / run / "plan.yaml").read_text())
        assert "trust_remote_code" not in stored["run"] and "trust_remote_code" not in stored["plan"]
        script = (tmp_path / run / "command.sh").read_text().strip().splitlines()[-1]  # the command itself
        assert "--trust-remote-code" not in script
        assert not hasattr(load_spec(tmp_path / run).run, "trust_remote_code")

    # A plan file (flat, nested run:, or a run directory's plan.yaml) and --set are refused.
    flat = tmp_path / "flat.yaml"
    flat.write_text("technique: lora\ntrust_remote_code: true\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("technique: lora\nrun:\n  trust_remote_code: true\n")
    for plan_file, sets in ((flat, None), (nested, None), (None, {"trust_remote_code": True}),
                            (None, {"trust-remote-code": "true"})):
        with pytest.raises(FtAdvisorError, match="trust_remote_code.*never read from a plan file or --set"):
            prepare(plan_file, output=tmp_path / "c", sets=sets, **kw)
        assert not (tmp_path / "c").exists()
    edited = tmp_path / "a" / "plan.yaml"
    edited.write_text(edited.read_text().replace("run:\n", "run:\n  trust_remote_code: true\n"))
    with pytest.raises(FtAdvisorError, match="never read from a plan file"):
        load_spec(tmp_path / "a")


def test_remote_code_is_announced(tmp_path, config_dir):
    import json as _json
    import shutil

    from ftadvisor.launch import prepare

    model = tmp_path / "model"
    shutil.copytree(config_dir, model)
    cfg = _json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(_json.dumps(cfg))
    kw = dict(data=str(DATA / "text.jsonl"), model=str(model), gpu="rtx4090", dry_run=True)
    lines: list[str] = []
    prepare(None, output=tmp_path / "a", echo=lines.append, **kw)
    assert any("ships its own Python code" in x and "will not run unless you pass --trust-remote-code" in x
               for x in lines), lines
    lines.clear()
    prepare(None, output=tmp_path / "b", echo=lines.append, trust_remote_code=True, **kw)
    assert any("it WILL run" in x for x in lines), lines


def test_edited_plan_yaml_is_checked(tmp_path, config_dir):
    from ftadvisor.launch import load_spec, prepare

    out = tmp_path / "run"
    prepare(None, data=str(DATA / "text.jsonl"), model=str(config_dir), output=out, gpu="rtx4090", dry_run=True,
            echo=lambda *a: None)
    text = (out / "plan.yaml").read_text().replace("lora_r: 16", "lora_r: -3")
    (out / "plan.yaml").write_text(text)
    with pytest.raises(FtAdvisorError) as err:
        load_spec(out)
    assert err.value.field == "lora_r"


def _header_command(path: Path) -> list[str]:
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    text = " ".join(ln.rstrip("\\").strip() for ln in lines if ln.startswith("ftadvisor launch") or
                    (lines and ln.startswith("--")))
    return shlex.split(text)


@pytest.mark.parametrize("plan_path", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_plans(tmp_path, plan_path, config_dir):
    """Every shipped plan has its command in the header, validates, and (dry run) fits its stated GPU."""
    from ftadvisor.launch import prepare

    args = _header_command(plan_path)
    assert args[:3] == ["ftadvisor", "launch", f"examples/plans/{plan_path.name}"], plan_path
    opts = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    model = opts["--model"]
    if model.startswith("/tmp/tiny"):
        model = str(config_dir)
    assert (ROOT / opts["--data"]).is_file()
    lines = []
    _, cmd = prepare(plan_path, data=str(ROOT / opts["--data"]), model=model, output=tmp_path / "run",
                     gpu=opts.get("--gpu", "cpu"), dry_run=True, echo=lines.append)
    est = json.loads((tmp_path / "run" / "estimate.json").read_text())["estimate"]
    assert est["fits"], (plan_path.name, lines)


# --------------------------------------------------------------------------------------------
# Real runs on the CPU: a tiny local model, the shipped example data, the shared engine
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    return tiny_llama_dir  # built once per session (tests/conftest.py)


SFT_PLAN = """technique: lora
precision: fp32
seq_len: 96
micro_batch_size: 8
lora_r: 8
lora_alpha: 16
gradient_checkpointing: false
run:
  max_steps: 16
  learning_rate: 0.003
  save_steps: 4
"""


def _launch(tmp_path, plan_text, data, model, out, *extra, timeout=240):
    plan = _plan(tmp_path, plan_text, name=f"{out.name}.yaml")
    # --gpu cpu: the cpu profile (with this machine's RAM) without asking torch for CUDA in the launcher
    res = cli(plan, "--data", data, "--model", model, "--output", out, "--gpu", "cpu",
              "--set", f"results_root={tmp_path / 'results'}", *extra, env={"PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _steps(log: Path) -> list[dict]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "step"]


def _generate(final: Path, prompt_messages):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((final / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    enc = tok.apply_chat_template(prompt_messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    return model, out[0, enc["input_ids"].shape[1]:]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("sft")
    out = tmp / "run"
    res = _launch(tmp, SFT_PLAN, DATA / "chat.jsonl", tiny_model, out)
    return tmp, out, res


def test_sft_lora_trains_saves_and_generates(sft_run, tiny_model):
    tmp, out, res = sft_run
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 16 and len(result["losses"]) == 16
    losses = result["losses"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05  # it learns
    # LoRA r=8 over all linears of the tiny model: 2 layers x 8192 (hand count in the dry-run test)
    assert result["trainable_params"] == result["predicted_trainable_params"] == 16384
    # progress lines (not a terminal: plain lines with loss, tokens/s and ETA)
    assert "step 16/16" in res.stderr and "tok/s" in res.stderr and "ETA" in res.stderr
    # the engine's JSON-lines log has one line per step
    assert [e["step"] for e in _steps(out / "train_log.jsonl")] == list(range(1, 17))
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) != []
    # final adapter in HF format: loads with peft and generates
    model, new_tokens = _generate(out / "final", [{"role": "user", "content": "What is the capital of France?"}])
    assert len(new_tokens) >= 1
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 16384
    # the calibration record: prediction next to the measurement, source launch
    from ftadvisor.calibration.store import load_results

    recs = load_results(tmp / "results" / "cpu" / "launch.jsonl")
    assert len(recs) == 1
    r = recs[0]
    assert r["source"] == "launch" and r["status"] == "ok" and r["hardware"] == "cpu"
    assert r["prediction"]["trainable_params"] == 16384 and r["plan"]["lora_r"] == 8
    m = r["measurement"]
    assert m["backend"] == "cpu" and len(m["step_seconds"]) == 16 and m["tokens_per_second"] > 0
    assert set(m) >= {"peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes"}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"  # proc(5) field 3, the state; Z: ended, not yet reaped


def test_resume_after_kill_loses_no_steps(sft_run, tiny_model, tmp_path):
    """Kill a run once its first checkpoint is complete, resume it: same step count and the same losses
    as the uninterrupted run (HF Trainer restores optimizer, scheduler, RNG and data position)."""
    import signal
    import time

    _, ref_out, _ = sft_run
    reference = json.loads((ref_out / "result.json").read_text())["losses"]
    out = tmp_path / "run"
    plan = _plan(tmp_path, SFT_PLAN)
    args = [sys.executable, "-m", "ftadvisor.cli", "launch", str(plan), "--data", str(DATA / "chat.jsonl"), "--model",
            str(tiny_model), "--output", str(out), "--gpu", "cpu", "--set", f"results_root={tmp_path / 'results'}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            # checkpoint-4 is complete once a later step is logged (trainer_state.json is written last)
            if log.is_file() and any(e["step"] >= 5 for e in _steps(log)):
                break
            time.sleep(0.02)
    finally:
        # the training child runs in its own process group (run.lock names it): kill it, then the launcher
        trainer = json.loads((out / "run.lock").read_text()).get("child") if (out / "run.lock").is_file() else None
        if trainer:
            os.kill(trainer, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while trainer and _running(trainer):
            time.sleep(0.02)  # gone (or a zombie nobody reaps) before the log is read
    done_before = max(e["step"] for e in _steps(log))
    assert done_before < 16, "the run finished before it could be killed"
    assert not (out / "result.json").exists()
    res = cli("--output", out, "--resume", env={"PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 16 and result["resumed"] is True
    steps = _steps(log)
    before, after = steps[:done_before], steps[done_before:]
    # the resumed process starts after the last complete checkpoint (step 4) and runs to the end
    assert [e["step"] for e in after] == list(range(5, 17))
    # identical continuation: the steps redone after the kill repeat their losses, and every step
    # matches the uninterrupted run (the launcher seeds before building; HF Trainer restores
    # optimizer, scheduler, RNG state and data position)
    for e in before[4:]:
        assert after[e["step"] - 5]["loss"] == pytest.approx(e["loss"], rel=1e-5)
    for e in before + after:
        assert e["loss"] == pytest.approx(reference[e["step"] - 1], rel=1e-4), e["step"]


def test_dpo_lora_trains_and_generates(tmp_path, tiny_model):
    out = tmp_path / "run"
    plan = (PLANS / "dpo-lora-tiny-cpu.yaml").read_text().replace("max_steps: 10", "max_steps: 12")
    _launch(tmp_path, plan, DATA / "preference.jsonl", tiny_model, out)
    result = json.loads((out / "result.json").read_text())
    losses = result["losses"]
    assert result["steps"] == 12
    # DPO starts at -log sigmoid(0) = ln 2 (Rafailov et al. 2023, eq. 7 with policy = reference)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert sum(losses[6:]) / 6 < sum(losses[:6]) / 6
    _, new_tokens = _generate(out / "final", [{"role": "user", "content": "What is the capital of Peru?"}])
    assert len(new_tokens) >= 1


def test_two_process_ddp_on_cpu_through_accelerate(tmp_path, tiny_model):
    """num_gpus=2 on a machine without CUDA: accelerate launch (torchrun) starts two processes that train
    as one DDP job over gloo; rank 0 saves the adapter."""
    out = tmp_path / "run"
    plan = SFT_PLAN.replace("max_steps: 16", "max_steps: 6").replace("save_steps: 4", "save_steps: 3")
    res = _launch(tmp_path, plan, DATA / "chat.jsonl", tiny_model, out, "--num-gpus", "2")
    assert "accelerate.commands.launch --config_file" in res.stdout
    acc = yaml.safe_load((out / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_processes"] == 2
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 6 and result["world_size"] == 2 and result["distributed_type"] == "MULTI_CPU"
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    # It learned, as one model: the engine's end event holds a fingerprint (float64 sum, L2 norm) of
    # the trainable parameters at the start and, gathered from every rank, at the end. The LoRA B
    # matrices start at zero, so training moves the norm; DDP all-reduces the gradients before every
    # step, so the two replicas end bit-identical; the saved adapter is that trained state.
    from safetensors.torch import load_file

    from ftadvisor.train.engine import param_fingerprint

    end = [e for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if e["event"] == "end"][-1]
    start, ranks = end["param_fingerprint_start"], end["param_fingerprints"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert abs(ranks[0][1] - start[1]) > 0.01 * start[1], (start, ranks)
    saved = param_fingerprint(load_file(out / "final" / "adapter_model.safetensors").values())
    assert saved == pytest.approx(ranks[0], rel=1e-6)


def test_fsdp_and_zero_refused_on_cpu(tmp_path, config_dir):
    """accelerate drops FSDP for CPU processes (see launch.check_layout_on_cpu): refuse instead of
    silently training as DDP; a dry run still writes the GPU run directory."""
    from ftadvisor.launch import prepare

    kw = dict(data=str(DATA / "chat.jsonl"), model=str(config_dir), gpu="cpu", num_gpus=2, echo=lambda *a: None)
    for sharding in ("fsdp", "zero2"):
        with pytest.raises(FtAdvisorError) as err:
            prepare(None, output=tmp_path / sharding, sets={"sharding": sharding}, **kw)
        assert err.value.field == "sharding" and "needs CUDA GPUs" in str(err.value)
        assert not (tmp_path / sharding).exists()
    prepare(None, output=tmp_path / "dry", sets={"sharding": "fsdp"}, dry_run=True, **kw)
    assert yaml.safe_load((tmp_path / "dry" / "accelerate.yaml").read_text())["distributed_type"] == "FSDP"


def test_other_framework_dry_run_points_to_export(tmp_path):
    """launch trains with hf-trl only: a plan for another framework is refused in one line that gives the
    ftadvisor export command for that framework (where it has an exporter), and nothing is written."""
    from typer.testing import CliRunner

    from ftadvisor.cli import app

    base = ["launch", str(PLANS / "lora-tiny-cpu.yaml"), "--data", str(DATA / "chat.jsonl"), "--model",
            "llama-3.2-1b", "--dry-run", "--output", str(tmp_path / "run")]
    res = CliRunner().invoke(app, [*base, "--set", "framework=axolotl"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: framework:") and "hf-trl" in line
    assert (f"ftadvisor export {PLANS / 'lora-tiny-cpu.yaml'} --to axolotl --model llama-3.2-1b --data "
            f"{DATA / 'chat.jsonl'}") in line
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(app, [*base, "--set", "framework=unsloth"])  # estimated, but no exporter
    assert res.exit_code == 2 and "ftadvisor export" not in res.output and "unsloth" in res.output
