"""The ``framework`` plan field and the framework parts (ftadvisor/frameworks/), and LoRA on the
lm_head and the input embedding.

Numbers are worked out by hand from the declarations' sources for Llama-3.1-8B (h = 4096,
V = 128256, L = 32, 32 query / 8 K/V heads of 128, I = 14336; 8,030,261,248 parameters) with
seq_len 2048 and micro-batch 1, so T = 2048 tokens.
"""

from __future__ import annotations

import re

import pytest

import ftadvisor
from ftadvisor import memory
from ftadvisor.errors import FtAdvisorError
from ftadvisor.frameworks import DECLARATIONS, DEFAULT_FRAMEWORK, FRAMEWORKS, canonical_framework
from ftadvisor.frameworks.base import GIB, fused_chunks
from ftadvisor.plans import make_plan
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.techniques import parse_technique

H, V, L, T = 4096, 128256, 32, 2048
P_TOTAL = 8_030_261_248


def _layout(technique="lora", **fields):
    plan = make_plan(technique, seq_len=T, micro_batch_size=1, **fields)
    lay = memory.build_layout(resolve_model("llama-3.1-8b").arch, parse_technique(plan.technique),
                              resolve_hardware("rtx4090-24gb"), plan)
    return lay, plan


# --- the registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_every_framework_declares_every_behaviour_with_a_source(name):
    fw = FRAMEWORKS[name]
    assert fw.name == name and fw.version and fw.repository and fw.summary
    for decl in DECLARATIONS:
        record = getattr(fw, decl)
        # a source names a file of the framework (path with an extension) and, mostly, a function
        assert re.search(r"[\w/]+\.(py|yaml)", record.source), (name, decl, record.source)


def test_default_is_what_launch_runs_and_names_are_checked():
    assert DEFAULT_FRAMEWORK == "hf-trl" == list(FRAMEWORKS)[0] == make_plan("lora").framework
    assert canonical_framework("TRL") == "hf-trl" and canonical_framework("LlamaFactory") == "llama-factory"
    with pytest.raises(FtAdvisorError) as err:
        make_plan("lora", framework="deepspeed-chat")
    assert err.value.field == "framework" and err.value.choices == list(FRAMEWORKS)
    assert "\n" not in str(err.value)


def test_hf_trl_is_todays_model_exactly():
    plain = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=T)
    named = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=T, framework="hf-trl")
    assert plain.memory == named.memory and plain.warnings == named.warnings
    assert not any("derived" in w for w in plain.warnings)


@pytest.mark.parametrize("name", [n for n in FRAMEWORKS if n != "hf-trl"])
def test_other_frameworks_are_marked_derived(name):
    est = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "lora", seq_len=T, framework=name)
    assert est.plan.framework == name
    assert any("derived from its source" in w for w in est.warnings)


# --- loss -----------------------------------------------------------------------------------------


def test_transformers_trainer_loss_is_full_fp32_logits():
    """axolotl / LLaMA-Factory: transformers ForCausalLMLoss on the whole micro-batch; the peak is the
    log-softmax backward, 3 fp32 tensors per logit: 12 x 2048 x 128256 = 3,152,019,456 bytes."""
    for name in ("axolotl", "llama-factory"):
        lay, _ = _layout(framework=name)
        assert memory.framework_logits_bytes(lay, T, T) == 12 * T * V == 3_152_019_456


def test_torchtune_chunked_output_loss():
    """CEWithChunkedOutputLoss, 8 chunks, bf16 throughout: at the end of forward the bf16 chunks (2 B),
    every chunk's fp32 log-softmax (4 B) and the fp32 upcast of the last chunk (4 B x 1/8) are alive:
    6.5 B per logit = 1,707,343,872 bytes; backward holds 4 + 2 x 4/8 = 5 B per logit, less. Against
    the full fp32 logits (12 B) the term is 6.5/12 of it; at 4096 tokens 26624 x V = 3,414,687,744."""
    lay, _ = _layout(framework="torchtune")
    assert lay.precision == "bf16-true"
    assert memory.framework_logits_bytes(lay, T, T) == 6.5 * T * V == 1_707_343_872
    assert memory.framework_logits_bytes(lay, 4096, 4096) == 3_414_687_744


