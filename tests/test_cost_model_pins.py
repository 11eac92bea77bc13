"""Hand-derived pins of the cost model (issue 14, item 6: mutation testing, scripts/mutation.sh).

Every expected value below is worked out in the comments from the cited rule (paper, library
source, or the formula a docstring states) on a model small enough to count by hand; none is
copied from the estimator's output. Each test targets mutants that survived the fast test files
(see docs/mutation.md); all run in milliseconds, with no torch.

The tiny Llama used throughout (TINY): V=100, h=12, I=20, L=3, a=3 query heads, kv=1, d=h/a=4,
untied embeddings, RMSNorm, SwiGLU, no biases. Its linears per layer (in x out):
q 12x12, k 12x4, v 12x4, o 12x12, gate 12x20, up 12x20, down 20x12 -> 1104 weights per layer.
Norms: 2 per layer + 1 final, width 12 -> 7 x 12 = 84. Embedding and lm_head: 100 x 12 = 1200 each.
Total P = 3 x 1104 + 84 + 2 x 1200 = 5796.
"""

from __future__ import annotations

import math

import pytest

import ftadvisor as fa
from ftadvisor import memory
from ftadvisor.errors import FtAdvisorError
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.techniques import parse_technique

TINY = dict(
    model_type="llama", vocab_size=100, hidden_size=12, intermediate_size=20, num_hidden_layers=3,
    num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=False, max_position_embeddings=4096,
)
V, H, I, L, A, KV, D = 100, 12, 20, 3, 3, 1, 4
P = 5796
LINEARS = {  # name: (in, out)
    "q_proj": (12, 12), "k_proj": (12, 4), "v_proj": (12, 4), "o_proj": (12, 12),
    "gate_proj": (12, 20), "up_proj": (12, 20), "down_proj": (20, 12),
}
LINEAR_WEIGHTS = L * sum(i * o for i, o in LINEARS.values())  # 3 x 1104 = 3312
NORMS = (2 * L + 1) * H  # 84
EMB = HEAD = V * H  # 1200
MIB = 2**20
FRAMEWORK = 32 * MIB  # cuBLAS workspaces (memory.FRAMEWORK_OVERHEAD_BYTES_GPU; CublasHandlePool.cpp)


def lora_params(r: int) -> int:
    # Hu et al. 2021, eq. 3: A (r x in) + B (out x r) per adapted module, all seven linears, 3 layers.
    return L * sum(r * (i + o) for i, o in LINEARS.values())


def test_tiny_model_counts_by_hand():
    assert LINEAR_WEIGHTS == 3312 and LINEAR_WEIGHTS + NORMS + EMB + HEAD == P
    assert resolve_model(TINY).arch.total_params == P
    assert lora_params(2) == 3 * 2 * (24 + 16 + 16 + 24 + 32 + 32 + 32) == 1056


def layout(technique: str = "lora", hardware: str = "h100-sxm", **fields):
    mp = resolve_model(TINY)
    hw = resolve_hardware(hardware)
    tp = fa.make_plan(technique, **fields)
    lay = memory.build_layout(mp.arch, parse_technique(tp.technique), hw, tp)
    return lay, tp


def phase(technique: str = "lora", name: str = "forward_backward", hardware: str = "h100-sxm", **fields):
    lay, tp = layout(technique, hardware, **fields)
    return memory.evaluate(lay, tp).phases[name]


# --- storage sizes ------------------------------------------------------------------------------


def test_int8_storage_is_one_byte_plus_an_fp32_scale_per_output_row():
    # LLM.int8 (bitsandbytes Linear8bitLt): 1 byte per weight + one fp32 SCB per output row, so a
    # 12 -> 20 linear stores 240 + 4 * 20 = 320 bytes: 320 / 240 = 1 + 4/12 per weight.
    assert memory.int8_bytes_per_param(12) * 12 * 20 == pytest.approx(240 + 4 * 20)
    assert memory.int8_bytes_per_param(4096) == pytest.approx(1 + 4 / 4096)


# --- parameter counts ---------------------------------------------------------------------------


def test_count_params_full_finetune():
    lay, tp = layout("full")
    p = memory.count_params(lay, tp)
    assert p.total == P and p.trainable == P
    # bf16-mixed: every trained parameter is an fp32 master (4 B); nothing is frozen.
    assert p.by_dtype.get("fp32") == 4 * P and not p.by_dtype.get("bf16")
    assert p.stored_bytes == 4 * P
    # Adafactor's factored state needs rows + cols per matrix (Shazeer & Stern 2018, Alg. 4) and the
    # full vector for 1-D tensors: linears sum(count * (in + out)) = 3 x 176 = 528, embedding and
    # lm_head (100 + 12) each, norms 84 -> 836.
    assert p.trainable_matrix_rows_cols == 3 * (24 + 16 + 16 + 24 + 32 + 32 + 32) + 2 * (V + H) + NORMS == 836
    assert p.largest_trainable == EMB  # the 100 x 12 embedding beats every 240-weight linear
    # autocast casts the matmul weights (linears + lm_head), not the embedding lookup or the norms.
    assert p.autocast_cast_params == LINEAR_WEIGHTS + HEAD == 4512
    # FSDP/ZeRO-3 units: one decoder layer (1104 linear weights + its 2 norms of 12 = 1104 + 84/3)
    # and the root (embedding + lm_head).
    assert p.largest_layer_params == pytest.approx(1104 + 84 / 3)
    assert p.root_params == EMB + HEAD
    assert p.quant_largest_linear == 0


def test_count_params_bf16_true_full_finetune_stores_two_bytes():
    lay, tp = layout("full", precision="bf16-true")
    p = memory.count_params(lay, tp)
    assert p.by_dtype.get("bf16") == 2 * P and p.stored_bytes == 2 * P


def test_count_params_lora():
    lay, tp = layout("lora", lora_r=2)
    p = memory.count_params(lay, tp)
    n = lora_params(2)  # 1056
    assert p.trainable == n
    # frozen base in bf16 (2 B), adapters fp32 masters under bf16-mixed (4 B)
    assert p.by_dtype == {"bf16": 2 * P, "fp32": 4 * n}
    # rows + cols per LoRA pair: A is r x in, B is out x r -> 2r + in + out per module
    assert p.trainable_matrix_rows_cols == 3 * sum(2 * 2 + i + o for i, o in LINEARS.values()) == 612
    assert p.largest_trainable == 0  # no base tensor trains
    assert p.autocast_cast_params == n  # adapters are matmul weights; no norm or embedding trains


def test_count_params_fp16_mixed_labels_the_frozen_base_fp16():
    lay, tp = layout("lora", lora_r=2, precision="fp16-mixed")
    assert memory.count_params(lay, tp).by_dtype == {"fp16": 2 * P, "fp32": 4 * lora_params(2)}


def test_count_params_dora_adds_one_magnitude_per_output_feature():
    lay, tp = layout("dora", lora_r=2)
    p = memory.count_params(lay, tp)
    mags = L * sum(o for _, o in LINEARS.values())  # Liu et al. 2024, eq. 5: m has out_features entries
    assert mags == 252
    assert p.trainable == lora_params(2) + mags


def test_count_params_qlora_nf4_and_int8():
    nf4_dq = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # QLoRA section 3: 4 bits + 0.127 bit of constants
    nf4 = 0.5 + 32 / 64 / 8  # without double quantization: 4 bits + one fp32 absmax per 64 weights
    non_linear = NORMS + EMB + HEAD  # kept in fp32 by prepare_model_for_kbit_training next to a 4-bit base
    lay, tp = layout("qlora", lora_r=2)
    p = memory.count_params(lay, tp)
    assert p.by_dtype["nf4"] == pytest.approx(LINEAR_WEIGHTS * nf4_dq)
    assert p.by_dtype["fp32"] == pytest.approx(4 * non_linear + 4 * lora_params(2))
    assert p.quant_largest_linear == 12 * 20  # the dequantization workspace of the widest linear
    lay, tp = layout("qlora", lora_r=2, double_quant=False)
    assert memory.count_params(lay, tp).by_dtype["nf4"] == pytest.approx(LINEAR_WEIGHTS * nf4)
    lay, tp = layout("qlora", lora_r=2, quantization="int8")
    # int8: 1 B per weight + 4 B per output row per linear instance
    int8 = LINEAR_WEIGHTS + 4 * L * sum(o for _, o in LINEARS.values())
    assert memory.count_params(lay, tp).by_dtype["int8"] == pytest.approx(int8)


def test_count_params_bottleneck_adapter():
    lay, tp = layout("adapter", adapter_bottleneck=4)
    p = memory.count_params(lay, tp)
    # Houlsby et al. 2019, Fig. 2: two adapters per layer, each h->m and m->h with biases:
    # 2 * L * (2hm + m + h) = 2 * 3 * (96 + 4 + 12) = 672; plus all norms trained (section 2.1).
    assert p.trainable == 672 + NORMS
    # rows + cols: per adapter the two matrices (h + m) each -> 2 * L * 2 * (h + m) = 192; norms 84
    assert p.trainable_matrix_rows_cols == 2 * L * 2 * (H + 4) + NORMS
    # autocast casts the two weight matrices, not the biases (2 * L * (m + h)) nor the norms
    assert p.autocast_cast_params == 2 * L * 2 * H * 4 == 576
    assert p.by_dtype == {"bf16": 2 * (P - NORMS), "fp32": 4 * (672 + NORMS)}


