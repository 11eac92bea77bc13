"""Axolotl 0.18.0 (axolotl-ai-cloud/axolotl): YAML-configured fine-tuning on transformers + peft.

Its trainer is transformers' Trainer (not trl's SFTTrainer), so the SFT loss is the model's own
full-vocabulary fp32 cross-entropy unless a plugin (cut_cross_entropy, liger) is configured; the
defaults are modelled. Derived from source: axolotl does not run on this machine's CPU-only stack.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss, OptimizerStep,
                                       QuantizedLoad)


class Axolotl(Framework):
    name = "axolotl"
    version = "0.18.0"
    repository = "axolotl-ai-cloud/axolotl"
    summary = "YAML-driven transformers Trainer with peft; plugins (cut_cross_entropy, liger) off by default"

    loss = Loss(
        kind="trl", trl_chunked=False,
        source="src/axolotl/core/trainers/base.py AxolotlTrainer(..., Trainer).compute_loss -> the model's "
               "ForCausalLMLoss (full fp32 logits); src/axolotl/integrations/cut_cross_entropy only when the plugin "
               "is listed")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=True, offload="none",
        source="src/axolotl/utils/schemas/config.py gradient_checkpointing (true | 'offload' | 'offload_disk'; "
               "default false, the plan's value is used); src/axolotl/loaders/model.py (HF per-layer checkpointing)")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=False,
        source="src/axolotl/core/trainers/base.py AxolotlTrainer (transformers Trainer's optimizer.step after backward)")
    quantized_load = QuantizedLoad(
        path="per_tensor",
        source="src/axolotl/loaders/model.py ModelLoader (from_pretrained with BitsAndBytesConfig -> transformers "
               "Bnb4BitHfQuantizer.create_quantized_param)")
    attention = AttentionKV(
        kv_expanded=False,
        source="src/axolotl/loaders/model.py (attn_implementation passed to transformers: sdpa with enable_gqa, "
               "or flash_attention_2)")
    dtypes = Dtypes(
        kbit_fp32_upcast=True, mixed_precision=True, mixed_with_quantized=True,
        source="src/axolotl/loaders/model.py ModelLoader._prepare_model_for_quantization -> peft "
               "prepare_model_for_kbit_training (fp32 upcast of non-quantized parameters)")
    allocator = Allocator(
        expandable_segments="always",
        source="src/axolotl/utils/__init__.py set_pytorch_cuda_alloc_conf, called by src/axolotl/cli/main.py "
               "(expandable_segments:True unless the user set the variable)")


FRAMEWORK = Axolotl
