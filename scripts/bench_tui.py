"""How fast the TUI starts: fresh interpreter → first screen drawn (headless, 80×24).

    .venv/bin/python scripts/bench_tui.py [--repeat 5]

Prints medians over fresh processes; asserts nothing (target: first screen < 1 s). GPU detection
runs in a background thread and is timed separately: the first screen never waits for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys
sys.path.insert(0, {root!r})
from ftadvisor.tui.app import FtAdvisorApp
t_import = time.perf_counter() - t0
out = {{"import_s": t_import}}

class Bench(FtAdvisorApp):
    def _detected(self, det):
        super()._detected(det)
        out["detected_s"] = time.perf_counter() - t0
        out["detection"] = det.note

app = Bench(detector={detector})

async def auto(pilot):
    await pilot.pause()  # the first screen is mounted, laid out and painted
    out["first_screen_s"] = time.perf_counter() - t0
    if {detector} is not None:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    pilot.app.exit()

app.run(headless=True, size=(80, 24), auto_pilot=auto)
print(json.dumps(out))
"""


def run_once(detector: str) -> dict:
    code = CHILD.format(root=str(ROOT), detector=detector)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    runs = [run_once("None") for _ in range(args.repeat)]
    med = lambda key, rs: statistics.median(r[key] for r in rs)  # noqa: E731
    print(f"import ftadvisor.tui.app       {med('import_s', runs) * 1000:7.0f} ms")
    print(f"first screen drawn             {med('first_screen_s', runs) * 1000:7.0f} ms  (target < 1000 ms)")
    det = [run_once("__import__('ftadvisor.detect', fromlist=['detect']).detect") for _ in range(max(1, args.repeat // 2))]
    print(f"first screen, detection on     {med('first_screen_s', det) * 1000:7.0f} ms")
    print(f"GPU detection finished         {med('detected_s', det) * 1000:7.0f} ms  ({det[0]['detection']})")
    print("(times from interpreter start, after Python's own start-up; median of fresh processes)")


if __name__ == "__main__":
    main()