def test_count_params_half_finetune():
    # HFT (Hui et al. 2024) with half_ft_fraction 0.5 of 3 layers: round(1.5) = 2 layers train, i.e.
    # 2/3 of every linear and of the 6 in-layer norms (not the final norm); embeddings frozen.
    lay, tp = layout("half_ft")
    p = memory.count_params(lay, tp)
    assert p.trainable == pytest.approx(2 * 1104 + 2 * 2 * H)
    assert p.by_dtype["fp32"] == pytest.approx(4 * (2 * 1104 + 4 * H))
    assert p.by_dtype["bf16"] == pytest.approx(2 * (1104 + 3 * H + EMB + HEAD))
    assert p.largest_trainable == 240  # a whole 12x20 linear (the trained instances are whole)


def test_count_params_lamini_memory_experts():
    # Li et al. 2024, section 4: per memory layer E experts (A: h x r, B: r x h) and E keys of width h.
    lay, tp = layout("lamini", lora_r=2, lamini_num_experts=8, lamini_top_k=2, lamini_layers=2)
    p = memory.count_params(lay, tp)
    assert p.trainable == 2 * 8 * (2 * H * 2 + H) == 960
    assert p.largest_trainable == 8 * H * 2  # the bank of one layer, E * h * r
    assert p.trainable_matrix_rows_cols == 2 * (8 * (H + 2) * 2 + 8 + H)


# --- optimizer state ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer,fields,device,paged",
    [
        # torch AdamW: exp_avg and exp_avg_sq like the fp32 master -> 2 x 4 B per trainable parameter
        ("adamw", {}, 8, 0),
        # bf16-true keeps the moments in bf16 (zeros_like(param)): 2 x 2 B
        ("adamw", {"precision": "bf16-true"}, 4, 0),
        # bitsandbytes 8-bit: two uint8 states + one fp32 absmax per 256 per state (Dettmers et al. 2021)
        ("adamw_8bit", {}, 2 * (1 + 4 / 256), 0),
        ("paged_adamw_8bit", {}, 0, 2 * (1 + 4 / 256)),
        ("paged_adamw_32bit", {}, 0, 8),
        ("sgd", {}, 0, 0),  # momentum 0: no state
    ],
)
def test_optimizer_state_bytes_per_trainable_parameter(optimizer, fields, device, paged):
    lay, tp = layout("lora", lora_r=2, optimizer=optimizer, **fields)
    dev, pg = memory.optimizer_state_bytes(lay, memory.count_params(lay, tp))
    assert dev == pytest.approx(device * 1056)
    assert pg == pytest.approx(paged * 1056)


def test_optimizer_state_adafactor_is_rows_plus_cols_in_fp32():
    lay, tp = layout("lora", lora_r=2, optimizer="adafactor")
    dev, pg = memory.optimizer_state_bytes(lay, memory.count_params(lay, tp))
    assert (dev, pg) == (4 * 612, 0.0)  # 612 rows+cols (test_count_params_lora), fp32 each


def test_optimizer_state_fp32_moments_under_deepspeed_and_fsdp_even_in_bf16_true():
    # DeepSpeed and FSDP keep Adam's moments in fp32 whatever the working dtype: 8 B per parameter.
    for sharding in ("zero1", "zero2", "zero3", "fsdp"):
        lay, tp = layout("lora", lora_r=2, precision="bf16-true", num_gpus=2, sharding=sharding)
        dev, _ = memory.optimizer_state_bytes(lay, memory.count_params(lay, tp))
        assert dev == 8 * 1056, sharding


def test_optimizer_state_unknown_optimizer_is_an_error():
    lay, tp = layout("lora", lora_r=2)
    import dataclasses

    with pytest.raises(FtAdvisorError):
        memory.optimizer_state_bytes(dataclasses.replace(lay, optimizer="lion"), memory.count_params(lay, tp))


# --- frozen copies --------------------------------------------------------------------------------


def test_frozen_copy_bytes():
    # A reference model in the compute dtype: every parameter at 2 B (bf16), fp32 precision 4 B.
    lay, _ = layout("full")
    assert memory.frozen_copy_bytes(lay) == 2 * P
    lay, _ = layout("full", precision="fp32")
    assert memory.frozen_copy_bytes(lay) == 4 * P
    # Next to a quantized base the decoder linears stay quantized (nf4 + double quant), the rest bf16.
    lay, _ = layout("qlora")
    nf4_dq = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8
    assert memory.frozen_copy_bytes(lay) == pytest.approx(LINEAR_WEIGHTS * nf4_dq + 2 * (NORMS + EMB + HEAD))


# --- logits and loss ----------------------------------------------------------------------------


def test_loss_logits_bytes_per_objective():
    T = 64
    # Unchunked cross-entropy: the backward of log_softmax holds three fp32 tensors per logit
    # (kept log-softmax output, nll's gradient, the new gradient): 12 B x T x V.
    lay, _ = layout("lora", sft_chunked_loss=False)
    assert memory.loss_logits_bytes(lay, T, T) == 12 * T * V
    # DPO: same 12 B per logit over the T_loss tokens.
    lay, _ = layout("dpo+lora")
    assert memory.loss_logits_bytes(lay, T, T) == 12 * T * V
    # ... and on the CPU, trl's selective_log_softmax keeps 4 B per logit more (measured with the
    # storage tracker: DPO -17.2%, ORPO -15.9%, KTO -19.9% on cpu-tiny without it); not on a GPU.
    for tech in ("dpo+lora", "kto+lora"):
        lay, _ = layout(tech, hardware="cpu")
        assert memory.loss_logits_bytes(lay, T, T) == 16 * T * V
    lay, _ = layout("grpo+lora", hardware="cpu")
    assert memory.loss_logits_bytes(lay, T, 16) == 12 * 16 * V
    # KTO: one sequence per example, the same gather as DPO (12 B on a GPU).
    lay, _ = layout("kto+lora")
    assert memory.loss_logits_bytes(lay, T, T) == 12 * T * V
    # ORPO adds the NLL over the chosen half: one more fp32 log-softmax over T/2 tokens.
    lay, _ = layout("orpo+lora")
    assert memory.loss_logits_bytes(lay, T, T) == 12 * T * V + T / 2 * V * 4
    # PPO: full-sequence logits in the compute dtype before slicing the response of T_loss tokens.
    lay, _ = layout("ppo+lora")
    assert memory.loss_logits_bytes(lay, T, 16) == 12 * 16 * V + (T - 16) * V * 2
    # GRPO: logits for the completion tokens only (logits_to_keep).
    lay, _ = layout("grpo+lora")
    assert memory.loss_logits_bytes(lay, T, 16) == 12 * 16 * V


def test_loss_logits_bytes_sft_chunked():
    # trl's chunked NLL: chunks of 256 tokens; per chunk an fp32 copy of the bf16 lm_head weight
    # (V h 4) and its autocast cast (V h 2), then max(12 B per chunk logit, copies + 2 B per chunk
    # logit), plus the reordered final hidden states and their gradient (2 T h c).
    lay, _ = layout("lora")  # frozen bf16 lm_head, bf16-mixed
    T = 1000
    chunk = 256 * V
    copies = V * H * (4 + 2)
    assert memory.loss_logits_bytes(lay, T, T) == max(12 * chunk, copies + 2 * chunk) + 2 * T * H * 2
    # Fewer tokens than a chunk: the chunk is T_loss tokens.
    # (4 tokens: 12 x 4V = 48V < 72V of copies + 8V, so the copies set the peak)
    assert memory.loss_logits_bytes(lay, 4, 4) == copies + 2 * 4 * V + 2 * 4 * H * 2
    # A trained fp32 lm_head (full FT, bf16-mixed) needs no fp32 copy, only the bf16 cast.
    lay, _ = layout("full")
    assert memory.loss_logits_bytes(lay, T, T) == max(12 * chunk, V * H * 2 + 2 * chunk) + 2 * T * H * 2
    # bf16-true: an fp32 copy of the bf16 weight, no autocast cast.
    lay, _ = layout("lora", precision="bf16-true")
    assert memory.loss_logits_bytes(lay, T, T) == max(12 * chunk, V * H * 4 + 2 * chunk) + 2 * T * H * 2


# --- activations: one decoder layer, tensor by tensor ---------------------------------------------
#
# The rules (memory.activation_coefficients docstring; Korthikanti et al. 2022, section 4.1, redone
# for RMSNorm, SwiGLU and GQA): RMSNorm keeps its fp32 input (4h); a linear keeps its input only if
# its weight trains; peft LoRA keeps its own cast of the input (c x in) and the rank-r intermediate
# (c x r) per adapted module; SDPA keeps q, k, v (k/v at kv heads), the output and an fp32
# logsumexp per head; SwiGLU keeps gate, act and up outputs (3I).


