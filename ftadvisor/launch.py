"""``ftadvisor launch``: turn a plan into a run directory, check it, and train with the shared engine.

    ftadvisor launch examples/plans/lora-tiny-cpu.yaml --data examples/data/chat.jsonl \\
        --model /tmp/tiny-llama --output runs/demo [--dry-run]
    python -m ftadvisor.launch runs/demo [--resume]      # what command.sh runs (once per process)

Two halves:

1. :func:`prepare` (the CLI face calls it) resolves the plan, loads and checks the data against the
   technique, detects (or takes) the hardware, asks :func:`ftadvisor.estimate` whether the plan
   fits, and writes an editable run directory -- ``plan.yaml``, ``accelerate.yaml`` (plus
   ``ds_config.json`` for DeepSpeed ZeRO), ``command.sh`` and ``estimate.json`` -- before any model
   is loaded. Every check that can fail on user input fails here.
2. :func:`main` (``python -m ftadvisor.launch RUN_DIR``) reads that directory back, repeats the
   cheap checks (the directory may have been edited), and hands model, plan and data to
   ``ftadvisor.train.engine``: the launcher never applies a technique itself. Rank 0 draws the
   progress bar, saves the final model in Hugging Face format under ``RUN_DIR/final``, writes
   ``result.json`` and appends a calibration record (measured peak memory and throughput next to
   the prediction).

The run directory is a transaction: one live run at a time (``run.lock``, :class:`RunLock`); the
training process ends with the ``ftadvisor launch`` that started it (:func:`_bind_to_supervisor`);
a checkpoint counts once its completion marker is written (``ftadvisor.train.engine.checkpoint_dirs``),
``final/`` and ``result.json`` appear whole or not at all; a full disk or a permission refused is one
line (:func:`storage_error`), and ``--resume`` of a finished run changes nothing (:func:`finished_run`).

Nothing here imports torch, transformers or accelerate at module level: ``import ftadvisor``
and ``ftadvisor estimate`` stay light.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftadvisor.errors import FtAdvisorError, from_validation
from ftadvisor.validate import write_text_atomic
from ftadvisor.plans import read_plan_file
from ftadvisor.detect import host_memory_bytes as _host_memory_bytes
from ftadvisor.profiles import match_device as _match_device
from ftadvisor.schema import Estimate, HardwareProfile, TrainingPlan

GIB = 2**30

PLAN_FILE = "plan.yaml"
ACCELERATE_FILE = "accelerate.yaml"
DEEPSPEED_FILE = "ds_config.json"
COMMAND_FILE = "command.sh"
ESTIMATE_FILE = "estimate.json"
LOG_FILE = "train_log.jsonl"
RESULT_FILE = "result.json"
FINAL_DIR = "final"
CHECKPOINT_DIR = "checkpoints"
FINAL_PARTIAL = ".final.partial"  # final/ is written here, then renamed into place
MERGED_DIR = "merged"  # with run.merge: final/'s adapter merged into its base
MERGED_PARTIAL = ".merged.partial"  # merged/ is written here, then renamed into place
FINAL_OLD = ".final.old"  # the previous final/ while the new one is renamed in
LOCK_FILE = "run.lock"
"""Who is running this directory: JSON with pid, host and start time (see :class:`RunLock`)."""
SUPERVISOR_ENV = "FTADVISOR_SUPERVISOR_PID"
"""Set by ``ftadvisor launch`` for the training process it starts: the pid that holds the run's lock
and whose death must end the training (see :func:`_bind_to_supervisor`)."""
# What a run writes; ``--overwrite`` removes these and nothing else (never the lock).
RUN_ARTIFACTS = (PLAN_FILE, ACCELERATE_FILE, DEEPSPEED_FILE, COMMAND_FILE, ESTIMATE_FILE, LOG_FILE, RESULT_FILE,
                 FINAL_DIR, CHECKPOINT_DIR, FINAL_PARTIAL, FINAL_OLD, MERGED_DIR, MERGED_PARTIAL,
                 "nodes", "sbatch.sh")  # multi-node scripts (ftadvisor.multinode.NODES_DIR, SBATCH_FILE)


class RunSettings(BaseModel):
    """How long and how to train; everything that is not a cost-model knob (those are in TrainingPlan)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps to run; None trains ``num_epochs`` over the data."""
    num_epochs: float = Field(default=1.0, gt=0)
    """Passes over the data when ``max_steps`` is None."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Peak learning rate; None takes the engine's default for the technique."""
    seed: int = 0
    """Random seed (data order, adapter initialisation, sampling)."""
    save_steps: int | None = Field(default=None, ge=1)
    """Save a resumable checkpoint every this many optimizer steps; None: the engine's default."""
    force: bool = False
    """Train even when the estimator predicts the plan does not fit (``--force``)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto (CUDA when present), cpu or cuda."""
    random_init: bool = False
    """Build the model from its config with random weights instead of loading weights (smoke tests)."""
    reward: str | None = None
    """PPO/GRPO reward: built-in name(s) (exact_match, length, format; comma-joined) or a reward-model
    directory; None lets the engine choose (exact_match when the data has answers, else length)."""
    merge: bool = False
    """After an adapter run, also write ``merged/``: the adapter folded into a 16-bit copy of its base, a plain
    Hugging Face model (``--merge``; ftadvisor.train.engine.merge_adapter)."""
    record_calibration: bool = True
    """Append the measured peak memory and throughput to the calibration results."""
    results_root: str | None = None
    """Folder of calibration results; None: ``<runs folder>/calibration`` (ftadvisor.runs), never the checkout."""


RUN_FIELDS = tuple(RunSettings.model_fields)

REMOTE_CODE_FLAG = "--trust-remote-code"
"""Consent to run a model repository's own Python code. It is a property of one command, never of
a file: it is not stored in plan.yaml or command.sh, and a plan file or ``--set`` that names
``trust_remote_code`` is refused, so that a shared plan cannot switch remote code on."""


def _refuse_remote_code_key(fields: dict[str, Any], where: str) -> None:
    if "trust_remote_code" in fields:
        raise FtAdvisorError(
            f"{where}trust_remote_code",
            f"is never read from a plan file or --set; pass {REMOTE_CODE_FLAG} on the command line "
            "to let the model repository run its own code",
        )


