"""Token lengths of a training dataset: ``ftadvisor data-stats DATA -m MODEL [--seq-len N] [--plot FILE]``.

    from ftadvisor.datastats import data_stats
    s = data_stats("examples/data/chat.jsonl", "./my-model", seq_len=2048)
    s.summary()["p90"], s.truncated_share, s.histogram()

The file is read with the launcher's own reader (:func:`ftadvisor.datasets.load_data`), so the
formats, the detection and the error messages are the ones ``ftadvisor launch`` uses. Lengths are
counted with the model's tokenizer when a copy is on this machine: a model directory holding
tokenizer files, or a Hub id (or profile whose ``hf_id``) is in the local Hugging Face cache;
``transformers`` is imported only then, and never goes online (``local_files_only``). Otherwise
lengths are estimated as characters / 4, and the result says so and why.

What one record becomes (the sequences a trainer sees, so truncation is judged per sequence):
chat ``messages`` one sequence through the tokenizer's chat template; ``prompt`` + ``completion``
one; a preference pair two (prompt + chosen, prompt + rejected; trl's DPO trainer truncates each
to ``max_length``); ``question`` + ``answer`` one; ``text`` one; prompt-only records their prompt
(a generating trainer also needs room for the completion); pre-tokenized ``input_ids`` their length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown

# Rule of thumb for English text and GPT-style BPE vocabularies: "one token generally corresponds
# to ~4 characters of text" (OpenAI help centre, "What are tokens and how to count them?"); the
# same figure the wizard's Goal step uses (ftadvisor/tui/data.py CHARS_PER_TOKEN).
CHARS_PER_TOKEN = 4.0

# Files a transformers tokenizer loads from (tokenization_utils_base.py: the fast tokenizer's
# tokenizer.json, the slow ones' vocabularies, and tokenizer_config.json that names the class).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")

# A Hub repository id: owner/name (huggingface_hub's validate_repo_id allows letters, digits, "-", "_", ".")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

PERCENTILES = (("min", 0.0), ("median", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


@dataclass(frozen=True)
class DataStats:
    """Token lengths of every training sequence of one dataset."""

    source: str
    format: str
    """Format as the launcher names it (ftadvisor.datasets.FORMATS)."""
    records: int
    lengths: tuple[float, ...]
    """Tokens per training sequence (a preference pair gives two), in file order."""
    seq_len: int
    exact: bool
    """Counted with the model's tokenizer (else estimated as characters / 4)."""
    counted_with: str
    """What counted the tokens: the tokenizer's location, ``input_ids`` or the chars/4 estimate."""
    note: str | None = None
    """Why the estimate was used (no tokenizer files, nothing in the cache ...), if it was."""

    @property
    def sequences(self) -> int:
        return len(self.lengths)

    @property
    def truncated(self) -> int:
        """Sequences longer than ``seq_len`` (cut by the trainer)."""
        return sum(1 for n in self.lengths if n > self.seq_len)

    @property
    def truncated_share(self) -> float:
        return self.truncated / len(self.lengths) if self.lengths else 0.0

    def summary(self) -> dict[str, float]:
        """min, median, p90, p99 and max of the lengths, and their mean."""
        xs = sorted(self.lengths)
        out = {name: quantile(xs, q) for name, q in PERCENTILES}
        out["mean"] = sum(xs) / len(xs)
        return out

    def histogram(self, bins: int = 12) -> list[tuple[float, float, int]]:
        """``bins`` equal-width bins ``(low, high, count)`` from the shortest to the longest
        sequence; each bin holds ``low <= n < high``, the last one also its upper edge."""
        return histogram(self.lengths, bins)


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values by linear interpolation between order statistics
    (Hyndman & Fan 1996, "Sample quantiles in statistical packages", definition 7; numpy's
    default ``method="linear"``): h = (n - 1) q, x[floor h] + (h - floor h)(x[floor h + 1] - x[floor h])."""
    if not sorted_xs:
        raise ValueError("quantile of no values")
    h = (len(sorted_xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return float(sorted_xs[lo] + (h - lo) * (sorted_xs[hi] - sorted_xs[lo]))


def histogram(values: Sequence[float], bins: int = 12) -> list[tuple[float, float, int]]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [(lo, hi, len(values))]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [(lo + i * width, lo + (i + 1) * width, c) for i, c in enumerate(counts)]


# --------------------------------------------------------------------------------------------
# Records -> sequences
# --------------------------------------------------------------------------------------------


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value)


def sequences(record: dict[str, Any], fmt: str) -> list[list[Any]]:
    """The training sequences of one record, each a list of parts (a string, or a list of chat
    messages); the parts of a sequence are concatenated in order."""
    if fmt == "messages":
        return [[record["messages"]]]
    if fmt == "preference":
        return [[record["prompt"], record["chosen"]], [record["prompt"], record["rejected"]]]
    if fmt in ("prompt_completion", "unpaired_preference"):
        return [[record["prompt"], record["completion"]]]
    if fmt == "qa":
        return [[str(record["question"]), "\n" + str(record["answer"])]]
    if fmt == "text":
        return [[record["text"]]]
    if fmt == "prompt":
        return [[record["prompt"]]]
    raise FtAdvisorError("data", f"no length rule for {fmt} data")  # tokens are counted directly


def _merge_chat(parts: list[Any]) -> list[Any]:
    """A conversational prompt followed by a conversational completion is one conversation."""
    if len(parts) > 1 and all(_is_chat(p) for p in parts):
        return [[m for p in parts for m in p]]
    return parts


def _chars(part: Any) -> int:
    if _is_chat(part):
        return sum(len(str(m["content"])) for m in part) + max(0, len(part) - 1)  # "\n" between turns
    return len(str(part))


class _Counter:
    """Tokens of a sequence's parts with one tokenizer: the first part with the tokenizer's own
    special tokens (BOS where it adds one), later parts without; chat parts rendered by the chat
    template (which writes its own special tokens) when the tokenizer has one."""

    def __init__(self, tok):
        self.tok = tok
        self.template = bool(getattr(tok, "chat_template", None))

    def _text(self, text: str, first: bool) -> int:
        return len(self.tok(text, add_special_tokens=first)["input_ids"])

    def __call__(self, parts: list[Any]) -> int:
        n = 0
        for i, part in enumerate(_merge_chat(parts)):
            if _is_chat(part):
                if self.template:
                    rendered = self.tok.apply_chat_template(part, tokenize=False)
                    n += self._text(rendered, first=False)
                else:
                    n += self._text("\n".join(str(m["content"]) for m in part), first=i == 0)
            else:
                n += self._text(str(part), first=i == 0)
        return n


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------


def _hub_id(model: str) -> str | None:
    """The Hub id behind ``model``: a profile's ``hf_id`` (by id or alias), or ``owner/name`` itself."""
    from ftadvisor.profiles import _model_index, _norm, model_profiles

    pid = _model_index().get(_norm(model))
    if pid is not None:
        return model_profiles()[pid].hf_id
    if _HUB_ID.match(model):
        return model
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FtAdvisorError("--model", f"no such directory {shown(model, 200)}")
    from ftadvisor.errors import unknown

    err = unknown("--model", model, list(model_profiles()))
    raise FtAdvisorError("--model", err.message + "; or give a model directory or a Hub id (owner/name)")


