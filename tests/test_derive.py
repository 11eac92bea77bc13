"""ftadvisor.derive: the generic architecture path (transformers' modelling code on the meta device).

Each case is a tiny config of one ``model_type`` (hidden 64, 2-4 layers) so that building it takes
milliseconds. The reference in every test is computed here, independently of ftadvisor: the meta
model's ``sum(p.numel() for p in model.parameters())`` (tied weights once), the 3-D expert tensors
summed straight from ``named_parameters``, and three counts written out by hand (MLA + MoE with a
shared expert, attention sinks + biased experts, a Mamba layer).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time

import pytest
import yaml

import ftadvisor as fa
from ftadvisor.architecture import SUPPORTED_MODEL_TYPES, arch_from_config
from ftadvisor.derive import cache_dir, derive_arch, shipped_path
from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _derived_cache_in_tmp(tmp_path, monkeypatch):
    """A fresh derived-description cache per test (nothing written to the user's Hub cache)."""
    monkeypatch.setenv("FTADVISOR_DERIVED_CACHE", str(tmp_path / "derived"))


# Sizes shared by the llama-style cases; families whose config names them differently say so.
T = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
         vocab_size=256)
NO_KV = {k: v for k, v in T.items() if k != "num_key_value_heads"}
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
MLA = dict(q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)

CASES: dict[str, dict] = {
    # MLA + routed/shared experts, first layer dense
    "deepseek_v3": dict(T, num_hidden_layers=3, num_key_value_heads=4, first_k_dense_replace=1, n_routed_experts=8,
                        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1,
                        **MLA),
    "deepseek_v2": dict(T, num_hidden_layers=3, num_key_value_heads=4, first_k_dense_replace=1, n_routed_experts=8,
                        n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1,
                        **MLA),
    "gpt_oss": dict(T, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32),
    "llama4_text": dict(T, num_hidden_layers=4, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                        intermediate_size=32, intermediate_size_mlp=96, interleave_moe_layer_step=2),
    "llama4": dict(text_config=dict(T, num_hidden_layers=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                                    intermediate_size=32, intermediate_size_mlp=96),
                   vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      image_size=28, patch_size=14, projector_input_dim=32, projector_output_dim=32,
                                      vision_output_dim=32)),
    "qwen3_next": dict(T, num_hidden_layers=4, head_dim=16, shared_expert_intermediate_size=32,
                       linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                       linear_value_head_dim=16, **MOE),
    "gemma3_text": dict(T, num_hidden_layers=6, head_dim=16),
    "jamba": dict(T, num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=8),
    "falcon_h1": dict(T, head_dim=16, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                      mamba_n_groups=1),
    "bamba": dict(T, num_hidden_layers=3, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=32, mamba_d_state=8,
                  mamba_n_groups=1),
    "olmoe": dict(T, num_experts=8, num_experts_per_tok=2, intermediate_size=32),
    "phimoe": dict(T, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32),
    "granitemoe": dict(T, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32),
    "minimax": dict(T, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
                    layer_types=["linear_attention", "full_attention"]),
    "starcoder2": dict(T),
    "bloom": dict(NO_KV, n_head=4, n_layer=2),
    "gpt_bigcode": dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, vocab_size=256, n_positions=128),
    "mpt": dict(d_model=64, n_layers=2, n_heads=4, expansion_ratio=2, vocab_size=256, max_seq_len=128),
    "cohere2": dict(T, num_hidden_layers=4),
    "exaone4": dict(T, num_hidden_layers=4, sliding_window=16, sliding_window_pattern=2),
    "ernie4_5": dict(T),
    "lfm2": dict(T, num_hidden_layers=4, layer_types=["conv", "full_attention", "conv", "full_attention"],
                 block_auto_adjust_ff_dim=False),
    "mamba": dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=16, expand=2),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128),
    "opt": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96, vocab_size=256,
                word_embed_proj_dim=64, max_position_embeddings=128),
    "glm4_moe": dict(T, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1,
                     num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16, n_group=1, topk_group=1),
    "ernie4_5_moe": dict(T, moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=1,
                         moe_layer_start_index=1),
    "minimax_m2": dict(T, head_dim=16, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32),
    "nemotron_h": dict(T, num_hidden_layers=4, hybrid_override_pattern="M*-E", head_dim=16, mamba_num_heads=4,
                       mamba_head_dim=16, ssm_state_size=8, n_groups=1, n_routed_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, n_group=1, topk_group=1),
    "granitemoehybrid": dict(T, num_hidden_layers=2, layer_types=["mamba", "attention"], num_local_experts=4,
                             num_experts_per_tok=2, shared_intermediate_size=48, mamba_n_heads=4, mamba_d_head=32,
                             mamba_d_state=8, mamba_n_groups=1),
    "qwen3_5_text": dict(T, num_hidden_layers=4, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                         linear_key_head_dim=16, linear_value_head_dim=16),
    "olmo3": dict(T, num_hidden_layers=4, sliding_window=16),
    "seed_oss": dict(T, head_dim=16),
    "nemotron": dict(T),
    "stablelm": dict(T),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=256, n_positions=128),
    "recurrent_gemma": dict(T, num_hidden_layers=3, lru_width=64, attention_window_size=16,
                            block_types=["recurrent", "recurrent", "attention"]),
}


