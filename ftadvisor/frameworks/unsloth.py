"""Unsloth 2026.8.19 with unsloth_zoo 2026.8.13 (unslothai/unsloth, unslothai/unsloth-zoo).

Patches transformers models: a fused lm_head + cross-entropy that never materialises the full
logits, "unsloth" gradient checkpointing that offloads each layer's input to host memory, LoRA
parameters the only fp32 tensors, pre-quantized ``-bnb-4bit`` checkpoints, and expandable allocator
segments. Derived from source: Unsloth needs a GPU.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (GIB, Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss,
                                       OptimizerStep, QuantizedLoad)

# unsloth_zoo/fused_losses/cross_entropy_loss.py _get_chunk_multiplier: target = min(free VRAM / 2, 4 GiB)
# of fp32 chunk logits; the 4 GiB cap is what a card with room to train leaves.
FUSED_CE_TARGET_BYTES = 4 * GIB


class Unsloth(Framework):
    name = "unsloth"
    version = "2026.8.19 (unsloth_zoo 2026.8.13)"
    repository = "unslothai/unsloth"
    summary = "patched transformers models: fused CE, offloaded checkpoints, pre-quantized bases"

    loss = Loss(
        kind="fused", fused_chunk_cap_bytes=FUSED_CE_TARGET_BYTES,
        source="unsloth/models/llama.py CausalLM_fast_forward (unsloth_fused_ce_loss unless UNSLOTH_RETURN_LOGITS); "
               "unsloth_zoo/fused_losses/cross_entropy_loss.py UnslothFusedLoss.forward (grad_and_value per chunk, "
               "grad_inputs allocated up front) and get_chunk_size")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=True, offload="layer_inputs",
        source="unsloth_zoo/gradient_checkpointing.py Unsloth_Offloaded_Gradient_Checkpointer.forward "
               "(hidden_states.to('cpu', non_blocking=True)) for use_gradient_checkpointing='unsloth', the default "
               "of FastLanguageModel.get_peft_model")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=False,
        source="unsloth/trainer.py UnslothTrainer (trl/transformers Trainer: optimizer.step after backward)")
    quantized_load = QuantizedLoad(
        path="prequantized",
        source="unsloth/models/loader.py FastLanguageModel.from_pretrained (load_in_4bit maps to a pre-quantized "
               "'unsloth/...-bnb-4bit' checkpoint)")
    attention = AttentionKV(
        kv_expanded=False,
        source="unsloth/utils/attention_dispatch.py select_attention_backend / run_attention (flash-attn with "
               "native GQA when installed; SDPA with enable_gqa otherwise; only the xformers fallback expands K/V)")
    dtypes = Dtypes(
        kbit_fp32_upcast=False, mixed_precision=True, mixed_with_quantized=True,
        source="unsloth_zoo/training_utils.py prepare_model_for_training (only lora_A/lora_B/magnitude upcast to "
               "fp32; frozen parameters keep the loaded dtype)")
    allocator = Allocator(
        expandable_segments="always",
        source="unsloth_zoo/__init__.py (sets PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF=expandable_segments:True "
               "on import)")


FRAMEWORK = Unsloth
