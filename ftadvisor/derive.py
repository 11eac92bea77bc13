"""The generic architecture path: any decoder-only model transformers can build.

For a ``model_type`` outside the analytic families of :mod:`ftadvisor.architecture`, the model
is built from transformers' own modelling code on the meta device (shapes only, no memory, no
weights), its modules are walked, and the same :class:`~ftadvisor.schema.ArchSpec` the analytic
families produce is filled in: every linear with its role, norms, embeddings, routed and shared
experts, routers, and the kind of token mixer of each layer (attention: MHA/GQA/MQA/MLA,
sliding or global; linear attention; state-space; short convolution).

torch and transformers are imported inside the functions of this path only; the derived
description is cached as JSON (:func:`cache_dir`, next to the Hub cache), and descriptions of
shipped profiles live in ``profiles/derived`` (:func:`shipped_dir`); both are read without
importing either. Run it by hand::

    python -c "import json, ftadvisor.derive as d; print(d.derive_arch(json.load(open('config.json'))))"
    python -m ftadvisor.derive profiles/models/<id>.yaml   # ship a profile's description

Measured (transformers 5.24, torch 2.13 CPU, 2 cores, load < 1): a fresh process takes ~4 s
cold for Qwen3-8B, Llama-4-Maverick (400B) or DeepSeek-V3 (671B) alike: 1.4 s importing torch and
transformers, ~1.5 s of transformers' first model build (lazy imports), then 0.07 s to build the
400B/671B model on the meta device and 0.02 s to walk it; 0.3 s from the cache, without torch.
(On the same machine under load 5, 6-9 s cold and 0.3-0.7 s cached.)

Rules, in order (each names its source in transformers 5, ``src/transformers/``):

1. Sizes are checked before anything is built (:func:`check_sizes`): a config with 10^10 layers
   would otherwise make ``PretrainedConfig`` build a 10^10-long ``layer_types`` list.
2. The config is built with ``AutoConfig.for_model`` (models/auto/configuration_auto.py); a
   multimodal wrapper is reduced to its text model (``PretrainedConfig.get_text_config``), as the
   analytic path does for Gemma 3.
3. ``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` builds the model.
4. The decoder stack is the ``nn.ModuleList`` holding most parameters; each parameter (tied ones
   once: ``nn.Module.parameters`` deduplicates by identity) goes to exactly one bucket, so the
   total equals transformers' ``sum(p.numel())`` by construction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown
from ftadvisor.schema import ArchSpec, LinearSpec
from ftadvisor.validate import ARCH_INT_LIMIT, ARCH_LIMITS

__all__ = ["GENERIC_LIMITS", "cache_dir", "cache_path", "check_sizes", "derive_arch", "derived_note", "shipped_dir",
           "shipped_path", "write_shipped"]

CACHE_FORMAT = 1
"""Bumped when the derived JSON changes shape (part of the cache key)."""

# Bounds of the generic path, tighter than ARCH_LIMITS because here every layer becomes Python
# objects: building Llama-3.1-8B's layer on the meta device costs ~1.7 ms, so 1,024 layers take
# ~2 s (measured, transformers 5.24, 2-core CPU) and 10,000 would take ~20 s. The deepest
# published decoders have 126 (Llama-3.1-405B) to 160 layers.
GENERIC_LIMITS: dict[str, int] = {
    "num_hidden_layers": 1_024,
    "n_layer": 1_024,
    "n_layers": 1_024,
    "num_layers": 1_024,
    "num_decoder_layers": 1_024,
}
# Fields whose value is a length or count of things that get built, and their bound (experts are
# fused 3-D parameters in transformers 5, but older families still build one module per expert).
_COUNT_KEYS = ("expert", "layers", "n_layer", "heads", "n_head")
_COUNT_LIMIT = 65_536
_LIST_LIMIT = 1_024 * 8
_MAX_DEPTH = 8


def derived_note(version: str) -> str:
    """The words an estimate shows for this path."""
    return f"architecture derived from transformers {version} modelling code (meta device)"


# --------------------------------------------------------------------------------------------
# 1. sizes before anything is built
# --------------------------------------------------------------------------------------------


def check_sizes(config: Mapping[str, Any], prefix: str = "", depth: int = 0) -> None:
    """Every integer in the config within what a model can have, layer counts within
    :data:`GENERIC_LIMITS`, lists short; an error names the field (``text_config.num_hidden_layers``)."""
    if depth > _MAX_DEPTH:
        raise FtAdvisorError(prefix.rstrip(".") or "config", f"nests deeper than {_MAX_DEPTH} levels")
    for key, value in config.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str):
            raise FtAdvisorError(prefix.rstrip(".") or "config", f"has a non-text key {shown(key)}")
        if isinstance(value, Mapping):
            check_sizes(value, name + ".", depth + 1)
        elif isinstance(value, (list, tuple)):
            if len(value) > _LIST_LIMIT:
                raise FtAdvisorError(name, f"lists {len(value):,} items, more than any model config has "
                                     f"(at most {_LIST_LIMIT:,})")
            for item in value:
                if isinstance(item, Mapping):
                    check_sizes(item, name + ".", depth + 1)
                elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > ARCH_INT_LIMIT:
                    raise FtAdvisorError(name, f"holds {shown(item)}, larger than any model has")
        elif isinstance(value, int) and not isinstance(value, bool):
            if key in GENERIC_LIMITS and value > GENERIC_LIMITS[key]:
                raise FtAdvisorError(name, f"{shown(value)} layers is more than any model has (the generic "
                                     f"path builds at most {GENERIC_LIMITS[key]:,}; published decoders have <= 160)")
            limit = ARCH_LIMITS.get(key)
            if limit is None:
                limit = _COUNT_LIMIT if any(k in key for k in _COUNT_KEYS) else ARCH_INT_LIMIT
            if abs(value) > limit:
                raise FtAdvisorError(name, f"{shown(value)} is larger than any model has (at most {limit:,})")
        elif isinstance(value, float) and value != value:
            raise FtAdvisorError(name, "is NaN")


# --------------------------------------------------------------------------------------------
# cache: $HF_HUB_CACHE/../ftadvisor-derived/<sha256>.json
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$FTADVISOR_DERIVED_CACHE``, else ``ftadvisor-derived`` next to the Hugging Face Hub cache
    (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, as
    huggingface_hub/constants.py resolves it)."""
    if os.environ.get("FTADVISOR_DERIVED_CACHE"):
        return Path(os.environ["FTADVISOR_DERIVED_CACHE"]).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"]).expanduser()
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
        hub = Path(home).expanduser() / "hub"
    return hub.parent / "ftadvisor-derived"


