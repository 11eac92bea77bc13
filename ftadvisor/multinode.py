"""Portable launch scripts for a run directory, one node or several.

    ftadvisor launch plan.yaml --data D --model M --gpu h100-sxm --num-gpus 16 --output RUN --dry-run
    # on each node i (MAIN_ADDR: node 0's address, reachable from every node):
    MAIN_ADDR=10.0.0.1 MAIN_PORT=29500 bash RUN/nodes/accelerate-node<i>.sh    # accelerate launch
    MAIN_ADDR=10.0.0.1 MAIN_PORT=29500 bash RUN/nodes/torchrun-node<i>.sh      # or plain torchrun
    cd RUN && sbatch sbatch.sh                                                 # or Slurm: one srun task per node

What :func:`node_files` writes for a plan over N > 1 nodes (G processes each):

- ``nodes/accelerate-node<i>.yaml``: the run's accelerate config with ``machine_rank: i``; the main
  address is no part of it: ``nodes/accelerate-node<i>.sh`` passes ``--main_process_ip "$MAIN_ADDR"
  --main_process_port "$MAIN_PORT"`` (accelerate launch takes command-line values over the file's);
- ``nodes/torchrun-node<i>.sh``: ``torchrun --nnodes N --node_rank i --nproc_per_node G
  --rdzv_backend c10d --rdzv_endpoint $MAIN_ADDR:$MAIN_PORT``, after exporting the variables accelerate
  launch would have set for this layout (:func:`accelerate_env`), so FSDP or DeepSpeed is the same
  whichever launcher starts the processes;
- ``sbatch.sh``: ``#SBATCH --nodes=N --ntasks-per-node=1 --gpus-per-node=G``; ``srun`` starts one
  torchrun per node with ``--nnodes $SLURM_NNODES --node_rank $SLURM_NODEID``, c10d rendezvous at the
  first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``.

Every script finds its run directory from its own location (Slurm: the submit directory) and the
Python that has ftadvisor with :func:`find_python_sh`; none holds a path into the checkout that
wrote it, so the directory can be copied to the training machines as it is.

Pure module: standard library and the plan schema only.
"""

from __future__ import annotations

import shlex
from typing import Any

from ftadvisor.schema import HardwareProfile, TrainingPlan

NODES_DIR = "nodes"
SBATCH_FILE = "sbatch.sh"
DEFAULT_PORT = 29500
"""torchrun's and accelerate's default rendezvous port (torch/distributed/run.py ``--master_port``)."""
PYTHON_ENV = "FTADVISOR_PYTHON"
"""Names the Python interpreter for the run scripts, over the venv and PATH search."""
# The one convention of every multi-node command ftadvisor writes (launch's nodes/*.sh and command.sh,
# export's run.sh): the user sets NODE_RANK (where a script is not per node), MAIN_ADDR and optionally
# MAIN_PORT. Not torchrun's MASTER_ADDR/MASTER_PORT: torchrun (torch/distributed/run.py) sets those in
# its workers' environment itself; a framework that reads them (LLaMA-Factory) is given them from these.
NODE_RANK_VAR = "NODE_RANK"
ADDR_VAR = "MAIN_ADDR"
PORT_VAR = "MAIN_PORT"


def launch_nodes(plan: TrainingPlan, hw: HardwareProfile | None) -> int:
    """The machines the launcher spreads the plan over: ``num_nodes`` when the plan gives it; else, for
    GPUs, ceil(num_gpus / GPUs per node) of the hardware's node (ftadvisor.host.resolve_nodes, the
    estimator's count); several CPU processes always share this one machine."""
    if plan.num_nodes is not None:
        return plan.num_nodes
    if hw is None or hw.vendor == "cpu":
        return 1
    from ftadvisor.host import resolve_nodes

    return resolve_nodes(hw, plan)[0].num_nodes or 1


