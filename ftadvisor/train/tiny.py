"""Tiny local models and tokenizers, built offline, for tests, demos and CPU calibration.

    from ftadvisor.train.tiny import make_tiny_model_dir
    path = make_tiny_model_dir("/tmp/tiny-llama", model_type="llama", num_hidden_layers=2)
    # AutoModelForCausalLM.from_pretrained(path) / AutoTokenizer.from_pretrained(path) now work,
    # and so does from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...)).

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a small built-in
corpus (no download). It has ``<s>``, ``</s>``, ``<pad>``, ``<|im_start|>``, ``<|im_end|>`` special
tokens and a ChatML-style chat template, so trl's SFT/DPO/GRPO chat paths work with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# ChatML layout (the format Qwen and many chat fine-tunes use); written here from the format's
# description, with a generation prompt for trl's prompt-only paths.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small, fixed corpus of plain English for training the BPE merges (own words; the content
# only has to cover common letter pairs, the models trained with it are random).
_WORDS = (
    "the a an of to and in is it that for on with as was at by be this are from or have not but "
    "they his her one all were we when your can said there use each which she do how their if will "
    "up other about out many then them these so some would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long "
    "down day did get come made may part model train token layer memory adapter expert gradient loss "
    "answer question paris france capital river mountain city small large number seven three twelve"
).split()

# Sizes of the tiny models: small enough to train a few steps in well under a second on a CPU.
TINY_BASE: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    # 10x the usual 0.02: with 0.02, a 64-wide model's logits stay within about +-1.3, so methods
    # that freeze lm_head (LoRA, adapters, memory experts) cannot fit even a handful of facts.
    initializer_range=0.2,
)

# Per-family extra fields (the MoE families need their expert sizes).
TINY_FAMILY: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "decoder_sparse_step": 1,
    },
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16},
}


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences over a fixed word list (for BPE training)."""
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        n = rng.randint(4, 14)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".")
    return lines


def train_tokenizer(vocab_size: int = 512, texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer offline and wrap it as a ``PreTrainedTokenizerFast``.

    ``vocab_size`` is an upper bound (the BPE stops when it runs out of merges); it must leave
    room for the 256 byte symbols plus the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ftadvisor.errors import FtAdvisorError

    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise FtAdvisorError("vocab_size", f"a byte-level BPE needs at least {floor} entries, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts or corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(model_type: str = "llama", **overrides: Any) -> dict[str, Any]:
    """Config fields of a tiny model of the given family (any HF config field may be overridden)."""
    from ftadvisor.errors import FtAdvisorError

    if model_type not in TINY_FAMILY:
        raise FtAdvisorError("model_type", f"no tiny preset for {model_type!r}", sorted(TINY_FAMILY))
    cfg = {"model_type": model_type, **TINY_BASE, **TINY_FAMILY[model_type]}
    cfg.update(overrides)
    return cfg


def make_tiny_model_dir(
    path: str | os.PathLike, model_type: str = "llama", seed: int = 0, head: str = "causal", **overrides: Any
) -> Path:
    """Save a tiny random-weight model plus a trained tokenizer under ``path``; returns the path.

    ``head="seq_cls"`` saves a one-output sequence-classification model instead (a reward model
    for PPO/GRPO). Weights are fp32 safetensors, so bitsandbytes can quantize them on load.
    Special-token ids are written into the config so generation stops at ``<|im_end|>``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(model_type, **overrides)
    tok = train_tokenizer(min(cfg["vocab_size"], 512))
    cfg.setdefault("pad_token_id", tok.pad_token_id)
    cfg.setdefault("bos_token_id", tok.bos_token_id)
    cfg.setdefault("eos_token_id", tok.eos_token_id)
    mt = cfg.pop("model_type")
    if head not in ("causal", "seq_cls"):
        from ftadvisor.errors import FtAdvisorError

        raise FtAdvisorError("head", f"unknown head {head!r}", ["causal", "seq_cls"])
    if head == "seq_cls":
        cfg["num_labels"] = 1
    config = AutoConfig.for_model(mt, **cfg)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    model = auto.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "ftadvisor_tiny.json").write_text(json.dumps({"model_type": mt, "seed": seed, **cfg}, indent=1))
    return path
