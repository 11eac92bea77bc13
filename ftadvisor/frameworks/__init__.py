"""Training frameworks as parts, in the shape of :mod:`ftadvisor.techniques`: one module per
framework declaring, at a named version, how it places memory (see
:mod:`ftadvisor.frameworks.base`), and this registry.

``FRAMEWORKS`` lists them in order; the first, ``hf-trl``, is what ``ftadvisor launch`` runs and the
plan's default. A new framework is one module listed in ``_MODULES``; ``tests/test_frameworks.py``
checks every registered one declares every behaviour with a source.
"""

from __future__ import annotations

from ftadvisor.errors import FtAdvisorError
from ftadvisor.frameworks import axolotl, hf_trl, litgpt, llama_factory, torchtune, unsloth
from ftadvisor.frameworks.base import DECLARATIONS, Framework

_MODULES = (hf_trl, axolotl, llama_factory, torchtune, litgpt, unsloth)

FRAMEWORKS: dict[str, type[Framework]] = {m.FRAMEWORK.name: m.FRAMEWORK for m in _MODULES}

DEFAULT_FRAMEWORK = "hf-trl"
"""The stack ``ftadvisor launch`` runs (trl + transformers + peft)."""

# Spellings a user may type for a framework.
ALIASES = {"hf": "hf-trl", "trl": "hf-trl", "hf/trl": "hf-trl", "transformers": "hf-trl",
           "llamafactory": "llama-factory", "llama_factory": "llama-factory", "lit-gpt": "litgpt"}


def canonical_framework(name) -> str:
    """The registered name for ``name`` (aliases and case accepted); one-line error otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise FtAdvisorError("framework", "must be a framework name", list(FRAMEWORKS))
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FRAMEWORKS:
        from ftadvisor.errors import shown

        raise FtAdvisorError("framework", f"unknown framework {shown(name, 60)}", list(FRAMEWORKS))
    return key


def get_framework(name) -> type[Framework]:
    return FRAMEWORKS[canonical_framework(name)]


__all__ = ["DECLARATIONS", "DEFAULT_FRAMEWORK", "FRAMEWORKS", "Framework", "canonical_framework", "get_framework"]