def find_python_sh(run_dir_expr: str = '"$RUN_DIR"') -> str:
    """Shell lines that set ``PY`` to a Python that imports ftadvisor, searching in order:
    ``$FTADVISOR_PYTHON``; a venv in or next to the run directory (``$RUN_DIR/.venv``,
    ``$RUN_DIR/../.venv``); the interpreter of the ``ftadvisor`` command on PATH (its ``#!`` line, as
    pip's console scripts write it); ``python3``. Stops with one line when none imports ftadvisor."""
    return f"""\
# The Python that runs ftadvisor: ${PYTHON_ENV}, else a venv in or next to the run directory, else the
# interpreter of the `ftadvisor` command on PATH, else python3 (no path of the machine that wrote this).
find_python() {{
  local v ft
  if [ -n "${{{PYTHON_ENV}:-}}" ]; then echo "${PYTHON_ENV}"; return; fi
  for v in {run_dir_expr}/.venv {run_dir_expr}/../.venv; do
    if [ -x "$v/bin/python" ]; then echo "$v/bin/python"; return; fi
  done
  if ft="$(command -v ftadvisor 2>/dev/null)"; then
    v="$(head -n1 "$ft" | sed -n 's/^#![[:space:]]*//p')"
    case "$v" in */env\\ *) v="$(command -v "${{v##* }}" 2>/dev/null || true)";; esac
    if [ -n "$v" ] && [ -x "$v" ]; then echo "$v"; return; fi
  fi
  command -v python3 2>/dev/null || echo python3
}}
PY="$(find_python)"
if ! "$PY" -c "import ftadvisor" >/dev/null 2>&1; then
  echo "error: no Python with ftadvisor found (tried \\${PYTHON_ENV}, $RUN_DIR/.venv, $RUN_DIR/../.venv," \\
       "ftadvisor on PATH, python3); install ftadvisor or set {PYTHON_ENV}=/path/to/python" >&2
  exit 2
fi
"""


def accelerate_env(cfg: dict[str, Any]) -> dict[str, str]:
    """The variables ``accelerate launch`` sets in each process for this accelerate config, for
    processes started by plain torchrun. Names and values as in accelerate/utils/launch.py
    (``prepare_multi_gpu_env`` for FSDP, ``prepare_deepspeed_cmd_env`` for DeepSpeed) and the launch
    defaults of accelerate/commands/launch.py; a test compares them with accelerate's own."""
    env: dict[str, str] = {}
    if cfg.get("mixed_precision") is not None:
        env["ACCELERATE_MIXED_PRECISION"] = str(cfg["mixed_precision"])
    dist = cfg.get("distributed_type")
    if dist == "FSDP":
        f = cfg["fsdp_config"]
        env.update({
            "ACCELERATE_USE_FSDP": "true",
            "FSDP_VERSION": str(f.get("fsdp_version", 1)),
            "FSDP_RESHARD_AFTER_FORWARD": str(f["fsdp_reshard_after_forward"]).lower(),
            "FSDP_OFFLOAD_PARAMS": str(f["fsdp_offload_params"]).lower(),
            "FSDP_AUTO_WRAP_POLICY": str(f["fsdp_auto_wrap_policy"]),
            "FSDP_STATE_DICT_TYPE": str(f["fsdp_state_dict_type"]),
            "FSDP_CPU_RAM_EFFICIENT_LOADING": str(f["fsdp_cpu_ram_efficient_loading"]).lower(),
            # accelerate launch's default (--fsdp_sync_module_states true); RAM-efficient loading needs it
            "FSDP_SYNC_MODULE_STATES": str(f.get("fsdp_sync_module_states", True)).lower(),
            "FSDP_ACTIVATION_CHECKPOINTING": str(f["fsdp_activation_checkpointing"]).lower(),
            # accelerate launch's defaults for what the config leaves out (its --fsdp_* options)
            "FSDP_SHARDING_STRATEGY": "FULL_SHARD",  # FSDP1's name for reshard_after_forward=True
            "FSDP_MIN_NUM_PARAMS": "100000000",  # read by SIZE_BASED_WRAP only
            "FSDP_FORWARD_PREFETCH": "false",
            "FSDP_USE_ORIG_PARAMS": "true",
            "FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD": "false",
        })
    elif dist == "DEEPSPEED":
        d = cfg["deepspeed_config"]
        env.update({
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(d["deepspeed_config_file"]),
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": str(d["zero3_init_flag"]).lower(),
            # which accelerate-config keys were given (launch_command: the deepspeed_config keys); the
            # DeepSpeed plugin refuses those that the config file must hold instead
            "ACCELERATE_CONFIG_DS_FIELDS": ",".join(d),
        })
    return env