def _reference_model(config: dict):
    """transformers' own model on the meta device, built here without ftadvisor (on a deep copy: config
    classes rewrite nested fields such as rope_scaling in place)."""
    config = copy.deepcopy(config)
    model_type = config.pop("model_type")
    hf = transformers.AutoConfig.for_model(model_type, **config).get_text_config()
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf)


def _expert_params(model) -> int:
    """Parameters of fused experts (modules whose class names them, e.g. ``GptOssExperts``): the 3-D
    tensors and the (experts, width) biases next to them."""
    n = 0
    for _, mod in model.named_modules():
        if "expert" not in type(mod).__name__.lower():
            continue
        own = dict(mod.named_parameters(recurse=False))
        if any(p.dim() == 3 for p in own.values()):
            n += sum(p.numel() for p in own.values() if p.dim() == 3)
            n += sum(p.numel() for name, p in own.items() if p.dim() == 2 and name.endswith("_bias"))
    return n


def test_at_least_30_families_beyond_the_analytic_ones():
    assert len(set(CASES) - set(SUPPORTED_MODEL_TYPES)) >= 30  # gemma3_text, analytic too, is forced through
    for required in ("deepseek_v3", "gpt_oss", "llama4_text", "qwen3_next", "gemma3_text", "jamba", "falcon_h1",
                     "bamba", "olmoe", "phimoe", "granitemoe", "minimax", "starcoder2", "bloom", "gpt_bigcode", "mpt",
                     "cohere2", "exaone4", "ernie4_5", "lfm2"):
        assert required in CASES


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_parameter_count_is_exact(model_type):
    config = dict(CASES[model_type], model_type=model_type)
    arch = derive_arch(config)  # forced, also for gemma3_text (an analytic family too)
    model = _reference_model(config)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert sum(lin.params_total for lin in arch.linears if lin.group == "expert") == _expert_params(model)
    assert arch.derived_by.startswith(f"architecture derived from transformers {transformers.__version__}")
    assert sum(n for _, n in arch.layer_kinds) == arch.num_layers
    emb = model.get_input_embeddings().weight
    assert arch.embedding_params == emb.numel() and arch.vocab_size == emb.shape[0]
    assert arch.tie_word_embeddings == (model.get_output_embeddings().weight is emb)


# --- counts written out by hand ---------------------------------------------------------------------


