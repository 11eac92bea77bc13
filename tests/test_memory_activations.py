"""Activation memory pinned by hand at long sequences and large micro-batches.

Activations are the term that grows with tokens, so a wrong count there is the largest error a user
meets (a QLoRA plan on a 24 GB card is mostly activations). Each test below writes the derivation
out, tensor by tensor, for one decoder layer of a real architecture, then multiplies by the tokens
and layers of the plan and compares with ``ftadvisor.estimate`` to 0.1%.

The accounting rules (what autograd keeps in the Hugging Face Llama/Mixtral code; Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models", section 4.1, redone for
RMSNorm, SwiGLU, GQA and no dropout) were measured on the CPU with a storage-tracking dispatch mode
(scripts/check_memory_cpu.py, within a few percent). Per token, c = 2 bytes (bf16 compute):

- RMSNorm upcasts its input and keeps the fp32 copy: 4h.
- A linear keeps its input only when its weight trains; a frozen or 4-bit base keeps nothing. A peft
  LoRA module casts the input to its fp32 weight dtype, and autocast casts that back to bf16 for
  the matmul, which keeps the bf16 copy: c * in_features per adapted module, and its rank-r
  output: c * r.
- SDPA keeps q, k, v (k/v at the kv heads: transformers 5 passes enable_gqa), its output and an
  fp32 logsumexp per head: c * (a*d + 2*kv*d) + c * a*d + 4a.
- SwiGLU keeps the gate output, the SiLU output and the up output: 3 * I elements, in fp32 next to
  a bitsandbytes base (prepare_model_for_kbit_training makes the residual stream fp32).
- Gradient checkpointing (HF, non-reentrant) keeps each decoder layer's input, the residual
  stream: 2h bytes in bf16, 4h when it is fp32; backward then re-runs one layer at a time, so one
  layer's full set is alive again, plus the gradient working set of that layer
  c * (2h + 4 * widest intermediate): the gradients of the layer's input and output, and in the
  gated MLP's backward the down input's gradient, the mul's two gradient outputs and SiLU's.
- After the last layer: the final RMSNorm's fp32 input (4h).

The forward/backward peak holds the saved activations plus the larger of (a) the loss' logits and
(b) the recomputed layer + gradient working set.
"""

from __future__ import annotations

import pytest

import ftadvisor as fa
from tests.conftest import LLAMA31_8B

GIB = 2**30


def _act(model, technique, **kw):
    est = fa.estimate(model, "h100-sxm", technique, **kw)
    return est, est.memory.activations_bytes


# --- Llama-3.1-8B (GQA: 32 query heads, 8 kv heads of 128), QLoRA r=16 ------------------------------
H, I, A, KV, D, L = 4096, 14336, 32, 8, 128, 32


def _qlora_llama8b_layer(r):
    """Bytes per token of one Llama-3.1-8B layer under QLoRA (bf16-mixed, nf4 base, fp32 residual)."""
    c = 2
    attn = (
        4 * H  # input RMSNorm: fp32 input (its weight is frozen, so no normed copy)
        + 3 * c * H  # q, k, v LoRA: each keeps its own bf16 cast of the 4096-wide input
        + c * (A * D + 2 * KV * D)  # SDPA keeps q (32x128) and k, v at 8 kv heads
        + c * A * D + 4 * A  # SDPA output (also o_proj's input) and the fp32 logsumexp
        + c * A * D  # o_proj LoRA: its bf16 cast of the attention output
    )
    mlp = (
        4 * H  # post-attention RMSNorm fp32 input
        + 2 * c * H  # gate, up LoRA input casts
        + 3 * 4 * I  # SwiGLU: gate out, SiLU out, up out, fp32 next to the 4-bit base
        + c * I  # down_proj LoRA: bf16 cast of the 14336-wide input
    )
    rank = 7 * c * r  # the rank-r output of the 7 LoRA A matrices
    return attn + mlp + rank


def test_qlora_llama8b_layer_by_hand():
    # 69,760 (attention) + 233,472 (MLP) + 224 (r=16) bytes per token
    assert _qlora_llama8b_layer(16) == 69_760 + 233_472 + 224


