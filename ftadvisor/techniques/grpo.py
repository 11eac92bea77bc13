"""Group-relative policy optimisation (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300; trl
GRPOTrainer): groups of ``grpo_num_generations`` sampled completions per prompt, advantages
relative to the group; a reference model only when the KL term is on (``grpo_beta > 0``). trl
generates micro-batch x steps_per_generation (= gradient accumulation) completions at once."""

from __future__ import annotations

from ftadvisor.techniques._preference import AlignmentObjective


class GRPO(AlignmentObjective):
    name = "grpo"
    summary = "group-relative policy optimisation: groups of sampled completions per prompt"
    source = "Shao et al. 2024, DeepSeekMath (arXiv 2402.03300); trl GRPOTrainer"
    evidence = ("obj.grpo_vs_ppo", "obj.pref.ppo_vs_dpo", "obj.math.rl_after_sft", "def_grpo")
    definition_figure = "def_grpo"
    train_hook = "ftadvisor.train.techniques:train_grpo"
    data_formats = ("prompt", "messages", "qa", "prompt_completion")
    data_kind = "prompts"
    recommend_data_kinds = ("prompts",)
    recommend_priority = -1  # before PPO on equal terms: no value or reward model to train or hold
    default_learning_rate = 1e-6  # trl GRPOConfig learning_rate
    reference = "if_kl"
    generation = True
    multiple_completions_field = "grpo_num_generations"

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            q.term("obj.pref.ppo_vs_dpo", "PPO vs DPO")
            q.term("obj.grpo_vs_ppo", "GRPO vs PPO")
            q.weak("GRPO vs PPO: no controlled comparison")
            q.note("PPO/GRPO need a reward model trained on the pairs and roughly ten times DPO's compute.")
        elif q.task == "rl":
            q.term("obj.grpo_vs_ppo", "GRPO vs PPO")
            q.weak("GRPO vs PPO: no controlled comparison")
        elif q.task == "chat":
            q.term("obj.pref.ppo_vs_dpo", "PPO vs DPO")
            q.term("obj.chat.dpo_after_sft", "SFT+DPO vs SFT")
            q.term("obj.grpo_vs_ppo", "GRPO vs PPO")
            q.weak("GRPO vs PPO: no controlled comparison")
            q.note("A preference/RL objective on chat needs preference pairs or a reward, not just demonstrations.")
        else:  # code, math
            self.rl_after_sft_terms(q)
            q.note(f"GRPO on {q.task} assumes an SFT model first and a reward (unit tests, answer "
                   "checks) or pairs built from it.")


OBJECTIVE = GRPO()
