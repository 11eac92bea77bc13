"""The training engine shared by ``ftadvisor calibrate`` and ``ftadvisor launch``.

Importing this package is cheap; torch, transformers, peft, bitsandbytes and trl load when
``build`` / ``run`` / ``load_trained`` are called. See ``ftadvisor/train/engine.py``.
"""

from __future__ import annotations

__all__ = ["TrainJob", "Session", "RunResult", "build", "run", "save", "load_trained"]


def __getattr__(name):
    if name in __all__:
        from ftadvisor.train import engine

        return getattr(engine, name)
    raise AttributeError(name)
