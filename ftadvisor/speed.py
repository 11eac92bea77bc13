"""Throughput, time and cost: an analytic model of one optimizer step, per GPU.

    from ftadvisor import make_plan
    from ftadvisor.speed import estimate_speed, estimate_time_cost
    plan = make_plan("qlora", seq_len=2048)
    sp = estimate_speed("llama-3.1-8b", "h100", plan)
    sp.tokens_per_second_per_gpu, sp.mfu, sp.bottleneck, sp.assumptions
    tc = estimate_time_cost(sp, "h100", plan, examples=50_000, avg_tokens_per_example=600)
    tc.wall_clock_hours, tc.cost_usd

Pure and fast (~1 ms per plan): no file access, no torch/numpy; Python floats. The
memory model's :func:`ftadvisor.memory.build_layout` says what trains, what is frozen
or quantized, and :func:`ftadvisor.memory.count_params` how many parameters there
are; this module turns that into work and time:

1. **Work, op by op** (:func:`layer_program`): one decoder layer's forward as the
   eager kernels Hugging Face runs -- matmuls (Kaplan et al. 2020, Table 1: 2 FLOPs per
   weight per token, 2 n_layer n_ctx d_attn for causal attention), the weights they read,
   and the bytes moved by everything else (norms, rotary, activations, residual adds,
   the fp32 loss, LoRA's extra tensors, dtype casts, bitsandbytes dequantization, DoRA's
   weight norm), counted tensor by tensor from the library source named at each step.
   Backward, recomputation under gradient checkpointing and the extra no-grad passes of
   DPO/PPO/GRPO are derived from it (:func:`training_flops_per_token` has the totals).
2. **A roofline per op** against the hardware profile: matmuls at an achievable fraction
   of the dense peak for the plan's precision (lower for few tokens per micro-batch),
   fused attention at its own fraction, other kernels at an achievable fraction of the
   memory bandwidth (:data:`EFFICIENCY`, each figure from a named measurement).
3. **The host**: every eager op costs Python/autograd time to dispatch (measured per
   Llama layer); ops are replayed through the GPU's in-order queue, so large batches
   hide the host and small ones wait for it (:func:`_simulate`).
4. **Per optimizer step**: the optimizer's memory traffic, data-parallel communication
   (DDP all-reduce, ZeRO reduce-scatter/all-gather, ZeRO-3/FSDP parameter gathers) with
   the overlap each framework achieves, CPU-offload and paged-optimizer traffic over the
   host link, and RL generation (decoding reads all weights and the KV cache per token).
   The links themselves -- the ring's bus bandwidth inside a node, without peer-to-peer and
   across nodes, NCCL's latency per call, the host link and the CPU optimizer's share of the
   node's DRAM -- are :mod:`ftadvisor.links` (calibration/benchmarks/regimes.py prints them).

MFU is an output (model FLOPs / (time x peak), PaLM App. B). The numbers describe the
Hugging Face stack (transformers + peft + trl, eager, no torch.compile); fused stacks
(torchtune with compile, llm-foundry) remove most of the non-matmul and host time, which
``fused_tokens_per_second_per_gpu`` bounds. profiles/speed/measurements.yaml holds the
published and measured throughputs tests/test_speed.py checks this against
(scripts/bench_speed.py prints them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


from ftadvisor import memory
from ftadvisor.errors import FtAdvisorError, check_size
from ftadvisor.schema import ArchSpec, HardwareProfile, ModelProfile, SpeedEstimate, TimeCostEstimate, TrainingPlan
from ftadvisor.techniques import Technique, parse_technique
from ftadvisor.techniques.base import Op  # the kernel vocabulary techniques declare their added modules in

# --------------------------------------------------------------------------------------------
# Sources (cited by key in the code and returned with every estimate)
# --------------------------------------------------------------------------------------------

SOURCES: dict[str, str] = {
    "kaplan": "Kaplan et al. 2020, Scaling Laws for Neural Language Models (arXiv 2001.08361), Table 1: "
              "forward FLOPs per token 2N + 2 n_layer n_ctx d_attn; backward twice the forward",
    "palm_mfu": "Chowdhery et al. 2022, PaLM (arXiv 2204.02311), App. B: model FLOPs utilisation "
                "= model FLOPs per second / peak, recomputation excluded",
    "korthikanti": "Korthikanti et al. 2022, Reducing Activation Recomputation (arXiv 2205.05198), section 5: "
                   "full checkpointing re-runs each layer's forward in backward",
    "mamf": "S. Bekman, ml-engineering, compute/accelerator/README.md 'Maximum Achievable Matmul FLOPS' table "
            "(bf16 matmul, best shape): A100 SXM 271.2 of 312 (86.9%), H100 SXM 794.5 of 989 (80.3%), "
            "A100 PCIe 252.9 of 312 (81.1%), B200 1745 of 2250 (77.6%), MI300X 668.4 of 1300 (51.4%)",
    "mamf_v1": "S. Bekman, ml-engineering, compute/accelerator/README.md, the older v1 MAMF table (no cache "
               "reset): AMD MI250X 147.0 of 191.5 TFLOP/s (76.7%, ROCm-6.2, one GCD), MI300X 781.9 of 1300 (60.1%)",
    "fa2": "Dao 2023, FlashAttention-2 (arXiv 2307.08691), section 4.1: forward+backward reaches 50-73% "
           "of the A100 peak; backward does 2.5x the forward's matmul FLOPs (recomputes S = QK^T)",
    "fa3": "Shah et al. 2024, FlashAttention-3 (arXiv 2407.08608), Fig. 5-6: FlashAttention-2 reaches "
           "~35% of the H100's bf16 peak forward+backward",
    "device_h200": "this project's measurement on one H200 (profiles/speed/measurements.yaml, "
                   "scripts/bench_speed.py --device): bf16 matmul, device-to-device copy, eager dispatch",
    "hf_llama": "transformers models/llama/modeling_llama.py (LlamaRMSNorm, apply_rotary_pos_emb, LlamaMLP, "
                "eager_attention_forward) and loss/loss_utils.py ForCausalLMLoss (logits.float(), cross_entropy)",
    "peft_lora": "peft tuners/lora/layer.py Linear.forward: x cast to the adapter dtype, "
                 "result + lora_B(lora_A(dropout(x))) * scaling",
    "peft_dora": "peft tuners/lora/dora.py DoraLinearLayer.forward: lora_B(lora_A(eye(in))) and "
                 "||W + s*BA|| recomputed on every forward call in training (no cache), rescaled output",
    "bnb_4bit": "bitsandbytes nn/modules.py Linear4bit.forward (x.to(compute_dtype), output .to(input dtype)) "
                "and autograd/_functions.py MatMul4Bit (dequantize_4bit in forward and again in backward)",
    "torch_adamw": "torch/optim/adamw.py with fused=True (transformers' default optim adamw_torch_fused "
                   "for torch >= 2.8, training_args.py): one kernel reads param, grad, exp_avg, exp_avg_sq "
                   "and writes param, exp_avg, exp_avg_sq",
    "bnb_adam8": "Dettmers et al. 2021, 8-bit Optimizers via Block-wise Quantization; bitsandbytes "
                 "optim/optimizer.py (one kernel per tensor, uint8 states + fp32 absmax per 256)",
    "ring": "Patarasuk & Yuan 2009, bandwidth-optimal all-reduce; NCCL tests PERFORMANCE.md: an all-reduce "
            "moves 2(n-1)/n of the buffer per rank, reduce-scatter and all-gather (n-1)/n",
    "ddp": "Li et al. 2020, PyTorch Distributed (VLDB), section 3.2.3: bucketed all-reduce overlapped with "
           "backward; no_sync skips it on accumulation micro-batches",
    "zero": "Rajbhandari et al. 2020, ZeRO (arXiv 1910.02054), section 7: stage 1/2 move 2x the gradient "
            "volume (reduce-scatter + all-gather), stage 3 3x (parameters gathered in forward and backward)",
    "fsdp": "Zhao et al. 2023, PyTorch FSDP (arXiv 2304.11277), section 3.3: all-gathers prefetched and "
            "overlapped with compute, reduce-scatter overlapped with backward",
    "zero_offload": "Ren et al. 2021, ZeRO-Offload (arXiv 2101.06840), section 4: fp16 gradients to the host, "
                    "CPU-Adam on the host, updated fp16 parameters back, over PCIe",
    "kv_decode": "Pope et al. 2022, Efficiently Scaling Transformer Inference (arXiv 2211.05102), section 2: "
                 "decoding reads all weights and the KV cache once per generated token (memory-bandwidth bound)",
    "trl_rl": "trl GRPOTrainer (generation batch = per-device batch x steps_per_generation, num_iterations=1, "
              "reference only when beta > 0) and experimental PPOTrainer (num_ppo_epochs=4, policy, ref, value "
              "and reward forwards after each rollout)",
}

# --------------------------------------------------------------------------------------------
# Achievable fractions of the hardware's peaks, per hardware class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Efficiency:
    """What fraction of a hardware profile's datasheet peaks real kernels reach."""

    hw_class: str
    matmul: float
    """Large bf16/fp16 GEMMs: maximum achievable matmul FLOP/s over the dense peak (best shape)."""
    attention: float
    """Fused (flash/SDPA) attention forward+backward over the dense peak."""
    bandwidth: float
    """PyTorch elementwise/reduction kernels at activation sizes over the datasheet memory bandwidth."""
    dequant: float
    """bitsandbytes NF4 dequantization (read 4-bit, write 16-bit) over the datasheet bandwidth."""
    source: str


# Measured on this project's H200 machine (profiles/speed/measurements.yaml `device_h200`,
# scripts/bench_speed.py --device): the median of nine Hugging Face elementwise kernels at
# activation size (4096 x 4096: add, mul, casts, pow, mean, silu, RMSNorm) ran at 73% of the
# 4.8 TB/s datasheet bandwidth (a plain device copy of 2 GiB: 89%); NF4 dequantization of a
# 4096 x 14336 weight at 41%.
ELEMENTWISE_FRACTION = 0.73
DEQUANT_FRACTION = 0.41

EFFICIENCY: dict[str, Efficiency] = {
    e.hw_class: e
    for e in [
        Efficiency("hopper", 0.80, 0.35, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "matmul: MAMF H100 SXM 80.3% [mamf], H200 81.2% at 8192^3 [device_h200]; attention: FA2 on "
                   "H100 [fa3]; elementwise and dequantization bandwidth [device_h200]"),
        Efficiency("blackwell", 0.776, 0.35, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "matmul: MAMF B200 77.6% [mamf]; attention and bandwidth fractions taken from Hopper"),
        Efficiency("ampere_datacenter", 0.869, 0.60, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "matmul: MAMF A100 SXM 86.9% [mamf]; attention: FA2 on A100 [fa2]; bandwidth fractions "
                   "taken from the H200 measurement"),
        Efficiency("pcie_workstation", 0.811, 0.60, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "GeForce/RTX/L40S/L4/A10G/V100/T4 (GDDR or PCIe parts): no MAMF published; the A100 PCIe "
                   "figure 81.1% [mamf] is transferred (same cuBLAS kernels at a PCIe power limit); "
                   "attention: FA2 on Ampere [fa2]; bandwidth fractions from the H200 measurement"),
        Efficiency("amd_cdna3", 0.514, 0.35, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "matmul: MAMF MI300X 51.4% [mamf]; attention and bandwidth fractions taken from Hopper"),
        Efficiency("amd_cdna2", 0.767, 0.35, ELEMENTWISE_FRACTION, DEQUANT_FRACTION,
                   "matmul: MAMF MI250X 147.0 of 191.5 TFLOP/s per GCD = 76.7% (ROCm 6.2, the v1 table that did "
                   "not reset caches, so perhaps a few % high) [mamf_v1]; attention and bandwidth fractions taken "
                   "from Hopper"),
        Efficiency("cpu", 0.70, 0.50, 1.0, 1.0,
                   "order-of-magnitude placeholders like the cpu profile itself: its bandwidth is already an "
                   "achieved figure (fraction 1); kernels run on the cores that dispatch them (no overlap)"),
    ]
}