class RunSpec(BaseModel):
    """Everything ``plan.yaml`` holds: what to train, on what, with which plan and run settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str
    """Local model directory, model profile id or Hugging Face id."""
    data: str
    """Training data: a .jsonl/.json/.csv/.parquet file or a Hugging Face dataset id."""
    gpu: str | None = None
    """Hardware profile to check the plan against; None detects it when the run starts."""
    plan: TrainingPlan
    """The fully resolved training plan (every field, defaults included)."""
    run: RunSettings = RunSettings()
    """Run settings."""


# --------------------------------------------------------------------------------------------
# Reading plans and run directories
# --------------------------------------------------------------------------------------------


def build_spec(
    plan_file: str | os.PathLike | None = None,
    *,
    data: str | None = None,
    model: str | None = None,
    gpu: str | None = None,
    num_gpus: int | None = None,
    sets: dict[str, Any] | None = None,
    max_steps: int | None = None,
    force: bool = False,
) -> RunSpec:
    """Merge a plan YAML, ``--set`` values and the command-line options into a validated :class:`RunSpec`.

    The YAML may be flat (plan fields, plus ``model``, ``data``, ``gpu`` and a ``run:`` mapping) or
    a run directory's ``plan.yaml`` (``plan:`` nested); command-line values win over the file.
    """
    from ftadvisor.plans import PLAN_FIELDS, make_plan, split_plan_file

    # the one reading of a plan file (estimate --plan reads it the same way)
    parts = split_plan_file(read_plan_file(plan_file, "plan") if plan_file is not None else {}, "plan", RUN_FIELDS)
    plan_fields: dict[str, Any] = parts["plan"]
    run_fields: dict[str, Any] = parts["run"]
    file_model, file_data, file_gpu = parts["model"], parts["data"], parts["gpu"]
    sets = {k.strip().replace("-", "_"): v for k, v in (sets or {}).items()}
    _refuse_remote_code_key(sets, "--set ")
    for k, v in sets.items():
        if k in RUN_FIELDS:
            run_fields[k] = v
        elif k in PLAN_FIELDS:
            plan_fields[k] = v
        else:
            from ftadvisor.errors import closest

            near = closest(k, list(PLAN_FIELDS) + list(RUN_FIELDS))
            raise FtAdvisorError("--set", f"{k!r} is neither a plan nor a run field"
                                 + (f"; did you mean {', '.join(near)}" if near else ""))
    if num_gpus is not None:
        plan_fields["num_gpus"] = num_gpus
    if max_steps is not None:
        run_fields["max_steps"] = max_steps
    if force:
        run_fields["force"] = True
    if isinstance(plan_fields.get("lora_targets"), str) and "," in plan_fields["lora_targets"]:
        plan_fields["lora_targets"] = [x.strip() for x in plan_fields["lora_targets"].split(",")]
    model = model or file_model
    data = data or file_data
    if not model:
        raise FtAdvisorError("--model", "no model given (a local model directory, a profile id or a Hugging Face id)")
    if not data:
        raise FtAdvisorError("--data", "no data given (a .jsonl/.json/.csv/.parquet file or a Hugging Face dataset id)")
    plan = make_plan(plan=plan_fields)
    if plan.framework != "hf-trl":  # launch runs trl + transformers + peft; other stacks are estimated only
        raise FtAdvisorError("framework", f"launch runs hf-trl; {plan.framework} is for estimates only", ["hf-trl"])
    try:
        run = RunSettings(**run_fields)
    except ValidationError as err:
        raise from_validation(err, "run.") from None
    # Local paths are stored absolute, so the run directory works from any working directory.
    from ftadvisor import validate

    model_s = validate.name("--model", str(model))
    if validate.exists(model_s):
        model_s = str(Path(model_s).expanduser().resolve())
    data_s = validate.name("--data", str(data))
    if validate.exists(data_s):
        data_s = str(Path(data_s).expanduser().resolve())
    return RunSpec(model=model_s, data=data_s, gpu=gpu or file_gpu, plan=plan, run=run)


def load_spec(run_dir: str | os.PathLike) -> RunSpec:
    """Read ``RUN_DIR/plan.yaml`` back (after a user edit, too) with the same checks as on launch."""
    path = Path(run_dir) / PLAN_FILE
    raw = read_plan_file(path, "run_dir")
    unknown = sorted(set(raw) - {"model", "data", "gpu", "plan", "run"})
    if unknown:
        raise FtAdvisorError(f"{PLAN_FILE}", f"unknown key {unknown[0]!r}", ["model", "data", "gpu", "plan", "run"])
    from ftadvisor.plans import make_plan
    from ftadvisor.validate import mapping

    run_fields = raw.get("run") or {}
    if not isinstance(run_fields, dict):
        raise FtAdvisorError(f"{PLAN_FILE}: run", "must be a mapping of run settings", list(RUN_FIELDS))
    _refuse_remote_code_key(run_fields, f"{PLAN_FILE}: run.")
    plan_fields = mapping(raw.get("plan") or {}, f"{PLAN_FILE}: plan", "a mapping of plan fields")
    _refuse_remote_code_key(plan_fields, f"{PLAN_FILE}: plan.")
    plan = make_plan(plan=plan_fields)
    try:
        run = RunSettings(**run_fields)
    except ValidationError as err:
        raise from_validation(err, f"{PLAN_FILE}: run.") from None
    for k in ("model", "data"):
        if not raw.get(k):
            raise FtAdvisorError(f"{PLAN_FILE}", f"has no {k!r}")
    return RunSpec(model=str(raw["model"]), data=str(raw["data"]), gpu=raw.get("gpu"), plan=plan, run=run)


# --------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------


host_memory_bytes = _host_memory_bytes  # the shared probe (ftadvisor/detect.py)


match_device = _match_device  # the shared matcher (ftadvisor/profiles.py)


_CUDA_QUERY = (
    "import json, torch\n"
    "ok = torch.cuda.is_available()\n"
    "props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if ok else []\n"
    "print(json.dumps([[p.name, p.total_memory] for p in props]))\n"
)


def cuda_devices(in_process: bool) -> list[tuple[str, int]]:
    """(name, total bytes) of each visible CUDA device as torch reports it; [] without CUDA or torch.

    The launcher asks in a short-lived subprocess: querying device properties initialises CUDA, and a
    launcher that waits for its training child must not hold a CUDA context (hundreds of MiB) on the
    GPU the child trains on. The training process itself asks in process, for the device it uses.
    """
    if in_process:
        import torch

        if not torch.cuda.is_available():
            return []
        i = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        return [(props.name, props.total_memory)] * torch.cuda.device_count()
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", _CUDA_QUERY], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FtAdvisorError("--gpu", f"could not query CUDA devices ({err}); name the hardware with --gpu") from None
    if out.returncode != 0:
        if "No module named 'torch'" in out.stderr:
            return []
        raise FtAdvisorError("--gpu", "could not query CUDA devices (" + (out.stderr.strip().splitlines() or ["?"])[-1]
                             + "); name the hardware with --gpu")
    return [(name, int(total)) for name, total in json.loads(out.stdout.strip().splitlines()[-1])]


def detect_hardware(gpu: str | None, device: str = "auto", in_process: bool = False) -> tuple[HardwareProfile, str, int]:
    """The hardware profile to check against, a one-line note on how it was found, and the number of
    CUDA devices found (0 when ``--gpu`` names the hardware or there is no CUDA).

    ``gpu`` (``--gpu``) wins. Otherwise the CUDA device as torch reports it (its measured memory
    replaces the profile's, e.g. for MIG slices), or the ``cpu`` profile with this machine's RAM.
    """
    from ftadvisor.profiles import hardware_profiles, resolve_hardware

    if gpu:
        hw = resolve_hardware(gpu)
        if hw.vendor == "cpu" and (ram := host_memory_bytes()):
            # the cpu profile's memory is a placeholder for "host RAM": use this machine's
            hw = hw.model_copy(update={"memory_gib": ram / GIB})
        return hw, f"--gpu {gpu} -> {hw.id}", 0
    devices = cuda_devices(in_process) if device != "cpu" else []
    if devices:
        name, total = devices[0]
        hw = match_device(name, total)
        if hw is None:
            raise FtAdvisorError(
                "--gpu", f"detected {name!r} ({total / GIB:.1f} GiB) matches no hardware profile; "
                "name the closest one with --gpu", sorted(hardware_profiles()))
        hw = hw.model_copy(update={"memory_gib": total / GIB})
        return hw, f"torch.cuda: {name}, {total / GIB:.1f} GiB x {len(devices)} -> {hw.id}", len(devices)
    hw = resolve_hardware("cpu")
    ram = host_memory_bytes()
    if ram:
        hw = hw.model_copy(update={"memory_gib": ram / GIB})
    return hw, f"no CUDA device: cpu profile with this machine's {hw.memory_gib:.1f} GiB of RAM", 0


# --------------------------------------------------------------------------------------------
# Fit check
# --------------------------------------------------------------------------------------------

# words for the parts whose field names read badly in a sentence
_COMPONENT_WORDS = {
    "extra_models": "reference/reward/value models",
    "generation_cache": "generation KV cache",
    "quantization_workspace": "dequantization workspace",
    "communication": "communication buffers",
}


def biggest_component(est: Estimate) -> tuple[str, int]:
    name, size = est.memory.largest_component()
    return _COMPONENT_WORDS.get(name, name.replace("_", " ")), int(size)


def fit_message(est: Estimate, hw: HardwareProfile) -> str:
    name, size = biggest_component(est)
    m = est.memory
    return (
        f"{est.technique} of {est.model_id} does not fit on {hw.name}: predicted {m.device_total_bytes / GIB:.1f} GiB "
        f"per GPU vs {hw.memory_gib:.1f} GiB capacity; biggest component: {name} {size / GIB:.1f} GiB "
        f"(peak during {m.peak_phase}). Change the plan (ftadvisor estimate shows the alternatives) or pass --force"
    )


def resolve_model_profile(model: str, trust_remote_code: bool = False):
    """The cost model's view of ``model``: a profile id, a local config, or a Hub id, of which only
    config.json is fetched, failing in one line within seconds when it cannot be (ftadvisor.hub)."""
    from ftadvisor.profiles import resolve_model

    return resolve_model(model, trust_remote_code=trust_remote_code)


def check_hub_model(model: str) -> None:
    """A Hub id that is no local path must be reachable before training starts: otherwise
    transformers' weight download retries for about a minute before it fails (ftadvisor.hub)."""
    from ftadvisor import hub

    parsed = hub.parse_hub_id(model) if isinstance(model, str) else None
    if parsed and not Path(model).expanduser().exists():
        hub.check_available(*parsed)


def remote_code_note(model: str, trust_remote_code: bool) -> str | None:
    """Say so when a local model asks for its own code (``auto_map`` in config.json, how transformers
    finds repository code), and whether it will run."""
    cfg_path = Path(model).expanduser()
    cfg_path = cfg_path / "config.json" if cfg_path.is_dir() else cfg_path
    if not (cfg_path.name == "config.json" and cfg_path.is_file()):
        return "remote code allowed (--trust-remote-code)" if trust_remote_code else None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not cfg.get("auto_map"):
        return None
    if trust_remote_code:
        return f"{model} ships its own Python code (auto_map in config.json); it WILL run ({REMOTE_CODE_FLAG})"
    return (f"{model} ships its own Python code (auto_map in config.json); it will not run unless you pass "
            f"{REMOTE_CODE_FLAG}, and transformers' built-in class is used where one exists")


def predict(spec: RunSpec, hw: HardwareProfile, trust_remote_code: bool = False) -> Estimate:
    from ftadvisor.estimator import estimate

    return estimate(resolve_model_profile(spec.model, trust_remote_code), hw, plan=spec.plan)


def check_layout_on_cpu(plan: TrainingPlan) -> None:
    """FSDP and DeepSpeed ZeRO cannot run without GPUs through accelerate and the HF Trainer.

    accelerate switches a run to FSDP only when its distributed type is a GPU-like one (MULTI_GPU,
    MULTI_XPU, ...; ``AcceleratorState.__init__`` in accelerate/state.py); several CPU processes are
    MULTI_CPU (gloo), for which the FSDP plugin is dropped and the run would silently become plain
    DDP. (torch's own ``fully_shard`` does work on CPU with gloo; accelerate does not use it there.)
    DeepSpeed needs an accelerator, and is not part of the tested stack.
    """
    if plan.sharding == "fsdp":
        raise FtAdvisorError(
            "sharding", "fsdp needs CUDA GPUs: without them accelerate runs several processes as MULTI_CPU (gloo) "
            "and drops the FSDP plugin (accelerate/state.py), so this would silently train as DDP; use "
            "sharding=ddp here, or --dry-run to write the run directory for a GPU machine", ["ddp", "none"])
    if plan.sharding in ("zero1", "zero2", "zero3"):
        raise FtAdvisorError(
            "sharding", f"{plan.sharding} (DeepSpeed) needs CUDA GPUs; use sharding=ddp here, or --dry-run to write "
            "the run directory for a GPU machine", ["ddp", "none"])


def _check_reward(spec: RunSpec) -> None:
    """PPO scores rollouts with a frozen reward model that must exist before anything loads
    (the engine's ``build_reward_model``: ``run.reward`` or ``plan.ppo_reward_model``, a directory)."""
    from ftadvisor.techniques import parse_technique

    objective = parse_technique(spec.plan.technique).objective
    ref = spec.run.reward or spec.plan.ppo_reward_model
    if objective.reward_model:
        if ref is None and not spec.run.random_init:
            raise FtAdvisorError("reward", f"{objective.name} needs a reward model: --set reward=DIR (a sequence-classification "
                                 "checkpoint directory) or plan field ppo_reward_model")
        if ref is not None and not Path(str(ref)).expanduser().is_dir():
            raise FtAdvisorError("reward", f"{objective.name} reward model {ref!r} is not a directory")


def _check_merge(spec: RunSpec) -> None:
    """``--merge`` folds a peft adapter into its base: refused before training for techniques without one."""
    from ftadvisor.techniques import all_techniques, parse_technique

    method = parse_technique(spec.plan.technique).method
    if spec.run.merge and not (method.peft and not method.own_modules):
        ok = [t for t in all_techniques() if parse_technique(t).method.peft and not parse_technique(t).method.own_modules]
        raise FtAdvisorError("merge", f"{spec.plan.technique} saves no peft adapter to merge (full fine-tuning already "
                             "saves a whole model; bottleneck adapters and memory experts are extra modules)", ok)


def preflight(spec: RunSpec, dry_run: bool = False, in_process: bool = False,
              trust_remote_code: bool = False) -> dict[str, Any]:
    """Every check before a model is loaded, in order: data vs technique, hardware, layout, fit.

    Raises FtAdvisorError. In a dry run a plan predicted not to fit (or a GPU-only layout on a CPU
    machine) only warns; so does a misfit with ``spec.run.force``.
    """
    from ftadvisor.datasets import check_for_technique, load_data

    data = load_data(spec.data)
    warnings = check_for_technique(data, spec.plan.technique)
    _check_reward(spec)
    _check_merge(spec)
    hw, hw_note, n_cuda = detect_hardware(spec.gpu, spec.run.device, in_process=in_process)
    if hw.vendor == "cpu" and not dry_run:
        check_layout_on_cpu(spec.plan)
    per_node = spec.plan.num_gpus // (spec.plan.num_nodes or 1)  # not given: one machine
    if n_cuda and per_node > n_cuda and not dry_run:
        raise FtAdvisorError("num_gpus", f"the plan runs {per_node} processes per node but this machine has "
                             f"{n_cuda} CUDA device(s)")
    est = predict(spec, hw, trust_remote_code)
    if not dry_run:
        check_hub_model(spec.model)
    if not est.fits:
        if not (spec.run.force or dry_run):
            raise FtAdvisorError("plan", fit_message(est, hw))
        warnings.append(("forced: " if spec.run.force else "") + fit_message(est, hw).split(". Change")[0])
    return {"data": data, "warnings": warnings + list(est.warnings), "hardware": hw, "hardware_note": hw_note,
            "estimate": est}


# --------------------------------------------------------------------------------------------
# Accelerate / DeepSpeed configuration
# --------------------------------------------------------------------------------------------


def mixed_precision(plan: TrainingPlan) -> str:
    # accelerate's mixed_precision names; "true" bf16 and fp32 run without autocast.
    return {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(plan.precision, "no")


def deepspeed_config(plan: TrainingPlan) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO-1/2/3 with "auto" values that transformers fills from its arguments.

    Keys and the "auto" convention: transformers ``integrations/deepspeed.py``
    (HfTrainerDeepSpeedConfig.trainer_config_process / trainer_config_finalize); bucket sizes left
    "auto" become hidden_size^2 there, which is what the memory model counts for ZeRO buffers.
    """
    stage = {"zero1": 1, "zero2": 2, "zero3": 3}[plan.sharding]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # the final save writes one consolidated 16-bit model (HF format) instead of shards
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    if plan.cpu_offload:
        # ZeRO-Offload (Ren et al. 2021): optimizer state (and under stage 3 the parameters) on the host.
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


def accelerate_config(plan: TrainingPlan, ds_config_path: str | None = None) -> dict[str, Any]:
    """The ``accelerate launch --config_file`` contents for the plan's layout.

    Keys are those of accelerate's ``ClusterConfig`` (``accelerate/commands/config/config_args.py``)
    as ``accelerate config`` writes them (``commands/config/cluster.py``).
    """
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": plan.num_nodes or 1,  # not given: one machine
        "machine_rank": 0,  # node 0's; nodes/accelerate-node<i>.yaml carry the others (ftadvisor.multinode)
        "num_processes": plan.num_gpus,  # accelerate counts processes over all machines
        "mixed_precision": mixed_precision(plan),
        "use_cpu": False,
        "debug": False,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "enable_cpu_affinity": False,
    }
    # Several nodes: the main address is a parameter of each node's command (--main_process_ip
    # "$MAIN_ADDR"), never a value in this file (ftadvisor.multinode).
    if plan.num_gpus == 1 and plan.sharding in ("none", "ddp"):
        cfg["distributed_type"] = "NO"
    elif plan.sharding in ("none", "ddp"):
        cfg["distributed_type"] = "MULTI_GPU"
    elif plan.sharding == "fsdp":
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {
            "fsdp_version": 2,  # accelerate's recommended FSDP (per-parameter sharding, fully_shard)
            "fsdp_reshard_after_forward": True,  # = FULL_SHARD (parameters sharded between uses)
            "fsdp_offload_params": bool(plan.cpu_offload),
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (_no_split_modules)
            # intermediate checkpoints: each rank writes its own shard (torch.distributed.checkpoint, via
            # accelerate's save_fsdp_model) instead of gathering the whole model on rank 0; the final
            # save switches to FULL_STATE_DICT for a plain HF model (_save_final)
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            # gradient checkpointing comes from the plan through the trainer, not from FSDP's wrapper
            "fsdp_activation_checkpointing": False,
        }
    else:  # zero1/2/3
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {
            "deepspeed_config_file": ds_config_path or DEEPSPEED_FILE,
            # build ZeRO-3 partitioned parameters at load time instead of full copies on each GPU
            "zero3_init_flag": plan.sharding == "zero3",
        }
        # With a config file, precision lives in it ("bf16"/"fp16": "auto", filled from the trainer's
        # arguments): accelerate's DeepSpeedPlugin refuses a mixed_precision given in this file too
        # (accelerate/utils/dataclasses.py _deepspeed_config_checks).
        del cfg["mixed_precision"]
        if (plan.num_nodes or 1) > 1:
            # one accelerate launch per node, each starting its own processes; accelerate's default for
            # several machines is DeepSpeed's pdsh launcher with a hostfile (accelerate/utils/launch.py)
            cfg["deepspeed_config"]["deepspeed_multinode_launcher"] = "standard"
    return cfg


# --------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------


def launch_command(run_dir: Path, plan: TrainingPlan, resume: bool = False,
                   trust_remote_code: bool = False) -> list[str]:
    """The command that runs ``run_dir``: plain Python for one process, ``accelerate launch`` otherwise."""
    py = sys.executable
    tail = ["-m", "ftadvisor.launch", str(run_dir)] + (["--resume"] if resume else [])
    tail += [REMOTE_CODE_FLAG] if trust_remote_code else []
    if plan.num_gpus == 1 and plan.sharding in ("none", "ddp"):
        return [py, *tail]
    return [py, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_FILE), *tail]


def command_script(run_dir: Path, plan: TrainingPlan) -> str:
    """``command.sh``: portable -- it finds its run directory from its own location and the Python that
    has ftadvisor on the machine it runs on (ftadvisor.multinode.find_python_sh), and names no path of
    this checkout, so the directory can be copied to the training machine."""
    from ftadvisor.multinode import NODES_DIR, find_python_sh, run_dir_sh

    lines = [
        "#!/usr/bin/env bash",
        "# Run (or re-run) this ftadvisor launch. Edit plan.yaml / accelerate.yaml first if you like;",
        "# add --resume to continue from the last checkpoint in checkpoints/, and --trust-remote-code",
        "# to let the model repository run its own code (never stored here or in plan.yaml).",
        "set -euo pipefail",
        run_dir_sh(),
    ]
    nodes = plan.num_nodes or 1
    if nodes > 1:
        lines += [f"# {nodes} nodes: on node i run nodes/accelerate-node<i>.sh (or nodes/torchrun-node<i>.sh, or",
                  "# sbatch sbatch.sh under Slurm); this does the same for NODE_RANK=i.",
                  f': "${{NODE_RANK:?set NODE_RANK (0..{nodes - 1}) and MAIN_ADDR (node 0 address), '
                  'or run nodes/*.sh}"',
                  f'exec bash "$RUN_DIR/{NODES_DIR}/accelerate-node$NODE_RANK.sh" "$@"']
        return "\n".join(lines) + "\n"
    lines += [find_python_sh().rstrip("\n"), 'cd "$RUN_DIR"  # ds_config.json is named relative to it']
    if plan.num_gpus == 1 and plan.sharding in ("none", "ddp"):
        lines.append('exec "$PY" -m ftadvisor.launch "$RUN_DIR" "$@"')
    else:
        lines.append(f'exec "$PY" -m accelerate.commands.launch --config_file "$RUN_DIR/{ACCELERATE_FILE}" '
                     '-m ftadvisor.launch "$RUN_DIR" "$@"')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The run directory as a transaction: its lock, refused writes
# --------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of ``pid`` from /proc (Linux; proc(5) fields 3 and 22), or
    None where there is no /proc entry for it."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces; it ends at the last ')'
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_alive(pid: Any, started: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host. A zombie has ended; a start time that differs from
    ``started`` means the pid now belongs to another process."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):
            return False
        if started is not None and stat[1] != started:
            return False
    return True


def _start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


class RunLock:
    """The lock of a run directory: ``RUN_DIR/run.lock`` names the process that runs it.

    The file holds JSON: ``pid``, ``host``, ``started`` (plus, on Linux, the process's start time,
    so that a reused pid is not taken for the holder) and, once ``ftadvisor launch`` has started
    its training process, that process as ``child``. A launch, resume or ``python -m
    ftadvisor.launch`` into a directory whose holder (or its child) still runs is refused; a lock
    whose processes are all gone is stale and taken over with a note; the holder removes the file
    when it ends. The training process that ``ftadvisor launch`` starts finds its parent's pid in
    ``FTADVISOR_SUPERVISOR_PID`` and runs under that lock instead of taking its own.

    Check-and-write happens under ``flock`` of the file (where fcntl exists), so two processes
    that find a stale lock at the same moment cannot both take it.
    """

    def __init__(self, run_dir: str | os.PathLike, echo=None):
        self.run_dir = Path(run_dir).expanduser().absolute()
        self.path = self.run_dir / LOCK_FILE
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.held = False
        self.inherited = False
        self._made_dir = False

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    def _parse(text: str) -> dict[str, Any] | None:
        try:
            rec = json.loads(text) if text.strip() else None
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    def read(self) -> dict[str, Any] | None:
        try:
            return self._parse(self.path.read_text())
        except (OSError, UnicodeDecodeError):
            return None

    def _mine(self, rec: dict[str, Any]) -> bool:
        start = rec.get("pid_start")
        return (rec.get("host") == socket.gethostname() and rec.get("pid") == os.getpid()
                and (start is None or start == _start_time(os.getpid())))

    def _supervised_by(self, rec: dict[str, Any]) -> bool:
        """Whether ``rec`` is the lock of the ``ftadvisor launch`` process that started this one."""
        sup = os.environ.get(SUPERVISOR_ENV, "")
        return (sup.isdigit() and rec.get("host") == socket.gethostname() and rec.get("pid") == int(sup)
                and _pid_alive(int(sup), rec.get("pid_start")))

    def _describe(self, rec: dict[str, Any]) -> str:
        who = f"process {rec.get('pid')} on {rec.get('host')}"
        if rec.get("started"):
            who += f" (since {rec['started']})"
        return who

    def _refusal(self, rec: dict[str, Any], why: str) -> FtAdvisorError:
        return FtAdvisorError("--output", f"{self.run_dir} is in use by {self._describe(rec)}{why}; wait for that run "
                              f"to end or stop it (its lock: {self.path})")

    def _verdict(self, rec: dict[str, Any] | None, wait_s: float) -> str:
        """'free', 'mine', 'inherited' or 'stale'; raises when a live process holds the directory."""
        if rec is None or rec.get("pid") is None:
            return "free"
        if self._mine(rec):
            return "mine"
        if self._supervised_by(rec):
            return "inherited"
        if rec.get("host") != socket.gethostname():
            # another machine's process (shared file system): its liveness cannot be checked from here
            raise self._refusal(rec, "; if that run is over, delete the lock file")
        if _pid_alive(rec.get("pid"), rec.get("pid_start")):
            raise self._refusal(rec, "")
        child = rec.get("child")
        # The holder is gone; its training process ends with it (pdeathsig / watchdog) within a few
        # seconds: wait for that rather than run two trainers over the same checkpoints.
        deadline = time.monotonic() + wait_s
        while _pid_alive(child, rec.get("child_start")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(child, rec.get("child_start")):
            raise self._refusal(rec, f": its launcher has ended but its training process {child} still runs")
        return "stale"

    def check(self) -> None:
        """Refuse a directory that a live process holds; writes nothing (the early check of a launch)."""
        if self.path.is_file():
            self._verdict(self.read(), wait_s=0.0 if self.held else 15.0)

    # --- writing ---------------------------------------------------------------------------

    def _record(self, **extra) -> str:
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "pid_start": _start_time(os.getpid()), "command": " ".join(sys.argv[:3])[:200]}
        rec.update(extra)
        return json.dumps(rec) + "\n"

    def _locked(self, create: bool = True):
        """Open the lock file and hold ``flock`` on it; returns the fd (None: the file vanished
        under us -- try again -- or, without ``create``, is not there)."""
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock (Windows): best effort
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # a holder that released (unlinked) the file while we waited: ours is an orphan inode
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    @staticmethod
    def _read_fd(fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    @staticmethod
    def _write_fd(fd: int, text: str) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
        os.fsync(fd)

    def acquire(self, create: bool = True) -> RunLock:
        """Take the lock (creating the directory when ``create``); idempotent for its holder."""
        if self.held:
            return self
        if not self.run_dir.is_dir():
            if not create:
                raise FtAdvisorError("run_dir", f"{self.run_dir} is not a run directory")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        while True:
            fd = self._locked()
            if fd is not None:
                break
        try:
            rec = self._parse(self._read_fd(fd))
            verdict = self._verdict(rec, wait_s=15.0)
            if verdict == "inherited":
                self.inherited = True
            else:
                if verdict == "stale":
                    self.echo(f"note: taking over the stale lock of {self._describe(rec)}, which no longer runs")
                self._write_fd(fd, self._record())
            self.held = True
        finally:
            os.close(fd)  # closing drops the flock
        return self

    def set_child(self, pid: int) -> None:
        """Record the training process started under this lock (a resume waits for it as well)."""
        if not self.held or self.inherited:
            return
        try:
            fd = self._locked(create=False)
            if fd is None:
                return
            try:
                rec = self._parse(self._read_fd(fd)) or {}
                if self._mine(rec):
                    rec.update(child=pid, child_start=_start_time(pid))
                    self._write_fd(fd, json.dumps(rec) + "\n")
            finally:
                os.close(fd)
        except OSError:
            pass  # (a full disk) the child goes unrecorded; it still ends with us

    def release(self) -> None:
        """Remove the lock if this process holds it (an inherited one stays with its holder)."""
        if not self.held:
            return
        self.held = False
        if self.inherited:
            return
        try:
            fd = self._locked(create=False)
            if fd is not None:
                try:
                    rec = self._parse(self._read_fd(fd))
                    if rec is None or self._mine(rec):
                        os.unlink(self.path)
                finally:
                    os.close(fd)
            if self._made_dir and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # a launch that failed before writing anything leaves nothing
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def storage_error(err: BaseException, fallback: str | os.PathLike | None = None) -> FtAdvisorError | None:
    """One line for a write the storage refused (full disk or quota, permission, read-only file
    system, a path through a file), naming the file; None for any other error."""
    from ftadvisor.train.engine import storage_errno

    code = storage_errno(err)
    if code is None and isinstance(err, OSError) and err.errno in (errno.ENOTDIR, errno.EISDIR):
        code = err.errno
    if code is None:
        return None
    filename = None
    e: BaseException | None = err
    while e is not None and filename is None:
        filename = getattr(e, "filename", None) if isinstance(e, OSError) else None
        e = e.__cause__ or e.__context__
    where = str(filename or fallback or "the run directory")
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return FtAdvisorError(where, f"{what}; free some space and continue with --resume (a checkpoint cut off "
                              "by this is never resumed from)")
    if code == errno.EROFS:
        return FtAdvisorError(where, "is on a read-only file system; choose another --output")
    if code in (errno.ENOTDIR, errno.EISDIR):
        return FtAdvisorError(where, "a part of this path is a file, not a directory; choose another --output")
    return FtAdvisorError(where, "permission denied; make the run directory writable or choose another --output")


def check_output_dir(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty output directory unless ``overwrite`` (or ``resume`` of the run in it)."""
    if out.exists() and not out.is_dir():
        raise FtAdvisorError("--output", f"{out} exists and is not a directory")
    if resume:
        if not (out / PLAN_FILE).is_file():
            raise FtAdvisorError("--resume", f"{out} holds no run to resume (no {PLAN_FILE})")
        return
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
        raise FtAdvisorError("--output", f"{out} is not empty; pass --overwrite to replace the run in it "
                             "(or --resume to continue it)")


def clear_run_artifacts(out: Path) -> None:
    """Remove what an earlier run wrote (``--overwrite``); files ftadvisor did not write stay."""
    for name in RUN_ARTIFACTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def write_run_dir(out: Path, spec: RunSpec, est: Estimate | None, hw: HardwareProfile | None, hw_note: str) -> list[str]:
    """Write plan.yaml, accelerate.yaml (+ ds_config.json), command.sh and estimate.json; return the command."""
    from ftadvisor import multinode

    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    cmd = launch_command(out, spec.plan)
    header = (
        "# ftadvisor run: edit and re-run with ./command.sh in this directory\n"
        "# plan: every TrainingPlan field (ftadvisor/schema.py); run: RunSettings (ftadvisor/launch.py)\n"
    )
    body = spec.model_dump(mode="json")
    (out / PLAN_FILE).write_text(header + yaml.safe_dump(body, sort_keys=False))
    ds_path = None
    if spec.plan.sharding in ("zero1", "zero2", "zero3"):
        ds_path = DEEPSPEED_FILE  # relative to the run directory (the scripts cd there; _resolve_ds_config_env)
        (out / DEEPSPEED_FILE).write_text(json.dumps(deepspeed_config(spec.plan), indent=2) + "\n")
    acc = accelerate_config(spec.plan, ds_path)
    header = "# accelerate launch --config_file for this run (written by ftadvisor launch from plan.yaml)\n"
    if hw is not None and hw.vendor == "cpu" and spec.plan.num_gpus > 1:
        header += ("# No CUDA here: accelerate's torchrun launcher starts the processes and each trains on the CPU\n"
                   "# over gloo (ftadvisor.launch sets ACCELERATE_USE_CPU in them).\n")
    (out / ACCELERATE_FILE).write_text(header + yaml.safe_dump(acc, sort_keys=False))
    nodes = spec.plan.num_nodes or 1
    job = "ftadvisor-" + spec.plan.technique.replace("+", "-")
    for rel, content in multinode.node_files(acc, nodes, spec.plan.num_gpus // nodes, job).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_text(f"# accelerate launch --config_file for node {content['machine_rank']} of {nodes} "
                            "(main address: --main_process_ip in its .sh)\n" + yaml.safe_dump(content, sort_keys=False))
        else:
            path.write_text(content)
            path.chmod(0o755)
    script = out / COMMAND_FILE
    script.write_text(command_script(out, spec.plan))
    script.chmod(0o755)
    payload = {
        "hardware": {"id": hw.id if hw else None, "name": hw.name if hw else None,
                     "memory_gib": hw.memory_gib if hw else None, "how": hw_note},
        "estimate": est.model_dump(mode="json") if est is not None else None,
    }
    (out / ESTIMATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return cmd


def prepare(
    plan_file: str | os.PathLike | None,
    *,
    data: str | None,
    model: str | None,
    output: str | os.PathLike,
    gpu: str | None = None,
    num_gpus: int | None = None,
    sets: dict[str, Any] | None = None,
    max_steps: int | None = None,
    dry_run: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    force: bool = False,
    echo=print,
    lock: RunLock | None = None,
) -> tuple[Path, list[str]]:
    """Check everything and write the run directory; return it and the command that trains it.

    A plan that does not fit stops here (FtAdvisorError) unless ``force``; a dry run only warns.
    A directory that another live launch holds is refused before anything else. ``lock``: the
    caller's :class:`RunLock` for ``output``, taken here before the first write and left held (the
    caller trains under it and releases it); without one, prepare takes and releases its own.
    """
    out = Path(output).expanduser()
    own_lock = lock is None
    lock = lock or RunLock(out, echo=echo)
    try:
        lock.check()
        return _prepare(plan_file, out, lock, data=data, model=model, gpu=gpu, num_gpus=num_gpus, sets=sets,
                        max_steps=max_steps, dry_run=dry_run, resume=resume, overwrite=overwrite,
                        trust_remote_code=trust_remote_code, force=force, echo=echo)
    finally:
        if own_lock:
            lock.release()


def _prepare(plan_file, out: Path, lock: RunLock, *, data, model, gpu, num_gpus, sets, max_steps, dry_run, resume,
             overwrite, trust_remote_code, force, echo) -> tuple[Path, list[str]]:
    if resume and plan_file is None and (out / PLAN_FILE).is_file():
        spec = load_spec(out)  # ftadvisor launch --output DIR --resume: the run as it was written
        updates: dict[str, Any] = {}
        if max_steps is not None:
            updates["max_steps"] = max_steps
        if force:
            updates["force"] = True
        if updates:
            spec = spec.model_copy(update={"run": spec.run.model_copy(update=updates)})
    else:
        spec = build_spec(plan_file, data=data, model=model, gpu=gpu, num_gpus=num_gpus, sets=sets,
                          max_steps=max_steps, force=force)
    check_output_dir(out, overwrite, resume)
    _refuse_multinode_here(spec.plan.num_nodes or 1, dry_run)
    pre = preflight(spec, dry_run=dry_run, trust_remote_code=trust_remote_code)
    user_data, hw, hw_note, est = pre["data"], pre["hardware"], pre["hardware_note"], pre["estimate"]
    spec = _with_launch_nodes(spec, hw)
    _refuse_multinode_here(spec.plan.num_nodes or 1, dry_run)
    try:
        lock.acquire()  # the first write into the directory: nothing before it may change a live run
        if overwrite and not resume and out.is_dir():
            clear_run_artifacts(out)
        cmd = write_run_dir(out, spec, est, hw, hw_note)
    except OSError as err:
        refused = storage_error(err, out)
        if refused is None:
            raise
        raise refused from None
    m = est.memory
    echo(f"data: {user_data.source}: {len(user_data)} {user_data.format} records")
    echo(f"hardware: {hw_note}")
    echo(f"estimate: {est.technique}, {m.device_total_bytes / GIB:.2f} GiB per GPU of {hw.memory_gib:.1f} "
         f"({'fits' if est.fits else 'DOES NOT FIT'}), {est.trainable_params:,} trainable parameters")
    for w in pre["warnings"]:
        echo(f"note: {w}")
    remote = remote_code_note(spec.model, trust_remote_code)
    if remote:
        echo(f"note: {remote}")
    echo(f"run directory: {out.resolve()}")
    if resume:
        cmd = cmd + ["--resume"]
    if trust_remote_code:
        cmd = cmd + [REMOTE_CODE_FLAG]
    nodes = spec.plan.num_nodes or 1
    if nodes > 1:
        from ftadvisor.multinode import SBATCH_FILE, node_commands

        echo(f"{nodes} nodes x {spec.plan.num_gpus // nodes} processes; start every node (a shared file system "
             "holds this directory):")
        for line in node_commands(nodes):
            echo("  " + line)
        echo(f"  or under Slurm: cd {out.resolve()} && sbatch {SBATCH_FILE}")
    else:
        echo("command: " + shlex.join(cmd))
    return out.resolve(), cmd


def _with_launch_nodes(spec: RunSpec, hw: HardwareProfile) -> RunSpec:
    """The spec with ``num_nodes`` filled in when the plan spans several machines (ftadvisor.multinode.
    launch_nodes), so that plan.yaml, the accelerate configs and every process agree on it."""
    from ftadvisor.multinode import launch_nodes

    nodes = launch_nodes(spec.plan, hw)
    if nodes <= 1 or spec.plan.num_nodes == nodes:
        return spec
    return spec.model_copy(update={"plan": spec.plan.model_copy(update={"num_nodes": nodes})})


def _refuse_multinode_here(nodes: int, dry_run: bool) -> None:
    if nodes > 1 and not dry_run:
        raise FtAdvisorError("num_nodes", f"the plan spans {nodes} nodes: write its run directory with --dry-run, then "
                             "start each node with its nodes/*.sh script or submit sbatch.sh under Slurm")


# --------------------------------------------------------------------------------------------
# The run itself: python -m ftadvisor.launch RUN_DIR
# --------------------------------------------------------------------------------------------


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _last_step_event(log_path: Path) -> dict[str, Any] | None:
    """The engine's most recent ``{"event": "step", ...}`` line in the JSON-lines log."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            tail = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "step":
            return ev
    return None


def _progress_callback(log_path: Path, rich_bar: bool, objective: str | None = None):
    """A trainer callback showing step, loss, the objective's two or three most telling signals
    (DPO: accuracy and margin, GRPO: reward mean, std and length; ftadvisor/train/signals.py), tokens/s
    and ETA: a rich progress bar on a terminal, one plain line per logged step otherwise, after a
    one-line legend. Loss, signals and tokens/s are the engine's own numbers (its step log is written
    by a callback that runs before this one)."""
    from rich.console import Console
    from transformers import TrainerCallback

    from ftadvisor.train import signals

    console = Console(stderr=True)
    live = rich_bar and console.is_terminal

    class Progress(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.task = None
            self.shown = -1

        def on_train_begin(self, args, state, control, **kw):
            legend = signals.LEGENDS.get(objective or "")
            if legend:
                console.print(f"{objective}: {legend}", highlight=False, markup=False, soft_wrap=True)
            if not live:
                console.print(f"training: {state.max_steps} steps (from step {state.global_step})", highlight=False)
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.bar = Bar(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[signal]}"),
                           TextColumn("{task.fields[tps]} tok/s"),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, loss="-", tps="-",
                                          signal="")

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            ev = _last_step_event(log_path)
            if ev is None or ev.get("step") != state.global_step or ev["step"] == self.shown:
                return
            self.shown = ev["step"]
            loss, tps, eta = ev.get("loss"), ev.get("tokens_per_s") or 0.0, ev.get("eta_s")
            sig = signals.progress_text(objective or "", ev.get("signal"))
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}", signal=sig)
            else:
                eta_s = f"{eta:.0f}s" if eta is not None else "-"
                sig = f"  {sig}" if sig else ""
                console.print(f"step {state.global_step}/{state.max_steps}  loss {loss:.4f}{sig}  {tps:,.0f} tok/s  "
                              f"ETA {eta_s}", highlight=False)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return Progress()


def _save_final(session, run_dir: Path, rank0: bool) -> Path:
    """The trained model/adapter in Hugging Face format under RUN_DIR/final.

    Sharded layouts (FSDP, ZeRO) must gather the weights on every process, which the trainer's
    ``save_model`` does (accelerate's state-dict gathering; only the main process writes). Otherwise
    rank 0 calls the engine's ``save``, which also writes our adapter/memory-expert modules.
    """
    from ftadvisor.train import engine

    # Written under a temporary name and renamed into place: final/ is either the previous one or
    # the whole new one, never a half-written mix (a full disk, a kill).
    final = run_dir / FINAL_DIR
    partial = run_dir / FINAL_PARTIAL
    if rank0 and partial.exists():
        shutil.rmtree(partial)
    session.trainer.accelerator.wait_for_everyone()
    sharded = session.plan.sharding in ("fsdp", "zero1", "zero2", "zero3") and _world_size() > 1
    fsdp = getattr(session.trainer.accelerator.state, "fsdp_plugin", None)
    if fsdp is not None:
        # checkpoints were sharded (SHARDED_STATE_DICT); final/ is one plain HF model: transformers'
        # Trainer.save_model gathers the full state dict only under FULL_STATE_DICT (trainer.py save_model;
        # accelerate's FullyShardedDataParallelPlugin.set_state_dict_type overrides it for this save)
        fsdp.set_state_dict_type("FULL_STATE_DICT")
    try:
        if sharded:
            session.trainer.save_model(str(partial / FINAL_DIR))
            if rank0:
                session.tokenizer.save_pretrained(partial / FINAL_DIR)
        elif rank0:
            engine.save(session, str(partial))  # writes partial/final
        session.trainer.accelerator.wait_for_everyone()
        if rank0:
            old = run_dir / FINAL_OLD
            if old.exists():
                shutil.rmtree(old)
            if final.exists():
                os.replace(final, old)
            os.replace(partial / FINAL_DIR, final)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        if rank0:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _merge_final(final: Path, run_dir: Path) -> str:
    """``run.merge``: final/'s adapter merged into its base, written under a temporary name and renamed
    to RUN_DIR/merged (as final/ is)."""
    from ftadvisor.train.engine import merge_adapter

    partial = run_dir / MERGED_PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _, note = merge_adapter(final, partial)
        shutil.rmtree(run_dir / MERGED_DIR, ignore_errors=True)
        os.replace(partial, run_dir / MERGED_DIR)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"merged: {run_dir / MERGED_DIR} ({note})", file=sys.stderr)
    return str(run_dir / MERGED_DIR)




def finished_run(run_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """``result.json`` of a run that has already reached the end its run settings ask for, else None.

    A run is finished once ``result.json`` is written (it is written last, after ``final/``). With
    ``max_steps`` it is finished when it ran at least that many steps, so raising ``--max-steps``
    continues it; with epochs, unless the epoch count was raised (or max_steps dropped) since.
    """
    try:
        res = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or not isinstance(res.get("steps"), int) or not (run_dir / FINAL_DIR).is_dir():
        return None
    if spec.run.max_steps is not None:
        return res if res["steps"] >= spec.run.max_steps else None
    if res.get("max_steps") is not None:
        return None
    return res if float(res.get("num_epochs", spec.run.num_epochs)) >= spec.run.num_epochs else None


def _check_distributed(session, plan: TrainingPlan) -> None:
    """The layout accelerate actually set up must be the planned one (no silent fallback)."""
    dist = str(session.trainer.accelerator.distributed_type).split(".")[-1]
    want = {"fsdp": ("FSDP",), "zero1": ("DEEPSPEED",), "zero2": ("DEEPSPEED",), "zero3": ("DEEPSPEED",)}.get(plan.sharding)
    if want is None and _world_size() > 1:
        want = ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_HPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_SDAA")
    if want is not None and dist not in want:
        raise FtAdvisorError("sharding", f"the plan asks for {plan.sharding} over {_world_size()} processes, but "
                             f"accelerate set up {dist}; run through command.sh (accelerate launch with accelerate.yaml)")


def _environment(session, spec: RunSpec, hw_note: str) -> dict[str, Any]:
    import platform
    from importlib import metadata

    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "hardware_detection": hw_note,
                           "processes": _world_size(), "device": session.device}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    if session.device.startswith("cuda"):
        import torch

        env["device_name"] = torch.cuda.get_device_name(torch.cuda.current_device())
        env["cuda"] = torch.version.cuda
    try:
        import resource

        # ru_maxrss is KiB on Linux (getrusage(2))
        env["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        pass
    return env


def _measurement(result, session) -> dict[str, Any]:
    m: dict[str, Any] = {
        "backend": "cuda" if session.device.startswith("cuda") else "cpu",
        "peak_allocated_bytes": result.peak_allocated_bytes if result else None,
        "peak_reserved_bytes": result.peak_reserved_bytes if result else None,
        "device_total_bytes": None,
        # seconds of each optimizer step (the first includes warm-up: compilation, allocator growth)
        "step_seconds": list(result.step_seconds) if result else [],
        "tokens_per_second": result.tokens_per_s if result else None,
        "method": "torch.cuda.max_memory_allocated/reserved after reset_peak_memory_stats (the engine)",
    }
    if session.device.startswith("cuda"):
        import torch

        # what nvidia-smi would show for device 0 now: the allocator keeps its reserved blocks after
        # training, so this is the reserved peak plus the CUDA context and library workspaces
        free, total = torch.cuda.mem_get_info(torch.cuda.current_device())
        m["device_total_bytes"] = total - free
    else:
        m["method"] = "cpu: no device allocator; only throughput is measured"
    return m


def _record(spec: RunSpec, pre: dict[str, Any], session, result, status: str, error: str | None, wall: float,
            started: str) -> Path | None:
    """Append this run to the calibration results (``ftadvisor.calibration.store``): ``run.results_root``
    or the user's ``<runs folder>/calibration`` (ftadvisor.runs), never the source checkout."""
    from ftadvisor.calibration.store import append_result
    from ftadvisor.runs import launch_results_root

    est: Estimate = pre["estimate"]
    hw: HardwareProfile = pre["hardware"]
    root = Path(spec.run.results_root) if spec.run.results_root else launch_results_root()
    cfg_model: dict[str, Any] = {"ref": spec.model}
    try:
        cfg_model["config"] = dict(resolve_model_profile(spec.model).config)
    except FtAdvisorError:
        pass
    record = {
        "case_id": f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        "label": f"{est.technique} {est.model_id} ({spec.data})",
        "status": status,
        "source": "launch",
        "model": cfg_model,
        "plan": spec.plan.model_dump(mode="json"),
        "hardware": hw.id,
        "backend": "cuda" if session is not None and session.device.startswith("cuda") else "cpu",
        "prediction": est.model_dump(mode="json"),
        "measurement": _measurement(result, session) if session is not None else None,
        "environment": _environment(session, spec, pre["hardware_note"]) if session is not None else {},
        "error": error,
        "started_at": started,
        "wall_s": wall,
    }
    return append_result(root, hw.id, record)


def _resolve_ds_config_env(run_dir: Path) -> None:
    """accelerate.yaml names ds_config.json relative to the run directory (portable); accelerate hands
    the name on as ACCELERATE_DEEPSPEED_CONFIG_FILE, read in this process from its working directory.
    Make it the run directory's file whatever directory the launcher was started from."""
    key = "ACCELERATE_DEEPSPEED_CONFIG_FILE"
    name = os.environ.get(key)
    if name and not os.path.isabs(name) and not os.path.isfile(name) and (run_dir / name).is_file():
        os.environ[key] = str(run_dir / name)


def _set_up_process_device(spec: RunSpec, run_dir: Path) -> None:
    """Point this process at its backend: gloo for CPU multi-process runs, its own GPU for each rank."""
    if _world_size() > 1:
        import torch

        if spec.run.device == "cpu" or not torch.cuda.is_available():
            # several processes without CUDA: accelerate uses gloo only when told the run is on the CPU
            # (accelerate/state.py _prepare_backend; transformers/training_args.py reads the same flag)
            os.environ["ACCELERATE_USE_CPU"] = "true"
    _resolve_ds_config_env(run_dir)
    if os.environ.get("LOCAL_RANK") is not None and spec.run.device != "cpu":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # so each rank queries (and trains on) its own GPU


def _check_resume_checkpoint(ckpt: Path, rank0: bool) -> None:
    """Require a complete checkpoint in ``ckpt`` to resume from, noting the incomplete ones skipped."""
    from ftadvisor.train.engine import checkpoint_dirs

    complete, incomplete = checkpoint_dirs(ckpt)
    if rank0:
        for p in incomplete:
            print(f"note: skipping {p.name}: its save never finished (no completion marker)", file=sys.stderr)
    if not complete:
        raise FtAdvisorError("--resume", f"no complete checkpoint in {ckpt} to resume from (set save_steps to "
                             "write some)")
    if rank0:
        print(f"resuming from {complete[-1].name}", file=sys.stderr)


def _train_job(spec: RunSpec, pre: dict[str, Any], ckpt: Path, log_path: Path, rank0: bool, resume: bool,
               trust_remote_code: bool):
    """The engine's TrainJob for this run directory's spec and preflight data."""
    from ftadvisor.train.engine import TrainJob

    return TrainJob(
        model=spec.model, plan=spec.plan, data=pre["data"].records, random_init=spec.run.random_init,
        output_dir=str(ckpt), max_steps=spec.run.max_steps, num_epochs=spec.run.num_epochs,
        learning_rate=spec.run.learning_rate, seed=spec.run.seed, log_path=str(log_path) if rank0 else None,
        save_steps=spec.run.save_steps, resume=resume, trust_remote_code=trust_remote_code,
        device=spec.run.device, reward=spec.run.reward, save_final=False,
    )


def _train_and_save(job, spec: RunSpec, pre: dict[str, Any], run_dir: Path, log_path: Path, progress: bool,
                    rank0: bool, started: str, t0: float):
    """Build, train and save ``final/``; returns (session, result, final dir), recording a failed run."""
    from ftadvisor.train.engine import build, quiet_known_warnings, run

    quiet_known_warnings()  # before transformers.trainer_utils imports peft, which imports bitsandbytes
    session = result = None
    try:
        from transformers import set_seed

        # Seed python, numpy and torch before the model is built, so that new trainable weights (LoRA's
        # A matrices, adapters, memory experts) start the same way in every run of this directory:
        # HF Trainer seeds only when it is created, after the engine has applied the technique.
        set_seed(spec.run.seed)
        session = build(job)
        _check_distributed(session, spec.plan)
        callbacks = [_progress_callback(log_path, progress, session.technique.objective.name)] if rank0 else []
        result = run(session, callbacks=callbacks)
        final = _save_final(session, run_dir, rank0)
    except Exception as err:
        if rank0 and spec.run.record_calibration and not isinstance(err, FtAdvisorError) and storage_error(err) is None:
            _record_failed_run(spec, pre, session, result, err, t0, started)
        raise
    return session, result, final


def _record_failed_run(spec: RunSpec, pre: dict[str, Any], session, result, err: Exception, t0: float,
                       started: str) -> None:
    """Append the failed run (oom or crash) to the calibration results, noting a failure to do so."""
    oom = "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError"
    try:
        _record(spec, pre, session, result, "oom" if oom else "crash", f"{type(err).__name__}: {err}"[-2000:],
                time.perf_counter() - t0, started)
    except Exception as rec_err:  # noqa: BLE001 - never hide the training error behind this one
        print(f"note: could not record the failed run: {rec_err}", file=sys.stderr)


def _run_summary(spec: RunSpec, est: Estimate, session, result, final: Path, resume: bool) -> dict[str, Any]:
    """The ``result.json`` contents: what the run measured next to what was predicted."""
    return {
        "steps": result.steps, "losses": result.losses, "tokens_seen": result.tokens_seen, "wall_s": result.wall_s,
        "tokens_per_s": result.tokens_per_s, "step_seconds": result.step_seconds,
        "peak_allocated_bytes": result.peak_allocated_bytes, "peak_reserved_bytes": result.peak_reserved_bytes,
        "trainable_params": session.trainable_params, "total_params": session.total_params,
        "predicted_trainable_params": est.trainable_params,
        "predicted_peak_allocated_bytes": est.memory.peak_allocated_bytes,
        "final_dir": str(final), "processes": _world_size(), "resumed": resume, "device": session.device,
        # the run settings it finished under (finished_run compares a later --resume with them)
        "max_steps": spec.run.max_steps, "num_epochs": spec.run.num_epochs,
        "world_size": session.trainer.accelerator.num_processes,
        "distributed_type": str(session.trainer.accelerator.distributed_type).split(".")[-1],
    }


def _print_done(result, est: Estimate, final: Path) -> None:
    """Print the end-of-run lines: steps and loss, measured against predicted peak, where it saved."""
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (None, None)
    print(f"done: {result.steps} steps, loss {first} -> {last}, {result.tokens_per_s:,.0f} tokens/s", file=sys.stderr)
    if result.peak_allocated_bytes is not None:
        print(f"peak allocated {result.peak_allocated_bytes / GIB:.2f} GiB "
              f"(predicted {est.memory.peak_allocated_bytes / GIB:.2f} GiB)", file=sys.stderr)
    print(f"saved: {final}", file=sys.stderr)


def execute(run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
            trust_remote_code: bool = False) -> dict[str, Any]:
    """Train the run in ``run_dir`` with the shared engine (once per process under accelerate).

    Rank 0 logs to ``train_log.jsonl`` (the engine's JSON lines), shows progress, saves
    ``final/``, writes ``result.json`` and appends the calibration record.
    """
    from ftadvisor.calibration.store import now_iso

    run_dir = Path(run_dir).resolve()
    spec = load_spec(run_dir)
    rank0 = _rank() == 0
    done = finished_run(run_dir, spec) if resume else None
    if done is not None and rank0 and spec.run.merge and done.get("merge_error"):
        # Training finished but its merge failed (result.json says so): --resume retries the merge only.
        done = {k: v for k, v in done.items() if k != "merge_error"}
        try:
            done["merged_dir"] = _merge_final(run_dir / FINAL_DIR, run_dir)
        except Exception as err:  # noqa: BLE001 - result.json keeps the first error; say this one in one line
            raise FtAdvisorError("merge", f"merging {run_dir / FINAL_DIR} failed again ({type(err).__name__}: "
                                 f"{err})") from None
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(done, indent=2) + "\n")
        return done
    if done is not None:
        # Nothing to resume: training again would run one more step and overwrite final/.
        if rank0:
            print(f"note: the run in {run_dir} already finished ({done['steps']} steps; the model is in "
                  f"{run_dir / FINAL_DIR}); nothing to resume. Raise --max-steps to train further.", file=sys.stderr)
        return {**done, "already_finished": True}
    _set_up_process_device(spec, run_dir)
    pre = preflight(spec, in_process=True, trust_remote_code=trust_remote_code)
    if rank0:
        for w in pre["warnings"]:
            print(f"note: {w}", file=sys.stderr)
    ckpt = run_dir / CHECKPOINT_DIR
    if resume:
        _check_resume_checkpoint(ckpt, rank0)
    log_path = run_dir / LOG_FILE
    job = _train_job(spec, pre, ckpt, log_path, rank0, resume, trust_remote_code)
    started, t0 = now_iso(), time.perf_counter()
    session, result, final = _train_and_save(job, spec, pre, run_dir, log_path, progress, rank0, started, t0)
    summary: dict[str, Any] = {}
    if rank0:
        est: Estimate = pre["estimate"]
        summary = _run_summary(spec, est, session, result, final, resume)
        merge_error = None
        if spec.run.merge:
            try:
                summary["merged_dir"] = _merge_final(final, run_dir)
            except Exception as err:  # noqa: BLE001 - training succeeded: record it, then report the merge
                from ftadvisor.errors import one_line

                merge_error = err
                summary["merge_error"] = one_line(f"{type(err).__name__}: {err}")[-2000:]
        if spec.run.record_calibration:
            path = _record(spec, pre, session, result, "ok", None, time.perf_counter() - t0, started)
            summary["calibration_record"] = str(path)
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(summary, indent=2) + "\n")  # written last: "finished"
        _print_done(result, est, final)
        if merge_error is not None:
            raise FtAdvisorError("merge", f"training finished and {final} is saved, but merging failed "
                                 f"({summary['merge_error']}); result.json records both, and --resume "
                                 "retries the merge") from None
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ftadvisor.launch", description="Train the run in RUN_DIR.")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in RUN_DIR/checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    parser.add_argument(REMOTE_CODE_FLAG, dest="trust_remote_code", action="store_true",
                        help="let the model repository run its own Python code")
    args = parser.parse_args(argv)
    supervised = _bind_to_supervisor()
    restore = _exit_on_sigterm()
    lock = None
    try:
        if _rank() == 0:  # one lock per run: the other ranks train under rank 0's
            lock = RunLock(args.run_dir).acquire(create=False)
        execute(args.run_dir, resume=args.resume, progress=not args.no_progress,
                trust_remote_code=args.trust_remote_code)
    except FtAdvisorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not supervised:  # under ftadvisor launch, the launcher says it
            print(f"interrupted; continue with: python -m ftadvisor.launch {args.run_dir} --resume", file=sys.stderr)
        return 130
    except Exception as err:
        refused = storage_error(err, args.run_dir)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
        _close_process_group()
        restore()
    return 0


