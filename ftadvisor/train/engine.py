"""The one training engine behind ``ftadvisor calibrate`` and ``ftadvisor launch``.

    from ftadvisor.train.engine import TrainJob, build, run
    session = build(TrainJob(model="/path/to/model", plan=ftadvisor.make_plan("lora", seq_len=512)))
    result = run(session)          # RunResult(steps, losses, tokens_seen, wall_s, ...)

``build`` loads (or, with ``random_init``, creates) the model and tokenizer, applies the plan's
method (:data:`ftadvisor.train.techniques.METHOD_IMPLS`), sets the plan's precision, prepares the
records and builds the objective's trl trainer (:data:`~ftadvisor.train.techniques.OBJECTIVE_IMPLS`).
``run`` trains, writes a JSON-lines log, saves the result in Hugging Face format and reports
throughput and (on CUDA) peak memory.

Precision (matching ``ftadvisor/memory.py`` ``Layout``):
- ``bf16-mixed``: trainable parameters fp32, frozen ones bf16 (fp32 next to a quantized base, as
  ``peft.prepare_model_for_kbit_training`` leaves them), torch autocast bf16 (Trainer ``bf16=True``);
- ``bf16-true``: every parameter bf16, no autocast;
- ``fp16-mixed``: as bf16-mixed with fp16 and a gradient scaler (CUDA only);
- ``fp32``: everything fp32.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError

# --- public data types ----------------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything a training run needs besides the plan's cost knobs."""

    model: Any
    """Profile id, Hugging Face id, local checkpoint dir, path to a config.json, or a dict of config fields."""
    plan: Any
    """A ``ftadvisor.TrainingPlan`` (or a dict of plan fields)."""
    data: Any = "synthetic"
    """'synthetic' (records of the planned shape) or a list of records (see ftadvisor.train.data)."""
    random_init: bool = False
    """Build from the config with random weights (calibration) instead of loading weights."""
    num_layers: int | None = None
    """Override num_hidden_layers (calibrate big configs with a few layers)."""
    output_dir: str | None = None
    """Where checkpoints and the final model go (a fresh temp dir when None)."""
    max_steps: int | None = None
    """Optimizer steps; None trains ``num_epochs`` over the data."""
    num_epochs: float = 1.0
    learning_rate: float | None = None
    """None: the objective's trl default for full-weight methods, 10x that for parameter-efficient ones."""
    seed: int = 0
    log_path: str | None = None
    """JSON-lines log: start event, one object per step, end event."""
    save_steps: int | None = None
    """Checkpoint every N steps (None: only the final save)."""
    resume: bool = False
    """Resume from the newest complete checkpoint in output_dir (see :func:`checkpoint_dirs`)."""
    trust_remote_code: bool = False
    device: str = "auto"
    """'auto' (cuda when available), 'cuda', 'cuda:N' or 'cpu'."""
    reward: Any = None
    """PPO: reward-model dir (None with random_init: a random reward model); GRPO: built-in reward
    name(s) ('length', 'format', 'exact_match', comma-separated), a reward-model dir, or a callable."""
    synthetic_examples: int | None = None
    """Number of synthetic records (default: enough for max_steps, else 4 optimizer steps)."""
    save_final: bool = True
    """Save the trained model/adapter into output_dir at the end of ``run``."""


@dataclass
class RunResult:
    steps: int
    losses: list[float]
    tokens_seen: int
    """Non-padding tokens through the trained model's forward passes with gradients."""
    wall_s: float
    tokens_per_s: float
    step_seconds: list[float]
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    output_dir: str | None
    metrics: list[dict] = field(default_factory=list)
    """Per logged step: the trainer's own numbers besides the loss (``step`` plus e.g. DPO/ORPO
    ``rewards/margins`` and ``rewards/accuracies``, GRPO ``reward`` and ``rewards/<name>/mean``,
    PPO ``objective/scores``), as in the JSON-lines log's ``metrics``."""
    signals: list[dict] = field(default_factory=list)
    """Per logged step: ``step`` plus the objective's training signal under fixed names
    (:mod:`ftadvisor.train.signals`: DPO ``accuracy``/``margin``, GRPO ``reward_mean``/``reward_std`` ...),
    as in the JSON-lines log's ``signal``."""
    param_fingerprint_start: list[float] | None = None
    """(sum, L2 norm) in float64 over this process's trainable parameters when ``run`` starts (before
    a resumed run loads its checkpoint)."""
    param_fingerprints: list[list[float]] | None = None
    """The same after training, one per process (rank order; one entry when not distributed):
    data-parallel replicas must end equal, and a run that learned ends away from the start."""


@dataclass
class Session:
    job: TrainJob
    plan: Any
    technique: Any
    model: Any
    tokenizer: Any
    trainer: Any = None
    trainable_params: int = 0
    """Parameters with gradients (policy plus, for PPO, the value model)."""
    total_params: int = 0
    """Parameters of the base model (4-bit weights counted unpacked), adapters excluded."""
    device: str = "cpu"
    compute_dtype: Any = None
    arch: Any = None
    config: dict = field(default_factory=dict)
    quantization: str = "none"
    records: list = field(default_factory=list)
    output_dir: str | None = None
    extra_models: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    weights_source: str | None = None
    """Directory or hub id the weights came from (None for random init)."""
    _base_dir: str | None = None

    # What an objective's trainer hook may ask the engine for: its reference model, its records
    # as a datasets.Dataset, the extra models PPO trains or scores with.
    def reference_model(self, needed: bool, precomputed: bool = False):
        from ftadvisor.train.techniques import reference_model

        return reference_model(self, needed, precomputed)

    def dataset(self, records: list):
        from datasets import Dataset

        return Dataset.from_list(records)

    def build_value_model(self):
        return build_value_model(self)

    def build_reward_model(self):
        return build_reward_model(self)


