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
    recommend_optimizers = ("adamw", "adamw_8bit", "paged_adamw_8bit")
    reason = "trains every weight: the reference for quality, and the most memory"

    def quality_terms(self, q) -> None:
        if q.regime == "small":
            q.note("With under 10k examples full fine-tuning can overfit; adapters matched or beat it "
                   "on small tasks (LoRA paper Table 2).")


METHOD = Full()
