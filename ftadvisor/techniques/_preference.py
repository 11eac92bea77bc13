"""What the preference and RL objectives share: they optimise preferences or a reward, so they
cannot learn a domain corpus or a fact list, and on demonstration tasks they follow an SFT stage."""

from __future__ import annotations

from ftadvisor.techniques.base import Objective


class AlignmentObjective(Objective):
    """An objective trained on preferences or a reward rather than demonstrations."""

    definition_figure: str
    """Evidence figure that defines what the objective optimises (shown when it is not applicable)."""

    def learns_corpus(self) -> bool:
        return False

    def rl_after_sft_terms(self, q) -> None:
        """code/math: an RL stage after SFT (DeepSeekMath), the objective relative to that."""
        q.term("obj.math.rl_after_sft", "SFT then GRPO vs SFT alone (math)")
        if q.task == "code":
            q.weak("RL on code: no code figure collected, the math gains (DeepSeekMath) are used")
