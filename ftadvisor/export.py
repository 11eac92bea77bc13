"""``ftadvisor export``: hand a plan over to the user's own training framework.

    ftadvisor export examples/plans/qlora-llama-3.1-8b-rtx4090.yaml --to axolotl \\
        --model llama-3.1-8b --data examples/data/chat.jsonl --out exports/qlora-8b
    from ftadvisor.export import export_plan
    result = export_plan(spec, "trl", Path("exports/x"))   # ExportResult(framework, files, command, notes)

For each framework this writes *its own* config file(s) and the command that runs them, from the
same plan ``ftadvisor launch`` reads (a plan file or a :class:`~ftadvisor.launch.RunSpec`): model,
technique, LoRA settings, base quantisation, micro-batch and accumulation, sequence length,
checkpointing, learning rate, epochs or steps, sharding (a DeepSpeed JSON or FSDP settings, as the
framework expects them) and the data with the framework's dataset type. What a framework cannot
run is one error naming the framework and what it supports; where a framework has a near
equivalent only, the result's notes say what differs.

Each mapping cites the framework file (and version) its keys come from. Pure Python: yaml and json,
no torch; files are written under a temporary name and renamed into place, and existing files are
never replaced unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ftadvisor.errors import FtAdvisorError
from ftadvisor.validate import write_text_atomic

FRAMEWORKS: tuple[str, ...] = ("axolotl", "llama-factory", "torchtune", "litgpt", "trl")

COMMAND_FILE = "run.sh"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_plan` wrote: the framework, the files (in writing order, run.sh last), the
    command that runs the config, and notes on what the framework does differently from the plan."""

    framework: str
    files: list[Path]
    command: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# What every exporter reads
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    spec: Any  # ftadvisor.launch.RunSpec
    framework: str
    out: Path
    model: str  # hub id or local path, as the framework loads it
    data_format: str  # a name of ftadvisor.datasets.FORMATS
    data_local: bool
    files: dict[str, str] = field(default_factory=dict)  # file name -> text, in writing order
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self):
        return self.spec.plan

    @property
    def run(self):
        return self.spec.run

    @property
    def tech(self):
        from ftadvisor.techniques import parse_technique

        return parse_technique(self.plan.technique)

    @property
    def objective(self) -> str:
        return self.tech.objective.name

    @property
    def method(self) -> str:
        return self.tech.method.name

    @property
    def lora(self) -> bool:
        return bool(self.tech.method.lora)

    @property
    def quant(self) -> str:
        """Storage of the frozen base: none, nf4 or int8 (the plan's, else the method's default)."""
        q = self.plan.quantization
        return q if q is not None else self.tech.method.default_quantization

    @property
    def learning_rate(self) -> float:
        # the launch engine's rule when the run gives none (ftadvisor/train/engine.py _common_args):
        # trl's default rate for the objective, 10x for adapter methods
        if self.run.learning_rate is not None:
            return float(self.run.learning_rate)
        return self.tech.objective.default_learning_rate * (10 if self.tech.method.peft else 1)

    @property
    def nodes(self) -> int:
        return self.plan.num_nodes or 1

    @property
    def gpus_per_node(self) -> int:
        return self.plan.num_gpus // self.nodes

    def path(self, name: str) -> Path:
        """A file of the export, relative: run.sh runs from the export folder, so it can be copied."""
        return Path(name)


def _unsupported(framework: str, what: str, supported: str) -> FtAdvisorError:
    return FtAdvisorError("--to", f"{framework} cannot run {what}; {framework} supports {supported}")


def _require(job: _Job, methods: tuple[str, ...], objectives: tuple[str, ...], quants: tuple[str, ...]) -> None:
    """One error naming the framework and what it supports when the plan's technique is not among it."""
    fw = job.framework
    supported = (f"the methods {', '.join(methods)} with the objectives {', '.join(objectives)}"
                 f" (base storage: {', '.join(quants)})")
    if job.method not in methods or job.objective not in objectives:
        raise _unsupported(fw, f"technique {job.plan.technique}", supported)
    if job.quant not in quants:
        raise _unsupported(fw, f"a {job.quant} base", supported)


def _sharding_files(job: _Job) -> tuple[str | None, str | None]:
    """Write ds_config.json for ZeRO plans or accelerate_fsdp.yaml for FSDP plans (HF-Trainer based
    frameworks read both); returns (deepspeed path, accelerate config path)."""
    from ftadvisor.launch import accelerate_config, deepspeed_config

    plan = job.plan
    if plan.sharding in ("zero1", "zero2", "zero3"):
        if plan.offload_device == "nvme":
            job.notes.append("offload_device nvme: set offload_*.nvme_path in ds_config.json to a local NVMe folder")
        # the same "auto"-valued config the launcher writes (transformers integrations/deepspeed.py fills it)
        job.files["ds_config.json"] = json.dumps(deepspeed_config(plan), indent=2) + "\n"
        return str(job.path("ds_config.json")), None
    if plan.sharding == "fsdp":
        cfg = accelerate_config(plan)
        job.files["accelerate_fsdp.yaml"] = yaml.safe_dump(cfg, sort_keys=False)
        return None, str(job.path("accelerate_fsdp.yaml"))
    return None, None


def _data_ref(job: _Job) -> tuple[str, str | None]:
    """(loader name, data_files) for a local file in ``datasets.load_dataset`` terms, or (hub id, split)."""
    data = job.spec.data
    if job.data_local:
        suffix = Path(data).suffix.lower()
        kind = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
                ".pq": "parquet"}.get(suffix, "json")
        return kind, data
    name, _, split = data.partition(":")
    return name, split or None


def _convert(job: _Job, name: str, fn: Callable[[dict], dict], why: str) -> str:
    """Write the data converted record by record into ``name`` (JSON lines) when the framework's
    dataset type needs other field names; returns its path."""
    if not job.data_local:
        raise FtAdvisorError("--data", f"{job.framework} needs {why}; convert the hub dataset to a local "
                             f"file first (ftadvisor converts local files only)")
    from ftadvisor.datasets import load_data

    records = load_data(job.spec.data).records
    job.files[name] = "".join(json.dumps(fn(r), ensure_ascii=False) + "\n" for r in records)
    job.notes.append(f"data converted for {job.framework} ({why}): {name}")
    return str(job.path(name))


def _targets(job: _Job) -> list[str] | None:
    """The LoRA target module names, or None for all linear layers."""
    t = job.plan.lora_targets
    if t == "all-linear":
        return None
    return [t] if isinstance(t, str) else list(t)


def _num(x: float) -> int | float:
    """A whole number as an int (the frameworks type lora_alpha and the like as int)."""
    return int(x) if float(x).is_integer() else float(x)


def _steps_or_epochs(job: _Job) -> tuple[int | None, float]:
    return job.run.max_steps, float(job.run.num_epochs)