def _transformers_version() -> str | None:
    """The installed transformers version, read from its metadata (no import)."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def cache_path(config: Mapping[str, Any], version: str) -> Path:
    """Where the description of ``config`` built by transformers ``version`` is cached."""
    text = json.dumps(config, sort_keys=True, default=str)
    key = hashlib.sha256(f"{CACHE_FORMAT}|{version}|{text}".encode()).hexdigest()[:32]
    return cache_dir() / f"{key}.json"


def shipped_dir() -> Path:
    """Derived descriptions shipped with the profiles (``profiles/derived``), found as
    ftadvisor.profiles.profiles_dir finds the profiles: ``$FTADVISOR_PROFILES``, the repository's
    ``profiles/``, or the copy packaged in the wheel. A shipped profile of a non-analytic family
    loads from here without torch (``import ftadvisor`` and a profile estimate stay light)."""
    env = os.environ.get("FTADVISOR_PROFILES")
    if env:
        return Path(env) / "derived"
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "profiles", here / "_profiles"):
        if cand.is_dir():
            return cand / "derived"
    return here.parent / "profiles" / "derived"


def shipped_path(config: Mapping[str, Any]) -> Path:
    """The shipped description of ``config`` (keyed by the config alone, not the transformers version)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return shipped_dir() / f"{hashlib.sha256(f'{CACHE_FORMAT}|{text}'.encode()).hexdigest()[:32]}.json"


def write_shipped(config: Mapping[str, Any]) -> Path:
    """Derive ``config`` now and store it under :func:`shipped_dir` (run for each shipped profile of a
    non-analytic family: ``python -m ftadvisor.derive profiles/models/<id>.yaml``)."""
    path = shipped_path(config)
    arch = derive_arch(config, use_cache=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(arch.model_dump(mode="json"), indent=1) + "\n")
    return path


def _read_cache(path: Path) -> ArchSpec | None:
    try:
        return ArchSpec.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):  # absent, unreadable, or from another version: derive again
        return None


