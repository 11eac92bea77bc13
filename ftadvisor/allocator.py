"""A pure simulator of PyTorch's CUDA caching allocator: reserved memory from a trace of allocations.

``torch.cuda.max_memory_allocated`` counts the blocks handed to live tensors; ``max_memory_reserved``
counts the segments the allocator took from the driver (cudaMalloc, or pages mapped into an
expandable segment), which it keeps cached after the tensors die. The gap is fragmentation: freed
blocks that later requests cannot use. This module replays a sequence of ``(alloc size | free)``
events through the allocator's rules and reports both peaks.

Rules, from c10/cuda/CUDACachingAllocator.cpp (torch 2.x, ``DeviceCachingAllocator``; constants checked
against pytorch/pytorch at commit 001074d, the ``k*`` constants at the top of the file):

1. ``round_size``: every request is rounded up to a multiple of kMinBlockSize = 512 bytes (the
   ``roundup_power2_divisions`` option is off by default).
2. ``get_pool``: rounded sizes <= kSmallSize = 1 MiB go to the small pool, larger ones to the large
   pool; a block never moves between pools.
3. ``get_free_block``: best fit - the cached free block of the pool with the smallest size >= the
   request (ties: lowest address, ``BlockComparatorSize``). With ``max_split_size`` set, a request
   below it never takes a block at or above it, and a request at or above it takes such a block only
   if the block is less than kLargeBuffer = 20 MiB larger.
4. ``get_allocation_size``: without a fitting block a new segment is cudaMalloc'ed: kSmallBuffer =
   2 MiB for a small request, kLargeBuffer = 20 MiB for a request below kMinLargeAlloc = 10 MiB, else
   the request rounded up to kRoundLarge = 2 MiB.
5. ``should_split``: the block handed out is split when the rest is worth keeping - always (rest >=
   512 B) in the small pool or with expandable segments, in the large pool only when the rest is
   above kSmallSize and the request is below ``max_split_size``. An unsplit block counts its whole
   size as allocated.
6. ``free_block`` / ``try_merge_blocks``: a freed block merges with its free neighbours *within its
   segment* and returns to the pool's cache; segments are never merged with each other and never
   returned to the driver in a training step (only ``empty_cache`` or an out-of-memory retry does
   that: ``release_cached_blocks`` frees the cached segments that are entirely free, then the
   allocation is tried once more - modelled when a ``capacity_bytes`` is given).
7. ``expandable_segments:True`` (Note [Expandable Segments], ``ExpandableSegment``,
   ``try_allocate_expandable_block``): one segment per pool and stream whose physical memory grows
   at its end in pages of 2 MiB (small pool) or 20 MiB (large pool); a request that no cached block
   fits maps just enough pages after the segment's last free block; every block may be split. The
   free tail counts as its expandable size in the best fit, so interior free blocks are taken first.

One stream, no CUDA graphs, no events (single-stream training steps). Pure Python, no torch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterable

MIB = 2**20

# c10/cuda/CUDACachingAllocator.cpp, constants at the top of namespace Native (torch 2.x):
K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1 * MIB  # kSmallSize: largest "small" allocation
K_SMALL_BUFFER = 2 * MIB  # kSmallBuffer: small allocations are packed in 2 MiB segments
K_LARGE_BUFFER = 20 * MIB  # kLargeBuffer: allocations below kMinLargeAlloc get a 20 MiB segment
K_MIN_LARGE_ALLOC = 10 * MIB  # kMinLargeAlloc
K_ROUND_LARGE = 2 * MIB  # kRoundLarge: larger segments are rounded up to 2 MiB
# Note [Expandable Segments]: "we use 2MiB pages for our small pool and 20MiB pages for our large pool".
EXPANDABLE_PAGE_SMALL = 2 * MIB
EXPANDABLE_PAGE_LARGE = 20 * MIB
NO_MAX_SPLIT = 2**63  # max_split_size default: SIZE_MAX (every block may be split)


class OutOfMemory(Exception):
    """The trace needs more than ``capacity_bytes`` even after the cache was released."""


def round_size(size: int) -> int:
    """1. ``round_size``: a multiple of 512 bytes, at least 512."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    return K_MIN_BLOCK_SIZE * ((size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """4. ``get_allocation_size``: the segment cudaMalloc'ed for a rounded request no cached block fits."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


class _Block:
    __slots__ = ("addr", "size", "allocated", "seg", "prev", "next")

    def __init__(self, addr: int, size: int, seg: "_Segment"):
        self.addr, self.size, self.allocated, self.seg = addr, size, False, seg
        self.prev: _Block | None = None
        self.next: _Block | None = None


class _Segment:
    __slots__ = ("size", "small", "head", "expandable")

    def __init__(self, size: int, small: bool, expandable: bool):
        self.size, self.small, self.expandable = size, small, expandable
        self.head: _Block | None = None


