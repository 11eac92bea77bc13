"""The per-GPU memory model: pure functions, each citing where its formula comes from.

Evaluation happens in two stages:

1. :func:`build_layout` looks at everything *categorical* in a plan (technique,
   precision, sharding, optimizer, attention kernel, checkpointing, LoRA
   targets ...) and the model's architecture, and decides which parameters are
   trained, adapted, frozen or quantized, and which tensors each decoder layer
   keeps for backward. The result is a small frozen :class:`Layout`.
2. :func:`evaluate` turns a layout plus the *numeric* knobs (micro-batch,
   sequence length, LoRA rank, accumulation, GPU count ...) into byte counts.
   Its arithmetic works on Python numbers and on numpy arrays alike, which is
   how :func:`ftadvisor.estimate_grid` evaluates tens of thousands of plans at
   once.

Conventions: ``c`` is the compute dtype's size in bytes (2 for bf16/fp16, 4 for
fp32); ``h`` hidden size; ``I`` MLP width; ``a``/``kv`` query/key-value heads;
``d`` head dim; ``V`` vocabulary; ``T`` tokens per micro-batch on one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftadvisor import _num
from ftadvisor.errors import FtAdvisorError
from ftadvisor.frameworks import get_framework
from ftadvisor.frameworks.base import Framework
from ftadvisor.frameworks.hf_trl import HfTrl
from ftadvisor.schema import MEMORY_COMPONENTS, ArchSpec, HardwareProfile, LinearSpec, TrainingPlan, check_prompt_room
from ftadvisor.techniques import METHODS, Technique

GIB = 2**30
MIB = 2**20

# --- storage sizes --------------------------------------------------------------------------

# NF4 (QLoRA paper, Dettmers et al. 2023, section 3 "Double Quantization"): 4 bits per
# weight plus one fp32 absmax per block of 64 (0.5 bit/param); with double quantization
# the absmax values are themselves quantized to 8 bit with one fp32 constant per 256
# blocks: 8/64 + 32/(64*256) = 0.127 bit/param. bitsandbytes Params4bit uses these block
# sizes (bitsandbytes/functional.py quantize_4bit, blocksize=64; nested blocksize=256).
NF4_BYTES = 0.5 + 32 / 64 / 8
NF4_DQ_BYTES = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8


def int8_bytes_per_param(in_features: int) -> float:
    """LLM.int8 (Dettmers et al. 2022; bitsandbytes Linear8bitLt): 1 byte per weight plus one
    fp32 scale per output row (SCB), i.e. 4/in_features bytes per weight."""
    return 1 + 4 / in_features


# Optimizer state bytes per trainable parameter.
# - adamw: two moments in the parameter's dtype (torch/optim/adamw.py: exp_avg, exp_avg_sq
#   are zeros_like(param)) -> 2 * param bytes.
# - 8-bit AdamW (Dettmers et al. 2021, "8-bit Optimizers via Block-wise Quantization";
#   bitsandbytes/optim/optimizer.py): two uint8 states plus one fp32 absmax per block of
#   256 per state: 2 * (1 + 4/256). Tensors under 4096 elements keep 32-bit state
#   (min_8bit_size), negligible in size.
# - paged variants hold the same bytes in CUDA unified memory (evictable to host).
# - sgd: torch SGD with momentum=0 (transformers' "sgd" optim) keeps no state.
# - adafactor: factored second moment, rows + cols floats per matrix, no first moment
#   (Shazeer & Stern 2018, Alg. 4; transformers Adafactor with beta1=None).
ADAM8_BYTES = 2 * (1 + 4 / 256)


# --- layouts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearRole:
    spec: LinearSpec
    trained_fraction: float
    """Share of its instances whose weight is trained (1 full, 0.5 in HFT, 0 frozen)."""
    adapted: bool
    """Carries LoRA/DoRA matrices."""
    quantized: str
    """'none', 'nf4' or 'int8' for its frozen storage."""


@dataclass(frozen=True)
class Layout:
    """Everything categorical about a plan, resolved against the architecture."""

    arch: ArchSpec
    technique: Technique
    hardware: HardwareProfile
    precision: str
    sharding: str
    cpu_offload: bool
    optimizer: str
    attention: str
    checkpointing: bool
    quantization: str
    double_quant: bool
    roles: tuple[LinearRole, ...]
    embed_trained: bool
    lm_head_trained: bool
    norm_trained_fraction: float
    half_ft_layers: int
    added_layers: int
    """Decoder layers carrying modules the method adds (adapters in all, memory experts in the top few)."""
    dropout: bool
    sft_chunked_loss: bool
    reference_copy: bool
    """A separate frozen reference model is resident (DPO/PPO/GRPO with a full-weight method)."""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    reward_arch: ArchSpec | None = None
    """PPO's reward model when the plan names one (``ppo_reward_model``); None = the policy's architecture."""
    framework: type[Framework] = HfTrl
    """The training stack (``plan.framework``): its declarations below are read from it."""
    kbit_fp32_upcast: bool = True
    """Next to a quantized base the other parameters and the residual stream are fp32 (peft's
    prepare_model_for_kbit_training), as the framework's ``dtypes`` declares."""
    kv_expanded: bool = False
    """K/V copied to all query heads before the attention kernel (framework ``attention``)."""
    checkpoint_offload: bool = False
    """Checkpointed layer inputs live in host memory (framework ``checkpointing.offload``)."""
    optimizer_in_backward: bool = False
    """Each parameter steps in backward and frees its gradient (framework ``optimizer``)."""
    head_lora: bool = False
    """LoRA matrices on the lm_head (``lora_targets`` names lm_head)."""
    embed_lora: bool = False
    """LoRA matrices on the input embedding (``lora_targets`` names embed_tokens; peft lora.Embedding)."""

    # dtype sizes ----------------------------------------------------------
    @property
    def c(self) -> int:
        """Compute/activation dtype bytes."""
        return 4 if self.precision == "fp32" else 2

    @property
    def trainable_bytes(self) -> int:
        """Bytes per stored trainable parameter: fp32 masters under *-mixed and fp32, bf16 under bf16-true."""
        return 2 if self.precision == "bf16-true" else 4

    @property
    def frozen_bytes(self) -> int:
        """Frozen, non-quantized parameters: compute dtype; fp32 when peft's
        prepare_model_for_kbit_training upcasts them next to a quantized base
        (peft/utils/other.py: 'cast all non INT8 parameters to fp32'), as trl does."""
        if self.quantization != "none" and self.precision != "bf16-true" and self.kbit_fp32_upcast:
            return 4
        if self.precision in ("bf16-mixed", "fp16-mixed") and self.framework.dtypes.mixed_frozen_fp32:
            return 4  # the framework keeps the unconverted fp32 module (its dtypes declaration)
        return self.c

    @property
    def zero(self) -> bool:
        return self.sharding in ("zero1", "zero2", "zero3")


# Modules outside the decoder layers peft can put LoRA on when named in target_modules: the output
# layer (an nn.Linear -> lora.Linear) and the input embedding (nn.Embedding -> lora.Embedding,
# peft/tuners/lora/layer.py). peft's "all-linear" leaves the output layer out.
EMBEDDING_LORA_TARGETS = ("lm_head", "embed_tokens")


def resolve_lora_targets(arch: ArchSpec, targets) -> set[str]:
    """peft target_modules names for plan.lora_targets (shared by the estimator and the engine).
    ``lm_head`` and ``embed_tokens`` may be named too, alone or beside ``all-linear``."""
    names = {lin.name for lin in arch.linears}
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    outer = {t for t in targets if t in EMBEDDING_LORA_TARGETS}
    if outer:
        rest = tuple(t for t in targets if t not in EMBEDDING_LORA_TARGETS)
        return (resolve_lora_targets(arch, rest) if rest else set()) | outer
    if targets == "all-linear" or targets == ("all-linear",):
        # peft's "all-linear" targets every nn.Linear but the output layer (peft/tuners/tuners_utils.py
        # _maybe_include_all_linear_layers). Routed experts stored as fused 3-D parameters and the
        # router are not nn.Linear in transformers 5, so they are left out here too.
        return {lin.name for lin in arch.linears if lin.group not in ("expert", "router")}
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    linear = {lin.name for lin in arch.linears if lin.group not in ("expert", "router")}
    bad = [t for t in targets if t not in names]
    if bad:
        raise FtAdvisorError("lora_targets", f"{', '.join(bad)} not in this model",
                             ["all-linear", *sorted(linear), *EMBEDDING_LORA_TARGETS])
    fused = [t for t in targets if t not in linear]
    if fused:
        raise FtAdvisorError(
            "lora_targets",
            f"{', '.join(fused)} are routed experts or the router, stored as fused parameters (not nn.Linear) "
            "in transformers 5, so LoRA cannot target them",
            ["all-linear", *sorted(linear)],
        )
    return set(targets)


# MoE selection (plan.moe_train): which linear groups train.
_MOE_GROUPS = {"attention": ("attention", "mixer"), "experts": ("expert", "shared_expert"), "router": ("router",)}


