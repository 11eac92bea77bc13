"""The data that flows through ftadvisor: profiles in, plans in, estimates out.

All models are pydantic v2, frozen and ``extra="forbid"``; units are in the
field names (``_bytes``, ``_gib``, ``_tflops``, ``_gbps`` = GB/s).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# --------------------------------------------------------------------------
# Architecture: what the estimator derives from a Hugging Face config.json
# --------------------------------------------------------------------------

LinearGroup = Literal["attention", "mlp", "expert", "shared_expert", "router", "mixer"]


class LinearSpec(_Frozen):
    """One kind of ``nn.Linear`` inside the decoder layers (lm_head excluded)."""

    name: str
    """The module's attribute name in transformers (``q_proj``, ``query_key_value``, ``w1`` ...); what peft's ``target_modules`` matches."""
    group: LinearGroup
    """Which block it belongs to: attention, dense MLP, routed or shared expert, router, or another
    token mixer (``mixer``: SSM, linear attention, short convolution)."""
    in_features: int = Field(gt=0)
    """Input width."""
    out_features: int = Field(gt=0)
    """Output width."""
    bias: bool
    """Whether it has a bias vector."""
    count: int = Field(ge=0)
    """Instances in the whole model (layers x experts)."""
    input_source: str
    """Label of the tensor it reads; linears with the same label read the same tensor (q/k/v all read the attention input)."""

    @property
    def params_each(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    @property
    def params_total(self) -> int:
        return self.params_each * self.count


class ArchSpec(_Frozen):
    """Normalised architecture of a decoder-only (optionally MoE) transformer."""

    model_type: str
    """transformers ``model_type`` (llama, mixtral, qwen2, ...)."""
    vocab_size: int = Field(gt=0)
    """Rows of the embedding matrix."""
    hidden_size: int = Field(gt=0)
    """Residual stream width h."""
    num_layers: int = Field(gt=0)
    """Decoder layers L."""
    num_attention_heads: int = Field(gt=0)
    """Query heads a."""
    num_kv_heads: int = Field(gt=0)
    """Key/value heads (GQA/MQA when below a)."""
    head_dim: int = Field(gt=0)
    """Width of one attention head d (not always h/a, e.g. Gemma)."""
    intermediate_size: int = Field(ge=0)
    """Dense MLP width (0 when every layer is MoE)."""
    mlp_gated: bool
    """Gated MLP (SwiGLU/GeGLU: three matrices) or plain (two)."""
    norm: Literal["rmsnorm", "layernorm"]
    """Normalisation layer type."""
    norms_per_layer: int = Field(ge=1)
    """Norm modules over the hidden width in one decoder layer (2 for Llama, 4 for Gemma-2)."""
    parallel_attn_mlp: bool
    """Attention and MLP run in parallel off the same residual (phi-2, Falcon, GPT-NeoX parallel residual); whether they share the norm shows in ``LinearSpec.input_source``."""
    tie_word_embeddings: bool
    """lm_head shares the embedding matrix."""
    lm_head_bias: bool
    """lm_head has a bias (phi-2)."""
    linears: tuple[LinearSpec, ...]
    """Every linear layer in the decoder stack."""
    embedding_params: int = Field(ge=0)
    """Token embedding parameters."""
    lm_head_params: int = Field(ge=0)
    """Untied output projection parameters (0 when tied)."""
    norm_params: int = Field(ge=0)
    """All normalisation parameters (per-layer, q/k norms, final norm)."""
    other_params: int = Field(default=0, ge=0)
    """Parameters outside the above (rare)."""
    num_experts: int = Field(default=0, ge=0)
    """Routed experts per MoE layer (0 for a dense model)."""
    experts_per_token: int = Field(default=0, ge=0)
    """Experts each token is routed to (top-k)."""
    num_moe_layers: int = Field(default=0, ge=0)
    """Decoder layers whose MLP is a mixture of experts."""
    moe_intermediate_size: int = Field(default=0, ge=0)
    """Width of one routed expert's MLP."""
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    """Width of the always-on shared expert (0 if none)."""
    max_position_embeddings: int | None = None
    """Longest context the config declares."""
    layer_kinds: tuple[tuple[str, int], ...] = ()
    """Token-mixer kind -> decoder layers of that kind (``full_attention:gqa``, ``sliding_attention``,
    ``linear_attention``, ``ssm``, ``conv``); filled by the generic path (ftadvisor.derive)."""
    derived_by: str = "analytic family"
    """Which path produced this description: an analytic family (ftadvisor.architecture) or
    transformers' modelling code on the meta device (ftadvisor.derive)."""

    @model_validator(mode="after")
    def _bounded(self) -> "ArchSpec":
        """Sizes no model can have are errors (ftadvisor.validate.ARCH_LIMITS), also for an
        ArchSpec built by hand."""
        from ftadvisor.errors import FtAdvisorError
        from ftadvisor.validate import ARCH_LIMITS, ARCH_PARAMS_LIMIT

        for name, key in (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
                          ("num_layers", "num_hidden_layers"), ("num_attention_heads", "num_attention_heads"),
                          ("num_kv_heads", "num_key_value_heads"), ("head_dim", "head_dim"),
                          ("intermediate_size", "intermediate_size"), ("num_experts", "num_experts"),
                          ("experts_per_token", "num_experts_per_tok"), ("num_moe_layers", "num_hidden_layers"),
                          ("moe_intermediate_size", "moe_intermediate_size"),
                          ("shared_expert_intermediate_size", "shared_expert_intermediate_size")):
            if getattr(self, name) > ARCH_LIMITS[key]:
                raise FtAdvisorError(name, f"{getattr(self, name)} is larger than any model has "
                                     f"(at most {ARCH_LIMITS[key]:,})")
        if self.total_params > ARCH_PARAMS_LIMIT:
            raise FtAdvisorError("config", f"describes {self.total_params:.3g} parameters, more than any model has "
                                 f"(at most {ARCH_PARAMS_LIMIT:.0e})")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention_layers(self) -> int:
        """Layers with softmax attention: all of them, unless ``layer_kinds`` lists other token mixers."""
        if not self.layer_kinds:
            return self.num_layers
        return sum(n for kind, n in self.layer_kinds
                   if any(p.startswith(("full_attention", "sliding_attention")) for p in kind.split("+")))

    @property
    def total_params(self) -> int:
        return (
            self.embedding_params
            + self.lm_head_params
            + self.norm_params
            + self.other_params
            + sum(lin.params_total for lin in self.linears)
        )

    @property
    def active_params(self) -> int:
        """Parameters touched per token (routed experts counted top-k of num_experts)."""
        total = self.total_params
        if self.is_moe:
            expert = sum(lin.params_total for lin in self.linears if lin.group == "expert")
            total -= expert - expert * self.experts_per_token // self.num_experts
        return total


