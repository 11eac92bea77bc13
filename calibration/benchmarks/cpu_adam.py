"""How fast one CPU thread (and all of them) runs a fused AdamW step, the figure behind
ftadvisor.links.CPU_OPT_THREAD_GBPS (source key ``cpu_adam_measured``).

Run from the repository root (needs torch, the training stack; ~30 s, a few hundred MB of RAM):

    .venv/bin/python calibration/benchmarks/cpu_adam.py

It prints, for 1 thread and for all of torch's threads, a plain copy's bandwidth (8 B per
element) and the fused torch.optim.AdamW step over 4e7 fp32 parameters as seconds per 1e9
parameters and as GB/s of the 28 bytes a step touches per parameter (read param, grad, exp_avg,
exp_avg_sq; write param, exp_avg, exp_avg_sq), best of five; and the non-fused step for comparison.
"""

from __future__ import annotations

import time

import torch

N = 40_000_000


def best(fn, k: int = 5) -> float:
    times = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    p, g, dst = torch.randn(N), torch.randn(N), torch.empty(N)
    out = {"threads": threads, "copy_GBps": 8 * N / best(lambda: dst.copy_(p)) / 1e9}
    for fused in (True, False):
        param = torch.nn.Parameter(p.clone())
        param.grad = g.clone()
        opt = torch.optim.AdamW([param], lr=1e-3, fused=fused, foreach=None if fused else False)
        opt.step()
        t = best(opt.step)
        out[f"{'fused' if fused else 'loop'}_s_per_1e9_params"] = t / N * 1e9
        out[f"{'fused' if fused else 'loop'}_GBps_at_28B"] = 28 * N / t / 1e9
    return out


if __name__ == "__main__":
    for n in sorted({1, torch.get_num_threads()}):
        print({k: round(v, 3) for k, v in measure(n).items()})