# Matmul efficiency falls for skinny GEMMs (few tokens per micro-batch): tiles and waves are
# underfilled. On the H200, relative to its 8192^3 best (803 TFLOP/s), 4096-row GEMMs ran at 767-792
# and 840-row ones at 496 and 581 (geometric mean 537) [device_h200]; M / (M + 490), normalised
# at 8192 rows, passes through the 840-row mean and within 4% of the 4096-row ones. Applied to
# every GPU class.
MATMUL_HALF_TOKENS = 490.0


def matmul_shape_factor(tokens: float) -> float:
    """Share of the best-shape matmul rate reached with ``tokens`` rows (1 at 8192 rows)."""
    t = max(tokens, 1.0)
    return (t / (t + MATMUL_HALF_TOKENS)) / (8192.0 / (8192.0 + MATMUL_HALF_TOKENS))


# Host (CPU) time of the Hugging Face eager stack, measured on the H200 machine (one core of its
# host; Python 3.12, torch 2.11, transformers 5.17, peft 0.21) from the slope of 4- vs 20-layer
# Llama models at one token [device_h200]: per decoder layer 0.725 ms forward without autograd,
# 1.196 ms forward recording autograd, 3.316 ms forward + backward; LoRA adds 0.36 ms and DoRA
# 0.67 ms per adapted module (forward + backward). Expressed per counted forward op of the Llama
# layer (38, see ops_per_layer_forward) so other layer shapes scale with their op count.
HOST_OPS_LLAMA_LAYER = 38.0
HOST_NOGRAD_S_PER_OP = 0.725e-3 / HOST_OPS_LLAMA_LAYER
HOST_FWD_S_PER_OP = 1.196e-3 / HOST_OPS_LLAMA_LAYER
HOST_BWD_S_PER_OP = (3.316e-3 - 1.196e-3) / HOST_OPS_LLAMA_LAYER
HOST_LORA_OPS = 0.36e-3 / (3.316e-3 / HOST_OPS_LLAMA_LAYER)  # ~4.1 op units per LoRA module
HOST_DORA_OPS = 0.67e-3 / (3.316e-3 / HOST_OPS_LLAMA_LAYER)  # ~7.7 op units per DoRA module
# A bitsandbytes Linear4bit (input/output casts, dequantize, the Python autograd.Function MatMul4Bit
# forward and backward): Llama-3.2-1B QLoRA took 55.3 ms per step more than LoRA at 4 x 512 tokens,
# where the GPU model accounts for 2.4 ms; the rest over 112 quantized linears is 0.47 ms each,
# ~5.4 op units [device_h200].
HOST_BNB_OPS = (55.3e-3 - 2.4e-3) / 112 / (3.316e-3 / HOST_OPS_LLAMA_LAYER)
# transformers generate adds ~45 ms of host work per decoding step beyond the layers' forward
# (Llama-3.2-1B, 16 layers: 56, 63 and 52 ms per step at batch 1, 16 and 64 with 128-token
# prompts, where the layers account for 16 x 0.725 ms) [device_h200].
HOST_GENERATE_STEP_S = 45e-3


def hardware_class(hw: HardwareProfile) -> str:
    """Which :data:`EFFICIENCY` row applies to a hardware profile."""
    if hw.vendor == "cpu":
        return "cpu"
    if hw.vendor == "amd":
        # CDNA 3 (MI300X/MI325X) added FP8 matrix units; a profile without them is CDNA 2 (MI250X/MI210),
        # whose MAMF efficiency differs (76.7% vs 51.4%) [mamf, mamf_v1]. A capability, not a name.
        return "amd_cdna3" if hw.fp8_dense_tflops else "amd_cdna2"
    cc = hw.compute_capability or ""
    major = int(cc.split(".")[0]) if cc.split(".")[0].isdigit() else 0
    if major == 9:
        return "hopper"
    if major == 10:
        return "blackwell"
    if cc == "8.0":
        return "ampere_datacenter"
    return "pcie_workstation"


def peak_flops(hw: HardwareProfile, precision: str) -> tuple[float, str]:
    """Dense peak FLOP/s the plan's matmuls run at, and which datasheet figure it is.

    bf16-* -> the BF16 tensor figure, fp16-mixed -> FP16 tensor, fp32 -> plain FP32 (PyTorch leaves
    TF32 matmuls off by default: torch.backends.cuda.matmul.allow_tf32 = False)."""
    if precision.startswith("bf16"):
        if hw.bf16_dense_tflops:
            return hw.bf16_dense_tflops * 1e12, "bf16_dense_tflops"
        return hw.fp32_tflops * 1e12, "fp32_tflops (no bf16 units: bf16 runs emulated or on CUDA cores)"
    if precision == "fp16-mixed":
        if hw.fp16_dense_tflops:
            return hw.fp16_dense_tflops * 1e12, "fp16_dense_tflops"
        return hw.fp32_tflops * 1e12, "fp32_tflops (no fp16 tensor units)"
    return hw.fp32_tflops * 1e12, "fp32_tflops"


def host_link_gbps(hw: HardwareProfile, plan: TrainingPlan | None = None) -> tuple[float, str]:
    """GPU<->host bandwidth per direction used for CPU offload and paged optimizers: the node's
    host_link_gbps (profiles/nodes.yaml; NVLink-C2C 450 GB/s on GH200), else the card's PCIe
    generation -- :func:`ftadvisor.links.host_link`."""
    from ftadvisor.host import node_for
    from ftadvisor.links import host_link

    return host_link(hw, node_for(hw, plan) if hw.vendor != "cpu" else None)


# Host DRAM bandwidth of a node whose profile gives no host_mem_gbps (a user's own node file): a
# two-socket server sustains ~100 GB/s (assumption); profiles/nodes.yaml gives every form factor its own.
HOST_DRAM_GBPS = 100.0

# NCCL bus bandwidth over NVLink/PCIe P2P: 80% of the per-direction rate (ftadvisor/links.py, nccl-tests
# figures); across nodes NIC_FRACTION of the node's NICs, without P2P the SHM path (links.collective_path).
from ftadvisor.links import LINK_FRACTION  # noqa: E402


# --------------------------------------------------------------------------------------------
# The result models
# --------------------------------------------------------------------------------------------


def _active_fraction(arch: ArchSpec, group: str) -> float:
    """Share of a linear's instances each token passes through (routed experts: top-k of E)."""
    if group == "expert" and arch.num_experts:
        return arch.experts_per_token / arch.num_experts
    return 1.0


def forward_matmul_flops_per_token(arch: ArchSpec) -> float:
    """Decoder linears (routed experts at top-k/E) and the lm_head: 2 FLOPs per weight per token
    (Kaplan et al. 2020, Table 1: C_forward ~ 2N). Embedding lookups and norms do no matmul."""
    lin = sum(2.0 * s.in_features * s.out_features * s.count * _active_fraction(arch, s.group) for s in arch.linears)
    return lin + 2.0 * arch.vocab_size * arch.hidden_size


def attention_flops_per_token(arch: ArchSpec, seq_len: float, causal_kernel: bool = True) -> float:
    """Score and value matmuls of self-attention per token, forward: 2 * n_layer * n_ctx * d_attn for a
    causal kernel that skips masked blocks (Kaplan et al. 2020, Table 1; SDPA/flash with is_causal),
    twice that for eager attention, which multiplies the full masked s x s matrix."""
    d_attn = arch.num_attention_heads * arch.head_dim
    per = 2.0 * arch.attention_layers * seq_len * d_attn  # hybrids: softmax-attention layers only
    return per if causal_kernel else 2.0 * per


def adapter_flops_per_token(lay: memory.Layout, plan: Any) -> float:
    """Forward FLOPs of the added modules per token.

    - LoRA/DoRA (Hu et al. 2021, eq. 3): x A^T B^T is 2 r (in + out) per adapted module instance.
    - Houlsby adapters (Houlsby et al. 2019, Fig. 2): two per layer, each 2 h m down + 2 m h up.
    - Lamini memory experts (Li et al. 2024, section 4): scoring E keys 2 h E, then top-k experts
      of rank r, 2 r (h + h) each, in each memory layer."""
    arch = lay.arch
    r = plan.lora_r
    total = 0.0
    for role in lay.roles:
        if role.adapted:
            s = role.spec
            total += 2.0 * r * (s.in_features + s.out_features) * s.count * _active_fraction(arch, s.group)
    added = lay.technique.method.added(lay, plan)
    if added.layers:
        total += added.flops_per_token  # the method's declaration (ftadvisor/techniques/<method>.py)
    return total


def backward_depth_fraction(lay: memory.Layout) -> float:
    """Share of decoder layers the backward pass has to traverse: gradients must reach the lowest
    trained parameter. Lamini memory experts sit in the top layers only; every other method has
    trainable parameters (or adapters) in the first layer (HFT's trained half is spread over depth)."""
    return lay.technique.method.backward_depth_fraction(lay)


def trained_matmul_flops_per_token(lay: memory.Layout) -> float:
    """Forward FLOPs of the matmuls whose weights train (their weight gradient costs the same again):
    trained shares of the decoder linears, plus the lm_head when it trains."""
    arch = lay.arch
    tr = sum(2.0 * r.spec.in_features * r.spec.out_features * r.spec.count * r.trained_fraction
             * _active_fraction(arch, r.spec.group) for r in lay.roles)
    if lay.lm_head_trained:
        tr += 2.0 * arch.vocab_size * arch.hidden_size
    return tr


@dataclass(frozen=True)
class TrainingFlops:
    """FLOPs per trained token of one fwd+bwd (one model copy), split by phase."""

    forward: float
    backward: float
    recompute: float
    attention_forward: float
    """Included in forward; kept apart because it runs in the attention kernel."""

    @property
    def executed(self) -> float:
        return self.forward + self.backward + self.recompute

    @property
    def model(self) -> float:
        return self.forward + self.backward


def training_flops_per_token(lay: memory.Layout, plan: Any, seq_len: float | None = None) -> TrainingFlops:
    """Forward, backward and recomputation FLOPs per token.

    1. Forward: 2 per weight (decoder linears + lm_head) + attention + adapters (Kaplan Table 1).
    2. Backward: every matmul the gradient flows through computes its input gradient (1x its forward);
       a trained weight also computes its weight gradient (another 1x): full training is 2x forward
       (Kaplan: backward = 2x forward, so 6N per token), a frozen base with adapters is ~1x
       forward + the adapters' 2x. Attention backward is 2x its forward (the model-FLOPs count;
       flash's recomputation of QK^T is hardware work and enters the time, not this count).
    3. Recomputation: gradient checkpointing re-runs each decoder layer's forward once (Korthikanti
       et al. 2022, section 5), only in the layers backward traverses.
    """
    arch = lay.arch
    S = plan.seq_len if seq_len is None else seq_len
    causal = lay.attention != "eager"
    phi = backward_depth_fraction(lay)
    head = 2.0 * arch.vocab_size * arch.hidden_size
    mm = forward_matmul_flops_per_token(arch)
    attn = attention_flops_per_token(arch, S, causal)
    adapt = adapter_flops_per_token(lay, plan)
    fwd = mm + attn + adapt
    layers_fwd = (mm - head) + attn + adapt
    bwd = head + phi * (mm - head) + phi * 2.0 * attn + trained_matmul_flops_per_token(lay) + 2.0 * adapt
    rec = phi * layers_fwd if lay.checkpointing else 0.0
    return TrainingFlops(forward=fwd, backward=bwd, recompute=rec, attention_forward=attn)


def ring_allreduce_seconds(nbytes: float, n: int, gbps: float) -> float:
    """Ring all-reduce: each rank sends and receives 2(n-1)/n of the buffer [ring]."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / (gbps * 1e9)


def ring_gather_seconds(nbytes: float, n: int, gbps: float) -> float:
    """Reduce-scatter or all-gather of a buffer of ``nbytes`` (full size): (n-1)/n of it per rank [ring]."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return (n - 1) / n * nbytes / (gbps * 1e9)