def test_activation_coefficients_lora_bf16_mixed():
    lay, _ = layout("lora", lora_r=2)
    k = memory.activation_coefficients(lay)
    c = 2
    attn = (4 * H  # input norm: fp32 input
            + 3 * c * H  # q, k, v LoRA: each its own bf16 cast of the 12-wide input
            + c * (A * D + 2 * KV * D)  # q, k, v kept by SDPA
            + c * A * D + 4 * A  # SDPA output + fp32 logsumexp per head
            + c * A * D)  # o_proj LoRA input cast
    mlp = (4 * H  # post-attention norm
           + 2 * c * H  # gate, up LoRA input casts
           + 3 * c * I  # gate output, SiLU output, up output
           + c * I)  # down_proj LoRA input cast
    assert (attn, mlp) == (220, 256)
    assert k.per_layer_dense == attn + mlp
    assert k.per_layer_r == 7 * c  # one rank-r intermediate per adapted module: x r
    assert k.per_layer_seq == 0  # SDPA keeps no s x s matrix
    assert k.top == 4 * H  # final norm's fp32 input; frozen lm_head keeps nothing
    assert k.checkpoint_per_layer == c * H  # the bf16 layer input (frozen embedding: bf16 stream)
    # backward working set: input and output gradients (2h) and four I-wide gradients, bf16
    assert k.backward_ws == c * (2 * H + 4 * I)


def test_activation_coefficients_full_finetune_bf16_mixed():
    # Trained embedding under autocast: the residual stream is fp32 (resid = 4); trained norms keep
    # their bf16-normalised output too (resid x h), and under autocast with fp32 weights each
    # consumer of an fp32 tensor casts its own bf16 copy.
    lay, _ = layout("full")
    k = memory.activation_coefficients(lay)
    c, resid = 2, 4
    norm = 4 * H + resid * H
    attn = (norm + 3 * c * H  # q, k, v: three casts of the fp32 norm output
            + c * (A * D + 2 * KV * D) + c * A * D + 4 * A
            + 0)  # o_proj's input is the SDPA output already kept (shared storage)
    mlp = norm + 2 * c * H + 3 * c * I + c * I  # gate/up casts, SwiGLU, down input
    assert k.per_layer_dense == attn + mlp == 244 + 304
    assert k.per_layer_r == 0
    assert k.top == 4 * H + resid * H + c * H  # final norm (fp32 in + out) + trained lm_head's input
    assert k.checkpoint_per_layer == resid * H


def test_activation_coefficients_eager_attention_keeps_scores_per_key():
    # Eager attention keeps the fp32 softmax (4 B) and its bf16 cast (c) per head per key position,
    # and k/v repeated to all heads (repeat_kv), but no logsumexp.
    lay, _ = layout("lora", lora_r=2, attention="eager")
    k = memory.activation_coefficients(lay)
    assert k.per_layer_seq == A * (4 + 2)
    sdpa, _ = layout("lora", lora_r=2)
    ks = memory.activation_coefficients(sdpa)
    # q,k,v: A*D + 2*A*D instead of A*D + 2*KV*D; minus output and logsumexp (2*A*D + 4*A)
    assert k.per_layer_dense - ks.per_layer_dense == 2 * (2 * A * D - 2 * KV * D) - (2 * A * D + 4 * A)


def test_activation_coefficients_lora_dropout_and_dora():
    # lora_dropout > 0: per adapted module the dropout output (c) and a 1-byte mask over its input.
    plain = memory.activation_coefficients(layout("lora", lora_r=2)[0])
    drop = memory.activation_coefficients(layout("lora", lora_r=2, lora_dropout=0.1)[0])
    inputs = 3 * H + A * D + 2 * H + I  # input widths of the 7 adapted modules of a layer
    assert drop.per_layer_dense - plain.per_layer_dense == inputs * (2 + 1)
    # DoRA keeps the base and LoRA results for the magnitude rescale: 2 x c x out per module.
    dora = memory.activation_coefficients(layout("dora", lora_r=2)[0])
    outs = sum(o for _, o in LINEARS.values())
    assert dora.per_layer_dense - plain.per_layer_dense == 2 * 2 * outs


# --- evaluate: the phases, component by component ----------------------------------------------


def test_evaluate_lora_short_sequence_peaks_at_the_loss():
    # LoRA r=2, 1 x 64 tokens, checkpointing (the default), chunked SFT loss.
    T = 64
    n = lora_params(2)
    fb = phase("lora", lora_r=2, seq_len=T)
    assert fb["weights"] == 2 * P + 4 * n  # bf16 base + fp32 adapters
    assert fb["optimizer_state"] == 8 * n
    assert fb["master_weights"] == 2 * n  # autocast's bf16 copies of the adapter weights
    assert fb["extra_models"] == 0 and fb["communication"] == 0
    assert fb["framework_overhead"] == FRAMEWORK
    assert fb["quantization_workspace"] == 0
    # saved: each layer's bf16 input (c h = 24) + the top (4h = 48); recompute of one layer:
    # 476 + 2 x 14 = 504 per token; backward working set 208 per token.
    saved = T * (L * 24 + 48)
    act_branch = T * 504 + T * 208
    logits = max(12 * T * V, V * H * 6 + 2 * T * V) + 2 * T * H * 2
    assert logits > act_branch  # so the peak is at the loss, with no gradient allocated yet
    assert fb["activations"] == saved
    assert fb["logits"] == logits
    assert fb["gradients"] == 0
    step = phase("lora", "optimizer_step", lora_r=2, seq_len=T)
    assert step["gradients"] == 4 * n and step["activations"] == 0 and step["logits"] == 0
    assert step["master_weights"] == 0  # autocast's cache is gone after the forward


def test_evaluate_lora_long_sequence_peaks_in_backward():
    T = 1024
    fb = phase("lora", lora_r=2, seq_len=T)
    saved = T * (L * 24 + 48)
    recompute, bws = T * 504, T * 208
    logits = 12 * 256 * V + 2 * T * H * 2  # chunks of 256 tokens
    assert logits < recompute + bws
    assert fb["activations"] == saved + recompute + bws
    assert fb["logits"] == 0
    assert fb["gradients"] == 0  # nothing of a frozen lm_head to hold


def test_evaluate_without_checkpointing_keeps_every_layer():
    T = 1024
    fb = phase("lora", lora_r=2, seq_len=T, gradient_checkpointing=False)
    saved = T * (L * (476 + 2 * 14) + 48)
    # nothing to recompute: the loss (12 x 256 x V + 2 T h c = 356,352) beats the backward working
    # set alone (208 T = 212,992), so the peak is at the loss
    assert fb["activations"] == saved
    assert fb["logits"] == 12 * 256 * V + 2 * T * H * 2


def test_evaluate_full_finetune_backward_holds_the_lm_head_gradient():
    T = 1024
    fb = phase("full", seq_len=T)
    # full FT: per-layer 548, checkpoint 48 (fp32 stream), top 4h + 4h + 2h = 120
    saved = T * (L * 48 + 120)
    recompute, bws = T * 548, T * 208
    head_grad = HEAD * 4  # the first gradient backward allocates: lm_head's fp32 gradient
    assert fb["activations"] == saved + recompute + bws
    assert fb["gradients"] == head_grad
    assert fb["weights"] == 4 * P and fb["optimizer_state"] == 8 * P
    assert fb["master_weights"] == 2 * (LINEAR_WEIGHTS + HEAD)  # autocast copies of matmul weights
    # with accumulation the previous micro-batches' gradients are alive: all of them
    fb = phase("full", seq_len=T, gradient_accumulation_steps=4)
    assert fb["gradients"] == 4 * P


def test_evaluate_adafactor_and_sgd_step_temporaries():
    # per-tensor Adafactor/SGD paths allocate ~two fp32 copies of the largest tensor (the embedding)
    for opt in ("adafactor", "sgd"):
        assert phase("full", "optimizer_step", optimizer=opt)["activations"] == 2 * 4 * EMB
    assert phase("full", "optimizer_step", optimizer="adamw")["activations"] == 0


def test_evaluate_cpu_has_no_framework_overhead_and_no_paging():
    fb = phase("lora", hardware="cpu", lora_r=2, optimizer="paged_adamw_8bit")
    assert fb["framework_overhead"] == 0
    # no unified memory on the host: the paged state is plain memory
    assert fb["optimizer_state"] == pytest.approx(2 * (1 + 4 / 256) * lora_params(2))
    lay, tp = layout("lora", hardware="cpu", lora_r=2, optimizer="paged_adamw_8bit")
    assert memory.evaluate(lay, tp).paged_bytes == 0
    lay, tp = layout("lora", lora_r=2, optimizer="paged_adamw_8bit")
    assert memory.evaluate(lay, tp).paged_bytes == pytest.approx(2 * (1 + 4 / 256) * lora_params(2))


def test_evaluate_qlora_dequantization_workspace():
    # bitsandbytes dequantizes one weight at a time to the compute dtype: the largest, 12 x 20, in bf16.
    assert phase("qlora", lora_r=2)["quantization_workspace"] == 12 * 20 * 2


