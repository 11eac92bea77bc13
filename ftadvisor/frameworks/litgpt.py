"""LitGPT 0.5.13 (Lightning-AI/litgpt): ``litgpt finetune_lora`` on Lightning Fabric.

Its own model code (litgpt/model.py): K/V repeated to all heads, the lm_head run in chunks of 128
tokens with a per-chunk cross-entropy, activation checkpointing only in the multi-device strategy,
and quantization only in a "-true" precision. Installs here beside torch 2.13; its figures are
derived from source until its CPU runs are in calibration/results.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss, OptimizerStep,
                                       QuantizedLoad)

# litgpt/finetune/lora.py fit: model(input_ids, lm_head_chunk_size=128)
LM_HEAD_CHUNK_TOKENS = 128


class LitGPT(Framework):
    name = "litgpt"
    version = "0.5.13"
    repository = "Lightning-AI/litgpt"
    summary = "Lightning Fabric recipes on litgpt's own model code; chunked lm_head + cross-entropy"

    loss = Loss(
        kind="chunked", chunk_tokens=LM_HEAD_CHUNK_TOKENS, upcast="autocast", logits_kept_in_backward=True,
        source="litgpt/finetune/lora.py fit (logits = model(input_ids, lm_head_chunk_size=128) stays referenced "
               "through fabric.backward); litgpt/utils.py chunked_cross_entropy (F.cross_entropy per chunk, no "
               "explicit upcast)")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=False, offload="none",
        source="litgpt/finetune/lora.py setup (strategy 'auto' on one device: no checkpointing) and parallelize_fn "
               "(checkpoint_wrapper per Block with devices > 1)")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=False,
        source="litgpt/finetune/lora.py fit (optimizer.step() after the accumulated fabric.backward)")
    quantized_load = QuantizedLoad(
        path="per_tensor",
        source="lightning/fabric/plugins/precision/bitsandbytes.py BitsandbytesPrecision (Linear4bit quantizes each "
               "weight as load_checkpoint copies it in)")
    attention = AttentionKV(
        kv_expanded=True,
        source="litgpt/model.py CausalSelfAttention.forward (k/v repeat_interleave(q_per_kv) before "
               "scaled_dot_product_attention)")
    dtypes = Dtypes(
        kbit_fp32_upcast=False, mixed_precision=True, mixed_with_quantized=False,
        source="litgpt/finetune/lora.py setup ('Quantization and mixed precision is not supported': --quantize "
               "needs a -true precision); litgpt/utils.py get_default_supported_precision")
    allocator = Allocator(
        expandable_segments="never",
        source="litgpt sets no PYTORCH_CUDA_ALLOC_CONF (litgpt/finetune/lora.py, litgpt/__main__.py)")


FRAMEWORK = LitGPT