def optimizer_bytes_per_param(optimizer: str, param_bytes: int, grad_bytes: int, adamw_kernel: str = "fused") -> float:
    """Device memory traffic of one optimizer update, per trainable parameter (p = parameter and
    state bytes, g = gradient bytes).

    - adamw, fused ([torch_adamw]): one kernel reads param, grad and both moments and writes param and
      both moments: (3p + g) read + 3p written -- fp32: 16 B read + 12 B written.
    - adamw, foreach (torch/optim/adamw.py _multi_tensor_adamw): weight decay mul_ (r/w p), lerp_ of
      exp_avg (r p, g; w p), mul_ and addcmul_ of exp_avg_sq (r/w p, then r p, 2g; w p), sqrt, div_,
      add_ of a temporary (3 x r/w p), addcdiv_ of the param (r 3p, w p): 18p + 3g.
    - adamw_8bit / paged_adamw_8bit ([bnb_adam8]): param and grad, two uint8 states with an fp32
      absmax per 256 values each, read and written once.
    - paged_adamw_32bit: the fused count with fp32 states.
    - sgd (momentum 0): read param and grad, write param.
    - adafactor (transformers optimization.py Adafactor.step, no first moment): about ten full-size
      fp32 passes (grad**2, row/col means, approx_sq_grad, update, rms, clip, lr scale, decay, add)."""
    p, g = param_bytes, grad_bytes
    if optimizer == "adamw":
        if adamw_kernel == "foreach":
            return 18.0 * p + 3.0 * g
        return (3 * p + g) + 3 * p
    if optimizer == "paged_adamw_32bit":
        return (p + g + 8) + (p + 8)
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        st = 2 * (1 + 4 / 256)
        return (p + g + st) + (p + st)
    if optimizer == "sgd":
        return p + g + p
    if optimizer == "adafactor":
        return 10 * 4.0
    raise FtAdvisorError("optimizer", f"unknown {optimizer!r}")


# --------------------------------------------------------------------------------------------
# Memory traffic of the non-matmul work (Hugging Face eager implementations)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dtypes:
    c: int  # compute dtype of matmul inputs/outputs
    resid: int  # residual stream / norm inputs
    mlp: int  # linear outputs and MLP elementwise tensors
    mixed: bool  # torch autocast with fp32 trainable weights


def _dtypes(lay: memory.Layout) -> _Dtypes:
    """Activation dtypes, following memory.activation_coefficients: the residual stream is fp32 when the
    embedding trains under autocast (fp32 weights), under fp32, and next to a bitsandbytes base (peft's
    prepare_model_for_kbit_training upcasts non-quantized weights); bitsandbytes linears return the
    input's dtype, so a quantized model's MLP tensors are fp32 too."""
    c = lay.c
    mixed = lay.precision in ("bf16-mixed", "fp16-mixed")
    quant = lay.quantization != "none" and lay.precision != "bf16-true"
    resid = 4 if (lay.embed_trained and lay.precision != "bf16-true") or lay.precision == "fp32" or quant else c
    mlp = 4 if quant or lay.precision == "fp32" else c
    return _Dtypes(c=c, resid=resid, mlp=mlp, mixed=mixed)


def _norm_bytes(arch: ArchSpec, dt: _Dtypes) -> float:
    """One norm over h, forward, per token [hf_llama]. RMSNorm: upcast to fp32 (skipped when already
    fp32), pow (r/w 4h), mean (r 4h), x*rsqrt (r/w 4h), downcast, weight multiply (r/w).
    LayerNorm: one fused kernel (read + write) with the fp32 upcast autocast adds."""
    h = arch.hidden_size
    a = dt.resid
    if arch.norm == "rmsnorm":
        cast = 0 if a == 4 else (a + 4) * h + (4 + a) * h
        return 20.0 * h + cast + 2.0 * a * h
    return 2.0 * a * h + (0 if a == 4 else (a + 4) * h)


def _attention_io_bytes(lay: memory.Layout, S: float) -> float:
    """Attention kernel traffic per token per layer, forward [hf_llama]. SDPA/flash read q, k, v and
    write o. Eager (eager_attention_forward): repeat_kv copies, scores written, mask added, fp32
    softmax, cast back, read by the AV matmul: about (7c + 8) bytes per head per key position."""
    arch = lay.arch
    c = lay.c
    nh, kv, d = arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    if lay.attention == "eager":
        return c * (2 * kv * d + 2 * nh * d) + c * nh * d * 2 + nh * S * (7.0 * c + 8.0)
    return c * (2 * nh + 2 * kv) * d


def _linear_extra_bytes(lay: memory.Layout, spec: Any, quantized: str, adapted: bool) -> tuple[float, float]:
    """Extra traffic around one linear instance, forward: (bytes per token, bytes per forward call).

    - bitsandbytes Linear4bit/Linear8bitLt next to an fp32 residual stream: x.to(compute dtype)
      (r 4, w c) and the output .to(input dtype) (r c, w 4) [bnb_4bit].
    - LoRA [peft_lora]: x cast to the adapter dtype when they differ (bf16 activations, fp32 adapters
      under autocast: r 2 w 4, then autocast's cast back r 4 w 2), dropout's copy and mask when
      p > 0, lora_B's output written, * scaling (r/w), + result (r 2, w 1): 6c per output feature.
    - DoRA [peft_dora]: ~12 more passes over the output for (m/||.|| - 1) * base + m/||.|| * lora * s
      and the add; per call eye(in) in the adapter dtype (written, read, cast: ~10 in^2), B(A(eye))
      written, s * BA and W + s * BA, the row norm: ~10 in^2 + 7c in*out.
    """
    dt = _dtypes(lay)
    c, m_ = dt.c, dt.mlp
    per_tok = 0.0
    per_call = 0.0
    if quantized != "none" and m_ != c:
        per_tok += (m_ + c) * spec.in_features + (c + m_) * spec.out_features
    if adapted:
        if dt.mixed and m_ == c:
            per_tok += 12.0 * spec.in_features
        elif dt.mixed:
            per_tok += 6.0 * spec.in_features
        if lay.dropout:
            per_tok += (2.0 * c + 1.0) * spec.in_features
        per_tok += 6.0 * c * spec.out_features
        if lay.technique.method.dora:
            per_tok += 12.0 * c * spec.out_features
            per_call += 10.0 * spec.in_features**2 + 7.0 * c * spec.in_features * spec.out_features
    return per_tok, per_call


def _loss_bytes(lay: memory.Layout) -> tuple[float, float]:
    """Per token, over the vocabulary [hf_llama ForCausalLMLoss]: forward logits.float() (r c, w 4)
    and log_softmax (r/w 4); backward nll's gradient fill (w 4), log_softmax backward (r 8, w 4) and
    the cast back (r 4, w c). Nothing to cast under fp32."""
    c = lay.c
    V = lay.arch.vocab_size
    up = 0 if c == 4 else (c + 4)
    return (up + 8.0) * V, (4.0 + 12.0 + up) * V


def elementwise_bytes_per_token(lay: memory.Layout, plan: Any, seq_len: float | None = None) -> dict[str, float]:
    """Bytes moved per token, forward, by kernels that are not weight matmuls (the sum of what
    :func:`layer_program` spreads over its ops).

    Returns ``{"layer": one dense decoder layer, "moe_layer": one MoE layer, "top": embedding, final
    norm and loss forward, "loss_backward": loss backward, "per_call": bytes per forward call of the
    whole model that do not scale with tokens (DoRA's weight norms)}``. The backward of an elementwise
    op reads its upstream gradient and saved inputs and writes one gradient per input: taken as 2x
    the forward's bytes (an assumption; recorded in the estimate).
    """
    arch = lay.arch
    S = plan.seq_len if seq_len is None else seq_len
    dt = _dtypes(lay)
    c, a_, m_ = dt.c, dt.resid, dt.mlp
    h = arch.hidden_size
    nh, kv, d = arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    L = arch.num_layers
    norms = arch.norms_per_layer * _norm_bytes(arch, dt)
    rotary = 10.0 * c * (nh + kv) * d  # q*cos + rotate_half(q)*sin on q and k: ~10 copies [hf_llama]
    resid = 2 * 3.0 * a_ * h  # two residual adds (read 2, write 1)
    mlp = (5.0 if arch.mlp_gated else 2.0) * m_ * arch.intermediate_size  # act(gate) * up, or act
    base = norms + rotary + _attention_io_bytes(lay, S) + resid
    dense = base + mlp
    moe = base + _moe_bytes(lay)
    extra = 0.0
    per_call = 0.0
    for role in lay.roles:
        s = role.spec
        t, k = _linear_extra_bytes(lay, s, role.quantized, role.adapted)
        extra += s.count / L * _active_fraction(arch, s.group) * t
        per_call += s.count * k
    extra += lay.technique.method.layer_traffic_bytes(lay, plan, a_)
    fwd_loss, bwd_loss = _loss_bytes(lay)
    top = 2.0 * a_ * h + _norm_bytes(arch, dt) + fwd_loss
    return {"layer": dense + extra, "moe_layer": moe + extra, "top": top, "loss_backward": bwd_loss,
            "per_call": per_call}


def _moe_bytes(lay: memory.Layout) -> float:
    """An MoE block per token besides its matmuls: router softmax/top-k in fp32, and per routed copy a
    gather, the gated activation, the routing weight and the scatter-add; the shared expert's MLP."""
    arch = lay.arch
    if not arch.is_moe:
        return 0.0
    c = lay.c
    h = arch.hidden_size
    E, k, Im = arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size
    b = E * 4.0 * 3 + k * (2.0 * c * h + 5.0 * c * Im + 5.0 * c * h)
    if arch.shared_expert_intermediate_size:
        b += 5.0 * c * arch.shared_expert_intermediate_size + 3.0 * c * h
    return b


def ops_per_layer_forward(lay: memory.Layout, plan: Any) -> float:
    """Host work of one dense decoder layer's forward in op units: one unit is one eager kernel of the
    plain Llama layer, whose 38 (RMSNorm 8, q/k/v 3, rotary 10, SDPA 1, o_proj 1, residual add 1,
    RMSNorm 8, gate/up 2, SiLU and multiply 2, down 1, residual add 1) the host-time constants are
    measured on; LoRA and DoRA modules count at their measured cost (~4.1 and ~7.7 units), a
    bitsandbytes linear ~5.4 more [hf_llama, peft_lora, peft_dora, bnb_4bit]."""
    return sum(op.units for op, _ in layer_program(lay, plan, 1.0))


# --------------------------------------------------------------------------------------------
# The step model: per-op work of a decoder layer, replayed through a host/GPU queue
# --------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    compute: float = 0.0
    memory: float = 0.0
    launch: float = 0.0
    comm: float = 0.0
    optimizer: float = 0.0
    generation: float = 0.0
    offload: float = 0.0

    def total(self) -> float:
        return self.compute + self.memory + self.launch + self.comm + self.optimizer + self.generation + self.offload


@dataclass(frozen=True)
class _Machine:
    peak: float  # FLOP/s
    mm: float  # achievable matmul FLOP/s at the best shape
    attn: float  # achievable attention FLOP/s
    bw: float  # achievable bytes/s of elementwise kernels
    dq_bw: float  # achievable bytes/s of dequantization
    serial: bool  # kernels run on the dispatching cores (CPU): host and device time add up


def _op_time(m: _Machine, op: Op) -> tuple[float, float, float]:
    """(compute, memory-bound, of which dequantization) GPU seconds of one op: a matmul at the
    achievable rate for its rows, roofline against reading its weights; attention at its own rate;
    traffic at its bandwidth."""
    t_mm = op.flops_mm / (m.mm * matmul_shape_factor(op.mm_tokens)) if op.flops_mm else 0.0
    t_w = op.weight_bytes / m.bw
    compute = t_mm + (op.flops_attn / m.attn if op.flops_attn else 0.0)
    dq = op.dq_bytes / m.dq_bw
    mem = max(0.0, t_w - t_mm) + op.mem_bytes / m.bw + dq
    return compute, mem, dq