# --------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------


class ModelProfile(_Frozen):
    """A model: its Hugging Face config fields, where they came from, and the derived architecture."""

    id: str
    """Short lower-case id (``llama-3.1-8b``)."""
    name: str
    """Human-readable name."""
    hf_id: str | None = None
    """Hugging Face repository id the config comes from."""
    aliases: tuple[str, ...] = ()
    """Other names that resolve to this profile."""
    source: str
    """Where the config fields were copied from (URL of config.json)."""
    notes: str | None = None
    """Anything a user should know (gated repo, config quirks)."""
    config: dict[str, Any]
    """The Hugging Face ``config.json`` fields (architecture-relevant subset)."""
    arch: ArchSpec | None = None
    """Derived from ``config`` (``ftadvisor.profiles.resolve_model`` fills it in when it is missing)."""


NodeLink = Literal["nvlink", "pcie", "infinity-fabric", "c2c", "host"]


class NodeSpec(_Frozen):
    """The machine the GPUs sit in. In a hardware profile (``node:``) every field is optional: what
    is missing comes from the card's form factor (profiles/nodes.yaml, ftadvisor.host.node_for)."""

    form_factor: str | None = None
    """Key of profiles/nodes.yaml the defaults come from (hgx-hopper, pcie-cloud, consumer ...)."""
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    """GPUs in one node."""
    host_ram_gib: float | None = Field(default=None, gt=0, le=2**20)
    """Host (CPU) RAM of one node, GiB."""
    intra_node_link: NodeLink | None = None
    """How GPUs in a node talk: nvlink (NVSwitch/bridge), pcie, infinity-fabric, c2c (Grace Hopper), host (CPU only)."""
    p2p: bool | None = None
    """Whether GPUs in a node can read each other's memory directly (off on GeForce 40-series)."""
    inter_node_gbps: float | None = Field(default=None, gt=0, le=1e5)
    """Network bandwidth between nodes per GPU, GB/s per direction."""
    nvme_gib: float | None = Field(default=None, ge=0, le=2**30)
    """Local NVMe capacity of one node, GiB (0: none)."""
    nvme_read_gbps: float | None = Field(default=None, gt=0, le=1e5)
    """Aggregate NVMe sequential read bandwidth of one node, GB/s."""
    nvme_write_gbps: float | None = Field(default=None, gt=0, le=1e5)
    """Aggregate NVMe sequential write bandwidth of one node, GB/s."""
    host_link_gbps: float | None = Field(default=None, gt=0, le=1e5)
    """GPU<->host-memory link of one GPU, GB/s per direction (PCIe x16, NVLink-C2C); None: from the card's PCIe generation."""
    host_mem_gbps: float | None = Field(default=None, gt=0, le=1e5)
    """Peak DRAM bandwidth of one node's CPUs, GB/s (channels x MT/s x 8 B); CPU optimizers and host-staged collectives share it."""
    source: str | None = None
    """Where the figures come from (instance pages, system datasheets)."""