def test_qlora_llama8b_checkpointed_s4096_mb8():
    """The issue-14 case: QLoRA on Llama-3.1-8B, seq 4096, micro-batch 8, checkpointing.

    T = 8 x 4096 = 32,768 tokens.
    saved: 32 layer inputs (fp32 residual: 4h each) + the final norm's fp32 input (4h) = 33 x 16,384 B/token
    backward: one recomputed layer (303,456 B/token) + gradient working set 2 x (2h + 4I) = 131,072 B/token
    total = 32,768 x (540,672 + 303,456 + 131,072) = 31,955,451,904 B = 29.76 GiB.
    Keeping one layer's input instead of 32 would give 14.3 GiB: this test fails on that bug.
    """
    T = 8 * 4096
    saved = (L + 1) * 4 * H
    layer = _qlora_llama8b_layer(16)
    ws = 2 * (2 * H + 4 * I)
    est, act = _act(LLAMA31_8B, "qlora", seq_len=4096, micro_batch_size=8, gradient_checkpointing=True)
    assert est.plan.lora_r == 16 and est.plan.precision == "bf16-mixed"
    assert act == pytest.approx(T * (saved + layer + ws), rel=1e-3)
    assert act / GIB == pytest.approx(29.76, abs=0.01)
    # The whole peak adds the NF4 base, the embeddings/lm_head/norms upcast to fp32 by
    # prepare_model_for_kbit_training, LoRA with AdamW, and the 4-bit dequantisation workspace.
    assert est.memory.peak_allocated_bytes / GIB == pytest.approx(37.72, abs=0.05)


def test_qlora_llama8b_without_checkpointing_s4096_mb8():
    """Every layer keeps its full set: 32 x 303,456 + the final norm input 16,384, plus the gradient
    working set 131,072 while the last layer runs backward: 9,858,048 B/token x 32,768 = 300.8 GiB."""
    T = 8 * 4096
    est, act = _act(LLAMA31_8B, "qlora", seq_len=4096, micro_batch_size=8, gradient_checkpointing=False)
    want = T * (L * _qlora_llama8b_layer(16) + 4 * H + 2 * (2 * H + 4 * I))
    assert act == pytest.approx(want, rel=1e-3)
    assert act / GIB == pytest.approx(300.84, abs=0.01)
    # The ratio that matters to a user: checkpointing saves 10.1x here, not "more than 5x".
    ck = _act(LLAMA31_8B, "qlora", seq_len=4096, micro_batch_size=8, gradient_checkpointing=True)[1]
    assert act / ck == pytest.approx(300.84 / 29.76, rel=0.01)


# --- Llama-2-7B (multi-head attention: 32 kv heads), LoRA and full ---------------------------------


def test_mha_llama2_7b_lora_without_checkpointing_s4096_mb4():
    """Llama-2-7B (h 4096, I 11008, 32 heads = 32 kv heads), LoRA r=16 bf16-mixed: the residual
    stream is bf16 and the MLP elementwise tensors are bf16.

    attention: norm 4h + q/k/v casts 3 x 2h + SDPA q, k, v 2 x 3h (k, v at all 32 heads)
               + output 2h + lse 4a + o_proj cast 2h = 82,048
    MLP: norm 4h + gate/up casts 2 x 2h + SwiGLU 3 x 2I + down cast 2I = 120,832
    rank: 7 x 2 x 16 = 224                             -> 203,104 B/token/layer
    T = 4 x 4096 = 16,384; 32 layers + final norm 4h = 6,515,712 B/token, plus the last layer's
    gradient working set 2 x (2h + 4I) = 104,448 B/token (1.59 GiB, more than the loss' chunked
    logits, 1.0 GiB, so the working set is the backward branch of the peak) -> 101.0 GiB.
    """
    h, i, a = 4096, 11008, 32
    attn = 4 * h + 3 * 2 * h + 2 * 3 * h + 2 * h + 4 * a + 2 * h
    mlp = 4 * h + 2 * 2 * h + 3 * 2 * i + 2 * i
    assert (attn, mlp) == (82_048, 120_832)
    T = 4 * 4096
    est, act = _act("llama-2-7b", "lora", seq_len=4096, micro_batch_size=4, gradient_checkpointing=False)
    ws = 2 * (2 * h + 4 * i)
    assert act == pytest.approx(T * (32 * (attn + mlp + 224) + 4 * h + ws), rel=1e-3)
    # trl's chunked loss (chunks of 256 tokens): the lm_head's fp32 copy and its bf16 cast
    # (32000 x 4096 x 6 B), one chunk's logits at 2 B each while the copies are alive, plus the
    # reordered final hidden states and their gradient (2 x T x h x 2 B).
    logits = 32000 * 4096 * 6 + 256 * 32000 * 2 + 2 * T * h * 2
    assert logits < ws * T  # why the working set, not the logits, is in the peak
    assert est.memory.logits_bytes == 0


def test_mha_llama2_7b_full_bf16_true_checkpointed_s4096_mb8():
    """Full fine-tuning in pure bf16 (every weight trains, so every linear keeps its input and each
    RMSNorm keeps its bf16 normed output for the weight gradient):

    attention: norm 4h + normed 2h + q/k/v input 2h (one tensor shared by the three matmuls)
               + SDPA q, k, v 6h + output 2h (shared with o_proj) + lse 4a = 16h + 4a
    MLP: norm 6h + gate/up input 2h + SwiGLU 6I + down input 2I = 8h + 8I
    -> 24h + 8I + 4a = 186,496 B/token/layer.
    Checkpointed: 32 layer inputs of 2h, after the stack the final norm's fp32 input 4h, its normed
    bf16 output 2h (trained weight) and the lm_head input 2h; one recomputed layer; working set
    2 x (2h + 4I) = 104,448. T = 32,768 -> 32,768 x 585,856 B = 17.88 GiB.
    """
    h, i, a = 4096, 11008, 32
    layer = 24 * h + 8 * i + 4 * a
    assert layer == 186_496
    T = 8 * 4096
    est, act = _act("llama-2-7b", "full", precision="bf16-true", seq_len=4096, micro_batch_size=8,
                    gradient_checkpointing=True)
    assert act == pytest.approx(T * (32 * 2 * h + (4 + 2 + 2) * h + layer + 2 * (2 * h + 4 * i)), rel=1e-3)
    assert act / GIB == pytest.approx(17.88, abs=0.01)