def _backward_op(op: Op, trained_share: float, flash_bwd: float, grad_cast_bytes: float) -> Op:
    """The backward of a forward op: a matmul computes its input gradient (1x) and, for the trained
    share of its weight, the weight gradient (another 1x) [kaplan]; attention flash_bwd x its forward
    [fa2]; elementwise and adapter traffic 2x; a quantized base is dequantized again [bnb_4bit]."""
    if op.kind == "gemm":
        return Op(op.units, flops_mm=op.flops_mm * (1.0 + trained_share), weight_bytes=op.weight_bytes,
                   mem_bytes=grad_cast_bytes, mm_tokens=op.mm_tokens, kind="gemm")
    if op.kind == "attn":
        return Op(op.units, flops_attn=op.flops_attn * flash_bwd, mem_bytes=2.0 * op.mem_bytes, kind="attn")
    if op.kind == "dequant":
        return Op(op.units, dq_bytes=op.dq_bytes, mem_bytes=op.mem_bytes, kind="dequant")
    return Op(op.units, flops_mm=2.0 * op.flops_mm, mem_bytes=2.0 * op.mem_bytes, mm_tokens=op.mm_tokens,
               kind=op.kind)


def _elementwise(units: float, nbytes: float) -> list[tuple[Op, float]]:
    """An op without weights: ``units`` eager kernels moving ``nbytes`` (none when units is 0)."""
    if units <= 0:
        return []
    return [(Op(units, mem_bytes=nbytes), 0.0)]


def _linear_shape(arch: ArchSpec, sp: Any, T: float) -> tuple[float, float, float, float, float]:
    """(instances per layer, rows per GEMM, share of the weight read, host units, FLOPs) of one
    linear role over T tokens. Experts: each of a token's ``experts_per_token`` experts sees its
    share of the tokens; only the experts hit are read, in a loop over them."""
    inst = sp.count / arch.num_layers
    rows = T
    wfrac = 1.0
    units = inst
    if sp.group == "expert" and arch.num_experts:
        inst = sp.count / max(arch.num_moe_layers, 1)
        act = arch.experts_per_token / arch.num_experts
        rows = max(T * act, 1.0)  # tokens per expert GEMM
        wfrac = min(1.0, T * arch.experts_per_token / arch.num_experts)
        units = min(inst, 4.0 * arch.experts_per_token)  # the experts-hit loop
        flops = 2.0 * T * sp.in_features * sp.out_features * inst * act
    else:
        flops = 2.0 * T * sp.in_features * sp.out_features * inst
    return inst, rows, wfrac, units, flops


def _linear_role_ops(lay: memory.Layout, dt: _Dtypes, plan: Any, T: float, role: Any) -> list[tuple[Op, float]]:
    """One linear role of a layer: the bitsandbytes dequantization of a quantized weight, the
    matmul (with the trained share of its weight), then the LoRA/DoRA branch [bnb_4bit, peft_lora,
    peft_dora]."""
    sp = role.spec
    c, m_ = dt.c, dt.mlp
    inst, rows, wfrac, units, flops = _linear_shape(lay.arch, sp, T)
    per_tok, per_call = _linear_extra_bytes(lay, sp, role.quantized, role.adapted)
    n_w = sp.in_features * sp.out_features * inst * wfrac
    ops: list[tuple[Op, float]] = []
    if role.quantized != "none":
        qb = memory.NF4_DQ_BYTES if lay.double_quant else memory.NF4_BYTES
        if role.quantized == "int8":
            qb = memory.int8_bytes_per_param(sp.in_features)
        cast = (m_ + c) * sp.in_features + (c + m_) * sp.out_features if m_ != c else 0.0
        ops.append((Op(units * HOST_BNB_OPS, dq_bytes=n_w * (qb + c), mem_bytes=T * inst * cast,
                        kind="dequant"), 0.0))
        per_tok -= cast
    # autocast casts a trainable fp32 weight to the compute dtype on every forward call
    wcast = (4 + c) * n_w * role.trained_fraction if (dt.mixed and role.trained_fraction) else 0.0
    ops.append((Op(units, flops_mm=flops, weight_bytes=c * n_w, mem_bytes=wcast, mm_tokens=rows,
                    kind="gemm"), role.trained_fraction))
    if role.adapted:
        r = plan.lora_r
        a_units = units * ((HOST_DORA_OPS if lay.technique.method.dora else HOST_LORA_OPS)
                           + (1 if lay.dropout else 0))
        a_flops = 2.0 * T * r * (sp.in_features + sp.out_features) * inst * (rows / T)
        ops.append((Op(a_units, flops_mm=a_flops, mem_bytes=T * inst * (rows / T) * per_tok
                        + inst * per_call, mm_tokens=rows, kind="adapter"), 0.0))
    return ops


def _linear_ops(lay: memory.Layout, dt: _Dtypes, plan: Any, T: float, source: str) -> list[tuple[Op, float]]:
    """The ops of every linear role that reads ``source`` (attn_in, mlp_in, expert_mid ...)."""
    ops: list[tuple[Op, float]] = []
    for role in lay.roles:
        if role.spec.input_source == source:
            ops += _linear_role_ops(lay, dt, plan, T, role)
    return ops


def _attention_block_ops(lay: memory.Layout, dt: _Dtypes, plan: Any, T: float, S: float,
                         decode_ctx: float | None, norm_units: float) -> list[tuple[Op, float]]:
    """Norm, attention-input linears, rotary, attention, output projection, residual add [hf_llama].
    ``decode_ctx``: KV-cache reads of one generated token per sequence instead of attention over S."""
    arch = lay.arch
    c = dt.c
    L = arch.num_layers
    nh, kv, d = arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    ops = _elementwise(arch.norms_per_layer and norm_units, _norm_bytes(arch, dt) * T)
    ops += _linear_ops(lay, dt, plan, T, "attn_in")
    ops += _elementwise(10, 10.0 * c * (nh + kv) * d * T)
    if decode_ctx is not None:
        kv_bytes = 2.0 * kv * d * c * decode_ctx * T  # this layer's cache, once per generated token
        ops.append((Op(1, flops_attn=4.0 * nh * d * decode_ctx * T, mem_bytes=kv_bytes + c * (2 * nh + 2 * kv) * d * T,
                        kind="attn"), 0.0))
    else:
        causal = lay.attention != "eager"
        ops.append((Op(6 if lay.attention == "eager" else 1,
                        flops_attn=attention_flops_per_token(arch, S, causal) / L * T,
                        mem_bytes=_attention_io_bytes(lay, S) * T, kind="attn"), 0.0))
    ops += _linear_ops(lay, dt, plan, T, "attn_out")
    ops += _elementwise(1, 3.0 * dt.resid * arch.hidden_size * T)
    return ops


def _mlp_block_ops(lay: memory.Layout, dt: _Dtypes, plan: Any, T: float, moe_layer: bool,
                   norm_units: float) -> list[tuple[Op, float]]:
    """Norm, then the MLP (linears, activation, down projection) or the MoE block (router, routed
    experts, shared expert), then the residual add [hf_llama]."""
    arch = lay.arch
    c, m_ = dt.c, dt.mlp
    srcs = {ro.spec.input_source for ro in lay.roles}
    ops: list[tuple[Op, float]] = []
    if "mlp_in" in srcs or "router_in" in srcs:
        ops += _elementwise(max(arch.norms_per_layer - 1, 1) * norm_units if arch.norms_per_layer > 1 else norm_units,
                            _norm_bytes(arch, dt) * T * max(arch.norms_per_layer - 1, 1))
    if moe_layer:
        ops += _linear_ops(lay, dt, plan, T, "router_in")
        ops += _elementwise(12, (_moe_bytes(lay) - (5.0 * c * arch.shared_expert_intermediate_size if
                                                    arch.shared_expert_intermediate_size else 0.0)) * T * 0.5)
        ops += _linear_ops(lay, dt, plan, T, "expert_in")
        ops += _linear_ops(lay, dt, plan, T, "expert_mid")
        ops += _elementwise(4, (_moe_bytes(lay)) * T * 0.5)
        if arch.shared_expert_intermediate_size:
            ops += _linear_ops(lay, dt, plan, T, "shared_in")
            ops += _elementwise(2, 5.0 * c * arch.shared_expert_intermediate_size * T)
            ops += _linear_ops(lay, dt, plan, T, "shared_mid")
    else:
        ops += _linear_ops(lay, dt, plan, T, "mlp_in")
        ops += _elementwise(2 if arch.mlp_gated else 1,
                            (5.0 if arch.mlp_gated else 2.0) * m_ * arch.intermediate_size * T)
        ops += _linear_ops(lay, dt, plan, T, "mlp_mid")
    ops += _elementwise(1, 3.0 * dt.resid * arch.hidden_size * T)
    return ops


def layer_program(lay: memory.Layout, plan: Any, tokens: float, moe_layer: bool = False,
                  seq_len: float | None = None, decode_ctx: float | None = None) -> list[tuple[Op, float]]:
    """One decoder layer's forward as eager ops in execution order, each with the trained share of its
    weight (for the backward): norm, attention-input linears, rotary, attention, output projection,
    residual add, norm, MLP linears, activation, down projection, residual add [hf_llama] -- with
    each linear's bitsandbytes dequantization and LoRA/DoRA branch after it [bnb_4bit, peft_lora,
    peft_dora]. ``decode_ctx``: one generated token per sequence attending over that many cached
    positions (KV-cache reads instead of attention over the sequence)."""
    arch = lay.arch
    dt = _dtypes(lay)
    S = plan.seq_len if seq_len is None else seq_len
    norm_units = (8 if dt.resid != 4 else 6) if arch.norm == "rmsnorm" else 2
    # attention block
    ops = _attention_block_ops(lay, dt, plan, tokens, S, decode_ctx, norm_units)
    # MLP (or MoE) block
    ops += _mlp_block_ops(lay, dt, plan, tokens, moe_layer, norm_units)
    ops.extend(lay.technique.method.layer_ops(lay, plan, tokens, dt.resid))  # modules the method adds (adapters)
    return ops


def _simulate(m: _Machine, passes: list[tuple[list[Op], float, float]]) -> tuple[float, float, float, float]:
    """Replay ops through an in-order GPU queue fed by a host that spends ``units x s_per_unit`` on each:
    an op starts once it is dispatched and the previous op has finished. ``passes`` holds (ops, host
    seconds per unit, repeats). Returns (compute, memory-bound, dequantization part of it, makespan)
    seconds. Repeats of identical ops (the decoder layers) settle into a steady state after a
    few and are then advanced linearly."""
    t_host = 0.0
    t_gpu = 0.0
    comp = mem = dq = 0.0
    for ops, per_unit, repeats in passes:
        timed = [(op.units * per_unit, *_op_time(m, op)) for op in ops]
        layer_c = sum(x[1] for x in timed)
        layer_m = sum(x[2] for x in timed)
        layer_d = sum(x[3] for x in timed)
        n = int(round(repeats))
        prev = None
        for i in range(n):
            h0, g0 = t_host, t_gpu
            for hs, cs, ms, _ in timed:
                t_host += hs
                if m.serial:
                    t_host += cs + ms
                    t_gpu = t_host
                else:
                    t_gpu = max(t_host, t_gpu) + cs + ms
            step = (t_host - h0, t_gpu - g0)
            if prev is not None and math.isclose(step[0], prev[0], rel_tol=1e-9, abs_tol=1e-15) and \
                    math.isclose(step[1], prev[1], rel_tol=1e-9, abs_tol=1e-15):
                left = n - i - 1
                t_host += left * step[0]
                t_gpu += left * step[1]
                break
            prev = step
        comp += n * layer_c
        mem += n * layer_m
        dq += n * layer_d
    return comp, mem, dq, max(t_gpu, t_host)