def test_evaluate_dora_weight_norm_workspace():
    # DoRA forms W + s*BA in fp32 (8 B per weight of the largest adapted linear: 240 weights, with its
    # fp32 temporary) and pushes an in x in identity through the adapters (c x in^2, in = 20).
    assert phase("dora", lora_r=2)["quantization_workspace"] == 240 * 8 + 20 * 20 * 2


# --- evaluate: sharding (ZeRO, Rajbhandari et al. 2020, Fig. 1; FSDP, Zhao et al. 2023) ---------


def test_evaluate_ddp_keeps_a_bucket_copy_of_the_gradients():
    st = phase("full", "optimizer_step", num_gpus=2, sharding="ddp")
    assert st["communication"] == 4 * P
    assert st["gradients"] == 4 * P and st["weights"] == 4 * P and st["optimizer_state"] == 8 * P


@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_evaluate_deepspeed_stages(stage):
    N = 2
    st = phase("full", "optimizer_step", num_gpus=N, sharding=stage)
    # bf16 working weights (2 B), fp32 master and fp32 gradient partitions (4 B / N), Adam 8 B / N
    assert st["weights"] == (2 * P / N if stage == "zero3" else 2 * P)
    assert st["master_weights"] == 4 * P / N
    bf16_grads = 2 * P if stage == "zero1" else 2 * P / N
    assert st["gradients"] == bf16_grads + 4 * P / N
    assert st["optimizer_state"] == 8 * P / N
    # reduce bucket h^2 elements, double-buffered, in bf16; stage 3 also holds the parameters kept
    # gathered for reuse -- all P = 5,796 of TINY, far below stage3_max_reuse_distance = 1e9 elements
    # (more than 2 x 1132 of the layer in flight and the prefetched one) -- and a 0.9 h^2 prefetch bucket
    comm = 2 * 2 * H * H
    if stage == "zero3":
        comm += 2 * (P + 0.9 * H * H)
    assert st["communication"] == pytest.approx(comm)


def test_zero3_keeps_parameters_gathered_within_the_reuse_distance():
    # deepspeed partitioned_param_coordinator.__params_to_release: a module's parameters stay gathered
    # if they reappear within max_reuse elements of the module trace. With checkpointing (r = 3 passes
    # per later layer) the lm_head (V h = 1200) is always kept; the k-th layer from the top needs
    # 3 (1200 + k 1132) < max_reuse; the embedding (1200) only when every layer is kept.
    lay, tp = layout("full", num_gpus=2, sharding="zero3")
    p = memory.count_params(lay, tp)
    assert memory.zero3_gathered_params(lay, p, max_reuse=0) == HEAD
    assert memory.zero3_gathered_params(lay, p, max_reuse=3 * 1200 + 1) == HEAD + 1132
    assert memory.zero3_gathered_params(lay, p, max_reuse=3 * (1200 + 1132) + 1) == HEAD + 2 * 1132
    assert memory.zero3_gathered_params(lay, p, max_reuse=1e9) == P
    # ZeRO-3 keeps its gradient partitions (compute dtype, 2 P / N) through forward and backward
    # (stage3.py grad_partitions_flat_buffer): the forward/backward gradients are at least that
    assert phase("full", "forward_backward", num_gpus=2, sharding="zero3")["gradients"] >= 2 * P / 2


def test_evaluate_zero_bucket_is_capped_by_the_trainable_count():
    # LoRA r=1 has 528 trainable parameters > h^2 = 144: the bucket is h^2; a model with fewer
    # trainable parameters than h^2 is covered by the cap min(h^2, trainable + 1).
    st = phase("lora", "optimizer_step", lora_r=1, num_gpus=2, sharding="zero2")
    assert st["communication"] == 2 * 2 * H * H


def test_evaluate_zero_offload_moves_states_to_the_host():
    N = 2
    lay, tp = layout("full", num_gpus=N, sharding="zero2", cpu_offload=True)
    ev = memory.evaluate(lay, tp)
    st = ev.phases["optimizer_step"]
    # master weights, Adam state and the fp32 gradient partition live on the host
    assert ev.host_bytes == 4 * P / N + 8 * P / N + 4 * P / N
    assert st["master_weights"] == 0 and st["optimizer_state"] == 0
    assert st["gradients"] == 2 * P / N and st["weights"] == 2 * P
    lay, tp = layout("full", num_gpus=N, sharding="zero3", cpu_offload=True)
    ev = memory.evaluate(lay, tp)
    assert ev.host_bytes == 4 * P / N + 8 * P / N + 4 * P / N + 2 * P / N  # + the stage-3 weight shard
    assert ev.phases["optimizer_step"]["weights"] == 0


def test_evaluate_fsdp():
    N = 2
    st = phase("full", "optimizer_step", num_gpus=N, sharding="fsdp")
    assert st["weights"] == 4 * P / N and st["gradients"] == 4 * P / N and st["optimizer_state"] == 8 * P / N
    assert st["master_weights"] == 0
    # unsharded in bf16 between steps and at the loss: only the root unit (embedding + lm_head); the
    # layers reshard after forward. In backward also the current and prefetched layer and, per
    # trained layer, its unsharded gradient and the reduce-scatter input (both bf16)
    layer = 1104 + 28
    assert st["communication"] == pytest.approx(2 * (EMB + HEAD))
    lay, tp = layout("full", num_gpus=N, sharding="fsdp")
    p = memory.count_params(lay, tp)
    cp = memory._model_copies(lay, tp, p)
    assert memory._sharded_states(lay, tp, p, cp).comm_backward == pytest.approx(2 * 2 * layer + 2 * 2 * layer)
    lay, tp = layout("full", num_gpus=N, sharding="fsdp", cpu_offload=True)
    ev = memory.evaluate(lay, tp)
    assert ev.host_bytes == 4 * P / N + 4 * P / N + 8 * P / N
    st = ev.phases["optimizer_step"]
    assert st["weights"] == st["gradients"] == st["optimizer_state"] == 0
    # LoRA under FSDP: the gradient buffer scales with the trained share of a layer
    lay, tp = layout("lora", lora_r=2, num_gpus=N, sharding="fsdp")
    p = memory.count_params(lay, tp)
    st = memory._sharded_states(lay, tp, p, memory._model_copies(lay, tp, p))
    share = lora_params(2) / P
    assert st.comm == pytest.approx(2 * (EMB + HEAD))
    assert st.comm_backward == pytest.approx(2 * 2 * layer + 2 * 2 * layer * share)


def test_evaluate_sharded_lm_head_gradient():
    # ZeRO-2/3 and FSDP reduce-scatter gradients: the lm_head gradient held in backward is 1/N of it.
    T, N = 1024, 2
    for sharding in ("zero2", "fsdp"):
        fb = phase("full", seq_len=T, num_gpus=N, sharding=sharding)
        assert fb["gradients"] == HEAD * 4 / N, sharding


# --- evaluate: preference and RL objectives -------------------------------------------------------


def test_evaluate_dpo_reference_models():
    n = lora_params(2)
    # PEFT DPO: trl adds a frozen copy of the adapter as the reference adapter, in bf16
    assert phase("dpo+lora", lora_r=2)["extra_models"] == 2 * n
    assert phase("dpo+lora", lora_r=2, dpo_precompute_ref=True)["extra_models"] == 0
    # full DPO: a whole frozen bf16 reference model
    assert phase("dpo", seq_len=64)["extra_models"] == 2 * P
    assert phase("dpo", seq_len=64, dpo_precompute_ref=True)["extra_models"] == 0
    # chosen + rejected: two sequences per example, so twice the tokens
    one = phase("lora", lora_r=2, seq_len=64, sft_chunked_loss=False)
    two = phase("dpo+lora", lora_r=2, seq_len=64)
    assert two["activations"] == 2 * one["activations"]


def test_evaluate_ppo_value_and_reward_models():
    n = lora_params(2)
    lay, tp = layout("ppo+lora", lora_r=2, seq_len=64, rl_max_new_tokens=16)
    ev = memory.evaluate(lay, tp)
    fb = ev.phases["forward_backward"]
    # value model: the policy's adapters + a trained score head of h (sequence classifier)
    assert ev.trainable_params == 2 * n + H
    # reward model: a frozen bf16 copy with a 1-output head instead of V x h;
    # value model: the stored policy (bf16 base + fp32 adapters) with the same head swap (fp32 head)
    reward = 2 * P - 2 * HEAD + 2 * H
    value = (2 * P + 4 * n) - 2 * HEAD + 4 * H
    assert fb["extra_models"] == reward + value
    assert fb["optimizer_state"] == pytest.approx(8 * n * (1 + (n + H) / n))
    # the value model runs its forward on the same tokens: activations saved twice
    assert fb["activations"] >= 2 * 64 * (L * 24 + 48)


