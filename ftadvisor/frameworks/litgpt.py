"""LitGPT 0.5.13 (Lightning-AI/litgpt): ``litgpt finetune_lora`` on Lightning Fabric.

Its own model code (litgpt/model.py): K/V repeated to all heads, the lm_head run in chunks of 128
tokens with a per-chunk cross-entropy, activation checkpointing only in the multi-device strategy,
and quantization only in a "-true" precision. The declarations are derived from source; the memory
they give is checked against litgpt's own ``fit`` run on CPU with the live-tensor meter
(calibration/frameworks/measure_litgpt.py -> calibration/results/frameworks/litgpt-cpu.jsonl,
tests/test_framework_golden.py). ``measured_here`` stays False: its speed is not measured.
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

    # Every precision ends in fp32 logits: Fabric's module wrapper casts the forward's output to the default
    # dtype (lightning/fabric/wrappers.py _FabricModule.forward -> precision.convert_output; plugins/precision/
    # half.py HalfPrecision and amp.py MixedPrecision convert_output: torch.get_default_dtype()), so the
    # cross-entropy's log-softmax is fp32 too. LoRA chunks the lm_head along the sequence (B x 128 tokens per
    # chunk); full fine-tuning runs the lm_head whole and chunks only the cross-entropy rows.
    loss = Loss(
        kind="chunked", chunk_tokens=LM_HEAD_CHUNK_TOKENS, upcast="autocast", logits_kept_in_backward=True,
        output_bytes=4, chunk_per_sequence=True, head_whole_when_base_trains=True,
        source="litgpt/finetune/lora.py fit (logits = model(input_ids, lm_head_chunk_size=128) stays referenced "
               "through fabric.backward); litgpt/model.py GPT.forward (x.split(lm_head_chunk_size, dim=1)); "
               "litgpt/finetune/full.py fit (model(input_ids), no lm_head chunks); litgpt/utils.py "
               "chunked_cross_entropy (F.cross_entropy per chunk of 128 rows when the head was not chunked); "
               "lightning/fabric/wrappers.py _FabricModule.forward (convert_output to fp32)")
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
        kv_expanded=True, output_copied=True, fused_qkv=True,
        source="litgpt/model.py CausalSelfAttention.__init__ (one self.qkv Linear; litgpt/lora.py LoRAQKVLinear: "
               "one lora_A over its input) and .forward (k/v repeat_interleave(q_per_kv) before "
               "scaled_dot_product_attention; q after apply_rope + torch.cat is (B, nh, T, hs)-contiguous, so "
               "the kernel output's transpose(1, 2) is copied by y.reshape(B, T, C) before self.proj)")
    dtypes = Dtypes(
        kbit_fp32_upcast=False, mixed_precision=True, mixed_with_quantized=False, mixed_frozen_fp32=True,
        norm_scale_fp32=True,
        source="litgpt/model.py RMSNorm.forward ((x_normed * weight.float()).to(dtype): fp32 multiply); "
               "litgpt/finetune/lora.py setup ('Quantization and mixed precision is not supported': --quantize "
               "needs a -true precision); litgpt/utils.py get_default_supported_precision; lightning/fabric/"
               "plugins/precision/amp.py MixedPrecision (no convert_module / module_init_context: GPT(config) "
               "stays fp32 under bf16-mixed, unlike half.py HalfPrecision.convert_module)")
    allocator = Allocator(
        expandable_segments="never",
        source="litgpt sets no PYTORCH_CUDA_ALLOC_CONF (litgpt/finetune/lora.py, litgpt/__main__.py)")


FRAMEWORK = LitGPT