def _resolve(model: Any, hardware: Any, plan: Any) -> tuple[ModelProfile, HardwareProfile, TrainingPlan]:
    from ftadvisor.plans import make_plan
    from ftadvisor.profiles import resolve_hardware, resolve_model

    mp = resolve_model(model)
    hw = resolve_hardware(hardware)
    if isinstance(plan, TrainingPlan):
        tp = plan
    elif isinstance(plan, dict):
        tp = make_plan(plan=plan)
    elif isinstance(plan, str):
        tp = make_plan(plan)
    elif plan is None:
        tp = make_plan()
    else:
        raise FtAdvisorError("plan", f"expected a TrainingPlan, a dict or a technique name, got {type(plan).__name__}")
    from ftadvisor.host import resolve_nodes

    tp, _ = resolve_nodes(hw, tp)  # num_nodes from the node's GPUs when not given
    return mp, hw, tp


ADAMW_KERNELS = ("fused", "foreach")


def estimate_speed(model: Any, hardware: Any = "a100-80gb", plan: Any = None, *,
                   adamw_kernel: str = "fused") -> SpeedEstimate:
    """Throughput of ``plan`` for ``model`` on ``hardware``.

    ``model`` and ``hardware`` take what :func:`ftadvisor.estimate` takes (profile ids, aliases,
    config dicts or paths, profiles); ``plan`` a TrainingPlan (build one with
    ``ftadvisor.make_plan``), a dict of plan fields or a technique name. ``adamw_kernel``:
    ``fused`` (transformers' default optim for torch >= 2.8) or ``foreach`` (what a hand-written
    loop with ``torch.optim.AdamW()`` gets on CUDA).

    >>> sp = estimate_speed("llama-3.1-8b", "h100", make_plan("qlora", seq_len=2048))  # doctest: +SKIP
    >>> round(sp.tokens_per_second_per_gpu), round(sp.mfu, 2)                            # doctest: +SKIP
    """
    if adamw_kernel not in ADAMW_KERNELS:
        raise FtAdvisorError("adamw_kernel", f"unknown {adamw_kernel!r}", ADAMW_KERNELS)
    mp, hw, tp = _resolve(model, hardware, plan)
    tech = parse_technique(tp.technique)
    lay = memory.build_layout(mp.arch, tech, hw, tp)
    return _estimate(mp, hw, tp, tech, lay, adamw_kernel)


def _model_passes(lay: memory.Layout, tp: TrainingPlan, T: float, mode: str, flash_bwd: float,
                  grad_cast_per_param: float, seq_len: float | None = None,
                  decode_ctx: float | None = None) -> list[tuple[list[Op], float, float]]:
    """The passes of one micro-batch as (ops, host seconds per unit, repeats).

    mode: "train" (forward recording autograd, recomputation under checkpointing, backward),
    "nograd" (one forward without autograd), "decode" (one generated token per sequence)."""
    arch = lay.arch
    dt = _dtypes(lay)
    c = lay.c
    L = arch.num_layers
    V, h = arch.vocab_size, arch.hidden_size
    n_moe = arch.num_moe_layers
    dense = layer_program(lay, tp, T, False, seq_len, decode_ctx)
    moe = layer_program(lay, tp, T, True, seq_len, decode_ctx) if n_moe else []
    fwd_loss, bwd_loss = _loss_bytes(lay)
    head_tr = 1.0 if lay.lm_head_trained else 0.0
    head_cast = (4 + c) * V * h if (dt.mixed and lay.lm_head_trained) else 0.0
    pre = [Op(2, mem_bytes=2.0 * dt.resid * h * T)]  # embedding gather (+ cast/scale)
    post = [Op(8 if arch.norm == "rmsnorm" else 2, mem_bytes=_norm_bytes(arch, dt) * T),
            Op(1, flops_mm=2.0 * T * V * h, weight_bytes=c * V * h, mem_bytes=head_cast, mm_tokens=T, kind="gemm")]
    if mode == "train":
        post.append(Op(4, mem_bytes=fwd_loss * T))
    lam = lay.technique.method.block_ops(lay, tp, T) if lay.added_layers else []  # e.g. memory-expert layers
    if mode in ("nograd", "decode"):
        body = [(pre, HOST_NOGRAD_S_PER_OP, 1)]
        body.append(([o for o, _ in dense], HOST_NOGRAD_S_PER_OP, L - n_moe))
        if n_moe:
            body.append(([o for o, _ in moe], HOST_NOGRAD_S_PER_OP, n_moe))
        if lam:
            body.append(([o for o, _ in lam], HOST_NOGRAD_S_PER_OP, lay.added_layers))
        body.append((post, HOST_NOGRAD_S_PER_OP, 1))
        return body
    phi = backward_depth_fraction(lay)
    passes = [(pre, HOST_FWD_S_PER_OP, 1), ([o for o, _ in dense], HOST_FWD_S_PER_OP, L - n_moe)]
    if n_moe:
        passes.append(([o for o, _ in moe], HOST_FWD_S_PER_OP, n_moe))
    if lam:
        passes.append(([o for o, _ in lam], HOST_FWD_S_PER_OP, lay.added_layers))
    passes.append((post, HOST_FWD_S_PER_OP, 1))
    # backward: loss and lm_head, then the traversed layers in reverse, each recomputed first under
    # checkpointing [korthikanti]
    bwd_post = [Op(4, mem_bytes=bwd_loss * T),
                Op(1, flops_mm=2.0 * T * V * h * (1.0 + head_tr), weight_bytes=c * V * h,
                    mem_bytes=grad_cast_per_param * V * h * head_tr, mm_tokens=T, kind="gemm"),
                Op(8 if arch.norm == "rmsnorm" else 2, mem_bytes=2.0 * _norm_bytes(arch, dt) * T)]
    passes.append((bwd_post, HOST_BWD_S_PER_OP, 1))

    def bwd_layer(prog: list[tuple[Op, float]]) -> list[Op]:
        out = []
        for op, tr in reversed(prog):
            n_w = op.weight_bytes / c if op.kind == "gemm" else 0.0
            out.append(_backward_op(op, tr, flash_bwd, grad_cast_per_param * n_w * tr))
        return out

    # Backward traverses the top phi of the layers (all of them unless only Lamini's top memory
    # layers train); under checkpointing each traversed layer's forward runs again first.
    blocks = [(dense, round(phi * (L - n_moe)))]
    if n_moe:
        blocks.append((moe, round(phi * n_moe)))
    if lam:
        blocks.append((lam, lay.added_layers))
    for prog, n in blocks:
        if n <= 0:
            continue
        if lay.checkpointing:
            passes.append(([o for o, _ in prog], HOST_FWD_S_PER_OP, n))
        passes.append((bwd_layer(prog), HOST_BWD_S_PER_OP, n))
    return passes


def _machine(hw: HardwareProfile, tp: TrainingPlan) -> tuple[_Machine, Efficiency, float, str]:
    """The card as the step model sees it: achievable matmul, attention, elementwise and
    dequantization rates (:data:`EFFICIENCY` of its class), with the peak and its name."""
    eff = EFFICIENCY[hardware_class(hw)]
    peak, peak_name = peak_flops(hw, tp.precision)
    bw = hw.hbm_bandwidth_gbps * 1e9
    mach = _Machine(peak=peak, mm=peak * eff.matmul, attn=peak * eff.attention, bw=bw * eff.bandwidth,
                    dq_bw=bw * eff.dequant, serial=hw.vendor == "cpu")
    return mach, eff, peak, peak_name


def _stack_assumptions(hw: HardwareProfile, tp: TrainingPlan, eff: Efficiency, peak_name: str) -> list[str]:
    """What every estimate assumes about the software stack, the rates and the host."""
    assumptions: list[str] = [
        f"Hugging Face eager stack (transformers + peft + trl, no torch.compile), {tp.attention} attention; "
        f"matmuls at {eff.matmul:.0%} of the {peak_name} peak (less for few tokens per micro-batch), fused "
        f"attention at {eff.attention:.0%}, elementwise kernels at {eff.bandwidth:.0%} of "
        f"{hw.hbm_bandwidth_gbps:g} GB/s ({eff.hw_class})",
        "host dispatch of the eager stack as measured on a 2025 server core (Python 3.12, torch 2.11, "
        "transformers 5.17), replayed through the GPU's in-order queue; a slower host lowers small-batch "
        "throughput",
        "backward of non-matmul kernels moves 2x their forward bytes",
    ]
    if peak_name.startswith("fp32_tflops ("):
        assumptions.append(f"{hw.name} lacks {tp.precision.split('-')[0]} tensor units: FP32 peak used")
    return assumptions


def _training_passes_seconds(mach: _Machine, lay: memory.Layout, tp: TrainingPlan, meth: Any, T: float,
                             flash_bwd: float, mb_times: int, parts: _Parts, assumptions: list[str]) -> float:
    """Forward and backward of every micro-batch of a step (``mb_times``: accumulation x trained
    copies x PPO epochs) into ``parts``; returns their compute and dequantization seconds (what a
    fused stack keeps)."""
    c = lay.c
    G = tp.gradient_accumulation_steps
    # Under *-mixed the bf16 gradient of each trainable weight is cast to fp32 and accumulated into
    # .grad (read c, write 4; read 4 more when accumulating) -- autograd's AccumulateGrad.
    grad_cast = ((c + 4) + 8.0 * (G - 1) / G) if _dtypes(lay).mixed else 0.0
    comp, mem, dq_s, span = _simulate(mach, _model_passes(lay, tp, T, "train", flash_bwd, grad_cast))
    if meth.dora and lay.dropout:
        # peft's DoRA with dropout > 0 runs the base linear again on the dropped input (variants.py)
        extra = sum(2.0 * r.spec.in_features * r.spec.out_features * r.spec.count for r in lay.roles if r.adapted)
        t_extra = T * extra * (2 + (1 if lay.checkpointing else 0)) / mach.mm
        comp += t_extra
        span += t_extra
    parts.compute += comp * mb_times
    parts.memory += mem * mb_times
    parts.launch += max(0.0, span - comp - mem) * mb_times
    if lay.checkpointing:
        assumptions.append("gradient checkpointing re-runs every decoder layer's forward in backward "
                           "(Hugging Face per-layer checkpointing)")
    return (comp + dq_s) * mb_times


def _nograd_passes_seconds(mach: _Machine, lay: memory.Layout, tp: TrainingPlan, obj: Any, T: float,
                           flash_bwd: float, nograd_passes: int, parts: _Parts) -> tuple[float, float]:
    """Extra no-grad forwards (reference, reward, value/policy scoring) into ``parts``: the reference's
    forward when it is needed, plus the objective's own no-grad passes (PPO: policy log-probs, value
    and reward after each rollout [trl_rl]). Returns (their compute and dequantization seconds, the
    seconds per token of a reference pass precomputed before training, else 0)."""
    G = tp.gradient_accumulation_steps
    # A PEFT reference is the same base with adapters disabled; a full-weight method keeps a copy.
    ng_c, ng_m, ng_dq, ng_span = _simulate(mach, _model_passes(lay, tp, T, "nograd", flash_bwd, 0.0))
    fused_s = 0.0
    if nograd_passes:
        parts.compute += ng_c * G * nograd_passes
        parts.memory += ng_m * G * nograd_passes
        parts.launch += max(0.0, ng_span - ng_c - ng_m) * G * nograd_passes
        fused_s = (ng_c + ng_dq) * G * nograd_passes
    precomputed_ref = obj.precompute_reference and tp.dpo_precompute_ref
    return fused_s, (ng_span / T if precomputed_ref else 0.0)


