"""Kahneman-Tversky optimisation (Ethayarajh et al. 2024, arXiv 2402.01306; trl KTOTrainer):
alignment from single completions labelled desirable or undesirable -- thumbs up/down feedback,
which people collect far more often than ranked pairs. Preference pairs work too: trl splits each
pair into a desirable and an undesirable example (trl/data_utils.py unpair_preference_dataset).

Run shape of one micro-batch (trl/trainer/kto_trainer.py ``_compute_loss``):
- the policy's forward with gradients over the labelled sequences (one sequence per example);
- a no-grad forward of the policy over *mismatched* sequences -- each prompt with the completion
  of its neighbour in the micro-batch (``_compute_kl_logps``) -- for the KL reference point z0
  of eq. 7, which is why the micro-batch must hold at least 2 examples (trl refuses
  ``per_device_train_batch_size <= 1``);
- the reference model's no-grad forwards over both (2 passes), unless the reference log-probs
  are precomputed (``precompute_ref_log_probs``, our ``dpo_precompute_ref``).
A peft policy's reference is the base with adapters off; trl also keeps a frozen copy of the
adapter as its "ref" adapter, as its DPO trainer does.
"""

from __future__ import annotations

from ftadvisor.techniques._preference import AlignmentObjective


class KTO(AlignmentObjective):
    name = "kto"
    summary = "Kahneman-Tversky optimisation on completions labelled good or bad (no pairs needed)"
    source = "Ethayarajh et al. 2024, KTO (arXiv 2402.01306); trl KTOTrainer"
    evidence = ("obj.kto_vs_dpo", "obj.chat.dpo_after_sft", "obj.rl.dpo_vs_ppo", "def_kto")
    definition_figure = "def_kto"
    train_hook = "ftadvisor.techniques.kto:train"
    data_formats = ("unpaired_preference", "preference")
    data_kind = "unpaired_preference"
    recommend_data_kinds = ("feedback", "preference")
    recommend_priority = 1  # after DPO/ORPO on pairs at equal terms: the paired objectives use the pairing
    default_learning_rate = 1e-6  # trl KTOConfig learning_rate
    min_micro_batch = 2  # the KL estimate pairs each prompt with a neighbour's completion
    gathers_log_probs = True
    sequences_per_example = 1
    reference = "always"
    precompute_reference = True
    peft_reference_adapter_copy = True
    reference_passes_per_step = 2  # the labelled sequences and the mismatched (KL) ones
    nograd_passes_per_step = 1  # the policy's own pass over the mismatched sequences

    def quality_terms(self, q) -> None:
        if q.task == "preference":
            q.term("obj.kto_vs_dpo", "KTO vs DPO on the same data")
        elif q.task == "rl":
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.term("obj.kto_vs_dpo", "KTO vs DPO")
            q.note("KTO needs the reward turned into desirable/undesirable labels (e.g. a threshold).")
        elif q.task == "chat":
            q.term("obj.chat.dpo_after_sft", "SFT+DPO vs SFT")
            q.term("obj.kto_vs_dpo", "KTO vs DPO")
            q.note("A preference objective on chat needs labelled feedback or pairs, not just demonstrations.")
        else:  # code, math
            self.rl_after_sft_terms(q)
            q.term("obj.rl.dpo_vs_ppo", "DPO vs PPO")
            q.term("obj.kto_vs_dpo", "KTO vs DPO")
            q.note(f"KTO on {q.task} assumes an SFT model first and a check (unit tests, answer match) "
                   "that labels completions good or bad.")


OBJECTIVE = KTO()


def train(session, records, common):
    """The trl KTOTrainer for a built session (the engine calls this hook; trl imported here)."""
    from trl import KTOConfig, KTOTrainer

    plan = session.plan
    args = KTOConfig(**common, max_length=plan.seq_len, precompute_ref_log_probs=plan.dpo_precompute_ref)
    ref = session.reference_model(needed=not plan.dpo_precompute_ref, precomputed=plan.dpo_precompute_ref)
    session.extra_models["reference"] = ref
    return KTOTrainer(
        model=session.model,
        ref_model=ref,
        args=args,
        train_dataset=session.dataset(records),
        processing_class=session.tokenizer,
    )