def test_evaluate_generation_phase_kv_cache():
    # GRPO: micro_batch x accumulation completions generated at once; KV cache 2 L kv d c per token
    # (Pope et al. 2022, section 2) over the full sequence; per-step logits (c + 4 + 4) x V per sequence.
    g = phase("grpo+lora", "generation", lora_r=2, seq_len=64, micro_batch_size=2, gradient_accumulation_steps=3)
    B = 2 * 3
    assert g["generation_cache"] == 2 * L * KV * D * 2 * B * 64
    assert g["logits"] == B * V * (2 + 4 + 4)
    # PPO generates in chunks of at most 64 and scores full sequences without grad: (c + 4) per logit
    g = phase("ppo+lora", "generation", lora_r=2, seq_len=64, micro_batch_size=16, gradient_accumulation_steps=8)
    B = 64
    assert g["generation_cache"] == 2 * L * KV * D * 2 * B * 64
    assert g["logits"] == max(B * V * 10, B * 64 * V * (2 + 4))
    # no generation phase for SFT
    lay, tp = layout("lora", lora_r=2)
    assert "generation" not in memory.evaluate(lay, tp).phases


# --- speed: FLOPs (Kaplan et al. 2020, Table 1: 2 FLOPs per weight per token forward) -------------

from ftadvisor import speed  # noqa: E402

FWD_MM = 2 * LINEAR_WEIGHTS + 2 * V * H  # decoder linears + lm_head: 6624 + 2400 = 9024


def test_forward_and_attention_flops():
    arch = resolve_model(TINY).arch
    assert speed.forward_matmul_flops_per_token(arch) == FWD_MM == 9024
    # scores and values: 2 n_layer n_ctx d_attn for a causal kernel (d_attn = a d = 12), twice for eager
    assert speed.attention_flops_per_token(arch, 64) == 2 * L * 64 * A * D == 4608
    assert speed.attention_flops_per_token(arch, 64, causal_kernel=False) == 2 * 4608


def test_adapter_flops():
    lay, tp = layout("lora", lora_r=2)
    assert speed.adapter_flops_per_token(lay, tp) == 2 * lora_params(2)  # 2 r (in + out) per module
    lay, tp = layout("adapter", adapter_bottleneck=4)
    assert speed.adapter_flops_per_token(lay, tp) == L * 2 * (2 * H * 4 + 2 * 4 * H)  # down + up, 2 per layer
    lay, tp = layout("lamini", lora_r=2, lamini_num_experts=8, lamini_top_k=2, lamini_layers=2)
    # per memory layer: score E keys (2 h E), then top-k experts of rank r: 2 r (h + h) each
    assert speed.adapter_flops_per_token(lay, tp) == 2 * (2 * H * 8 + 2 * 2 * 2 * (H + H))
    lay, tp = layout("full")
    assert speed.adapter_flops_per_token(lay, tp) == 0


def test_training_flops_full_finetune_is_three_forwards():
    # Full FT: backward = 2 x forward (input and weight gradients; Kaplan et al. 2020, section 2.1),
    # checkpointing recomputes the decoder layers' forward (not the lm_head).
    lay, tp = layout("full", seq_len=64)
    f = speed.training_flops_per_token(lay, tp)
    attn = 4608
    assert f.forward == FWD_MM + attn
    assert f.attention_forward == attn
    assert f.backward == 2 * (FWD_MM + attn)
    assert f.recompute == (FWD_MM - 2 * V * H) + attn
    assert f.model == 3 * (FWD_MM + attn)
    assert f.executed == f.model + f.recompute
    assert speed.training_flops_per_token(lay, tp, seq_len=128).attention_forward == 2 * attn
    lay, tp = layout("full", seq_len=64, gradient_checkpointing=False)
    assert speed.training_flops_per_token(lay, tp).recompute == 0


def test_training_flops_lora_skips_frozen_weight_gradients():
    # Frozen base: the backward computes input gradients through every layer (1x the layer matmuls,
    # 2x the attention) and the lm_head's input gradient, but no weight gradient; the adapters cost
    # 2x their forward in backward.
    lay, tp = layout("lora", lora_r=2, seq_len=64)
    f = speed.training_flops_per_token(lay, tp)
    ad, attn, head = 2 * lora_params(2), 4608, 2 * V * H
    assert speed.trained_matmul_flops_per_token(lay) == 0
    assert f.forward == FWD_MM + attn + ad
    assert f.backward == head + (FWD_MM - head) + 2 * attn + 2 * ad
    assert f.recompute == (FWD_MM - head) + attn + ad


def test_trained_matmul_flops_and_backward_depth():
    lay, _ = layout("full")
    assert speed.trained_matmul_flops_per_token(lay) == FWD_MM
    lay, _ = layout("half_ft")  # 2 of 3 layers' linears train; embeddings and lm_head frozen
    assert speed.trained_matmul_flops_per_token(lay) == pytest.approx(2 * LINEAR_WEIGHTS * 2 / 3)
    assert speed.backward_depth_fraction(lay) == 1
    # Lamini experts sit in the top lamini_layers layers: backward stops there
    lay, tp = layout("lamini", lora_r=2, lamini_num_experts=8, lamini_top_k=2, lamini_layers=2, seq_len=64)
    assert speed.backward_depth_fraction(lay) == pytest.approx(2 / 3)
    f = speed.training_flops_per_token(lay, tp)
    ad, attn, head = speed.adapter_flops_per_token(lay, tp), 4608, 2 * V * H
    assert f.backward == pytest.approx(head + 2 / 3 * (FWD_MM - head) + 2 / 3 * 2 * attn + 2 * ad)
    assert f.recompute == pytest.approx(2 / 3 * ((FWD_MM - head) + attn + ad))


def test_moe_routed_experts_count_at_top_k_of_e():
    cfg = dict(model_type="mixtral", vocab_size=100, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
               num_attention_heads=3, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
               tie_word_embeddings=False, max_position_embeddings=4096)
    arch = resolve_model(cfg).arch
    experts = [s for s in arch.linears if s.group == "expert"]
    assert experts and speed._active_fraction(arch, "expert") == 2 / 4
    assert speed._active_fraction(arch, "attention") == 1
    dense = sum(2 * s.in_features * s.out_features * s.count for s in arch.linears if s.group != "expert")
    routed = sum(2 * s.in_features * s.out_features * s.count for s in experts)
    assert speed.forward_matmul_flops_per_token(arch) == dense + routed / 2 + 2 * V * H


# --- speed: rates, collectives, optimizer traffic ------------------------------------------------


def test_matmul_shape_factor():
    # M / (M + 490), normalised to 1 at 8192 rows; at 490 rows half of the asymptote
    norm = 8192 / (8192 + 490)
    assert speed.matmul_shape_factor(8192) == pytest.approx(1.0)
    assert speed.matmul_shape_factor(490) == pytest.approx(0.5 / norm)
    assert speed.matmul_shape_factor(0) == pytest.approx((1 / 491) / norm)  # clamped to one row


def test_peak_flops_by_precision():
    h100 = resolve_hardware("h100-sxm")  # datasheet: 989.4 dense bf16/fp16, 66.9 fp32 TFLOP/s
    assert speed.peak_flops(h100, "bf16-mixed")[0] == pytest.approx(989.4e12)
    assert speed.peak_flops(h100, "bf16-true")[0] == pytest.approx(989.4e12)
    assert speed.peak_flops(h100, "fp16-mixed")[0] == pytest.approx(989.4e12)
    assert speed.peak_flops(h100, "fp32")[0] == pytest.approx(66.9e12)  # TF32 is off by default in PyTorch
    t4 = resolve_hardware("t4")  # no bf16 units: 65 fp16 tensor, 8.1 fp32
    assert speed.peak_flops(t4, "bf16-mixed")[0] == pytest.approx(8.1e12)
    assert speed.peak_flops(t4, "fp16-mixed")[0] == pytest.approx(65e12)
    no_fp16 = t4.model_copy(update={"fp16_dense_tflops": None})
    assert speed.peak_flops(no_fp16, "fp16-mixed")[0] == pytest.approx(8.1e12)
    assert "bf16" in speed.peak_flops(h100, "bf16-mixed")[1] and "fp32" in speed.peak_flops(t4, "bf16-mixed")[1]


def test_ring_collectives():
    # ring all-reduce moves 2 (n-1)/n of the buffer per rank; reduce-scatter / all-gather (n-1)/n
    assert speed.ring_allreduce_seconds(8e9, 4, 100) == pytest.approx(2 * 3 / 4 * 8e9 / 100e9)
    assert speed.ring_gather_seconds(8e9, 4, 100) == pytest.approx(3 / 4 * 8e9 / 100e9)
    for f in (speed.ring_allreduce_seconds, speed.ring_gather_seconds):
        assert f(8e9, 1, 100) == 0 and f(0, 4, 100) == 0 and f(-1, 4, 100) == 0
        assert f(1e9, 2, 100) > 0  # two ranks do communicate