class HardwareProfile(_Frozen):
    """An accelerator (or the CPU) with the numbers the cost model needs."""

    id: str
    """Lower-case id with the memory size where the card comes in several (``a100-80gb``)."""
    name: str
    """Marketing name."""
    aliases: tuple[str, ...] = ()
    """Short forms that resolve to this profile (``a100``, ``rtx4090``)."""
    vendor: Literal["nvidia", "amd", "intel", "cpu"]
    """Maker, or ``cpu`` for host-only training."""
    memory_gib: float = Field(gt=0)
    """Device memory in GiB as the driver reports it (nvidia-smi total)."""
    bf16_dense_tflops: float | None = Field(default=None, gt=0)
    """Dense (no sparsity) BF16 tensor TFLOP/s; None where unsupported."""
    fp16_dense_tflops: float | None = Field(default=None, gt=0)
    """Dense FP16 tensor TFLOP/s."""
    tf32_dense_tflops: float | None = Field(default=None, gt=0)
    """Dense TF32 tensor TFLOP/s; None where unsupported."""
    fp32_tflops: float = Field(gt=0)
    """Plain FP32 (non-tensor) TFLOP/s."""
    fp8_dense_tflops: float | None = Field(default=None, gt=0)
    """Dense FP8 tensor TFLOP/s where the hardware has FP8."""
    hbm_bandwidth_gbps: float = Field(gt=0)
    """Device memory bandwidth, GB/s."""
    intra_node_bandwidth_gbps: float = Field(gt=0)
    """GPU-to-GPU bandwidth inside a node, GB/s per direction (NVLink, Infinity Fabric or PCIe)."""
    intra_node_link: str
    """Which link the intra-node figure is for."""
    inter_node_bandwidth_gbps: float = Field(gt=0)
    """Typical per-GPU network bandwidth between nodes, GB/s (a default; clusters differ)."""
    compute_capability: str | None = None
    """CUDA compute capability (``8.0``); None for non-NVIDIA."""
    supports_bnb_4bit: bool
    """bitsandbytes 4-bit (QLoRA) works on it."""
    supports_flash_attention: bool
    """FlashAttention-2 kernels work on it."""
    runtime_overhead_gib: float = Field(ge=0)
    """Device memory taken outside PyTorch's allocator: CUDA/ROCm context plus cuBLAS/cuDNN workspaces."""
    hourly_price_usd: float | None = Field(default=None, ge=0)
    """DEFAULT typical on-demand cloud price per GPU-hour; override it with your own."""
    price_note: str
    """Where the default price comes from and what it assumes."""
    source: str
    """Datasheet(s) the figures come from."""
    notes: str | None = None
    """Anything a user should know."""
    node: NodeSpec | None = None
    """The node the card usually sits in; missing fields come from its form factor (profiles/nodes.yaml)."""

    @model_validator(mode="after")
    def _finite(self) -> "HardwareProfile":
        """Every figure a finite number (infinite memory or bandwidth describes no hardware)."""
        import math

        from ftadvisor.errors import FtAdvisorError

        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise FtAdvisorError(name, f"must be a finite number, got {value!r}")
        if self.memory_gib > 2**20:
            raise FtAdvisorError("memory_gib", f"{self.memory_gib:g} GiB is more than any device has")
        return self

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


# --------------------------------------------------------------------------
# Training plan
# --------------------------------------------------------------------------

