"""The training signal of each objective: a few numbers under fixed names, taken from what the trl
trainer logs, for the run log, the progress line and the TUI's plots.

Pure Python (no torch): the TUI and the launcher import it before any training stack is loaded.

Record format (``train_log.jsonl``, one JSON object per line, written by
``ftadvisor.train.engine``):

- ``{"event": "start", ..., "objective": "dpo", "signals": [{"name", "label", "description"}, ...],
  "legend": "..."}``: which signal names this run's steps can carry, in plotting order;
- ``{"event": "step", "step": N, "loss": float, ..., "metrics": {...}, "signal": {...}}`` once per
  optimizer step: ``metrics`` holds every finite number the trainer logged under trl's own names
  (they differ between trainers and versions), ``signal`` the same information under the fixed
  names of :data:`SIGNALS` (a name is absent at a step where the trainer did not log it, e.g. KTO's
  ``reward_rejected`` when a batch held no undesirable example);
- ``{"event": "end", ...}``.

Fixed names (trl 1.12 keys in brackets; source files under ``trl/``):

- preference objectives, DPO (``trainer/dpo_trainer.py``), ORPO (``experimental/orpo/orpo_trainer.py``),
  KTO (``trainer/kto_trainer.py``): ``reward_chosen`` [rewards/chosen], ``reward_rejected``
  [rewards/rejected], ``margin`` [rewards/margins], ``accuracy`` [rewards/accuracies, DPO and ORPO;
  KTO logs none], ``kl`` [kl, KTO's batch KL estimate], ``log_odds_ratio`` [log_odds_ratio, ORPO];
- RL objectives, GRPO (``trainer/grpo_trainer.py``): ``reward_mean`` [reward], ``reward_std``
  [reward_std], ``kl`` [kl, only when grpo_beta > 0], ``completion_length`` [completions/mean_length];
  PPO (``experimental/ppo/ppo_trainer.py``): ``reward_mean`` [objective/scores, the reward model's
  score], ``kl`` [objective/kl], ``rlhf_reward`` [objective/rlhf_reward, score minus the KL
  penalty]; trl's PPOTrainer logs no reward spread and no completion length.
- SFT: none (its signal is the loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Signal:
    name: str
    """Fixed name in the step record's ``signal`` dict."""
    keys: tuple[str, ...]
    """trl log keys it is read from (the first one present wins)."""
    label: str
    """Short label on the progress line."""
    description: str
    progress: bool = False
    """Shown on the progress line (the two or three most telling numbers of the objective)."""


_PREF_DESC = {
    "reward_chosen": "implicit reward of the chosen answers: beta x log(pi/pi_ref) (Rafailov et al. 2023, eq. 5)",
    "reward_rejected": "implicit reward of the rejected answers",
    "margin": "mean of reward_chosen - reward_rejected per pair",
    "accuracy": "share of pairs whose chosen answer out-scores the rejected one",
}


def _pref(accuracy: bool, extra: tuple[Signal, ...] = ()) -> tuple[Signal, ...]:
    out = [
        Signal("reward_chosen", ("rewards/chosen",), "chosen", _PREF_DESC["reward_chosen"]),
        Signal("reward_rejected", ("rewards/rejected",), "rejected", _PREF_DESC["reward_rejected"]),
        Signal("margin", ("rewards/margins",), "margin", _PREF_DESC["margin"], progress=True),
    ]
    if accuracy:
        out.insert(0, Signal("accuracy", ("rewards/accuracies",), "acc", _PREF_DESC["accuracy"], progress=True))
    return tuple(out) + extra


SIGNALS: dict[str, tuple[Signal, ...]] = {
    "sft": (),
    "dpo": _pref(True),
    "orpo": _pref(True, (Signal(
        "log_odds_ratio", ("log_odds_ratio",), "log-odds",
        "log sigmoid of the chosen-vs-rejected log odds ratio; climbs to 0 (Hong et al. 2024, eq. 7)"),)),
    "kto": _pref(False, (Signal(
        "kl", ("kl",), "kl", "batch estimate of KL(policy || reference), KTO's reference point z0 "
        "(Ethayarajh et al. 2024, eq. 7)", progress=True),)),
    "grpo": (
        Signal("reward_mean", ("reward",), "reward", "mean reward of the sampled completions", progress=True),
        Signal("reward_std", ("reward_std",), "std", "standard deviation of those rewards; 0 means no "
               "group can tell its completions apart and no gradient flows (advantages are rewards "
               "normalised within the group, Shao et al. 2024 section 4.1.2)", progress=True),
        Signal("kl", ("kl",), "kl", "KL(policy || reference) per token (only when grpo_beta > 0)"),
        Signal("completion_length", ("completions/mean_length",), "len", "mean completion length in tokens",
               progress=True),
    ),
    "ppo": (
        Signal("reward_mean", ("objective/scores",), "score", "mean reward-model score of the rollouts",
               progress=True),
        Signal("kl", ("objective/kl",), "kl", "KL(policy || reference) summed over the response", progress=True),
        Signal("rlhf_reward", ("objective/rlhf_reward",), "rlhf", "score minus the KL penalty (what PPO maximises)"),
    ),
}
"""Per objective name (``ftadvisor.techniques`` objectives), the signals its steps carry."""

LEGENDS: dict[str, str] = {
    "sft": "loss = mean next-token cross-entropy (ln V for a uniform guess over V tokens)",
    "dpo": "loss starts at ln 2 = 0.693 (policy = reference, -log sigmoid(0)); acc = pairs ranked right, "
           "margin = reward chosen - rejected (beta x log-ratio)",
    "orpo": "loss = NLL of the chosen answer + lambda x odds-ratio term; acc = pairs ranked right, "
            "margin = beta x (log-prob chosen - rejected)",
    "kto": "loss starts near 0.5 (policy = reference, 1 - sigmoid(0)); margin = reward desirable - undesirable, "
           "kl = the reference point",
    "grpo": "reward = mean over each group's completions, std = its spread (0: nothing to learn from), "
            "len = completion tokens; the loss hovers near 0 by construction (advantages sum to 0)",
    "ppo": "score = reward model's mean score, kl = drift from the reference; loss = policy loss",
}
"""One line per objective explaining how to read its progress line."""


def signals_for(objective: str) -> tuple[Signal, ...]:
    return SIGNALS.get(objective, ())


def describe(objective: str) -> list[dict]:
    """The start record's ``signals``: name, label and description of each signal, plotting order."""
    return [{"name": s.name, "label": s.label, "description": s.description} for s in signals_for(objective)]


def extract(objective: str, logs: dict) -> dict[str, float]:
    """The fixed-name signal of one step from the trainer's log dict (finite numbers only)."""
    out: dict[str, float] = {}
    for s in signals_for(objective):
        for key in s.keys:
            v = logs.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(float(v)):
                out[s.name] = float(v)
                break
    return out


def _fmt(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 0.01 or a >= 1000):
        return f"{v:.2e}"
    return f"{v:.3f}" if a < 10 else f"{v:.1f}"


def progress_text(objective: str, signal: dict | None) -> str:
    """The progress line's part after the loss, e.g. ``acc 0.750  margin 0.120`` (DPO)."""
    signal = signal or {}
    parts = [f"{s.label} {_fmt(signal[s.name])}" for s in signals_for(objective) if s.progress and s.name in signal]
    return "  ".join(parts)