def _exit_on_sigterm():
    """Turn the first SIGTERM into SystemExit(143), so that a stopped run still cleans up (a partial
    checkpoint removed, the lock released); returns what undoes it. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    fired = []

    def handler(signum, frame):
        if fired:
            return  # already on the way out: let the clean-up finish
        fired.append(signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _bind_to_supervisor() -> bool:
    """Under ``ftadvisor launch`` (``FTADVISOR_SUPERVISOR_PID`` set), end this process when that
    launcher ends, however it ends (SIGKILL included). Returns whether it is supervised.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (prctl(2); option 1) has the kernel signal us when
    our parent exits (the launcher, or for the ranks of a multi-process run accelerate's launcher).
    A watchdog thread also polls the ftadvisor launcher's pid twice a second -- for other
    platforms, for ranks whose parent is accelerate's launcher (which exits once they have), and
    for a launcher that died before prctl ran -- and, once it is gone, sends SIGTERM and after
    15 s exits outright. A run started by hand (no variable) keeps running when its shell goes
    away (nohup)."""
    sup = os.environ.get(SUPERVISOR_ENV, "")
    if not sup.isdigit():
        return False
    sup_pid = int(sup)
    sup_start = _start_time(sup_pid)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog remains
            pass

    def watch():
        while _pid_alive(sup_pid, sup_start):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(15)
        os._exit(143)  # the main thread did not get out in time (stuck in a long native call)

    threading.Thread(target=watch, name="ftadvisor-supervisor-watch", daemon=True).start()
    return True


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: a gloo group left to the exit
    handlers can abort a rank ("terminate called without an active exception", SIGABRT) after a
    run that succeeded."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