Sharding = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"]
Precision = Literal["bf16-mixed", "bf16-true", "fp16-mixed", "fp32"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd", "adafactor"]
Attention = Literal["sdpa", "flash", "eager"]
Quantization = Literal["none", "nf4", "int8"]
MoeTrain = Literal["all", "attention", "experts", "router"]


LORA_INITS = ("default", "gaussian", "pissa", "pissa_niter_N")
_LORA_INIT_RE = re.compile(r"(default|gaussian|pissa|pissa_niter_[1-9][0-9]{0,2})")


def check_lora_init(value) -> str:
    """``lora_init``: one of LORA_INITS, N a whole number from 1 to 999 (peft's fast-SVD iterations)."""
    from ftadvisor.errors import FtAdvisorError

    if not isinstance(value, str) or not _LORA_INIT_RE.fullmatch(value):
        raise FtAdvisorError("lora_init", f"unknown initialisation {str(value)[:60]!r}", LORA_INITS)
    return value


# Upper bounds of plan fields that have only a lower one in their declaration: larger values
# describe no run that can exist (and would overflow the cost model's floats).
PLAN_UPPER_BOUNDS: dict[str, float] = {
    "lora_alpha": 1e9,
    "adapter_bottleneck": 1_048_576,
    "lamini_num_experts": 16_777_216,
    "lamini_top_k": 16_777_216,
    "lamini_layers": 10_000,
    "rl_max_new_tokens": 10_000_000,
    "grpo_num_generations": 65_536,
    "grpo_beta": 1e9,
    "max_grad_norm": 1e9,
}
MAX_LORA_TARGETS = 1024
DEFAULT_RL_MAX_NEW_TOKENS = 512


def default_rl_max_new_tokens(seq_len):
    """``rl_max_new_tokens`` when the plan does not give it: 512, or half of ``seq_len`` when the
    sequence is not longer than that (a completion must leave room for a prompt). Works on numpy
    arrays of seq_len too (grids)."""
    from ftadvisor import _num

    half = seq_len // 2
    return _num.where(seq_len > DEFAULT_RL_MAX_NEW_TOKENS, DEFAULT_RL_MAX_NEW_TOKENS, _num.maximum(half, 1))


def _check_plan_bounds(plan) -> None:
    """Cross-field and range rules of a TrainingPlan beyond its field declarations."""
    import math

    from ftadvisor.errors import FtAdvisorError, shown

    for name, high in PLAN_UPPER_BOUNDS.items():
        value = getattr(plan, name)
        if value is None:
            continue
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite or value > high:
            raise FtAdvisorError(name, f"must be a finite number up to {high:g}, got {shown(value)}")
    if plan.max_grad_norm is not None and plan.max_grad_norm < 0:
        raise FtAdvisorError("max_grad_norm", f"must be >= 0 (or null: no clipping), got {shown(plan.max_grad_norm)}")
    targets = plan.lora_targets
    parts = targets.split(",") if isinstance(targets, str) else targets
    names = tuple(t.strip() for t in parts if t.strip())
    if not names:
        raise FtAdvisorError("lora_targets", f"names no module ({shown(targets)}); give all-linear or module "
                             "names such as q_proj,v_proj", ["all-linear"])
    if len(names) > MAX_LORA_TARGETS or any(len(t) > 200 for t in names):
        raise FtAdvisorError("lora_targets", f"too many or too long module names ({shown(targets)})")
    if plan.ppo_reward_model is not None:
        from ftadvisor.validate import name as check_name

        check_name("ppo_reward_model", plan.ppo_reward_model)


def check_prompt_room(plan, technique_name: str, generation: bool) -> None:
    """PPO/GRPO: ``seq_len`` is prompt + completion, so ``rl_max_new_tokens`` must be below it (the
    memory model's loss tokens, the speed model's prompt and the engine's data all read it so).
    Called by make_plan (which also gives the default) and by the memory model."""
    if generation and plan.rl_max_new_tokens >= plan.seq_len:
        from ftadvisor.errors import FtAdvisorError

        raise FtAdvisorError(
            "rl_max_new_tokens",
            f"{plan.rl_max_new_tokens} leaves no prompt: seq_len {plan.seq_len} is prompt + completion, so it "
            f"must be more than rl_max_new_tokens ({technique_name} generates the completion)")


class TrainingPlan(_Frozen):
    """One concrete way to fine-tune: technique plus every knob that changes cost."""

    technique: str = "lora"
    """Technique, optionally ``objective+method`` (``dpo+qlora``); see ``ftadvisor.techniques``."""
    num_gpus: int = Field(default=1, ge=1, le=65536)
    """GPUs in total, across all nodes."""
    num_nodes: int | None = Field(default=None, ge=1, le=8192)
    """Nodes the GPUs are spread over; None (not given): ceil(num_gpus / gpus_per_node) of the
    hardware's node, filled in by the estimator (ftadvisor.host.resolve_nodes)."""
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    """Override of the node's GPUs per node (profiles/nodes.yaml); None keeps the hardware's node."""
    host_ram_gib: float | None = Field(default=None, gt=0, le=2**20)
    """Override of the node's host RAM in GiB; None keeps the hardware's node."""
    offload_device: Literal["cpu", "nvme"] = "cpu"
    """Where cpu_offload puts offloaded state: cpu (host RAM; ZeRO-Offload, FSDP CPUOffload) or nvme
    (ZeRO-Infinity, DeepSpeed zero3 only: optimizer state and parameters on local NVMe)."""
    sharding: Sharding = "none"
    """Data-parallel layout: none (one GPU), ddp, zero1/2/3 (DeepSpeed) or fsdp (full shard)."""
    cpu_offload: bool = False
    """Offload optimizer state and fp32 master weights to CPU (and parameters under zero3/fsdp)."""
    precision: Precision = "bf16-mixed"
    """bf16-mixed: fp32 trainable weights + bf16 autocast; bf16-true: everything bf16; fp16-mixed; fp32."""
    optimizer: Optimizer = "adamw"
    """Optimizer (bitsandbytes for the 8-bit and paged ones)."""
    micro_batch_size: int = Field(default=1, ge=1, le=65536)
    """Sequences per GPU per forward/backward."""
    seq_len: int = Field(default=2048, ge=1, le=10_000_000)
    """Tokens per sequence (prompt + completion for RL)."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=100_000)
    """Micro-batches per optimizer step."""
    gradient_checkpointing: bool = True
    """Recompute each decoder layer in backward instead of storing its activations (on by default, as in trl's SFTConfig)."""
    attention: Attention = "sdpa"
    """Attention kernel: sdpa (PyTorch), flash (FlashAttention-2), eager (materialises scores)."""
    lora_r: int = Field(default=16, ge=1, le=65536)
    """LoRA/DoRA rank (also the rank of each Lamini memory expert)."""
    lora_alpha: float = Field(default=32, gt=0)
    """LoRA scaling numerator (no effect on memory)."""
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapter input; above 0 each adapted module stores its own dropped copy."""
    lora_targets: str | tuple[str, ...] = "all-linear"
    """``all-linear`` or HF module names (``q_proj``, ``v_proj`` ...)."""
    lora_init: str = "default"
    """How LoRA/DoRA matrices start, as peft's ``init_lora_weights``: default (A Kaiming-uniform, B
    zero), gaussian, pissa (A and B from the top-r singular vectors of each weight, the residual
    stays in the base; Meng et al. 2024) or pissa_niter_N (the same by N fast-SVD iterations)."""
    quantization: Quantization | None = None
    """Storage of the frozen base: none, nf4, int8; None takes the technique's default (nf4 for qlora)."""
    double_quant: bool = True
    """nf4 double quantization of the block constants (QLoRA paper section 3)."""
    packing: bool = False
    """Sequences packed to seq_len with no padding (affects throughput, not peak memory)."""
    varying_lengths: bool = False
    """Batches padded to their own longest sequence, so tensor sizes change from step to step
    (dynamic padding, trl's default collator); False: every batch is seq_len long (packing, or
    padding to max_length). Changes reserved memory, not allocated (ftadvisor.allocator)."""
    sft_chunked_loss: bool = True
    """SFT loss in chunks of 256 tokens (trl SFTConfig loss_type="chunked_nll", trl's default) instead of full logits ("nll")."""
    moe_train: MoeTrain = "all"
    """What of an MoE model full/half fine-tuning trains: all, attention only, experts, router."""
    half_ft_fraction: float = Field(default=0.5, gt=0, le=1)
    """Fraction of decoder layers half fine-tuning trains (HFT trains half)."""
    adapter_bottleneck: int = Field(default=64, ge=1)
    """Bottleneck width of Houlsby adapters."""
    lamini_num_experts: int = Field(default=1024, ge=1)
    """Memory experts in the Lamini-style bank (per adapted layer)."""
    lamini_top_k: int = Field(default=8, ge=1)
    """Memory experts selected per token."""
    lamini_layers: int = Field(default=4, ge=1)
    """Decoder layers (the top ones) that carry a memory-expert bank."""
    dpo_precompute_ref: bool = False
    """DPO: reference log-probs computed once up front, so no reference model stays in memory."""
    rl_max_new_tokens: int = Field(default=512, ge=1)
    """PPO/GRPO: generated tokens per completion; the prompt is ``seq_len`` minus this, so it must be
    below ``seq_len`` (make_plan's default: 512, or half of a ``seq_len`` of 512 or less)."""
    grpo_num_generations: int = Field(default=8, ge=2)
    """GRPO: completions per prompt (the group)."""
    grpo_beta: float = Field(default=0.0, ge=0)
    """GRPO: KL weight; above 0 a reference model is kept (trl's default is 0)."""
    ppo_reward_model: str | None = None
    """PPO: reward model (profile or config); None = same architecture as the policy."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (no memory effect; recorded for launch)."""
    framework: str = "hf-trl"
    """Training stack the estimate is for: hf-trl (what ``ftadvisor launch`` runs), axolotl, llama-factory,
    torchtune, litgpt, unsloth; each declares how it places memory (``ftadvisor.frameworks``)."""

    @model_validator(mode="after")
    def _check(self) -> "TrainingPlan":
        from ftadvisor.errors import FtAdvisorError

        if self.num_nodes is not None and self.num_gpus % self.num_nodes:
            raise FtAdvisorError("num_gpus", f"{self.num_gpus} GPUs cannot be split evenly over {self.num_nodes} nodes")
        if self.num_gpus > 1 and self.sharding == "none":
            object.__setattr__(self, "sharding", "ddp")
        if self.num_gpus == 1 and self.sharding in ("ddp",):
            object.__setattr__(self, "sharding", "none")
        if self.cpu_offload and self.sharding in ("none", "ddp", "zero1"):
            raise FtAdvisorError(
                "cpu_offload", f"needs sharding zero2, zero3 or fsdp (got {self.sharding})", ["zero2", "zero3", "fsdp"]
            )
        if self.offload_device == "nvme" and not (self.cpu_offload and self.sharding == "zero3"):
            raise FtAdvisorError(
                "offload_device", "nvme (ZeRO-Infinity) needs cpu_offload=true and sharding zero3 "
                f"(got cpu_offload={self.cpu_offload}, sharding {self.sharding})", ["cpu"])
        check_lora_init(self.lora_init)
        if self.lamini_top_k > self.lamini_num_experts:
            raise FtAdvisorError("lamini_top_k", "cannot exceed lamini_num_experts")
        _check_plan_bounds(self)
        return self


# --------------------------------------------------------------------------
# Estimate
# --------------------------------------------------------------------------


MEMORY_COMPONENTS = (
    "weights",
    "gradients",
    "optimizer_state",
    "master_weights",
    "activations",
    "logits",
    "extra_models",
    "generation_cache",
    "quantization_workspace",
    "communication",
    "framework_overhead",
)
"""The parts of the peak, in order; each is a ``<name>_bytes`` field of MemoryBreakdown."""


class MemoryBreakdown(_Frozen):
    """Per-GPU memory at the peak phase, in bytes. The components sum to ``peak_allocated_bytes``."""

    weights_bytes: int
    """Parameters of the trained model on this GPU (base + adapters), in their storage dtypes, quantization constants included."""
    gradients_bytes: int
    """Gradients of trainable parameters held at the peak."""
    optimizer_state_bytes: int
    """Optimizer moments on the device (paged state counted separately)."""
    master_weights_bytes: int
    """fp32 master copy (or, under torch autocast, the bf16 working copies) beyond the stored weights."""
    activations_bytes: int
    """Tensors saved for backward (or recomputation checkpoints) plus the working set of the layer in flight."""
    logits_bytes: int
    """Output logits and the loss' fp32 working tensors."""
    extra_models_bytes: int
    """Reference, reward and value models (DPO/PPO/GRPO)."""
    generation_cache_bytes: int
    """KV cache and sampling buffers while generating (PPO/GRPO)."""
    quantization_workspace_bytes: int
    """Transient dequantised weights (QLoRA) and DoRA weight-norm temporaries."""
    communication_bytes: int
    """DDP gradient buckets, FSDP/ZeRO gathered parameters and reduce buffers."""
    framework_overhead_bytes: int
    """Other allocations by the framework (CUDA RNG state, loss scaler, small buffers)."""
    peak_allocated_bytes: int
    """What ``torch.cuda.max_memory_allocated`` reports."""
    peak_reserved_bytes: int
    """What ``torch.cuda.max_memory_reserved`` reports: allocated plus caching-allocator slack, which
    depends on the framework's expandable_segments and on ``varying_lengths`` (ftadvisor.allocator)."""
    runtime_overhead_bytes: int
    """CUDA context and library workspaces outside the allocator."""
    paged_bytes: int
    """Paged optimizer state (unified memory): visible to nvidia-smi, evictable to host."""
    device_total_bytes: int
    """What nvidia-smi shows: reserved + runtime overhead + resident paged state."""
    host_bytes: int
    """Host RAM for offloaded state per GPU (0 without offload); see Estimate.host for the whole node."""
    peak_phase: str
    """Training phase at which the peak happens."""
    phases_bytes: dict[str, int]
    """Allocated bytes at each phase (forward/backward boundary, optimizer step, generation ...)."""
    weights_by_dtype_bytes: dict[str, int]
    """Weights split by storage dtype (bf16, fp32, nf4, int8 ...)."""

    def components(self) -> dict[str, int]:
        """The parts of the peak by name (``weights``, ``activations`` ...); they sum to peak_allocated_bytes."""
        return {c: getattr(self, f"{c}_bytes") for c in MEMORY_COMPONENTS}

    def largest_component(self) -> tuple[str, int]:
        """The biggest part of the peak: (name, bytes)."""
        return max(self.components().items(), key=lambda kv: kv[1])


# --------------------------------------------------------------------------
# Results of the speed and quality models (ftadvisor/speed.py, ftadvisor/quality.py)
# --------------------------------------------------------------------------


class SpeedEstimate(_Frozen):
    """Throughput of one plan on one GPU (and the whole job). Seconds are per optimizer step; the
    seven ``*_seconds`` components sum to ``seconds_per_optimizer_step``."""

    model_id: str
    """Model profile id."""
    hardware_id: str
    """Hardware profile id."""
    technique: str
    """Canonical technique name."""
    tokens_per_second_per_gpu: float = Field(ge=0)
    """Trained sequence positions per second on one GPU (chosen and rejected both count for DPO/ORPO;
    prompt + completion of each rollout, counted once, for PPO/GRPO)."""
    tokens_per_second_total: float = Field(ge=0)
    """tokens_per_second_per_gpu x num_gpus."""
    fused_tokens_per_second_per_gpu: float = Field(ge=0)
    """Bound for a fully fused stack (torch.compile, hand-fused kernels): the same step with the
    non-matmul traffic and the host's dispatch time taken out (dequantization kept)."""
    tokens_per_optimizer_step: float = Field(ge=0)
    """Sequence positions per optimizer step over all GPUs (micro-batch x sequences per example x
    seq_len x accumulation x GPUs)."""
    seconds_per_optimizer_step: float = Field(gt=0)
    """Wall-clock seconds of one optimizer step."""
    mfu: float = Field(ge=0)
    """Model FLOPs utilisation: model_flops_per_token x tokens/s per GPU / dense peak (PaLM App. B)."""
    hfu: float = Field(ge=0)
    """Hardware FLOPs utilisation: flops_per_token (recomputation included) x tokens/s per GPU / peak."""
    flops_per_token: float = Field(ge=0)
    """FLOPs executed per trained token: forward, backward, recomputation, adapters, extra passes
    (reference/reward/value forwards), generation excluded."""
    model_flops_per_token: float = Field(ge=0)
    """flops_per_token without recomputation (the numerator of MFU)."""
    peak_tflops: float = Field(gt=0)
    """Dense peak the plan's precision runs at (datasheet)."""
    compute_seconds: float = Field(ge=0)
    """Matmuls and fused attention at the achievable fraction of the peak."""
    memory_bound_seconds: float = Field(ge=0)
    """Non-matmul kernels (norms, activations, casts, loss, LoRA/DoRA tensors, dequantization) and
    matmuls limited by reading their weights, at the achievable memory bandwidth."""
    launch_overhead_seconds: float = Field(ge=0)
    """Time the GPU waits for the host to dispatch eager kernels (small batches, decoding)."""
    communication_seconds: float = Field(ge=0)
    """Data-parallel collectives not hidden behind compute."""
    optimizer_seconds: float = Field(ge=0)
    """The optimizer step's memory traffic (on the host under CPU offload), gradient clipping."""
    generation_seconds: float = Field(ge=0)
    """PPO/GRPO sampling (prefill and decoding) per optimizer step."""
    offload_seconds: float = Field(ge=0)
    """Host-link traffic: CPU offload and paged optimizer state that does not fit on the device."""
    bottleneck: str
    """The largest of the seven components."""
    samples_per_optimizer_step: float = Field(ge=0)
    """Sequences (completions for PPO/GRPO, pairs count twice for DPO/ORPO) per optimizer step, all GPUs."""
    seconds_per_sample: float | None = None
    """PPO/GRPO: seconds per generated-and-trained completion (whole job); None otherwise."""
    generated_tokens_per_second: float | None = None
    """PPO/GRPO: completion tokens sampled per second per GPU while generating; None otherwise."""
    reference_pass_seconds_per_token: float = Field(default=0.0, ge=0)
    """DPO with precomputed reference log-probs: one-off reference forward cost per token (paid once
    per example before training, see estimate_time_cost); 0 otherwise."""
    efficiency_class: str
    """Row of ftadvisor.speed.EFFICIENCY used (achievable matmul, attention and bandwidth fractions)."""
    assumptions: tuple[str, ...]
    """What the numbers assume (kernels, overlap, links, defaults of trl/transformers)."""
    sources: tuple[str, ...]
    """Papers, measurements and library files the formulas come from."""


class TimeCostEstimate(_Frozen):
    """Wall-clock time and price of a whole fine-tuning job."""

    wall_clock_hours: float = Field(ge=0)
    """Hours from the first to the last optimizer step (loading, evaluation and saving excluded)."""
    gpu_hours: float = Field(ge=0)
    """wall_clock_hours x num_gpus."""
    cost_usd: float | None
    """gpu_hours x hourly price per GPU; None when neither the hardware profile nor the caller gives a price."""
    hourly_price_usd: float | None
    """Price per GPU-hour used."""
    price_source: str
    """Where the price comes from (the profile's default, or the caller)."""
    optimizer_steps: int = Field(ge=0)
    """Optimizer steps over all epochs (the last partial step counted whole)."""
    tokens_processed: float = Field(ge=0)
    """Sequence positions processed over all epochs, padding included."""
    epochs: float = Field(gt=0)
    """Passes over the data."""
    seconds_per_sample: float | None = None
    """PPO/GRPO: seconds per generated-and-trained completion (whole job)."""
    assumptions: tuple[str, ...] = ()
    """How the data size was turned into sequence positions."""


# --------------------------------------------------------------------------------------------
# Pure formulas
# --------------------------------------------------------------------------------------------


Strength = Literal["weak", "moderate", "strong"]


class Citation(_Frozen):
    """One published figure behind an estimate."""

    source: str
    """Paper or repository (authors, year, title, arXiv id)."""
    where: str
    """Table, figure or section (and setting) the figure comes from."""
    figure: str
    """The figure used, in words, with the published numbers."""
    value: float | None = None
    """The ratio the model uses (technique / reference); None for a qualitative statement."""
    url: str | None = None
    """Link to the source."""
    checked: bool
    """True when the published numbers were re-read for this evidence file; False when taken from a collection."""


class QualityEstimate(_Frozen):
    """Expected quality of one technique on one task family, relative to full fine-tuning."""

    technique: str
    """Canonical technique name (``dpo+qlora``)."""
    task: str
    """Task family: chat, domain, code, math, preference, rl or facts."""
    data_regime: str
    """small, medium or large (derived from the number of examples when given)."""
    applicable: bool
    """False when the technique's objective does not use the task's training signal (SFT on preference
    pairs or a reward; a preference/RL objective on a corpus or a fact list)."""
    relative_to_full: float = Field(ge=0)
    """Expected target-task quality relative to full fine-tuning with the task's reference objective (= 1.0)."""
    low: float = Field(ge=0)
    """Low end of the range; at least as wide as the spread of the evidence."""
    high: float = Field(ge=0)
    """High end of the range."""
    retention: float = Field(ge=0, le=1)
    """Share of the base model's general ability kept (HellaSwag/ARC-C/WinoGrande average vs the base model)."""
    retention_low: float = Field(ge=0, le=1)
    """Low end of the retention range."""
    retention_high: float = Field(ge=0, le=1)
    """High end of the retention range."""
    sources: tuple[Citation, ...]
    """Every figure used (point and range), in the order the factors apply."""
    notes: str
    """Plain words: which evidence, how it was combined, caveats."""
    evidence_strength: Strength
    """strong (controlled comparisons re-read), moderate (one study or not re-read), weak (vendor claims,
    analogy, extrapolation)."""

    @model_validator(mode="after")
    def _ordered(self) -> "QualityEstimate":
        if not (self.low <= self.relative_to_full <= self.high):
            raise ValueError(f"range {self.low}..{self.high} does not contain {self.relative_to_full}")
        if not (self.retention_low <= self.retention <= self.retention_high):
            raise ValueError("retention range does not contain the point")
        return self


class HostMemory(_Frozen):
    """Host (CPU) RAM and NVMe of one node at the plan's peak (ftadvisor.host.host_memory)."""

    node: NodeSpec
    """The node used (form-factor defaults, profile fields and plan overrides merged)."""
    gpus_on_node: int
    """GPUs (processes) on the busiest node."""
    per_gpu_bytes: dict[str, int]
    """Host bytes of one GPU's process by term (offloaded_params, offloaded_optimizer, offloaded_grads,
    swap_buffers, process_baseline, loading)."""
    node_bytes: dict[str, int]
    """Node-level terms (checkpoint_gather on the first node)."""
    bytes_per_node: int
    """Host RAM needed on the busiest node: per-GPU terms x gpus_on_node + node terms."""
    capacity_bytes: int
    """The node's host RAM."""
    nvme_bytes_per_node: int
    """State offloaded to NVMe on one node (offload_device nvme)."""
    nvme_capacity_bytes: int
    """The node's NVMe capacity."""
    fits: bool
    """Host RAM and NVMe both within the node's."""


class Estimate(_Frozen):
    """The answer for one (model, hardware, plan)."""

    model_id: str
    """Model profile id (or ``config:<name>`` for a raw config)."""
    hardware_id: str
    """Hardware profile id."""
    plan: TrainingPlan
    """The fully resolved plan."""
    technique: str
    """Canonical technique name (``dpo+qlora``)."""
    total_params: int
    """Parameters of the base model (what transformers counts)."""
    trainable_params: int
    """Parameters receiving gradients (adapters, trained layers, value head ...)."""
    memory: MemoryBreakdown
    """Per-GPU memory."""
    fits: bool
    """Device total within the card's memory, and host RAM (and NVMe) within the node's."""
    host: HostMemory | None = None
    """Host RAM per node and its terms (ftadvisor.host)."""
    headroom_bytes: int
    """Card memory minus device total (negative when it does not fit)."""
    warnings: tuple[str, ...] = ()
    """Caveats a user should read."""
    corrections: tuple[str, ...] = ()
    """Calibration corrections applied (file, samples, residual)."""
    architecture_source: str = "analytic family"
    """Which path described the model (``ArchSpec.derived_by``): an analytic family, or transformers'
    modelling code on the meta device (ftadvisor.derive)."""
    speed: SpeedEstimate | None = None
    """Throughput, step time and MFU (``ftadvisor.speed``), when asked for."""
    time_cost: TimeCostEstimate | None = None
    """Wall-clock time and cost for a dataset size, when one is given."""
    quality: QualityEstimate | None = None
    """Expected quality relative to full fine-tuning for a task family, when one is given."""