def test_optimizer_bytes_per_param():
    # fused AdamW, fp32: reads param, grad, two moments (16 B), writes param and moments (12 B)
    assert speed.optimizer_bytes_per_param("adamw", 4, 4) == 28
    assert speed.optimizer_bytes_per_param("adamw", 2, 2) == (3 * 2 + 2) + 3 * 2
    assert speed.optimizer_bytes_per_param("adamw", 4, 4, adamw_kernel="foreach") == 18 * 4 + 3 * 4
    # paged 32-bit: param + grad + 8 B of fp32 moments read, param + moments written
    assert speed.optimizer_bytes_per_param("paged_adamw_32bit", 4, 4) == (4 + 4 + 8) + (4 + 8)
    st = 2 * (1 + 4 / 256)
    for o in ("adamw_8bit", "paged_adamw_8bit"):
        assert speed.optimizer_bytes_per_param(o, 4, 4) == pytest.approx((4 + 4 + st) + (4 + st))
    assert speed.optimizer_bytes_per_param("sgd", 4, 2) == 4 + 2 + 4
    assert speed.optimizer_bytes_per_param("adafactor", 4, 4) == 40
    with pytest.raises(FtAdvisorError):
        speed.optimizer_bytes_per_param("lion", 4, 4)


# --- speed: the roofline op time and the host/GPU queue --------------------------------------------


def _machine(serial=False):
    return speed._Machine(peak=1e12, mm=1e12, attn=5e11, bw=1e11, dq_bw=5e10, serial=serial)


def test_op_time_roofline():
    m = _machine()
    f8192 = 1.0  # matmul_shape_factor(8192)
    # a matmul of 1e9 FLOPs at 8192 rows: 1 ms of compute; reading 1e8 B of weights takes 1 ms too
    op = speed.Op(units=1, flops_mm=1e9, weight_bytes=1e8, mm_tokens=8192)
    comp, mem, dq = speed._op_time(m, op)
    assert comp == pytest.approx(1e9 / (1e12 * f8192)) and mem == pytest.approx(0) and dq == 0
    # weights slower than compute: the excess is memory-bound time
    op = speed.Op(units=1, flops_mm=1e9, weight_bytes=3e8, mm_tokens=8192)
    assert speed._op_time(m, op)[1] == pytest.approx(3e-3 - 1e-3)
    # attention at its own rate, elementwise traffic at the bandwidth, dequantization at its own
    op = speed.Op(units=1, flops_attn=1e9, mem_bytes=2e8, dq_bytes=1e8)
    comp, mem, dq = speed._op_time(m, op)
    assert comp == pytest.approx(1e9 / 5e11)
    assert dq == pytest.approx(1e8 / 5e10)
    assert mem == pytest.approx(2e8 / 1e11 + 1e8 / 5e10)
    # fewer rows: the matmul runs at matmul_shape_factor(490) of the rate
    op = speed.Op(units=1, flops_mm=1e9, mm_tokens=490)
    assert speed._op_time(m, op)[0] == pytest.approx(1e-3 / speed.matmul_shape_factor(490))


def test_simulate_host_and_gpu_queue():
    m = _machine()
    gpu_op = speed.Op(units=1, mem_bytes=1e9)  # 10 ms on the GPU
    # host dispatch 1 ms per op, 5 repeats: the GPU is the bottleneck -> 1 ms + 5 x 10 ms
    comp, mem, dq, span = speed._simulate(m, [([gpu_op], 1e-3, 5)])
    assert (comp, dq) == (0, 0) and mem == pytest.approx(5 * 0.01)
    assert span == pytest.approx(1e-3 + 5 * 0.01)
    # host-bound: 20 ms of dispatch per op, 3 repeats -> the last op ends 10 ms after 60 ms of host time
    comp, mem, dq, span = speed._simulate(m, [([gpu_op], 20e-3, 3)])
    assert span == pytest.approx(3 * 0.02 + 0.01)
    # two passes add up; a pass of 0 repeats costs nothing
    span2 = speed._simulate(m, [([gpu_op], 1e-3, 5), ([gpu_op], 1e-3, 0)])[3]
    assert span2 == pytest.approx(1e-3 + 5 * 0.01)
    two = speed._simulate(m, [([gpu_op], 1e-3, 2), ([gpu_op], 1e-3, 2)])
    assert two[1] == pytest.approx(4 * 0.01) and two[3] == pytest.approx(1e-3 + 4 * 0.01)
    # serial (CPU): host and device time add up
    span = speed._simulate(_machine(serial=True), [([gpu_op], 1e-3, 5)])[3]
    assert span == pytest.approx(5 * (1e-3 + 0.01))


def test_parts_total_adds_every_part():
    p = speed._Parts(compute=1, memory=2, launch=4, comm=8, optimizer=16, generation=32, offload=64)
    assert p.total() == 127


# --- speed: exposed data-parallel communication ----------------------------------------------------
#
# H100-SXM profile: 450 GB/s NVLink within a node at LINK_FRACTION = 80% (nccl-tests bus bandwidth):
# 360 GB/s; across nodes the ring runs at min(360, 8 GPUs x 50 GB/s NIC x 92%) = 360 (ftadvisor/links.py).
# One trained copy, 1e9 trainable of 2e9 parameters, bf16-mixed (gradients reduced in fp32 by DDP, bf16 by
# DeepSpeed/FSDP). Changed pins (task W3): every collective call now also pays NCCL's ring latency
# (src/graph/tuning.cc, Ring/Simple): 8.4 us + 3.4 us per NVLink step (2(n-1) steps for an all-reduce,
# n-1 for a gather), 9.6 us per network step, x1.9 for a multi-node all-reduce; calls are DDP's 25 MB
# buckets, DeepSpeed's 5e8-element buckets, and one gather/reduce-scatter per layer under ZeRO-3/FSDP.
LAT_AR2 = (8.4 + 2 * 3.4) * 1e-6  # one all-reduce call over 2 GPUs
LAT_G2 = (8.4 + 1 * 3.4) * 1e-6  # one reduce-scatter / all-gather call over 2 GPUs


def _comm(sharding, compute=0.0, mb_times=1, G=1, nodes=1, copies=1, N=2):
    from types import SimpleNamespace

    lay, tp = layout("full", num_gpus=N, num_nodes=nodes, sharding=sharding, gradient_accumulation_steps=G)
    p = SimpleNamespace(trainable=1e9, total=2e9)
    parts = speed._Parts(compute=compute)
    return speed._communication_seconds(lay, tp, p, resolve_hardware("h100-sxm"), parts, mb_times, copies, [])


def test_communication_ddp_allreduce_overlaps_backward():
    bw = 450e9 * 0.8
    allreduce = 160 * LAT_AR2 + 2 * (2 - 1) / 2 * 4e9 / bw  # fp32 gradients of 1e9 parameters, 160 buckets
    last_bucket = LAT_AR2 + 2 * (2 - 1) / 2 * 25e6 / bw  # the last 25 MB bucket is always exposed
    assert _comm("ddp") == pytest.approx(allreduce + last_bucket)
    # backward (2/3 of one micro-batch's compute) hides the all-reduce
    assert _comm("ddp", compute=1.0) == pytest.approx(last_bucket)
    assert _comm("ddp", compute=3 * allreduce / 2 / 2) == pytest.approx(allreduce / 2 + last_bucket)
    # across two nodes: 8 NICs of 50 GB/s x 92% = 368 GB/s per node, so NVLink (360) still bounds the
    # ring; latency 28 NVLink steps + 2 network steps, x1.9 (was: the per-GPU NIC, 50 x 0.8 = 40 GB/s)
    lat16 = (8.4 + 28 * 3.4 + 2 * 9.6) * 1.9e-6
    assert _comm("ddp", N=16, nodes=2) == pytest.approx(
        160 * lat16 + 2 * 15 / 16 * 4e9 / bw + lat16 + 2 * 15 / 16 * 25e6 / bw)
    # two trained copies (PPO's policy and value model) double the gradient buffer (320 buckets)
    assert _comm("ddp", copies=2) == pytest.approx(320 * LAT_AR2 + 8e9 / bw + last_bucket)


def test_communication_zero_stages():
    bw = 450e9 * 0.8
    half = 2 * LAT_G2 + (2 - 1) / 2 * 2e9 / bw  # reduce-scatter or all-gather of 1e9 bf16 values, 2 buckets
    # ZeRO-1/2 without compute: the reduce-scatter and the all-gather after the step
    assert _comm("zero1") == pytest.approx(2 * half)
    assert _comm("zero2") == pytest.approx(2 * half)
    # ZeRO-2 reduce-scatters every micro-batch: G of them exposed; ZeRO-1 once per step
    assert _comm("zero2", G=4) == pytest.approx(4 * half + half)
    assert _comm("zero1", G=4) == pytest.approx(2 * half)
    # enough backward compute hides the reduce-scatter, not the all-gather
    assert _comm("zero2", compute=1.0, G=4) == pytest.approx(half)
    assert _comm("zero1", compute=1.0) == pytest.approx(half)


def test_communication_zero3_and_fsdp_gather_every_micro_batch():
    bw = 450e9 * 0.8
    ag = 3 * LAT_G2 + (2 - 1) / 2 * 2 * 2e9 / bw  # all-gather of all 2e9 bf16 weights (frozen too), 3 layers
    rs = 3 * LAT_G2 + (2 - 1) / 2 * 2 * 1e9 / bw  # reduce-scatter of the 1e9 trained gradients, 3 layers
    for s in ("zero3", "fsdp"):
        assert _comm(s) == pytest.approx(ag + ag + rs), s  # forward gather, backward gather + reduce
        assert _comm(s, mb_times=3) == pytest.approx(3 * (2 * ag + rs)), s
        # compute of one micro-batch: forward 1/3, backward 2/3; the forward hides its gather up to
        # c/3, the backward hides its gather + reduce-scatter up to 2c/3
        c = 3 * ag / 2  # forward hides ag/2 of ag; backward hides ag of ag + rs
        assert _comm(s, compute=c) == pytest.approx(ag / 2 + rs), s
        assert _comm(s, compute=3 * (ag + rs)) == pytest.approx(0), s
        assert _comm(s, compute=c * 2, mb_times=2) == pytest.approx(2 * (ag / 2 + rs)), s


