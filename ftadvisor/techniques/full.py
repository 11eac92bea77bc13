"""Full fine-tuning: every parameter of the base model trains (the quality reference, = 1.0)."""

from __future__ import annotations

from ftadvisor.techniques.base import Method


class Full(Method):
    name = "full"
    summary = "all parameters trained"
    source = "standard fine-tuning"
    train_hook = "ftadvisor.train.techniques:apply_full"
    base_training = "all"
    retention = "full"
    reference_method = True
    offered_for_preference = True
    recommend_optimizers = ("adamw", "adamw_8bit", "paged_adamw_8bit")

    def recommend_reasons(self, r) -> list[str]:
        return [f"full fine-tuning fits: {r.gib(r.est.memory.device_total_bytes)} of {r.hw.memory_gib:.0f} GiB per GPU"]

    def quality_terms(self, q) -> None:
        if q.regime == "small":
            q.note("With under 10k examples full fine-tuning can overfit; adapters matched or beat it "
                   "on small tasks (LoRA paper Table 2).")


METHOD = Full()
