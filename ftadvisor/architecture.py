"""Derive an :class:`ArchSpec` from a Hugging Face ``config.json`` dict.

Pure and fast on purpose: no torch or transformers import, only arithmetic on
the config fields. The rules mirror the modeling code of transformers 5.x
(``src/transformers/models/<family>/modeling_<family>.py``) including its
per-family config defaults, so that ``arch.total_params`` equals exactly
``sum(p.numel() for p in model.parameters())`` of
``AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))``
(tests/test_architecture.py checks this on the meta device).

Notes on the less obvious cases:

* Multimodal Gemma 3 (``model_type: gemma3``): only the language model is
  described, built from ``text_config`` as ``gemma3_text``; the SigLIP vision
  tower and the multimodal projector are NOT counted (fine-tuning recipes
  usually freeze them, and they are small next to the language model).
* Transformers 5 stores MoE experts as fused 3-D parameters
  (``experts.gate_up_proj`` / ``experts.down_proj``) and the router as a bare
  ``weight``; here they are listed under the classic per-expert ``nn.Linear``
  names (Mixtral ``w1``/``w3``/``w2``, Qwen ``gate_proj``/``up_proj``/
  ``down_proj``, router ``gate``). The parameter counts are identical.
* Qwen2-MoE's ``shared_expert_gate`` (a ``Linear(hidden, 1)``) is listed in
  the ``router`` group: like the router it is a gate that reads the MoE input.
* Input-source labels: linears that read the very same tensor share a label.
  In parallel-attention blocks whose MLP reads the attention's normed input
  (phi-2, Falcon-7B) the MLP input is labelled ``attn_in``; where the MLP has
  its own norm (GPT-NeoX parallel residual, Falcon-40B style ``ln_mlp``) it is
  ``mlp_in``.
* OLMo 2 has no pre-attention norm (norms sit after attention/MLP), so its
  ``attn_in`` is the raw residual stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ftadvisor.errors import FtAdvisorError, from_validation, shown
from ftadvisor.schema import ArchSpec, LinearSpec
from ftadvisor.validate import ARCH_INT_LIMIT, ARCH_LIMITS

__all__ = ["SUPPORTED_MODEL_TYPES", "arch_from_config"]

_REQUIRED = object()


class _Cfg:
    """Typed, validated access to config fields; errors name the field."""

    def __init__(self, data: Mapping[str, Any], prefix: str = ""):
        self.data = data
        self.prefix = prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def int(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
        """An integer field; ``None`` or absent takes ``default`` (error when required)."""
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise FtAdvisorError(self.name(key), "missing from the config (required to size the model)")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise FtAdvisorError(self.name(key), f"must be an integer, got {shown(value)}")
        if value < minimum:
            raise FtAdvisorError(self.name(key), f"must be >= {minimum}, got {shown(value)}")
        maximum = ARCH_LIMITS.get(key, ARCH_INT_LIMIT)
        if value > maximum:
            # a size no model has: a typo, or a config that would never finish (10^10 layers)
            raise FtAdvisorError(self.name(key), f"{shown(value)} is larger than any model has (at most {maximum:,})")
        return value

    def bool(self, key: str, default: bool) -> bool:
        """A boolean flag; absent takes ``default``; ``null`` counts as false (as transformers' truth test does)."""
        if key not in self.data:
            return default
        value = self.data[key]
        if value is None:
            return False
        if not isinstance(value, bool):
            raise FtAdvisorError(self.name(key), f"must be true or false, got {shown(value)}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise FtAdvisorError(self.name(key), f"must be a list of layer indices, got {shown(value)}")
        if len(value) > ARCH_LIMITS["num_hidden_layers"]:
            raise FtAdvisorError(self.name(key), f"lists {len(value):,} layers, more than any model has")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= ARCH_INT_LIMIT:
                raise FtAdvisorError(self.name(key), f"must hold layer indices (integers >= 0), got {shown(item)}")
            out.append(item)
        return out

    def max_position_embeddings(self) -> int | None:
        return self.int("max_position_embeddings", None)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def _lin(name: str, group: str, fin: int, fout: int, bias: bool, count: int, src: str) -> LinearSpec:
    return LinearSpec(
        name=name, group=group, in_features=fin, out_features=fout, bias=bias, count=count, input_source=src
    )


def _require_divisible(cfg: _Cfg, hidden: int, heads: int) -> None:
    if hidden % heads:
        raise FtAdvisorError(
            cfg.name("num_attention_heads"),
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
        )


def _kv_heads(cfg: _Cfg, heads: int, key: str, default: int | None) -> int:
    """KV heads: absent -> the family's config default (None meaning "= num_attention_heads")."""
    if key in cfg.data:
        kv = cfg.int(key, heads)  # explicit null -> num_attention_heads
    else:
        kv = heads if default is None else default
    if kv > heads or heads % kv:
        raise FtAdvisorError(
            cfg.name(key), f"{kv} key/value heads do not divide {heads} attention heads evenly (GQA/MQA needs that)"
        )
    return kv


def _embeddings(vocab: int, hidden: int, tie: bool, lm_head_bias: bool = False) -> tuple[int, int]:
    lm_head = (0 if tie else vocab * hidden) + (vocab if lm_head_bias else 0)
    return vocab * hidden, lm_head


def _tie(cfg: _Cfg, default: bool) -> bool:
    return cfg.bool("tie_word_embeddings", default)


# --------------------------------------------------------------------------
# Llama-style decoders (pre-norm, RMSNorm, gated MLP, optional MoE)
# --------------------------------------------------------------------------

# model_type -> family traits (all mirror transformers 5 config defaults / modeling code)
#   kv_default: num_key_value_heads when the key is absent (None = num_attention_heads)
#   head_dim_default: when head_dim is absent (None = hidden_size // num_attention_heads)
#   tie: tie_word_embeddings default
#   qkv_bias / o_bias / mlp_bias: a config key name, or a fixed bool
#   norms: hidden-width norms per layer; qk_norm: None | "head" | "full"
#   mlp: "gated" | "phi3" | "mixtral" | "qwen_moe"
#   check_div: transformers validates hidden_size % num_attention_heads
_LLAMA_LIKE: dict[str, dict[str, Any]] = {
    "llama": dict(kv_default=None, head_dim_default=None, tie=False, qkv_bias=("attention_bias", False),
                  o_bias=("attention_bias", False), mlp_bias=("mlp_bias", False), norms=2, qk_norm=None,
                  mlp="gated", check_div=True),
    "mistral": dict(kv_default=8, head_dim_default=None, tie=False, qkv_bias=False, o_bias=False, mlp_bias=False,
                    norms=2, qk_norm=None, mlp="gated", check_div=False),
    "mixtral": dict(kv_default=8, head_dim_default=None, tie=False, qkv_bias=False, o_bias=False, mlp_bias=False,
                    norms=2, qk_norm=None, mlp="mixtral", check_div=False),
    "qwen2": dict(kv_default=32, head_dim_default=None, tie=False, qkv_bias=True, o_bias=False, mlp_bias=False,
                  norms=2, qk_norm=None, mlp="gated", check_div=False),
    "qwen2_moe": dict(kv_default=16, head_dim_default=None, tie=False, qkv_bias=("qkv_bias", True), o_bias=False,
                      mlp_bias=False, norms=2, qk_norm=None, mlp="qwen_moe", shared=True, check_div=False),
    "qwen3": dict(kv_default=32, head_dim_default=128, tie=False, qkv_bias=("attention_bias", False),
                  o_bias=("attention_bias", False), mlp_bias=False, norms=2, qk_norm="head", mlp="gated",
                  check_div=False),
    "qwen3_moe": dict(kv_default=4, head_dim_default=None, tie=False, qkv_bias=("attention_bias", False),
                      o_bias=("attention_bias", False), mlp_bias=False, norms=2, qk_norm="head", mlp="qwen_moe",
                      shared=False, check_div=False),
    "gemma": dict(kv_default=16, head_dim_default=256, tie=True, qkv_bias=("attention_bias", False),
                  o_bias=("attention_bias", False), mlp_bias=False, norms=2, qk_norm=None, mlp="gated",
                  check_div=False),
    "gemma2": dict(kv_default=4, head_dim_default=256, tie=True, qkv_bias=("attention_bias", False),
                   o_bias=("attention_bias", False), mlp_bias=False, norms=4, qk_norm=None, mlp="gated",
                   check_div=True),
    # Real Gemma 3 multimodal configs leave vocab_size and the head counts to Gemma3TextConfig's defaults.
    "gemma3_text": dict(kv_default=4, head_dim_default=256, tie=True, qkv_bias=("attention_bias", False),
                        o_bias=("attention_bias", False), mlp_bias=False, norms=4, qk_norm="head", mlp="gated",
                        check_div=True, defaults={"vocab_size": 262_208, "num_attention_heads": 8}),
    "olmo2": dict(kv_default=None, head_dim_default=None, tie=False, qkv_bias=("attention_bias", False),
                  o_bias=("attention_bias", False), mlp_bias=False, norms=2, qk_norm="full", mlp="gated",
                  check_div=False),
    "phi3": dict(kv_default=None, head_dim_default=None, tie=False, qkv_bias=False, o_bias=False, mlp_bias=False,
                 norms=2, qk_norm=None, mlp="phi3", check_div=False),
}


def _flag(cfg: _Cfg, spec: Any) -> bool:
    if isinstance(spec, tuple):
        key, default = spec
        return cfg.bool(key, default)
    return bool(spec)


def _llama_like(cfg: _Cfg, model_type: str) -> ArchSpec:
    t = _LLAMA_LIKE[model_type]
    defaults = t.get("defaults", {})
    vocab = cfg.int("vocab_size", defaults.get("vocab_size", _REQUIRED))
    hidden = cfg.int("hidden_size")
    layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads", defaults.get("num_attention_heads", _REQUIRED))
    if t["check_div"]:
        _require_divisible(cfg, hidden, heads)
    kv = _kv_heads(cfg, heads, "num_key_value_heads", t["kv_default"])
    head_dim = cfg.int("head_dim", t["head_dim_default"] or hidden // heads)
    if head_dim < 1:
        raise FtAdvisorError(cfg.name("num_attention_heads"), f"gives a zero head_dim for hidden_size {hidden}")
    tie = _tie(cfg, t["tie"])
    qkv_bias, o_bias, mlp_bias = _flag(cfg, t["qkv_bias"]), _flag(cfg, t["o_bias"]), _flag(cfg, t["mlp_bias"])
    q_out, kv_out = heads * head_dim, kv * head_dim

    linears: list[LinearSpec] = []
    if t["mlp"] == "phi3":
        linears.append(_lin("qkv_proj", "attention", hidden, q_out + 2 * kv_out, qkv_bias, layers, "attn_in"))
    else:
        linears += [
            _lin("q_proj", "attention", hidden, q_out, qkv_bias, layers, "attn_in"),
            _lin("k_proj", "attention", hidden, kv_out, qkv_bias, layers, "attn_in"),
            _lin("v_proj", "attention", hidden, kv_out, qkv_bias, layers, "attn_in"),
        ]
    linears.append(_lin("o_proj", "attention", q_out, hidden, o_bias, layers, "attn_out"))

    moe: dict[str, int] = {}
    intermediate = 0
    if t["mlp"] in ("gated", "phi3"):
        intermediate = cfg.int("intermediate_size")
        if t["mlp"] == "phi3":
            linears.append(_lin("gate_up_proj", "mlp", hidden, 2 * intermediate, mlp_bias, layers, "mlp_in"))
        else:
            linears += [
                _lin("gate_proj", "mlp", hidden, intermediate, mlp_bias, layers, "mlp_in"),
                _lin("up_proj", "mlp", hidden, intermediate, mlp_bias, layers, "mlp_in"),
            ]
        linears.append(_lin("down_proj", "mlp", intermediate, hidden, mlp_bias, layers, "mlp_mid"))
    elif t["mlp"] == "mixtral":
        # MixtralConfig maps num_experts onto num_local_experts (attribute_map)
        experts = cfg.int("num_local_experts") if not cfg.has("num_experts") else cfg.int("num_experts")
        top_k = cfg.int("num_experts_per_tok")
        if top_k > experts:
            raise FtAdvisorError(cfg.name("num_experts_per_tok"), f"{top_k} exceeds num_local_experts {experts}")
        width = cfg.int("intermediate_size")
        n = layers * experts
        linears += [
            _lin("gate", "router", hidden, experts, False, layers, "router_in"),
            _lin("w1", "expert", hidden, width, False, n, "expert_in"),
            _lin("w3", "expert", hidden, width, False, n, "expert_in"),
            _lin("w2", "expert", width, hidden, False, n, "expert_mid"),
        ]
        moe = dict(num_experts=experts, experts_per_token=top_k, num_moe_layers=layers, moe_intermediate_size=width)
    else:  # qwen_moe
        linears, intermediate, moe = _qwen_moe(cfg, linears, hidden, layers, shared=t["shared"])

    norm_params = (t["norms"] * layers + 1) * hidden
    if t["qk_norm"] == "head":
        norm_params += layers * 2 * head_dim
    elif t["qk_norm"] == "full":
        norm_params += layers * (q_out + kv_out)

    embedding, lm_head = _embeddings(vocab, hidden, tie)
    return ArchSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=intermediate,
        mlp_gated=True,
        norm="rmsnorm",
        norms_per_layer=t["norms"],
        parallel_attn_mlp=False,
        tie_word_embeddings=tie,
        lm_head_bias=False,
        linears=tuple(linears),
        embedding_params=embedding,
        lm_head_params=lm_head,
        norm_params=norm_params,
        max_position_embeddings=cfg.max_position_embeddings(),
        **moe,
    )


def _qwen_moe(
    cfg: _Cfg, linears: list[LinearSpec], hidden: int, layers: int, shared: bool
) -> tuple[list[LinearSpec], int, dict[str, int]]:
    """Qwen2-MoE / Qwen3-MoE: layer i is sparse iff i not in mlp_only_layers and (i+1) % decoder_sparse_step == 0."""
    experts = cfg.int("num_experts", minimum=0)
    step = cfg.int("decoder_sparse_step", 1)
    mlp_only = set(cfg.int_list("mlp_only_layers"))
    moe_layers = sum(1 for i in range(layers) if experts > 0 and i not in mlp_only and (i + 1) % step == 0)
    dense_layers = layers - moe_layers

    intermediate = 0
    if dense_layers:
        intermediate = cfg.int("intermediate_size")
        linears += [
            _lin("gate_proj", "mlp", hidden, intermediate, False, dense_layers, "mlp_in"),
            _lin("up_proj", "mlp", hidden, intermediate, False, dense_layers, "mlp_in"),
            _lin("down_proj", "mlp", intermediate, hidden, False, dense_layers, "mlp_mid"),
        ]
    moe: dict[str, int] = {}
    if moe_layers:
        top_k = cfg.int("num_experts_per_tok")
        if top_k > experts:
            raise FtAdvisorError(cfg.name("num_experts_per_tok"), f"{top_k} exceeds num_experts {experts}")
        width = cfg.int("moe_intermediate_size")
        n = moe_layers * experts
        linears += [
            _lin("gate", "router", hidden, experts, False, moe_layers, "router_in"),
            _lin("gate_proj", "expert", hidden, width, False, n, "expert_in"),
            _lin("up_proj", "expert", hidden, width, False, n, "expert_in"),
            _lin("down_proj", "expert", width, hidden, False, n, "expert_mid"),
        ]
        shared_width = 0
        if shared:
            shared_width = cfg.int("shared_expert_intermediate_size", minimum=0)
            if shared_width:
                linears += [
                    _lin("gate_proj", "shared_expert", hidden, shared_width, False, moe_layers, "shared_in"),
                    _lin("up_proj", "shared_expert", hidden, shared_width, False, moe_layers, "shared_in"),
                    _lin("down_proj", "shared_expert", shared_width, hidden, False, moe_layers, "shared_mid"),
                ]
            linears.append(_lin("shared_expert_gate", "router", hidden, 1, False, moe_layers, "router_in"))
        moe = dict(
            num_experts=experts,
            experts_per_token=top_k,
            num_moe_layers=moe_layers,
            moe_intermediate_size=width,
            shared_expert_intermediate_size=shared_width,
        )
    return linears, intermediate, moe


# --------------------------------------------------------------------------
# LayerNorm families: phi (phi-1/1.5/2), Falcon, GPT-NeoX
# --------------------------------------------------------------------------


def _phi(cfg: _Cfg, model_type: str) -> ArchSpec:
    """phi-1/1.5/2: parallel block (attention and fc1 read one LayerNorm), every linear biased, lm_head biased."""
    vocab = cfg.int("vocab_size")
    hidden = cfg.int("hidden_size")
    layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    intermediate = cfg.int("intermediate_size")
    kv = _kv_heads(cfg, heads, "num_key_value_heads", None)
    head_dim = cfg.int("head_dim", hidden // heads)
    tie = _tie(cfg, False)
    q_out, kv_out = heads * head_dim, kv * head_dim
    linears = [
        _lin("q_proj", "attention", hidden, q_out, True, layers, "attn_in"),
        _lin("k_proj", "attention", hidden, kv_out, True, layers, "attn_in"),
        _lin("v_proj", "attention", hidden, kv_out, True, layers, "attn_in"),
        _lin("dense", "attention", q_out, hidden, True, layers, "attn_out"),
        _lin("fc1", "mlp", hidden, intermediate, True, layers, "attn_in"),
        _lin("fc2", "mlp", intermediate, hidden, True, layers, "mlp_mid"),
    ]
    norm_params = (layers + 1) * 2 * hidden
    if cfg.bool("qk_layernorm", False):
        norm_params += layers * 2 * 2 * (hidden // heads)  # q_layernorm + k_layernorm over hidden // heads
    embedding, lm_head = _embeddings(vocab, hidden, tie, lm_head_bias=True)
    return ArchSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=intermediate,
        mlp_gated=False,
        norm="layernorm",
        norms_per_layer=1,
        parallel_attn_mlp=True,
        tie_word_embeddings=tie,
        lm_head_bias=True,
        linears=tuple(linears),
        embedding_params=embedding,
        lm_head_params=lm_head,
        norm_params=norm_params,
        max_position_embeddings=cfg.max_position_embeddings(),
    )


def _falcon(cfg: _Cfg, model_type: str) -> ArchSpec:
    """Falcon (7B: multi-query + parallel; 40B/180B: new_decoder_architecture with grouped KV and two norms)."""
    vocab = cfg.int("vocab_size")
    hidden = cfg.int("n_embed") if cfg.has("n_embed") else cfg.int("hidden_size")  # n_embed wins, as in FalconConfig
    layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    _require_divisible(cfg, hidden, heads)
    head_dim = hidden // heads
    new_arch = cfg.bool("new_decoder_architecture", False)
    multi_query = cfg.bool("multi_query", True)
    parallel = cfg.bool("parallel_attn", True)
    bias = cfg.bool("bias", False)
    ffn = cfg.int("ffn_hidden_size", 4 * hidden)
    tie = _tie(cfg, True)
    num_ln = cfg.int("num_ln_in_parallel_attn", None)
    if num_ln is None and new_arch:
        num_ln = 2

    if new_arch:
        kv = _kv_heads(cfg, heads, "num_kv_heads", None)
        qkv_out = (heads + 2 * kv) * head_dim
    elif multi_query:
        kv = 1
        qkv_out = hidden + 2 * head_dim
    else:
        kv = heads
        qkv_out = 3 * hidden

    # Norm modules built by FalconDecoderLayer.__init__
    if not parallel:
        norms = 2  # input_layernorm + post_attention_layernorm
    elif num_ln == 2:
        norms = 2  # ln_attn + ln_mlp
    else:
        norms = 1  # input_layernorm shared by attention and MLP
    # The MLP reads the attention's normed input when no separate MLP norm is used
    mlp_shares_input = (not new_arch and parallel) or (new_arch and parallel and num_ln == 1)
    mlp_src = "attn_in" if mlp_shares_input else "mlp_in"

    linears = [
        _lin("query_key_value", "attention", hidden, qkv_out, bias, layers, "attn_in"),
        _lin("dense", "attention", hidden, hidden, bias, layers, "attn_out"),
        _lin("dense_h_to_4h", "mlp", hidden, ffn, bias, layers, mlp_src),
        _lin("dense_4h_to_h", "mlp", ffn, hidden, bias, layers, "mlp_mid"),
    ]
    embedding, lm_head = _embeddings(vocab, hidden, tie)
    return ArchSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=ffn,
        mlp_gated=False,
        norm="layernorm",
        norms_per_layer=norms,
        parallel_attn_mlp=new_arch or parallel,
        tie_word_embeddings=tie,
        lm_head_bias=False,
        linears=tuple(linears),
        embedding_params=embedding,
        lm_head_params=lm_head,
        norm_params=(norms * layers + 1) * 2 * hidden,
        max_position_embeddings=cfg.max_position_embeddings(),
    )


def _gpt_neox(cfg: _Cfg, model_type: str) -> ArchSpec:
    """GPT-NeoX / Pythia: fused query_key_value, two LayerNorms; parallel residual reads two different norms."""
    vocab = cfg.int("vocab_size")
    hidden = cfg.int("hidden_size")
    layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    intermediate = cfg.int("intermediate_size")
    _require_divisible(cfg, hidden, heads)
    attn_bias = cfg.bool("attention_bias", True)
    parallel = cfg.bool("use_parallel_residual", True)
    tie = _tie(cfg, False)
    linears = [
        _lin("query_key_value", "attention", hidden, 3 * hidden, attn_bias, layers, "attn_in"),
        _lin("dense", "attention", hidden, hidden, attn_bias, layers, "attn_out"),
        _lin("dense_h_to_4h", "mlp", hidden, intermediate, True, layers, "mlp_in"),
        _lin("dense_4h_to_h", "mlp", intermediate, hidden, True, layers, "mlp_mid"),
    ]
    embedding, lm_head = _embeddings(vocab, hidden, tie)
    return ArchSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=intermediate,
        mlp_gated=False,
        norm="layernorm",
        norms_per_layer=2,
        parallel_attn_mlp=parallel,
        tie_word_embeddings=tie,
        lm_head_bias=False,
        linears=tuple(linears),
        embedding_params=embedding,
        lm_head_params=lm_head,
        norm_params=(2 * layers + 1) * 2 * hidden,
        max_position_embeddings=cfg.max_position_embeddings(),
    )


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[_Cfg, str], ArchSpec]] = {
    **{mt: _llama_like for mt in _LLAMA_LIKE},
    "phi": _phi,
    "falcon": _falcon,
    "gpt_neox": _gpt_neox,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted([*_BUILDERS, "gemma3"]))


