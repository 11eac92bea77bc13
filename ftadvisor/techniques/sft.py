"""Supervised fine-tuning: next-token cross-entropy on demonstrations (trl SFTTrainer)."""

from __future__ import annotations

from ftadvisor.techniques.base import Objective


class SFT(Objective):
    name = "sft"
    summary = "next-token cross-entropy"
    source = "causal LM; trl SFTTrainer"
    evidence = ("obj.pref.sft_vs_dpo", "obj.rl.sft_vs_rl")
    train_hook = "ftadvisor.train.techniques:train_sft"
    data_formats = ("messages", "prompt_completion", "text", "tokens", "qa")
    data_kind = "text"
    recommend_data_kinds = ("chat", "text", "facts")
    default_learning_rate = 2e-5  # trl SFTConfig learning_rate
    sft_loss = True

    def applicable(self, task: str) -> bool:
        # SFT imitates demonstrations: it does not use preference pairs or a reward
        return task not in ("preference", "rl")

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            q.term("obj.pref.sft_vs_dpo", "SFT on the chosen answers vs SFT+DPO")
            q.note("SFT alone is not a preference method: it imitates the chosen answers and never sees the "
                   "rejected ones, so it cannot learn what to avoid (Zephyr Table 3).")
        elif q.task == "rl":
            q.term("obj.rl.sft_vs_rl", "SFT alone vs SFT then RL")
            q.note("SFT alone does not use the reward: it imitates demonstrations, so it stops where "
                   "RL on the reward keeps improving (DeepSeekMath Table 5).")


OBJECTIVE = SFT()