def test_deepseek_v3_mla_and_shared_expert_by_hand():
    # DeepSeek-V3 (arXiv 2412.19437, section 2.1.1 MLA; modeling_deepseek_v3.py): per layer
    #   q_a_proj h x q_lora, q_a_layernorm q_lora, q_b_proj q_lora x heads*(nope+rope),
    #   kv_a_proj_with_mqa h x (kv_lora + rope), kv_a_layernorm kv_lora, kv_b_proj kv_lora x heads*(nope+v),
    #   o_proj heads*v x h, two RMSNorms of h; layer 0 dense SwiGLU (3 h I), layers 1-2 MoE:
    #   8 routed experts of 3 h Im, the router's (8, h) weight, one shared expert of 3 h Im.
    h, heads, V, I, Im = 64, 4, 256, 96, 32
    attn = (h * 32 + 32 + 32 * heads * (8 + 8) + h * (16 + 8) + 16 + 16 * heads * (8 + 16) + heads * 16 * h)
    dense = 3 * h * I
    moe = 8 * 3 * h * Im + 8 * h + 3 * h * Im
    total = 3 * (attn + 2 * h) + dense + 2 * moe + h + 2 * V * h
    arch = derive_arch(dict(CASES["deepseek_v3"], model_type="deepseek_v3"))
    assert arch.total_params == total
    assert dict(arch.layer_kinds) == {"full_attention:mla": 3}
    assert (arch.num_experts, arch.experts_per_token, arch.num_moe_layers) == (8, 2, 2)
    assert (arch.moe_intermediate_size, arch.shared_expert_intermediate_size, arch.intermediate_size) == (32, 32, 96)
    groups = {(lin.name, lin.group) for lin in arch.linears}
    assert {("q_b_proj", "attention"), ("kv_b_proj", "attention"), ("gate", "router"),
            ("gate_proj", "shared_expert"), ("gate_proj", "expert"), ("gate_proj", "mlp")} <= groups
    # q_b_proj reads the q_a_layernorm output, not the layer input
    src = {lin.name: lin.input_source for lin in arch.linears if lin.group == "attention"}
    assert src["q_a_proj"] == src["kv_a_proj_with_mqa"] == "attn_in" and src["o_proj"] == "attn_out"
    assert src["q_b_proj"] not in ("attn_in", "attn_out")


def test_gpt_oss_sinks_and_biased_experts_by_hand():
    # gpt-oss (modeling_gpt_oss.py): q/k/v/o with biases, one attention-sink logit per head, router
    # Linear-like (E, h) weight + (E,) bias, experts gate_up (E, h, 2I) + (E, 2I) bias, down (E, I, h) + (E, h).
    h, heads, kv, d, V, E, I = 64, 4, 2, 16, 256, 4, 32
    attn = (h * heads * d + heads * d) + 2 * (h * kv * d + kv * d) + (heads * d * h + h) + heads
    moe = (E * h + E) + E * (h * 2 * I + 2 * I) + E * (I * h + h)
    total = 2 * (attn + moe + 2 * h) + h + 2 * V * h
    arch = derive_arch(dict(CASES["gpt_oss"], model_type="gpt_oss"))
    assert arch.total_params == total
    assert arch.other_params == 2 * heads  # the sinks
    assert dict(arch.layer_kinds) == {"sliding_attention": 1, "full_attention:gqa": 1}
    assert {lin.name: lin.bias for lin in arch.linears if lin.group == "expert"} == {
        "gate_proj": True, "up_proj": True, "down_proj": True}


def test_mamba_layer_by_hand():
    # Mamba (Gu & Dao 2023, section 3.4; modeling_mamba.py MambaMixer): inner = expand * h, dt_rank = ceil(h/16);
    # in_proj h x 2 inner, conv1d inner x 4 + bias, x_proj inner x (dt_rank + 2 state), dt_proj dt_rank x inner
    # + bias, A_log inner x state, D inner, out_proj inner x h; one RMSNorm per block; tied embeddings.
    h, V, n = 64, 256, 16
    inner, r = 2 * h, math.ceil(h / 16)
    layer = h * 2 * inner + inner * 4 + inner + inner * (r + 2 * n) + r * inner + inner + inner * n + inner \
        + inner * h + h
    arch = derive_arch(dict(CASES["mamba"], model_type="mamba"))
    assert arch.total_params == 2 * layer + h + V * h
    assert arch.tie_word_embeddings and arch.lm_head_params == 0
    assert dict(arch.layer_kinds) == {"ssm": 2}
    assert {lin.group for lin in arch.linears} == {"mixer"}