def node_config(cfg: dict[str, Any], rank: int) -> dict[str, Any]:
    """Node ``rank``'s accelerate config: the run's, with its ``machine_rank`` and no main address."""
    out = {k: v for k, v in cfg.items() if k not in ("main_process_ip", "main_process_port")}
    out["machine_rank"] = rank
    return out


def run_dir_sh(up: str = "") -> str:
    """Shell lines that set ``RUN_DIR`` from the script's own path (plus ``up``, e.g. ``/..``), with
    bash alone (no dirname), so a copied directory finds itself wherever it lies."""
    return ('case "${BASH_SOURCE[0]}" in */*) HERE="${BASH_SOURCE[0]%/*}";; *) HERE=.;; esac\n'
            f'RUN_DIR="$(cd "$HERE{up}" && pwd)"')


def _head(title: str, usage: str) -> list[str]:
    return ["#!/usr/bin/env bash", f"# {title}", f"#   {usage}",
            "# Add --resume to continue from the last complete checkpoint in checkpoints/.", "set -euo pipefail"]


def _main_addr_lines() -> list[str]:
    return [': "${MAIN_ADDR:?set MAIN_ADDR to the address of node 0 (reachable from every node)}"',
            f'MAIN_PORT="${{MAIN_PORT:-{DEFAULT_PORT}}}"']


def node_env_lines(nodes: int) -> list[str]:
    """Shell lines for a script that every node runs: require NODE_RANK (0..nodes-1) and MAIN_ADDR,
    default MAIN_PORT (the convention above; ftadvisor.export's run.sh)."""
    return [f"# {nodes} nodes: run this on every node with {NODE_RANK_VAR}=0..{nodes - 1}, {ADDR_VAR}=<node 0 "
            f"address> and optionally {PORT_VAR} (default {DEFAULT_PORT})",
            f': "${{{NODE_RANK_VAR}:?set {NODE_RANK_VAR} to the rank of this node, 0..{nodes - 1}}}"',
            *_main_addr_lines()]


def _exports(env: dict[str, str]) -> list[str]:
    if not env:
        return []
    return (["# what accelerate launch would set for this layout (accelerate/utils/launch.py)"]
            + [f"export {k}={shlex.quote(v)}" for k, v in env.items()])


def accelerate_node_script(rank: int, nodes: int) -> str:
    lines = _head(f"Node {rank} of {nodes}: accelerate launch with nodes/accelerate-node{rank}.yaml.",
                  f"MAIN_ADDR=<node 0 address> [MAIN_PORT={DEFAULT_PORT}] bash nodes/accelerate-node{rank}.sh")
    lines += [run_dir_sh("/.."), find_python_sh().rstrip("\n")]
    lines += _main_addr_lines()
    lines += ['cd "$RUN_DIR"  # ds_config.json is named relative to it',
              'exec "$PY" -m accelerate.commands.launch \\',
              f'  --config_file "$RUN_DIR/{NODES_DIR}/accelerate-node{rank}.yaml" \\',
              '  --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" -m ftadvisor.launch "$RUN_DIR" "$@"']
    return "\n".join(lines) + "\n"


