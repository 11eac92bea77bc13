"""What a technique part declares: the protocol every method and objective module implements.

A technique is an *objective* (how the model is trained: SFT, DPO, ORPO, KTO, PPO, GRPO) applied
with a *method* (what trains: everything, LoRA, adapters, half the layers, memory experts, ...).
Each lives in one module of this package and declares, in one place:

- what trains (the roles of the base model's parameters) and what it adds (parameters, FLOPs and
  tensors kept for backward per token, the kernels it runs);
- for an objective, the run shape: sequences per example, extra models, no-grad passes,
  generation, updates per rollout;
- the data formats it accepts, its evidence keys in ``profiles/quality/evidence.yaml``, and how it
  shifts the expected quality;
- its training hook: a ``"module:function"`` path that the training engine imports when it runs
  (so this package stays free of torch, and free of imports from the layers above it).

The cost models (memory, speed, quality), the recommender, the engine, the data checks and the
faces read these declarations; none of them compares technique names.

Numbers may be Python floats or numpy arrays (``ftadvisor.estimate_grid`` evaluates many plans at
once): the hooks use arithmetic and ``ftadvisor._num`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ftadvisor import _num

# --- the speed model's vocabulary -------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One eager kernel (or a run of identical small ones) of a forward pass, as the speed model
    replays it (``ftadvisor/speed.py``)."""

    units: float  # host op units (see speed.ops_per_layer_forward)
    flops_mm: float = 0.0
    flops_attn: float = 0.0
    weight_bytes: float = 0.0
    mem_bytes: float = 0.0
    dq_bytes: float = 0.0
    mm_tokens: float = 1.0  # rows of the GEMM (for the skinny-GEMM efficiency)
    kind: str = "ew"  # ew | gemm | attn | adapter | dequant | host


# --- what a method adds -------------------------------------------------------------------------


@dataclass
class Added:
    """Trainable modules a method inserts into the decoder (bottleneck adapters, memory experts),
    for one plan. LoRA matrices on base linears are not here: they are per linear (``Method.lora``)."""

    params: Any = 0.0
    """Trainable parameters added, whole model."""
    matmul_params: Any = 0.0
    """Of which matmul weights, which autocast casts on every forward (biases are not cast)."""
    rows_cols: Any = 0.0
    """Rows + columns summed over its matrices (Adafactor's factored second moment)."""
    largest: Any = 0.0
    """Its largest single tensor (optimizer temporaries)."""
    tensors: float = 0.0
    """Number of parameter tensors (per-tensor optimizer kernels loop over them)."""
    layers: int = 0
    """Decoder layers that carry the modules."""
    saved_per_token: Any = 0.0
    """Bytes kept for backward per token in each carrying layer."""
    flops_per_token: Any = 0.0
    """Forward FLOPs per token, whole model."""
    top_only: bool = False
    """The modules sit in the top ``layers`` layers only, so backward stops there."""


NO_ADDITIONS = Added()


# --- methods ------------------------------------------------------------------------------------

BaseTraining = Literal["all", "half_layers", "none"]
NormTraining = Literal["with_embeddings", "all", "trained_layers"]
Retention = Literal["full", "frozen_base", "between"]


