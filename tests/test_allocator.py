"""The CUDA caching-allocator simulator (ftadvisor/allocator.py) against examples traced by hand from
the rules of c10/cuda/CUDACachingAllocator.cpp, a replay of a stored training-step trace, and the
reserved-memory rule of the estimator."""

from __future__ import annotations

import gzip
import json

import pytest

import ftadvisor as fa
from ftadvisor import allocator as al
from ftadvisor.allocator import MIB, replay
from tests.conftest import ROOT

TRACES = ROOT / "calibration" / "results" / "allocator"


def test_constants_match_the_cpp_source():
    # c10/cuda/CUDACachingAllocator.cpp (torch 2.x): kMinBlockSize 512, kSmallSize 1048576,
    # kSmallBuffer 2097152, kLargeBuffer 20971520, kMinLargeAlloc 10485760, kRoundLarge 2097152
    assert (al.K_MIN_BLOCK_SIZE, al.K_SMALL_SIZE, al.K_SMALL_BUFFER) == (512, 1048576, 2097152)
    assert (al.K_LARGE_BUFFER, al.K_MIN_LARGE_ALLOC, al.K_ROUND_LARGE) == (20971520, 10485760, 2097152)


def test_rounding_and_segment_sizes():
    assert al.round_size(1) == 512 and al.round_size(513) == 1024 and al.round_size(1024) == 1024
    assert al.allocation_size(MIB) == 2 * MIB  # small: a 2 MiB buffer
    assert al.allocation_size(MIB + 512) == 20 * MIB  # 1 .. 10 MiB: a 20 MiB buffer
    assert al.allocation_size(10 * MIB) == 10 * MIB  # from 10 MiB: rounded to 2 MiB
    assert al.allocation_size(10 * MIB + 1) == 12 * MIB


