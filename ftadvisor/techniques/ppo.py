"""PPO with policy, value, reward and reference models (Ouyang et al. 2022, InstructGPT; trl's
experimental PPOTrainer, trl/experimental/ppo/ppo_trainer.py). The run shape below is read by the
speed model and by the engine, so both run the same number of passes."""

from __future__ import annotations

from ftadvisor.techniques._preference import AlignmentObjective


class PPO(AlignmentObjective):
    name = "ppo"
    summary = "PPO with policy, value, reward and reference models"
    source = "Ouyang et al. 2022 (InstructGPT); trl experimental PPOTrainer"
    evidence = ("obj.pref.ppo_vs_dpo", "obj.grpo_vs_ppo", "obj.math.rl_after_sft", "def_ppo")
    definition_figure = "def_ppo"
    train_hook = "ftadvisor.train.techniques:train_ppo"
    data_formats = ("prompt", "messages", "qa", "prompt_completion")
    data_kind = "prompts"
    recommend_data_kinds = ("prompts",)
    default_learning_rate = 3e-6  # trl PPOConfig learning_rate
    reference = "always"
    generation = True
    reward_model = True
    value_model = True
    # trl PPOConfig defaults: num_ppo_epochs = 4 optimizer passes over each rollout batch,
    # local_rollout_forward_batch_size = 64 sequences generated and scored at a time
    updates_per_rollout = 4
    rollout_chunk = 64
    # after each rollout: the policy's own log-probs, the value model and the reward model score
    # the sequences without gradients (the reference's pass is counted by uses_reference)
    nograd_passes_per_step = 3
    own_training_loop = True
    full_sequence_logits = True  # the training forward computes logits for the whole sequence

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            q.term("obj.pref.ppo_vs_dpo", "PPO vs DPO")
            q.note("PPO/GRPO need a reward model trained on the pairs and roughly ten times DPO's compute.")
        elif q.task == "rl":
            return  # the reference objective for RL
        elif q.task == "chat":
            q.term("obj.pref.ppo_vs_dpo", "PPO vs DPO")
            q.term("obj.chat.dpo_after_sft", "SFT+DPO vs SFT")
            q.note("A preference/RL objective on chat needs preference pairs or a reward, not just demonstrations.")
        else:  # code, math
            self.rl_after_sft_terms(q)
            q.term("obj.grpo_vs_ppo", "PPO vs GRPO")
            q.weak("PPO vs GRPO: no controlled comparison")
            q.note(f"PPO on {q.task} assumes an SFT model first and a reward (unit tests, answer "
                   "checks) or pairs built from it.")


OBJECTIVE = PPO()