# --- Mixtral-8x7B (MoE: 8 experts, top-2; GQA 8 kv heads), LoRA -------------------------------------


def _mixtral_lora_layer(r):
    """Mixtral-8x7B under LoRA r=16 (bf16-mixed). peft's all-linear adapts q, k, v, o; the routed
    experts are fused 3-D parameters in transformers 5, so they stay frozen and unadapted."""
    h, im, a, kv, d, E, k = 4096, 14336, 32, 8, 128, 8, 2
    c = 2
    attn = 4 * h + 3 * c * h + c * (a * d + 2 * kv * d) + c * a * d + 4 * a + c * a * d
    moe = (
        4 * h  # post-attention RMSNorm fp32 input
        + 4 * E + 4 * k  # fp32 router softmax over 8 experts and the top-2 weights
        # per routed (token, expert) pair, k = 2 of them: the expert's SwiGLU 3 x Im in bf16 and the
        # expert output kept for the routing-weight multiply (h); frozen experts keep no inputs
        + k * (3 * c * im + c * h)
    )
    return attn + moe + 4 * c * r  # rank outputs of the 4 attention LoRA modules


def test_mixtral_lora_checkpointed_s4096_mb2():
    """T = 2 x 4096 = 8,192 tokens; layer 274,600 + 128 (r=16) B/token.
    saved: 32 bf16 layer inputs (2h) + final norm input 4h = 278,528
    working set: 2 x (2h + 4 x widest), widest = top-2 x Im = 28,672 -> 245,760
    total = 8,192 x (278,528 + 274,728 + 245,760) = 6,545,539,072 B = 6.10 GiB."""
    assert _mixtral_lora_layer(16) == 274_600 + 128
    T = 2 * 4096
    est, act = _act("mixtral-8x7b", "lora", seq_len=4096, micro_batch_size=2, gradient_checkpointing=True)
    want = T * (32 * 2 * 4096 + 4 * 4096 + _mixtral_lora_layer(16) + 2 * (2 * 4096 + 4 * 2 * 14336))
    assert want == 6_545_539_072
    assert act == pytest.approx(want, rel=1e-3)


def test_mixtral_lora_without_checkpointing_s4096_mb2():
    T = 2 * 4096
    est, act = _act("mixtral-8x7b", "lora", seq_len=4096, micro_batch_size=2, gradient_checkpointing=False)
    want = T * (32 * _mixtral_lora_layer(16) + 4 * 4096 + 2 * (2 * 4096 + 4 * 2 * 14336))
    assert act == pytest.approx(want, rel=1e-3)
    assert act / GIB == pytest.approx(69.07, abs=0.01)


# --- attention kinds: eager's s^2 term ---------------------------------------------------------------


def test_eager_attention_adds_exactly_its_score_matrices():
    """Eager attention keeps the fp32 softmax and its bf16 cast: a x s x (4 + 2) bytes per token and
    layer, and k, v repeated to all 32 heads by transformers' repeat_kv (2 x 2 x (32 - 8) x 128),
    where SDPA keeps k, v at the 8 kv heads. SDPA also keeps its output (2 x a x d) and an fp32
    logsumexp (4a); eager keeps neither: its output is a plain matmul result that nothing saves
    (o_proj's LoRA keeps its own cast in both). At micro-batch 1 without checkpointing, the saved
    sets therefore differ by s x 32 layers x that per-token amount (the loss' logits, the larger
    branch at this size, are the same in both)."""
    s = 2048
    sdpa = _act(LLAMA31_8B, "lora", seq_len=s, micro_batch_size=1, gradient_checkpointing=False)[1]
    eager = _act(LLAMA31_8B, "lora", seq_len=s, micro_batch_size=1, gradient_checkpointing=False,
                 attention="eager")[1]
    per_token_layer = A * 6 * s + 2 * 2 * (A - KV) * D - (2 * A * D + 4 * A)
    assert eager - sdpa == pytest.approx(s * L * per_token_layer, rel=1e-3)
    # quadratic in s: at 4096 the score matrices alone are 32 x 32 x 6 x 4096^2 B = 96 GiB
    assert A * 6 * 4096 * 4096 * L / GIB == 96