def _write_cache(path: Path, arch: ArchSpec) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(arch.model_dump(mode="json"), indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next call a rebuild
        pass


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def derive_arch(config: Mapping[str, Any], *, analytic_types: tuple[str, ...] = (),
                use_cache: bool = True) -> ArchSpec:
    """The :class:`ArchSpec` of a causal-LM ``config.json`` dict, from transformers' modelling code.

    ``analytic_types`` only words the error for a model_type transformers does not know.
    Raises :class:`FtAdvisorError` (one line naming the field) for remote code, unknown or
    encoder families, absurd sizes, configs transformers refuses, and pieces it cannot model.
    """
    if not isinstance(config, Mapping):
        raise FtAdvisorError("config", f"must be a JSON object (config.json contents), got {type(config).__name__}")
    check_sizes(config)
    shipped = _read_cache(shipped_path(config)) if use_cache else None
    if shipped is not None:  # shipped with the profiles: no torch, not even transformers needed
        return shipped
    version = _transformers_version()
    model_type = config.get("model_type")
    choices = [*analytic_types, f"any decoder-only model_type transformers {version or '(not installed)'} can build"]
    if version is None:
        raise FtAdvisorError("model_type", f"{shown(model_type)} is not an analytic family, and the generic path "
                             "needs transformers and torch (pip install -r requirements/train.txt)", analytic_types)
    path = cache_path(config, version)
    if use_cache:
        cached = _read_cache(path)
        if cached is not None:
            return cached
    # a deep copy: config classes rewrite nested fields in place (rope_scaling -> rope_parameters)
    arch = _derive(copy.deepcopy(dict(config)), model_type, version, choices)
    if use_cache:
        _write_cache(path, arch)
    return arch


def _derive(config: dict[str, Any], model_type: Any, version: str, choices: list[str]) -> ArchSpec:
    try:
        import torch
        import transformers
    except ImportError as err:
        raise FtAdvisorError("model_type", f"{shown(model_type)} needs the generic path, which needs torch and "
                             f"transformers ({err.name} is missing)", choices[:-1]) from None
    hf_config = _build_config(config, model_type, transformers, choices)
    model = _build_model(hf_config, transformers, torch)
    return _describe(model, hf_config, str(model_type), version, torch)


# --------------------------------------------------------------------------------------------
# 2. config
# --------------------------------------------------------------------------------------------


def _refuse_unknown(model_type: Any, config: Mapping[str, Any], mapping, version: str, choices) -> None:
    if not isinstance(model_type, str) or not model_type:
        raise FtAdvisorError("model_type", f"missing or not a name: {shown(model_type)}", choices)
    if model_type in mapping:
        return
    if "auto_map" in config:
        # Remote code: the config points at Python files in the model repository
        # (transformers' trust_remote_code path, dynamic_module_utils.py). ftadvisor never runs them.
        raise FtAdvisorError("auto_map", f"model_type {shown(model_type)} is defined by the repository's own code, "
                             "which only trust_remote_code would run; ftadvisor never runs it (not even with "
                             "--trust-remote-code), and transformers has no built-in family of that name")
    raise FtAdvisorError("model_type", f"{shown(model_type)} is unknown to transformers {version} (a newer "
                         "transformers, or the repository's own code via trust_remote_code, would be needed)",
                         choices)


# torch's words for config fields in the errors modelling code raises (torch/nn/modules/sparse.py
# Embedding.__init__: "Padding_idx must be within num_embeddings").
_ERROR_WORDS = {"padding_idx": "pad_token_id", "num_embeddings": "vocab_size", "embed_dim": "hidden_size"}


def _field_of(err: BaseException, config: Mapping[str, Any]) -> str:
    """The config field a transformers exception is about: a key of the config named in its text."""
    import re

    text = str(err)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    words |= {_ERROR_WORDS[w.lower()] for w in words if w.lower() in _ERROR_WORDS}
    for key in sorted(config, key=len, reverse=True):
        if key in words:
            return key
    return "config"


def _first_line(err: BaseException) -> str:
    """The exception's text on one line (validators put the reason on the second), at most 300 characters."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return (text or type(err).__name__)[:300]


def _build_config(config: dict[str, Any], model_type: Any, transformers, choices):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    version = transformers.__version__
    _refuse_unknown(model_type, config, CONFIG_MAPPING, version, choices)
    # Encoders (BERT's LMHead "decoder" mode) and encoder-decoders are not what ftadvisor plans.
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        raise FtAdvisorError("model_type", f"{shown(model_type)} is an encoder or encoder-decoder family; "
                             "ftadvisor plans decoder-only causal LMs", choices)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "architectures",
                                                           "transformers_version", "_name_or_path")}
    transformers.logging.set_verbosity_error()
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as err:  # noqa: BLE001 - whatever the config class refuses becomes one line
        field = _field_of(err, fields)
        raise FtAdvisorError(field, f"transformers {version} cannot build this config: {_first_line(err)}") from None
    text = hf_config.get_text_config()
    if text is not hf_config and getattr(text, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        hf_config = text  # a multimodal wrapper: plan the language model (vision towers are left out)
    if getattr(hf_config, "is_encoder_decoder", False):
        raise FtAdvisorError("is_encoder_decoder", "encoder-decoder models are not planned; ftadvisor plans "
                             "decoder-only causal LMs", choices)
    if hf_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise FtAdvisorError("model_type", f"transformers {version} has no causal-LM class for "
                             f"{shown(hf_config.model_type)}", choices)
    _check_built_sizes(hf_config)
    return hf_config


def _check_built_sizes(hf_config) -> None:
    """The layer count after the config class filled its defaults (also for a text sub-config)."""
    layers = getattr(hf_config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > GENERIC_LIMITS["num_hidden_layers"]:
        raise FtAdvisorError("num_hidden_layers", f"{layers:,} is larger than any model has "
                             f"(at most {GENERIC_LIMITS['num_hidden_layers']:,})")


# --------------------------------------------------------------------------------------------
# 3. model on the meta device
# --------------------------------------------------------------------------------------------


def _build_model(hf_config, transformers, torch):
    try:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(hf_config)
    except Exception as err:  # noqa: BLE001 - a config the modelling code cannot build
        field = _field_of(err, hf_config.to_dict())
        raise FtAdvisorError(field, f"transformers {transformers.__version__} cannot build this model: "
                             f"{_first_line(err)}") from None


# --------------------------------------------------------------------------------------------
# 4. walking the modules
# --------------------------------------------------------------------------------------------

# How a decoder layer's child is recognised: by the words of its attribute and class names
# (``GptOssMLP`` -> gpt, oss, mlp; ``linear_attn`` -> linear, attn). Token mixers that are not
# softmax attention: state-space (Mamba, Mamba-2: models/mamba*/; hybrids' ``mamba``/``mixer``
# blocks), gated delta-rule and other linear attention (qwen3_next GatedDeltaNet, minimax lightning
# attention, kimi_linear), short convolutions (lfm2 ShortConv).
_LINEAR_ATTN_WORDS = {"deltanet", "delta", "lightning", "gla", "retention", "kda"}
_SSM_WORDS = {"mamba", "mamba2", "ssm", "rwkv", "xlstm", "recurrent", "rglru", "mixer"}
_CONV_WORDS = {"conv", "shortconv"}
_ATTN_WORDS = {"attn", "attention"}
_MLP_WORDS = {"mlp", "ffn", "moe", "expert", "experts", "feedforward", "ff"}
_OUT_WORDS = {"o", "out", "down", "dense", "wo", "w2", "output"}


def _words(*names: str) -> set[str]:
    """Lower-case words of attribute names (split at ``_`` and ``.``) and class names (CamelCase)."""
    import re

    out: set[str] = set()
    for name in names:
        for part in re.split(r"[_.]", name):
            out.add(part.lower())
            spaced = re.sub(r"(MLP|MoE|Moe)", r" \1 ", part)  # NemotronHMLP -> Nemotron, H, MLP
            for chunk in spaced.split():
                out.update(w.lower() for w in ([chunk] if chunk in ("MLP", "MoE", "Moe") else
                                                re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", chunk)))
    if {"feed", "forward"} <= out:
        out.add("feedforward")
    return out


def _kind_of_block(name: str, cls: str) -> str | None:
    """``attention``, ``linear_attention``, ``ssm``, ``conv``, ``mlp`` or None for a layer's child: the
    class name decides first (nemotron_h calls every block ``mixer``), then the attribute name."""
    return _kind_of_words(_words(cls)) or _kind_of_words(_words(name))


def _kind_of_words(words: set[str]) -> str | None:
    if words & _LINEAR_ATTN_WORDS or ("linear" in words and words & _ATTN_WORDS):
        return "linear_attention"
    if words & _SSM_WORDS:
        return "ssm"
    if words & _CONV_WORDS:
        return "conv"
    if words & _ATTN_WORDS:
        return "attention"
    if words & _MLP_WORDS:
        return "mlp"
    return None


_PREFIX = {"attention": "attn", "linear_attention": "mixer", "ssm": "mixer", "conv": "mixer", "mlp": "mlp",
           "shared": "shared"}
_GROUP = {"attention": "attention", "linear_attention": "mixer", "ssm": "mixer", "conv": "mixer", "mlp": "mlp",
          "shared": "shared_expert"}
_OUT_LABEL = {"attn": "attn_out", "mixer": "mixer_out", "mlp": "mlp_mid", "shared": "shared_mid"}


class _Walk:
    """Parameters sorted into buckets, linears aggregated over layers."""

    def __init__(self, torch, hidden: int):
        self.nn = torch.nn
        self.hidden = hidden
        self.seen: set[int] = set()
        self.linears: dict[tuple, int] = {}  # (name, group, in, out, bias, source) -> count
        self.norm_params = 0
        self.other_params = 0
        self.norm_modules_per_layer: list[int] = []
        self.norm_kinds: set[str] = set()
        self.experts: list[tuple[int, int]] = []  # (num experts, expert intermediate) per MoE layer
        self.shared_widths: list[int] = []
        self.dense_widths: list[int] = []
        self.gated: list[bool] = []
        self.kinds: dict[str, int] = {}
        self.missing: list[str] = []

    # -- buckets ---------------------------------------------------------------------------
    def claim(self, p) -> int:
        """numel of a parameter not yet counted (0 when tied to one already counted)."""
        if id(p) in self.seen:
            return 0
        self.seen.add(id(p))
        return p.numel()

    def add_linear(self, name: str, group: str, fin: int, fout: int, bias: bool, count: int, src: str) -> None:
        key = (name, group, fin, fout, bias, src)
        self.linears[key] = self.linears.get(key, 0) + count

    def is_linear(self, m) -> bool:
        """``nn.Linear``, or transformers' ``Conv1D`` (pytorch_utils.py, GPT-2 style: a linear layer
        whose weight is stored (in, out)); peft adapts both."""
        return isinstance(m, self.nn.Linear) or (type(m).__name__ == "Conv1D" and m.weight.dim() == 2)

    def fin(self, m) -> int:
        return m.in_features if isinstance(m, self.nn.Linear) else m.weight.shape[0]

    def fout(self, m) -> int:
        return m.out_features if isinstance(m, self.nn.Linear) else m.weight.shape[1]

    def is_norm(self, mod) -> bool:
        cls = type(mod).__name__.lower()
        return "norm" in cls and not self.is_linear(mod)

    def take_norm(self, mod) -> int:
        n = sum(self.claim(p) for p in mod.parameters(recurse=False))
        self.norm_params += n
        self.norm_kinds.add("rmsnorm" if "rms" in type(mod).__name__.lower() else "layernorm")
        return n

    def take_other(self, mod) -> None:
        self.other_params += sum(self.claim(p) for p in mod.parameters(recurse=False))

    # -- one decoder layer -------------------------------------------------------------------
    def layer(self, layer, index: int, layer_types: list[str] | None) -> None:
        norms = 0
        mixers: set[str] = set()
        for cname, child in layer.named_children():
            if self.is_norm(child):
                if self.take_norm(child) and self._width(child) == self.hidden:
                    norms += 1
                continue
            if self.is_linear(child):  # a linear straight on the layer (rare): its own block
                self._block_linears(child, cname, "mlp", "")
                continue
            kind = _kind_of_block(cname, type(child).__name__)
            if kind is None:
                if sum(p.numel() for p in child.parameters()):
                    self.missing.append(f"{cname} ({type(child).__name__})")
                self._claim_all_other(child)
                continue
            if kind == "mlp":
                self._mlp_block(child, cname)
                continue
            self._block(child, cname, kind)
            if kind == "attention":
                # sliding-window vs global layers as the config lists them (PretrainedConfig.layer_types)
                lt = str(layer_types[index]) if layer_types and index < len(layer_types) else ""
                kind = "sliding_attention" if ("sliding" in lt or "local" in lt) else "full_attention"
            mixers.add(kind)
        self.take_other(layer)
        self.norm_modules_per_layer.append(norms)
        kind = "+".join(sorted(mixers)) or "mlp_only"  # parallel hybrids (falcon_h1): attention+ssm
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def _width(self, norm) -> int:
        w = getattr(norm, "weight", None)
        return w.shape[-1] if w is not None and w.dim() >= 1 else 0

    def _claim_all_other(self, mod) -> None:
        for sub in mod.modules():
            if self.is_norm(sub):
                self.take_norm(sub)
            else:
                self.take_other(sub)

    # -- a mixer block (attention, linear attention, SSM, convolution) ------------------------
    def _block(self, block, bname: str, kind: str) -> None:
        prefix, group = _PREFIX[kind], _GROUP[kind]
        self._block_linears(block, bname, group, prefix)

    def _block_linears(self, block, bname: str, group: str, prefix: str) -> None:
        """Linears of one block with their input labels: the block's output linear (the last one
        writing the hidden width) reads ``<prefix>_out``/``_mid``; the others reading the hidden width
        read ``<prefix>_in`` (q/k/v all read the normed residual); the rest read their own input."""
        lins = [(n, m) for n, m in block.named_modules() if self.is_linear(m)]
        outs = [n for n, m in lins if self.fout(m) == self.hidden]
        named_out = [n for n in outs if _words(n.rsplit(".", 1)[-1]) & _OUT_WORDS]
        out_name = (named_out or outs or [None])[-1]
        for n, m in lins:
            leaf = (n.rsplit(".", 1)[-1] if n else bname)
            bias = m.bias is not None
            for p in m.parameters(recurse=False):
                self.claim(p)
            if not prefix:
                src = f"{leaf}_in"
            elif n == out_name:
                src = _OUT_LABEL[prefix]
            elif self.fin(m) == self.hidden:
                src = f"{prefix}_in"
            else:
                src = f"{prefix}.{leaf}_in"
            self.add_linear(leaf, group, self.fin(m), self.fout(m), bias, 1, src)
        for sub in block.modules():
            if self.is_linear(sub):
                continue
            if self.is_norm(sub):
                self.take_norm(sub)
            else:
                self.take_other(sub)  # conv weights, A_log, dt_bias, attention sinks ...

    # -- an MLP or mixture-of-experts block -------------------------------------------------------
    def _mlp_block(self, block, bname: str) -> None:
        fused = self._fused_experts(block)
        listed = self._listed_experts(block)
        if fused or listed:
            self._moe(block, fused, listed)
        else:
            self._dense(block, bname, "mlp", self.dense_widths)

    def _dense(self, block, bname: str, prefix: str, widths: list[int]) -> None:
        lins = [m for m in block.modules() if self.is_linear(m)]
        ins = [m for m in lins if self.fin(m) == self.hidden]
        outs = [m for m in lins if self.fout(m) == self.hidden]
        if outs:
            width = self.fin(outs[-1])
            widths.append(width)
            # gated (SwiGLU/GeGLU) when two linears read the input, or one writes twice the width
            self.gated.append(len(ins) >= 2 or any(self.fout(m) == 2 * width for m in ins))
        self._block_linears(block, bname, _GROUP[prefix], prefix)

    def _fused_experts(self, block) -> list:
        """Modules holding experts as 3-D parameters (transformers 5's fused ``experts``)."""
        conv = self.nn.modules.conv._ConvNd  # a convolution's weight is 3-D too
        return [m for m in block.modules()
                if not isinstance(m, conv) and any(p.dim() == 3 for p in m.parameters(recurse=False))]

    def _listed_experts(self, block):
        """An ``nn.ModuleList`` of expert MLPs (families not yet fused)."""
        for n, m in block.named_modules():
            if isinstance(m, self.nn.ModuleList) and "expert" in n.rsplit(".", 1)[-1].lower() and len(m):
                return m
        return None

    def _moe(self, block, fused: list, listed) -> None:
        h = self.hidden
        num, width = 0, 0
        if fused:
            for mod in fused:
                num, width = self._fused_linears(mod, num, width)
        else:
            num = len(listed)
            for n, m in listed[0].named_modules():
                if self.is_linear(m):
                    src = "expert_mid" if self.fout(m) == h else "expert_in"
                    if self.fout(m) == h:
                        width = self.fin(m)
                    self.add_linear(n.rsplit(".", 1)[-1], "expert", self.fin(m), self.fout(m),
                                    m.bias is not None, num, src)
            for e in listed:  # counted above as experts[0] x num: claim each expert's linears once
                for sub in e.modules():
                    if self.is_norm(sub):
                        self.take_norm(sub)
                    elif self.is_linear(sub):
                        for p in sub.parameters(recurse=False):
                            self.claim(p)
                    else:
                        self.take_other(sub)
        self.experts.append((num, width))
        # shared experts: the child blocks whose name says so (a shared-expert gate is a Linear: a router)
        for n, m in block.named_children():
            if "shared" in n.lower() and not self.is_linear(m):
                self._dense(m, n, "shared", self.shared_widths)
        # routers: a Linear(hidden, experts) or Linear(hidden, 1) gate, or transformers 5's TopKRouter
        # modules holding a bare (experts, hidden) weight
        for n, m in block.named_modules():
            own = list(m.parameters(recurse=False))
            if not own or all(id(p) in self.seen for p in own) or self.is_norm(m):
                continue
            leaf = n.rsplit(".", 1)[-1] or "gate"
            if self.is_linear(m):
                if self.fin(m) == h and self.fout(m) in (num, 1):
                    self.add_linear(leaf, "router", h, self.fout(m), m.bias is not None, 1, "router_in")
                else:  # a dense branch next to the experts
                    src = "mlp_in" if self.fin(m) == h else f"mlp.{leaf}_in"
                    self.add_linear(leaf, "mlp", self.fin(m), self.fout(m), m.bias is not None, 1, src)
                for p in own:
                    self.claim(p)
                continue
            w = getattr(m, "weight", None)
            if w is not None and tuple(w.shape) == (num, h):
                bias = getattr(m, "bias", None)
                has_bias = bias is not None and tuple(bias.shape) == (num,)
                self.add_linear(leaf, "router", h, num, has_bias, 1, "router_in")
                self.claim(w)
                if has_bias:
                    self.claim(bias)
        # whatever remains (routing correction biases kept as parameters, scales ...)
        for m in block.modules():
            if self.is_norm(m):
                self.take_norm(m)
            else:
                self.take_other(m)

    def _fused_linears(self, mod, num: int, width: int) -> tuple[int, int]:
        """Fused expert parameters as per-expert linears. Layouts differ by family ((E, out, in) in
        deepseek_v3 experts, (E, in, out) in gpt_oss), so the side equal to the hidden width tells
        input from output: an up/gate weight reads the hidden width, a down weight writes it."""
        h = self.hidden
        params = dict(mod.named_parameters(recurse=False))
        weights = {n: p for n, p in params.items() if p.dim() == 3}
        down = {n: p for n, p in weights.items() if _words(n) & _OUT_WORDS}
        up = {n: p for n, p in weights.items() if n not in down}
        if not down or not up:
            raise FtAdvisorError("experts", f"cannot tell the expert up and down projections apart in "
                                 f"{type(mod).__name__} ({', '.join(weights)}): the generic path cannot model it")
        for n, p in down.items():
            e, a, b = p.shape
            num = e
            width = b if a == h else a
        for n, p in {**up, **down}.items():
            e, a, b = p.shape
            is_down = n in down
            other = (b if a == h else a)
            fin, fout = (other, h) if is_down else (h, other)
            bias = next((params[bn] for bn in params if bn != n and bn.startswith(n) and params[bn].dim() == 2), None)
            self.claim(p)
            if bias is not None:
                self.claim(bias)
            src = "expert_mid" if is_down else "expert_in"
            if not is_down and fout == 2 * width:  # fused gate and up halves (gate_up_proj)
                self.add_linear("gate_proj", "expert", h, width, bias is not None, e, src)
                self.add_linear("up_proj", "expert", h, width, bias is not None, e, src)
                self.gated.append(True)
            else:
                self.add_linear(n.removesuffix("_weight"), "expert", fin, fout, bias is not None, e, src)
        for p in mod.parameters(recurse=False):  # scales and anything else fused in the module
            self.other_params += self.claim(p)
        return num, width


def _stack(model, torch):
    """The decoder layers: the ModuleList holding most parameters."""
    best, best_n = None, -1
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod):
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = mod, n
    if best is None:
        raise FtAdvisorError("model_type", f"{type(model).__name__} has no list of layers the generic path can read")
    return best


