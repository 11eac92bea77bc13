"""Where ``ftadvisor launch`` keeps run directories and its calibration records: the user's runs folder.

    ftadvisor launch plan.yaml --data D --model M                 # -> ~/ftadvisor-runs/<time>-<technique>-<model>
    FTADVISOR_RUNS=/scratch/runs ftadvisor launch ...             # another runs folder
    ftadvisor launch ... --runs-dir /scratch/runs                 # the same, for one command
    ftadvisor launch ... --output somewhere/else                   # one run directory, wherever you like

The folder is the user's, never the source checkout: a launch writes nothing into the repository
(its run directory and its calibration record both go here). Each real launch appends its measured
peak memory and throughput next to the prediction to ``<runs folder>/calibration/<hardware>/launch.jsonl``,
the layout of ``calibration/results`` (ftadvisor.calibration.store), so ``ftadvisor calibrate fit``
reads it as well (ftadvisor.calibration.fit.load_frame) and ``--results <runs folder>/calibration``
fits it alone.

Pure module: standard library only.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

RUNS_ENV = "FTADVISOR_RUNS"
"""Environment variable naming the runs folder (``--runs-dir`` wins over it)."""
DEFAULT_RUNS_DIR = "~/ftadvisor-runs"
"""The runs folder when neither ``--runs-dir`` nor ``$FTADVISOR_RUNS`` names one: in the user's home,
visible (runs hold models the user wants to find), outside any checkout."""
CALIBRATION_SUBDIR = "calibration"
"""``<runs folder>/calibration``: results root (``<hardware>/launch.jsonl``) of the launches' records."""


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    """The runs folder: ``override`` (``--runs-dir``), else ``$FTADVISOR_RUNS``, else ``~/ftadvisor-runs``
    (absolute; not created here)."""
    raw = override if override not in (None, "") else os.environ.get(RUNS_ENV) or DEFAULT_RUNS_DIR
    return Path(raw).expanduser().absolute()


def launch_results_root(override: str | os.PathLike | None = None) -> Path:
    """Results root of the launches' calibration records: ``<runs folder>/calibration``."""
    return runs_dir(override) / CALIBRATION_SUBDIR


def _slug(text: str, limit: int = 40) -> str:
    """``text`` as a file-name part: letters, digits, ``.``, ``_``, ``-`` only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:limit] or "run"


def default_run_name(technique: str, model: str, now: float | None = None) -> str:
    """``<UTC time>-<technique>-<model name>``, e.g. ``20261205-213000-dpo+lora-tiny-llama``: sorts by time,
    and says what ran. The model name is the last part of a path or hub id."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    name = Path(str(model).rstrip("/")).name or str(model)
    return f"{stamp}-{_slug(technique.replace('+', '-'))}-{_slug(name)}"


def default_output(technique: str, model: str, runs: str | os.PathLike | None = None) -> Path:
    """A fresh run directory under the runs folder (a numeric suffix when the name is taken)."""
    base = runs_dir(runs) / default_run_name(technique, model)
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out