def _load(where: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(where, local_files_only=True)


def find_tokenizer(model: str | None) -> tuple[Any, str, str | None]:
    """``(tokenizer or None, what counted, note)`` for ``model``: a local directory (or a file in
    it, such as config.json) with tokenizer files, or a profile / Hub id whose tokenizer is in the
    local Hugging Face cache. Never downloads; a model it cannot find locally gives None and a
    note saying why."""
    fallback = f"characters / {CHARS_PER_TOKEN:g} (an estimate)"
    if model is None:
        return None, fallback, "no model given (-m)"
    from ftadvisor import validate

    validate.name("--model", model)
    path = Path(model).expanduser()
    if validate.exists(model):
        folder = path if validate.is_dir(path) else path.parent
        present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
        if not present:
            return None, fallback, f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})"
        where, label = str(folder), f"the tokenizer in {folder}"
    else:
        repo = _hub_id(model)
        if not repo:
            return None, fallback, f"the profile {model!r} names no Hugging Face id"
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # comes with transformers (the training stack, requirements/train.txt)
            return None, fallback, f"reading the Hugging Face cache for {repo} needs huggingface_hub"
        try:  # the cache only: a path if the file is there, never a download
            cached = [f for f in ("tokenizer_config.json", "tokenizer.json")
                      if isinstance(try_to_load_from_cache(repo, f), str)]
        except ValueError:  # an id huggingface_hub refuses ("a..b", "a--b"): nothing can be cached under it
            cached = []
        if not cached:
            return None, fallback, (f"{repo}'s tokenizer is not in the local Hugging Face cache (nothing is "
                                    "downloaded; pass a model directory with -m)")
        where, label = repo, f"{repo}'s tokenizer (Hugging Face cache)"
    try:
        tok = _load(where)
    except ImportError as err:
        return None, fallback, f"the tokenizer in {where} needs transformers ({err})"
    except Exception as err:  # noqa: BLE001 - a broken or partial tokenizer folder: say why, then estimate
        return None, fallback, f"could not load the tokenizer in {where} ({type(err).__name__}: {shown(str(err), 160)})"
    return tok, label, None


# --------------------------------------------------------------------------------------------
# The statistics
# --------------------------------------------------------------------------------------------


def data_stats(data: str | Path, model: str | None = None, seq_len: int = 2048, tokenizer: Any = None) -> DataStats:
    """Token lengths of every training sequence in ``data`` (see the module docstring), counted
    with ``tokenizer`` if given, else with ``model``'s local tokenizer, else estimated."""
    from ftadvisor import validate
    from ftadvisor.datasets import load_data

    validate.integer("--seq-len", seq_len, low=1, high=10_000_000)  # TrainingPlan.seq_len's bounds
    ud = load_data(data)
    note = None
    if ud.format == "tokens":  # pre-tokenized: the lengths are exact whatever the model
        lengths = [float(len(r["input_ids"])) for r in ud.records]
        return DataStats(ud.source, ud.format, len(ud), tuple(lengths), seq_len, True, "input_ids")
    if tokenizer is not None:
        counted_with = "the given tokenizer"
    else:
        tokenizer, counted_with, note = find_tokenizer(model)
    seqs = [s for r in ud.records for s in sequences(r, ud.format)]
    if tokenizer is not None:
        count = _Counter(tokenizer)
        lengths = [float(count(s)) for s in seqs]
    else:
        lengths = [sum(_chars(p) for p in _merge_chat(s)) / CHARS_PER_TOKEN for s in seqs]
    return DataStats(ud.source, ud.format, len(ud), tuple(lengths), seq_len, tokenizer is not None, counted_with, note)
