"""Is the training stack installed? (checked without importing it)"""

from __future__ import annotations

import importlib.util

from ftadvisor.errors import FtAdvisorError

TRAINING_STACK = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")


def require_training_stack(command: str) -> None:
    """Raise a one-line FtAdvisorError naming the missing packages and how to install them."""
    missing = [m for m in TRAINING_STACK if importlib.util.find_spec(m) is None]
    if missing:
        raise FtAdvisorError(
            command,
            f"needs the training stack; missing {', '.join(missing)}: run `scripts/setup.sh train` "
            "(or pip install 'ftadvisor[train]' with torch pinned as in requirements/train.txt)",
        )