def _step_flops_per_token(lay: memory.Layout, tp: TrainingPlan, nograd_passes: int, copies_trained: int,
                          ppo_epochs: int, flash_bwd: float) -> tuple[float, float]:
    """(executed, model) FLOPs per trained token: the training passes of every trained copy and PPO
    epoch plus the no-grad forwards; executed counts flash attention's backward recomputation [fa2]."""
    fl = training_flops_per_token(lay, tp)
    attn_f = fl.attention_forward
    nograd_flops_tok = forward_matmul_flops_per_token(lay.arch) + adapter_flops_per_token(lay, tp) + attn_f
    flops_exec_tok = fl.executed * copies_trained * ppo_epochs + nograd_passes * nograd_flops_tok
    flops_model_tok = fl.model * copies_trained * ppo_epochs + nograd_passes * nograd_flops_tok
    if flash_bwd != 2.0:
        flops_exec_tok += 0.5 * attn_f * backward_depth_fraction(lay) * copies_trained * ppo_epochs
    return flops_exec_tok, flops_model_tok


def _generation_seconds(mach: _Machine, lay: memory.Layout, tp: TrainingPlan, obj: Any, flash_bwd: float,
                        assumptions: list[str]) -> tuple[float, float | None, int]:
    """One step's rollouts (PPO/GRPO): a prefill over the prompts, then one decoding step per new token,
    in rounds of the generation batch. Returns (seconds, generated tokens/s, completions per step per GPU)."""
    S = tp.seq_len
    n_new = min(tp.rl_max_new_tokens, S - 1)
    prompt = S - n_new
    B_total = tp.micro_batch_size * tp.gradient_accumulation_steps  # completions generated per step per GPU
    B = obj.generation_batch(tp)
    rounds = math.ceil(B_total / B)
    # prefill: a no-grad forward over the B prompts
    prefill = _simulate(mach, _model_passes(lay, tp, B * prompt, "nograd", flash_bwd, 0.0, seq_len=prompt))[3]
    # decoding: one token per sequence reading every weight (a quantized base dequantized: the
    # batched bitsandbytes path) and the KV cache [kv_decode]; plus generate's own host work
    ctx = prompt + n_new / 2.0
    step_passes = _model_passes(lay, tp, B, "decode", flash_bwd, 0.0, seq_len=1, decode_ctx=ctx)
    step_passes.insert(0, ([Op(1.0)], HOST_GENERATE_STEP_S, 1))
    step = _simulate(mach, step_passes)[3]
    gen = rounds * (prefill + n_new * step)
    assumptions.append(
        f"generation with transformers generate and a KV cache, {B} sequences at a time "
        f"({'all of' if obj.rollout_chunk is None else f'chunks of {obj.rollout_chunk} of'} micro-batch x accumulation), "
        f"~{HOST_GENERATE_STEP_S * 1e3:.0f} ms of host work per decoding step; a vLLM server would be many "
        "times faster")
    if obj.value_model:
        assumptions.append(f"{obj.name.upper()}: value model trained with the policy, {obj.updates_per_rollout} "
                           f"optimizer passes per rollout, {obj.nograd_passes(tp)} no-grad scoring forwards "
                           "(trl defaults)")
    return gen, (B_total * n_new / gen if gen > 0 else None), B_total


def _optimizer_bytes(lay: memory.Layout, tp: TrainingPlan, P_local: float, adamw_kernel: str) -> float:
    """Bytes the optimizer step moves for this rank's ``P_local`` trainable parameters (fp32 masters
    and gradients under ZeRO/FSDP and autocast), with gradient clipping and fp16 unscaling."""
    c = lay.c
    mixed = _dtypes(lay).mixed
    zero_like = lay.zero or lay.sharding == "fsdp"
    pbytes = 4 if zero_like else lay.trainable_bytes
    gbytes = 4 if (zero_like or mixed) else lay.trainable_bytes
    opt_bytes = optimizer_bytes_per_param(tp.optimizer, pbytes, gbytes, adamw_kernel) * P_local
    if tp.max_grad_norm:
        opt_bytes += 3.0 * gbytes * P_local  # clip_grad_norm_: norms read, then scale in place
    if tp.precision == "fp16-mixed":
        opt_bytes += 2.0 * gbytes * P_local  # GradScaler unscale_ reads and writes the gradients
    if lay.zero and mixed:
        opt_bytes += (4 + c) * P_local  # DeepSpeed copies fp32 masters back to the bf16 working weights
    return opt_bytes


def _optimizer_host_seconds(lay: memory.Layout, tp: TrainingPlan, copies_trained: int) -> float:
    """Host time of one optimizer step."""
    n_tensors = _trainable_tensors(lay, tp) * copies_trained
    # host: fused/foreach kernels launch per chunk of tensors; bitsandbytes and Adafactor loop in Python
    per_tensor_units = 2.0 if ("8bit" in tp.optimizer or "32bit" in tp.optimizer) else (
        15.0 if tp.optimizer == "adafactor" else 0.05)
    return (20.0 + per_tensor_units * n_tensors) * HOST_NOGRAD_S_PER_OP


def _optimizer_step_seconds(mach: _Machine, lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile, p: Any,
                            copies_trained: int, adamw_kernel: str, assumptions: list[str],
                            parts: _Parts | None = None, mb_times: int = 1) -> tuple[float, float]:
    """(optimizer, offload) seconds of one optimizer step: on the device, or under CPU offload on the
    host (:func:`_cpu_offload_seconds`)."""
    N = tp.num_gpus
    sharded_opt = lay.sharding in ("zero1", "zero2", "zero3", "fsdp")
    P_tr = p.trainable * copies_trained
    P_local = P_tr / N if sharded_opt else P_tr
    opt_bytes = _optimizer_bytes(lay, tp, P_local, adamw_kernel)
    opt_host = _optimizer_host_seconds(lay, tp, copies_trained)
    if not lay.cpu_offload:
        return _simulate(mach, [([Op(1.0, mem_bytes=opt_bytes)], opt_host, 1)])[3], 0.0
    compute_mb = ((parts.compute + parts.memory) / max(mb_times, 1)) if parts is not None else 0.0
    optimizer, offload = _cpu_offload_seconds(lay, tp, hw, p, copies_trained, compute_mb, mb_times, assumptions)
    if tp.offload_device == "nvme":
        offload += _nvme_seconds(lay, tp, hw, p, P_local, assumptions)
    return optimizer, offload


def cpu_optimizer_bytes_per_param(lay: memory.Layout, tp: TrainingPlan) -> float:
    """Host DRAM bytes one CPU optimizer step touches per trainable parameter of the rank.

    1. the update on fp32 state: :func:`optimizer_bytes_per_param` with 4-byte params and grads
       (Adam: read param, grad, exp_avg, exp_avg_sq, write param and both moments = 28 B) --
       DeepSpeed CPUAdam and torch's fused CPU AdamW are single-pass and memory-bound
       [zero_offload_step, cpu_adam_measured];
    2. gradients: DeepSpeed receives compute-dtype gradients and widens them into its fp32 buffer
       (read c, write 4) on every micro-batch; FSDP receives fp32 gradients and accumulates them
       beyond the first micro-batch (read 8, write 4) [ds_grad_accum, fsdp_offload];
    3. parameters: DeepSpeed narrows the updated fp32 masters to its compute-dtype copies (read 4,
       write c); FSDP updates its fp32 shard in place (nothing more);
    4. gradient clipping: a norm pass and a scaling pass over fp32 gradients (read 4; read 4, write 4)."""
    c = lay.c
    G = tp.gradient_accumulation_steps
    b = optimizer_bytes_per_param(tp.optimizer, 4, 4, "fused")
    if lay.sharding == "fsdp":
        b += 12.0 * (G - 1)
    else:
        b += G * (c + 4) + (4 + c)
    if tp.max_grad_norm:
        b += 12.0
    return b


def _cpu_offload_seconds(lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile, p: Any, copies: int,
                         compute_mb: float, mb_times: int, assumptions: list[str]) -> tuple[float, float]:
    """(CPU optimizer, exposed host-link traffic) seconds of one step under CPU offload.

    Traffic over the pinned host link (links.copy_gbps; DeepSpeed and FSDP pin by default [ds_pinned]):
    - zero2 (ZeRO-Offload [zero_offload_step]): every micro-batch sends this rank's gradient partition
      down in the compute dtype (c B/param; beyond the first the accumulated partition also comes up
      and goes down again [ds_grad_accum], on the other direction of the link); after the CPU step
      the updated compute-dtype partition comes up (c B/param) and is then all-gathered on the GPUs.
    - zero3 (offload_param + offload_optimizer): parameters live on the host; each micro-batch fetches
      this rank's compute-dtype shard of every parameter in forward and again in backward; gradient
      shards go down per micro-batch; nothing comes up after the step.
    - fsdp (CPUOffload(offload_params=True)): as zero3, but the shard moves in its fp32 dtype (trained
      parameters under *-mixed; frozen ones in c) and gradients come down in fp32 [fsdp_offload].
    Overlap (explicit): gradient copies run on a side stream during backward (2/3 of a micro-batch's
    compute, Kaplan) and parameter fetches are prefetched during their pass (forward 1/3, backward
    2/3) -- only what exceeds that compute is exposed (the copy engine runs beside the compute and
    the NVLink collectives). The upload after the step and the CPU optimizer step are exposed: the
    delayed parameter update of ZeRO-Offload (section 4.2) is off by default.
    CPU optimizer: cpu_optimizer_bytes_per_param x this rank's parameters, with every rank of the node
    streaming through the same host DRAM at once (links.cpu_optimizer_seconds)."""
    from ftadvisor import links
    from ftadvisor.host import node_for

    N = tp.num_gpus
    G = tp.gradient_accumulation_steps
    c = lay.c
    node = node_for(hw, tp)
    link, link_name = links.host_link(hw, node)
    bw = links.copy_gbps(link, pinned=True) * 1e9
    P_tr = p.trainable * copies
    P_local = P_tr / N
    mixed = _dtypes(lay).mixed
    s = lay.sharding
    fwd_c, bwd_c = compute_mb / 3.0, 2.0 * compute_mb / 3.0
    if s == "zero2":
        grad_mb = c * P_local / bw
        exposed = mb_times * max(0.0, grad_mb - bwd_c) + c * P_local / bw
        what = "gradients down per micro-batch (hidden behind backward), parameters up after the step"
    else:
        frozen_local = (p.total * copies - P_tr) / N
        if s == "fsdp":
            pb = 4 if mixed else lay.trainable_bytes
            shard = pb * P_local + c * frozen_local
            gb = 4 if mixed else lay.trainable_bytes
        else:
            shard = c * (P_local + frozen_local)
            gb = c
        fetch = shard / bw
        bwd_fetches = 2 if (lay.checkpointing and s == "fsdp") else 1  # FSDP re-gathers for recomputation
        grad_mb = gb * P_local / bw
        exposed = mb_times * (max(0.0, fetch - fwd_c) + max(0.0, bwd_fetches * fetch + grad_mb - bwd_c))
        what = "parameter shards up in forward and backward, gradient shards down, each micro-batch (prefetched)"
    host = links.host_mem_gbps(hw, node)
    host_words = f"{host:.0f} GB/s sustained host DRAM"
    if host is None:
        host = HOST_DRAM_GBPS
        host_words = f"{HOST_DRAM_GBPS:g} GB/s host DRAM (assumed: the node gives no host_mem_gbps)"
    ranks = links.ranks_on_node(tp)
    optimizer = links.cpu_optimizer_seconds(cpu_optimizer_bytes_per_param(lay, tp) * P_local, ranks, host)
    threads = ("all cores" if ranks == 1 else
               f"{links.LAUNCHER_THREADS_PER_RANK} thread per rank at {links.CPU_OPT_THREAD_GBPS:g} GB/s "
               "(launcher default OMP_NUM_THREADS=1; set it higher to lift this)")
    assumptions.append(f"CPU offload ({s}): optimizer on the host, {host_words} shared by {ranks} GPU process(es), "
                       f"{threads}, not overlapped; {what}; host link {link:g} GB/s ({link_name}) at the pinned "
                       f"rate {links.PINNED_FRACTION:.0%}")
    return optimizer, exposed