# --- resolution -----------------------------------------------------------------------------

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _plan(plan):
    from ftadvisor.estimator import make_plan
    from ftadvisor.schema import TrainingPlan

    if isinstance(plan, TrainingPlan):
        return make_plan(plan=plan)
    if isinstance(plan, dict):
        return make_plan(plan=plan)
    raise FtAdvisorError("plan", f"expected a TrainingPlan or a dict of plan fields, got {type(plan).__name__}")


def pretrained_source(source: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """``(name, extra from_pretrained kwargs)`` for a weights/tokenizer/config source: a Hub id with a
    revision, ``org/name@rev`` (as ftadvisor.hub.parse_hub_id reads it, the form ``ftadvisor launch -m``
    accepts), becomes ``("org/name", {"revision": "rev"})``; transformers takes the revision only as that
    keyword (``revision=`` of PreTrainedModel/AutoTokenizer/AutoConfig.from_pretrained). A path that
    exists, and anything else, is passed on unchanged."""
    from ftadvisor.hub import parse_hub_id

    text = str(source)
    if Path(text).expanduser().exists():
        return text, {}
    parsed = parse_hub_id(text)
    if parsed is None or parsed[1] is None:
        return text, {}
    return parsed[0], {"revision": parsed[1]}


def _resolve_source(job: TrainJob) -> tuple[dict, str | None, str | None]:
    """(config fields, weights dir or hub id or None, tokenizer dir or hub id or None)."""
    from ftadvisor.profiles import model_profiles, resolve_model
    from ftadvisor.schema import ModelProfile

    m = job.model
    if isinstance(m, ModelProfile):
        return dict(m.config), m.hf_id, m.hf_id
    if isinstance(m, dict):
        return dict(m), None, None
    if not isinstance(m, (str, os.PathLike)):
        raise FtAdvisorError("model", f"expected a name, a path or a dict, got {type(m).__name__}")
    text = str(m)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FtAdvisorError("model", f"{path} is not valid JSON ({err})") from None
        folder = path.parent
        has_w = any((folder / f).is_file() for f in _WEIGHT_FILES)
        has_tok = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
        return cfg, str(folder) if has_w else None, str(folder) if has_tok else None
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise FtAdvisorError("model", f"directory {text!r} holds no config.json")
        cfg = json.loads(cfg_path.read_text())
        has_w = any((path / f).is_file() for f in _WEIGHT_FILES)
        has_tok = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        return cfg, str(path) if has_w else None, str(path) if has_tok else None
    try:
        prof = resolve_model(text)
    except FtAdvisorError:
        prof = None
    if prof is not None and prof.id in model_profiles():
        return dict(prof.config), prof.hf_id, prof.hf_id
    from ftadvisor.hub import parse_hub_id

    if parse_hub_id(text) is not None:
        # A Hugging Face hub id (org/name[@revision]): fetch its config (needs the network or the local HF cache).
        try:
            from transformers import AutoConfig

            repo, rev = pretrained_source(text)
            cfg = AutoConfig.from_pretrained(repo, trust_remote_code=job.trust_remote_code, **rev).to_dict()
        except Exception as err:  # noqa: BLE001 - network/auth errors have many types
            raise FtAdvisorError("model", f"cannot fetch {text!r} from the Hugging Face hub ({type(err).__name__}: {err})") from None
        return cfg, text, text
    resolve_model(text)  # raises the standard 'unknown model' error with suggestions
    raise FtAdvisorError("model", f"cannot resolve {text!r}")


def _device(spec: str) -> str:
    import torch

    if spec in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    spec = str(spec)
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FtAdvisorError("device", "CUDA is not available on this machine", ["auto", "cpu"])
        return spec
    if spec == "cpu":
        return spec
    raise FtAdvisorError("device", f"unknown device {spec!r}", ["auto", "cpu", "cuda", "cuda:0"])


def _compute_dtype(precision: str):
    import torch

    return {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "fp16-mixed": torch.float16, "fp32": torch.float32}[precision]


def _check_precision(plan, device: str) -> None:
    import torch

    if plan.precision == "fp16-mixed" and not device.startswith("cuda"):
        raise FtAdvisorError("precision", "fp16-mixed needs a CUDA GPU (the fp16 gradient scaler is CUDA-only)",
                             ["bf16-mixed", "bf16-true", "fp32"])
    if plan.precision.startswith("bf16") and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise FtAdvisorError("precision", "this GPU has no bf16 support", ["fp16-mixed", "fp32"])


def _attn_impl(plan, device: str) -> str:
    import importlib.util

    if plan.attention == "flash":
        if not device.startswith("cuda"):
            raise FtAdvisorError("attention", "FlashAttention-2 needs a CUDA GPU", ["sdpa", "eager"])
        if importlib.util.find_spec("flash_attn") is None:
            raise FtAdvisorError("attention", "flash needs the flash-attn package, which is not installed", ["sdpa", "eager"])
        return "flash_attention_2"
    return plan.attention


def _optim_name(plan, device: str) -> str:
    """TrainingArguments.optim for the plan's optimizer (transformers training_args.OptimizerNames)."""
    return {
        # torch's fused AdamW kernel (CUDA; CPU kernels exist too since torch 2.4)
        "adamw": "adamw_torch_fused",
        "adamw_8bit": "adamw_bnb_8bit",
        "paged_adamw_8bit": "paged_adamw_8bit",
        "paged_adamw_32bit": "paged_adamw_32bit",
        "sgd": "sgd",
        "adafactor": "adafactor",
    }[plan.optimizer]


# Learning rates when the job gives none: trl's per-trainer defaults for full-weight training
# (SFTConfig 2e-5, DPOConfig 1e-6, ORPOConfig 8e-6, GRPOConfig 1e-6, PPOConfig 3e-6); 10x for
# parameter-efficient methods ("LoRA Without Regret", Schulman et al. / Thinking Machines 2025:
# the best LoRA learning rate is about 10x the full fine-tuning one).


# --- model loading --------------------------------------------------------------------------


def _tokenizer(tok_source: str | None, config: dict, job: TrainJob):
    from transformers import AutoTokenizer

    if tok_source is not None:
        try:
            repo, rev = pretrained_source(tok_source)
            tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=job.trust_remote_code, **rev)
        except Exception as err:  # noqa: BLE001
            raise FtAdvisorError("model", f"cannot load the tokenizer of {tok_source!r} ({type(err).__name__}: {err})") from None
    else:
        from ftadvisor.train.tiny import train_tokenizer

        vocab = int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0)
        tok = train_tokenizer(min(vocab, 512))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        from ftadvisor.train.tiny import CHAT_TEMPLATE

        tok.chat_template = CHAT_TEMPLATE
    return tok


