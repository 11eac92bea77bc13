"""Benchmark the estimator's speed: import time, one CLI call, and grid throughput.

    .venv/bin/python scripts/bench_estimator.py

Prints figures; asserts nothing (targets: CLI < 0.5 s, grid > 100,000 plans/s).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    py = sys.executable
    base = wall([py, "-c", "pass"])
    imp = wall([py, "-c", "import ftadvisor"])
    cli = wall([py, "-m", "ftadvisor.cli", "estimate", "-m", "llama-3.1-8b", "-g", "rtx4090", "-t", "qlora"])
    cli_all = wall([py, "-m", "ftadvisor.cli", "estimate", "-m", "llama-3.1-8b", "-g", "rtx4090", "-t", "all"])
    print(f"python start-up            {base * 1000:7.0f} ms")
    print(f"import ftadvisor           {(imp - base) * 1000:7.0f} ms (beyond start-up)")
    print(f"ftadvisor estimate (1)     {cli * 1000:7.0f} ms wall")
    print(f"ftadvisor estimate (all)   {cli_all * 1000:7.0f} ms wall")

    sys.path.insert(0, str(ROOT))
    import ftadvisor as fa

    t0 = time.perf_counter()
    n = 0
    for _ in range(200):
        fa.estimate("llama-3.1-8b", "h100", "qlora", seq_len=2048)
        n += 1
    single = n / (time.perf_counter() - t0)
    print(f"single estimates           {single:7.0f} /s")

    axes = dict(
        technique=["full", "lora", "qlora", "dora", "dpo+lora", "grpo+lora"],
        gradient_checkpointing=[False, True],
        micro_batch_size=[1, 2, 4, 8, 16, 32],
        seq_len=[256, 512, 1024, 2048, 4096, 8192, 16384],
        lora_r=[4, 8, 16, 32, 64, 128, 256],
        gradient_accumulation_steps=[1, 2, 4, 8, 16],
    )
    fa.estimate_grid("llama-3.1-8b", "h100", **axes)  # warm-up (numpy import)
    t0 = time.perf_counter()
    grid = fa.estimate_grid("llama-3.1-8b", "h100", **axes)
    dt = time.perf_counter() - t0
    print(f"grid of {len(grid):,} plans       {dt * 1000:7.0f} ms -> {len(grid) / dt:,.0f} plans/s "
          f"({int(grid.columns['fits'].sum()):,} fit an H100)")


if __name__ == "__main__":
    main()