def _cfg_int(hf_config, *names: str, default: int | None = None) -> int | None:
    for n in names:
        v = getattr(hf_config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


def _describe(model, hf_config, model_type: str, version: str, torch) -> ArchSpec:
    emb_in = model.get_input_embeddings()
    emb_out = model.get_output_embeddings()
    vocab, hidden = emb_in.weight.shape
    total = sum(p.numel() for p in model.parameters())  # deduplicated by identity (tied weights once)
    walk = _Walk(torch, hidden)

    embedding = walk.claim(emb_in.weight)
    tie = emb_out is not None and emb_out.weight is emb_in.weight
    lm_head, lm_head_bias = 0, False
    if emb_out is not None:
        lm_head = walk.claim(emb_out.weight)
        if getattr(emb_out, "bias", None) is not None:
            lm_head += walk.claim(emb_out.bias)
            lm_head_bias = True

    layers = _stack(model, torch)
    layer_types = getattr(hf_config, "layer_types", None)
    layer_types = list(layer_types) if isinstance(layer_types, (list, tuple)) else None
    for i, layer in enumerate(layers):
        walk.layer(layer, i, layer_types)
    if walk.missing:
        raise FtAdvisorError("model_type", f"{model_type}: the generic path cannot tell what "
                             f"{', '.join(sorted(set(walk.missing))[:3])} in its decoder layers is")
    # outside the layers: final norm, position embeddings, anything else
    for mod in model.modules():
        if walk.is_norm(mod):
            walk.take_norm(mod)
        else:
            walk.take_other(mod)
    assert sum(walk.linears[k] * (k[2] * k[3] + (k[3] if k[4] else 0)) for k in walk.linears) + embedding + \
        lm_head + walk.norm_params + walk.other_params == total, "every parameter in exactly one bucket"

    num_layers = len(layers)
    heads = _cfg_int(hf_config, "num_attention_heads", "n_head", "num_heads", default=1)
    kv = _cfg_int(hf_config, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads)
    if getattr(hf_config, "multi_query", False) is True:
        kv = 1
    head_dim = _cfg_int(hf_config, "head_dim", default=max(1, hidden // max(heads, 1)))
    if _cfg_int(hf_config, "kv_lora_rank"):  # MLA: a query/key head is nope + rope wide (DeepSeek-V2, eq. 17)
        head_dim = _cfg_int(hf_config, "qk_head_dim", default=head_dim)
    moe = {}
    if walk.experts:
        num, width = max(walk.experts)
        top_k = _cfg_int(hf_config, "num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k",
                         "router_topk", "moe_k", "num_selected_experts")
        if top_k is None:
            raise FtAdvisorError("num_experts_per_tok", f"{model_type}: the generic path found {num} experts per "
                                 "layer but no top-k field in the config")
        moe = dict(num_experts=num, experts_per_token=min(top_k, num), num_moe_layers=len(walk.experts),
                   moe_intermediate_size=width,
                   shared_expert_intermediate_size=max(walk.shared_widths, default=0))
    linears = tuple(
        LinearSpec(name=k[0], group=k[1], in_features=k[2], out_features=k[3], bias=k[4], count=c, input_source=k[5])
        for k, c in walk.linears.items())
    norms = max(1, max(walk.norm_modules_per_layer, default=1))
    kinds = dict(walk.kinds)
    variant = _attention_variant(hf_config, heads, kv)
    kinds = {k.replace("full_attention", f"full_attention:{variant}"): n for k, n in kinds.items()}
    max_pos = getattr(hf_config, "max_position_embeddings", None)
    return ArchSpec(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=num_layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=max(walk.dense_widths, default=0),
        mlp_gated=any(walk.gated) if walk.gated else True,
        norm="rmsnorm" if "rmsnorm" in walk.norm_kinds or not walk.norm_kinds else "layernorm",
        norms_per_layer=norms,
        parallel_attn_mlp=False,
        tie_word_embeddings=tie,
        lm_head_bias=lm_head_bias,
        linears=linears,
        embedding_params=embedding,
        lm_head_params=lm_head,
        norm_params=walk.norm_params,
        other_params=walk.other_params,
        max_position_embeddings=max_pos if isinstance(max_pos, int) and max_pos > 0 else None,
        layer_kinds=tuple(sorted(kinds.items())),
        derived_by=derived_note(version),
        **moe,
    )


def _attention_variant(hf_config, heads: int, kv: int) -> str:
    """MLA when the config has a compressed KV rank (DeepSeek-V2 section 2.1.2: kv_lora_rank);
    else MHA / GQA / MQA from the key/value head count (Ainslie et al. 2023, GQA)."""
    if _cfg_int(hf_config, "kv_lora_rank"):
        return "mla"
    if kv == heads:
        return "mha"
    return "mqa" if kv == 1 else "gqa"


if __name__ == "__main__":  # python -m ftadvisor.derive profiles/models/<id>.yaml ...: ship their descriptions
    import sys

    import yaml

    for arg in sys.argv[1:]:
        with open(arg) as f:
            profile = yaml.safe_load(f)
        print(arg, "->", write_shipped(profile["config"]))