def test_three_small_versus_three_large_requests():
    # 3 x 1 MiB (small pool): 2 MiB buffer split 1 + 1, the second request takes the exact rest,
    # the third needs a second buffer -> 4 MiB reserved.
    r = replay([MIB] * 3)
    assert (r.peak_allocated_bytes, r.peak_reserved_bytes, r.segments) == (3 * MIB, 4 * MIB, 2)
    # 3 x 1.5 MiB (large pool): one 20 MiB buffer split three times (rests 18.5, 17, 15.5 MiB > 1 MiB)
    r = replay([3 * MIB // 2] * 3)
    assert (r.peak_allocated_bytes, r.peak_reserved_bytes, r.segments) == (4.5 * MIB, 20 * MIB, 1)
    # 3 x 100 B: rounded to 512 B each, all in one 2 MiB buffer
    r = replay([100] * 3)
    assert (r.peak_requested_bytes, r.peak_allocated_bytes, r.peak_reserved_bytes) == (300, 1536, 2 * MIB)


def test_unsplit_rest_counts_as_allocated():
    # 11.5 MiB -> a 12 MiB segment; the 0.5 MiB rest is not above kSmallSize, so no split: the
    # block (12 MiB) is what max_memory_allocated counts.
    r = replay([23 * MIB // 2])
    assert (r.peak_requested_bytes, r.peak_allocated_bytes, r.peak_reserved_bytes) == (23 * MIB // 2, 12 * MIB, 12 * MIB)
    # 10.5 MiB -> rounded 12 MiB segment, rest 1.5 MiB > 1 MiB is split off and stays cached
    r = replay([21 * MIB // 2])
    assert (r.peak_allocated_bytes, r.peak_reserved_bytes) == (21 * MIB // 2, 12 * MIB)


def test_free_then_larger_request_grows_reserved():
    # native: the freed 12 MiB segment cannot hold 14 MiB, and segments never merge -> 26 MiB
    r = replay([12 * MIB, -1, 14 * MIB])
    assert (r.peak_allocated_bytes, r.peak_reserved_bytes, r.segments) == (14 * MIB, 26 * MIB, 2)
    # a smaller request reuses the cached segment: no growth
    r = replay([12 * MIB, -1, 11 * MIB])
    assert r.peak_reserved_bytes == 12 * MIB
    # expandable: 12 MiB maps one 20 MiB page; freed, the 20 MiB free tail holds the 14 MiB
    r = replay([12 * MIB, -1, 14 * MIB], expandable_segments=True)
    assert (r.peak_reserved_bytes, r.segments) == (20 * MIB, 1)


def test_expandable_segment_grows_by_pages_after_its_free_tail():
    # 12 MiB -> 20 MiB mapped, 8 MiB free tail; 30 MiB needs 22 MiB more -> two 20 MiB pages: 60 MiB
    r = replay([12 * MIB, 30 * MIB], expandable_segments=True)
    assert r.peak_reserved_bytes == 60 * MIB
    # native: two exact segments (12 + 30 MiB)
    assert replay([12 * MIB, 30 * MIB]).peak_reserved_bytes == 42 * MIB


def test_freed_neighbours_merge_within_a_segment_only():
    # two 0.5 MiB blocks of one 2 MiB buffer freed -> merged with the 1 MiB rest into 2 MiB, which
    # then holds a 1 MiB request without a new buffer
    r = replay([MIB // 2, MIB // 2, -1, -2, MIB, MIB])
    assert r.peak_reserved_bytes == 2 * MIB
    # 4 x 6 MiB: a 20 MiB buffer holds three (rest 2 MiB), the fourth gets a second buffer.
    # Free one block in each buffer: 6 + 2 MiB free in the first (merged: 8), 6 + 14 in the second
    # (merged: 20). A 12 MiB request fits no free block of the first, takes the second's 20.
    M6 = 6 * MIB
    r = replay([M6, M6, M6, M6, -3, -4, 12 * MIB])
    assert (r.peak_reserved_bytes, r.segments) == (40 * MIB, 2)


def test_out_of_memory_retry_releases_free_segments():
    # 12 MiB freed, then 14 MiB under a 16 MiB cap: the allocator frees the cached 12 MiB
    # segment and retries -> fits, one release
    r = replay([12 * MIB, -1, 14 * MIB], capacity_bytes=16 * MIB)
    assert (r.peak_reserved_bytes, r.releases) == (14 * MIB, 1)
    with pytest.raises(al.OutOfMemory):
        replay([12 * MIB, 14 * MIB], capacity_bytes=16 * MIB)
    # the least capacity: 26 MiB uncapped, 14 MiB with the retry; two live blocks need both
    assert al.required_capacity([12 * MIB, -1, 14 * MIB]) == 14 * MIB
    assert al.required_capacity([12 * MIB, 14 * MIB]) == 26 * MIB


def _trace(name: str) -> dict:
    with gzip.open(TRACES / f"{name}.json.gz", "rt") as f:
        return json.load(f)


def test_stored_trace_replays_to_its_recorded_result():
    rows = {json.loads(line)["name"]: json.loads(line) for line in (TRACES / "replays.jsonl").read_text().splitlines()}
    name = "tiny-full-fixed"
    tr = _trace(name)
    assert tr["command"].startswith("python -m ftadvisor.calibration.alloc_trace")
    ev = tr["events"]
    n_alloc = sum(1 for e in ev if e > 0)
    assert all(-e - 1 < n_alloc for e in ev if e < 0)
    # the trace's own invariant: requested peak = the largest running sum of live sizes
    sizes, live, peak = [], 0, 0
    for e in ev:
        if e > 0:
            sizes.append(e)
            live += e
        else:
            live -= sizes[-e - 1]
        peak = max(peak, live)
    for mode, exp in (("native", False), ("expandable", True)):
        r = replay(ev, expandable_segments=exp)
        want = rows[name]["replay"][mode]
        assert r.peak_requested_bytes == peak == want["peak_requested_bytes"]
        assert r.peak_reserved_bytes == want["peak_reserved_bytes"]
        # reserved is at least allocated is at least requested
        assert r.peak_reserved_bytes >= r.peak_allocated_bytes >= r.peak_requested_bytes


def _rows() -> dict:
    return {json.loads(line)["name"]: json.loads(line) for line in (TRACES / "replays.jsonl").read_text().splitlines()}


def test_regime_table_is_the_replayed_data():
    # the estimator's constants are the stored replays: fixed lengths from the 6-step traces, varying
    # lengths from the 24-step ones (ftadvisor/allocator.py, REPLAYED_RATIO)
    rows = _rows()
    for (exp, varying), (full, lora) in al.REPLAYED_RATIO.items():
        mode = "expandable" if exp else "native"
        for tech, want in (("full", full), ("lora", lora)):
            name = f"llama-3.2-1b-{tech}-varying-chunked-24steps" if varying else f"llama-3.2-1b-{tech}-fixed-chunked"
            assert rows[name]["seq_len"] == 2048 and rows[name]["loss"] == "chunked"
            assert rows[name]["replay"][mode]["reserved_over_requested"] == pytest.approx(want, abs=5e-5), (name, mode)


def test_simulated_slack_near_the_h200_measurements():
    # Sanity check, not a fit: calibration/results/h200/launch.jsonl measured reserved/allocated on an
    # H200 with trl for Llama-3.2-1B's shape, 4 x 1024 tokens: full without checkpointing 1.0548,
    # LoRA with checkpointing 1.0661. The replays of the same shapes (chunked loss) are within 2.5%.
    rows = _rows()
    full = rows["llama-3.2-1b-full-fixed-s1024-nogc-chunked"]["replay"]["native"]["reserved_over_requested"]
    lora = rows["llama-3.2-1b-lora-fixed-s1024-chunked"]["replay"]["native"]["reserved_over_requested"]
    assert full == pytest.approx(1.0548, abs=0.01)
    assert lora == pytest.approx(1.0661, abs=0.025)


def _ratio(**plan) -> float:
    m = fa.estimate("llama-3.1-8b", "a100-80gb", plan=plan).memory
    return m.peak_reserved_bytes / m.peak_allocated_bytes


def test_estimator_reserved_follows_the_regime():
    # hf-trl (native segments), fixed lengths: the default slack, unchanged (8% on an uncalibrated card)
    assert _ratio(technique="lora") == pytest.approx(1.08, abs=1e-6)
    assert _ratio(technique="full") == pytest.approx(1.08, abs=1e-6)
    # varying lengths, native: full fine-tuning's 24-step replay (1.22); LoRA's replay (1.0889) is
    # barely above the default 8%
    assert _ratio(technique="full", varying_lengths=True) == pytest.approx(1.22, abs=1e-6)
    assert _ratio(technique="lora", varying_lengths=True) == pytest.approx(1.0889, abs=1e-6)
    # axolotl sets expandable_segments:True itself (frameworks/axolotl.py): the expandable replays
    assert _ratio(technique="lora", framework="axolotl") == pytest.approx(1.0133, abs=1e-6)
    assert _ratio(technique="full", framework="axolotl", varying_lengths=True) == pytest.approx(1.0769, abs=1e-6)
    # llama-factory sets it only when it launches several GPUs (torchrun)
    assert _ratio(technique="lora", framework="llama-factory") == pytest.approx(1.08, abs=1e-6)
    # device total = reserved + CUDA context (+ paged state): what nvidia-smi shows
    m = fa.estimate("llama-3.1-8b", "a100-80gb", plan={"technique": "lora", "varying_lengths": True}).memory
    assert m.device_total_bytes == m.peak_reserved_bytes + m.runtime_overhead_bytes + m.paged_bytes


def test_calibrated_slack_stays_for_the_fixed_native_regime_only():
    # h200 has a fitted slack (calibration/corrections/h200.yaml: 0.0605, fixed-length hf-trl runs)
    m = fa.estimate("llama-3.1-8b", "h200", plan={"technique": "lora"}).memory
    assert m.peak_reserved_bytes / m.peak_allocated_bytes == pytest.approx(1.0605, abs=1e-6)
    m = fa.estimate("llama-3.1-8b", "h200", plan={"technique": "full", "varying_lengths": True}).memory
    assert m.peak_reserved_bytes / m.peak_allocated_bytes == pytest.approx(1.22, abs=1e-6)


def test_grid_and_single_estimate_agree_on_reserved():
    g = fa.estimate_grid("llama-3.1-8b", "a100-80gb", technique=["lora"], varying_lengths=[True, False],
                         seq_len=[1024, 4096])
    seen = 0
    for row in g.rows():
        one = fa.estimate("llama-3.1-8b", "a100-80gb",
                          plan={"technique": "lora", "varying_lengths": row["varying_lengths"], "seq_len": row["seq_len"]})
        assert row["peak_reserved_bytes"] == pytest.approx(one.memory.peak_reserved_bytes, abs=1)
        seen += 1
    assert seen == 4


def test_recorder_logs_a_real_cpu_training_step():
    # ftadvisor/calibration/alloc_trace.py on the tiny Llama (hidden 512, 4 layers, vocab 8192), two steps
    pytest.importorskip("transformers")
    from ftadvisor.calibration.alloc_trace import batch_lengths, record

    ev, lengths = record("full", "varying", steps=2, batch=2, seq_len=64, fake=False, loss="chunked")
    assert lengths == batch_lengths("varying", 2, 2, 64)
    # parameters first, in module order, fp32: embed_tokens 8192 x 512, then layer 0's q, k, v, o
    # (512x512, 256x512, 256x512, 512x512; 4 KV heads of 64)
    assert ev[:5] == [8192 * 512 * 4, 512 * 512 * 4, 256 * 512 * 4, 256 * 512 * 4, 512 * 512 * 4]
    # 20,976,128 parameters (embeddings 2 x 4,194,304 untied, 4 layers x 3,146,752, final norm 512):
    # weights, gradients and AdamW's two moments in fp32 are alive together at the optimizer step
    params = 2 * 8192 * 512 + 4 * (2 * 512 * 512 + 2 * 256 * 512 + 3 * 512 * 1536 + 2 * 512) + 512
    assert params == 20_976_128
    r = replay(ev)
    assert r.peak_requested_bytes >= 4 * 4 * params
    assert r.peak_reserved_bytes >= r.peak_allocated_bytes >= r.peak_requested_bytes
