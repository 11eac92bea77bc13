"""Print ``recommend`` answers over a fixed set of questions, one JSON line each, so two versions
can be compared line by line (a refactor must change no answer).

Usage: .venv/bin/python scripts/recommend_fingerprint.py > after.jsonl
       PYTHONPATH=/path/to/old/checkout .venv/bin/python scripts/recommend_fingerprint.py > before.jsonl
"""

from __future__ import annotations

import itertools
import json

import ftadvisor as fa

QUESTIONS = [
    dict(model=m, hardware=h, num_gpus=n, goal=g, examples=e, avg_tokens=600)
    for m, h, n, g, e in itertools.product(
        ["llama-3.1-8b", "qwen2.5-0.5b", "mixtral-8x7b"], ["rtx4090", "h100"], [1, 8],
        ["chat", "domain", "facts", "preference", "rl", "code"], [None, 20_000])
]


def main() -> None:
    for q in QUESTIONS:
        row = dict(q)
        try:
            rec = fa.recommend(**q)
        except fa.FtAdvisorError as err:
            row["error"] = str(err)
        else:
            row["plans"] = [(p.plan.model_dump(mode="json"), p.reasons, round(p.score, 6)) for p in rec.plans]
            row["rejected"] = [(p.plan.technique, p.reasons) for p in rec.rejected]
            row["notes"] = list(rec.notes)
        print(json.dumps(row, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
