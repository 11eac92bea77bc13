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
# (ftadvisor.recommend.DATA_KINDS), by the fields a format requires (the first field found
# decides): prompt/completion pairs are instruction data like chat, pre-tokenized ids are text.
KIND_BY_FIELD = (
    ("messages", "chat"),
    ("chosen", "preference"),
    ("label", "feedback"),
    ("completion", "chat"),
    ("question", "facts"),
    ("text", "text"),
    ("input_ids", "text"),
    ("prompt", "prompts"),
)


def kind_of_format(fmt: str) -> str:
    """The recommender's data kind for one of the launcher's dataset formats."""
    from ftadvisor.datasets import FORMATS

    fields = set(FORMATS[fmt].required) if fmt in FORMATS else set()
    for name, kind in KIND_BY_FIELD:
        if name in fields:
            return kind
    return "text"

SAMPLE = 2000
"""Records measured for the average length (all of them in smaller files)."""


@dataclass(frozen=True)
class DataInfo:
    path: str
    format: str
    """Format as the launcher names it (``ftadvisor.datasets.FORMATS``)."""
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


def sequences(record: dict[str, Any]) -> list[str]:
    """The text(s) one record becomes as training sequences (a preference pair: two)."""
    if "chosen" in record and "rejected" in record:
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
    sample = data.records[:SAMPLE]
    if sample and all(isinstance(r.get("input_ids"), list) for r in sample):
        lengths = [float(len(r["input_ids"])) for r in sample]  # pre-tokenized: exact
        exact = True
    else:
        texts = [t for rec in sample for t in sequences(rec)]
        tok = _tokenizer_for(model_dir)
        exact = tok is not None
        if tok is not None:
            lengths = [float(len(e.ids)) for e in tok.encode_batch(texts)]
        else:
            lengths = [len(t) / CHARS_PER_TOKEN for t in texts]
    avg = sum(lengths) / max(1, len(lengths))
    return DataInfo(path=str(path), format=data.format, kind=kind_of_format(data.format),
                    examples=len(data), avg_tokens=max(1.0, avg), exact_tokens=exact)
