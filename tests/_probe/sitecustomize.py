"""Learning probe (scripts/learning_probe.sh): with FTADVISOR_PROBE_LR_ZERO=1, every Python process
that has this folder on PYTHONPATH trains with a learning rate of 0.

Python imports ``sitecustomize`` at start-up, so this reaches the processes tests start too
(``python -m ftadvisor.cli launch``, accelerate's workers, the TUI's launch). It patches nothing in
the product's files: an import hook wraps ``ftadvisor.train.engine._common_args`` (the one place the
engine sets the trainer's learning rate, for every objective) once that module is imported. Steps
still run, losses are still logged, weights never change: a test that passes like this does not
check learning.
"""

from __future__ import annotations

import os
import sys

_TARGET = "ftadvisor.train.engine"


def _patch(module) -> None:
    original = module._common_args

    def _common_args(session):
        args = original(session)
        args["learning_rate"] = 0.0
        return args

    _common_args.probe_lr_zero = True  # scripts/learning_probe.sh checks that the probe is active
    module._common_args = _common_args


if os.environ.get("FTADVISOR_PROBE_LR_ZERO") == "1":
    import importlib.abc

    class _PatchEngineOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != _TARGET:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    break
            else:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _PatchEngineOnImport())
