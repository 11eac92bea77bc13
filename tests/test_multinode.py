"""Issue 13 part 2 and part 6: multi-node run directories, portable scripts, the runs folder, sharded
FSDP checkpoints, and a real two-process DeepSpeed ZeRO-2/3 run on the CPU.

    .venv/bin/python -m pytest -q tests/test_multinode.py

What the DeepSpeed test runs (tests/zero_worker.py): the ``ds_config.json`` that ``ftadvisor launch``
writes, its "auto" values filled as the HF Trainer fills them, through ``deepspeed.initialize`` in two
torchrun processes over gloo, two optimizer steps of the tiny model. The launcher's own path
(accelerate + HF Trainer + DeepSpeed) is not run: on CPU accelerate misreports the ranks under DeepSpeed
and aborts at exit, and the launcher refuses ZeRO without CUDA (launch.check_layout_on_cpu).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_launch import DATA, cli, config_dir, tiny_model  # noqa: F401 - fixtures

# The tiny Llama of ftadvisor.train.tiny (vocab 512, hidden 64, intermediate 128, 2 layers, 4 heads of 16,
# 2 KV heads, untied), counted by hand: embeddings and lm_head 512*64 each; per layer q and o 64*64,
# k and v 64*32, gate/up/down 64*128, two norms of 64; a final norm of 64.
TINY_PARAMS = 2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
assert TINY_PARAMS == 139_584


def _prepare(tmp_path, out_name: str, *, model, data=DATA / "chat.jsonl", gpu="h100-sxm", num_gpus=16, **sets):
    from ftadvisor.launch import prepare

    lines: list[str] = []
    run, cmd = prepare(None, data=str(data), model=str(model), output=tmp_path / out_name, gpu=gpu,
                       num_gpus=num_gpus, sets=sets, dry_run=True, echo=lines.append)
    return run, lines


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _recording_python(path: Path, log: Path) -> Path:
    """A stand-in interpreter: ``-c`` (the scripts' import check) goes to this Python; anything else is
    written to ``log`` (argv, one JSON list per line, and the accelerate variables) instead of run."""
    return _executable(path, f"""#!/usr/bin/env bash
if [ "${{1:-}}" = "-c" ]; then exec {sys.executable} "$@"; fi
{sys.executable} -c 'import json, os, sys; print(json.dumps({{"argv": sys.argv[1:],
    "node": os.environ.get("SLURM_NODEID"), "env": {{k: v for k, v in os.environ.items() if k.startswith(("ACCELERATE_", "FSDP_"))}}}}))' "$@" >> {log}
