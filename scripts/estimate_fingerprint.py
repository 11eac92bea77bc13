"""Print every figure ftadvisor estimates over a fixed grid, one JSON line per plan, so two versions
of the cost model can be compared line by line (used to check that a refactor changed no estimate).

Usage: .venv/bin/python scripts/estimate_fingerprint.py > after.jsonl
       PYTHONPATH=/path/to/old/checkout .venv/bin/python scripts/estimate_fingerprint.py > before.jsonl
       diff before.jsonl after.jsonl
"""

from __future__ import annotations

import itertools
import json
import sys

import ftadvisor as fa

MODELS = ["llama-3.1-8b", "llama-2-7b", "mixtral-8x7b", "qwen3-30b-a3b", "phi-2", "gemma-2-2b", "falcon-7b"]
HARDWARE = ["h100", "rtx4090", "a100-40gb", "cpu"]
GOALS = ["chat", "code", "math", "domain", "facts", "preference", "rl"]
EXAMPLES = [2_000, 20_000, 500_000]
KNOBS = [
    dict(),
    dict(seq_len=4096, micro_batch_size=4, gradient_checkpointing=False),
    dict(seq_len=1024, micro_batch_size=8, gradient_accumulation_steps=4, lora_r=64, precision="bf16-true"),
    dict(num_gpus=8, sharding="zero3", optimizer="adamw_8bit"),
    dict(num_gpus=4, sharding="fsdp", cpu_offload=True, attention="eager", seq_len=512),
    dict(num_gpus=2, sharding="ddp", optimizer="paged_adamw_8bit", lora_dropout=0.1),
    dict(seq_len=2048, rl_max_new_tokens=256, grpo_beta=0.04, dpo_precompute_ref=True, sft_chunked_loss=False),
    dict(num_gpus=4, sharding="zero1", precision="fp32", optimizer="adafactor"),
    dict(num_gpus=16, num_nodes=2, sharding="zero2", cpu_offload=True, optimizer="sgd", lamini_layers=2),
    dict(num_gpus=8, sharding="zero3", cpu_offload=True, adapter_bottleneck=16, micro_batch_size=2),
]


def main() -> None:
    for model, hw, knobs in itertools.product(MODELS, HARDWARE, KNOBS):
        mp = fa.resolve_model(model)
        for tech in fa.all_techniques():
            if tech == "moe" and not mp.arch.is_moe:
                continue
            row = {"model": model, "hw": hw, "tech": tech, **knobs}
            try:
                est = fa.estimate(model, hw, tech, with_speed=True, goal=GOALS[len(tech) % len(GOALS)],
                                  examples=EXAMPLES[len(model) % len(EXAMPLES)], **knobs)
            except fa.FtAdvisorError as err:
                row["error"] = str(err)
            else:
                d = est.model_dump(mode="json")
                d["quality"]["sources"] = [c["where"] for c in d["quality"]["sources"]]
                d["speed"].pop("assumptions", None)
                d["speed"].pop("sources", None)
                row["estimate"] = d
            print(json.dumps(row, sort_keys=True))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
