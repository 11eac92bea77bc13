"""Training records: the accepted formats, their conversion to what each trl trainer takes, and
synthetic records of the planned shape (for calibration and dry runs).

Accepted record formats (a list of dicts, all records in one format):

===================  ==============================================  ======================================================================
format               fields                                          used by
===================  ==============================================  ======================================================================
messages             ``messages``: [{role, content}, ...]            sft; rl (prompt = all but the last assistant turn)
prompt_completion    ``prompt``, ``completion``                      sft
text                 ``text`` (continued pretraining)                sft
tokens               ``input_ids`` (pre-tokenized; optional labels)  sft (synthetic data uses it)
preference           ``prompt``, ``chosen``, ``rejected``            dpo, orpo; kto (each pair split in two)
unpaired_preference  ``prompt``, ``completion``, ``label`` (bool)    kto
prompt               ``prompt`` (+ optional ``answer``)              ppo, grpo
qa                   ``question``, ``answer`` (facts)                sft as prompt/completion (Lamini memory tuning), rl as prompt + answer
===================  ==============================================  ======================================================================

Synthetic shapes (what the memory model counts, ``ftadvisor/memory.py``):
- sft: ``input_ids`` of exactly ``seq_len`` tokens;
- dpo/orpo: prompt of ``seq_len // 2`` tokens, chosen and rejected of ``seq_len - seq_len // 2``
  tokens each (the special tokens the trainer adds included: BOS in front of the prompt where it
  adds one, EOS after each answer), so each of the two sequences is ``seq_len`` long;
- kto: prompt of ``seq_len // 2`` tokens, completion of ``seq_len - seq_len // 2`` (EOS included),
  labels alternating desirable / undesirable;
- ppo/grpo: prompts of ``seq_len - rl_max_new_tokens`` tokens; the trainer generates
  ``rl_max_new_tokens`` more.
Text for the text-based trainers is built from vocabulary entries that re-tokenize to exactly one
token each (checked against the tokenizer), one word per token, so lengths are exact.
"""

from __future__ import annotations

import random
from typing import Any

from ftadvisor.errors import FtAdvisorError
from ftadvisor.techniques import OBJECTIVES

FORMATS = ("messages", "prompt_completion", "text", "tokens", "preference", "unpaired_preference", "prompt", "qa")

# The formats each objective trains on, as its declaration in ftadvisor/techniques/ states them.
ACCEPTS: dict[str, tuple[str, ...]] = {name: o.data_formats for name, o in OBJECTIVES.items()}


def detect_format(records: list[dict[str, Any]]) -> str:
    """The format of a list of records (checks every record has the same fields)."""
    if not isinstance(records, list) or not records:
        raise FtAdvisorError("data", "must be 'synthetic' or a non-empty list of records (dicts)")
    if not all(isinstance(r, dict) for r in records):
        raise FtAdvisorError("data", "every record must be a dict")

    def fmt(r: dict) -> str | None:
        k = set(r)
        if "messages" in k:
            return "messages"
        if {"prompt", "chosen", "rejected"} <= k:
            return "preference"
        if {"prompt", "completion", "label"} <= k:
            return "unpaired_preference"
        if {"prompt", "completion"} <= k:
            return "prompt_completion"
        if "input_ids" in k:
            return "tokens"
        if {"question", "answer"} <= k:
            return "qa"
        if "text" in k:
            return "text"
        if "prompt" in k:
            return "prompt"
        return None

    kinds = {fmt(r) for r in records}
    if None in kinds:
        bad = next(r for r in records if fmt(r) is None)
        raise FtAdvisorError(
            "data", f"record with fields {sorted(bad)} matches no format", [f"{f}" for f in FORMATS]
        )
    if len(kinds) > 1:
        raise FtAdvisorError("data", f"records mix formats: {', '.join(sorted(kinds))}")
    return kinds.pop()