def _script(lines: list[str], job: _Job) -> str:
    head = ["#!/usr/bin/env bash", f"# Written by ftadvisor export --to {job.framework}: runs the config next to this file.",
            "set -euo pipefail", 'cd "$(dirname "$0")"']
    if job.nodes > 1:  # NODE_RANK, MAIN_ADDR, MAIN_PORT: the convention of every multi-node script (multinode.py)
        from ftadvisor.multinode import node_env_lines

        head += node_env_lines(job.nodes)
    return "\n".join(head + lines) + "\n"


# --------------------------------------------------------------------------------------------
# trl (trl 1.12: trl/scripts/{sft,dpo,kto,grpo}.py, TrlParser in trl/scripts/utils.py)
# --------------------------------------------------------------------------------------------

_HF_OPTIM = {
    # transformers training_args.OptimizerNames, as the launch engine maps them (train/engine.py _optim_name)
    "adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd", "adafactor": "adafactor",
}


def _trl(job: _Job) -> str:
    # trl's CLI (trl/cli/commands/__init__.py) runs sft, dpo, kto and grpo; ORPO lives in trl.experimental
    _require(job, ("full", "lora", "qlora", "dora"), ("sft", "dpo", "kto", "grpo"),
             ("none", "nf4", "int8"))
    plan, run = job.plan, job.run
    max_steps, epochs = _steps_or_epochs(job)
    cfg: dict[str, Any] = {
        # ModelConfig (trl/trainer/model_config.py); loaded in the compute dtype, as the launch engine
        # loads it (ftadvisor/train/engine.py _compute_dtype)
        "model_name_or_path": job.model,
        "dtype": "bfloat16" if plan.precision.startswith("bf16") else "float16" if plan.precision == "fp16-mixed"
        else "float32",
        "attn_implementation": {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}[plan.attention],
    }
    if job.lora:
        targets = _targets(job)
        cfg.update({"use_peft": True, "lora_r": plan.lora_r, "lora_alpha": _num(plan.lora_alpha),
                    "lora_dropout": plan.lora_dropout, "lora_target_modules": targets or ["all-linear"],
                    "use_dora": job.method == "dora"})
    if job.quant == "nf4":
        cfg.update({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": plan.double_quant})
    elif job.quant == "int8":
        cfg["load_in_8bit"] = True
    # TrainingArguments and the objective's config (SFTConfig / DPOConfig / KTOConfig / GRPOConfig)
    cfg.update({
        "output_dir": str(job.path("output")),
        "per_device_train_batch_size": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "learning_rate": job.learning_rate,
        "num_train_epochs": epochs,
        "max_steps": max_steps if max_steps is not None else -1,
        # the name older transformers know too (transformers 5 aliases it to activation_checkpointing)
        "gradient_checkpointing": plan.gradient_checkpointing,
        "bf16": plan.precision == "bf16-mixed",
        "fp16": plan.precision == "fp16-mixed",
        "optim": _HF_OPTIM[plan.optimizer],
        "max_grad_norm": plan.max_grad_norm or 0.0,
        "seed": run.seed,
        "logging_steps": 1,
        "report_to": "none",
    })
    if run.save_steps:
        cfg.update({"save_strategy": "steps", "save_steps": run.save_steps})
    obj = job.objective
    if obj == "sft":
        cfg.update({"max_length": plan.seq_len, "packing": plan.packing,
                    "loss_type": "chunked_nll" if plan.sft_chunked_loss else "nll"})
    elif obj == "dpo":
        cfg.update({"max_length": plan.seq_len, "precompute_ref_log_probs": plan.dpo_precompute_ref})
    elif obj == "kto":
        cfg["max_length"] = plan.seq_len
    elif obj == "grpo":
        gen_batch = plan.micro_batch_size * plan.gradient_accumulation_steps
        if gen_batch % plan.grpo_num_generations:  # trl GRPOConfig.__post_init__ checks the same
            raise FtAdvisorError("grpo_num_generations", f"trl needs micro_batch_size x gradient_accumulation_steps "
                                 f"({gen_batch}) to be a multiple of the group size {plan.grpo_num_generations}")
        cfg.update({"num_generations": plan.grpo_num_generations, "max_completion_length": plan.rl_max_new_tokens,
                    "beta": plan.grpo_beta})
        _trl_rewards(job, cfg)
    ds, acc = _sharding_files(job)
    if ds:
        cfg["deepspeed"] = ds
    # the data: DatasetMixtureConfig (trl/scripts/utils.py) for local files, dataset_name for hub ids
    formats = {"sft": ("messages", "prompt_completion", "text", "qa"), "dpo": ("preference",),
               "kto": ("unpaired_preference", "preference"), "grpo": ("prompt", "qa", "prompt_completion")}[obj]
    if job.data_format not in formats:
        raise FtAdvisorError("--data", f"trl {obj} takes {', '.join(formats)} data, got {job.data_format}")
    if job.data_format == "qa":
        conv = (lambda r: {"prompt": r["question"], "completion": r["answer"]}) if obj == "sft" else \
            (lambda r: {"prompt": r["question"], "answer": r["answer"]})
        path = _convert(job, "data.jsonl", conv, "question/answer records as prompt/completion")
        cfg["datasets"] = [{"path": "json", "data_files": path, "split": "train"}]
    else:
        kind, files = _data_ref(job)
        if job.data_local:
            cfg["datasets"] = [{"path": kind, "data_files": files, "split": "train"}]
        else:
            cfg["dataset_name"] = kind
            if files:
                cfg["dataset_train_split"] = files
    name = f"trl_{obj}.yaml"
    job.files[name] = f"# trl {obj} --config {name}  (keys: trl 1.12 ScriptArguments, {_TRL_CFG[obj]}, ModelConfig)\n" \
        + yaml.safe_dump(cfg, sort_keys=False)
    launch = ["trl", obj, "--config", name]
    if acc or plan.num_gpus > 1:
        # trl's CLI passes --accelerate_config on to accelerate launch (trl/cli/accelerate_config.py)
        launch += ["--accelerate_config", acc or "multi_gpu", "--num_processes", str(plan.num_gpus)]
        if job.nodes > 1:
            launch += ["--num_machines", str(job.nodes)]
    return shlex.join(launch) + (_ACCELERATE_NODE if job.nodes > 1 else "")


_ACCELERATE_NODE = ' --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"'
"""accelerate launch's per-node arguments (accelerate/commands/launch.py), from multinode's variables."""


_TRL_CFG = {"sft": "SFTConfig", "dpo": "DPOConfig", "kto": "KTOConfig", "grpo": "GRPOConfig"}
BUILTIN_REWARDS = ("exact_match", "length", "format")
"""The launcher's reward functions, ``reward_<name>`` in ftadvisor/train/techniques.py (REWARDS there),
with trl's reward signature (completions, **columns) -> list of floats."""


def _trl_rewards(job: _Job, cfg: dict[str, Any]) -> None:
    """GRPO rewards: the launcher's built-in ones by import path (trl/scripts/grpo.py imports a dotted
    name), or a reward-model directory."""
    from ftadvisor import validate

    reward = job.run.reward
    if reward and validate.exists(reward):
        cfg["reward_model_name_or_path"] = reward
        return
    if not reward:  # the engine's default (ftadvisor/train/techniques.py resolve_rewards)
        reward = "exact_match" if job.data_format == "qa" or _has_field(job, "answer") else "length"
    names = [n.strip() for n in reward.split(",") if n.strip()]
    bad = [n for n in names if n not in BUILTIN_REWARDS]
    if bad:
        raise FtAdvisorError("reward", f"unknown reward {bad[0]!r} (a built-in name or a reward-model directory)",
                             BUILTIN_REWARDS)
    cfg["reward_funcs"] = [f"ftadvisor.train.techniques.reward_{n}" for n in names]
    job.notes.append("the GRPO rewards are ftadvisor's (" + ", ".join(names) + "): install ftadvisor where trl runs")


def _has_field(job: _Job, name: str) -> bool:
    if not job.data_local:
        return False
    from ftadvisor.datasets import load_data

    return any(name in r for r in load_data(job.spec.data, limit=20).records)


# --------------------------------------------------------------------------------------------
# axolotl (v0.18.0, commit 067b021c: src/axolotl/utils/schemas/{config,peft,training,datasets,trl}.py)
# --------------------------------------------------------------------------------------------


def _axolotl(job: _Job) -> str:
    # rl: dpo/orpo/kto/grpo are axolotl.utils.schemas.enums.RLType; GRPO there needs a Python reward
    # and dataset transform module, which ftadvisor does not write
    _require(job, ("full", "lora", "qlora", "dora"), ("sft", "dpo", "kto"), ("none", "nf4", "int8"))
    plan, run = job.plan, job.run
    max_steps, epochs = _steps_or_epochs(job)
    cfg: dict[str, Any] = {"base_model": job.model}  # schemas/model.py ModelInputConfig
    if job.objective != "sft":
        cfg["rl"] = job.objective  # schemas/config.py AxolotlInputConfig.rl
    if job.lora:
        # schemas/peft.py LoraConfig: adapter lora|qlora; qlora needs load_in_4bit
        cfg.update({"adapter": "qlora" if job.quant == "nf4" else "lora", "lora_r": plan.lora_r,
                    "lora_alpha": _num(plan.lora_alpha), "lora_dropout": plan.lora_dropout})
        targets = _targets(job)
        if targets is None:
            cfg["lora_target_linear"] = True
        else:
            cfg["lora_target_modules"] = targets
        if job.method == "dora":
            cfg["peft_use_dora"] = True
    if job.quant == "nf4":
        cfg["load_in_4bit"] = True
        if not plan.double_quant:
            cfg["bnb_config_kwargs"] = {"bnb_4bit_use_double_quant": False}
    elif job.quant == "int8":
        cfg["load_in_8bit"] = True
    cfg.update({
        "sequence_len": plan.seq_len,
        "sample_packing": plan.packing,
        "micro_batch_size": plan.micro_batch_size,  # schemas/training.py HyperparametersConfig
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "learning_rate": job.learning_rate,
        "optimizer": _HF_OPTIM[plan.optimizer],
        "gradient_checkpointing": plan.gradient_checkpointing,
        "bf16": plan.precision.startswith("bf16"),
        "fp16": plan.precision == "fp16-mixed",
        "output_dir": str(job.path("output")),
        "seed": run.seed,
        "logging_steps": 1,
    })
    if plan.precision == "bf16-true":
        cfg["bfloat16"] = True  # the weights themselves in bf16, no fp32 master copy
    if plan.max_grad_norm:
        cfg["max_grad_norm"] = plan.max_grad_norm
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    else:
        cfg["num_epochs"] = epochs
    if run.save_steps:
        cfg["save_steps"] = run.save_steps
    cfg["flash_attention" if plan.attention == "flash" else "sdp_attention" if plan.attention == "sdpa"
        else "eager_attention"] = True
    ds, _ = _sharding_files(job)
    if ds:
        cfg["deepspeed"] = ds
    elif plan.sharding == "fsdp":
        job.files.pop("accelerate_fsdp.yaml", None)  # axolotl takes FSDP settings in its own config
        cfg["fsdp_version"] = 2  # schemas/fsdp.py FSDPConfig
        cfg["fsdp_config"] = {"offload_params": bool(plan.cpu_offload), "reshard_after_forward": True,
                              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
                              "cpu_ram_efficient_loading": True}
    cfg["datasets"] = [_axolotl_dataset(job)]
    job.files["axolotl.yaml"] = ("# axolotl train axolotl.yaml  (keys: axolotl v0.18.0 "
                                 "src/axolotl/utils/schemas/config.py AxolotlInputConfig)\n"
                                 + yaml.safe_dump(cfg, sort_keys=False))
    cmd = "axolotl train axolotl.yaml"
    if job.nodes > 1:  # docs/multi-node.qmd: launcher arguments after "--", c10d rendezvous on the first node
        cmd += (f" --launcher torchrun -- --nnodes {job.nodes} --nproc_per_node {job.gpus_per_node}"
                ' --rdzv_id ftadvisor --rdzv_backend c10d --rdzv_endpoint "$MAIN_ADDR:$MAIN_PORT"')
    return cmd


def _axolotl_dataset(job: _Job) -> dict[str, Any]:
    """schemas/datasets.py SFTDataset / DPODataset / KTODataset for the data's format."""
    kind, files = _data_ref(job)
    entry: dict[str, Any] = {"path": kind, "data_files": files} if job.data_local else {"path": kind}
    if not job.data_local and files:
        entry["split"] = files
    else:
        entry["split"] = "train"
    fmt, obj = job.data_format, job.objective
    if obj == "sft" and fmt == "messages":
        # prompt_strategies/chat_template.py: the model's own chat template, OpenAI role/content messages
        entry.update({"type": "chat_template", "field_messages": "messages"})
    elif obj == "sft" and fmt in ("prompt_completion", "qa"):
        # UserDefinedPrompterType: instruction -> output with no template around it
        src, dst = ("prompt", "completion") if fmt == "prompt_completion" else ("question", "answer")
        entry["type"] = {"field_instruction": src, "field_output": dst, "format": "{instruction}",
                         "no_input_format": "{instruction}"}
    elif obj == "sft" and fmt == "text":
        entry.update({"type": "completion", "field": "text"})  # prompt_strategies/completion.py
    elif obj == "dpo" and fmt == "preference":
        # prompt_strategies/dpo/user_defined.py (a dict type selects user_defined.default: utils/data/rl.py)
        entry["type"] = {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected",
                         "prompt_format": "{prompt}", "chosen_format": "{chosen}", "rejected_format": "{rejected}"}
    elif obj == "kto" and fmt == "unpaired_preference":
        entry["type"] = {"field_prompt": "prompt", "field_completion": "completion", "field_label": "label",
                         "prompt_format": "{prompt}", "completion_format": "{completion}"}  # kto/user_defined.py
    else:
        raise FtAdvisorError("--data", f"axolotl {obj} does not take {fmt} data here "
                             "(sft: messages, prompt_completion, qa, text; dpo: preference; kto: unpaired_preference)")
    return entry


# --------------------------------------------------------------------------------------------
# LLaMA-Factory (v0.9.5, commit ff6d4d12: src/llamafactory/hparams/*.py, examples/train_lora/*.yaml)
# --------------------------------------------------------------------------------------------


def _llama_factory(job: _Job) -> str:
    # stage: pt/sft/rm/ppo/dpo/kto (hparams/finetuning_args.py); ORPO is pref_loss: orpo of the dpo stage
    _require(job, ("full", "lora", "qlora", "dora"), ("sft", "dpo", "orpo", "kto"),
             ("none", "nf4", "int8"))
    plan, run = job.plan, job.run
    max_steps, epochs = _steps_or_epochs(job)
    stage = {"sft": "pt" if job.data_format == "text" else "sft", "dpo": "dpo", "orpo": "dpo", "kto": "kto"}[job.objective]
    cfg: dict[str, Any] = {
        "model_name_or_path": job.model,  # hparams/model_args.py
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora" if job.lora else "full",
    }
    if job.lora:
        # hparams/finetuning_args.py LoraArguments: lora_target "all" = every linear layer
        targets = _targets(job)
        cfg.update({"lora_rank": plan.lora_r, "lora_alpha": _num(plan.lora_alpha), "lora_dropout": plan.lora_dropout,
                    "lora_target": "all" if targets is None else ",".join(targets)})
        if job.method == "dora":
            cfg["use_dora"] = True
    if job.quant in ("nf4", "int8"):
        # hparams/model_args.py QuantizationArguments (bitsandbytes on the fly)
        cfg.update({"quantization_bit": 4 if job.quant == "nf4" else 8, "quantization_method": "bnb"})
        if job.quant == "nf4":
            cfg.update({"quantization_type": "nf4", "double_quantization": plan.double_quant})
    if job.objective == "orpo":
        cfg["pref_loss"] = "orpo"
    elif job.objective == "dpo":
        cfg["pref_loss"] = "sigmoid"
    ds, acc = _sharding_files(job)
    info_name, info = _llama_factory_dataset(job)
    job.files["dataset_info.json"] = json.dumps(info, indent=2) + "\n"
    cfg.update({
        "dataset": info_name,  # hparams/data_args.py: an entry of dataset_info.json in dataset_dir
        "dataset_dir": ".",
        "cutoff_len": plan.seq_len,
        "packing": plan.packing,
        "output_dir": str(job.path("output")),
        "logging_steps": 1,
        "per_device_train_batch_size": plan.micro_batch_size,  # transformers Seq2SeqTrainingArguments
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "learning_rate": job.learning_rate,
        "num_train_epochs": epochs,
        "optim": _HF_OPTIM[plan.optimizer],
        "max_grad_norm": plan.max_grad_norm or 0.0,
        "bf16": plan.precision == "bf16-mixed",
        "fp16": plan.precision == "fp16-mixed",
        "seed": run.seed,
        "report_to": "none",
    })
    if plan.precision == "bf16-true":
        cfg["pure_bf16"] = True  # finetuning_args.py: train in pure bf16 (no AMP)
    if not plan.gradient_checkpointing:
        cfg["disable_gradient_checkpointing"] = True  # model_args.py: on unless disabled
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    if run.save_steps:
        cfg["save_steps"] = run.save_steps
    # model_args.py flash_attn: extras/constants.py AttentionFunction ("disabled" = eager attention)
    cfg["flash_attn"] = {"sdpa": "sdpa", "flash": "fa2", "eager": "disabled"}[plan.attention]
    if ds:
        cfg["deepspeed"] = ds
    job.notes.append("LLaMA-Factory's template is left unset: it parses the tokenizer's own chat template "
                     "(data/template.py get_template_and_fix_tokenizer); set template: for a base model")
    job.files["llamafactory.yaml"] = ("# llamafactory-cli train llamafactory.yaml  (keys: LLaMA-Factory v0.9.5 "
                                      "src/llamafactory/hparams)\n" + yaml.safe_dump(cfg, sort_keys=False))
    if acc:
        # FSDP through accelerate (LLaMA-Factory examples/accelerate/fsdp_config.yaml and examples/README.md)
        cmd = f"accelerate launch --config_file {shlex.quote(acc)} -m llamafactory.launcher llamafactory.yaml"
        if job.nodes > 1:
            cmd += _ACCELERATE_NODE
        return cmd
    env = ""
    if plan.num_gpus > 1:  # examples/README.md: torchrun for several GPUs and nodes
        env = "FORCE_TORCHRUN=1 "
        if job.nodes > 1:
            # LLaMA-Factory's launcher reads torchrun's names (src/llamafactory/cli.py): given from ours
            env += f'NNODES={job.nodes} NODE_RANK="$NODE_RANK" MASTER_ADDR="$MAIN_ADDR" MASTER_PORT="$MAIN_PORT" '
    return env + "llamafactory-cli train llamafactory.yaml"


def _llama_factory_dataset(job: _Job) -> tuple[str, dict[str, Any]]:
    """One dataset_info.json entry (data/README.md of LLaMA-Factory) for the data's format."""
    fmt, obj = job.data_format, job.objective
    kind, files = _data_ref(job)
    entry: dict[str, Any] = {"file_name": files} if job.data_local else {"hf_hub_url": kind}
    if not job.data_local and files:
        entry["split"] = files
    if fmt == "messages" and obj == "sft":
        # the "OpenAI format": sharegpt with role/content tags
        entry.update({"formatting": "sharegpt", "columns": {"messages": "messages"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant", "system_tag": "system"}})
    elif fmt in ("prompt_completion", "qa") and obj == "sft":
        src, dst = ("prompt", "completion") if fmt == "prompt_completion" else ("question", "answer")
        entry.update({"formatting": "alpaca", "columns": {"prompt": src, "response": dst}})
    elif fmt == "text" and obj == "sft":
        entry["columns"] = {"prompt": "text"}  # pre-training stage: the text column
    elif fmt == "preference" and obj in ("dpo", "orpo"):
        entry.update({"formatting": "alpaca", "ranking": True,
                      "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}})
    elif fmt == "unpaired_preference" and obj == "kto":
        entry.update({"formatting": "alpaca", "columns": {"prompt": "prompt", "response": "completion",
                                                          "kto_tag": "label"}})
    else:
        raise FtAdvisorError("--data", f"LLaMA-Factory {obj} does not take {fmt} data here (sft: messages, "
                             "prompt_completion, qa, text; dpo/orpo: preference; kto: unpaired_preference)")
    return "ftadvisor_data", {"ftadvisor_data": entry}


# --------------------------------------------------------------------------------------------
# torchtune (v0.6.1, commit a6290a5b: recipes/*.py, recipes/configs/llama3_1/8B_lora*.yaml, torchtune/models)
# --------------------------------------------------------------------------------------------

# (model_type, hidden_size, num_hidden_layers) -> (torchtune model package, builder size, tokenizer kind)
# from the builders in torchtune/models/{llama3_1,llama3_2,qwen2_5}/_model_builders.py (v0.6.1) and
# the architectures in profiles/models/*.yaml
_TORCHTUNE_MODELS: dict[tuple[str, int, int], tuple[str, str, str]] = {
    ("llama", 4096, 32): ("llama3_1", "8b", "llama3"),
    ("llama", 8192, 80): ("llama3_1", "70b", "llama3"),
    ("llama", 16384, 126): ("llama3_1", "405b", "llama3"),
    ("llama", 2048, 16): ("llama3_2", "1b", "llama3"),
    ("llama", 3072, 28): ("llama3_2", "3b", "llama3"),
    ("qwen2", 896, 24): ("qwen2_5", "0_5b", "qwen2_5"),
    ("qwen2", 1536, 28): ("qwen2_5", "1_5b", "qwen2_5"),
    ("qwen2", 2048, 36): ("qwen2_5", "3b", "qwen2_5"),
    ("qwen2", 3584, 28): ("qwen2_5", "7b", "qwen2_5"),
    ("qwen2", 5120, 48): ("qwen2_5", "14b", "qwen2_5"),
    ("qwen2", 5120, 64): ("qwen2_5", "32b", "qwen2_5"),
    ("qwen2", 8192, 80): ("qwen2_5", "72b", "qwen2_5"),
}
_TORCHTUNE_SUPPORTED = "Llama 3.1 8B/70B/405B, Llama 3.2 1B/3B (and 3.3 70B), Qwen2.5 0.5B-72B"
# Qwen2.5 sizes that torchtune builds without a _base/_instruct suffix
_QWEN_UNSUFFIXED = ("0_5b", "3b")


def _torchtune_model(job: _Job) -> tuple[str, str, str]:
    from ftadvisor.launch import resolve_model_profile

    try:
        prof = resolve_model_profile(job.spec.model)
    except FtAdvisorError as err:
        raise FtAdvisorError("--model", f"torchtune builds models by name, and the architecture of "
                             f"{job.spec.model!r} is unknown here ({err})") from None
    c = prof.config
    key = (str(c.get("model_type")), int(c.get("hidden_size") or 0), int(c.get("num_hidden_layers") or 0))
    # Llama 2 / Llama 3.0 share shapes with 3.1 but not its vocabulary or scaled RoPE (torchtune builds them apart)
    llama3_1 = c.get("vocab_size") == 128256 and bool(c.get("rope_scaling"))
    if key not in _TORCHTUNE_MODELS or (key[0] == "llama" and not llama3_1):
        raise FtAdvisorError("--model", f"torchtune 0.6 has no builder for {prof.name} here; "
                             f"supported: {_TORCHTUNE_SUPPORTED}")
    pkg, size, tok = _TORCHTUNE_MODELS[key]
    if pkg == "qwen2_5" and size not in _QWEN_UNSUFFIXED:
        size += "_instruct" if "instruct" in job.model.lower() else "_base"
    return pkg, size, tok


_TT_OPTIM = {
    "adamw": "torch.optim.AdamW", "adamw_8bit": "bitsandbytes.optim.AdamW8bit",
    "paged_adamw_8bit": "bitsandbytes.optim.PagedAdamW8bit", "paged_adamw_32bit": "bitsandbytes.optim.PagedAdamW32bit",
    "sgd": "torch.optim.SGD", "adafactor": "torch.optim.Adafactor",
}


def _torchtune(job: _Job) -> str:
    # recipes: {lora,full}_finetune_{single_device,distributed}, lora_dpo_{single_device,distributed},
    # full_dpo_distributed; the base is quantised to NF4 by the qlora_* builders only (no int8)
    _require(job, ("full", "lora", "qlora", "dora"), ("sft", "dpo"), ("none", "nf4"))
    plan, run = job.plan, job.run
    if plan.sharding == "zero1":
        raise _unsupported("torchtune", "zero1 sharding", "FSDP2 full sharding (zero3, fsdp) or gradient/optimizer "
                           "sharding with parameters kept whole (zero2)")
    pkg, size, tok = _torchtune_model(job)
    distributed = plan.num_gpus > 1 or job.objective == "dpo" and not job.lora
    kind = "lora" if job.lora else "full"
    recipe = f"{kind}_dpo" if job.objective == "dpo" else f"{kind}_finetune"
    recipe += "_distributed" if distributed else "_single_device"
    builder = f"torchtune.models.{pkg}.{'qlora_' if job.quant == 'nf4' else 'lora_' if job.lora else ''}{pkg}_{size}"
    model: dict[str, Any] = {"_component_": builder}
    if job.lora:
        targets = _targets(job)
        attn = ["q_proj", "k_proj", "v_proj", "output_proj"]
        mlp = True
        if targets is not None:  # HF names -> torchtune's (o_proj is output_proj there)
            names = {"o_proj": "output_proj"}
            attn = [names.get(t, t) for t in targets if t in ("q_proj", "k_proj", "v_proj", "o_proj")]
            mlp = any(t in ("gate_proj", "up_proj", "down_proj") for t in targets)
        model.update({"lora_attn_modules": attn, "apply_lora_to_mlp": mlp, "apply_lora_to_output": False,
                      "lora_rank": plan.lora_r, "lora_alpha": _num(plan.lora_alpha), "lora_dropout": plan.lora_dropout})
        if job.method == "dora":
            model["use_dora"] = True
        if job.quant == "nf4" and not plan.double_quant:
            job.notes.append("torchtune's NF4 (torchao) always quantises the block scales; double_quant=false "
                             "is not available")
    ckpt_dir = job.model if Path(job.model).expanduser().is_dir() else str(job.path("model"))
    if tok == "llama3":
        tokenizer = {"_component_": "torchtune.models.llama3.llama3_tokenizer",
                     "path": f"{ckpt_dir}/original/tokenizer.model", "max_seq_len": plan.seq_len}
    else:
        tokenizer = {"_component_": "torchtune.models.qwen2_5.qwen2_5_tokenizer", "path": f"{ckpt_dir}/vocab.json",
                     "merges_file": f"{ckpt_dir}/merges.txt", "max_seq_len": plan.seq_len}
    # torchtune.training.checkpointing ModelType, as recipes/configs/{llama3_1,llama3_2,qwen2_5}/*.yaml name it
    model_type = {"llama3_1": "LLAMA3", "llama3_2": "LLAMA3_2", "qwen2_5": "QWEN2"}[pkg]
    if Path(ckpt_dir).is_dir() and not Path(tokenizer["path"]).is_file():
        job.notes.append(f"torchtune's tokenizer reads {tokenizer['path']}, which the model folder lacks; "
                         "point tokenizer.path at the original tokenizer files")
    files = sorted(p.name for p in Path(ckpt_dir).glob("*.safetensors")) if Path(ckpt_dir).is_dir() else []
    checkpointer = {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": ckpt_dir,
                    "checkpoint_files": files, "recipe_checkpoint": None, "output_dir": str(job.path("output")),
                    "model_type": model_type}
    max_steps, epochs = _steps_or_epochs(job)
    if max_steps is None and epochs != int(epochs):
        raise FtAdvisorError("run.num_epochs", f"torchtune runs whole epochs, got {epochs}")
    if max_steps is not None:  # recipes stop an epoch at max_steps_per_epoch; one epoch then caps the run
        job.notes.append(f"torchtune: max_steps {max_steps} becomes one epoch of at most {max_steps} steps "
                         "(max_steps_per_epoch); a smaller dataset ends sooner")
    lr = job.learning_rate
    cfg: dict[str, Any] = {
        "output_dir": str(job.path("output")),
        "model": model,
        "tokenizer": tokenizer,
        "checkpointer": checkpointer,
        "resume_from_checkpoint": False,
        "dataset": _torchtune_dataset(job),
        "seed": run.seed,
        "shuffle": True,
        "batch_size": plan.micro_batch_size,
        "optimizer": {"_component_": _TT_OPTIM[plan.optimizer], "lr": lr},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 0},
        "epochs": 1 if max_steps is not None else int(epochs),
        "max_steps_per_epoch": max_steps,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": str(job.path("output/logs"))},
        "log_every_n_steps": 1,
        "log_peak_memory_stats": True,
        "device": "cuda",
        "dtype": "fp32" if plan.precision == "fp32" else "bf16",
        "enable_activation_checkpointing": plan.gradient_checkpointing,
        "enable_activation_offloading": False,
    }
    if recipe.startswith("lora_dpo"):
        if plan.max_grad_norm:
            job.notes.append("torchtune's lora_dpo recipes do not clip gradients (max_grad_norm is not applied)")
    else:
        cfg["clip_grad_norm"] = plan.max_grad_norm
    if recipe == "full_dpo_distributed":
        # the frozen reference model: the same weights, loaded by their own checkpointer
        cfg["ref_checkpointer"] = {**checkpointer, "output_dir": str(job.path("output/ref"))}
    if job.objective == "dpo":
        cfg["loss"] = {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": 0.1}  # trl DPOConfig's beta too
    else:
        cfg["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    if job.lora:
        cfg["save_adapter_weights_only"] = False
    if distributed:
        # recipes/*_distributed.py read fsdp_cpu_offload and fsdp_reshard_after_forward (FSDP2)
        cfg["fsdp_cpu_offload"] = bool(plan.cpu_offload)
        cfg["fsdp_reshard_after_forward"] = plan.sharding != "zero2"
        if plan.sharding in ("zero2", "zero3"):
            job.notes.append(f"torchtune has no DeepSpeed: {plan.sharding} runs as FSDP2 "
                             + ("keeping parameters gathered after forward (ZeRO-2-like)" if plan.sharding == "zero2"
                                else "full sharding (ZeRO-3's layout)"))
        elif plan.sharding == "ddp":
            job.notes.append("torchtune's distributed recipes always shard with FSDP2: per-GPU memory is lower "
                             "than the plan's DDP")
    if plan.precision in ("bf16-mixed", "fp16-mixed"):
        job.notes.append(f"torchtune trains in pure {cfg['dtype']} (no fp32 master weights): less memory than "
                         f"the plan's {plan.precision}")
    name = f"torchtune_{recipe}.yaml"
    job.files[name] = (f"# tune run {recipe} --config {name}  (keys: torchtune v0.6.1 recipes/{recipe}.py and "
                       "recipes/configs/llama3_1/8B_lora*.yaml)\n" + yaml.safe_dump(cfg, sort_keys=False))
    lines = []
    if not Path(job.model).expanduser().is_dir():
        lines.append(f"tune download {shlex.quote(job.model)} --output-dir {shlex.quote(ckpt_dir)}")
        # the shard names are known once downloaded: pass them as a command-line override
        shards = '"[$(cd ' + shlex.quote(ckpt_dir) + ' && ls *.safetensors | paste -sd, -)]"'
        overrides = f" checkpointer.checkpoint_files={shards}"
        if "ref_checkpointer" in cfg:
            overrides += f" ref_checkpointer.checkpoint_files={shards}"
    else:
        overrides = ""
    run_cmd = "tune run"
    if distributed:
        run_cmd += f" --nproc_per_node {job.gpus_per_node}"
        if job.nodes > 1:
            run_cmd += f' --nnodes {job.nodes} --node_rank "$NODE_RANK" --rdzv_endpoint "$MAIN_ADDR:$MAIN_PORT"'
    return "\n".join(lines + [f"{run_cmd} {recipe} --config {name}{overrides}"])


def _torchtune_dataset(job: _Job) -> dict[str, Any]:
    """torchtune.datasets builders (v0.6.1 torchtune/datasets/__init__.py) for the data's format."""
    fmt, obj = job.data_format, job.objective
    kind, files = _data_ref(job)
    src = {"source": kind, "data_files": files, "split": "train"} if job.data_local else \
        {"source": kind, "split": files or "train"}
    if obj == "sft" and fmt == "messages":
        return {"_component_": "torchtune.datasets.chat_dataset", **src, "conversation_column": "messages",
                "conversation_style": "openai", "packed": job.plan.packing}
    if obj == "sft" and fmt in ("prompt_completion", "qa"):
        cols = {"input": "prompt", "output": "completion"} if fmt == "prompt_completion" else \
            {"input": "question", "output": "answer"}
        return {"_component_": "torchtune.datasets.instruct_dataset", **src, "column_map": cols,
                "packed": job.plan.packing}
    if obj == "sft" and fmt == "text":
        return {"_component_": "torchtune.datasets.text_completion_dataset", **src, "column": "text",
                "packed": job.plan.packing}
    if obj == "dpo" and fmt == "preference":
        # preference_dataset reads chosen/rejected as whole conversations (data/_messages.py ChosenRejectedToMessages)
        path = _convert(job, "preference.jsonl", _chosen_rejected_messages, "chosen/rejected as conversations")
        return {"_component_": "torchtune.datasets.preference_dataset", "source": "json", "data_files": path,
                "split": "train"}
    raise FtAdvisorError("--data", f"torchtune {obj} does not take {fmt} data here "
                         "(sft: messages, prompt_completion, qa, text; dpo: preference)")


def _chosen_rejected_messages(r: dict) -> dict:
    def conv(answer):
        prompt = r["prompt"]
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        reply = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]
        return [*turns, *reply]

    return {"chosen": conv(r["chosen"]), "rejected": conv(r["rejected"])}


# --------------------------------------------------------------------------------------------
# litgpt (0.5.13: litgpt/finetune/{lora,full}.py setup(), litgpt/args.py, litgpt/data/json_data.py)
# --------------------------------------------------------------------------------------------


def _litgpt(job: _Job) -> str:
    # litgpt finetunes with SFT only; LoRA (optionally over a bitsandbytes-quantised base) or full
    _require(job, ("full", "lora", "qlora"), ("sft",), ("none", "nf4", "int8"))
    plan, run = job.plan, job.run
    if plan.cpu_offload:
        raise _unsupported("litgpt", "cpu_offload", "sharding without offload (FSDP across devices)")
    if job.quant != "none" and not job.lora:
        raise _unsupported("litgpt", f"full fine-tuning over a {job.quant} base", "a quantised base with LoRA only")
    max_steps, epochs = _steps_or_epochs(job)
    if max_steps is None and epochs != int(epochs):
        raise FtAdvisorError("run.num_epochs", f"litgpt runs whole epochs, got {epochs}")
    precision = {"bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true", "fp16-mixed": "16-mixed", "fp32": "32-true"}
    ckpt = job.model if Path(job.model).expanduser().is_dir() else f"checkpoints/{job.model}"
    cfg: dict[str, Any] = {
        "checkpoint_dir": ckpt,
        "out_dir": str(job.path("output")),
        "precision": precision[plan.precision],
        "devices": job.gpus_per_node,
        "num_nodes": job.nodes,
    }
    if job.lora:
        if job.quant != "none":
            # quantize choices of finetune/lora.py setup()
            cfg["quantize"] = ("bnb.nf4-dq" if plan.double_quant else "bnb.nf4") if job.quant == "nf4" \
                else "bnb.int8-training"
        t = _targets(job)
        every = t is None
        cfg.update({
            "lora_r": plan.lora_r, "lora_alpha": _num(plan.lora_alpha), "lora_dropout": plan.lora_dropout,
            # litgpt's own switches per projection (litgpt/lora.py Config); HF names mapped onto them
            "lora_query": every or "q_proj" in t, "lora_key": every or "k_proj" in t,
            "lora_value": every or "v_proj" in t, "lora_projection": every or "o_proj" in t,
            "lora_mlp": every or any(x in t for x in ("gate_proj", "up_proj", "down_proj")), "lora_head": False,
        })
        if float(plan.lora_alpha) != int(plan.lora_alpha):
            raise FtAdvisorError("lora_alpha", f"litgpt takes a whole-number lora_alpha, got {plan.lora_alpha}")
    # litgpt.data.JSON reads instruction/input/output records (Alpaca style)
    fmt = job.data_format
    if fmt == "prompt_completion":
        conv = lambda r: {"instruction": r["prompt"], "input": "", "output": r["completion"]}  # noqa: E731
    elif fmt == "qa":
        conv = lambda r: {"instruction": r["question"], "input": "", "output": r["answer"]}  # noqa: E731
    elif fmt == "messages":
        conv = _single_turn
    else:
        raise FtAdvisorError("--data", f"litgpt's JSON data takes instruction/output pairs; {fmt} data cannot be "
                             "converted (use messages, prompt_completion or qa)")
    data_path = _convert(job, "litgpt_data.jsonl", conv, "instruction/output records")
    cfg["data"] = {"class_path": "litgpt.data.JSON",
                   "init_args": {"json_path": data_path, "mask_prompt": True, "val_split_fraction": 0.05,
                                 "prompt_style": "alpaca", "seed": run.seed, "num_workers": 4}}
    cfg["train"] = {
        "save_interval": run.save_steps or 1000,
        "log_interval": 1,
        # args.py TrainArgs: accumulation = global_batch_size / (devices x nodes) / micro_batch_size
        "global_batch_size": plan.micro_batch_size * plan.gradient_accumulation_steps * plan.num_gpus,
        "micro_batch_size": plan.micro_batch_size,
        "lr_warmup_steps": 0,
        "epochs": None if max_steps is not None else int(epochs),
        "max_steps": max_steps,
        "max_seq_length": plan.seq_len,
        "max_norm": plan.max_grad_norm,
    }
    opt = {"adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD", "adafactor": "torch.optim.Adafactor",
           "adamw_8bit": "bitsandbytes.optim.AdamW8bit", "paged_adamw_8bit": "bitsandbytes.optim.PagedAdamW8bit",
           "paged_adamw_32bit": "bitsandbytes.optim.PagedAdamW32bit"}[plan.optimizer]
    cfg["optimizer"] = {"class_path": opt, "init_args": {"lr": job.learning_rate}}
    cfg["logger_name"] = "csv"
    cfg["seed"] = run.seed
    if plan.gradient_checkpointing:
        job.notes.append("litgpt 0.5 finetune has no activation-checkpointing switch: it stores every layer's "
                         "activations (more memory than the plan's gradient_checkpointing)")
    if plan.num_gpus > 1 and plan.sharding != "fsdp":
        job.notes.append(f"litgpt shards across devices with FSDP (finetune/{'lora' if job.lora else 'full'}.py "
                         f"strategy) in place of the plan's {plan.sharding}")
    cmd_name = "finetune_lora" if job.lora else "finetune_full"
    job.files["litgpt.yaml"] = (f"# litgpt {cmd_name} --config litgpt.yaml  (keys: litgpt 0.5.13 "
                                f"litgpt/finetune/{'lora' if job.lora else 'full'}.py setup)\n"
                                + yaml.safe_dump(cfg, sort_keys=False))
    lines = []
    if not Path(job.model).expanduser().is_dir():
        lines.append(f"litgpt download {shlex.quote(job.model)}")  # writes checkpoints/<repo id>
    # several nodes: Lightning Fabric reads NODE_RANK, MASTER_ADDR and MASTER_PORT from the environment
    # (lightning/fabric/plugins/environments/lightning.py LightningEnvironment), given from ours
    env = 'MASTER_ADDR="$MAIN_ADDR" MASTER_PORT="$MAIN_PORT" ' if job.nodes > 1 else ""
    return "\n".join(lines + [f"{env}litgpt {cmd_name} --config litgpt.yaml"])


def _single_turn(r: dict) -> dict:
    msgs = r["messages"]
    users = [m for m in msgs if m.get("role") == "user"]
    bots = [m for m in msgs if m.get("role") == "assistant"]
    if len(users) != 1 or len(bots) != 1:
        raise FtAdvisorError("--data", "litgpt's JSON data is one instruction and one answer per record; "
                             "a conversation with several turns cannot be converted")
    return {"instruction": users[0]["content"], "input": "", "output": bots[0]["content"]}


_EXPORTERS: dict[str, Callable[[_Job], str]] = {
    "axolotl": _axolotl, "llama-factory": _llama_factory, "torchtune": _torchtune, "litgpt": _litgpt, "trl": _trl,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


# the plan's ``framework`` field (ftadvisor.frameworks names) -> the exporter that writes its config
_PLAN_FRAMEWORKS = {"hf-trl": "trl", "axolotl": "axolotl", "llama-factory": "llama-factory",
                    "torchtune": "torchtune", "litgpt": "litgpt"}


def resolve_framework(to: str | None, plan: Any = None) -> str:
    """``--to``, else the plan's ``framework`` field (the stack its estimate is for: hf-trl -> trl)."""
    if to is None:
        fw = getattr(getattr(plan, "plan", plan), "framework", None)
        if isinstance(fw, str) and fw in _PLAN_FRAMEWORKS:
            return _PLAN_FRAMEWORKS[fw]
        raise FtAdvisorError("--to", "no framework given" + (f" (the plan's framework {fw} has no exporter)"
                                                             if fw else ""), FRAMEWORKS)
    name = str(to).strip().lower().replace("_", "-")
    name = {"llamafactory": "llama-factory", "hf-trl": "trl"}.get(name, name)
    if name not in FRAMEWORKS:
        from ftadvisor.errors import shown

        raise FtAdvisorError("--to", f"unknown framework {shown(to, 60)}", FRAMEWORKS)
    return name


def read_spec(plan_file: str | os.PathLike | None, *, model: str | None = None, data: str | None = None,
              sets: dict[str, Any] | None = None):
    """A plan file (plus ``--set`` values) read as ``ftadvisor launch`` reads it, into a RunSpec, keeping
    a ``framework`` other than hf-trl (launch refuses those, since it trains with hf-trl only)."""
    from ftadvisor.launch import RUN_FIELDS, build_spec
    from ftadvisor.plans import make_plan, read_plan_file, split_plan_file

    sets = dict(sets or {})
    framework = sets.pop("framework", None)
    if framework is None and plan_file is not None:
        framework = split_plan_file(read_plan_file(plan_file, "plan"), "plan", RUN_FIELDS)["plan"].get("framework")
    spec = build_spec(plan_file, model=model, data=data, sets={**sets, "framework": "hf-trl"})
    if framework is None:
        return spec
    return spec.model_copy(update={"plan": make_plan(plan=spec.plan, framework=framework)})


def _as_spec(plan: Any, model: str | None, data: str | None):
    from ftadvisor.launch import RunSettings, RunSpec
    from ftadvisor.schema import TrainingPlan

    if isinstance(plan, RunSpec):
        if model or data:
            plan = plan.model_copy(update={k: v for k, v in (("model", model), ("data", data)) if v})
        return plan
    if isinstance(plan, TrainingPlan):
        if not model or not data:
            raise FtAdvisorError("--model" if not model else "--data", "a bare training plan needs the model "
                                 "and the data to export")
        return RunSpec(model=model, data=data, plan=plan, run=RunSettings())
    if isinstance(plan, (str, os.PathLike)):
        return read_spec(plan, model=model, data=data)
    raise FtAdvisorError("plan", f"expected a plan file, a RunSpec or a TrainingPlan, got {type(plan).__name__}")


def export_plan(plan, to: str | None, out_dir: Path, *, model: str | None = None, data: str | None = None,
                overwrite: bool = False) -> ExportResult:
    """Write the framework's config for ``plan`` (a plan file as ``ftadvisor launch`` reads it, a
    :class:`~ftadvisor.launch.RunSpec`, or a TrainingPlan with ``model`` and ``data``) into
    ``out_dir``, plus ``run.sh`` with the command. Existing files are refused unless ``overwrite``."""
    from ftadvisor import validate

    spec = _as_spec(plan, model, data)
    framework = resolve_framework(to, spec.plan)
    out = Path(out_dir).expanduser().resolve()
    local = validate.exists(spec.data)
    data_format = _data_format(spec, local)
    job = _Job(spec=spec, framework=framework, out=out, model=_model_for_framework(spec.model), data_format=data_format,
               data_local=local)
    if job.model != spec.model and "-instruct" in spec.model.lower() and "instruct" not in job.model.lower():
        # profiles list -instruct names as aliases of the base model (same architecture, other weights)
        job.notes.append(f"model {spec.model} is written as its profile's Hugging Face id {job.model} (the base "
                         "model); pass the instruct model's Hugging Face id with --model to train that one")
    command = _EXPORTERS[framework](job)
    planned = getattr(spec.plan, "framework", None)
    if planned and _PLAN_FRAMEWORKS.get(planned, planned) != framework:
        job.notes.append(f"the plan's estimate is for {planned}; ftadvisor estimate --set framework="
                         f"{next((k for k, v in _PLAN_FRAMEWORKS.items() if v == framework), framework)} "
                         f"gives {framework}'s memory")
    job.files[COMMAND_FILE] = _script([command], job)
    paths = [out / name for name in job.files]
    _write_all(out, job.files, overwrite)
    (out / COMMAND_FILE).chmod(0o755)
    return ExportResult(framework=framework, files=paths, command=command, notes=job.notes)


def _model_for_framework(model: str) -> str:
    """A local directory as is; a profile id as its Hugging Face id (what the frameworks download)."""
    from ftadvisor import validate

    if validate.exists(model):
        return model
    try:
        from ftadvisor.profiles import resolve_model

        prof = resolve_model(model)
    except FtAdvisorError:
        return model  # a hub id no profile carries
    return prof.hf_id or model


def _data_format(spec, local: bool) -> str:
    """The data's format (ftadvisor.datasets.detect_format) for a local file; for a hub id, the first
    format the objective trains on (it cannot be read here)."""
    from ftadvisor.datasets import load_data, objective_formats
    from ftadvisor.techniques import parse_technique

    obj = parse_technique(spec.plan.technique).objective.name
    if local:
        return load_data(spec.data, limit=20).format
    return objective_formats(obj)[0]


def _write_all(out: Path, files: dict[str, str], overwrite: bool) -> None:
    from ftadvisor.launch import storage_error

    try:
        if out.exists() and not out.is_dir():
            raise FtAdvisorError("--out", f"{out} exists and is not a directory")
        clash = [n for n in files if (out / n).exists()]
        if clash and not overwrite:
            raise FtAdvisorError("--out", f"{out / clash[0]} exists; pass --overwrite to replace "
                                 f"{'it' if len(clash) == 1 else f'the {len(clash)} files ftadvisor writes there'}")
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_text_atomic(out / name, text)
    except OSError as err:  # a full disk, a refused permission, a folder that cannot be made: one line
        refused = storage_error(err, out)
        if refused is None:
            refused = FtAdvisorError("--out", f"cannot write into {out} ({err.strerror or type(err).__name__})")
        raise refused from None