def _nvme_seconds(lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile, p: Any, P_local: float,
                  assumptions: list[str]) -> float:
    """ZeRO-Infinity (Rajbhandari et al. 2021, section 5): each optimizer step reads this node's fp32
    master weights and Adam moments (12 bytes per trainable parameter) from NVMe and writes them back;
    every micro-batch reads the compute-dtype parameters in forward and backward (offload_param nvme).
    The node's NVMe bandwidth is shared by its GPUs; DeepSpeed overlaps the swaps with the step's
    compute only partly, so the time is counted in full (an upper bound)."""
    from ftadvisor.host import node_for

    node = node_for(hw, tp)
    per_node = tp.num_gpus // (tp.num_nodes or 1)
    opt = 12.0 * P_local * per_node
    par = tp.gradient_accumulation_steps * 2 * lay.c * p.total / tp.num_gpus * per_node
    t = opt / (node.nvme_read_gbps * 1e9) + opt / (node.nvme_write_gbps * 1e9) + par / (node.nvme_read_gbps * 1e9)
    assumptions.append(f"NVMe offload: {node.nvme_read_gbps:g}/{node.nvme_write_gbps:g} GB/s read/write per node "
                       f"({node.form_factor} node), swaps not overlapped")
    return t


def _paged_optimizer_seconds(lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile,
                             assumptions: list[str]) -> float:
    """Paged optimizer state that does not fit: unified memory pages it in and out once per step."""
    if not (tp.optimizer.startswith("paged") and hw.vendor != "cpu"):
        return 0.0
    spill = _paged_spill_bytes(lay, tp, hw)
    if spill <= 0:
        return 0.0
    link, link_name = host_link_gbps(hw, tp)
    assumptions.append(f"{spill / 2**30:.1f} GiB of paged optimizer state does not fit on the device and "
                       f"moves over {link_name} twice per step")
    return 2.0 * spill / (link * 1e9)


def _checkpoint_offload_seconds(lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile, T: float, mb_times: int,
                                parts: _Parts, assumptions: list[str]) -> float:
    """A framework that offloads checkpointed layer inputs (its ``checkpointing.offload``) copies them
    to the host in forward and back in backward, asynchronously (non_blocking copies beside the
    compute: unsloth_zoo/gradient_checkpointing.py). Only the part of the transfer longer than the
    step's compute is exposed."""
    fw = lay.framework
    if not fw.measured_here:
        assumptions.append(f"framework {fw.label()}: its memory declarations apply; kernel rates are the Hugging Face "
                           "eager stack's (its own fused or chunked loss kernels are not timed separately)")
    if not (lay.checkpointing and lay.checkpoint_offload):
        return 0.0
    host = memory.offloaded_checkpoint_bytes(lay, tp, T)
    link, link_name = host_link_gbps(hw, tp)
    transfer = 2.0 * host * mb_times / (link * 1e9)
    assumptions.append(f"{fw.name} offloads checkpointed layer inputs ({host / 2**30:.2f} GiB per micro-batch) over "
                       f"{link_name} at {link:g} GB/s, overlapped with compute")
    return max(0.0, transfer - parts.compute)


def _plan_assumptions(lay: memory.Layout, tp: TrainingPlan, meth: Any, adamw_kernel: str) -> list[str]:
    """What the estimate assumes about the plan's adapters, base, optimizer and padding."""
    assumptions = []
    if lay.dropout:
        assumptions.append("LoRA dropout > 0: each adapted module writes its own dropped copy of the input")
    if meth.dora:
        assumptions.append("DoRA: peft recomputes ||W + sBA|| for every adapted module on every forward call")
    if lay.quantization != "none":
        assumptions.append(f"{lay.quantization} base: dequantized once per forward call and again in backward "
                           "(bitsandbytes), compute-dtype copy read by the matmul")
    if tp.optimizer == "adamw":
        assumptions.append(f"adamw = torch {adamw_kernel} AdamW"
                           + (" (transformers' default optim for torch >= 2.8)" if adamw_kernel == "fused" else ""))
    if not tp.packing:
        assumptions.append("throughput counts padded positions (seq_len per sequence); pack to avoid padding")
    return assumptions


def _speed_sources(lay: memory.Layout, tp: TrainingPlan, meth: Any, obj: Any) -> tuple[str, ...]:
    """The :data:`SOURCES` this plan's estimate rests on, as ``key: citation``."""
    srcs = ["kaplan", "palm_mfu", "mamf", "hf_llama", "torch_adamw"]
    if lay.checkpointing:
        srcs.append("korthikanti")
    if lay.attention != "eager":
        srcs += ["fa2", "fa3"]
    if meth.lora:
        srcs.append("peft_lora")
    if meth.dora:
        srcs.append("peft_dora")
    if lay.quantization != "none":
        srcs.append("bnb_4bit")
    if "8bit" in tp.optimizer:
        srcs.append("bnb_adam8")
    if tp.num_gpus > 1:
        srcs += ["ring", "ddp" if lay.sharding == "ddp" else ("fsdp" if lay.sharding == "fsdp" else "zero")]
    if tp.num_gpus > 1:
        from ftadvisor.links import collective_path

        srcs += list(collective_path(lay.hardware, tp).sources)
    if lay.cpu_offload:
        srcs += ["zero_offload", "zero_offload_step", "ds_pinned", "pcie_measured", "ddr_peak", "stream",
                 "cpu_adam_measured", "omp_threads", "fsdp_offload" if lay.sharding == "fsdp" else "ds_grad_accum"]
    if obj.generation:
        srcs += ["kv_decode", "trl_rl"]
    srcs.append("device_h200")
    if hardware_class(lay.hardware) == "amd_cdna2":
        srcs.append("mamf_v1")
    from ftadvisor.links import SOURCES as LINK_SOURCES

    return tuple(f"{k}: {SOURCES.get(k) or LINK_SOURCES[k]}" for k in dict.fromkeys(srcs))


def _part_seconds(parts: _Parts) -> dict[str, Any]:
    """The step's parts as SpeedEstimate fields, with the largest one as the bottleneck."""
    comps = {"compute": parts.compute, "memory_bound": parts.memory, "launch_overhead": parts.launch,
             "communication": parts.comm, "optimizer": parts.optimizer, "generation": parts.generation,
             "offload": parts.offload}
    return {"compute_seconds": parts.compute, "memory_bound_seconds": parts.memory,
            "launch_overhead_seconds": parts.launch, "communication_seconds": parts.comm,
            "optimizer_seconds": parts.optimizer, "generation_seconds": parts.generation,
            "offload_seconds": parts.offload, "bottleneck": max(comps, key=comps.get)}


def _estimate(mp: ModelProfile, hw: HardwareProfile, tp: TrainingPlan, tech: Technique,
              lay: memory.Layout, adamw_kernel: str = "fused") -> SpeedEstimate:
    obj = tech.objective
    p = memory.count_params(lay, tp)
    mach, eff, peak, peak_name = _machine(hw, tp)
    assumptions = _stack_assumptions(hw, tp, eff, peak_name)
    N = tp.num_gpus
    G = tp.gradient_accumulation_steps
    seqs = tp.micro_batch_size * obj.sequences_per_example
    T = seqs * tp.seq_len  # tokens per micro-batch per GPU
    flash_bwd = 2.5 if lay.attention != "eager" else 2.0  # [fa2]: flash recomputes QK^T in backward
    copies_trained = 2 if obj.value_model else 1
    ppo_epochs = obj.updates_per_rollout  # the objective's run shape, also what the engine runs [trl_rl]
    mb_times = G * copies_trained * ppo_epochs
    nograd_passes = obj.nograd_passes(tp)

    # 1. forward and backward of every micro-batch
    parts = _Parts()
    fused_s = _training_passes_seconds(mach, lay, tp, tech.method, T, flash_bwd, mb_times, parts, assumptions)
    # 2. extra no-grad forwards (reference, reward, value/policy scoring)
    ng_fused_s, ref_pass_s_per_token = _nograd_passes_seconds(mach, lay, tp, obj, T, flash_bwd, nograd_passes, parts)
    fused_s += ng_fused_s
    flops_exec_tok, flops_model_tok = _step_flops_per_token(lay, tp, nograd_passes, copies_trained, ppo_epochs,
                                                            flash_bwd)
    # 3. generation (PPO/GRPO)
    gen_tokens_per_s = None
    samples_local = G * seqs  # sequences trained per step per GPU
    if obj.generation:
        gen, gen_tokens_per_s, samples_local = _generation_seconds(mach, lay, tp, obj, flash_bwd, assumptions)
        parts.generation += gen
    # 4. optimizer step, CPU offload, paged optimizer state
    opt_s, offload_s = _optimizer_step_seconds(mach, lay, tp, hw, p, copies_trained, adamw_kernel, assumptions,
                                               parts, mb_times)
    parts.optimizer += opt_s
    parts.offload += offload_s
    parts.offload += _paged_optimizer_seconds(lay, tp, hw, assumptions)
    parts.offload += _checkpoint_offload_seconds(lay, tp, hw, T, mb_times, parts, assumptions)
    # 5. communication
    if N > 1:
        parts.comm += _communication_seconds(lay, tp, p, hw, parts, mb_times, copies_trained, assumptions)
    assumptions += _plan_assumptions(lay, tp, tech.method, adamw_kernel)

    total = parts.total()
    tokens_step_local = G * T
    tok_s_gpu = tokens_step_local / total
    fused_total = fused_s + parts.comm + parts.optimizer + parts.generation + parts.offload
    return SpeedEstimate(
        model_id=mp.id,
        hardware_id=hw.id,
        technique=tech.name,
        tokens_per_second_per_gpu=tok_s_gpu,
        tokens_per_second_total=tok_s_gpu * N,
        fused_tokens_per_second_per_gpu=tokens_step_local / fused_total,
        tokens_per_optimizer_step=tokens_step_local * N,
        seconds_per_optimizer_step=total,
        mfu=flops_model_tok * tok_s_gpu / peak,
        hfu=flops_exec_tok * tok_s_gpu / peak,
        flops_per_token=flops_exec_tok,
        model_flops_per_token=flops_model_tok,
        peak_tflops=peak / 1e12,
        **_part_seconds(parts),
        samples_per_optimizer_step=samples_local * N,
        seconds_per_sample=total / (samples_local * N) if obj.generation else None,
        generated_tokens_per_second=gen_tokens_per_s,
        reference_pass_seconds_per_token=ref_pass_s_per_token,
        efficiency_class=eff.hw_class,
        assumptions=tuple(assumptions),
        sources=_speed_sources(lay, tp, tech.method, obj),
    )


def _trainable_tensors(lay: memory.Layout, plan: Any) -> float:
    """Number of trainable tensors (what per-tensor optimizer kernels loop over)."""
    arch = lay.arch
    n = 0.0
    for role in lay.roles:
        n += role.spec.count * role.trained_fraction * (2 if role.spec.bias else 1)
        if role.adapted:
            n += role.spec.count * (3 if lay.technique.method.dora else 2)
    n += arch.num_layers * arch.norms_per_layer * lay.norm_trained_fraction
    if lay.embed_trained:
        n += 2
    n += lay.technique.method.added(lay, plan).tensors if lay.added_layers else 0.0
    return max(n, 1.0)


def _paged_spill_bytes(lay: memory.Layout, tp: TrainingPlan, hw: HardwareProfile) -> float:
    """Paged optimizer bytes beyond the card: device total (as ftadvisor.estimate computes it) minus
    the card's memory, at most the paged state."""
    ev = memory.evaluate(lay, tp)
    allocated = max(sum(comp.values()) for comp in ev.phases.values())
    reserved = allocated * (1 + memory.DEFAULT_ALLOCATOR_SLACK)
    total = reserved + hw.runtime_overhead_gib * 2**30 + ev.paged_bytes
    return max(0.0, min(ev.paged_bytes, total - hw.memory_bytes))