""")


# --------------------------------------------------------------------------------------------
# A 2-node plan: per-node accelerate configs and commands, torchrun commands, an sbatch script
# --------------------------------------------------------------------------------------------


def test_two_node_dry_run_prints_per_node_commands(tmp_path, config_dir):  # noqa: F811
    """16 H100 (8 per HGX node): ``num_nodes`` is derived (2) and the dry run says how to start each node."""
    out = tmp_path / "run"
    res = cli("--data", DATA / "chat.jsonl", "--model", config_dir, "--gpu", "h100-sxm", "--num-gpus", "16",
              "--set", "sharding=zero3", "--output", out, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "2 nodes x 8 processes" in res.stdout
    for r in (0, 1):
        assert f"node {r}: MAIN_ADDR=<node 0 address> bash nodes/accelerate-node{r}.sh" in res.stdout
        assert f"bash nodes/torchrun-node{r}.sh" in res.stdout
    assert f"cd {out} && sbatch sbatch.sh" in res.stdout
    assert yaml.safe_load((out / "plan.yaml").read_text())["plan"]["num_nodes"] == 2
    # the training itself refuses to start a multi-node plan on this one machine
    res = cli("--data", DATA / "chat.jsonl", "--model", config_dir, "--gpu", "h100-sxm", "--num-gpus", "16",
              "--output", tmp_path / "real")
    assert res.returncode != 0 and "num_nodes" in res.stderr and "--dry-run" in res.stderr
    assert not (tmp_path / "real").exists()


@pytest.mark.parametrize("sharding,dist", [("fsdp", "FSDP"), ("zero3", "DEEPSPEED"), ("ddp", "MULTI_GPU")])
def test_per_node_accelerate_configs_and_scripts(tmp_path, config_dir, sharding, dist):  # noqa: F811
    from accelerate.commands.config.config_args import ClusterConfig

    run, _ = _prepare(tmp_path, "run", model=config_dir, sharding=sharding)
    for rank in (0, 1):
        path = run / "nodes" / f"accelerate-node{rank}.yaml"
        cfg = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys raise
        assert (cfg.machine_rank, cfg.num_machines, cfg.num_processes) == (rank, 2, 16)
        assert cfg.distributed_type.value == dist
        assert cfg.main_process_ip is None and "main_process_ip" not in yaml.safe_load(path.read_text())
        if dist == "DEEPSPEED":  # one accelerate launch per node, not DeepSpeed's pdsh over a hostfile
            assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
        if dist == "FSDP":
            assert cfg.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        acc = (run / "nodes" / f"accelerate-node{rank}.sh").read_text()
        assert (f'--config_file "$RUN_DIR/nodes/accelerate-node{rank}.yaml"' in acc
                and '--main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"' in acc)
        tr = (run / "nodes" / f"torchrun-node{rank}.sh").read_text()
        assert f"--nnodes 2 --node_rank {rank} --nproc_per_node 8" in tr
        assert '--rdzv_backend c10d --rdzv_endpoint "$MAIN_ADDR:$MAIN_PORT"' in tr
    sb = (run / "sbatch.sh").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 'MAIN_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"'):
        assert line in sb.splitlines(), line
    assert ('--nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node 8 --rdzv_backend c10d '
            '--rdzv_endpoint "$MAIN_ADDR:$MAIN_PORT"') in sb
    scripts = [run / "sbatch.sh", run / "command.sh", *sorted((run / "nodes").glob("*.sh"))]
    assert len(scripts) == 6
    for script in scripts:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, (script.name, check.stderr)
        assert os.access(script, os.X_OK), script.name
    assert "FIRST_NODE_ADDRESS" not in "".join(p.read_text() for p in run.rglob("*") if p.is_file())


def test_node_scripts_start_the_right_commands(tmp_path, config_dir):  # noqa: F811
    """Run the scripts with stand-ins for Python, scontrol and srun (two Slurm nodes, A and B): every
    node gets its own rank, the rendezvous is at the first node, arguments pass through."""
    run, _ = _prepare(tmp_path, "run", model=config_dir, sharding="zero3")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    py = _recording_python(bin_dir / "py", log)
    _executable(bin_dir / "scontrol", "#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    # srun: run the task once per node, as Slurm would, each with its own SLURM_NODEID
    _executable(bin_dir / "srun", '#!/usr/bin/env bash\nshift\nfor i in 0 1; do SLURM_NODEID=$i "$@"; done\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FTADVISOR_PYTHON": str(py),
           "SLURM_SUBMIT_DIR": str(run), "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2",
           "SLURM_JOB_ID": "77"}
    res = subprocess.run(["bash", str(run / "sbatch.sh"), "--resume"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["node"] for c in calls] == ["0", "1"]
    for rank, c in enumerate(calls):
        assert c["argv"] == ["-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                             "--nproc_per_node", "8", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node-a:29500",
                             "--rdzv_id", "77", "-m", "ftadvisor.launch", str(run), "--resume"]
        # the same DeepSpeed set-up accelerate launch would give the processes
        assert c["env"]["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert c["env"]["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "ds_config.json"
    log.unlink()
    # one node by hand: the address is a parameter; without it, one line saying so
    env = {**os.environ, "FTADVISOR_PYTHON": str(py), "MAIN_ADDR": "10.0.0.7", "MAIN_PORT": "29611"}
    res = subprocess.run(["bash", str(run / "nodes" / "accelerate-node1.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"] == ["-m", "accelerate.commands.launch", "--config_file",
                            str(run / "nodes" / "accelerate-node1.yaml"), "--main_process_ip", "10.0.0.7",
                            "--main_process_port", "29611", "-m", "ftadvisor.launch", str(run)]
    del env["MAIN_ADDR"]
    res = subprocess.run(["bash", str(run / "nodes" / "torchrun-node1.sh")], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "MAIN_ADDR" in res.stderr


@pytest.mark.parametrize("sharding", ["fsdp", "zero3"])
def test_torchrun_env_is_what_accelerate_launch_sets(tmp_path, config_dir, sharding, monkeypatch):  # noqa: F811
    """The variables the torchrun scripts export equal those accelerate launch computes from the same
    config (accelerate/commands/launch.py + accelerate/utils/launch.py), and accelerate's plugins accept them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from ftadvisor.multinode import accelerate_env

    run, _ = _prepare(tmp_path, "run", model=config_dir, num_gpus=8, sharding=sharding)  # one node: no port games
    cfg = yaml.safe_load((run / "accelerate.yaml").read_text())
    ours = accelerate_env(cfg)
    monkeypatch.chdir(run)
    args = launch_command_parser().parse_args(["--config_file", str(run / "accelerate.yaml"), "-m", "ftadvisor.launch"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if sharding == "fsdp":
        theirs = prepare_multi_gpu_env(args)
    else:  # as launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(
            list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else []))
        _, theirs = prepare_deepspeed_cmd_env(args)
    assert ours == {k: theirs[k] for k in ours}
    decisive = {k for k in theirs if k.startswith(("FSDP_", "ACCELERATE_USE_", "ACCELERATE_DEEPSPEED_"))
                and theirs[k] != os.environ.get(k)}
    assert decisive <= set(ours), decisive - set(ours)
    for k, v in ours.items():
        monkeypatch.setenv(k, v)
    if sharding == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    else:
        from accelerate.utils import DeepSpeedPlugin

        # refuses a config whose accelerate file also sets precision (the bug this layout had)
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == 3 and plugin.hf_ds_config.is_zero3()


