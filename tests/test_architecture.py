"""ftadvisor.architecture: exact parameter counts, linear inventories, profiles and errors.

The transformers-dependent tests build each model with
``AutoModelForCausalLM.from_config`` on the meta device (no memory, no
weights) and compare ``sum(p.numel() for p in model.parameters())`` with
``ArchSpec.total_params``; they skip when torch/transformers are missing.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ftadvisor.architecture import SUPPORTED_MODEL_TYPES, arch_from_config
from ftadvisor.derive import shipped_path
from ftadvisor.errors import FtAdvisorError
from ftadvisor.schema import ArchSpec, ModelProfile

ROOT = Path(__file__).resolve().parents[1]
PROFILE_PATHS = sorted((ROOT / "profiles" / "models").glob("*.yaml"))
PROFILE_IDS = [p.stem for p in PROFILE_PATHS]

EXPECTED_PROFILES = {
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b",
    "llama-3.2-3b", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b",
    "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b", "qwen3-30b-a3b", "gemma-2-2b", "gemma-2-9b",
    "gemma-2-27b", "phi-3-mini", "phi-4", "tinyllama-1.1b", "falcon-7b", "phi-2", "olmo-2-7b",
    "qwen3-8b",
    # issue 10 part 3 (sizes checked in test_issue10_* below)
    "llama-3.3-70b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-14b", "qwen3-32b", "qwen3-235b-a22b",
    "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b", "mistral-small-24b", "mistral-nemo-12b",
    "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-32b", "phi-4-mini",
    "deepseek-r1-distill-qwen-14b",
    # families sized by the generic path (ftadvisor.derive; descriptions shipped in profiles/derived)
    "deepseek-v3", "gpt-oss-20b", "gpt-oss-120b", "llama-4-scout", "smollm3-3b",
}

# Linears that transformers 5 keeps as real nn.Linear modules (MoE experts and routers are fused parameters there).
_REAL_LINEAR_GROUPS = {"attention", "mlp", "shared_expert"}


def load_profile(stem: str) -> ModelProfile:
    from ftadvisor.profiles import resolve_model

    with open(ROOT / "profiles" / "models" / f"{stem}.yaml") as f:
        return resolve_model(ModelProfile.model_validate(yaml.safe_load(f)))


# --------------------------------------------------------------------------
# transformers reference (meta device)
# --------------------------------------------------------------------------


def _text_only(config: dict) -> dict:
    """What transformers should build for the comparison: gemma3 -> its text_config as gemma3_text;
    llama4 (multimodal) -> its text_config (llama4_text), as ftadvisor.derive sizes it."""
    config = copy.deepcopy(config)
    if config["model_type"] == "llama4":
        return dict(config["text_config"])
    if config["model_type"] == "gemma3":
        text = dict(config["text_config"])
        text["model_type"] = "gemma3_text"
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
            text["tie_word_embeddings"] = config["tie_word_embeddings"]
        return text
    return config


def build_meta_model(config: dict):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = _text_only(config)
    model_type = config.pop("model_type")
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_config)


def hf_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def hf_linear_inventory(model) -> Counter:
    """(attribute name, in, out, bias) -> count for every nn.Linear except lm_head."""
    import torch.nn as nn

    inv: Counter = Counter()
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Linear) and not qualname.endswith("lm_head"):
            leaf = qualname.rsplit(".", 1)[-1]
            inv[(leaf, module.in_features, module.out_features, module.bias is not None)] += 1
    return inv


def our_linear_inventory(arch: ArchSpec) -> Counter:
    inv: Counter = Counter()
    for lin in arch.linears:
        if lin.group in _REAL_LINEAR_GROUPS or lin.name == "shared_expert_gate":
            inv[(lin.name, lin.in_features, lin.out_features, lin.bias)] += lin.count
    return inv


def assert_matches_transformers(config: dict, arch: ArchSpec | None = None) -> ArchSpec:
    arch = arch or arch_from_config(config)
    model = build_meta_model(config)
    assert arch.total_params == hf_param_count(model)
    ours, theirs = our_linear_inventory(arch), hf_linear_inventory(model)
    for lin in arch.linears:  # a router transformers keeps as an nn.Linear subclass (Llama4Router) counts too
        key = (lin.name, lin.in_features, lin.out_features, lin.bias)
        if lin.group == "router" and lin.name != "shared_expert_gate" and key in theirs:
            ours[key] += lin.count
    assert ours == theirs
    return arch


# --------------------------------------------------------------------------
# (a) shipped profiles
# --------------------------------------------------------------------------


def test_every_expected_profile_is_shipped():
    assert set(PROFILE_IDS) == EXPECTED_PROFILES


@pytest.mark.parametrize("stem", PROFILE_IDS)
def test_profile_is_well_formed(stem):
    profile = load_profile(stem)
    assert profile.id == stem
    assert profile.arch is not None and profile.arch.total_params > 0
    assert profile.source == f"https://huggingface.co/{profile.hf_id}/blob/main/config.json"
    assert profile.hf_id.lower() in profile.aliases
    assert all(a == a.lower() for a in profile.aliases)
    # an analytic family, or a generic one whose derived description ships (loads without torch)
    assert profile.config["model_type"] in SUPPORTED_MODEL_TYPES or shipped_path(profile.config).is_file()


@pytest.mark.parametrize("stem", PROFILE_IDS)
def test_profile_param_count_matches_transformers(stem):
    profile = load_profile(stem)
    assert_matches_transformers(profile.config, profile.arch)


def test_aliases_are_unique_across_profiles():
    seen: dict[str, str] = {}
    for stem in PROFILE_IDS:
        for name in (stem, *load_profile(stem).aliases):
            assert name not in seen, f"{name} is claimed by {seen[name]} and {stem}"
            seen[name] = stem


# Exact totals as reported by the Hugging Face safetensors metadata of each repo
# (the model page's "Model size"), as collected verbatim in public MFU-calculator
# code (found via code search: "HF safetensors confirmed" / "published model cards").
PUBLISHED_TOTALS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "mixtral-8x7b": 46_702_792_704,
}


@pytest.mark.parametrize("stem", sorted(PUBLISHED_TOTALS))
def test_published_exact_totals(stem):
    assert load_profile(stem).arch.total_params == PUBLISHED_TOTALS[stem]


def test_mistral_7b_v01_published_total():
    # Mistral-7B-v0.1 (HF safetensors: 7,241,732,096) is v0.3 with the old 32000-token vocabulary.
    config = dict(load_profile("mistral-7b").config, vocab_size=32000)
    assert arch_from_config(config).total_params == 7_241_732_096


@pytest.mark.parametrize(
    ("stem", "total_b", "active_b", "ndigits"),
    [
        # Mixtral paper (arXiv:2401.04088): 47B total, 13B active; Mistral AI's Mixtral 8x7B post: 12.9B active.
        ("mixtral-8x7b", 46.7, 12.9, 1),
        # Mistral AI's Mixtral 8x22B announcement: 141B total, 39B active.
        ("mixtral-8x22b", 141, 39, 0),
        # Qwen3-30B-A3B model card: 30.5B total.
        ("qwen3-30b-a3b", 30.5, None, 1),
    ],
)
def test_published_moe_sizes(stem, total_b, active_b, ndigits):
    arch = load_profile(stem).arch
    assert round(arch.total_params / 1e9, ndigits) == total_b
    if active_b is not None:
        assert round(arch.active_params / 1e9, ndigits) == active_b


def test_qwen3_8b_model_card_sizes():
    # Qwen3-8B model card (huggingface.co/Qwen/Qwen3-8B): 8.2B parameters, 6.95B non-embedding.
    # Hand count: 36 layers x (attn 4096*(4096+1024+1024) + 4096*4096, MLP 3*4096*12288) = 6.945B; + 2 x 151936*4096.
    arch = load_profile("qwen3-8b").arch
    assert round(arch.total_params / 1e9, 1) == 8.2
    non_embedding = arch.total_params - arch.embedding_params - arch.lm_head_params
    assert round(non_embedding / 1e9, 2) == 6.95


# --- issue 10 part 3: profiles for what people ask about -------------------------------------

# Exact totals from the Hub's safetensors metadata ("parameters" of the model API, BF16 only), as
# vendored in daniel-p-green/alain-ai-learning-platform out/research-<model>/sources/huggingface/model.json,
# or from model.safetensors.index.json total_size / 2 bytes (bf16) where noted.
HUB_SAFETENSORS_TOTALS = {
    "qwen3-32b": 32_762_123_264,
    "deepseek-r1-distill-llama-8b": 8_030_261_248,
    "deepseek-r1-distill-qwen-32b": 32_763_876_352,
    "gemma-3-1b": 999_885_952,
    # OpenMOSE/RWKV-LM-RLHF main/tokenizer/mistralsmall3/model.safetensors.index.json: total_size 47,144,806,400 B
    "mistral-small-24b": 47_144_806_400 // 2,
}


@pytest.mark.parametrize("stem", sorted(HUB_SAFETENSORS_TOTALS))
def test_issue10_hub_exact_totals(stem):
    assert load_profile(stem).arch.total_params == HUB_SAFETENSORS_TOTALS[stem]


# (total, non-embedding, active) in billions as each model card prints them, to the digits it prints.
MODEL_CARD_SIZES = [
    # Qwen3 model cards (huggingface.co/Qwen/Qwen3-*): "Number of Parameters" / "(Non-Embedding)".
    ("qwen3-0.6b", 0.6, 0.44, None, (1, 2)),
    ("qwen3-1.7b", 1.7, 1.4, None, (1, 1)),
    ("qwen3-4b", 4.0, 3.6, None, (1, 1)),
    ("qwen3-14b", 14.8, 13.2, None, (1, 1)),
    ("qwen3-32b", 32.8, 31.2, None, (1, 1)),
    ("qwen3-235b-a22b", 235, 234, 22, (0, 0)),  # "235B in total and 22B activated", 234B non-embedding
    ("phi-4-mini", 3.8, None, None, (1, 1)),  # Phi-4-mini-instruct model card: 3.8B
    ("mistral-nemo-12b", 12, None, None, (0, 0)),  # Mistral AI, Mistral NeMo announcement: 12B
    # Gemma 3 model card sizes include the SigLIP vision tower; the text part alone rounds the same.
    ("gemma-3-4b", 4, None, None, (0, 0)),
    ("gemma-3-12b", 12, None, None, (0, 0)),
    ("gemma-3-27b", 27, None, None, (0, 0)),
]


@pytest.mark.parametrize(("stem", "total_b", "non_embedding_b", "active_b", "digits"), MODEL_CARD_SIZES)
def test_issue10_model_card_sizes(stem, total_b, non_embedding_b, active_b, digits):
    arch = load_profile(stem).arch
    assert round(arch.total_params / 1e9, digits[0]) == total_b
    if non_embedding_b is not None:
        non_embedding = arch.total_params - arch.embedding_params - arch.lm_head_params
        assert round(non_embedding / 1e9, digits[1]) == non_embedding_b
    if active_b is not None:
        assert round(arch.active_params / 1e9, digits[0]) == active_b


def test_issue10_gemma_3_4b_text_hand_count():
    # gemma-3-4b-it's text_config leaves vocab_size and the head counts to Gemma3TextConfig's defaults
    # (262208 rows, 8 Q / 4 KV heads of 256). Per layer: q,o 2560x2048 each, k,v 2560x1024 each, gated MLP
    # 3 x 2560x10240, four 2560-wide norms plus q/k norms of 256; one final norm; tied embedding.
    layer = 2 * 2560 * 2048 + 2 * 2560 * 1024 + 3 * 2560 * 10240 + 4 * 2560 + 2 * 256
    arch = load_profile("gemma-3-4b").arch
    assert arch.vocab_size == 262208 and (arch.num_attention_heads, arch.num_kv_heads, arch.head_dim) == (8, 4, 256)
    assert arch.total_params == 34 * layer + 2560 + 262208 * 2560 == 3_880_263_168


def test_issue10_llama_33_70b_is_llama_31_70b():
    # Llama 3.3 70B keeps the Llama 3.1 70B architecture (oumi configs/recipes/llama3_3/README.md model-info table).
    assert load_profile("llama-3.3-70b").arch == load_profile("llama-3.1-70b").arch


def test_issue10_r1_distill_qwen_7b_has_the_qwen25_7b_shapes():
    # DeepSeek-R1 README: distilled from Qwen2.5-Math-7B, whose shapes are Qwen2.5-7B's; only context/RoPE fields differ.
    distill, base = load_profile("deepseek-r1-distill-qwen-7b").arch, load_profile("qwen2.5-7b").arch
    assert distill.total_params == base.total_params and distill.linears == base.linears
    assert round(distill.total_params / 1e9, 1) == 7.6  # 7.6B as model registries quote the Hub page


# --- issue 10: families sized by the generic path (ftadvisor.derive; shipped descriptions, no torch) ---------
# Active counts leave out the input embedding (a lookup, no matmul), as the gpt-oss model card (table 1) and the
# DeepSeek-V3 README count them; the Llama 4 model card's 17B active includes it (17.17B here, 16.14B without).
GENERIC_SIZES = [
    # (stem, total in B, active in B or None, digits): published figures
    ("gpt-oss-20b", 20.91, 3.61, 2),  # OpenAI gpt-oss model card, table 1: 20.91B total, 3.61B active
    ("gpt-oss-120b", 116.83, 5.13, 2),  # same table: 116.83B total, 5.13B active
    ("deepseek-v3", 671, 37, 0),  # DeepSeek-V3 README: 671B total (685B with the MTP module transformers does not build), 37B activated
    ("smollm3-3b", 3.08, None, 2),  # Hub page of HuggingFaceTB/SmolLM3-3B (safetensors, BF16): 3.08B
]


@pytest.mark.parametrize(("stem", "total_b", "active_b", "digits"), GENERIC_SIZES)
def test_issue10_generic_family_published_sizes(stem, total_b, active_b, digits):
    arch = load_profile(stem).arch
    assert arch.derived_by.startswith("architecture derived from transformers")  # generic path, via profiles/derived
    assert round(arch.total_params / 1e9, digits) == total_b
    if active_b is not None:
        assert round((arch.active_params - arch.embedding_params) / 1e9, digits) == active_b


def test_issue10_llama_4_scout_sizes():
    # Meta Llama 4 model card: 17B active, 109B total counting the vision encoder, which the profile leaves out
    # (text_config only); transformers 5.24's meta-device build of the text model has 107,769,861,120.
    arch = load_profile("llama-4-scout").arch
    assert round(arch.active_params / 1e9) == 17
    assert round(arch.total_params / 1e9, 2) == 107.77


def test_issue10_smollm3_hand_count():
    # SmolLM3-3B: 36 layers, h 2048, 16 Q / 4 KV heads of 128, SwiGLU MLP 11008, two RMSNorms per layer, final
    # norm, tied 128256-row embedding. Per layer: q,o 2048x2048, k,v 2048x512, MLP 3 x 2048x11008, norms 2 x 2048.
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 11008 + 2 * 2048
    assert load_profile("smollm3-3b").arch.total_params == 36 * layer + 2048 + 128256 * 2048 == 3_075_098_624


def test_issue10_r1_distill_qwen_14b_has_the_qwen25_14b_shapes():
    # DeepSeek-R1 README (distilled models table): DeepSeek-R1-Distill-Qwen-14B is fine-tuned from Qwen2.5-14B.
    distill, base = load_profile("deepseek-r1-distill-qwen-14b").arch, load_profile("qwen2.5-14b").arch
    assert distill.total_params == base.total_params and distill.linears == base.linears
    assert round(distill.total_params / 1e9, 1) == 14.8  # 14.8B on the Hub page (BF16 safetensors)


def test_llama_31_8b_structure():
    arch = load_profile("llama-3.1-8b").arch
    names = [(lin.name, lin.in_features, lin.out_features, lin.count, lin.input_source) for lin in arch.linears]
    assert names == [
        ("q_proj", 4096, 4096, 32, "attn_in"),
        ("k_proj", 4096, 1024, 32, "attn_in"),
        ("v_proj", 4096, 1024, 32, "attn_in"),
        ("o_proj", 4096, 4096, 32, "attn_out"),
        ("gate_proj", 4096, 14336, 32, "mlp_in"),
        ("up_proj", 4096, 14336, 32, "mlp_in"),
        ("down_proj", 14336, 4096, 32, "mlp_mid"),
    ]
    assert (arch.num_kv_heads, arch.head_dim, arch.norm, arch.norms_per_layer) == (8, 128, "rmsnorm", 2)
    assert not arch.tie_word_embeddings and arch.lm_head_params == arch.embedding_params == 128256 * 4096
    assert arch.max_position_embeddings == 131072


def test_tied_and_biased_variants():
    assert load_profile("llama-3.2-1b").arch.lm_head_params == 0
    assert load_profile("gemma-2-2b").arch.tie_word_embeddings  # Gemma default, absent from its config
    assert load_profile("falcon-7b").arch.tie_word_embeddings  # Falcon default, absent from its config
    qwen = load_profile("qwen2.5-7b").arch
    assert {lin.name: lin.bias for lin in qwen.linears if lin.group == "attention"} == {
        "q_proj": True, "k_proj": True, "v_proj": True, "o_proj": False
    }
    phi2 = load_profile("phi-2").arch
    assert phi2.lm_head_bias and phi2.lm_head_params == 51200 * 2560 + 51200
    assert all(lin.bias for lin in phi2.linears)
    assert phi2.norm == "layernorm" and phi2.parallel_attn_mlp


def test_parallel_blocks_share_the_attention_input():
    falcon = {lin.name: lin for lin in load_profile("falcon-7b").arch.linears}
    assert falcon["query_key_value"].out_features == 4544 + 2 * 64  # multi-query: one K and one V head
    assert falcon["dense_h_to_4h"].input_source == "attn_in"
    phi2 = {lin.name: lin.input_source for lin in load_profile("phi-2").arch.linears}
    assert phi2["fc1"] == phi2["q_proj"] == "attn_in"


def test_fused_phi3_names():
    names = [lin.name for lin in load_profile("phi-3-mini").arch.linears]
    assert names == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_moe_profiles():
    mixtral = load_profile("mixtral-8x7b").arch
    by_name = {lin.name: lin for lin in mixtral.linears}
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.num_moe_layers) == (8, 2, 32)
    assert mixtral.intermediate_size == 0 and mixtral.moe_intermediate_size == 14336
    assert by_name["w1"].count == 32 * 8 and by_name["w1"].group == "expert"
    assert by_name["gate"].group == "router" and by_name["gate"].out_features == 8
    qwen3 = load_profile("qwen3-30b-a3b").arch
    assert (qwen3.num_experts, qwen3.experts_per_token, qwen3.num_moe_layers) == (128, 8, 48)
    assert qwen3.intermediate_size == 0 and qwen3.head_dim == 128
    assert qwen3.active_params < qwen3.total_params / 8


# --------------------------------------------------------------------------
# (b) synthetic configs, one family feature each
# --------------------------------------------------------------------------

_S = dict(vocab_size=101, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
_GEMMA3_TEXT = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=96, vocab_size=300,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)

SYNTHETIC = {
    "llama-gqa-bias-tied": dict(model_type="llama", **_S, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                                tie_word_embeddings=True),
    "llama-explicit-head-dim": dict(model_type="llama", **_S, head_dim=32, num_key_value_heads=1),
    "mistral-default-kv": dict(model_type="mistral", **{**_S, "num_attention_heads": 16}),
    "mixtral": dict(model_type="mixtral", **_S, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "mixtral-num-experts-alias": dict(model_type="mixtral", **_S, num_key_value_heads=2, num_experts=3,
                                      num_experts_per_tok=2),
    "qwen2-default-kv": dict(model_type="qwen2", **{**_S, "num_attention_heads": 32}),
    "qwen2-moe-shared-mlp-only": dict(model_type="qwen2_moe", **{**_S, "num_attention_heads": 16}, num_experts=6,
                                      num_experts_per_tok=2, moe_intermediate_size=24,
                                      shared_expert_intermediate_size=80, mlp_only_layers=[1]),
    "qwen2-moe-sparse-step": dict(model_type="qwen2_moe", **_S, num_key_value_heads=2, num_experts=6,
                                  num_experts_per_tok=2, moe_intermediate_size=24,
                                  shared_expert_intermediate_size=80, decoder_sparse_step=2, qkv_bias=False),
    "qwen3-dense-default-head-dim": dict(model_type="qwen3", **{**_S, "num_attention_heads": 32}),
    "qwen3-dense": dict(model_type="qwen3", **_S, num_key_value_heads=2, head_dim=16, attention_bias=True,
                        tie_word_embeddings=True),
    "qwen3-moe-mlp-only": dict(model_type="qwen3_moe", **_S, num_key_value_heads=2, head_dim=32, num_experts=8,
                               num_experts_per_tok=2, moe_intermediate_size=24, mlp_only_layers=[0]),
    "gemma-defaults": dict(model_type="gemma", **{**_S, "num_attention_heads": 16}),
    "gemma-mqa": dict(model_type="gemma", **_S, num_key_value_heads=1, head_dim=32),
    "gemma2": dict(model_type="gemma2", **_S, num_key_value_heads=2, head_dim=16),
    "gemma3-text": dict(model_type="gemma3_text", **_S, num_key_value_heads=1, head_dim=32),
    "gemma3-text-sparse-config": dict(model_type="gemma3_text", hidden_size=64, num_hidden_layers=2,
                                      intermediate_size=96),
    "gemma3-multimodal": dict(model_type="gemma3", text_config=dict(_GEMMA3_TEXT, model_type="gemma3_text")),
    "gemma3-multimodal-untied": dict(model_type="gemma3", tie_word_embeddings=False, text_config=dict(_GEMMA3_TEXT)),
    # A sparse Gemma-3-4B-shaped text_config: vocab_size and head counts come from Gemma3TextConfig defaults.
    "gemma3-multimodal-4b-sparse": dict(model_type="gemma3", text_config=dict(
        hidden_size=2560, intermediate_size=10240, model_type="gemma3_text", num_hidden_layers=34,
        rope_scaling={"factor": 8.0, "rope_type": "linear"}, sliding_window=1024)),
    "olmo2": dict(model_type="olmo2", **_S, num_key_value_heads=2),
    "olmo2-bias": dict(model_type="olmo2", **_S, attention_bias=True),
    "phi3-gqa": dict(model_type="phi3", **_S, num_key_value_heads=2, pad_token_id=0),
    "phi-qk-layernorm-tied": dict(model_type="phi", **_S, qk_layernorm=True, tie_word_embeddings=True,
                                  num_key_value_heads=2),
    "falcon-mha-sequential-bias": dict(model_type="falcon", vocab_size=101, hidden_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, multi_query=False, parallel_attn=False, bias=True,
                                       tie_word_embeddings=False, alibi=True),
    "falcon-new-decoder": dict(model_type="falcon", vocab_size=101, hidden_size=64, num_hidden_layers=3,
                               num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
                               ffn_hidden_size=100),
    "falcon-new-decoder-one-ln": dict(model_type="falcon", vocab_size=101, hidden_size=64, num_hidden_layers=3,
                                      num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
                                      num_ln_in_parallel_attn=1),
    "falcon-n-embed": dict(model_type="falcon", vocab_size=101, n_embed=64, num_hidden_layers=3, num_attention_heads=4),
    "gpt-neox": dict(model_type="gpt_neox", **_S),
    "gpt-neox-sequential-untied-nobias": dict(model_type="gpt_neox", **_S, attention_bias=False,
                                              use_parallel_residual=False, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_config_matches_transformers(name):
    assert_matches_transformers(SYNTHETIC[name])


def test_qwen2_moe_layout():
    arch = arch_from_config(SYNTHETIC["qwen2-moe-shared-mlp-only"])
    groups = Counter()
    for lin in arch.linears:
        groups[(lin.group, lin.name, lin.input_source)] += lin.count
    assert arch.num_moe_layers == 2 and arch.intermediate_size == 96 and arch.shared_expert_intermediate_size == 80
    assert groups[("mlp", "gate_proj", "mlp_in")] == 1  # layer 1 is in mlp_only_layers
    assert groups[("expert", "gate_proj", "expert_in")] == 2 * 6
    assert groups[("expert", "down_proj", "expert_mid")] == 2 * 6
    assert groups[("shared_expert", "up_proj", "shared_in")] == 2
    assert groups[("shared_expert", "down_proj", "shared_mid")] == 2
    assert groups[("router", "gate", "router_in")] == 2
    assert groups[("router", "shared_expert_gate", "router_in")] == 2
    sparse = arch_from_config(SYNTHETIC["qwen2-moe-sparse-step"])
    assert sparse.num_moe_layers == 1  # (i + 1) % 2 == 0 only for i = 1 of 3 layers


def test_family_specific_norms_and_heads():
    gemma = arch_from_config(SYNTHETIC["gemma-defaults"])
    assert gemma.head_dim == 256 and gemma.num_kv_heads == 16 and gemma.tie_word_embeddings
    assert arch_from_config(SYNTHETIC["gemma2"]).norms_per_layer == 4
    assert arch_from_config(SYNTHETIC["qwen3-dense-default-head-dim"]).head_dim == 128
    mm = arch_from_config(SYNTHETIC["gemma3-multimodal"])
    assert mm.model_type == "gemma3" and mm.vocab_size == 300
    # gemma3_text: 4 hidden-width norms per layer + q_norm/k_norm over head_dim + final norm
    assert mm.norm_params == (4 * 2 + 1) * 64 + 2 * 2 * 16
    # olmo2: q_norm over heads*head_dim, k_norm over kv_heads*head_dim
    olmo = arch_from_config(SYNTHETIC["olmo2"])
    assert olmo.norm_params == (2 * 3 + 1) * 64 + 3 * (64 + 32)
    falcon = {lin.name: lin for lin in arch_from_config(SYNTHETIC["falcon-new-decoder"]).linears}
    assert falcon["query_key_value"].out_features == (8 + 2 * 2) * 8
    assert falcon["dense_h_to_4h"].input_source == "mlp_in"  # ln_mlp, not the attention's norm
    neox = {lin.name: lin.input_source for lin in arch_from_config(SYNTHETIC["gpt-neox"]).linears}
    assert neox["dense_h_to_4h"] == "mlp_in"


# --------------------------------------------------------------------------
# (c) errors name the field
# --------------------------------------------------------------------------


def _llama(**changes):
    config = dict(model_type="llama", **_S)
    config.update(changes)
    return {k: v for k, v in config.items() if v is not ...}


def test_unsupported_model_type():
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(dict(_S, model_type="bert"))
    assert exc.value.field == "model_type"
    assert "llama" in exc.value.choices and "gemma3" in exc.value.choices
    assert "bert" in str(exc.value)


def test_missing_model_type():
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(dict(_S))
    assert exc.value.field == "model_type"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (_llama(hidden_size=...), "hidden_size"),
        (_llama(hidden_size=None), "hidden_size"),
        (_llama(hidden_size="4096"), "hidden_size"),
        (_llama(hidden_size=64.5), "hidden_size"),
        (_llama(hidden_size=True), "hidden_size"),
        (_llama(num_hidden_layers=-2), "num_hidden_layers"),
        (_llama(num_hidden_layers=0), "num_hidden_layers"),
        (_llama(vocab_size=-1), "vocab_size"),
        (_llama(intermediate_size=...), "intermediate_size"),
        (_llama(num_attention_heads=5), "num_attention_heads"),  # llama validates hidden % heads
        (_llama(num_key_value_heads=3), "num_key_value_heads"),
        (_llama(head_dim=-8), "head_dim"),
        (_llama(tie_word_embeddings="yes"), "tie_word_embeddings"),
        (dict(model_type="mixtral", **_S, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=4),
         "num_experts_per_tok"),
        (dict(model_type="mixtral", **_S, num_key_value_heads=2, num_experts_per_tok=2), "num_local_experts"),
        (dict(model_type="qwen3_moe", **_S, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
              mlp_only_layers="all"), "mlp_only_layers"),
        (dict(model_type="qwen2_moe", **_S, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
              moe_intermediate_size=8, shared_expert_intermediate_size=8, decoder_sparse_step=0),
         "decoder_sparse_step"),
        (dict(model_type="falcon", vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=6),
         "num_attention_heads"),
        (dict(model_type="gemma3"), "text_config"),
        (dict(model_type="gemma3", text_config=[1, 2]), "text_config"),
        (dict(model_type="gemma3", text_config=dict(num_hidden_layers=2, intermediate_size=96)),
         "text_config.hidden_size"),
        (dict(model_type="gemma3", text_config=dict(_GEMMA3_TEXT, num_hidden_layers="2")),
         "text_config.num_hidden_layers"),
    ],
)
def test_malformed_fields_are_named(config, field):
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(config)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")


def test_config_must_be_a_mapping():
    with pytest.raises(FtAdvisorError) as exc:
        arch_from_config(["llama"])  # type: ignore[arg-type]
    assert exc.value.field == "config"


def test_profile_with_bad_config_names_the_field():
    # The architecture is derived when a profile is resolved (profiles layer), and a missing field is
    # an FtAdvisorError naming it.
    from ftadvisor.profiles import resolve_model

    data = yaml.safe_load((ROOT / "profiles" / "models" / "llama-3.1-8b.yaml").read_text())
    del data["config"]["hidden_size"]
    with pytest.raises(FtAdvisorError) as exc:
        resolve_model(ModelProfile.model_validate(data))
    assert exc.value.field == "hidden_size"