def _base_quantization(arch: ArchSpec, m, plan: TrainingPlan) -> str:
    """The frozen base's storage: the plan's choice or the method's default, where it makes sense."""
    if m.requires_moe and not arch.is_moe:
        raise FtAdvisorError("technique", f"{m.name} needs a mixture-of-experts model; {arch.model_type} is dense")
    if plan.moe_train != "all" and not arch.is_moe:
        raise FtAdvisorError("moe_train", f"only applies to MoE models; {arch.model_type} is dense", ["all"])
    quant = plan.quantization if plan.quantization is not None else m.default_quantization
    if quant != "none" and not m.peft:
        peft_methods = "/".join(n for n, x in METHODS.items() if x.peft)
        raise FtAdvisorError("quantization", f"{quant} stores a frozen base; {m.name} trains base weights, "
                             f"use {peft_methods}", ["none"])
    if quant == "none" and m.quantized_base:
        raise FtAdvisorError("quantization", f"{m.name} means a quantized base", ["nf4", "int8"])
    if plan.lora_init != "default" and not m.lora:
        raise FtAdvisorError("lora_init", f"sets how LoRA matrices start; {m.name} has none", ["default"])
    if plan.lora_init.startswith("pissa") and quant != "none":
        # peft's pissa_init takes the SVD of a float weight and refuses a bitsandbytes one
        # (peft/tuners/lora/layer.py pissa_init); the PiSSA recipe quantizes the residual afterwards.
        raise FtAdvisorError("lora_init", f"PiSSA needs an unquantized base (it rewrites each weight as its "
                             f"SVD residual); {quant} is not", ["default", "gaussian"])
    return quant


def _linear_roles(arch: ArchSpec, m, plan: TrainingPlan, quant: str, half_layers: int) -> tuple[LinearRole, ...]:
    """Each decoder linear's trained share, LoRA adaptation and storage, as the method declares."""
    targets = resolve_lora_targets(arch, plan.lora_targets) if m.lora else set()
    moe_sel = plan.moe_train if arch.is_moe else "all"
    roles = []
    for lin in arch.linears:
        selected = moe_sel == "all" or lin.group in _MOE_GROUPS[moe_sel]
        if m.base_training == "all":
            frac = 1.0 if selected else 0.0
        elif m.base_training == "half_layers":
            frac = half_layers / arch.num_layers if selected else 0.0
        else:
            frac = 0.0
        roles.append(
            LinearRole(
                spec=lin,
                trained_fraction=frac,
                # routed experts share names with shared experts (gate_proj ...) but are fused
                # parameters that neither peft nor bitsandbytes touch in transformers 5
                adapted=lin.name in targets and lin.group not in ("expert", "router"),
                quantized=quant if (m.peft and lin.group not in ("router", "expert")) else "none",
            )
        )
    return tuple(roles)


def _layout_warnings(arch: ArchSpec, m, hardware: HardwareProfile, plan: TrainingPlan, quant: str) -> tuple[str, ...]:
    warnings = []
    if quant != "none" and plan.sharding in ("zero3", "fsdp"):
        warnings.append("quantized base under zero3/fsdp: bitsandbytes weights are sharded only with recent accelerate/peft; "
                        "the estimate assumes they shard like bf16 weights")
    if plan.attention == "flash" and not hardware.supports_flash_attention:
        warnings.append(f"FlashAttention-2 does not run on {hardware.name}; use sdpa")
    if quant == "nf4" and not hardware.supports_bnb_4bit:
        warnings.append(f"bitsandbytes 4-bit is not supported on {hardware.name}")
    if plan.precision.startswith("bf16") and hardware.vendor != "cpu" and hardware.bf16_dense_tflops is None:
        warnings.append(f"{hardware.name} has no bf16 support; use fp16-mixed")
    if arch.max_position_embeddings and plan.seq_len > arch.max_position_embeddings:
        warnings.append(f"seq_len {plan.seq_len} exceeds the model's max_position_embeddings {arch.max_position_embeddings}")
    if m.lora and arch.is_moe and plan.lora_targets == "all-linear":
        warnings.append("all-linear LoRA on an MoE model adapts attention (and shared experts), not the routed experts")
    if plan.optimizer.startswith("paged") and hardware.vendor == "cpu":
        warnings.append("paged optimizers page between GPU and host; on the CPU they behave like the unpaged ones")
    return tuple(warnings)


def check_micro_batch(technique: Technique, micro_batch) -> None:
    """The objective's smallest micro-batch (KTO estimates its KL term inside the micro-batch)."""
    least = technique.objective.min_micro_batch
    if micro_batch < least:
        raise FtAdvisorError("micro_batch_size", f"{technique.name} needs at least {least} sequences per micro-batch "
                             f"({technique.objective.name}: trl's trainer refuses fewer)")


def reward_model_arch(plan: TrainingPlan) -> ArchSpec | None:
    """The architecture of the reward model ``plan.ppo_reward_model`` names (a profile id, a
    config.json or a checkpoint directory, as the engine loads it); None when it names none. A name
    that resolves to no model is an error for every technique, never ignored."""
    name = getattr(plan, "ppo_reward_model", None)
    if name is None:
        return None
    from ftadvisor.profiles import resolve_model

    try:
        return resolve_model(name).arch
    except FtAdvisorError as err:
        where = "ppo_reward_model" if err.field == "model" else f"ppo_reward_model ({err.field})"
        raise FtAdvisorError(where, err.message, err.choices) from None


def reward_model_bytes(lay: Layout) -> float:
    """PPO's frozen reward model: a sequence classifier, so the lm_head (V x h) is replaced by a
    one-output score head (h) (transformers AutoModelForSequenceClassification). The policy's
    architecture (in its storage: quantized with the base) unless ``ppo_reward_model`` names
    another model, which the engine loads unquantized in the compute dtype (train/engine.py
    build_reward_model)."""
    ra = lay.reward_arch
    if ra is None:
        return frozen_copy_bytes(lay) - lay.arch.lm_head_params * lay.c + lay.arch.hidden_size * lay.c
    return (ra.total_params - ra.lm_head_params + ra.hidden_size) * lay.c


def build_layout(arch: ArchSpec, technique: Technique, hardware: HardwareProfile, plan: TrainingPlan) -> Layout:
    """Decide, for every parameter group, whether it is trained, adapted, frozen or quantized."""
    m = technique.method
    check_micro_batch(technique, plan.micro_batch_size)
    check_prompt_room(plan, technique.name, technique.objective.generation)
    reward_arch = reward_model_arch(plan)
    reward_note = ()
    if reward_arch is not None and not technique.objective.reward_model:
        reward_note = (f"ppo_reward_model is used by PPO only; {technique.name} ignores it",)
    quant = _base_quantization(arch, m, plan)
    fw = get_framework(getattr(plan, "framework", "hf-trl"))
    head_lora, embed_lora = _embedding_lora(arch, technique, plan, fw)
    half_layers = m.trained_layers(arch, plan) if m.base_training == "half_layers" else 0
    train_embed = m.base_training == "all" and (plan.moe_train if arch.is_moe else "all") == "all"
    if m.norm_training == "trained_layers":
        norm_frac = half_layers / arch.num_layers
    elif m.norm_training == "all":
        norm_frac = 1.0
    else:
        norm_frac = 1.0 if train_embed else 0.0
    return Layout(
        arch=arch,
        technique=technique,
        hardware=hardware,
        precision=fw.dtypes.precision(plan.precision, quant != "none"),
        sharding=plan.sharding,
        cpu_offload=plan.cpu_offload,
        optimizer=plan.optimizer,
        attention=plan.attention,
        checkpointing=fw.checkpointing.applies(plan),
        quantization=quant,
        double_quant=plan.double_quant,
        roles=_linear_roles(arch, m, plan, quant, half_layers),
        embed_trained=train_embed,
        lm_head_trained=train_embed,
        norm_trained_fraction=norm_frac,
        half_ft_layers=half_layers,
        added_layers=m.added_layers(arch, plan),
        dropout=plan.lora_dropout > 0,
        sft_chunked_loss=plan.sft_chunked_loss and fw.loss.trl_chunked,
        reference_copy=technique.objective.uses_reference(plan) and not m.peft,
        warnings=_layout_warnings(arch, m, hardware, plan, quant) + reward_note
        + fw.notes(plan, m.base_training != "none", quant != "none", technique.objective.sft_loss),
        reward_arch=reward_arch if technique.objective.reward_model else None,
        framework=fw,
        kbit_fp32_upcast=fw.dtypes.kbit_fp32_upcast,
        kv_expanded=fw.attention.kv_expanded,
        checkpoint_offload=fw.checkpointing.offload == "layer_inputs" and fw.checkpointing.applies(plan),
        optimizer_in_backward=fw.optimizer.in_backward(m.base_training != "none", plan),
        head_lora=head_lora,
        embed_lora=embed_lora,
    )