# --- recommend: fitting and the searches -----------------------------------------------------------

import importlib  # noqa: E402

rec = importlib.import_module("ftadvisor.recommend")  # the package re-exports recommend() under this name


def test_fits_applies_the_headroom_to_the_device_memory():
    est = fa.estimate(TINY, "h100-sxm", "lora")
    cap = resolve_hardware("h100-sxm").memory_bytes
    used = est.memory.device_total_bytes
    assert est.fits and rec.fits_card(est, 0.0)
    exact = 1 - used / cap  # the headroom that leaves exactly the device total
    assert rec.fits_card(est, exact * 0.999)
    assert not rec.fits_card(est, exact * 1.001)
    big = fa.estimate("llama-3.1-70b", "h100-sxm", "full")
    assert not big.fits and not rec.fits_card(big, 0.0)
    # the default everywhere: 5% of the card kept free
    assert rec.MEMORY_HEADROOM == 0.05
    assert rec.fits_card(est) == (used <= cap * 0.95)


def _fits_mb(model, hw, tech, mb, headroom=rec.MEMORY_HEADROOM, **kw):
    return rec.fits_card(fa.estimate(model, hw, tech, micro_batch_size=mb, **kw), headroom)


def test_max_micro_batch_is_the_largest_fitting_one():
    # Brute-force oracle: the largest micro-batch that fits and the next one does not.
    for model, hw, tech, kw in [("llama-3.1-8b", "a100-80gb", "lora", dict(seq_len=4096)),
                                ("llama-3.1-8b", "rtx4090-24gb", "qlora", dict(seq_len=2048)),
                                ("llama-3.2-1b", "a10g", "full", dict(seq_len=1024, gradient_checkpointing=False))]:
        mb = rec.max_micro_batch(model, hw, tech, **kw)
        assert mb >= 1 and _fits_mb(model, hw, tech, mb, **kw), (model, hw, tech)
        assert not _fits_mb(model, hw, tech, mb + 1, **kw), (model, hw, tech)
        # more headroom lowers it, never raises it
        assert rec.max_micro_batch(model, hw, tech, headroom=0.2, **kw) <= mb
    # a limit caps it; nothing fitting gives 0
    assert rec.max_micro_batch(TINY, "h100-sxm", "lora", limit=5) == 5
    assert rec.max_micro_batch(TINY, "h100-sxm", "lora", limit=1) == 1
    assert rec.max_micro_batch("llama-3.1-70b", "rtx4090-24gb", "full") == 0


def test_max_seq_len_is_the_longest_fitting_one():
    seq = rec.max_seq_len("llama-3.1-8b", "rtx4090-24gb", "qlora")
    fits = lambda s: rec.fits_card(fa.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=s))  # noqa: E731
    assert 128 <= seq < 131072 and fits(seq) and not fits(seq + 1)
    # the model's context bounds it when everything fits: TINY's max_position_embeddings = 4096
    assert rec.max_seq_len(TINY, "h100-sxm", "lora") == 4096
    assert rec.max_seq_len(TINY, "h100-sxm", "lora", limit=1000) == 1000
    assert rec.max_seq_len("llama-3.1-70b", "rtx4090-24gb", "full") == 0