class Method:
    """What is trained and how the frozen base is stored. Subclasses set the class attributes and
    override the hooks they need; the defaults describe a method that adds nothing."""

    name: ClassVar[str]
    summary: ClassVar[str]
    source: ClassVar[str]
    evidence: ClassVar[tuple[str, ...]] = ()
    """Keys of ``profiles/quality/evidence.yaml`` this method's quality rests on."""
    train_hook: ClassVar[str]
    """``"module:function"`` that applies the method to a loaded model (the engine imports it)."""

    peft: ClassVar[bool] = False
    """Trains new parameters on a frozen base: the reference model is the base with them disabled,
    and the base may be quantized."""
    own_modules: ClassVar[bool] = False
    """The added modules are ftadvisor's (``ftadvisor/train/modules.py``), switched off for a reference."""
    default_quantization: ClassVar[str] = "none"
    quantized_base: ClassVar[bool] = False
    """Only meaningful over a quantized base (QLoRA)."""
    requires_moe: ClassVar[bool] = False
    lora: ClassVar[bool] = False
    """Adds LoRA matrices (Hu et al. 2021, eq. 3) to the targeted base linears."""
    dora: ClassVar[bool] = False
    """LoRA with DoRA's magnitude vector (peft ``use_dora``)."""
    base_training: ClassVar[BaseTraining] = "none"
    """Which base weights train: all of them (subject to ``moe_train``), half of the layers, or none."""
    norm_training: ClassVar[NormTraining] = "with_embeddings"
    """Norm weights train with the embeddings, always (adapters), or in the trained layers only (HFT)."""
    retention: ClassVar[Retention] = "frozen_base"
    """Which retention evidence applies: full fine-tuning's, a frozen base's (LoRA), or between."""
    retention_note: ClassVar[str | None] = None
    """Why the retention figure is borrowed (weak evidence), when it is."""
    uses_rank: ClassVar[bool] = False
    """Its size is set by ``plan.lora_r`` (LoRA family, memory experts)."""
    reference_method: ClassVar[bool] = False
    """The quality reference itself (full fine-tuning = 1.0): no method factor applies."""
    preferred_format: ClassVar[str | None] = None
    """A data format the method is meant for; other formats get a warning (memory tuning: facts)."""
    offered_data_kinds: ClassVar[tuple[str, ...] | None] = None
    """Data kinds ``recommend`` offers it for (None: any its objective takes)."""
    offered_for_preference: ClassVar[bool] = False
    """``recommend`` offers it with preference/RL objectives too."""
    recommend_optimizers: ClassVar[tuple[str, ...]] = ("adamw",)
    """Optimizers ``recommend`` tries (8-bit ones pay off where the optimizer state is large)."""
    unquantized: ClassVar[str | None] = None
    """The same method over an unquantized base (QLoRA -> LoRA), for comparing the two."""

    # -- what trains --------------------------------------------------------------------------
    def trained_layers(self, arch, plan) -> int:
        """Decoder layers whose weights train (HFT); 0 for the others."""
        return 0

    def added_layers(self, arch, plan) -> int:
        """Decoder layers carrying the modules this method adds (0: it adds none)."""
        return 0

    def added(self, lay, plan) -> Added:
        """Modules this method inserts (``lay`` is the memory model's Layout)."""
        return NO_ADDITIONS

    def layer_ops(self, lay, plan, tokens, resid_bytes) -> list[tuple[Op, float]]:
        """Kernels the added modules run in every decoder layer, with the share whose weights train."""
        return []

    def layer_traffic_bytes(self, lay, plan, resid_bytes) -> float:
        """Memory traffic per token the added modules add to each decoder layer."""
        return 0.0

    def block_ops(self, lay, plan, tokens) -> list[tuple[Op, float]]:
        """Kernels of a separate block repeated in ``added().layers`` layers (memory experts)."""
        return []

    def backward_depth_fraction(self, lay) -> float:
        """Share of decoder layers backward traverses (gradients must reach the lowest trained part)."""
        return 1.0

    # -- quality --------------------------------------------------------------------------------
    def quality_terms(self, q) -> None:
        """Add this method's factors to the quality estimate ``q`` (see ``ftadvisor.quality``)."""

    def recommend_reasons(self, r) -> list[str]:
        """Why ``recommend`` offers this method, given its chosen plan ``r.est`` (see
        ``ftadvisor.recommend._ReasonContext``)."""
        return []

    def rank_matters(self, task: str) -> bool:
        """The rank changes the expected quality on ``task`` (so an assumed rank is worth a note)."""
        return self.uses_rank


# --- objectives ---------------------------------------------------------------------------------

Reference = Literal["never", "always", "if_kl"]


