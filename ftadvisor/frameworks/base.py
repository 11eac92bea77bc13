"""What a training-framework part declares: how it places memory, at a named version.

The same plan (model, technique, precision, micro-batch ...) costs different memory in different
training stacks: one keeps the full-vocabulary logits in fp32, another computes the loss in chunks
or fuses it with the output projection; one offloads checkpointed activations to the host, another
steps the optimizer inside backward. Each framework is one module of this package declaring seven
behaviours, each a small frozen record that cites the file and function of the framework's source
it was read from:

- ``loss``: how the SFT loss materialises the logits;
- ``checkpointing``: checkpoint granularity, where it is available, and activation offload;
- ``optimizer``: where the optimizer runs and whether it steps inside backward;
- ``quantized_load``: how a QLoRA base is loaded (the load-time peak);
- ``attention``: whether K/V are expanded to every query head before the attention kernel;
- ``dtypes``: which modules stay in which dtype, and which precisions it runs;
- ``allocator``: the CUDA caching-allocator settings it applies.

The memory and speed models read these records (``ftadvisor.memory``); none of them compares a
framework's name. Arithmetic here works on floats and numpy arrays alike (``ftadvisor._num``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from ftadvisor import _num

GIB = 2**30


def _ceil(x):
    """math.ceil for a number, numpy.ceil for an array (grids)."""
    if _num._is_array(x):
        import numpy as np

        return np.ceil(x)
    return math.ceil(x)


@dataclass(frozen=True)
class Loss:
    """How the SFT cross-entropy materialises the logits of the ``T`` loss tokens.

    kind:
    - ``trl``: the trl/transformers path modelled in ``memory.loss_logits_bytes`` (full-vocab fp32
      ``ForCausalLMLoss``, or trl's ``chunked_nll`` when ``trl_chunked`` and the plan asks for it);
    - ``chunked``: the lm_head output is a list of token chunks and the cross-entropy runs per chunk
      (torchtune, litgpt);
    - ``fused``: the lm_head matmul and the cross-entropy run together per token chunk and the
      gradient is formed in the forward, so no full logits tensor ever exists (unsloth).
    """

    kind: Literal["trl", "chunked", "fused"]
    source: str
    trl_chunked: bool = False
    """trl's SFTTrainer with its ``chunked_nll`` default is the loss (only for kind ``trl``)."""
    chunks: int = 0
    """A fixed number of token chunks (torchtune ``num_output_chunks``); 0: see ``chunk_tokens``."""
    chunk_tokens: int = 0
    """Tokens per chunk (litgpt ``lm_head_chunk_size``); 0: see ``chunks``."""
    upcast: Literal["always", "autocast"] = "always"
    """The chunk is cast to fp32 before the log-softmax explicitly (``.float()``), or only by autocast
    (log_softmax is on autocast's fp32 list) under *-mixed precision."""
    logits_kept_in_backward: bool = False
    """The training loop still references the compute-dtype logits while backward runs."""
    fused_chunk_cap_bytes: float = 0.0
    """Fused loss: the most fp32 chunk-logit bytes one chunk may take (unsloth's target)."""
    output_bytes: int = 0
    """Bytes per logit of the model output the loss receives and the loop keeps, where the framework
    casts it (Lightning Fabric's convert_output: fp32, 4); 0: the compute dtype."""
    chunk_per_sequence: bool = False
    """The chunks split the sequence dimension of the (B, S, V) output, so one chunk holds
    ``chunk_tokens`` positions of every sequence in the micro-batch (litgpt ``x.split(n, dim=1)``)."""
    head_whole_when_base_trains: bool = False
    """Full fine-tuning runs the lm_head on the whole micro-batch and chunks only the cross-entropy
    (rows of the flattened logits): the chunk gradients are concatenated in backward (split's backward),
    so the kept logits, the held chunk gradients and their concatenation are alive together."""

    def chunk_token_count(self, T, V, sequences=1, trains_base: bool = False):
        """Tokens in one chunk for ``T`` loss tokens in ``sequences`` sequences."""
        if self.kind == "fused":
            return T / fused_chunks(T, V, self.fused_chunk_cap_bytes)
        if self.chunks:
            return _ceil(T / self.chunks)
        if self.chunk_per_sequence and not (trains_base and self.head_whole_when_base_trains):
            return _num.minimum(T, sequences * self.chunk_tokens)
        return _num.minimum(T, self.chunk_tokens)

    def logits_bytes(self, T, V, h, c, mixed: bool, sequences=1, trains_base: bool = False):
        """Peak bytes of logits and loss tensors for ``T`` loss tokens (kinds ``chunked`` and ``fused``).

        chunked (all chunks' log-softmax outputs are kept for backward; F.log_softmax saves its
        output, nll_loss only the target):
          forward end: the compute-dtype logits (c) + every chunk's log-softmax (ls) + the fp32 upcast
                       of the chunk in flight (u);
          backward:    the kept log-softmax (ls) [+ the logits when still referenced] + one chunk's
                       incoming and outgoing log-softmax gradients (2 ls).
        fused: one chunk's compute-dtype logits, their fp32 copy and the fp32 gradient (c + 8 per
        chunk logit), plus the hidden-state gradient allocated up front (T x h x c).
        ``output_bytes`` replaces ``c`` for the logits the loss receives; with a whole lm_head in full
        fine-tuning (``head_whole_when_base_trains``) backward also reaches the concatenation of all
        chunk gradients while they and the kept logits are alive: T x V x (logits + 2 ls).
        """
        Tc = self.chunk_token_count(T, V, sequences, trains_base)
        if self.kind == "fused":
            return Tc * V * (c + 4 + 4) + T * h * c
        cl = self.output_bytes or c
        ls = 4 if (self.upcast == "always" or mixed or cl == 4) else cl
        up = 4 if (ls == 4 and cl < 4) else 0
        fwd = T * V * (cl + ls) + Tc * V * up
        bwd = T * V * (ls + (cl if self.logits_kept_in_backward else 0)) + Tc * V * 2 * ls
        if trains_base and self.head_whole_when_base_trains:
            bwd = _num.maximum(bwd, T * V * (cl + 2 * ls))
        return _num.maximum(fwd, bwd)


def fused_chunks(T, V, cap_bytes):
    """unsloth's chunk count (unsloth_zoo/fused_losses/cross_entropy_loss.py get_chunk_size): the
    exact count that keeps each chunk's fp32 logits (T x V x 4 / n) under the target, rounded up to
    a multiple of 4; one chunk when everything fits."""
    exact = T * V * 4 / cap_bytes
    return _num.where(exact <= 1.0 + 1e-9, 1, _ceil(exact / 4 - 1e-9) * 4)


@dataclass(frozen=True)
class Checkpointing:
    """Activation checkpointing as the framework applies it."""

    granularity: Literal["decoder_layer"]
    """What one checkpoint covers: every framework here wraps each decoder layer and keeps its input."""
    single_device: bool
    """Checkpointing is available on one GPU (litgpt applies it only in its multi-device strategy)."""
    offload: Literal["none", "layer_inputs"]
    """The kept layer inputs are copied to host memory and fetched back for recomputation."""
    source: str

    def applies(self, plan) -> bool:
        """The plan's ``gradient_checkpointing`` takes effect in this framework."""
        return bool(plan.gradient_checkpointing) and (self.single_device or plan.num_gpus > 1)


@dataclass(frozen=True)
class OptimizerStep:
    """Where the optimizer runs and when it steps."""

    placement: Literal["device"]
    """Where the optimizer state and step live without the plan's ``cpu_offload`` (the GPU)."""
    in_backward_full: bool
    """Full fine-tuning on one GPU steps each parameter as soon as its gradient is accumulated and
    frees that gradient (torchtune ``optimizer_in_bwd``); needs gradient_accumulation_steps == 1."""
    source: str

    def in_backward(self, trains_base: bool, plan) -> bool:
        return (self.in_backward_full and trains_base and plan.num_gpus == 1
                and plan.gradient_accumulation_steps == 1)


@dataclass(frozen=True)
class QuantizedLoad:
    """How a 4/8-bit base is loaded."""

    path: Literal["per_tensor", "prequantized"]
    """``per_tensor``: each weight arrives in the compute dtype and is quantized on the GPU one tensor at
    a time; ``prequantized``: the checkpoint is already quantized (no compute-dtype copy)."""
    source: str

    def transient_elements(self, largest_quantized_linear):
        """Compute-dtype elements alive beside the quantized model while loading."""
        return largest_quantized_linear if self.path == "per_tensor" else 0.0


@dataclass(frozen=True)
class AttentionKV:
    """K/V handling in training attention."""

    kv_expanded: bool
    """K and V are copied to all query heads before the kernel (which then saves the copies)."""
    source: str
    fused_qkv: bool = False
    """q, k and v are one linear (and one LoRA A over its input), so their input is kept once, not per
    projection (the autocast cast of an fp32 input, or the input of each trained weight)."""
    output_copied: bool = False
    """The kernel's output is (B, H, S, D)-contiguous and is copied back to (B, S, H*D) for the output
    projection, so a trained o_proj keeps a copy beside the output the kernel saves."""


@dataclass(frozen=True)
class Dtypes:
    """Which modules stay in which dtype, and which precisions the framework runs."""

    kbit_fp32_upcast: bool
    """Next to a 4/8-bit base every other parameter (norms, embeddings, lm_head) is upcast to fp32, and
    with it the residual stream (peft prepare_model_for_kbit_training)."""
    mixed_precision: bool
    """Runs autocast *-mixed precision; without it a *-mixed plan runs in bf16 throughout."""
    mixed_with_quantized: bool
    """Runs *-mixed precision over a quantized base."""
    source: str
    norm_scale_fp32: bool = False
    """RMSNorm multiplies by its weight in fp32, so a trained norm weight keeps the fp32 normalised input
    (instead of its cast to the residual dtype)."""
    mixed_frozen_fp32: bool = False
    """Under *-mixed the frozen parameters stay fp32 too (the module is not converted), so autocast casts
    each frozen matmul weight in every forward and the matmul saves that cast for the input gradient."""

    def precision(self, requested: str, quantized: bool) -> str:
        """The precision the framework really trains in for the plan's request."""
        if requested.endswith("-mixed") and (not self.mixed_precision or (quantized and not self.mixed_with_quantized)):
            return "bf16-true" if requested.startswith("bf16") else "fp32"
        return requested


@dataclass(frozen=True)
class Allocator:
    """CUDA caching-allocator settings the framework applies."""

    expandable_segments: Literal["always", "multi_gpu", "never"]
    """``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` set by the framework itself."""
    source: str

    def expandable(self, plan) -> bool:
        return self.expandable_segments == "always" or (self.expandable_segments == "multi_gpu" and plan.num_gpus > 1)


DECLARATIONS = ("loss", "checkpointing", "optimizer", "quantized_load", "attention", "dtypes", "allocator")


class Framework:
    """One training stack at a named version. Subclasses set every class attribute."""

    name: ClassVar[str]
    version: ClassVar[str]
    repository: ClassVar[str]
    summary: ClassVar[str]
    measured_here: ClassVar[bool] = False
    """Its figures rest on runs of this project's own stack; otherwise they are derived from source."""

    loss: ClassVar[Loss]
    checkpointing: ClassVar[Checkpointing]
    optimizer: ClassVar[OptimizerStep]
    quantized_load: ClassVar[QuantizedLoad]
    attention: ClassVar[AttentionKV]
    dtypes: ClassVar[Dtypes]
    allocator: ClassVar[Allocator]

    @classmethod
    def label(cls) -> str:
        return f"{cls.name} {cls.version}"

    @classmethod
    def notes(cls, plan, trains_base: bool, quantized: bool, sft: bool) -> tuple[str, ...]:
        """What the estimate takes from this framework that differs from the plan as written."""
        out = []
        if not cls.measured_here:
            out.append(f"framework {cls.label()}: figures derived from its source ({cls.repository}), "
                       "not measured here")
        if plan.gradient_checkpointing and not cls.checkpointing.applies(plan):
            out.append(f"{cls.name} checkpoints activations only with several GPUs; on one GPU the estimate "
                       "keeps every layer's activations")
        real = cls.dtypes.precision(plan.precision, quantized)
        if real != plan.precision:
            out.append(f"{cls.name} trains {plan.precision} plans in {real} (no autocast for this plan; see its "
                       "dtypes declaration)")
        if cls.optimizer.in_backward(trains_base, plan):
            out.append(f"{cls.name} steps the optimizer inside backward: one parameter's gradient alive at a time")
        if cls.checkpointing.offload == "layer_inputs" and cls.checkpointing.applies(plan):
            out.append(f"{cls.name} offloads checkpointed layer inputs to host memory")
        if not sft and cls.loss.kind != "trl":
            out.append(f"{cls.name}: the loss of this objective is estimated as trl's")
        return tuple(out)