def _embedding_lora(arch: ArchSpec, technique: Technique, plan: TrainingPlan, fw) -> tuple[bool, bool]:
    """Whether LoRA sits on the lm_head and on the input embedding. trl's chunked_nll loss reads the
    lm_head weight directly and refuses a PEFT-wrapped lm_head (trl/trainer/sft_trainer.py
    SFTTrainer.__init__), so that combination is the user's to resolve."""
    m = technique.method
    if not m.lora:
        return False, False
    targets = resolve_lora_targets(arch, plan.lora_targets)
    head, embed = "lm_head" in targets, "embed_tokens" in targets
    if head and technique.objective.sft_loss and plan.sft_chunked_loss and fw.loss.trl_chunked:
        raise FtAdvisorError("sft_chunked_loss", "trl's chunked loss refuses LoRA on lm_head (it reads the lm_head "
                             "weight directly); set sft_chunked_loss=false, or drop lm_head from lora_targets",
                             ["false"])
    return head, embed


# --- parameters -----------------------------------------------------------------------------


@dataclass
class Params:
    """Parameter counts and their storage bytes for one copy of the model being trained."""

    total: float  # base model parameters (transformers' count)
    trainable: float  # parameters with gradients (base weights trained + new adapter parameters)
    trainable_matrix_rows_cols: float  # sum of rows+cols over trainable matrices (Adafactor's factored state)
    largest_trainable: float  # largest single trainable tensor (optimizer temporaries)
    autocast_cast_params: float  # trainable weights autocast casts for matmuls (linears, adapters, lm_head)
    stored_bytes: float  # all parameters of this copy in their storage dtypes
    by_dtype: dict  # dtype label -> bytes
    largest_layer_params: float  # parameters of the biggest decoder layer (FSDP/ZeRO-3 gather unit)
    root_params: float  # embeddings + lm_head + final norm (FSDP root unit)
    quant_largest_linear: float  # elements of the largest quantized linear (dequantization workspace)


def _quant_bytes(lay: Layout, lin: LinearSpec) -> float:
    if lay.quantization == "nf4":
        per = NF4_DQ_BYTES if lay.double_quant else NF4_BYTES
        # The bias stays in the compute dtype; bitsandbytes quantizes the weight only.
        return lin.in_features * lin.out_features * per + (lin.out_features * lay.frozen_bytes if lin.bias else 0)
    return lin.in_features * lin.out_features * int8_bytes_per_param(lin.in_features) + (
        lin.out_features * lay.frozen_bytes if lin.bias else 0
    )


class _Tally:
    """Running totals while counting parameters: trainable count, Adafactor's rows + cols, the
    largest trainable tensor, the largest quantized linear, and stored bytes by dtype."""

    def __init__(self, lay: Layout):
        self.lay = lay
        self.trainable = 0.0
        self.rows_cols = 0.0
        self.largest = 0.0
        self.quant_largest = 0.0
        self.by: dict = {}

    def add(self, label: str, nbytes) -> None:
        self.by[label] = self.by.get(label, 0) + nbytes

    def dtype(self, nbytes: int) -> str:
        return {2: "bf16" if self.lay.precision != "fp16-mixed" else "fp16", 4: "fp32"}[nbytes]

    def train(self, n, rows_cols, nbytes_each: int) -> None:
        self.trainable = self.trainable + n
        self.rows_cols = self.rows_cols + rows_cols
        self.add(self.dtype(nbytes_each), n * nbytes_each)


def _count_linears(t: _Tally, lay: Layout, plan) -> None:
    """1. Linear layers of the decoder: trained share in the trainable dtype, the rest frozen
    (quantized when the method puts the base in nf4/int8). 2. LoRA (Hu et al. 2021, eq. 3):
    A (r x in) + B (out x r) per adapted module; DoRA adds a magnitude vector of out_features
    (Liu et al. 2024, eq. 5)."""
    tb, fb, r = lay.trainable_bytes, lay.frozen_bytes, plan.lora_r
    for role in lay.roles:
        lin = role.spec
        tr = lin.params_total * role.trained_fraction
        fr = lin.params_total - tr
        if tr:
            t.train(tr, lin.count * role.trained_fraction * (lin.in_features + lin.out_features), tb)
            t.largest = max(t.largest, lin.params_each)
        if fr:
            if role.quantized != "none":
                t.add(role.quantized, _quant_bytes(lay, lin) * lin.count * (1 - role.trained_fraction))
                t.quant_largest = max(t.quant_largest, lin.in_features * lin.out_features)
            else:
                # fused experts next to a quantized base stay in the compute dtype (the engine keeps
                # them out of prepare_model_for_kbit_training's fp32 upcast)
                eb_ = lay.c if (lin.group == "expert" and lay.quantization != "none") else fb
                t.add(t.dtype(eb_), fr * eb_)
        if role.adapted:
            n = lin.count * (r * (lin.in_features + lin.out_features) + (lin.out_features if lay.technique.method.dora else 0))
            t.train(n, lin.count * (2 * r + lin.in_features + lin.out_features), tb)


def _count_embeddings_and_norms(t: _Tally, lay: Layout) -> float:
    """3. Embeddings, lm_head, norms and other parameters; returns the trained norm parameters."""
    arch = lay.arch
    h, tb, fb = arch.hidden_size, lay.trainable_bytes, lay.frozen_bytes
    emb, head = arch.embedding_params, arch.lm_head_params
    eb = tb if lay.embed_trained else fb
    t.add(t.dtype(eb), emb * eb)
    if lay.embed_trained:
        t.trainable += emb + head
        t.rows_cols += arch.vocab_size + h + (arch.vocab_size + h if head else 0)
        t.largest = max(t.largest, emb)
    if head:
        hb = tb if lay.lm_head_trained else fb
        t.add(t.dtype(hb), head * hb)
    # HFT trains the norms inside the trained layers only, not the final norm (one norm of width h,
    # with a bias for LayerNorm).
    final_norm = h * (2 if arch.norm == "layernorm" else 1)
    if lay.technique.method.norm_training == "trained_layers":
        norms_tr = (arch.norm_params - final_norm) * lay.norm_trained_fraction
    else:
        norms_tr = arch.norm_params * lay.norm_trained_fraction
    t.trainable += norms_tr + arch.other_params * (1 if lay.embed_trained else 0)
    t.rows_cols += norms_tr
    t.add(t.dtype(tb), (norms_tr + (arch.other_params if lay.embed_trained else 0)) * tb)
    t.add(t.dtype(fb), (arch.norm_params - norms_tr + (0 if lay.embed_trained else arch.other_params)) * fb)
    return norms_tr


def _count_embedding_lora(t: _Tally, lay: Layout, plan) -> float:
    """LoRA on the lm_head and the input embedding (peft/tuners/lora/layer.py): on the lm_head a
    lora.Linear, A (r x h) + B (V x r); on the embedding a lora.Embedding, lora_embedding_A (r x V) +
    lora_embedding_B (h x r) -- r (V + h) each. DoRA adds a magnitude vector of the output width (V
    for the lm_head, h for the embedding). Returns the parameters not cast for a matmul by autocast
    (lora_embedding_A goes through F.embedding)."""
    h, V, r = lay.arch.hidden_size, lay.arch.vocab_size, plan.lora_r
    dora = lay.technique.method.dora
    for on, out in ((lay.head_lora, V), (lay.embed_lora, h)):
        if on:
            t.train(r * (V + h) + (out if dora else 0), 2 * r + V + h, lay.trainable_bytes)
            t.largest = _num.maximum(t.largest, r * V)
    return r * V if lay.embed_lora else 0.0


def count_params(lay: Layout, plan) -> Params:
    """Trainable and stored parameters. ``plan.lora_r`` and ``plan.adapter_bottleneck`` may be arrays."""
    arch = lay.arch
    t = _Tally(lay)
    _count_linears(t, lay, plan)
    norms_tr = _count_embeddings_and_norms(t, lay)
    not_cast = _count_embedding_lora(t, lay, plan)
    # 4. Modules the method adds (bottleneck adapters, memory experts): the method's declaration
    #    (ftadvisor/techniques/<method>.py) counts them.
    added = lay.technique.method.added(lay, plan)
    if added.layers:
        t.train(added.params, added.rows_cols, lay.trainable_bytes)
        t.largest = _num.maximum(t.largest, added.largest)

    # autocast casts the weights of matmuls (linears, adapters, the lm_head -- also when it is the
    # tied embedding); F.embedding and RMSNorm's fp32 multiply are not on its cast list (measured).
    emb, head = arch.embedding_params, arch.lm_head_params
    cast = t.trainable - norms_tr - (arch.other_params + emb if lay.embed_trained else 0) - not_cast
    if lay.lm_head_trained and not head:
        cast = cast + emb
    if added.layers:
        cast = cast - (added.params - added.matmul_params)  # biases are added, not cast for a matmul
    if lay.frozen_bytes == 4 and lay.quantization == "none" and lay.precision in ("bf16-mixed", "fp16-mixed"):
        # fp32 frozen linears and lm_head under autocast: cast per matmul, the cast saved for backward
        # (aten/src/ATen/autocast_mode.cpp cached_cast caches only leaves that require grad)
        cast = cast + sum(r_.spec.params_total * (1 - r_.trained_fraction) for r_ in lay.roles)
        cast = cast + (0 if lay.lm_head_trained else (head or emb))
    return Params(
        total=arch.total_params,
        trainable=t.trainable,
        trainable_matrix_rows_cols=t.rows_cols,
        largest_trainable=t.largest,
        autocast_cast_params=cast,
        stored_bytes=sum(t.by.values()),
        by_dtype=t.by,
        largest_layer_params=sum(lin.params_each * lin.count for lin in arch.linears) / arch.num_layers
        + arch.norm_params / arch.num_layers,
        root_params=emb + head,
        quant_largest_linear=t.quant_largest,
    )