def _fits_70b(n, sharding, per_node=8):
    return rec.fits_card(fa.estimate("llama-3.1-70b", "h100-sxm", "full", num_gpus=n,
                                     num_nodes=1 if n <= per_node else n // per_node, sharding=sharding))


def test_min_gpus_is_the_fewest_that_fit():
    # Llama-3.1-70B full FT needs >= 16 B x 70.6e9 = 1.13 TB of model states: more than 14 H100s.
    n, sharding = rec.min_gpus("llama-3.1-70b", "h100-sxm", "full")
    assert n >= 16 and n % 8 == 0  # beyond one node, whole nodes
    assert _fits_70b(n, sharding)
    for s in rec._sharding_options(n - 8):  # one node fewer: nothing fits
        assert not _fits_70b(n - 8, s), s
    # the first sharding (in _sharding_options order) that fits at n is the one returned
    order = rec._sharding_options(n)
    for s in order[:order.index(sharding)]:
        assert not _fits_70b(n, s), s
    assert rec.min_gpus(TINY, "h100-sxm", "lora") == (1, "none")
    assert rec.min_gpus("llama-3.1-70b", "h100-sxm", "full", max_gpus=8) is None
    assert rec._sharding_options(1) == ["none"] and rec._sharding_options(2) == ["ddp", "zero2", "zero3", "fsdp"]
    assert rec.gpu_counts(40, 8) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40]


def test_min_gpus_respects_whole_nodes():
    # With 4 GPUs per node the search steps by 4 past one node, so it can land between the 8-per-node
    # answers; every answer splits evenly over its nodes.
    n8, s8 = rec.min_gpus("llama-3.1-70b", "h100-sxm", "full")
    n4, s4 = rec.min_gpus("llama-3.1-70b", "h100-sxm", "full", gpus_per_node=4)
    assert n4 % 4 == 0 and n8 % 8 == 0 and n8 - 8 < n4 <= n8
    assert _fits_70b(n4, s4, per_node=4) and not any(_fits_70b(n4 - 4, s, per_node=4) for s in rec._sharding_options(n4 - 4))


# --- quality: the arithmetic of the score (synthetic evidence, so every number is by hand) ------

from types import SimpleNamespace  # noqa: E402

from ftadvisor import quality  # noqa: E402


def _sf(point, low, high, strength=2, cites=("c",), params_b=(7.0,), raw_low=None, raw_high=None, about="f"):
    return quality._SetFactor(name=about, about=about, point=point, low=low, high=high, strength=strength,
                              single=False, params_b=tuple(params_b), cites=tuple(cites),
                              raw_low=low if raw_low is None else raw_low,
                              raw_high=high if raw_high is None else raw_high)


def _curve_ev():
    anchors = ((16, _sf(0.72, 0.70, 0.75, strength=2, cites=("a16",), params_b=(7.0,))),
               (64, _sf(0.84, 0.80, 0.90, strength=1, cites=("a64",), params_b=(13.0,))),
               (256, _sf(1.00, 0.96, 1.04, strength=2, cites=("a256",), params_b=(7.0,))))
    return SimpleNamespace(curves={"curve": quality._Curve(name="curve", about="rank curve", anchors=anchors)})


def test_prod_multiplies_the_points():
    t = lambda p: quality._Term("x", p, p, p, 2, [])  # noqa: E731
    assert quality._prod([t(0.5), t(0.8), t(1.25)]) == pytest.approx(0.5)
    assert quality._prod([]) == 1.0


def test_term_copies_a_factor():
    sf = _sf(0.9, 0.8, 1.1, strength=1, cites=("x", "y"), params_b=(1.0, 7.0), about="about")
    t = quality._term(sf)
    assert (t.label, t.point, t.low, t.high, t.strength, t.cites, t.params_b) == \
        ("about", 0.9, 0.8, 1.1, 1, ["x", "y"], (1.0, 7.0))
    assert quality._term(sf, "label").label == "label"


def test_curve_term_interpolates_in_log2_rank():
    ev = _curve_ev()
    acc = quality._Acc()
    # r = 32 is halfway between 16 and 64 in log2: (5 - 4) / (6 - 4) = 0.5
    t = quality._curve_term(ev, "curve", 32, acc)
    assert t.point == pytest.approx(0.78) and t.low == pytest.approx(0.75) and t.high == pytest.approx(0.825)
    assert t.strength == 1 and t.cites == ["a16", "a64"] and t.params_b == (7.0, 13.0)
    assert t.label == "rank curve" and not acc.weak and not acc.notes
    # r = 128 between 64 and 256: w = (7 - 6) / (8 - 6) = 0.5
    t = quality._curve_term(ev, "curve", 128, acc)
    assert t.point == pytest.approx(0.92) and t.low == pytest.approx(0.88) and t.high == pytest.approx(0.97)
    # r = 100: w = (log2 100 - 6) / 2
    w = (math.log2(100) - 6) / 2
    assert quality._curve_term(ev, "curve", 100, acc).point == pytest.approx(0.84 + w * 0.16)
    # at a measured rank: that figure, no note
    assert quality._curve_term(ev, "curve", 64, acc).point == pytest.approx(0.84)
    assert quality._curve_term(ev, "curve", 16, acc).point == 0.72 and not acc.weak
    assert quality._curve_term(ev, "curve", 256, acc).point == 1.00 and not acc.notes
    # flat outside, with a weak-evidence reason below and a note above
    t = quality._curve_term(ev, "curve", 8, acc)
    assert (t.point, t.low, t.high, t.strength) == (0.72, 0.70, 0.75, 2) and len(acc.weak) == 1
    assert "8" in acc.weak[0] and "16" in acc.weak[0]
    t = quality._curve_term(ev, "curve", 512, acc)
    assert t.point == 1.00 and len(acc.notes) == 1 and "256" in acc.notes[0]


def test_extend_widens_the_range_only():
    t = quality._Term("x", 0.9, 0.85, 0.95, 2, ["a"])
    quality._extend(t, _sf(0.5, 0.6, 0.7, cites=("a", "b"), raw_low=0.4, raw_high=1.2))
    assert (t.point, t.low, t.high) == (0.9, 0.4, 1.2) and t.cites == ["a", "b"]
    t = quality._Term("x", 0.9, 0.85, 0.95, 2, [])
    quality._extend(t, _sf(0.9, 0.88, 0.9))
    assert (t.low, t.high) == (0.85, 0.95)


def test_low_rank_lowers_the_low_end_below_the_measured_ranks():
    sets = {k: _sf(v, v, v, cites=(k,)) for k, v in
            [("lora.low_rank.r4", 0.5), ("lora.low_rank.r8", 0.8), ("dora.low_rank.r4", 0.9), ("dora.low_rank.r8", 1.02)]}
    ev = SimpleNamespace(sets=sets)

    def low(r, dora=False, chat=False):
        t = quality._Term("x", 1.0, 0.9, 1.1, 2, [])
        acc = quality._Acc()
        quality._low_rank(ev, t, r, dora, chat, acc)
        return t.low, t.cites, acc

    assert low(16)[0] == 0.9 and low(32)[0] == 0.9  # measured ranks: unchanged
    assert low(4)[0] == pytest.approx(0.9 * 0.5) and low(2)[0] == pytest.approx(0.45)
    assert low(8)[0] == pytest.approx(0.9 * 0.8) and low(15)[0] == pytest.approx(0.72) and low(5)[0] == pytest.approx(0.72)
    assert low(4, dora=True)[0] == pytest.approx(0.81)
    assert low(8, dora=True)[0] == pytest.approx(0.9)  # a factor above 1 never raises the low end
    assert low(4)[1] == ["lora.low_rank.r4"]
    # chat data: ranks from 8 up were compared (QLoRA Fig. 4), so only r < 8 is penalised, as weak
    assert low(8, chat=True)[0] == 0.9
    l4, _, acc = low(4, chat=True)
    assert l4 == pytest.approx(0.45) and len(acc.weak) == 1 and acc.notes
    assert not low(4)[2].weak and low(4)[2].notes


def test_orpo_term_by_model_size():
    ev = SimpleNamespace(sets={"obj.orpo_vs_dpo": _sf(1.05, 1.0, 1.1, cites=("big",)),
                               "obj.orpo_vs_dpo.small": _sf(0.8, 0.75, 0.85, cites=("small",))})
    acc = quality._Acc()
    t = quality._orpo_term(ev, 7e9, acc)
    assert (t.point, t.low, t.high) == (1.05, 1.0, 1.1) and not acc.weak and not acc.notes
    t = quality._orpo_term(ev, 5e8, acc)  # below 1B ORPO lost to DPO: the small-model figure, weak
    assert (t.point, t.low, t.high) == (0.8, 0.75, 0.85) and len(acc.weak) == 1 and len(acc.notes) == 1
    acc = quality._Acc()
    t = quality._orpo_term(ev, 1e9, acc)  # exactly 1B is not below 1B
    assert t.point == 1.05 and not acc.weak
    t = quality._orpo_term(ev, None, acc)  # size unknown: big figure, range covering the small one
    assert (t.point, t.low, t.high) == (1.05, 0.75, 1.1) and t.cites == ["big", "small"] and len(acc.notes) == 1


def test_regime_thresholds():
    ev = quality.evidence()
    assert quality.regime_for(ev.small_max_examples - 1) == "small"
    assert quality.regime_for(ev.small_max_examples) == "medium"
    assert quality.regime_for(ev.large_min_examples - 1) == "medium"
    assert quality.regime_for(ev.large_min_examples) == "large"


# --- recommend: what is searched -------------------------------------------------------------------


def test_methods_and_technique_names():
    dense, moe = resolve_model(TINY), resolve_model("mixtral-8x7b")
    sft = ["full", "lora", "qlora", "dora", "ia3", "adapter", "half_ft"]
    assert rec._methods_for("sft", "chat", dense, "chat") == sft
    assert rec._methods_for("sft", "facts", dense, "facts") == sft + ["lamini"]
    assert rec._methods_for("sft", "text", moe, "domain") == sft + ["moe"]
    assert rec._methods_for("sft", "facts", moe, "facts") == sft + ["lamini", "moe"]
    for obj in ("dpo", "orpo", "kto", "grpo", "ppo"):
        assert rec._methods_for(obj, "preference", moe, "preference") == ["full", "lora", "qlora"]
    # a method alone trains with SFT; an objective alone trains the whole model
    assert rec._technique_name("sft", "lora") == "lora"
    assert rec._technique_name("dpo", "full") == "dpo"
    assert rec._technique_name("dpo", "qlora") == "dpo+qlora"


def test_sequence_length_for_the_data():
    mp = resolve_model(TINY)  # max_position_embeddings 4096
    assert rec._seq_len_for(mp, 777, None) == 777  # given: used as is
    assert rec._seq_len_for(mp, None, None) == 2048  # nothing known: 2048
    # the average example rounded up to a power of two, at least 256, at most the context
    assert rec._seq_len_for(mp, None, 300.0) == 512
    assert rec._seq_len_for(mp, None, 512.0) == 512
    assert rec._seq_len_for(mp, None, 100.0) == 256
    assert rec._seq_len_for(mp, None, 3000.0) == 4096
    assert rec._seq_len_for(mp, None, 5000.0) == 4096
    short = resolve_model({**TINY, "max_position_embeddings": 1024})
    assert rec._seq_len_for(short, None, None) == 1024


def test_activation_coefficients_other_precisions_and_quantized_bases():
    c = 2
    sdpa = c * (A * D + 2 * KV * D) + c * A * D + 4 * A  # q, k, v, output, logsumexp: 76
    # fp16-mixed is autocast like bf16-mixed: same bytes (full FT: 244 + 304)
    assert memory.activation_coefficients(layout("full", precision="fp16-mixed")[0]).per_layer_dense == 548
    # QLoRA, bf16-mixed: prepare_model_for_kbit_training makes the stream fp32 (checkpoint 4h) and the
    # 4-bit linears return fp32, so the SwiGLU tensors are fp32 (3 x 4 x I); each LoRA module keeps its
    # own bf16 cast of the (fp32) input.
    k = memory.activation_coefficients(layout("qlora", lora_r=2)[0])
    attn = 4 * H + 3 * c * H + sdpa + c * A * D
    mlp = 4 * H + 2 * c * H + 3 * 4 * I + c * I
    assert k.per_layer_dense == attn + mlp == 220 + 376
    assert k.checkpoint_per_layer == 4 * H and k.per_layer_r == 7 * c
    # QLoRA in bf16-true: no upcast; LoRA reads the bf16 input itself, so the modules reading one
    # tensor share it (one c x width per source, not one per module); SwiGLU in bf16.
    k = memory.activation_coefficients(layout("qlora", lora_r=2, precision="bf16-true")[0])
    attn = 4 * H + c * H + sdpa + c * A * D
    mlp = 4 * H + c * H + 3 * c * I + c * I
    assert k.per_layer_dense == attn + mlp == 148 + 24 + 232
    assert k.checkpoint_per_layer == c * H
    # LoRA in fp32: c = 4, an fp32 stream, adapters share their (fp32) input
    k = memory.activation_coefficients(layout("lora", lora_r=2, precision="fp32")[0])
    c = 4
    attn = 4 * H + c * H + c * (A * D + 2 * KV * D) + c * A * D + 4 * A + c * A * D
    mlp = 4 * H + c * H + 3 * c * I + c * I
    assert k.per_layer_dense == attn + mlp == 284 + 416
    assert k.per_layer_r == 7 * c and k.checkpoint_per_layer == 4 * H and k.top == 4 * H
    assert k.backward_ws == c * (2 * H + 4 * I)


def test_activation_coefficients_half_finetune_trains_a_share_of_each_layer():
    # HFT: 2 of 3 layers train, so each linear's input is kept for 2/3 of the layers (averaged per
    # layer), the norms' outputs likewise; the frozen embedding leaves the stream in bf16 but the
    # trained norms make the norm outputs fp32 under autocast (one cast per consumer).
    k = memory.activation_coefficients(layout("half_ft")[0])
    c, f = 2, 2 / 3
    norm = 4 * H + 2 * H * f  # fp32 input + bf16 normalised output kept for the trained share
    attn = norm + 3 * f * c * H + c * (A * D + 2 * KV * D) + c * A * D + 4 * A + (f - f) * c * A * D
    mlp = norm + 2 * f * c * H + 3 * c * I + f * c * I
    assert k.per_layer_dense == pytest.approx(attn + mlp)
