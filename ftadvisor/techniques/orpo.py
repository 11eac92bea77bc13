"""Odds-ratio preference optimisation (Hong et al. 2024, arXiv 2403.07691; trl ORPOTrainer): SFT
and preference in one stage, no reference model; the loss adds an NLL term on the chosen half."""

from __future__ import annotations

from ftadvisor.techniques._preference import AlignmentObjective


class ORPO(AlignmentObjective):
    name = "orpo"
    summary = "odds-ratio preference optimisation, no reference model"
    source = "Hong et al. 2024, ORPO (arXiv 2403.07691); trl ORPOTrainer"
    evidence = ("obj.orpo_vs_dpo", "obj.orpo_vs_dpo.small", "obj.chat.dpo_after_sft", "obj.rl.dpo_vs_ppo", "def_orpo")
    definition_figure = "def_orpo"
    train_hook = "ftadvisor.train.techniques:train_orpo"
    data_formats = ("preference",)
    data_kind = "preference"
    recommend_data_kinds = ("preference",)
    prompt_bos = "prepend"
    default_learning_rate = 8e-6  # trl ORPOConfig learning_rate
    gathers_log_probs = True
    sequences_per_example = 2
    # ORPO's NLL term: a cross-entropy over the chosen half, its fp32 log-softmax (trl ORPOTrainer)
    extra_logit_bytes = 4.0

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            q.orpo_term()
        elif q.task == "rl":
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.orpo_term()
            q.note("ORPO needs the reward turned into offline pairs.")
        elif q.task == "chat":
            q.orpo_term()
            q.term("obj.chat.dpo_after_sft", "SFT+DPO vs SFT")
            q.note("A preference/RL objective on chat needs preference pairs or a reward, not just demonstrations.")
        else:  # code, math
            self.rl_after_sft_terms(q)
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.orpo_term()
            q.note(f"ORPO on {q.task} assumes an SFT model first and a reward (unit tests, answer "
                   "checks) or pairs built from it.")


OBJECTIVE = ORPO()