def frozen_copy_bytes(lay: Layout) -> float:
    """A frozen copy of the base (reference / reward model): compute dtype, or the method's
    quantized storage for decoder linears when the base is quantized."""
    arch = lay.arch
    total = 0.0
    for role in lay.roles:
        lin = role.spec
        if role.quantized != "none":
            total += _quant_bytes(lay, lin) * lin.count
        else:
            total += lin.params_total * lay.c  # (fused experts stay in the compute dtype too)
    total += (arch.embedding_params + arch.lm_head_params + arch.norm_params + arch.other_params) * lay.c
    return total


def optimizer_state_bytes(lay: Layout, p: Params):
    """Optimizer state for the trainable parameters (see the constants above for sources).
    Returns (device-resident bytes, paged bytes)."""
    o = lay.optimizer
    tb = lay.trainable_bytes
    if o == "adamw":
        # DeepSpeed/FSDP keep Adam moments in fp32 whatever the working dtype.
        return 2 * (4 if (lay.zero or lay.sharding == "fsdp") else tb) * p.trainable, 0.0
    if o == "adamw_8bit":
        return ADAM8_BYTES * p.trainable, 0.0
    if o == "paged_adamw_8bit":
        return 0.0, ADAM8_BYTES * p.trainable
    if o == "paged_adamw_32bit":
        return 0.0, 8 * p.trainable
    if o == "sgd":
        return 0.0, 0.0
    if o == "adafactor":
        return 4 * p.trainable_matrix_rows_cols, 0.0
    raise FtAdvisorError("optimizer", f"unknown {o!r}")


# --- activations ----------------------------------------------------------------------------


@dataclass
class ActivationCoefficients:
    """Bytes kept for backward, per token and per layer kind (plus per-token terms that scale
    with the sequence length for eager attention)."""

    per_layer_dense: float
    per_layer_moe: float
    per_layer_seq: float  # x seq_len (eager attention's s^2 score matrices)
    per_layer_r: float  # x lora_r (LoRA A outputs, memory experts)
    top: float  # final norm + lm_head input
    top_r: float  # x lora_r, once per token outside the layers (LoRA on lm_head / embed_tokens)
    checkpoint_per_layer: float  # bytes/token kept per layer under gradient checkpointing
    backward_ws: float  # gradient working set of the layer in flight


class _Saved:
    """Bytes per token one decoder layer keeps for backward, block by block (see
    :func:`activation_coefficients` for the rules and their sources)."""

    def __init__(self, lay: Layout):
        self.lay, self.arch, self.c = lay, lay.arch, lay.c
        self.h = lay.arch.hidden_size
        self.mixed_fp32_weights = lay.precision in ("bf16-mixed", "fp16-mixed")
        resid = 4 if (lay.embed_trained and lay.precision != "bf16-true") or lay.precision == "fp32" else 2
        if lay.quantization != "none" and lay.precision != "bf16-true" and lay.kbit_fp32_upcast:
            resid = 4  # prepare_model_for_kbit_training upcasts the embeddings to fp32
        self.resid = resid
        # bytes of the normalised input a trained RMSNorm weight keeps (framework ``dtypes.norm_scale_fp32``)
        self.norm_kept = 4 if lay.framework.dtypes.norm_scale_fp32 else resid
        self.norm_trains = lay.norm_trained_fraction > 0
        self.norm_out_fp32 = lay.precision == "fp32" or (self.mixed_fp32_weights and (self.norm_trains or resid == 4))
        self.roles_by_source: dict[str, list[LinearRole]] = {}
        for role in lay.roles:
            self.roles_by_source.setdefault(role.spec.input_source, []).append(role)
        self.share_adapter_input = lay.precision in ("bf16-true", "fp32") and not lay.dropout
        self.source_layers = _source_layers(lay.arch)  # hybrid stacks: the layers that hold each input

    def norm(self) -> float:
        """RMSNorm keeps its fp32 input (and the normalised copy when its weight trains); LayerNorm,
        an fp32 op under autocast, keeps its input."""
        arch, h, c = self.arch, self.h, self.c
        base = 4 * h if arch.norm == "rmsnorm" else (4 if self.mixed_fp32_weights else c) * h
        return base + (self.norm_kept * h * self.lay.norm_trained_fraction if arch.norm == "rmsnorm" else 0)

    def inputs(self, source: str, width: int, fp32_source: bool) -> tuple[float, float]:
        """Bytes/token kept for the linears reading ``source``: (constant, per unit of LoRA rank)."""
        lay, c = self.lay, self.c
        const = 0.0
        per_r = 0.0
        saving_weights = 0.0  # how many consumers keep an input for a trained weight
        roles = self.roles_by_source.get(source, [])
        # q, k and v fused into one linear with one LoRA A (framework ``attention.fused_qkv``) are one consumer
        n_qkv = sum(r_.spec.group == "attention" for r_ in roles) if lay.framework.attention.fused_qkv else 1
        for role in roles:
            lin = role.spec
            # instances per layer holding this input (experts counted elsewhere)
            inst = lin.count / max(self.source_layers.get(source, self.arch.num_layers), 1)
            if lin.group in ("expert",):
                continue
            inst_in = inst / n_qkv if lin.group == "attention" and n_qkv > 1 else inst
            if role.trained_fraction:
                saving_weights += role.trained_fraction * (inst_in if fp32_source else 1)
            if role.adapted:
                if self.share_adapter_input:
                    saving_weights = max(saving_weights, 1)
                else:
                    const += inst_in * c * width
                if lay.dropout:
                    const += inst_in * width * (c + 1)
                per_r += inst * c
                if lay.technique.method.dora:
                    const += inst * 2 * c * lin.out_features
        if fp32_source:
            const += saving_weights * c * width
        else:
            const += min(saving_weights, 1) * c * width
        return const, per_r

    def attention(self) -> tuple[float, float, float]:
        """(constant, per rank, per sequence position) of the attention block."""
        arch, lay, c, h = self.arch, self.lay, self.c, self.h
        a, kv, d = arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
        const = self.norm() if arch.norms_per_layer else 0.0
        ac, ar = self.inputs("attn_in", h, self.norm_out_fp32)
        const += ac
        # transformers 5 passes enable_gqa to SDPA when no mask is needed (integrations/sdpa_attention.py
        # use_gqa_in_sdpa), and flash handles GQA natively: k/v stay at kv heads; eager repeats them.
        # A framework that copies K/V to every head itself (torchtune, litgpt) hands the kernel the copies.
        kv_saved = a if (lay.attention == "eager" or lay.kv_expanded) else kv
        const += c * (a * d + 2 * kv_saved * d)  # q, k, v kept by the attention kernel
        per_seq = 0.0
        if lay.attention == "eager":
            per_seq = a * (4 + c)  # fp32 softmax output + its cast, per token per key position
        else:
            const += c * a * d + 4 * a  # output + logsumexp
        oc, o_r = self.inputs("attn_out", a * d, False)
        if lay.attention != "eager" and not lay.framework.attention.output_copied:
            # SDPA/flash return (B, S, H, D)-contiguous output, so HF's transpose(1, 2).contiguous() is a
            # no-op and a trained o_proj keeps the same storage the kernel already keeps (measured on CPU
            # with a storage-tracking dispatch mode, scripts/check_memory_cpu.py).
            o_shared = sum(r_.trained_fraction for r_ in self.roles_by_source.get("attn_out", []))
            oc -= min(o_shared, 1) * c * a * d
        return const + oc, ar + o_r, per_seq

    def dense_mlp(self) -> tuple[float, float]:
        """(constant, per rank) of a dense MLP block."""
        arch, lay, c, h = self.arch, self.lay, self.c, self.h
        I = arch.intermediate_size
        # phi-2 and Falcon-7B feed the MLP from the attention's norm (fc1 reads "attn_in", counted
        # above); sequential blocks and GPT-NeoX's parallel residual have a norm of their own.
        const = self.norm() if "mlp_in" in self.roles_by_source else 0.0
        mc, mr = self.inputs("mlp_in", h, self.norm_out_fp32)
        const += mc
        # Next to a bitsandbytes base, prepare_model_for_kbit_training makes the residual stream fp32 and
        # the 4-bit linears return the input's dtype, so the MLP's elementwise tensors are fp32
        # (bitsandbytes nn.Linear4bit.forward casts the output back to the input dtype; measured).
        mlp_c = 4 if (lay.quantization != "none" and lay.precision != "bf16-true" and lay.kbit_fp32_upcast) else c
        const += (3 if arch.mlp_gated else 1) * mlp_c * I
        dc, dr = self.inputs("mlp_mid", I, False)
        return const + dc, mr + dr

    def moe(self) -> tuple[float, float]:
        """(constant, per rank) of a mixture-of-experts block (router, routed and shared experts)."""
        arch, lay, c, h = self.arch, self.lay, self.c, self.h
        if not arch.is_moe:
            return 0.0, 0.0
        E, k, Im = arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size
        const = self.norm()
        rc, _ = self.inputs("router_in", h, self.norm_out_fp32)
        const += rc + 4 * E + 4 * k  # router logits softmax (fp32) and top-k weights
        exp_roles = [r_ for r_ in lay.roles if r_.spec.group == "expert"]
        in_tr = any(r_.trained_fraction or r_.adapted for r_ in exp_roles if r_.spec.input_source == "expert_in")
        mid_tr = any(r_.trained_fraction or r_.adapted for r_ in exp_roles if r_.spec.input_source == "expert_mid")
        # Per routed (token, expert): the gathered input copy, the gated MLP's 3*Im, the down
        # projection input, and the expert output kept for the routing-weight multiply.
        const += k * (c * h * (1 if in_tr else 0) + 3 * c * Im + (c * Im if mid_tr else 0) + c * h)
        per_r = sum(c * (r_.spec.count / arch.num_layers / E) * k for r_ in exp_roles if r_.adapted)
        Is = arch.shared_expert_intermediate_size
        if Is:
            sc, sr = self.inputs("shared_in", h, self.norm_out_fp32)
            sc2, sr2 = self.inputs("shared_mid", Is, False)
            const += sc + sc2 + 3 * c * Is + c * h
            per_r += sr + sr2
        return const, per_r


