"""Calibration: measure real fine-tuning steps and fit corrections for the cost model.

    ftadvisor calibrate cpu-tiny            # run calibration/sweeps/cpu-tiny.yaml, append results
    ftadvisor calibrate fit --hardware cpu  # results -> calibration/corrections/cpu.yaml
    ftadvisor calibrate report              # predicted vs measured, before/after correction

Layout of this package (each module says how it is used):

- ``sweep``: the sweep YAML schema and its expansion into cases with stable ids (pure);
- ``store``: the results JSONL files (atomic appends under a lock, resume; pure);
- ``runner``: runs each case in its own subprocess with a timeout and records the outcome;
  ``python -m ftadvisor.calibration.runner`` is also the child's entry point;
- ``measure``: the measurement backends (cuda, cpu, trace) around one engine launch (torch);
- ``fit``: results -> corrections file (pandas);
- ``corrections``: load and apply a corrections file (pure, what the estimator calls);
- ``report``: predicted vs measured tables and a terminal scatter plot.

Importing this package loads nothing heavy; torch, the training stack and pandas are
imported by the functions that need them.
"""

from __future__ import annotations

from ftadvisor.profiles import calibration_dir

__all__ = ["calibration_dir", "run_sweep"]


def run_sweep(*args, **kwargs):
    """Run a sweep; see :func:`ftadvisor.calibration.runner.run_sweep`."""
    from ftadvisor.calibration.runner import run_sweep as _run

    return _run(*args, **kwargs)