def test_gpt2_conv1d_projections_are_linears():
    # GPT-2 keeps its projections in transformers' Conv1D (pytorch_utils.py: weight stored (in, out)); peft
    # adapts them like nn.Linear, so they are linears here: c_attn h -> 3h, c_proj h -> h, c_fc h -> 4h, c_proj 4h -> h.
    arch = derive_arch(dict(CASES["gpt2"], model_type="gpt2"))
    got = sorted((lin.name, lin.group, lin.in_features, lin.out_features, lin.bias, lin.count) for lin in arch.linears)
    assert got == sorted([("c_attn", "attention", 64, 192, True, 2), ("c_proj", "attention", 64, 64, True, 2),
                   ("c_fc", "mlp", 64, 256, True, 2), ("c_proj", "mlp", 256, 64, True, 2)])
    assert arch.other_params == 128 * 64  # learned position embeddings (wpe), n_positions x h
    assert (arch.norm, arch.mlp_gated, arch.intermediate_size) == ("layernorm", False, 256)


# --- layer kinds the configs spell out --------------------------------------------------------------


@pytest.mark.parametrize(("model_type", "kinds"), [
    ("qwen3_next", {"linear_attention": 3, "full_attention:gqa": 1}),  # full_attention_interval = 4
    ("gemma3_text", {"sliding_attention": 5, "full_attention:gqa": 1}),  # 5 local : 1 global
    ("jamba", {"ssm": 2, "full_attention:gqa": 2}),  # attn_layer_period 2, offset 1
    ("falcon_h1", {"full_attention:gqa+ssm": 2}),  # attention and Mamba-2 side by side in every layer
    ("lfm2", {"conv": 2, "full_attention:gqa": 2}),
    ("nemotron_h", {"ssm": 1, "full_attention:gqa": 1, "mlp_only": 2}),  # pattern M * - E
    ("gpt_bigcode", {"full_attention:mqa": 2}),
    ("bloom", {"full_attention:mha": 2}),
])
def test_layer_kinds(model_type, kinds):
    assert dict(derive_arch(dict(CASES[model_type], model_type=model_type)).layer_kinds) == kinds


# --- the generic path agrees with the analytic families --------------------------------------------


@pytest.mark.parametrize("config", [
    dict(T, model_type="llama"),
    dict(T, model_type="qwen3", head_dim=16),
    dict(T, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    dict(T, model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
         shared_expert_intermediate_size=48),
], ids=lambda c: c["model_type"])
def test_generic_equals_analytic(config):
    analytic, generic = arch_from_config(config), derive_arch(config)
    assert generic.total_params == analytic.total_params
    for field in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "norms_per_layer", "norm", "tie_word_embeddings", "embedding_params",
                  "lm_head_params", "norm_params", "num_experts", "experts_per_token", "num_moe_layers",
                  "moe_intermediate_size", "shared_expert_intermediate_size", "active_params"):
        assert getattr(generic, field) == getattr(analytic, field), field
    def by(a):
        return sorted((lin.group, lin.in_features, lin.out_features, lin.bias, lin.count, lin.input_source)
                      for lin in a.linears)

    assert by(generic) == by(analytic)
    # and the cost model cannot tell them apart (activations included)
    a = fa.estimate(fa.ModelProfile(id="a", name="a", source="t", config=config, arch=analytic), "h100", "lora")
    g = fa.estimate(fa.ModelProfile(id="a", name="a", source="t", config=config, arch=generic), "h100", "lora")
    assert g.memory.activations_bytes == a.memory.activations_bytes
    assert g.memory.device_total_bytes == a.memory.device_total_bytes


# --- end to end, cache -------------------------------------------------------------------------------


def test_estimate_of_an_unknown_family_says_how_it_was_described():
    config = dict(CASES["olmoe"], model_type="olmoe")
    est = fa.estimate(config, hardware="h100", technique="lora")
    assert est.total_params == sum(p.numel() for p in _reference_model(config).parameters())
    assert est.architecture_source == f"architecture derived from transformers {transformers.__version__} " \
                                      "modelling code (meta device)"
    assert fa.estimate("llama-3.1-8b", "h100", "lora").architecture_source == "analytic family"


def test_cli_prints_the_derivation(tmp_path):
    from typer.testing import CliRunner

    from ftadvisor.cli import app

    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(CASES["phimoe"], model_type="phimoe")))
    out = CliRunner().invoke(app, ["estimate", "-m", str(path), "-g", "h100", "-t", "lora"])
    assert out.exit_code == 0, out.output
    assert "derived from transformers" in " ".join(out.output.split())