def _layer_counts(arch: ArchSpec) -> tuple[int, int, int]:
    """(softmax-attention layers, other token-mixer layers, layers with only the latter) from
    ``ArchSpec.layer_kinds`` (parallel hybrids such as falcon_h1 count in both of the first two)."""
    n_attn = n_mix = n_mix_only = 0
    for kind, n in arch.layer_kinds:
        parts = kind.split("+")
        has_attn = any(p.startswith(("full_attention", "sliding_attention")) for p in parts)
        has_mix = any(p in ("ssm", "linear_attention", "conv") for p in parts)
        n_attn += n if has_attn else 0
        n_mix += n if has_mix else 0
        n_mix_only += n if has_mix and not has_attn else 0
    return n_attn, n_mix, n_mix_only


def _source_layers(arch: ArchSpec) -> dict[str, int]:
    """Input label -> layers holding it, where not every layer does (attention inputs in a hybrid)."""
    if not arch.layer_kinds:
        return {}
    n_attn, n_mix, _ = _layer_counts(arch)
    out = {}
    for lin in arch.linears:
        if lin.group in ("attention", "mixer"):
            out[lin.input_source] = n_attn if lin.group == "attention" else n_mix
    return out


def _token_mixers(sv: _Saved, attn_const: float, attn_r: float, per_seq: float) -> tuple[float, float, float]:
    """The token-mixer part of one layer, averaged over the stack, when ``ArchSpec.layer_kinds`` (the
    generic path, ftadvisor.derive) says not every layer is softmax attention. Attention layers keep
    what :meth:`_Saved.attention` counts; every state-space, linear-attention or short-convolution
    layer keeps (1) its input norm, (2) the inputs of its trained or adapted projections (the rule of
    attention's q/k/v: Korthikanti et al. 2022, section 4.1) and (3) one copy of each projection's
    output, which the convolution, scan or gate consuming it saves for backward (the rule SwiGLU's
    gate/up outputs follow in :meth:`_Saved.dense_mlp`). Kernel internals (a scan's per-step states)
    are not counted: the CUDA kernels (mamba_ssm, causal-conv1d, fla) recompute them in backward."""
    arch, c = sv.arch, sv.c
    n_attn, n_mix, n_mix_only = _layer_counts(arch)
    L = max(arch.num_layers, 1)
    roles = [r for r in sv.lay.roles if r.spec.group == "mixer"]
    if not n_mix:
        return attn_const, attn_r, per_seq
    mix_const = sv.norm() * n_mix_only / max(n_mix, 1)  # per mixer layer: its own input norm
    mix_r = 0.0
    widths: dict[str, int] = {}
    for r in roles:
        widths.setdefault(r.spec.input_source, r.spec.in_features)
    for source, width in widths.items():  # per layer holding the source (_Saved.source_layers)
        lc, lr = sv.inputs(source, width, sv.norm_out_fp32 if source == "mixer_in" else False)
        mix_const, mix_r = mix_const + lc, mix_r + lr
    mix_const += sum(c * r.spec.out_features * r.spec.count for r in roles) / n_mix
    const = (attn_const * n_attn + mix_const * n_mix) / L
    return const, (attn_r * n_attn + mix_r * n_mix) / L, per_seq * n_attn / L


def activation_coefficients(lay: Layout) -> ActivationCoefficients:
    """Saved-tensor accounting for one decoder layer, following what autograd keeps in the
    Hugging Face implementations (modeling_llama.py and relatives):

    - the approach of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
      Transformer Models", section 4.1, eq. 1: 34sbh + 5as^2b per layer for GPT with 4h MLP),
      redone tensor by tensor for RMSNorm, SwiGLU/GeGLU, GQA and no dropout;
    - RMSNorm upcasts its input to fp32 and keeps it (4h); it keeps the normalised bf16 tensor
      only when its weight trains (mul saves the other operand for the weight gradient);
    - a linear layer keeps its input only if its weight trains (aten mm saves mat1 only when
      mat2 requires grad); frozen and bitsandbytes-quantized linears keep nothing;
    - under autocast with fp32 weights each consumer casts its own bf16 copy of an fp32 input;
    - SDPA/flash keep q, k, v (k/v repeated to all heads by HF's repeat_kv unless flash), the
      output and an fp32 logsumexp per head; eager keeps the fp32 softmax and its bf16 cast
      (a*s*(4+c) per token);
    - SwiGLU keeps gate output, activation output and up output (3I), plain GELU keeps I;
    - peft LoRA keeps its own cast of the input per adapted module (plus the dropout output and
      a 1-byte mask when lora_dropout > 0) and the rank-r intermediate; DoRA also keeps the base
      and LoRA results for the magnitude rescale (2 * out).
    """
    sv = _Saved(lay)
    arch, c, h = lay.arch, lay.c, lay.arch.hidden_size
    a, d = arch.num_attention_heads, arch.head_dim
    attn_const, attn_r, per_seq = sv.attention()
    if lay.arch.layer_kinds:  # stacks described by ftadvisor.derive (hybrids: SSM, linear attention, conv)
        attn_const, attn_r, per_seq = _token_mixers(sv, attn_const, attn_r, per_seq)
    mlp_const, mlp_r = sv.dense_mlp()
    moe_const, moe_r = sv.moe()
    # (Modules a method adds -- adapters, memory experts -- declare their own saved bytes:
    # Method.added() in ftadvisor/techniques/.)
    top = 4 * h + (sv.norm_kept * h if sv.norm_trains else 0) + (c * h if lay.lm_head_trained else 0)
    # LoRA on the lm_head keeps its own cast of the final hidden state (plus the dropout copy and
    # mask) for A's gradient; the rank-r intermediate is kept for B's gradient (peft lora.Linear), and
    # so is the embedding LoRA's rank-r lookup (peft lora.Embedding: after_A for lora_embedding_B).
    top_r = 0.0
    if lay.head_lora:
        top += c * h + (h * (c + 1) if lay.dropout else 0)
        top_r += c
    if lay.embed_lora:
        top_r += c
    ckpt = sv.resid * h  # HF gradient checkpointing keeps each decoder layer's input
    # Gradient working set while one layer runs backward: gradients of its input and output (2h)
    # and four of its widest intermediate: in a gated MLP the gradient of the down projection's
    # input and the mul's two gradient outputs are alive while SiLU's backward forms the fourth
    # (torch autograd: MulBackward0, SiluBackward0). Measured with the trace backend on
    # Llama-3.1-8B LoRA at 32,768 tokens/micro-batch: a depth-independent 1.84 GB above a
    # 2-intermediate term, i.e. 2 x c x I per token (calibration/results/cpu/trace-llama-3.1-8b.jsonl;
    # -5.2% -> -0.2% after this term).
    widest = max(arch.intermediate_size, arch.moe_intermediate_size * max(arch.experts_per_token, 1), a * d)
    return ActivationCoefficients(
        per_layer_dense=attn_const + mlp_const,
        per_layer_moe=attn_const + moe_const,
        per_layer_seq=per_seq,
        per_layer_r=attn_r + (moe_r if arch.is_moe else mlp_r),
        top=top,
        top_r=top_r,
        checkpoint_per_layer=ckpt,
        backward_ws=c * (2 * h + 4 * widest),
    )