def convert(records: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Records in the form the objective's trl trainer takes."""
    fmt = detect_format(records)
    if fmt not in ACCEPTS[objective]:
        raise FtAdvisorError(
            "data", f"{objective} cannot train on {fmt} records", list(ACCEPTS[objective])
        )
    kind = OBJECTIVES[objective].data_kind
    if kind == "text":
        if fmt == "qa":
            # Lamini-style memory tuning trains on facts as question -> answer.
            return [{"prompt": r["question"], "completion": r["answer"]} for r in records]
        if fmt == "messages":
            return [{"messages": r["messages"]} for r in records]
        if fmt == "prompt_completion":
            return [{"prompt": r["prompt"], "completion": r["completion"]} for r in records]
        if fmt == "text":
            return [{"text": r["text"]} for r in records]
        return [{k: r[k] for k in ("input_ids", "labels") if k in r} for r in records]
    if kind == "preference":
        return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in records]
    if kind == "unpaired_preference":
        if fmt == "preference":  # a pair is one desirable and one undesirable example
            return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                    for r in records for side in ("chosen", "rejected")]
        return [{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])} for r in records]
    # RL: prompts (+ answer where known, for the exact_match reward).
    out = []
    for r in records:
        if fmt == "messages":
            msgs = list(r["messages"])
            answer = None
            if msgs and msgs[-1].get("role") == "assistant":
                answer = msgs[-1].get("content")
                msgs = msgs[:-1]
            if not msgs:
                raise FtAdvisorError("data", "a messages record needs at least one turn before the answer")
            out.append({"prompt": msgs, "answer": answer or ""})
        elif fmt == "qa":
            out.append({"prompt": r["question"], "answer": r["answer"]})
        elif fmt == "prompt_completion":
            out.append({"prompt": r["prompt"], "answer": r["completion"]})
        else:
            out.append({"prompt": r["prompt"], "answer": r.get("answer", "")})
    return out


# --- synthetic records ----------------------------------------------------------------------


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def word_pool(tokenizer, limit: int = 4000) -> list[int]:
    """Token ids whose text is a space followed by letters and that re-tokenize to themselves."""
    special = _special_ids(tokenizer)
    pool = []
    vocab = tokenizer.get_vocab()
    for tok_id in sorted(vocab.values()):
        if tok_id in special:
            continue
        text = tokenizer.decode([tok_id])
        if len(text) < 2 or text[0] != " " or not text[1:].isalpha() or not text[1:].isascii():
            continue
        if tokenizer.encode(text, add_special_tokens=False) == [tok_id]:
            pool.append(tok_id)
            if len(pool) >= limit:
                break
    if len(pool) < 8:
        raise FtAdvisorError("tokenizer", "has too few plain word tokens to build synthetic text")
    return pool


def text_of_tokens(tokenizer, pool: list[int], n: int, rng: random.Random) -> str:
    """A string that the tokenizer turns into exactly ``n`` tokens (no specials added)."""
    if n <= 0:
        return ""
    text = "".join(tokenizer.decode([rng.choice(pool)]) for _ in range(n))
    got = len(tokenizer.encode(text, add_special_tokens=False))
    if got != n:  # pragma: no cover - guarded by the pool's self-check
        raise FtAdvisorError("tokenizer", f"synthetic text of {n} words tokenized to {got} tokens")
    return text


def _prompt_specials(objective: str, tokenizer) -> int:
    """Tokens the trainer adds in front of a text prompt: trl's DPOTrainer tokenizes with the
    tokenizer's own special tokens (a BOS for Llama-3 tokenizers); the ORPO trainer tokenizes
    without them and then prepends bos_token_id when the tokenizer has one
    (trl/experimental/utils.py add_bos_token_if_needed)."""
    if OBJECTIVES[objective].prompt_bos == "prepend":
        return 1 if tokenizer.bos_token_id is not None else 0
    return len(tokenizer("a")["input_ids"]) - len(tokenizer("a", add_special_tokens=False)["input_ids"])


def synthetic_records(objective: str, plan, tokenizer, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records of the planned shape for ``objective`` (see the module docstring)."""
    rng = random.Random(seed)
    L = plan.seq_len
    kind = OBJECTIVES[objective].data_kind
    if kind == "text":
        special = _special_ids(tokenizer)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        return [{"input_ids": [rng.choice(ids) for _ in range(L)]} for _ in range(n)]
    pool = word_pool(tokenizer)
    if kind in ("preference", "unpaired_preference"):
        paired = kind == "preference"
        if L < (4 if paired else 3):
            raise FtAdvisorError("seq_len", f"{objective} needs at least {4 if paired else 3} tokens "
                                 f"(prompt + {'two answers' if paired else 'answer'})")
        p_len = L // 2 - _prompt_specials(objective, tokenizer)
        c_len = L - L // 2 - 1  # the trainer appends the end-of-sequence token

        def text(k: int) -> str:
            return text_of_tokens(tokenizer, pool, k, rng)

        if paired:
            return [{"prompt": text(p_len), "chosen": text(c_len), "rejected": text(c_len)} for _ in range(n)]
        return [{"prompt": text(p_len), "completion": text(c_len), "label": i % 2 == 0} for i in range(n)]
    p_len = L - plan.rl_max_new_tokens
    if p_len < 1:
        raise FtAdvisorError(
            "rl_max_new_tokens", f"leaves no prompt: seq_len {L} must exceed rl_max_new_tokens {plan.rl_max_new_tokens}"
        )
    return [{"prompt": text_of_tokens(tokenizer, pool, p_len, rng), "answer": ""} for _ in range(n)]