@dataclass(frozen=True)
class ReplayResult:
    """Peaks of one replay, in bytes."""

    peak_requested_bytes: int
    """Largest sum of live request sizes (tensor storage bytes): what the estimator's formulas count."""
    peak_allocated_bytes: int
    """Largest sum of live block sizes (``max_memory_allocated``: rounding and unsplit rests included)."""
    peak_reserved_bytes: int
    """Largest sum of segment sizes (``max_memory_reserved``)."""
    segments: int
    """Segments (cudaMalloc calls, or expandable segments) at the end."""
    releases: int
    """Cache releases forced by ``capacity_bytes`` (out-of-memory retries)."""

    @property
    def reserved_over_requested(self) -> float:
        return self.peak_reserved_bytes / self.peak_requested_bytes if self.peak_requested_bytes else 1.0


class CachingAllocator:
    """One device's caching allocator (one stream). ``malloc`` returns a handle for ``free``."""

    def __init__(self, expandable_segments: bool = False, max_split_size: int | None = None,
                 capacity_bytes: int | None = None):
        self.expandable = expandable_segments
        self.max_split = max_split_size if max_split_size is not None else NO_MAX_SPLIT
        self.capacity = capacity_bytes
        # cached free blocks per pool, sorted by (size, address): BlockComparatorSize
        self.cached: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        self.segments: list[_Segment] = []
        self.exp_seg: dict[bool, _Segment] = {}  # expandable segment per pool (small?)
        self.next_addr = 0
        self.requested = self.allocated = self.reserved = 0
        self.peak_requested = self.peak_allocated = self.peak_reserved = 0
        self.releases = 0
        self.live: dict[int, tuple[_Block, int]] = {}
        self._handle = 0

    # --- pool bookkeeping -------------------------------------------------------------------
    def _cache(self, b: _Block) -> None:
        bisect.insort(self.cached[b.seg.small], (b.size, b.addr, b))

    def _uncache(self, b: _Block) -> None:
        pool = self.cached[b.seg.small]
        i = bisect.bisect_left(pool, (b.size, b.addr))
        assert pool[i][2] is b
        del pool[i]

    def _is_tail(self, b: _Block) -> bool:
        return b.seg.expandable and b.next is None

    def _best_fit(self, size: int, small: bool) -> _Block | None:
        """3. ``get_free_block``."""
        pool = self.cached[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        b = pool[i][2]
        if self._is_tail(b):
            # an expandable segment's free tail sorts by its expandable size: any other fitting
            # block comes first
            for j in range(i + 1, len(pool)):
                if not self._is_tail(pool[j][2]):
                    b = pool[j][2]
                    break
        if size < self.max_split <= b.size:
            return None
        if size >= self.max_split and b.size >= size + K_LARGE_BUFFER:
            return None
        self._uncache(b)
        return b

    # --- new memory -------------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> None:
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self._release_cached()
            if self.reserved + nbytes > self.capacity:
                raise OutOfMemory(f"{nbytes} more bytes needed over {self.reserved} reserved of {self.capacity}")
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _release_cached(self) -> None:
        """6. ``release_cached_blocks``: give back every segment that is one free block."""
        self.releases += 1
        keep = []
        for seg in self.segments:
            h = seg.head
            if not seg.expandable and h is not None and not h.allocated and h.next is None:
                self._uncache(h)
                self.reserved -= seg.size
            else:
                keep.append(seg)
        self.segments = keep

    def _new_segment(self, size: int, small: bool) -> _Block:
        """4. a cudaMalloc'ed segment, one free block."""
        alloc = allocation_size(size)
        self._reserve(alloc)
        seg = _Segment(alloc, small, False)
        b = _Block(self.next_addr, alloc, seg)
        self.next_addr += alloc
        seg.head = b
        self.segments.append(seg)
        return b

    def _grow(self, size: int, small: bool) -> _Block:
        """7. ``try_allocate_expandable_block``: map pages at the end of the pool's segment."""
        page = EXPANDABLE_PAGE_SMALL if small else EXPANDABLE_PAGE_LARGE
        seg = self.exp_seg.get(small)
        if seg is None:
            seg = self.exp_seg[small] = _Segment(0, small, True)
            self.segments.append(seg)
            # each expandable segment reserves its own address range (256 TiB of virtual space)
            seg_base, self.next_addr = self.next_addr, self.next_addr + 2**48
            tail = None
        else:
            seg_base = seg.head.addr
            tail = seg.head
            while tail.next is not None:
                tail = tail.next
        have = tail.size if tail is not None and not tail.allocated else 0
        if have:
            self._uncache(tail)
        grow = page * math.ceil((size - have) / page)
        self._reserve(grow)
        if have:
            tail.size += grow
            b = tail
        else:
            b = _Block(seg_base + seg.size, grow, seg)
            if tail is None:
                seg.head = b
            else:
                tail.next, b.prev = b, tail
        seg.size += grow
        return b

    # --- the two calls ----------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        size = round_size(nbytes)  # 1.
        small = size <= K_SMALL_SIZE  # 2.
        b = self._best_fit(size, small)
        if b is None:
            b = self._grow(size, small) if self.expandable else self._new_segment(size, small)
        rest = b.size - size
        if b.seg.small or b.seg.expandable:  # 5. should_split
            split = rest >= K_MIN_BLOCK_SIZE
        else:
            split = size < self.max_split and rest > K_SMALL_SIZE
        if split:
            r = _Block(b.addr + size, rest, b.seg)
            r.prev, r.next = b, b.next
            if b.next is not None:
                b.next.prev = r
            b.next = r
            b.size = size
            self._cache(r)
        b.allocated = True
        self.requested += nbytes
        self.allocated += b.size
        self.peak_requested = max(self.peak_requested, self.requested)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._handle += 1
        self.live[self._handle] = (b, nbytes)
        return self._handle

    def free(self, handle: int) -> None:
        b, nbytes = self.live.pop(handle)
        self.requested -= nbytes
        self.allocated -= b.size
        b.allocated = False
        for nb in (b.prev, b.next):  # 6. merge with free neighbours in the same segment
            if nb is not None and not nb.allocated:
                self._uncache(nb)
                if nb is b.prev:
                    nb.size += b.size
                    nb.next = b.next
                    if b.next is not None:
                        b.next.prev = nb
                    b = nb
                else:
                    b.size += nb.size
                    b.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = b
        if b.prev is None:
            b.seg.head = b
        self._cache(b)

    def result(self) -> ReplayResult:
        return ReplayResult(self.peak_requested, self.peak_allocated, self.peak_reserved, len(self.segments),
                            self.releases)


def required_capacity(events: list[int], step: int = 2 * MIB) -> int:
    """The least device memory (to ``step``) that replays ``events`` without running out, the
    allocator's out-of-memory retry (6.) included; native segments only. Bisection between the
    peak of allocated blocks and the uncapped peak reserved."""
    free_run = replay(events)
    lo, hi = free_run.peak_allocated_bytes, free_run.peak_reserved_bytes
    lo = -(-lo // step) * step
    try:
        replay(events, capacity_bytes=lo)
        return lo
    except OutOfMemory:
        pass
    while hi - lo > step:  # lo fails, hi succeeds
        mid = (lo + hi) // 2 // step * step
        try:
            replay(events, capacity_bytes=mid)
            hi = mid
        except OutOfMemory:
            lo = mid
    return hi


def replay(events: Iterable[int], expandable_segments: bool = False, max_split_size: int | None = None,
           capacity_bytes: int | None = None) -> ReplayResult:
    """Replay a compact trace: a positive number allocates that many bytes (the k-th positive
    number is allocation k, from 0), a negative number ``-(k + 1)`` frees allocation k."""
    alloc = CachingAllocator(expandable_segments, max_split_size, capacity_bytes)
    handles: list[int] = []
    for e in events:
        if e > 0:
            handles.append(alloc.malloc(e))
        elif e < 0:
            alloc.free(handles[-e - 1])
        else:
            raise ValueError("a zero-byte event: zero-size tensors take no block and are left out of traces")
    return alloc.result()


# --- the estimator's rule ------------------------------------------------------------------------
# Reserved over requested peak, per allocator regime, of recorded training steps replayed above
# (calibration/results/allocator/replays.jsonl: Llama-3.2-1B's shape under FakeTensorMode, trl's chunked
# loss, fused AdamW, checkpointing, batches of 4 x 2048 tokens; the command is in each row).
# Fixed lengths: rows llama-3.2-1b-{full,lora}-fixed-chunked (6 steps; the pattern repeats from the
# second step). Varying lengths (log-normal, padded per batch): rows llama-3.2-1b-{full,lora}-varying-
# chunked-24steps, the longest runs, because native reserved memory keeps growing as new lengths come
# (full: 1.10-1.11 after 6 steps over three seeds, 1.22 after 24; with expandable segments 1.05-1.08).
# Sanity check, not a fit: replays of the H200 runs' shapes (4 x 1024 tokens) give 1.056 (full, no
# checkpointing) and 1.089 (LoRA) where the H200 measured 1.055 and 1.066 (calibration/results/h200).
REPLAYED_RATIO = {
    # (expandable_segments, varying_lengths): (trains the base, adapters only) reserved / requested
    (False, False): (1.0491, 1.1718),
    (False, True): (1.2200, 1.0889),
    (True, False): (1.0472, 1.0133),
    (True, True): (1.0769, 1.0146),
}


def reserved_slack(fixed_native_slack: float, expandable: bool, varying: bool, trains_base: bool) -> float:
    """reserved / allocated - 1 for a plan.

    1. Native segments, fixed lengths: ``fixed_native_slack`` (the calibration fit of the card, else the
       default): the regime the measurements cover.
    2. Native segments, varying lengths: the replayed ratio, never below the fixed-length slack (the
       LoRA traces, 1.09-1.17 over five runs, sit inside the spread of the fixed-length one).
    3. Expandable segments: the replayed ratio; the segment grows by pages in place of one cudaMalloc
       per size, so the history of lengths hardly matters and the card's fit does not apply.
    """
    if not expandable and not varying:
        return fixed_native_slack
    sim = REPLAYED_RATIO[(expandable, varying)][0 if trains_base else 1] - 1
    return max(fixed_native_slack, sim) if not expandable else sim
