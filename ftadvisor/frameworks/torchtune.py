"""torchtune 0.6.1 (pytorch/torchtune): native-PyTorch recipes (lora_finetune_single_device,
full_finetune_single_device ...) configured by YAML.

Declarations follow the shipped Llama-3.1-8B configs (recipes/configs/llama3_1/8B_lora_single_device
.yaml, 8B_full_single_device.yaml) and the modules they name. Training runs in one dtype (``dtype:
bf16``, no autocast). Derived from source: torchtune 0.6.1 needs a torchao with ``nf4tensor`` that
does not build beside torch 2.13 here.
"""

from __future__ import annotations

from ftadvisor.frameworks.base import (Allocator, AttentionKV, Checkpointing, Dtypes, Framework, Loss, OptimizerStep,
                                       QuantizedLoad)

# torchtune/modules/loss/ce_chunked_output_loss.py CEWithChunkedOutputLoss(num_output_chunks=8)
OUTPUT_CHUNKS = 8


class Torchtune(Framework):
    name = "torchtune"
    version = "0.6.1"
    repository = "pytorch/torchtune"
    summary = "native PyTorch recipes; chunked-output cross-entropy, bf16 throughout, optimizer-in-backward for full"

    loss = Loss(
        kind="chunked", chunks=OUTPUT_CHUNKS, upcast="always", logits_kept_in_backward=False,
        source="torchtune/modules/loss/ce_chunked_output_loss.py CEWithChunkedOutputLoss.forward/"
               "compute_cross_entropy (8 chunks, logits.float() per chunk); torchtune/modules/transformer.py "
               "TransformerDecoder.chunked_output; recipes/lora_finetune_single_device.py _loss_step (del logits "
               "before backward)")
    checkpointing = Checkpointing(
        granularity="decoder_layer", single_device=True, offload="none",
        source="torchtune/training/activations.py apply_selective_activation_checkpointing / "
               "set_activation_checkpointing (auto_wrap_policy={TransformerSelfAttentionLayer}); "
               "enable_activation_offloading: False in 8B_lora_single_device.yaml")
    optimizer = OptimizerStep(
        placement="device", in_backward_full=True,
        source="recipes/full_finetune_single_device.py _setup_optimizer (optimizer_in_bwd: register_optim_in_bwd_"
               "hooks, one optimizer per parameter stepped in its post-accumulate-grad hook); "
               "8B_full_single_device.yaml optimizer_in_bwd: True")
    quantized_load = QuantizedLoad(
        path="per_tensor",
        source="torchtune/modules/low_precision/nf4_linear.py FrozenNF4Linear.__init__ (to_nf4 of each weight "
               "on the device); torchtune/training/checkpointing FullModelHFCheckpointer.load_checkpoint (state "
               "dict on the host)")
    attention = AttentionKV(
        kv_expanded=True,
        source="torchtune/modules/attention.py MultiHeadAttention.forward (k/v expand to num_heads then "
               "reshape -> copies, passed to SDPA)")
    dtypes = Dtypes(
        kbit_fp32_upcast=False, mixed_precision=False, mixed_with_quantized=False,
        source="torchtune/training/precision.py get_dtype + recipes (training.set_default_dtype(dtype): "
               "weights, LoRA and optimizer state in bf16; no autocast, no peft fp32 upcast)")
    allocator = Allocator(
        expandable_segments="never",
        source="torchtune recipes set no PYTORCH_CUDA_ALLOC_CONF (torchtune/_cli/run.py)")


FRAMEWORK = Torchtune
