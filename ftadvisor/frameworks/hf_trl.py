"""Hugging Face transformers + peft + trl: the stack ``ftadvisor launch`` runs (the default).

Versions as installed here: trl 1.12, transformers 5.24, peft 0.21.2, accelerate 1.15. Its memory
model is the one calibrated on this project's own runs (calibration/results/), so its figures are
measured, not derived.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss, OptimizerStep,
                                       QuantizedLoad)


class HfTrl(Framework):
    name = "hf-trl"
    version = "trl 1.12 / transformers 5.24 / peft 0.21.2"
    repository = "huggingface/trl, huggingface/transformers, huggingface/peft"
    summary = "trl's SFTTrainer/DPOTrainer/... on transformers models with peft adapters (what ftadvisor launch runs)"
    measured_here = True

    loss = Loss(
        kind="trl", trl_chunked=True,
        source="trl/trainer/sft_trainer.py SFTTrainer.__init__ (loss_type 'chunked_nll' -> _patch_chunked_ce_lm_head, "
               "_chunked_cross_entropy_loss, _CHUNKED_LM_HEAD_CHUNK_SIZE = 256); 'nll' -> transformers/loss/"
               "loss_utils.py ForCausalLMLoss (logits.float() then cross_entropy)")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=True, offload="none",
        source="transformers/modeling_utils.py PreTrainedModel.gradient_checkpointing_enable "
               "(modeling_layers.py GradientCheckpointingLayer: one checkpoint per decoder layer)")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=False,
        source="transformers/trainer.py Trainer._inner_training_loop (optimizer.step() after the accumulated backward)")
    quantized_load = QuantizedLoad(
        path="per_tensor",
        source="transformers/quantizers/quantizer_bnb_4bit.py Bnb4BitHfQuantizer.create_quantized_param "
               "(each weight quantized on the GPU as it is loaded)")
    attention = AttentionKV(
        kv_expanded=False,
        source="transformers/integrations/sdpa_attention.py sdpa_attention_forward (use_gqa_in_sdpa -> "
               "enable_gqa, no repeat_kv); flash handles GQA natively; eager repeats K/V (memory.py models it)")
    dtypes = Dtypes(
        kbit_fp32_upcast=True, mixed_precision=True, mixed_with_quantized=True,
        source="peft/utils/other.py prepare_model_for_kbit_training ('cast all non INT8 parameters to fp32'), "
               "called by trl's trainers for a k-bit model; Trainer bf16=True = torch autocast")
    allocator = Allocator(
        expandable_segments="never",
        source="neither trl, transformers, accelerate nor ftadvisor/launch.py set PYTORCH_CUDA_ALLOC_CONF")


FRAMEWORK = HfTrl