def test_cached_description_loads_without_torch(tmp_path):
    config = dict(CASES["starcoder2"], model_type="starcoder2")
    first = derive_arch(config)
    files = list(cache_dir().glob("*.json"))
    assert len(files) == 1
    code = ("import json, sys; from ftadvisor.architecture import arch_from_config; "
            f"a = arch_from_config(json.loads({json.dumps(json.dumps(config))})); "
            "print(a.total_params, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, FTADVISOR_DERIVED_CACHE=str(cache_dir())))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(first.total_params), "False", "False"]


def test_cache_sits_next_to_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FTADVISOR_DERIVED_CACHE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert cache_dir() == tmp_path / "hf" / "ftadvisor-derived"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "ftadvisor-derived"


# --- bad input: one line naming the field, never a hang --------------------------------------------


@pytest.mark.parametrize(("config", "field"), [
    (dict(T, model_type="olmoe", num_hidden_layers=10**10), "num_hidden_layers"),
    (dict(T, model_type="olmoe", num_hidden_layers=5_000), "num_hidden_layers"),  # within ARCH_LIMITS, too deep
    (dict(model_type="llama4", text_config=dict(T, num_hidden_layers=10**10)), "text_config.num_hidden_layers"),
    (dict(n_embd=64, n_layer=10**12, n_head=4, model_type="gpt2"), "n_layer"),
    (dict(T, model_type="olmoe", layer_types=["full_attention"] * 100_000), "layer_types"),
    (dict(T, model_type="olmoe", num_experts=10**9), "num_experts"),
])
def test_absurd_sizes_are_refused_before_building(config, field):
    start = time.perf_counter()
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(config)
    assert time.perf_counter() - start < 2.0
    assert exc.value.field == field and str(exc.value).startswith(f"{field}: ")


def test_remote_code_is_refused_and_never_run():
    config = dict(T, model_type="my_secret_arch", auto_map={"AutoModelForCausalLM": "modeling_x.MyModel"})
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(config)
    assert exc.value.field == "auto_map" and "trust_remote_code" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_auto_map_of_a_family_transformers_has_uses_its_own_code():
    # DeepSeek-V3's config.json carries an auto_map; transformers 5 has the family, so its own code builds it.
    config = dict(CASES["deepseek_v3"], model_type="deepseek_v3",
                  auto_map={"AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"})
    plain = derive_arch(dict(CASES["deepseek_v3"], model_type="deepseek_v3"))
    assert arch_from_config(config).total_params == plain.total_params


@pytest.mark.parametrize(("config", "field", "words"), [
    (dict(T, model_type="not_a_model"), "model_type", "unknown to transformers"),
    (dict(T, model_type="bert"), "model_type", "encoder"),
    (dict(T, model_type="t5"), "model_type", "encoder"),
    (dict(T, model_type="smollm3"), "pad_token_id", "cannot build"),  # default pad_token_id beyond a 256 vocabulary
    (dict(model_type="xlstm", hidden_size=64, num_hidden_layers=2, vocab_size=256, num_heads=4), "model_type",
     "mlstm_layer"),  # a block the generic path cannot classify is named
    (dict(T, model_type="deepseek_v2", n_routed_experts=8, num_experts_per_tok=None), "num_experts_per_tok", "top-k"),
    (dict(T, model_type="olmoe", hidden_size="big"), "hidden_size", "cannot build"),
])
def test_what_cannot_be_built_names_the_field(config, field, words):
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(config)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value) and "\n" not in str(exc.value)


# --- descriptions shipped with the profiles ------------------------------------------------------------

PROFILE_DIRS = [ROOT / "profiles" / "models"]
GENERIC_PROFILES = sorted(
    p for d in PROFILE_DIRS for p in d.glob("*.yaml")
    if yaml.safe_load(p.read_text())["config"]["model_type"] not in SUPPORTED_MODEL_TYPES)


def test_generic_family_profiles_are_shipped():
    # issue 10 part 3: the profiles of families only this path can size (their published sizes are checked in
    # tests/test_architecture.py, test_issue10_generic_family_published_sizes)
    assert {p.stem for p in GENERIC_PROFILES} == {"deepseek-v3", "gpt-oss-20b", "gpt-oss-120b", "llama-4-scout",
                                                 "smollm3-3b"}


