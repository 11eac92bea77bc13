"""Direct preference optimisation (Rafailov et al. 2023, arXiv 2305.18290; trl DPOTrainer):
chosen and rejected completions of each prompt in one forward (2 sequences per example), against
a frozen reference model (or precomputed reference log-probs)."""

from __future__ import annotations

from ftadvisor.techniques._preference import AlignmentObjective


class DPO(AlignmentObjective):
    name = "dpo"
    summary = "direct preference optimisation on chosen/rejected pairs"
    source = "Rafailov et al. 2023, DPO (arXiv 2305.18290); trl DPOTrainer"
    evidence = ("obj.chat.dpo_after_sft", "obj.rl.dpo_vs_ppo", "def_dpo")
    definition_figure = "def_dpo"
    train_hook = "ftadvisor.train.techniques:train_dpo"
    data_formats = ("preference",)
    data_kind = "preference"
    recommend_data_kinds = ("preference",)
    default_learning_rate = 1e-6  # trl DPOConfig learning_rate
    gathers_log_probs = True
    sequences_per_example = 2
    reference = "always"
    precompute_reference = True
    peft_reference_adapter_copy = True

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            return  # the reference objective for preference data
        if q.task == "rl":
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.note("DPO needs the reward turned into offline (chosen, rejected) pairs.")
        elif q.task == "chat":
            q.term("obj.chat.dpo_after_sft", "SFT+DPO vs SFT")
            q.note("DPO assumes an SFT model to start from; on a raw base model it fell far short "
                   "(Zephyr Table 3), which sets the low end.")
            q.note("A preference/RL objective on chat needs preference pairs or a reward, not just demonstrations.")
        else:  # code, math
            self.rl_after_sft_terms(q)
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.note(f"DPO on {q.task} assumes an SFT model first and a reward (unit tests, answer "
                   "checks) or pairs built from it.")


OBJECTIVE = DPO()