# --- putting it together --------------------------------------------------------------------

COMPONENTS = MEMORY_COMPONENTS  # the breakdown's parts, in order (schema.MemoryBreakdown)

# cuBLAS/cuBLASLt workspaces come out of PyTorch's caching allocator (torch/csrc/cuda/
# CublasHandlePool.cpp: 4096 KiB x 8 on Hopper-class devices, smaller before); we take
# 32 MiB on any GPU and 0 on the CPU.
FRAMEWORK_OVERHEAD_BYTES_GPU = 32 * MIB

# Bytes per logit trl's log-prob gather keeps on the CPU beyond the 12 of a log-softmax backward
# (see loss_logits_bytes).
CPU_LOG_PROB_GATHER_EXTRA_BYTES = 4

# Tokens per chunk of trl's chunked cross-entropy for SFT (trl/trainer/sft_trainer.py).
SFT_CE_CHUNK_TOKENS = 256

# Allocator slack (reserved - allocated) as a share of the peak: the caching allocator rounds
# large blocks to 2 MiB and keeps freed blocks cached (PyTorch docs, "CUDA memory management";
# c10/cuda/CUDACachingAllocator.cpp). A calibration fit for the hardware replaces this default.
DEFAULT_ALLOCATOR_SLACK = 0.08


def loss_logits_bytes(lay: Layout, T, T_loss):
    """Peak bytes of the output logits and the loss for T tokens in the micro-batch, T_loss of
    which get a loss (completion tokens for RL)."""
    obj = lay.technique.objective
    V, h, c = lay.arch.vocab_size, lay.arch.hidden_size, lay.c
    # Logits and loss (transformers/loss/loss_utils.py ForCausalLMLoss upcasts logits to fp32;
    #    cross_entropy = log_softmax, whose output is kept, + nll_loss). The bf16 logits stay
    #    referenced by the model output; the fp32 upcast (forward) or the fp32 gradient
    #    (backward) is transient. trl's GRPO computes logits for completion tokens only
    #    (logits_to_keep); PPO computes them for the whole sequence, log-softmax on the response.
    # The peak of the loss is in its backward (aten._log_softmax_backward_data): the kept fp32
    # log-softmax output, the fp32 gradient from nll_loss and the new fp32 gradient, 3 x 4 bytes per
    # logit; the bf16 logits are already released because the Trainer drops the model output after
    # taking .loss (measured, scripts/check_memory_cpu.py). The forward side (bf16 logits + fp32
    # upcast + log-softmax output, c + 8) is never larger.
    logits_total = T_loss * V * 12
    if obj.gathers_log_probs and lay.hardware.vendor == "cpu":
        # trl's selective_log_softmax on bf16 logits loops log_softmax over rows; on the CPU the
        # storage tracker shows the per-row outputs kept for backward plus, in backward, the
        # unbind/stack and slice gradients: 4 B per logit above the 12 (cpu-tiny: DPO -17.2%,
        # ORPO -15.9%, KTO -19.9% without this term). An H200 DPO run matched 12 within 2.2%, so
        # the term is the CPU's (calibration/results/cpu/cpu-tiny.jsonl, results/h200/).
        logits_total = logits_total + T_loss * V * CPU_LOG_PROB_GATHER_EXTRA_BYTES
    if obj.extra_logit_bytes:
        # e.g. ORPO's NLL term, a cross-entropy over the chosen half: its fp32 log-softmax
        # (trl ORPOTrainer).
        logits_total = logits_total + T_loss / 2 * V * obj.extra_logit_bytes
    if obj.sft_loss and lay.sft_chunked_loss:
        # trl >= 1.x SFTTrainer defaults to loss_type="chunked_nll" (trl/trainer/sft_trainer.py,
        # _CHUNKED_LM_HEAD_CHUNK_SIZE = 256): the lm_head and the cross-entropy run over chunks of
        # 256 tokens under checkpointing, so only one chunk's logits exist at a time, plus the
        # reordered copy of the final hidden states and its gradient. Each chunk computes
        # h.float() @ w.float().t(): an fp32 copy of the lm_head weight and, under autocast, its
        # low-precision cast (V x h x (4 + c)); measured on CPU and consistent with an H200 run.
        head_store = lay.trainable_bytes if lay.lm_head_trained else lay.frozen_bytes
        w_copies = V * h * ((4 if head_store == 2 else 0) + (c if lay.precision in ("bf16-mixed", "fp16-mixed") else 0))
        # The copies and a chunk's full set of fp32 tensors are not alive together: at the 8B scale
        # the peak held the copies plus ~2 B per chunk logit, on a tiny model the chunk's 12 B.
        chunk = _num.minimum(T_loss, SFT_CE_CHUNK_TOKENS) * V
        logits_total = _num.maximum(chunk * 12, w_copies + chunk * 2) + 2 * T * h * c
    if obj.full_sequence_logits:
        logits_total = logits_total + (T - T_loss) * V * c  # full-sequence logits before slicing the response

    return logits_total


@dataclass
class Evaluation:
    """Byte counts for one layout over one set of numeric knobs (scalars or arrays)."""

    phases: dict  # phase -> {component -> bytes}
    params: Params
    trainable_params: float
    paged_bytes: float
    host_bytes: float
    host_parts: dict = field(default_factory=dict)  # offloaded bytes per GPU: params, optimizer, grads


@dataclass
class _Copies:
    """The policy's trainable parameters plus those of the models trained beside it, and the
    bytes of the frozen models resident with it."""

    trainable: float  # policy + value model
    copies_trained: int  # models running forward/backward on the same tokens
    extra: float  # reference / reward / value model and trl's reference adapter, bytes
    share: float  # value model's trainable parameters per policy parameter (its optimizer state)


def _model_copies(lay: Layout, plan, p: Params) -> _Copies:
    """1. Model copies beyond the policy (trl's trainers): PPO's value model mirrors the policy
    and trains with the same method; its reward model and a reference model are frozen copies (a
    PEFT method's reference is the base with adapters disabled: no copy). The value and reward
    models are sequence classifiers: the lm_head (V x h) is replaced by a one-output score head
    (h), trained in the value model (transformers AutoModelForSequenceClassification; trl
    experimental/ppo)."""
    arch, obj, c, tb = lay.arch, lay.technique.objective, lay.c, lay.trainable_bytes
    h = arch.hidden_size
    value = 1 if obj.value_model else 0
    head = arch.lm_head_params
    head_tb = tb if lay.lm_head_trained else lay.frozen_bytes
    value_trainable = (p.trainable - (head if lay.lm_head_trained else 0) + h) if value else 0.0
    frozen_copy = frozen_copy_bytes(lay)
    extra = frozen_copy * (1 if lay.reference_copy else 0)
    if obj.peft_reference_adapter_copy and lay.technique.method.lora and obj.uses_reference(plan):
        # trl's DPOTrainer adds a frozen copy of the adapter as the "ref" adapter of a PEFT model
        # (trl/trainer/dpo_trainer.py) -- adapter weights in the compute dtype.
        extra = extra + p.trainable * c
    if obj.reward_model:
        extra = extra + reward_model_bytes(lay)
    if value:
        extra = extra + p.stored_bytes - head * head_tb + h * tb
    return _Copies(p.trainable + value_trainable, 1 + value, extra, value_trainable / p.trainable)


@dataclass
class _States:
    """Per-GPU bytes of the model states after sharding and offload."""

    weights: float
    grads: float
    master: float
    opt_dev: float
    paged: float
    comm: float
    extra: float
    host: float = 0.0
    host_parts: dict = field(default_factory=dict)  # host bytes by kind: params, optimizer, grads (ftadvisor.host)
    copies: float = 0.0  # autocast's bf16 weight copies kept for backward (torch AMP, none/ddp)
    grads_resident: float = 0.0  # gradient storage alive through forward and backward (ZeRO-3's partition buffer)
    comm_backward: float = 0.0  # buffers alive only while layers run backward, not at the loss (FSDP2)


def _replicated_states(lay: Layout, plan, p: Params, cp: _Copies, opt_dev, paged) -> _States:
    """No sharding or DDP: every GPU holds everything."""
    tb, c = lay.trainable_bytes, lay.c
    st = _States(weights=p.stored_bytes, grads=cp.trainable * tb, master=0.0, opt_dev=opt_dev, paged=paged,
                 comm=0.0, extra=cp.extra)
    if lay.precision in ("bf16-mixed", "fp16-mixed"):
        # torch.autocast caches the low-precision cast of every leaf weight that requires grad
        # until the forward ends (aten/src/ATen/autocast_mode.cpp, cached_cast).
        st.copies = p.autocast_cast_params * c
    if lay.sharding == "ddp":
        # DDP's reducer keeps flat bucket buffers the size of all gradients
        # (torch/nn/parallel/distributed.py, gradient_as_bucket_view=False by default).
        st.comm = cp.trainable * tb
    return st