@pytest.mark.parametrize("path", GENERIC_PROFILES, ids=lambda p: p.stem)
def test_every_generic_profile_ships_its_description(path):
    """A profile of a non-analytic family loads from profiles/derived (no torch at ``model_profiles()``);
    the shipped file must equal what transformers derives now (regenerate it with
    ``python -m ftadvisor.derive <profile.yaml>`` after changing the config)."""
    config = yaml.safe_load(path.read_text())["config"]
    shipped = shipped_path(config)
    assert shipped.is_file(), f"run: python -m ftadvisor.derive {path.relative_to(ROOT)}"
    fresh = derive_arch(config, use_cache=False)
    assert shipped_path(config) == shipped  # deriving leaves the caller's config as it was
    assert fresh.total_params == sum(p.numel() for p in _reference_model(config).parameters())
    assert derive_arch(config).model_dump() == fresh.model_dump()  # served from the shipped file


def test_shipped_description_loads_without_torch():
    config = yaml.safe_load((ROOT / "profiles" / "models" / "deepseek-v3.yaml").read_text())["config"]
    path = str(ROOT / "profiles" / "models" / "deepseek-v3.yaml")
    code = ("import sys, yaml; from ftadvisor.architecture import arch_from_config; "
            f"a = arch_from_config(yaml.safe_load(open({path!r}))['config']); "
            "print(a.total_params, a.num_experts, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["671026404352", "256", "False", "False"]
    assert config["model_type"] == "deepseek_v3"


@pytest.mark.parametrize("argv", [["estimate", "-m", "deepseek-v3", "-g", "h100", "-n", "8", "-t", "lora"],
                                  ["profiles", "list"]], ids=["estimate", "profiles-list"])
def test_cli_with_generic_profiles_loads_no_torch(argv):
    """All profiles load (the generic ones from profiles/derived) and the CLI answers without torch/transformers."""
    heavy = ("torch", "transformers", "peft", "trl", "textual", "pandas")
    code = ("import sys; from ftadvisor.cli import main\n"
            f"sys.argv = ['ftadvisor', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"print('HEAVY', [m for m in {heavy!r} if m in sys.modules])")
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().splitlines()[-1] == "HEAVY []"
    assert "deepseek" in out.stdout.lower() and ("gpt-oss-120b" in out.stdout or argv[0] == "estimate")


# --- activations of a hybrid stack, by hand -----------------------------------------------------------


def test_short_conv_layers_keep_their_own_activations():
    """LFM2 (2 short-convolution + 2 attention layers, h = 64, 4 query / 2 kv heads of 16), full fine-tuning
    in bf16-true without checkpointing, bytes kept per token and layer (c = 2; memory._token_mixers and
    the attention rules of memory._Saved, Korthikanti et al. 2022 section 4.1):
      attention layer: RMSNorm fp32 input 4h + its normed copy 2h (the weight trains), q/k/v input c*h,
        SDPA's q, k, v c*(64 + 2*32), output c*64 and fp32 logsumexp 4*4 (o_proj reuses the output) = 912;
      conv layer: the same norm 6h, in_proj input c*h, out_proj input c*h, and one copy of each
        projection output c*(3h + h) = 1152.
    Without the layer kinds every layer would be costed as attention: 4 x 912."""
    config = dict(CASES["lfm2"], model_type="lfm2")
    arch = derive_arch(config)
    assert dict(arch.layer_kinds) == {"conv": 2, "full_attention:gqa": 2}
    h, c = 64, 2
    attn = 6 * h + c * h + c * (64 + 2 * 32) + c * 64 + 4 * 4
    conv = 6 * h + c * h + c * h + c * (3 * h + h)
    assert (attn, conv) == (912, 1152)
    plan = dict(precision="bf16-true", gradient_checkpointing=False, attention="sdpa", seq_len=256, micro_batch_size=2)

    def act(a):
        return fa.estimate(fa.ModelProfile(id="x", name="x", source="t", config=config, arch=a), "h100", "full",
                           **plan).memory.activations_bytes

    tokens = 2 * 256
    assert act(arch) - act(arch.model_copy(update={"layer_kinds": ()})) == tokens * (2 * conv + 2 * attn - 4 * attn)