def torchrun_node_script(rank: int, nodes: int, per_node: int, env: dict[str, str]) -> str:
    lines = _head(f"Node {rank} of {nodes}: plain torchrun ({per_node} processes), c10d rendezvous at node 0.",
                  f"MAIN_ADDR=<node 0 address> [MAIN_PORT={DEFAULT_PORT}] bash nodes/torchrun-node{rank}.sh")
    lines += [run_dir_sh("/.."), find_python_sh().rstrip("\n")]
    lines += _main_addr_lines() + _exports(env)
    # c10d rendezvous (torch/distributed/run.py): the agents meet at MAIN_ADDR:MAIN_PORT under one id
    lines += ['cd "$RUN_DIR"',
              f'exec "$PY" -m torch.distributed.run --nnodes {nodes} --node_rank {rank} --nproc_per_node {per_node} \\',
              '  --rdzv_backend c10d --rdzv_endpoint "$MAIN_ADDR:$MAIN_PORT" --rdzv_id "${RDZV_ID:-ftadvisor}" \\',
              '  -m ftadvisor.launch "$RUN_DIR" "$@"']
    return "\n".join(lines) + "\n"


def sbatch_script(nodes: int, per_node: int, env: dict[str, str], job_name: str) -> str:
    """A Slurm batch script: one task per node, each a torchrun agent for ``per_node`` processes."""
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={per_node}",
        "#SBATCH --output=slurm-%j.out",
        "# Submit from the run directory, on a file system every node sees:",
        "#   cd RUN_DIR && sbatch sbatch.sh [--resume]",
        "set -euo pipefail",
        "# Slurm runs a copy of this script: the run directory is where it was submitted from",
        'RUN_DIR="${FTADVISOR_RUN_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}"',
        'if [ ! -f "$RUN_DIR/plan.yaml" ]; then',
        '  echo "error: $RUN_DIR holds no plan.yaml; submit from the run directory (cd RUN_DIR && sbatch sbatch.sh)' 
        ' or set FTADVISOR_RUN_DIR" >&2',
        "  exit 2",
        "fi",
        find_python_sh().rstrip("\n"),
        "# the first node of the allocation hosts the rendezvous",
        'MAIN_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        f'MAIN_PORT="${{MAIN_PORT:-{DEFAULT_PORT}}}"',
        "export PY RUN_DIR MAIN_ADDR MAIN_PORT",
        *_exports(env),
        'cd "$RUN_DIR"',
        "# one torchrun agent per node; SLURM_NODEID is that node's own, so it is expanded inside the task",
        "srun --kill-on-bad-exit=1 bash -c 'exec \"$PY\" -m torch.distributed.run --nnodes \"$SLURM_NNODES\" "
        f"--node_rank \"$SLURM_NODEID\" --nproc_per_node {per_node} --rdzv_backend c10d "
        "--rdzv_endpoint \"$MAIN_ADDR:$MAIN_PORT\" --rdzv_id \"$SLURM_JOB_ID\" "
        "-m ftadvisor.launch \"$RUN_DIR\" \"$@\"' "
        'ftadvisor-node "$@"',
    ]
    return "\n".join(lines) + "\n"


def node_files(cfg: dict[str, Any], nodes: int, per_node: int, job_name: str = "ftadvisor") -> dict[str, Any]:
    """Relative path -> contents (a dict is an accelerate YAML config, a str a script) for a run over
    ``nodes`` machines of ``per_node`` processes; empty for one machine."""
    if nodes <= 1:
        return {}
    env = accelerate_env(cfg)
    files: dict[str, Any] = {}
    for rank in range(nodes):
        files[f"{NODES_DIR}/accelerate-node{rank}.yaml"] = node_config(cfg, rank)
        files[f"{NODES_DIR}/accelerate-node{rank}.sh"] = accelerate_node_script(rank, nodes)
        files[f"{NODES_DIR}/torchrun-node{rank}.sh"] = torchrun_node_script(rank, nodes, per_node, env)
    files[SBATCH_FILE] = sbatch_script(nodes, per_node, env, job_name)
    return files


def node_commands(nodes: int) -> list[str]:
    """One line per node, as printed by a dry run."""
    return [f"node {r}: MAIN_ADDR=<node 0 address> bash {NODES_DIR}/accelerate-node{r}.sh   "
            f"(or bash {NODES_DIR}/torchrun-node{r}.sh)" for r in range(nodes)]