def test_relative_ds_config_is_the_run_dirs(tmp_path, monkeypatch):
    """accelerate.yaml names ds_config.json relative to the run directory; a training process started
    from elsewhere (ftadvisor launch from any directory) still reads the run directory's file."""
    from ftadvisor.launch import _resolve_ds_config_env

    (tmp_path / "ds_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds_config.json")
    _resolve_ds_config_env(tmp_path)
    assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(tmp_path / "ds_config.json")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "/elsewhere/ds.json")  # a user's own: left alone
    _resolve_ds_config_env(tmp_path)
    assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "/elsewhere/ds.json"


def test_final_fsdp_save_gathers_a_full_state_dict(tmp_path, monkeypatch):
    """Checkpoints under FSDP are sharded (SHARDED_STATE_DICT); final/ is written with FULL_STATE_DICT,
    the only type under which transformers' Trainer.save_model writes one plain HF model."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    from ftadvisor import launch
    from ftadvisor.estimator import make_plan

    monkeypatch.setenv("WORLD_SIZE", "2")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    seen = []

    def save_model(path):
        seen.append(str(plugin.state_dict_type))
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text("x")

    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), wait_for_everyone=lambda: None)
    session = SimpleNamespace(plan=make_plan("full", num_gpus=2, sharding="fsdp"),
                              trainer=SimpleNamespace(accelerator=accelerator, save_model=save_model),
                              tokenizer=SimpleNamespace(save_pretrained=lambda p: None))
    final = launch._save_final(session, tmp_path, rank0=True)
    assert len(seen) == 1 and "FULL_STATE_DICT" in seen[0]
    assert (final / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# Portable run directories, and a runs folder outside the checkout
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _porcelain(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", path], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_copied_run_dir_trains_and_writes_nothing_into_the_checkout(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    """A dry-run directory copied elsewhere names nothing of this checkout; its command.sh finds a venv next
    to it. A 2-node plan (2 CPU processes, one per "node") run for real from the copy with its two per-node
    accelerate scripts (machine_rank 0 and 1, MAIN_ADDR 127.0.0.1) trains as one DDP job, and puts its
    calibration record in the runs folder: the source tree is unchanged and ``calibrate fit`` sees the record."""
    before = _porcelain("calibration")
    data = tmp_path / "chat.jsonl"
    shutil.copy(DATA / "chat.jsonl", data)
    tiny = dict(technique="lora", precision="fp32", seq_len=64, micro_batch_size=2, lora_r=4,
                gradient_checkpointing=False, max_steps=2)
    layouts = (("one", "cpu", 1, {}), ("zero", "h100-sxm", 4, {"sharding": "zero2"}),
               ("fsdp16", "h100-sxm", 16, {"sharding": "fsdp"}), ("nodes", "cpu", 2, {"num_nodes": 2}))
    for name, gpu, gpus, sets in layouts:
        run, _ = _prepare(tmp_path, f"src/{name}", model=tiny_model, data=data, gpu=gpu, num_gpus=gpus,
                          **{**tiny, **sets})
        box = tmp_path / "box" / name
        shutil.copytree(run, box / "run")
        text = "".join(p.read_text() for p in (box / "run").rglob("*") if p.is_file())
        assert str(ROOT) not in text and sys.executable not in text, name
        assert "PYTHONPATH" not in text, name
    # on the "box": a venv next to the run directory, no ftadvisor on PATH, no PYTHONPATH
    run = tmp_path / "box" / "one" / "run"
    (run.parent / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.jsonl"
    _recording_python(run.parent / ".venv" / "bin" / "python", log)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FTADVISOR_PYTHON")}
    env["PATH"] = "/usr/bin:/bin"
    res = subprocess.run(["bash", str(run / "command.sh"), "--resume"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"] == ["-m", "ftadvisor.launch", str(run), "--resume"]
    # with no Python that has ftadvisor, one line that says what was tried
    res = subprocess.run(["bash", "command.sh"], cwd=tmp_path / "box" / "zero" / "run", env=env, capture_output=True,
                         text=True)
    assert res.returncode == 2 and "no Python with ftadvisor found" in res.stderr
    # for real, from the copy (FTADVISOR_PYTHON: this Python), started from another directory: node 1 and node 0
    runs = tmp_path / "runs"
    run = tmp_path / "box" / "nodes" / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FTADVISOR_PYTHON=sys.executable, FTADVISOR_RUNS=str(runs), PYTHONUNBUFFERED="1",
               MAIN_ADDR="127.0.0.1", MAIN_PORT=str(_free_port()))
    nodes = [subprocess.Popen(["bash", str(run / "nodes" / f"accelerate-node{r}.sh")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (1, 0)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], outs[1][-3000:] + outs[0][-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 2 and result["final_dir"] == str(run / "final")
    assert (result["world_size"], result["distributed_type"]) == (2, "MULTI_CPU")
    from ftadvisor.calibration.store import load_results

    (rec,) = load_results(runs / "calibration" / "cpu" / "launch.jsonl")
    assert rec["source"] == "launch" and rec["status"] == "ok"
    assert result["calibration_record"] == str(runs / "calibration" / "cpu" / "launch.jsonl")
    assert _porcelain("calibration") == before
    monkeypatch.setenv("FTADVISOR_RUNS", str(runs))
    from ftadvisor.calibration.fit import load_frame

    assert (load_frame(None, "cpu")["case_id"] == rec["case_id"]).sum() == 1  # fit's default reading has it


def test_default_run_dir_is_in_the_runs_folder(tmp_path, config_dir):  # noqa: F811
    """Without --output, the run directory is a new one in the runs folder (--runs-dir over $FTADVISOR_RUNS)."""
    runs = tmp_path / "runs"
    res = cli("--model", config_dir, "--gpu", "rtx4090", "--set", "technique=dpo+lora",
              "--data", DATA / "preference.jsonl", "--runs-dir", runs, "--dry-run")
    assert res.returncode == 0, res.stderr
    (run,) = runs.iterdir()
    assert run.name.endswith("-dpo-lora-tiny-config") and (run / "plan.yaml").is_file()
    assert f"run directory: {run}" in res.stdout
    assert ROOT not in run.parents
    res = cli("--resume", "--runs-dir", runs)
    assert res.returncode != 0 and "--output" in res.stderr and "Traceback" not in res.stderr


def test_default_run_dir_name(monkeypatch, tmp_path):
    from ftadvisor import runs

    monkeypatch.setenv("FTADVISOR_RUNS", str(tmp_path / "r"))
    assert runs.runs_dir() == tmp_path / "r"
    assert runs.runs_dir(tmp_path / "other") == tmp_path / "other"  # --runs-dir wins
    monkeypatch.delenv("FTADVISOR_RUNS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runs.runs_dir() == tmp_path / "home" / "ftadvisor-runs"
    # 2026-12-05 21:30:00 UTC is 1796506200 s after the epoch
    assert runs.default_run_name("dpo+lora", "/models/Tiny Llama/", now=1796506200) == \
        "20261205-213000-dpo-lora-Tiny-Llama"
    assert runs.default_run_name("lora", "Qwen/Qwen3-8B", now=0) == "19700101-000000-lora-Qwen3-8B"


# --------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-2 and ZeRO-3 with two CPU processes over gloo
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_zero2_and_zero3_with_two_cpu_processes(tmp_path, tiny_model):  # noqa: F811
    runs = {}
    for stage in ("zero2", "zero3"):
        runs[stage], _ = _prepare(tmp_path, stage, model=tiny_model, gpu="cpu", num_gpus=2, technique="full",
                                  precision="fp32", sharding=stage)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), str(ROOT / "tests" / "zero_worker.py"), str(out), str(tiny_model),
                          str(runs["zero2"]), str(runs["zero3"])], env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    rec = {(s, r): json.loads((out / f"{s}-rank{r}.json").read_text()) for s in ("zero2", "zero3") for r in (0, 1)}
    assert not (tmp_path / "ext").exists()  # nothing was compiled
    for (stage, rank), r in rec.items():
        assert r["world"] == 2 and r["stage"] == int(stage[-1])
        assert sum(r["full"]) == TINY_PARAMS
        # HF's fill of the launcher's "auto" values: 2 ranks x 2 sequences x 1 accumulation step,
        # bucket hidden^2 (64^2); ZeRO-3 prefetch 0.9 hidden^2, persistence 10 hidden
        c = r["config"]
        batch = (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"])
        assert batch == (4, 2, 1)
        assert c["zero_optimization"]["reduce_bucket_size"] == 64 * 64
        if stage == "zero3":
            assert c["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
            assert c["zero_optimization"]["stage3_param_persistence_threshold"] == 640
            # each rank holds its shard of every parameter: ceil(n / 2), here exactly half of each
            assert r["local"] == [math.ceil(n / 2) for n in r["full"]]
        # ZeRO-2 (one fp32 group) and ZeRO-3: each rank holds half of the 139,584 parameters
        assert sum(r["local"]) == TINY_PARAMS // 2
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][1] < r["losses"][0]
        assert r["end"] != pytest.approx(r["start"], rel=1e-6)  # it trained
    # the ranks trained on different batches yet hold one model; and ZeRO-2 and ZeRO-3 computed the same steps
    for stage in ("zero2", "zero3"):
        assert rec[(stage, 0)]["end"] == pytest.approx(rec[(stage, 1)]["end"], rel=1e-9)
        assert rec[(stage, 0)]["losses"] != rec[(stage, 1)]["losses"]
    assert rec[("zero2", 0)]["end"] == pytest.approx(rec[("zero3", 0)]["end"], rel=1e-6)
