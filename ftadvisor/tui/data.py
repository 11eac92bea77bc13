"""What the Goal step shows about a dataset file: its format, number of examples, average length.

Loading and format detection are :func:`ftadvisor.datasets.load_data` (the launcher's own
reader), so the TUI never disagrees with the launcher about a file. Length is counted in tokens
with the model's own tokenizer when the model is a local directory holding ``tokenizer.json``
(the ``tokenizers`` library, no torch), otherwise approximated from characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Rule of thumb for English text with GPT-style BPE vocabularies: "one token generally
# corresponds to ~4 characters" (OpenAI, "What are tokens and how to count them?", help centre).
CHARS_PER_TOKEN = 4.0

# The launcher's formats (ftadvisor.datasets.FORMATS) -> the recommender's data kinds
# (ftadvisor.recommend.DATA_KINDS): prompt/completion pairs are instruction data like chat.
KIND_OF_FORMAT = {
    "chat": "chat",
    "prompt_completion": "chat",
    "preference": "preference",
    "text": "text",
    "facts": "facts",
    "prompts": "prompts",
}

SAMPLE = 2000
"""Records measured for the average length (all of them in smaller files)."""


@dataclass(frozen=True)
class DataInfo:
    path: str
    format: str
    """Format as the launcher names it (chat, preference, prompt_completion, text, facts, prompts)."""
    kind: str
    """Data kind the recommender plans for."""
    examples: int
    avg_tokens: float
    """Mean tokens per training sequence (prompt + response; preference: per chosen or rejected sequence)."""
    exact_tokens: bool
    """Counted with the model's tokenizer (else estimated from characters)."""

    def summary(self) -> str:
        how = "tokens" if self.exact_tokens else f"tokens (≈ chars/{CHARS_PER_TOKEN:g})"
        return f"{self.format} data, {self.examples:,} examples, {self.avg_tokens:,.0f} {how} on average"


def _strings(value: Any) -> list[str]:
    """Every piece of text in a field: a string, a list of messages' contents, nested values."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, dict):
        if "content" in value:
            return _strings(value["content"])
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def sequences(record: dict[str, Any], fmt: str) -> list[str]:
    """The text(s) one record becomes as training sequences."""
    if fmt == "preference":
        prompt = "\n".join(_strings(record.get("prompt")))
        return [prompt + "\n" + "\n".join(_strings(record.get(k))) for k in ("chosen", "rejected")]
    return ["\n".join(_strings(record))]


def _tokenizer_for(model_dir: str | None):
    if not model_dir:
        return None
    path = Path(model_dir).expanduser()
    if path.is_file():
        path = path.parent
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok_file))
    except Exception:  # noqa: BLE001 - an unreadable tokenizer falls back to the character estimate
        return None


def describe(path: str, model_dir: str | None = None) -> DataInfo:
    """Load ``path`` with the launcher's reader and measure it. Raises FtAdvisorError for bad files."""
    from ftadvisor.datasets import load_data

    data = load_data(path)
    texts = [t for rec in data.records[:SAMPLE] for t in sequences(rec, data.format)]
    tok = _tokenizer_for(model_dir)
    if tok is not None:
        lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    else:
        lengths = [len(t) / CHARS_PER_TOKEN for t in texts]
    avg = sum(lengths) / max(1, len(lengths))
    return DataInfo(path=str(path), format=data.format, kind=KIND_OF_FORMAT.get(data.format, "text"),
                    examples=len(data), avg_tokens=max(1.0, avg), exact_tokens=tok is not None)