def arch_from_config(config: Mapping[str, Any]) -> ArchSpec:
    """The normalised architecture of a Hugging Face causal-LM ``config.json`` dict (see
    :func:`_arch_from_config`); a size no model has is an error naming the field, too."""
    from pydantic import ValidationError

    try:
        return _arch_from_config(config)
    except ValidationError as err:  # ArchSpec's own bounds (schema.ArchSpec._bounded)
        raise from_validation(err, default_field="config") from None


def _arch_from_config(config: Mapping[str, Any]) -> ArchSpec:
    """The normalised architecture of a Hugging Face causal-LM ``config.json`` dict.

    Raises :class:`FtAdvisorError` naming the offending field when a field is
    missing or malformed, or when ``model_type`` is not supported.
    """
    if not isinstance(config, Mapping):
        raise FtAdvisorError("config", f"must be a JSON object (config.json contents), got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None:
        raise FtAdvisorError("model_type", "missing from the config", SUPPORTED_MODEL_TYPES)
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        # Any other family: transformers' own modelling code on the meta device (torch is imported
        # on that path only; ftadvisor.derive refuses remote code, encoders and absurd sizes).
        from ftadvisor.derive import derive_arch

        return derive_arch(config, analytic_types=SUPPORTED_MODEL_TYPES)

    if model_type == "gemma3":
        # Multimodal Gemma 3: describe the language model only (text_config built as gemma3_text).
        text = config.get("text_config")
        if text is None:
            raise FtAdvisorError("text_config", "missing; gemma3 configs describe the language model there")
        if not isinstance(text, Mapping):
            raise FtAdvisorError("text_config", f"must be a JSON object, got {type(text).__name__}")
        text = dict(text)
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
            text["tie_word_embeddings"] = config["tie_word_embeddings"]
        arch = _llama_like(_Cfg(text, prefix="text_config."), "gemma3_text")
        return arch.model_copy(update={"model_type": "gemma3"})

    return _BUILDERS[model_type](_Cfg(config), model_type)