def _bnb_config(quant: str, plan, dtype):
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        # QLoRA (Dettmers et al. 2023) section 3: NF4 storage, optional double quantization of the
        # block constants, bf16 compute.
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=plan.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # LLM.int8 (Dettmers et al. 2022)


def _hf_config(config: dict, job: TrainJob, attn: str):
    from transformers import AutoConfig

    cfg = dict(config)
    mt = cfg.pop("model_type", None)
    if mt is None:
        raise FtAdvisorError("model", "config has no model_type")
    for k in ("transformers_version", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    if job.num_layers is not None:
        cfg["num_hidden_layers"] = job.num_layers
    try:
        hf = AutoConfig.for_model(mt, **cfg)
    except (KeyError, ValueError) as err:
        raise FtAdvisorError("model", f"transformers cannot build a {mt!r} config ({err})") from None
    hf._attn_implementation = attn
    return hf


@contextlib.contextmanager
def _attention_errors(attn: str):
    """transformers raises ValueError for an attention kernel a family lacks (Gemma-2 has no SDPA
    path); say which field to change."""
    try:
        yield
    except ValueError as err:
        if "attention" in str(err).lower():
            raise FtAdvisorError("attention", f"{attn}: {str(err).splitlines()[0][:200]}", ["sdpa", "eager", "flash"]) from None
        raise


def _load_model(session: Session, weights: str | None, attn: str, head: str = "causal"):
    """The base model in the compute dtype (quantized per session.quantization) on session.device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    job, plan = session.job, session.plan
    auto = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    dtype = session.compute_dtype
    extra: dict[str, Any] = {"num_labels": 1} if head != "causal" else {}
    if weights is None or job.random_init:
        hf = _hf_config(session.config, job, attn)
        if head != "causal":
            hf.num_labels = 1
        torch.manual_seed(job.seed)
        with _attention_errors(attn):
            model = auto.from_config(hf, dtype=dtype, trust_remote_code=job.trust_remote_code)
        if session.quantization == "none":
            return model.to(session.device)
        # bitsandbytes quantizes while loading: save the random weights once, load them quantized.
        if session._base_dir is None:
            session._base_dir = tempfile.mkdtemp(prefix="ftadvisor-base-")
            model.save_pretrained(session._base_dir)
            session.tokenizer.save_pretrained(session._base_dir)
        del model
        weights = session._base_dir
    weights, rev = pretrained_source(weights)  # org/name@rev: revision= (a local path: unchanged)
    kw: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn, trust_remote_code=job.trust_remote_code,
                              **extra, **rev)
    if job.num_layers is not None:
        kw["num_hidden_layers"] = job.num_layers
    if session.quantization != "none":
        kw["quantization_config"] = _bnb_config(session.quantization, plan, dtype)
        kw["device_map"] = {"": session.device if session.device != "cuda" else 0}
    try:
        with _attention_errors(attn):
            model = auto.from_pretrained(weights, **kw)
    except OSError as err:
        raise FtAdvisorError("model", f"cannot load weights from {weights!r} ({err})") from None
    return model if session.quantization != "none" else model.to(session.device)


def _is_packed(p) -> bool:
    return not p.is_floating_point()


def _apply_precision(model, plan, quantization: str) -> None:
    """Cast parameters to the storage dtypes the memory model assumes (memory.py Layout
    ``trainable_bytes`` / ``frozen_bytes``). Quantized (packed integer) weights are left alone.

    One exception next to a quantized base: routed experts of transformers-5 MoE models are fused
    3-D parameters that bitsandbytes does not quantize; peft's prepare_model_for_kbit_training
    would upcast them to fp32 (4 bytes for the bulk of the model), so they stay in the compute dtype.
    """
    import torch

    from ftadvisor.train.techniques import named_param_groups

    compute = _compute_dtype(plan.precision)
    trainable = torch.bfloat16 if plan.precision == "bf16-true" else torch.float32
    frozen = torch.float32 if (quantization != "none" and plan.precision != "bf16-true") else compute
    for _name, p, group, _layer in named_param_groups(model):
        if _is_packed(p):
            continue
        if p.requires_grad:
            want = trainable
        elif quantization != "none" and group == "expert":
            want = compute
        else:
            want = frozen
        if p.dtype != want:
            p.data = p.data.to(want)


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Name prefixes of the parameters peft's tuners add (peft LoraLayer.prefix "lora_", IA3Layer "ia3_").
PEFT_TUNER_PREFIXES = ("lora_", "ia3_")


def count_base(model) -> int:
    """Base-model parameters (adapters and our modules excluded; 4-bit weights unpacked)."""
    from ftadvisor.train.modules import PREFIX

    n = 0
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen or any(t in name for t in PEFT_TUNER_PREFIXES) or PREFIX in name or "modules_to_save" in name:
            continue
        seen.add(id(p))
        qs = getattr(p, "quant_state", None)
        if qs is not None and getattr(qs, "shape", None) is not None:
            n += math.prod(qs.shape)
        else:
            n += p.numel()
    return n


# --- extra models (PPO) ---------------------------------------------------------------------


def build_value_model(session: Session):
    """PPO's value model: the policy's architecture with a one-output score head, trained with the
    same method (memory model: 'value model mirrors the policy and trains with it')."""
    from ftadvisor.train.techniques import Context, apply_method

    model = _load_model(session, session.weights_source, _attn_impl(session.plan, session.device), head="seq_cls")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = session.tokenizer.pad_token_id
    ctx = Context(session.plan, session.arch, session.technique, session.quantization, session.arch.num_layers)
    model = apply_method(session.technique.method, model, ctx, False)
    for name, p in model.named_parameters():
        if name.startswith("score"):
            p.requires_grad_(True)  # a fresh value head always trains
    _apply_precision(model, session.plan, session.quantization)
    return model


def build_reward_model(session: Session):
    """PPO's frozen reward model: job.reward / plan.ppo_reward_model as a directory, or (random init)
    a random sequence-classification model of the policy's config."""
    from transformers import AutoModelForSequenceClassification

    spec = session.job.reward or session.plan.ppo_reward_model
    if spec is not None and Path(str(spec)).expanduser().is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(Path(str(spec)).expanduser()), num_labels=1, dtype=session.compute_dtype,
            trust_remote_code=session.job.trust_remote_code,
        )
    elif session.job.random_init or session.weights_source is None:
        # Calibration: a random reward model of the policy's config, or of the profile/config the
        # plan names (memory model: 'reward model (profile or config); None = same as the policy').
        import torch

        from ftadvisor.profiles import resolve_model

        cfg = session.config if spec is None else dict(resolve_model(spec).config)
        hf = _hf_config(cfg, session.job, _attn_impl(session.plan, session.device))
        hf.num_labels = 1
        torch.manual_seed(session.job.seed + 1)
        model = AutoModelForSequenceClassification.from_config(hf, dtype=session.compute_dtype)
    else:
        raise FtAdvisorError("reward", "ppo needs a reward model directory (job.reward or plan.ppo_reward_model)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = session.tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(session.device).eval()


# --- build ----------------------------------------------------------------------------------


def build(job: TrainJob) -> Session:
    """Load or create the model and tokenizer, apply the technique, prepare the data and the
    trainer. Nothing is trained yet."""
    if not isinstance(job, TrainJob):
        raise FtAdvisorError("job", f"expected a TrainJob, got {type(job).__name__}")
    from ftadvisor import memory
    from ftadvisor.profiles import resolve_hardware, resolve_model
    from ftadvisor.techniques import parse_technique

    plan = _plan(job.plan)
    technique = parse_technique(plan.technique)
    if job.max_steps is not None and job.max_steps < 1:
        raise FtAdvisorError("max_steps", "must be at least 1")
    if job.num_layers is not None and job.num_layers < 1:
        raise FtAdvisorError("num_layers", "must be at least 1")

    config, weights, tok_source = _resolve_source(job)
    if job.num_layers is not None:
        config = dict(config, num_hidden_layers=job.num_layers)
    if weights is None and not job.random_init:
        raise FtAdvisorError("model", "no weights to load (a config only); pass random_init=True to train random weights")
    arch = resolve_model(config).arch
    # The estimator's own validation of the plan against the architecture (moe on a dense model,
    # quantizing a full-weight method, unknown LoRA targets ...); its layout decides quantization.
    layout = memory.build_layout(arch, technique, resolve_hardware("cpu"), plan)

    quiet_known_warnings()
    import torch  # noqa: F401 - heavy imports start here
    from transformers import set_seed

    _quiet()
    # Seed before anything random is created (random-init weights, LoRA A, adapters, memory
    # experts): the Trainer seeds only when it is built, after the method is applied.
    set_seed(job.seed)
    device = _device(job.device)
    _check_precision(plan, device)
    attn = _attn_impl(plan, device)
    if layout.quantization != "none":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise FtAdvisorError("quantization", "needs the bitsandbytes package", ["none"])

    session = Session(
        job=job, plan=plan, technique=technique, model=None, tokenizer=None, device=device,
        compute_dtype=_compute_dtype(plan.precision), arch=arch, config=config,
        quantization=layout.quantization, weights_source=None if job.random_init else weights,
    )
    session.tokenizer = _tokenizer(tok_source, config, job)
    if technique.objective.generation:
        session.tokenizer.padding_side = "left"

    from ftadvisor.train.techniques import Context, apply_method, hook

    model = _load_model(session, session.weights_source, attn)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = session.tokenizer.pad_token_id
    ctx = Context(plan, arch, technique, layout.quantization, arch.num_layers)
    model = apply_method(technique.method, model, ctx, True)
    _apply_precision(model, plan, layout.quantization)
    session.model = model
    session.notes.extend(ctx.notes)

    session.records = _records(session)
    # Without output_dir: a fresh path under the temp dir, created only if something is saved.
    session.output_dir = job.output_dir or os.path.join(tempfile.gettempdir(), f"ftadvisor-run-{uuid.uuid4().hex[:12]}")
    common = _common_args(session)
    own_on_quantized = layout.quantization != "none" and technique.method.own_modules
    if own_on_quantized:
        # transformers.Trainer refuses a quantized model unless peft adapters are attached
        # (trainer_utils.validate_quantization_for_training reads _hf_peft_config_loaded); ours are
        # attached, so say so while the trainer is built, and only then (save_pretrained reads the
        # same flag to save adapters only).
        model._hf_peft_config_loaded = True
    try:
        session.trainer = hook(technique.objective.train_hook)(session, session.records, common)
    finally:
        if own_on_quantized:
            del model._hf_peft_config_loaded
    _freeze_reference_adapter(session.model)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        session.trainer.remove_callback(cb)
    # trl casts trainable parameters of a quantized model to bf16 (QLoRA paper practice); put them
    # back to the plan's storage dtypes (the optimizer is created later, in train()).
    _apply_precision(session.model, plan, layout.quantization)

    session.trainable_params = count_trainable(session.model)
    value = session.extra_models.get("value")
    if value is not None:
        session.trainable_params += count_trainable(value)
    session.total_params = count_base(session.model)
    return session


def _freeze_reference_adapter(model) -> None:
    """trl's preference trainers copy a peft policy's adapter as a "ref" adapter and freeze the
    parameters whose name holds ".ref." (trl/trainer/dpo_trainer.py, kto_trainer.py); (IA)^3's end in
    "ia3_l.ref" and stayed trainable (never stepped: no gradient reaches them)."""
    for name, p in model.named_parameters():
        if name.endswith(".ref") or ".ref." in name:
            p.requires_grad_(False)


def _records(session: Session) -> list[dict]:
    from ftadvisor.train import data

    job, plan = session.job, session.plan
    obj = session.technique.objective.name
    if isinstance(job.data, str):
        if job.data != "synthetic":
            raise FtAdvisorError("data", f"unknown data {job.data!r}; pass 'synthetic' or a list of records", ["synthetic"])
        per_step = plan.micro_batch_size * plan.gradient_accumulation_steps
        objective = session.technique.objective
        per_step = max(1, per_step // objective.completions_per_prompt(plan))  # prompts per step (GRPO groups)
        n = job.synthetic_examples or per_step * (job.max_steps or 4)
        if objective.own_training_loop:  # trl's PPOTrainer needs a whole rollout batch on every process
            n = max(n, per_step * int(os.environ.get("WORLD_SIZE", "1") or 1))
        return data.synthetic_records(obj, plan, session.tokenizer, n, seed=job.seed)
    return data.convert(list(job.data), obj)


def _checkpointing_args(plan) -> dict:
    """Gradient checkpointing, non-reentrant (PyTorch's recommended variant). transformers 5 renamed
    the arguments to activation_checkpointing*; the old names remain as deprecated aliases."""
    from transformers import TrainingArguments

    kwargs = {"use_reentrant": False} if plan.gradient_checkpointing else None
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        return {"activation_checkpointing": plan.gradient_checkpointing, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": plan.gradient_checkpointing, "gradient_checkpointing_kwargs": kwargs}


class _DropMessages:
    """A logging filter that drops records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_warnings() -> None:
    """Silence two known, harmless messages, each matched by its exact source and wording:

    - bitsandbytes 0.50 ``backends/cpu/ops.py`` logs (logger ``bitsandbytes.backends.cpu.ops``) "Failed to
      load CPU gemm_4bit_forward from kernels-community" whenever it is imported on a CPU with AVX512-BF16
      (peft and trl import it on every run): it only means the optional ``kernels`` package (a hub
      download) is absent, and bitsandbytes falls back to its own CPU 4-bit kernel;
    - transformers 5 ``modeling_utils.py`` warns (FutureWarning) that ``is_gradient_checkpointing`` is
      deprecated each time peft (``peft_model.py``) or trl (``models/utils.py``) reads that alias; we do
      not call it ourselves.
    Installed before the libraries are imported (a logger's filters survive its module's import)."""
    import logging
    import warnings

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropMessages) for f in log.filters):
        log.addFilter(_DropMessages(("Failed to load CPU gemm_4bit_forward from kernels-community",)))
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _quiet() -> None:
    """No progress bars from datasets / transformers: progress goes to the JSON-lines log."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def _common_args(session: Session) -> dict:
    job, plan = session.job, session.plan
    lr = job.learning_rate
    if lr is None:
        lr = session.technique.objective.default_learning_rate * (10 if session.technique.method.peft else 1)
    return dict(
        output_dir=session.output_dir,
        per_device_train_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=lr,
        num_train_epochs=job.num_epochs,
        max_steps=job.max_steps if job.max_steps is not None else -1,
        **_checkpointing_args(plan),
        bf16=plan.precision == "bf16-mixed",
        fp16=plan.precision == "fp16-mixed",
        optim=_optim_name(plan, session.device),
        max_grad_norm=plan.max_grad_norm or 0.0,
        seed=job.seed,
        data_seed=job.seed,
        logging_steps=1,
        save_strategy="steps" if job.save_steps else "no",
        save_steps=job.save_steps or 500,
        report_to="none",
        use_cpu=session.device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


# --- run ------------------------------------------------------------------------------------


def _log_callback_cls():
    from transformers import TrainerCallback

    from ftadvisor.train import signals

    class StepLog(TrainerCallback):
        """Per-step timing, losses and tokens; writes the JSON-lines log."""

        def __init__(self, session: Session, counter: dict):
            self.session = session
            self.counter = counter
            self.fh = None
            if session.job.log_path:
                Path(session.job.log_path).parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(session.job.log_path, "a", buffering=1)
            self.t_start = None
            self.t_step = None
            self.step_seconds: list[float] = []
            self.losses: list[float] = []
            self.metrics: list[dict] = []
            self.signals: list[dict] = []
            self.logged_step = 0

        def write(self, obj: dict) -> None:
            if self.fh:
                self.fh.write(json.dumps(obj) + "\n")

        def on_train_begin(self, args, state, control, **kw):
            self.t_start = time.perf_counter()
            self.t_step = self.t_start
            s = self.session
            self.write({
                "event": "start", "time": time.time(), "technique": s.technique.name, "max_steps": state.max_steps,
                "trainable_params": s.trainable_params, "total_params": s.total_params, "device": s.device,
                "output_dir": s.output_dir, "plan": s.plan.model_dump(mode="json"),
                # what the step records' "signal" may hold, and how to read it (ftadvisor/train/signals.py)
                "objective": s.technique.objective.name, "signals": signals.describe(s.technique.objective.name),
                "legend": signals.LEGENDS.get(s.technique.objective.name),
            })

        def on_step_begin(self, args, state, control, **kw):
            self.t_step = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_seconds.append(now - (self.t_step or now))
            self.t_step = now

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            loss = logs.get("loss", logs.get("loss/policy_avg"))
            if loss is None or state.global_step == self.logged_step:
                return
            self.logged_step = state.global_step
            self.losses.append(float(loss))
            metrics = _step_metrics(logs)
            self.metrics.append({"step": state.global_step, **metrics})
            signal = signals.extract(self.session.technique.objective.name, logs)
            self.signals.append({"step": state.global_step, **signal})
            elapsed = time.perf_counter() - (self.t_start or time.perf_counter())
            tokens = self.counter["tokens"]
            rate = tokens / elapsed if elapsed > 0 else 0.0
            left = max(0, (state.max_steps or 0) - state.global_step)
            eta = elapsed / state.global_step * left if state.global_step else None
            self.write({
                "event": "step", "step": state.global_step, "loss": float(loss),
                "lr": logs.get("learning_rate", logs.get("lr")), "tokens": tokens, "tokens_per_s": rate,
                "elapsed_s": elapsed, "eta_s": eta, "epoch": state.epoch, "metrics": metrics, "signal": signal,
            })

        def close(self, result: RunResult | None, error: str | None = None):
            ev = {"event": "end", "time": time.time()}
            if result is not None:
                ev.update(steps=result.steps, tokens_seen=result.tokens_seen, wall_s=result.wall_s,
                          tokens_per_s=result.tokens_per_s, final_loss=result.losses[-1] if result.losses else None,
                          peak_allocated_bytes=result.peak_allocated_bytes, output_dir=result.output_dir,
                          param_fingerprint_start=result.param_fingerprint_start,
                          param_fingerprints=result.param_fingerprints)
            if error:
                ev["error"] = error
            self.write(ev)
            if self.fh:
                self.fh.close()
                self.fh = None

    return StepLog


_NOT_METRICS = ("loss", "loss/policy_avg", "learning_rate", "lr", "epoch")


def _step_metrics(logs: dict) -> dict:
    """The finite numbers a trainer logged for a step, besides loss, learning rate and epoch."""
    out = {}
    for k, v in logs.items():
        if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v) if isinstance(v, float) else v
    return out


def _trainable(session: Session) -> list:
    """Parameters the optimizer updates: the policy's, plus PPO's value model's."""
    params = [p for p in session.model.parameters() if p.requires_grad]
    value = session.extra_models.get("value")
    if value is not None:
        seen = {id(p) for p in params}
        params += [p for p in value.parameters() if p.requires_grad and id(p) not in seen]
    return params


def param_fingerprint(params) -> list[float]:
    """[sum, L2 norm] in float64 over the given parameters: cheap on any device, and a change in
    any element moves it (a check that training changed the weights, and that data-parallel
    replicas hold the same ones). Sharded layouts (FSDP, ZeRO-3) fingerprint each rank's shard."""
    import torch

    total, sq = 0.0, 0.0
    with torch.no_grad():
        for p in params:
            t = p.detach()
            t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor: this rank's shard
            if t.numel() == 0:  # ZeRO-3 placeholders
                continue
            # float64 in chunks of 2^24 elements: no full-size float64 copy of a large embedding
            for chunk in t.reshape(-1).split(1 << 24):
                c = chunk.to(torch.float64)
                total += float(c.sum())
                sq += float(c.square().sum())
    return [total, math.sqrt(sq)]


def _gather_fingerprints(fp: list[float]) -> list[list[float]]:
    """Every process's fingerprint, in rank order (collective: all processes call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [fp]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, fp)
    return out


def _token_counter(model, counter: dict):
    """Count non-padding tokens of every forward pass that runs with gradients (training passes of
    the policy, not generation or reference passes)."""
    import torch

    def pre(_mod, args, kwargs):
        if not torch.is_grad_enabled():
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None:
            counter["tokens"] += int(mask.sum().item())
        elif ids is not None:
            counter["tokens"] += int(ids.numel())

    return model.register_forward_pre_hook(pre, with_kwargs=True)


def run(session: Session, callbacks=()) -> RunResult:
    """Train the session's trainer; save the result; return throughput, losses and peak memory."""
    import torch

    trainer = session.trainer
    counter = {"tokens": 0}
    log = _log_callback_cls()(session, counter)
    trainer.add_callback(log)
    for cb in callbacks:
        trainer.add_callback(cb)
    hook = _token_counter(session.model, counter)
    cuda = session.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resume = None
    if session.job.resume:
        # the newest checkpoint whose save finished; cut-off saves are skipped (see checkpoint_dirs)
        complete, incomplete = checkpoint_dirs(session.output_dir)
        if not complete:
            skipped = f" (incomplete, skipped: {', '.join(p.name for p in incomplete)})" if incomplete else ""
            raise FtAdvisorError("resume", f"no complete checkpoint found in {session.output_dir}{skipped}")
        resume = str(complete[-1])
    guard_checkpoint_saves(trainer)
    fp_start = param_fingerprint(_trainable(session))
    t0 = time.perf_counter()
    result = None
    try:
        ctx = contextlib.nullcontext()
        if session.technique.objective.own_training_loop and session.plan.precision.endswith("-mixed"):
            # cache_enabled=False: autocast keeps the low-precision copy of each trainable weight
            # until the outermost autocast region exits, so around a whole training loop every
            # forward would reuse the copies made at step 1 and the updates would never show
            # (the Trainer's own autocast is entered per step, so its cache is cleared each step).
            ctx = torch.autocast(device_type=session.device.split(":")[0], dtype=session.compute_dtype,
                                 cache_enabled=False)
        with ctx:
            trainer.train(resume_from_checkpoint=resume) if resume else trainer.train()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak_alloc = torch.cuda.max_memory_allocated() if cuda else None
        peak_res = torch.cuda.max_memory_reserved() if cuda else None
        fingerprints = _gather_fingerprints(param_fingerprint(_trainable(session)))
        out = None
        if session.job.save_final:
            out = save(session)
        result = RunResult(
            steps=int(trainer.state.global_step),
            losses=list(log.losses),
            tokens_seen=counter["tokens"],
            wall_s=wall,
            tokens_per_s=counter["tokens"] / wall if wall > 0 else 0.0,
            step_seconds=list(log.step_seconds),
            peak_allocated_bytes=peak_alloc,
            peak_reserved_bytes=peak_res,
            output_dir=out,
            metrics=list(log.metrics),
            signals=list(log.signals),
            param_fingerprint_start=fp_start,
            param_fingerprints=fingerprints,
        )
        return result
    except Exception as err:
        log.close(None, error=f"{type(err).__name__}: {err}")
        raise
    finally:
        hook.remove()
        if result is not None:
            log.close(result)


# --- checkpoints ----------------------------------------------------------------------------

CHECKPOINT_COMPLETE = "ftadvisor_complete.json"
"""Written into ``checkpoint-N/`` (atomically, last) once every file of that checkpoint is on disk.
A checkpoint directory without it is a save that was cut off (killed, disk full) and is never
resumed from."""

# errno values that mean "the storage refused the write": the user's to fix, not a crash
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
# how libraries word those when they do not raise OSError (safetensors' Rust "os error N", C stdio)
_STORAGE_WORDS = (("no space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC),
                  ("disk quota exceeded", errno.EDQUOT), ("os error 122", errno.EDQUOT),
                  ("read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
                  ("permission denied", errno.EACCES), ("os error 13", errno.EACCES))


def storage_errno(err: BaseException | None) -> int | None:
    """The errno of a refused write (disk full, quota, permission, read-only) behind ``err`` -- an
    OSError, or a library error that wraps or words one -- or None for any other failure."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        text = str(err).lower()
        for words, code in _STORAGE_WORDS:
            if words in text:
                return code
        err = err.__cause__ or err.__context__
    return None


def _checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith("checkpoint-") or not path.is_dir():
        return None
    tail = name[len("checkpoint-"):]
    return int(tail) if tail.isdigit() else None


def checkpoint_dirs(output_dir: str | os.PathLike | None) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) ``checkpoint-N`` directories under ``output_dir``, each oldest first.

    Complete means the completion marker is there: the HF Trainer writes a checkpoint file by file
    straight into its final name, so a directory alone proves nothing."""
    complete: list[tuple[int, Path]] = []
    incomplete: list[tuple[int, Path]] = []
    root = Path(output_dir) if output_dir else None
    if root is None or not root.is_dir():
        return [], []
    for path in root.iterdir():
        step = _checkpoint_step(path)
        if step is None:
            continue
        (complete if (path / CHECKPOINT_COMPLETE).is_file() else incomplete).append((step, path))
    return [p for _, p in sorted(complete)], [p for _, p in sorted(incomplete)]


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to the disk, so that the marker never outlives the data
    (a crash of the machine after the marker is written must not leave a marked, empty file)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def mark_checkpoint_complete(folder: str | os.PathLike, step: int) -> Path:
    """Flush ``folder`` and write its completion marker under a temporary name, then rename it
    (rename within a directory is atomic: the marker is either absent or whole)."""
    folder = Path(folder)
    _fsync_tree(folder)
    tmp = folder / f".{CHECKPOINT_COMPLETE}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"step": int(step), "time": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    marker = folder / CHECKPOINT_COMPLETE
    os.replace(tmp, marker)
    _fsync_dir(folder)
    return marker


def _low_disk(path: Path, limit: int = 64 * 2**20) -> bool:
    """Whether the file system holding ``path`` has less than ``limit`` bytes free."""
    import shutil

    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free < limit
            except OSError:
                return False
    return False


def guard_checkpoint_saves(trainer) -> None:
    """Make the trainer's checkpoint saves all-or-nothing.

    Wraps this trainer's ``_save_checkpoint`` (transformers ``Trainer``; every trl trainer we build
    inherits it): a leftover directory at the same step is cleared first, the marker is written
    only after every process has finished its part, and a save that fails (disk full, permission,
    killed) removes its partial directory, so that no later resume can pick it. A refused write
    is raised as an OSError with its errno, however the library worded it."""
    if getattr(trainer, "_ftadvisor_guarded", False):
        return
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    original = trainer._save_checkpoint

    def save_checkpoint(model, trial, *args, **kwargs):
        step = int(trainer.state.global_step)
        folder = Path(trainer._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        writer = trainer.args.should_save
        if writer and folder.exists():
            import shutil

            marker = folder / CHECKPOINT_COMPLETE
            if marker.is_file():
                marker.unlink()  # being rewritten: no longer complete until the new marker
            else:
                shutil.rmtree(folder)  # a cut-off save at this step: never mix its files with new ones
        trainer.accelerator.wait_for_everyone()  # no process writes into the folder before it is clear
        try:
            original(model, trial, *args, **kwargs)
            trainer.accelerator.wait_for_everyone()  # every process has written its shards
            if writer:
                mark_checkpoint_complete(folder, step)
        except BaseException as err:
            code = storage_errno(err)
            # torch.save words a full disk as "PytorchStreamWriter failed writing file ...: file write
            # failed" without an errno: call that a full disk when (almost) no space is left
            if code is None and isinstance(err, RuntimeError) and "write failed" in str(err) and _low_disk(folder):
                code = errno.ENOSPC
            if writer and folder.exists():
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            if code is not None and not isinstance(err, OSError):
                raise OSError(code, os.strerror(code), str(folder)) from err
            raise

    trainer._save_checkpoint = save_checkpoint
    trainer._ftadvisor_guarded = True


# --- saving and loading ---------------------------------------------------------------------


TRAIN_META = "ftadvisor_train.json"


def save(session: Session, out_dir: str | None = None) -> str:
    """Save the trained policy under ``out_dir/final`` in Hugging Face format: a peft adapter dir
    for the LoRA family, a full model dir otherwise, plus ``ftadvisor_modules.{json,safetensors}``
    for our adapter / memory-expert modules and ``ftadvisor_train.json`` (technique, plan, where the
    frozen base is and how it was quantized) for :func:`load_trained`."""
    from ftadvisor.train import modules as mods

    out = Path(out_dir or session.output_dir) / "final"
    out.mkdir(parents=True, exist_ok=True)
    model = session.model
    pissa_init = getattr(model, "_ftadvisor_pissa_init", None)
    if mods.module_spec(model) is not None:
        state = {k: v for k, v in model.state_dict().items() if mods.PREFIX not in k}
        model.save_pretrained(out, state_dict=state)
        mods.save_modules(model, out)
    elif pissa_init is not None and session.weights_source is not None:
        # the adapter as plain LoRA of the checkpoint trained on (see train.techniques.keep_initial_adapter)
        model.save_pretrained(out, path_initial_model_for_weight_conversion=pissa_init)
    elif pissa_init is not None:
        # a random-init base is saved below as the residual it became: the adapter fits it as it
        # is, marked as initialised (peft would otherwise run the PiSSA SVD again when loading)
        cfg = model.peft_config["default"]
        cfg.init_lora_weights, init = True, cfg.init_lora_weights
        try:
            model.save_pretrained(out)
        finally:
            cfg.init_lora_weights = init
    else:
        model.save_pretrained(out)
    session.tokenizer.save_pretrained(out)
    base_ref = None
    if hasattr(model, "peft_config"):
        base_ref = session.weights_source
        if base_ref is None:
            # Random-init base: no checkpoint to point the adapter at, so keep the frozen base
            # next to it.
            base = out / "base"
            if session._base_dir is not None:  # quantized runs saved the random base before loading it
                import shutil

                if not base.exists():
                    shutil.copytree(session._base_dir, base)
            else:
                _save_unadapted_base(model, base)
            base_ref = "base"
    meta = {
        "technique": session.technique.name,
        "plan": session.plan.model_dump(mode="json"),
        "base_model": base_ref,
        "quantization": session.quantization,
        "double_quant": session.plan.double_quant,
        "compute_dtype": str(session.compute_dtype).replace("torch.", ""),
    }
    (out / TRAIN_META).write_text(json.dumps(meta, indent=1))
    return str(out)


def _save_unadapted_base(peft_model, base_dir: Path) -> None:
    """Write the frozen base weights of a peft model (adapter tensors dropped, peft's
    ``base_layer`` names folded back) as a Hugging Face model dir."""
    inner = peft_model.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in inner.state_dict().items()
             if not any(t in k for t in PEFT_TUNER_PREFIXES)}
    inner.save_pretrained(base_dir, state_dict=state)


def load_trained(path: str | os.PathLike, device: str = "cpu", dtype=None, quantized: bool = True):
    """Load what :func:`save` wrote; returns (model, tokenizer).

    - peft adapter dirs: the base named in ftadvisor_train.json (a saved ``base/`` for random-init
      runs, else the checkpoint trained on; adapter_config's base_model_name_or_path as a fallback),
      quantized again as in training unless ``quantized=False``, then ``PeftModel.from_pretrained``;
    - full model dirs: ``from_pretrained``, plus our modules when ftadvisor_modules.json is there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftadvisor.train import modules as mods

    path = Path(path)
    if not path.is_dir():
        raise FtAdvisorError("path", f"{path} is not a directory")
    meta = json.loads((path / TRAIN_META).read_text()) if (path / TRAIN_META).is_file() else {}
    tok = AutoTokenizer.from_pretrained(path)
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base_ref = meta.get("base_model") or json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not base_ref:
            raise FtAdvisorError("path", f"{path}: the adapter names no base model")
        if (path / base_ref).is_dir():
            base_ref = str(path / base_ref)
        quant = meta.get("quantization", "none")
        if quantized and quant != "none":
            from ftadvisor.schema import TrainingPlan

            compute = getattr(torch, meta.get("compute_dtype", "bfloat16"))
            plan = TrainingPlan(double_quant=meta.get("double_quant", True))
            kw["quantization_config"] = _bnb_config(quant, plan, compute)
            kw["device_map"] = {"": device if device != "cuda" else 0}
        base_ref, rev = pretrained_source(base_ref)  # the base trained on, revision included
        base = AutoModelForCausalLM.from_pretrained(base_ref, **kw, **rev)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
        mods.load_modules(model, path)
    if "quantization_config" not in kw:
        model = model.to(device)
    return model.eval(), tok


MERGED_NOTE = "ftadvisor_merged.json"


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[str, str]:
    """Fold a saved peft adapter (what :func:`save` wrote for LoRA, DoRA, PiSSA, IA3 and their QLoRA
    variants) into its base and write a plain Hugging Face model with the tokenizer to ``out_dir``.

    The base is loaded unquantized in the run's compute dtype (fp32 runs: fp32; otherwise bf16/fp16):
    peft's ``merge_and_unload`` adds B A (x scaling) to each adapted weight, which needs real-valued
    weights. For a QLoRA run that means the 16-bit base checkpoint the nf4 weights were quantized from,
    not the nf4 weights themselves: the merged model is base + adapter, while training saw
    nf4(base) + adapter (the QLoRA paper's practice; the difference is the nf4 rounding error).
    Returns (out_dir, a one-line note for the user)."""
    quiet_known_warnings()
    import torch

    _quiet()

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        meta = json.loads((adapter_dir / TRAIN_META).read_text()) if (adapter_dir / TRAIN_META).is_file() else {}
        raise FtAdvisorError(
            "merge", f"{adapter_dir} holds no peft adapter (technique {meta.get('technique', 'unknown')}): only "
            "peft adapter runs can be merged; full fine-tuning already saved a whole model, and bottleneck adapters "
            "and memory experts are extra modules, not weight deltas",
            ["lora", "dora", "pissa", "ia3", "qlora (and their objectives, e.g. dpo+lora)"])
    meta = json.loads((adapter_dir / TRAIN_META).read_text()) if (adapter_dir / TRAIN_META).is_file() else {}
    dtype = getattr(torch, meta.get("compute_dtype", "float32"))
    if meta.get("plan", {}).get("precision") == "fp32":
        dtype = torch.float32
    model, tok = load_trained(adapter_dir, device="cpu", dtype=dtype, quantized=False)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    quant = meta.get("quantization", "none")
    note = (f"merged the adapter into its base in {str(dtype).replace('torch.', '')}")
    if quant != "none":
        note += (f" (the {quant} base was reloaded in 16-bit from its original weights: the merged model is "
                 f"base + adapter, without the {quant} rounding training saw)")
    (out / MERGED_NOTE).write_text(json.dumps({"adapter": str(adapter_dir), "dtype": str(dtype).replace("torch.", ""),
                                               "quantization_in_training": quant, "note": note}, indent=1))
    return str(out), note