def _zero_states(lay: Layout, plan, p: Params, cp: _Copies, opt_dev, paged) -> _States:
    """DeepSpeed ZeRO stages 1-3 (Rajbhandari et al. 2020, Fig. 1: stage 1 partitions optimizer
    state, stage 2 also gradients, stage 3 also parameters), with optional CPU offload."""
    h, c, tb, N = lay.arch.hidden_size, lay.c, lay.trainable_bytes, plan.num_gpus
    mixed = lay.precision in ("bf16-mixed", "fp16-mixed")
    trainable = cp.trainable
    # DeepSpeed bf16/fp16: working weights and gradients in the compute dtype, fp32 master weights
    # and fp32 gradient partitions for the optimizer (deepspeed/runtime/zero/stage_1_and_2.py
    # single_partition_of_fp32_groups; stage3.py fp32_partitioned_groups_flat).
    wt = c if mixed else tb
    stage3 = lay.sharding == "zero3"
    W_tr = p.trainable * tb
    weights = p.stored_bytes - W_tr + p.trainable * wt
    if stage3:
        weights = weights / N
    master = (4 * trainable / N) if mixed else 0.0
    # Stage 3 builds the fp32 gradient one optimizer sub-group at a time (sub_group_size defaults to
    # 1e9 elements, deepspeed/runtime/zero/config.py).
    part = _num.minimum(trainable / N, 1e9) if stage3 else trainable / N
    fp32_grad_part = 4 * part if mixed else 0.0
    if lay.sharding == "zero1":
        grads = trainable * wt + fp32_grad_part
    else:
        grads = trainable * wt / N + fp32_grad_part
    # HF's "auto" DeepSpeed config: reduce_bucket_size = h^2, stage3_prefetch_bucket_size = 0.9 h^2
    # (transformers/integrations/deepspeed.py); stage 3 also holds gathered parameters (below).
    bucket = _num.minimum(h * h, trainable + 1)
    comm = c * 2 * bucket
    if stage3:
        # Gathered parameters (compute dtype): those kept for reuse (zero3_gathered_params), at least
        # the layer in flight and the prefetched one, plus the prefetch bucket.
        comm = comm + c * (_num.maximum(zero3_gathered_params(lay, p), 2 * p.largest_layer_params) + 0.9 * h * h)
    st = _States(weights=weights, grads=grads, master=master, opt_dev=opt_dev / N, paged=paged / N, comm=comm,
                 extra=cp.extra / N if stage3 else cp.extra)
    if stage3:
        # Stage 3 allocates the gradient partitions of all parameters once, in the gradient-accumulation
        # dtype (the compute dtype unless data_types.grad_accum_dtype says otherwise), and keeps them
        # (deepspeed/runtime/zero/stage3.py grad_partitions_flat_buffer; on the host under offload).
        st.grads_resident = 0.0 if lay.cpu_offload else trainable * wt / N
    if lay.cpu_offload:
        st.host = st.master + st.opt_dev + st.paged + fp32_grad_part
        # ZeRO-Offload (Ren et al. 2021, section 4): fp32 master + optimizer moments and the fp32
        # gradient partition live on the host; ZeRO-3 offload_param also the compute-dtype params.
        st.host_parts = {"optimizer": st.master + st.opt_dev + st.paged, "grads": fp32_grad_part, "params": 0.0}
        st.grads = st.grads - fp32_grad_part
        st.master = st.opt_dev = st.paged = 0.0
        if stage3:
            st.host = st.host + st.weights
            st.host_parts["params"] = st.weights
            st.weights = 0.0
    return st


ZERO3_MAX_REUSE_DISTANCE = 1e9  # stage3_max_reuse_distance default (deepspeed/runtime/zero/config.py); HF's
# "auto" values and the launcher's ds_config leave it unset


def zero3_gathered_params(lay: Layout, p: Params, max_reuse: float = ZERO3_MAX_REUSE_DISTANCE):
    """Parameters ZeRO-3 keeps gathered (whole, compute dtype) at the loss, the turn from forward to
    backward. A module's parameters are released after use unless they reappear in the recorded
    module trace within the next ``max_reuse`` parameter elements (deepspeed/runtime/zero/
    partitioned_param_coordinator.py ``__params_to_release``). The layer k places from the output
    is next used in backward after the later layers' forward, the head's forward and backward, and
    each later layer's backward (and recomputed forward under checkpointing): about r * (k l + head)
    elements with r = 2 (3 with checkpointing). Kept: the head (reused at once), the n last layers
    with r (k l + head) < max_reuse, and the embedding when every layer is kept and still within
    reach. Below the default 1e9 elements a small model therefore stays gathered whole."""
    arch = lay.arch
    r = 3.0 if lay.checkpointing else 2.0
    l = p.largest_layer_params
    L = arch.num_layers
    emb = arch.embedding_params if arch.lm_head_params else 0.0  # tied: the embedding is the head
    head = p.root_params - emb
    room = _num.maximum(max_reuse - r * head, 0.0)
    n = _num.minimum(float(L), _num_ceil(room / (r * l)))
    all_kept = (n >= L) & (r * (L * l + head) < max_reuse)
    return head + n * l + _num.where(all_kept, emb, 0.0)


def _num_ceil(x):
    if _num._is_array(x):
        import numpy as np  # a grid brings numpy along (ftadvisor/_num.py)

        return np.ceil(x)
    import math

    return float(math.ceil(x))


def _fsdp_states(lay: Layout, plan, p: Params, cp: _Copies, opt_dev, paged) -> _States:
    """FSDP FULL_SHARD (= stage 3 with fp32 sharded FlatParameters, Zhao et al. 2023 section 3),
    with optional CPU offload."""
    c, tb, N = lay.c, lay.trainable_bytes, plan.num_gpus
    # Unsharded parameters in the compute dtype: the root unit (embeddings, lm_head) stays gathered
    # between forward and backward, plus the current and the prefetched layer, plus the unsharded
    # gradient of the layer being reduce-scattered (torch/distributed/fsdp).
    largest_layer = p.largest_layer_params
    trained_share = _num.minimum(1.0, p.trainable / lay.arch.total_params)
    # At the loss only the root unit is gathered: the root never reshards after forward, the layers do
    # (reshard_after_forward=True; torch/distributed/fsdp/_fully_shard/_fsdp_state.py _lazy_init).
    comm = c * p.root_params
    # While a layer runs backward: it and the prefetched next one unsharded, its unsharded gradient and
    # the reduce-scatter input the gradients are copied into (torch/distributed/fsdp/_fully_shard/
    # _fsdp_collectives.py foreach_reduce), both in the compute dtype: accelerate's FSDP2 policy sets
    # reduce_dtype = param_dtype (accelerate/utils/dataclasses.py set_mixed_precision).
    comm_bwd = c * 2 * largest_layer + 2 * c * largest_layer * trained_share
    st = _States(weights=p.stored_bytes / N, grads=cp.trainable * tb / N, master=0.0, opt_dev=opt_dev / N,
                 paged=paged / N, comm=comm, extra=cp.extra / N, comm_backward=comm_bwd)
    if lay.cpu_offload:
        st.host = st.weights + st.grads + st.opt_dev + st.paged
        # FSDP CPUOffload(offload_params=True): sharded params, their grads and the optimizer state on CPU
        st.host_parts = {"params": st.weights, "grads": st.grads, "optimizer": st.opt_dev + st.paged}
        st.weights = st.grads = st.opt_dev = st.paged = 0.0
    return st


def _sharded_states(lay: Layout, plan, p: Params, cp: _Copies) -> _States:
    """2. Model states per GPU: weights, gradients, master weights, optimizer state (the value
    model's included), communication buffers, frozen models, and what is offloaded to the host."""
    opt_dev, paged = optimizer_state_bytes(lay, p)
    opt_dev, paged = opt_dev * (1 + cp.share), paged * (1 + cp.share)
    if lay.sharding in ("none", "ddp"):
        st = _replicated_states(lay, plan, p, cp, opt_dev, paged)
    elif lay.zero:
        st = _zero_states(lay, plan, p, cp, opt_dev, paged)
    else:
        st = _fsdp_states(lay, plan, p, cp, opt_dev, paged)
    if lay.hardware.vendor == "cpu":
        st.opt_dev = st.opt_dev + st.paged  # no unified memory to page into on the host
        st.paged = 0.0
    return st