# Bucket sizes that set how many collective calls (each paying NCCL's latency) a step makes:
# DDP bucket_cap_mb = 25 (torch nn/parallel/distributed.py); DeepSpeed reduce_bucket_size and
# allgather_bucket_size = 5e8 elements (deepspeed runtime/zero/config.py); ZeRO-3/FSDP gather and
# reduce one decoder layer (one FSDP unit / module) at a time.
DDP_BUCKET_BYTES = 25e6
ZERO_BUCKET_ELEMENTS = 5e8


def _communication_seconds(lay: memory.Layout, tp: TrainingPlan, p: Any, hw: HardwareProfile, parts: _Parts,
                           mb_times: int, copies: int, assumptions: list[str]) -> float:
    """Exposed data-parallel communication per optimizer step.

    The ring and its bus bandwidth come from :func:`ftadvisor.links.collective_path` (intra-node
    link, host-memory path without P2P, the node's NICs across nodes), each call paying NCCL's
    latency. Overlap with compute, stated per framework:
    - DDP: all-reduce of the gradients once per step (no_sync on accumulation micro-batches) in
      25 MB buckets launched as backward produces them, so the last micro-batch's backward hides
      the all-reduce and the last bucket is exposed [ddp].
    - ZeRO-1: reduce-scatter of gradients (overlapped with backward) + all-gather of the updated
      parameters after the step (exposed) [zero].
    - ZeRO-2: reduce-scatter on every micro-batch (partitioned gradients), all-gather after the step.
    - ZeRO-3 / FSDP: every micro-batch all-gathers the parameters in forward and again in backward
      and reduce-scatters the gradients, one layer at a time; prefetch overlaps them with compute
      [fsdp], so only what exceeds the compute of the pass is exposed. Frozen weights are gathered too.
    """
    from ftadvisor.links import collective_path, describe

    path = collective_path(hw, tp)
    G = tp.gradient_accumulation_steps
    c = lay.c
    mixed = lay.precision in ("bf16-mixed", "fp16-mixed")
    P_tr = p.trainable * copies
    compute_mb = (parts.compute + parts.memory) / max(mb_times, 1)  # one micro-batch of compute
    bwd_share = 2.0 / 3.0  # backward is ~2/3 of a micro-batch's work (Kaplan: backward = 2x forward)
    s = lay.sharding
    assumptions.append(describe(path))
    if s == "ddp":
        gb = (4 if mixed or lay.precision == "fp32" else lay.trainable_bytes) * P_tr
        t = path.allreduce_seconds(gb, calls=math.ceil(gb / DDP_BUCKET_BYTES))
        exposed = max(0.0, t - bwd_share * compute_mb) + path.allreduce_seconds(min(gb, DDP_BUCKET_BYTES))
        assumptions.append("DDP: gradient all-reduce once per step in 25 MB buckets, overlapped with the last "
                           "micro-batch's backward; the last bucket exposed")
        return exposed
    if s in ("zero1", "zero2"):
        calls = math.ceil(P_tr / ZERO_BUCKET_ELEMENTS)
        rs = path.gather_seconds(c * P_tr, calls)
        ag = path.gather_seconds(c * P_tr, calls)
        if s == "zero2":
            exposed = G * max(0.0, rs - bwd_share * compute_mb) + ag
        else:
            exposed = max(0.0, rs - bwd_share * compute_mb) + ag
        assumptions.append(f"{s}: gradient reduce-scatter overlapped with backward, parameter all-gather after "
                           "the step exposed")
        return exposed
    # zero3 / fsdp
    L = lay.arch.num_layers
    total_w = c * p.total * copies
    ag = path.gather_seconds(total_w, calls=L)
    rs = path.gather_seconds(c * P_tr, calls=L)
    fwd_c = compute_mb / 3.0
    bwd_c = compute_mb - fwd_c
    per_mb = max(0.0, ag - fwd_c) + max(0.0, ag + rs - bwd_c)
    assumptions.append(f"{s}: parameters all-gathered layer by layer in forward and backward on every micro-batch, "
                       "gradients reduce-scattered, prefetched and overlapped with compute")
    return mb_times * per_mb


# --------------------------------------------------------------------------------------------
# Time and cost
# --------------------------------------------------------------------------------------------


def _rl_positions(speed: SpeedEstimate, plan: TrainingPlan, obj: Any, dataset_tokens: float | None,
                  examples: float | None, ep: float, notes: list[str]) -> tuple[float, int, float]:
    """RL: examples are prompts; each becomes completions of seq_len positions. Returns (positions,
    optimizer steps, seconds per completion)."""
    S = plan.seq_len
    prompt_len = max(S - plan.rl_max_new_tokens, 1)
    if examples is None:
        examples = dataset_tokens / prompt_len
        notes.append(f"prompts counted as dataset_tokens / prompt length {prompt_len} (seq_len - rl_max_new_tokens)")
    per_prompt = obj.completions_per_prompt(plan)
    samples = examples * per_prompt * ep
    positions = samples * S
    seconds_per_sample = speed.seconds_per_optimizer_step / max(speed.samples_per_optimizer_step, 1e-12)
    steps = math.ceil(samples / speed.samples_per_optimizer_step) if samples else 0
    notes.append(f"{per_prompt} completion(s) per prompt of up to {plan.rl_max_new_tokens} new tokens")
    return positions, steps, seconds_per_sample


def _padded_positions(plan: TrainingPlan, spe: int, examples: float, avg: float, ep: float,
                      notes: list[str]) -> float:
    """Positions of unpacked examples of ``avg`` tokens, each micro-batch padded to its longest sequence."""
    S = plan.seq_len
    # trl's collators pad each micro-batch to its longest sequence, not to seq_len. With
    # lengths spread uniformly on [0, 2 * avg] (our assumption; pass dataset_tokens or
    # pack for exact counts) the longest of n has expected length 2 * avg * n / (n + 1).
    per_seq = avg / spe
    n = plan.micro_batch_size * spe
    padded = min(S, per_seq if n == 1 else 2 * per_seq * n / (n + 1))
    positions = examples * spe * padded * ep
    if padded > per_seq:
        notes.append(f"micro-batches padded to their longest sequence: ~{1 - per_seq / padded:.0%} of "
                     "positions are padding (assumes lengths spread evenly up to twice the average)")
    if per_seq > S:
        notes.append(f"examples longer than seq_len {S} are truncated")
    return positions


def _trained_positions(plan: TrainingPlan, obj: Any, dataset_tokens: float | None, examples: float | None,
                       avg: float | None, ep: float, notes: list[str]) -> float:
    """Positions the trainer processes over all epochs (SFT and preference objectives): real tokens
    when packing, else sequences padded per micro-batch."""
    S = plan.seq_len
    spe = obj.sequences_per_example
    if plan.packing:
        if dataset_tokens is None:
            if avg is None:
                raise FtAdvisorError("avg_tokens_per_example", "needed with examples when packing (how many tokens to pack)")
            dataset_tokens = examples * avg
        notes.append("packed: only real tokens are processed")
        return dataset_tokens * ep
    if examples is None:
        # tokens only, no example count: assume sequences filled to seq_len
        notes.append("no example count: assumed every sequence fills seq_len (pass examples to count padding)")
        return dataset_tokens * ep
    if avg is None:
        notes.append(f"no average length given: every sequence counted as seq_len {S} (an upper bound)")
        return examples * spe * S * ep
    return _padded_positions(plan, spe, examples, avg, ep, notes)


def _hourly_price(hw: HardwareProfile, price_override: float | None) -> tuple[float | None, str]:
    """(price per GPU-hour, where it comes from): the caller's, else the profile's default."""
    if price_override is not None:
        return price_override, "given by the caller"
    if hw.hourly_price_usd is not None:
        return hw.hourly_price_usd, f"{hw.id} profile default: {hw.price_note.strip()}"
    return None, f"no price: {hw.id} has no default and none was given"


def _check_time_cost_inputs(speed: Any, plan: Any, dataset_tokens: Any, examples: Any, avg_tokens_per_example: Any,
                            epochs: Any, hourly_price_usd: Any) -> tuple[Any, Any, Any, float, Any]:
    """Validated (dataset_tokens, examples, avg tokens per example, epochs, price override)."""
    if not isinstance(speed, SpeedEstimate):
        raise FtAdvisorError("speed", f"expected a SpeedEstimate from estimate_speed, got {type(speed).__name__}")
    if not isinstance(plan, TrainingPlan):
        raise FtAdvisorError("plan", f"expected a TrainingPlan, got {type(plan).__name__}")
    dataset_tokens = check_size("dataset_tokens", dataset_tokens, allow_zero=True)
    examples = check_size("examples", examples, allow_zero=True)
    avg = check_size("avg_tokens_per_example", avg_tokens_per_example)
    ep = check_size("epochs", epochs)
    price_override = check_size("hourly_price_usd", hourly_price_usd, allow_zero=True)
    if dataset_tokens is None and examples is None:
        raise FtAdvisorError("dataset_tokens", "give dataset_tokens or examples (with avg_tokens_per_example)",
                             ["dataset_tokens", "examples"])
    return dataset_tokens, examples, avg, ep, price_override


def estimate_time_cost(
    speed: SpeedEstimate,
    hardware: Any,
    plan: TrainingPlan,
    *,
    dataset_tokens: float | None = None,
    examples: float | None = None,
    avg_tokens_per_example: float | None = None,
    epochs: float = 1.0,
    hourly_price_usd: float | None = None,
) -> TimeCostEstimate:
    """Wall-clock hours, GPU-hours and cost of training on a dataset.

    Give ``dataset_tokens`` (tokens of the whole dataset, as the trainer sees them) or ``examples``
    (rows: texts for SFT, pairs for DPO/ORPO, prompts for PPO/GRPO), optionally with
    ``avg_tokens_per_example``. Without packing each micro-batch is padded to its longest
    sequence (see the code for the length assumption); with packing only real tokens are processed. PPO/GRPO time is per completion: each prompt
    yields ``grpo_num_generations`` completions (GRPO) or one (PPO).
    """
    from ftadvisor.profiles import resolve_hardware

    hw = resolve_hardware(hardware)
    dataset_tokens, examples, avg, ep, price_override = _check_time_cost_inputs(
        speed, plan, dataset_tokens, examples, avg_tokens_per_example, epochs, hourly_price_usd)
    obj = parse_technique(plan.technique).objective
    notes: list[str] = []

    if examples is None and avg is not None:
        examples = dataset_tokens / avg
    if obj.generation:
        positions, steps, seconds_per_sample = _rl_positions(speed, plan, obj, dataset_tokens, examples, ep, notes)
    else:
        seconds_per_sample = None
        positions = _trained_positions(plan, obj, dataset_tokens, examples, avg, ep, notes)
        steps = math.ceil(positions / speed.tokens_per_optimizer_step) if positions else 0
    seconds = steps * speed.seconds_per_optimizer_step
    if obj.precompute_reference and plan.dpo_precompute_ref and speed.reference_pass_seconds_per_token:
        seconds += positions / ep * speed.reference_pass_seconds_per_token / plan.num_gpus
        notes.append("reference log-probs precomputed once before training (one forward per example)")
    hours = seconds / 3600.0
    gpu_hours = hours * plan.num_gpus
    price, src = _hourly_price(hw, price_override)
    cost = gpu_hours * price if price is not None else None
    return TimeCostEstimate(
        wall_clock_hours=hours,
        gpu_hours=gpu_hours,
        cost_usd=cost,
        hourly_price_usd=price,
        price_source=src,
        optimizer_steps=steps,
        tokens_processed=positions,
        epochs=ep,
        seconds_per_sample=seconds_per_sample,
        assumptions=tuple(notes),
    )


__all__ = [
    "EFFICIENCY",
    "SOURCES",
    "Efficiency",
    "SpeedEstimate",
    "TimeCostEstimate",
    "TrainingFlops",
    "adapter_flops_per_token",
    "attention_flops_per_token",
    "estimate_speed",
    "estimate_time_cost",
    "forward_matmul_flops_per_token",
    "hardware_class",
    "optimizer_bytes_per_param",
    "peak_flops",
    "ring_allreduce_seconds",
    "ring_gather_seconds",
    "training_flops_per_token",
]