def test_litgpt_chunked_lm_head_keeps_logits_through_backward():
    """lm_head in 128-token chunks; Fabric casts the chunks to fp32 (convert_output), the cross-entropy
    keeps an fp32 log-softmax and fit() still holds the fp32 logits in backward: 8 B per logit + one
    chunk's two fp32 gradients (128 x V x 8) = 2,101,346,304 + 131,334,144 = 2,232,680,448 bytes; at
    4096 tokens 32768 x V + 1024 x V = 4,334,026,752. Two sequences of 2048: a chunk holds 128 positions
    of both (256 tokens): 32768 x V + 2048 x V = 4,465,360,896. Full fine-tuning runs the lm_head whole:
    the backward concatenation of the chunk gradients makes it 12 B per logit = 3,152,019,456 at 2048."""
    lay, _ = _layout(framework="litgpt")
    assert memory.framework_logits_bytes(lay, T, T) == T * V * 8 + 128 * V * 8 == 2_232_680_448
    assert memory.framework_logits_bytes(lay, 4096, 4096) == 4_334_026_752
    assert memory.framework_logits_bytes(lay, 4096, 4096, 2048) == 4_465_360_896
    full, _ = _layout("full", framework="litgpt")
    assert memory.framework_logits_bytes(full, T, T, T) == 12 * T * V == 3_152_019_456


def test_unsloth_fused_loss_chunks():
    """get_chunk_size: fp32 logits of T x V over a 4 GiB target, rounded up to a multiple of 4 chunks."""
    assert fused_chunks(2048, V, 4 * GIB) == 1  # 1.05 GB of fp32 logits fit one chunk
    assert fused_chunks(16384, V, 4 * GIB) == 4  # 8.4 GB: 1.96 targets -> 4 chunks
    assert fused_chunks(65536, V, 4 * GIB) == 8  # 33.6 GB: 7.8 targets -> 8 chunks
    lay, _ = _layout(framework="unsloth")
    # one chunk: bf16 logits + fp32 copy + fp32 gradient (10 B per logit) + grad_inputs (T x h x 2)
    assert memory.framework_logits_bytes(lay, T, T) == T * V * 10 + T * H * 2 == 2_643_460_096


# --- checkpointing, optimizer, load, attention, dtypes ------------------------------------------------


def test_unsloth_offloads_checkpoints_to_host():
    """'unsloth' checkpointing keeps each layer's bf16 input (T x h x 2 = 16 MiB) on the host: 32 of
    them = 536,870,912 host bytes; the device keeps one (the layer being recomputed)."""
    hf, plan = _layout()
    un, _ = _layout(framework="unsloth")
    saved_hf = memory._activations(hf, plan, T, T, 1)[0]
    saved_un = memory._activations(un, plan, T, T, 1)[0]
    assert saved_hf - saved_un == (L - 1) * T * H * 2 == 520_093_696
    est = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "lora", seq_len=T, framework="unsloth")
    assert est.memory.host_bytes == L * T * H * 2 == 536_870_912


def test_litgpt_checkpoints_only_with_several_gpus():
    one, _ = _layout(framework="litgpt")
    two, _ = _layout(framework="litgpt", num_gpus=2)
    assert not one.checkpointing and two.checkpointing
    est = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "lora", seq_len=T, framework="litgpt")
    assert any("only with several GPUs" in w for w in est.warnings)


def test_torchtune_optimizer_in_backward_keeps_one_gradient():
    """Full fine-tuning on one GPU in bf16: optimizer_in_bwd leaves the largest tensor's gradient, the
    embedding's V x h x 2 = 1,050,673,152 bytes, instead of all 8,030,261,248 x 2."""
    lay, plan = _layout("full", framework="torchtune")
    ev = memory.evaluate(lay, plan)
    assert ev.phases["optimizer_step"]["gradients"] == V * H * 2 == 1_050_673_152
    lay2, plan2 = _layout("full", framework="torchtune", gradient_accumulation_steps=2)  # hooks need G == 1
    assert memory.evaluate(lay2, plan2).phases["optimizer_step"]["gradients"] == 2 * P_TOTAL


def test_quantized_load_phase():
    """Per-tensor quantization on load holds one compute-dtype weight, the largest quantized linear
    (gate/up 4096 x 14336 x 2 B = 117,440,512 bytes); a pre-quantized checkpoint holds none."""
    hf, plan = _layout("qlora")
    un, _ = _layout("qlora", framework="unsloth")
    assert memory.evaluate(hf, plan).phases["load"]["quantization_workspace"] == 4096 * 14336 * 2 == 117_440_512
    assert memory.evaluate(un, plan).phases["load"]["quantization_workspace"] == 0


def test_torchtune_expands_kv_to_all_heads():
    """SDPA then saves K and V for 32 heads instead of 8: 2 x (32 - 8) x 128 x 2 B = 12,288 bytes per
    token per layer more (both in bf16-true, so nothing else differs)."""
    hf, _ = _layout(precision="bf16-true")
    tt, _ = _layout(framework="torchtune")
    diff = memory.activation_coefficients(tt).per_layer_dense - memory.activation_coefficients(hf).per_layer_dense
    assert diff == 12_288