def _activations(lay: Layout, plan, T, S, copies_trained):
    """4. Bytes kept for backward (see activation_coefficients): under checkpointing each layer's
    input plus, in backward, one recomputed layer; otherwise every layer's saved set. Returns
    (saved, recomputed layer, gradient working set)."""
    arch = lay.arch
    L = arch.num_layers
    k = activation_coefficients(lay)
    n_moe = arch.num_moe_layers
    n_dense = L - n_moe
    layer_terms = k.per_layer_seq * S + k.per_layer_r * plan.lora_r
    added = lay.technique.method.added(lay, plan)
    added_saved = added.saved_per_token if added.layers else 0.0  # per carrying layer (adapters, memory experts)
    layer_max = (k.per_layer_moe if n_moe else k.per_layer_dense) + layer_terms + added_saved
    top = k.top + k.top_r * plan.lora_r
    if lay.checkpointing and lay.checkpoint_offload:
        # The layer inputs wait in host memory; in backward the input of the layer being recomputed
        # is copied back (unsloth_zoo/gradient_checkpointing.py Unsloth_Offloaded_Gradient_Checkpointer).
        saved = T * (k.checkpoint_per_layer + top)
        recompute = T * layer_max
    elif lay.checkpointing:
        saved = T * (L * k.checkpoint_per_layer + top)
        recompute = T * layer_max
    else:
        saved = T * (n_dense * k.per_layer_dense + n_moe * k.per_layer_moe + L * layer_terms
                     + added.layers * added_saved + top)
        recompute = 0.0
    saved = saved * copies_trained  # PPO runs the value model's forward on the same tokens
    return saved, recompute, T * k.backward_ws


def offloaded_checkpoint_bytes(lay: Layout, plan, T, copies_trained=1):
    """Host bytes of checkpointed layer inputs a framework offloads (all L layers' inputs)."""
    if not (lay.checkpointing and lay.checkpoint_offload):
        return 0.0
    return T * lay.arch.num_layers * activation_coefficients(lay).checkpoint_per_layer * copies_trained


def framework_logits_bytes(lay: Layout, T, T_loss, S=None):
    """5. The loss' logits as the framework computes them: trl's and transformers' paths
    (:func:`loss_logits_bytes`), or the framework's own chunked or fused loss for the SFT objective
    (its ``loss`` declaration, ``ftadvisor/frameworks/``)."""
    loss = lay.framework.loss
    if loss.kind == "trl" or not lay.technique.objective.sft_loss:
        return loss_logits_bytes(lay, T, T_loss)
    a = lay.arch
    return loss.logits_bytes(T_loss, a.vocab_size, a.hidden_size, lay.c, lay.precision in ("bf16-mixed", "fp16-mixed"),
                             sequences=1 if S is None else T_loss / S,
                             trains_base=lay.technique.method.base_training != "none")


def _workspace_bytes(lay: Layout, p: Params):
    """6. Transient workspaces: bitsandbytes dequantizes one 4/8-bit weight to the compute dtype per
    matmul (bitsandbytes/autograd/_functions.py MatMul4Bit); peft's DoRA forms the full weight
    W + s*BA in fp32 to take its column norm (peft/tuners/lora/dora.py) and pushes an in x in
    identity through the LoRA matrices to form B @ A (get_weight_norm path; measured 392 MiB for
    Llama-8B's down_proj)."""
    c = lay.c
    qws = p.quant_largest_linear * c
    if lay.technique.method.dora:
        big = max((r_.spec.in_features * r_.spec.out_features for r_ in lay.roles if r_.adapted), default=0)
        eye = max((r_.spec.in_features ** 2 for r_ in lay.roles if r_.adapted), default=0)
        qws = qws + big * 8 + eye * c
    return qws


def _generation_phase(lay: Layout, plan, static: dict, zero: dict, qws) -> dict:
    """Generation (PPO/GRPO): KV cache of the rollout batch, 2 * L * kv * d per token in the compute
    dtype (Pope et al. 2022, "Efficiently Scaling Transformer Inference", section 2; transformers
    DynamicCache), plus per-step logits and sampling buffers. How many sequences are generated at
    once is the objective's run shape (trl's GRPO: micro_batch x steps_per_generation; trl's PPO:
    chunks of local_rollout_forward_batch_size = 64)."""
    arch, obj, c = lay.arch, lay.technique.objective, lay.c
    V, S = arch.vocab_size, plan.seq_len
    B = obj.generation_batch(plan)
    kv = 2 * arch.attention_layers * arch.num_kv_heads * arch.head_dim * c * B * S  # SSM/conv layers keep no KV
    gen_logits = B * V * (c + 4 + 4)
    if obj.full_sequence_logits:
        # scoring the rollouts (PPO): full-sequence logits and their log-softmax, no grad
        gen_logits = _num.maximum(gen_logits, B * S * V * (c + 4))
    g = dict(static, **zero)
    g.update(generation_cache=kv, logits=gen_logits, quantization_workspace=qws)
    return g


def evaluate(lay: Layout, plan) -> Evaluation:
    """Per-GPU bytes at each training phase. ``plan`` is a TrainingPlan or any object with the
    same numeric attributes (possibly numpy arrays)."""
    arch, obj = lay.arch, lay.technique.objective
    tb, N = lay.trainable_bytes, plan.num_gpus
    p = count_params(lay, plan)
    cp = _model_copies(lay, plan, p)
    st = _sharded_states(lay, plan, p, cp)

    # 3. Tokens on one GPU per micro-batch.
    S = plan.seq_len
    T = plan.micro_batch_size * obj.sequences_per_example * S
    T_loss = plan.micro_batch_size * obj.sequences_per_example * plan.rl_max_new_tokens if obj.generation else T

    saved, recompute, bws = _activations(lay, plan, T, S, cp.copies_trained)
    logits_total = framework_logits_bytes(lay, T, T_loss, S)  # 5. (see loss_logits_bytes)
    qws = _workspace_bytes(lay, p)
    if lay.optimizer_in_backward:
        # Each parameter steps in its post-accumulate-grad hook and drops its gradient, so at most
        # the largest trainable tensor's gradient is alive (torchtune register_optim_in_bwd_hooks).
        st.grads = _num.minimum(st.grads, p.largest_trainable * tb)
    if lay.checkpointing and lay.checkpoint_offload:
        act_host = offloaded_checkpoint_bytes(lay, plan, T, cp.copies_trained)
        st.host = st.host + act_host
        st.host_parts = dict(st.host_parts, activations=act_host)

    # 7. Gradients alive during backward: with accumulation the previous micro-batches'
    #    gradients; otherwise the first gradient backward allocates, the lm_head's (V x h).
    head_grad = (arch.lm_head_params or arch.embedding_params) * tb if lay.lm_head_trained else 0.0
    if lay.sharding in ("zero2", "zero3", "fsdp"):
        head_grad = head_grad / N
    head_grad = _num.minimum(head_grad, st.grads)

    framework = FRAMEWORK_OVERHEAD_BYTES_GPU if lay.hardware.vendor != "cpu" else 0.0
    static = dict(
        weights=st.weights, optimizer_state=st.opt_dev, master_weights=st.master, extra_models=st.extra,
        communication=st.comm, framework_overhead=framework,
    )
    zero = dict(gradients=0.0, activations=0.0, logits=0.0, generation_cache=0.0, quantization_workspace=0.0)

    # Peak of forward+backward: all saved activations, then either the loss' logits tensors (at the
    # end of forward) or the recomputed layer and the gradient working set (in backward). The
    # lm_head's gradient appears only after the loss' backward has released the logits.
    # Sharded layouts hold some buffers only while layers run backward (st.comm_backward, FSDP2).
    act_branch = recompute + bws + head_grad + st.comm_backward
    use_logits = logits_total >= act_branch
    grads_fb = _num.where(plan.gradient_accumulation_steps > 1, st.grads, _num.where(use_logits, 0.0, head_grad))
    grads_fb = _num.maximum(grads_fb, st.grads_resident)  # ZeRO-3's partition buffer holds the head's share too
    fb = dict(static, **zero)
    fb.update(
        communication=st.comm + _num.where(use_logits, 0.0, st.comm_backward),
        gradients=grads_fb,
        master_weights=st.master + st.copies,
        activations=saved + _num.where(use_logits, 0.0, recompute + bws),
        logits=_num.where(use_logits, logits_total, 0.0),
        quantization_workspace=qws,
    )
    phases = {"forward_backward": fb}

    # Optimizer step: all gradients plus the optimizer's temporaries (fused AdamW and the
    # bitsandbytes kernels update in place; Adafactor/SGD's per-tensor path allocates about two
    # fp32 copies of the largest tensor).
    step_tmp = 2 * 4 * p.largest_trainable if lay.optimizer in ("adafactor", "sgd") else 0.0
    opt_phase = dict(static, **zero)
    opt_phase.update(gradients=st.grads, activations=step_tmp)
    phases["optimizer_step"] = opt_phase

    if obj.generation:
        phases["generation"] = _generation_phase(lay, plan, static, zero, qws)
    if lay.quantization != "none":
        # Loading a quantized base: the quantized weights plus what the framework's load path keeps
        # in the compute dtype at once (one tensor quantized on the GPU at a time, or nothing for a
        # pre-quantized checkpoint) -- framework ``quantized_load``.
        load = dict(zero, weights=st.weights, optimizer_state=0.0, master_weights=0.0, extra_models=st.extra,
                    communication=0.0, framework_overhead=framework)
        load["quantization_workspace"] = lay.framework.quantized_load.transient_elements(p.quant_largest_linear) * lay.c
        phases["load"] = load

    return Evaluation(phases=phases, params=p, trainable_params=cp.trainable, paged_bytes=st.paged, host_bytes=st.host,
                      host_parts=st.host_parts)