class Objective:
    """How the model is trained: models resident, sequences per example, generation, run shape."""

    name: ClassVar[str]
    summary: ClassVar[str]
    source: ClassVar[str]
    evidence: ClassVar[tuple[str, ...]] = ()
    train_hook: ClassVar[str]
    """``"module:function"`` that builds the trl trainer (the engine imports it)."""
    data_formats: ClassVar[tuple[str, ...]]
    """Record formats (``ftadvisor.datasets.FORMATS``) the engine trains this objective on."""
    data_kind: ClassVar[str]
    """What the engine's data conversion calls the records this objective takes (text, preference,
    prompts ...)."""
    recommend_data_kinds: ClassVar[tuple[str, ...]] = ()
    """The kinds of user data (``ftadvisor.recommend.DATA_KINDS``) ``recommend`` trains this objective on."""
    recommend_priority: ClassVar[int] = 0
    """Order among the objectives for the same data (lower first; breaks ties between equal plans)."""
    prompt_bos: ClassVar[Literal["tokenizer", "prepend"]] = "tokenizer"
    """How the trainer puts special tokens before a text prompt: the tokenizer's own, or a BOS it
    prepends itself (trl's ORPO trainer, trl/experimental/utils.py add_bos_token_if_needed)."""
    default_learning_rate: ClassVar[float]
    """The engine's learning rate when the user gives none (trl's defaults for the trainer)."""

    sequences_per_example: ClassVar[int] = 1
    """Sequences one example becomes in a forward pass (2 for chosen + rejected)."""
    reference: ClassVar[Reference] = "never"
    """A reference model: never, always (unless precomputed), or when a KL term is on (GRPO beta)."""
    precompute_reference: ClassVar[bool] = False
    """The reference log-probs can be computed once before training (``dpo_precompute_ref``)."""
    peft_reference_adapter_copy: ClassVar[bool] = False
    """trl keeps a frozen copy of a LoRA adapter as the 'ref' adapter (DPOTrainer on a peft model)."""
    generation: ClassVar[bool] = False
    reward_model: ClassVar[bool] = False
    value_model: ClassVar[bool] = False
    updates_per_rollout: ClassVar[int] = 1
    """Optimizer passes over each batch of rollouts (trl PPOConfig.num_ppo_epochs)."""
    rollout_chunk: ClassVar[int | None] = None
    """Sequences generated and scored at a time; None: the whole generation batch at once."""
    nograd_passes_per_step: ClassVar[int] = 0
    """No-grad forwards per micro-batch besides the reference (PPO: policy log-probs, value, reward)."""
    reference_passes_per_step: ClassVar[int] = 1
    """No-grad forwards of the reference model per micro-batch, when it is used (KTO: 2)."""
    min_micro_batch: ClassVar[int] = 1
    """Smallest micro-batch the trainer accepts (KTO estimates its KL term within the micro-batch)."""
    sft_loss: ClassVar[bool] = False
    """The loss is plain next-token cross-entropy (trl's chunked SFT loss applies)."""
    full_sequence_logits: ClassVar[bool] = False
    """The training forward materialises logits over the whole sequence, not only the completion."""
    gathers_log_probs: ClassVar[bool] = False
    """The loss gathers each token's log-prob over the vocabulary with trl's selective_log_softmax
    (trl/trainer/utils.py) on the model's logits (DPO, ORPO, KTO)."""
    extra_logit_bytes: ClassVar[float] = 0.0
    """Bytes per logit of the chosen half beyond the log-prob gather's (ORPO's NLL log-softmax)."""
    multiple_completions_field: ClassVar[str | None] = None
    """Plan field giving completions per prompt (GRPO's group size)."""
    own_training_loop: ClassVar[bool] = False
    """The trl trainer runs its own loop on an Accelerator without mixed precision (trl's
    experimental PPOTrainer), so the engine wraps training in torch.autocast for *-mixed."""
    definition_figure: ClassVar[str | None] = None
    """Evidence figure defining what a preference/RL objective optimises (quoted when it does not apply)."""

    def learns_corpus(self) -> bool:
        """Learns from demonstrations, so a domain corpus or a fact list is a training signal for it."""
        return True

    def uses_reference(self, plan) -> bool:
        """A reference model's log-probs are needed during training."""
        if self.reference == "always":
            return not (self.precompute_reference and plan.dpo_precompute_ref)
        if self.reference == "if_kl":
            return plan.grpo_beta > 0
        return False

    def generation_batch(self, plan):
        """Sequences generated at once per GPU: micro-batch x accumulation, in chunks of
        ``rollout_chunk`` when set."""
        total = plan.micro_batch_size * plan.gradient_accumulation_steps
        return total if self.rollout_chunk is None else _num.minimum(total, self.rollout_chunk)

    def nograd_passes(self, plan) -> int:
        """No-grad forwards per micro-batch: the reference's plus the objective's own."""
        return (self.reference_passes_per_step if self.uses_reference(plan) else 0) + self.nograd_passes_per_step

    def completions_per_prompt(self, plan) -> int:
        return getattr(plan, self.multiple_completions_field) if self.multiple_completions_field else 1

    # -- quality --------------------------------------------------------------------------------
    def quality_terms(self, q) -> None:
        """Add this objective's factors for ``q.task`` to the quality estimate ``q``."""

    def applicable(self, task: str) -> bool:
        """The objective uses the task's training signal."""
        return True