def test_frozen_dtypes_next_to_a_quantized_base():
    """peft's prepare_model_for_kbit_training (hf-trl) upcasts embeddings, lm_head and the 65 norms to
    fp32; LLaMA-Factory keeps them in bf16: (2 x 525,336,576 + 65 x 4096) x 4 = 4,203,757,568 fp32
    bytes fewer (and the same elements again in bf16 x 2)."""
    hf = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=T).memory.weights_by_dtype_bytes
    lf = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=T,
                            framework="llama-factory").memory.weights_by_dtype_bytes
    n = 2 * V * H + 65 * H
    assert hf["fp32"] - lf["fp32"] == n * 4 == 4_203_757_568
    assert lf["bf16"] - hf.get("bf16", 0) == n * 2


def test_allocator_declarations():
    assert FRAMEWORKS["unsloth"].allocator.expandable(make_plan("lora"))
    assert not FRAMEWORKS["llama-factory"].allocator.expandable(make_plan("lora"))
    assert FRAMEWORKS["llama-factory"].allocator.expandable(make_plan("lora", num_gpus=2))


# --- flows: grid, recommend, CLI ------------------------------------------------------------------------


def test_framework_flows_through_grid_and_recommend():
    g = ftadvisor.estimate_grid("llama-3.1-8b", "rtx4090-24gb", technique="lora", seq_len=T,
                                framework=["hf-trl", "litgpt"])
    peaks = dict(zip(g.columns["framework"], g.columns["peak_allocated_bytes"]))
    assert peaks["litgpt"] > peaks["hf-trl"]  # no checkpointing on one GPU
    from ftadvisor.recommend import recommend

    rec = recommend("llama-3.1-8b", "rtx4090-24gb", top=2, framework="unsloth")
    assert rec.plans and all(p.plan.framework == "unsloth" for p in rec.plans)


def test_cli_framework_option_and_header():
    from typer.testing import CliRunner

    from ftadvisor.cli import app

    out = CliRunner().invoke(app, ["estimate", "-t", "lora", "--framework", "torchtune"])
    assert out.exit_code == 0 and "framework torchtune" in out.output
    bad = CliRunner().invoke(app, ["estimate", "-t", "lora", "--set", "framework=nope"])
    assert bad.exit_code != 0 and "framework" in bad.output and "Traceback" not in bad.output


# --- LoRA on lm_head and embed_tokens ---------------------------------------------------------------------

ALL_LINEAR_R16 = 41_943_040  # 32 x 16 x (8192 + 5120 + 5120 + 8192 + 3 x 18432)
HEAD_R16 = 16 * (H + V)  # lm_head A (16 x 4096) + B (128256 x 16) = 2,117,632
EMBED_R16 = 16 * (V + H)  # lora_embedding_A (16 x 128256) + lora_embedding_B (4096 x 16)


def test_lora_on_lm_head_and_embed_tokens_parameters():
    def trainable(targets):
        return ftadvisor.estimate("llama-3.1-8b", "h100", "lora", lora_r=16, lora_targets=targets,
                                  sft_chunked_loss=False).trainable_params

    assert HEAD_R16 == EMBED_R16 == 2_117_632
    assert trainable("lm_head") == 2_117_632
    assert trainable(["all-linear", "lm_head"]) == ALL_LINEAR_R16 + HEAD_R16 == 44_060_672
    assert trainable(["all-linear", "lm_head", "embed_tokens"]) == 46_178_304


def test_lora_on_lm_head_activations_and_trl_chunked_loss():
    """The lm_head adapter keeps its bf16 input (T x 4096 x 2) and the rank-16 intermediate (T x 16 x 2):
    2048 x 8224 = 16,842,752 bytes; the embedding adapter keeps its rank-16 lookup, 65,536 bytes."""
    base, plan = _layout(sft_chunked_loss=False)
    head, plan_h = _layout(sft_chunked_loss=False, lora_targets=("all-linear", "lm_head"))
    emb, plan_e = _layout(sft_chunked_loss=False, lora_targets=("all-linear", "embed_tokens"))
    saved = memory._activations(base, plan, T, T, 1)[0]
    assert memory._activations(head, plan_h, T, T, 1)[0] - saved == T * (2 * H + 2 * 16) == 16_842_752
    assert memory._activations(emb, plan_e, T, T, 1)[0] - saved == T * 2 * 16 == 65_536
    # trl's chunked_nll reads the lm_head weight and refuses a PEFT-wrapped lm_head
    with pytest.raises(FtAdvisorError) as err:
        _layout(lora_targets=("all-linear", "lm_head"))
    assert err.value.field == "sft_chunked_loss"
