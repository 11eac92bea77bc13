"""LLaMA-Factory 0.9.6.dev0 (hiyouga/LLaMA-Factory): transformers Trainer subclasses with peft.

The SFT loss is the model's full-vocabulary cross-entropy (liger kernels off by default); k-bit
models are prepared by its own ``prepare_model_for_training``, which upcasts norms and the lm_head
output only when asked (both off by default), so frozen modules stay in the compute dtype. Derived
from source.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss, OptimizerStep,
                                       QuantizedLoad)


class LlamaFactory(Framework):
    name = "llama-factory"
    version = "0.9.6.dev0"
    repository = "hiyouga/LLaMA-Factory"
    summary = "transformers Trainer subclasses (CustomSeq2SeqTrainer) with peft; liger and unsloth options off by default"

    loss = Loss(
        kind="trl", trl_chunked=False,
        source="src/llamafactory/train/sft/trainer.py CustomSeq2SeqTrainer.compute_loss -> transformers "
               "ForCausalLMLoss (full fp32 logits); src/llamafactory/hparams/model_args.py enable_liger_kernel=False")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=True, offload="none",
        source="src/llamafactory/model/model_utils/checkpointing.py prepare_model_for_training "
               "(gradient_checkpointing_enable per decoder layer; use_unsloth_gc=False by default)")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=False,
        source="src/llamafactory/train/sft/trainer.py (transformers Trainer optimizer.step after backward)")
    quantized_load = QuantizedLoad(
        path="per_tensor",
        source="src/llamafactory/model/model_utils/quantization.py configure_quantization (BitsAndBytesConfig "
               "-> transformers Bnb4BitHfQuantizer.create_quantized_param)")
    attention = AttentionKV(
        kv_expanded=False,
        source="src/llamafactory/model/model_utils/attention.py configure_attn_implementation (transformers sdpa "
               "with enable_gqa, or flash_attention_2)")
    dtypes = Dtypes(
        kbit_fp32_upcast=False, mixed_precision=True, mixed_with_quantized=True,
        source="src/llamafactory/model/model_utils/checkpointing.py prepare_model_for_training (upcast_layernorm "
               "and upcast_lmhead_output default False in hparams/model_args.py; peft's fp32 upcast not called)")
    allocator = Allocator(
        expandable_segments="multi_gpu",
        source="src/llamafactory/launcher.py (torchrun launch sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
               "when OPTIM_TORCH=1, the default)")


FRAMEWORK = LlamaFactory
