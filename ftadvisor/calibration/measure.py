"""Measurement backends: run one case through the training engine and measure it.

The case is built and trained by ``ftadvisor.train.engine`` (``build`` + ``run``) on synthetic
data of the planned shape; this module never applies a technique itself. It adds a trainer
callback that opens a measurement window after the warm-up steps and splits each optimizer step
into phases (``forward_backward`` from step begin to ``on_pre_optimizer_step``, ``optimizer_step``
from there to the step's end, ``generation`` while ``GenerationMixin.generate`` runs).

Backends (:data:`BACKENDS`):

- ``cuda``: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after
  ``reset_peak_memory_stats`` at every phase boundary of the measured steps; the device total as
  nvidia-smi shows it (NVML through ``pynvml`` when importable, else ``nvidia-smi
  --query-compute-apps``/``--query-gpu=memory.used``); step time from ``torch.cuda.synchronize``
  + ``perf_counter`` at step boundaries.
- ``cpu``: :class:`LiveTensorMeter`, a ``TorchDispatchMode`` that sees every tensor an aten op
  returns, keys it by its untyped storage (views share one), frees it through a
  ``weakref.finalize`` on the storage, and keeps the running and the peak sum of live storage
  bytes: the host-side analogue of ``max_memory_allocated``. Parameters, buffers and anything
  alive before training are registered once from a ``gc`` scan. Gradients are tagged by
  post-accumulate-grad hooks on trainable parameters only (frozen parameters get none: the
  problem ``torch.distributed._tools.mem_tracker.MemTracker`` has with them), optimizer state
  from the optimizer's state dict. The meter is on the dispatch stack from the start of the run
  (so allocations made inside C++, like DDP's gradient buckets, are seen), is taken off it for
  ``steps`` extra timed steps after the warm-up (its per-op Python call would inflate step times),
  and goes back on, with a fresh ``gc`` scan, for the measured steps.
- ``trace``: the same meter over ``FakeTensorMode`` (tensors with shapes and dtypes but no data)
  on a reduced-depth copy of a full-size model: exact tensor bytes of a model that does not fit
  the machine. Two depths ``n`` and ``n + 1`` are traced and each phase's peak is extrapolated
  linearly to the full depth: ``peak(L) = peak(n) + (L - n) * (peak(n+1) - peak(n))`` (every
  per-layer quantity - weights, gradients, optimizer state, saved activations or checkpoints -
  is linear in the layer count; the maximum over phases is taken after extrapolating). Data-
  dependent scalars (``.item()``, ``bool(t)``) read as ``1`` (``False`` for booleans) so the
  trainers' logging runs; quantized bases (bitsandbytes needs real weights to quantize) and
  generation (data-dependent stopping) are not traceable and are recorded as ``skipped``.

Every measurement says which backend measured it and how (``method``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import weakref
from typing import Any

BACKENDS = ("cuda", "cpu", "trace")
PHASES = ("forward_backward", "optimizer_step", "generation")
TAGS = ("weights", "gradients", "optimizer_state", "other")


class Unsupported(Exception):
    """The case cannot be measured with this backend here (recorded as ``skipped``)."""


# --- backend choice -------------------------------------------------------------------------


def cuda_visible() -> bool:
    """A CUDA GPU is visible (checked without importing torch when nvidia-smi answers)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            return out.returncode == 0 and "GPU" in out.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "cuda" if cuda_visible() else "cpu"
    return name


# --- the live-tensor meter (cpu and trace) ---------------------------------------------------


class _LiveBytes:
    """The live-tensor meter's bookkeeping, without the dispatch hook (:func:`_meter_class` adds
    it): live storages by id with their bytes and tag, the running sum per tag, and the peaks inside
    a window (``open_window`` .. ``close_window``), overall and per phase."""

    def _init_book(self, fake: bool) -> None:
        self.fake = fake
        self.live: dict[int, list] = {}  # id(storage) -> [nbytes, tag]
        self.by_tag = dict.fromkeys(TAGS, 0)
        self.cur = 0
        self.window = False
        self.peak = 0
        self.peak_by_tag: dict[str, int] = {}
        self.peak_phase: str | None = None
        self.phase = "forward_backward"
        self.phase_peak: dict[str, int] = {}
        self.ops = 0
        self.peak_op: str | None = None
        self.top_at_peak: list = []
        self._snap_at = 0
        self._op = "(alive before the window)"

    # registration ----------------------------------------------------------------
    def add(self, t, tag: str = "other") -> None:
        st = self._storage(t)
        if st is None:
            return
        k = id(st)
        if k in self.live:
            return
        n = int(st.nbytes())
        self.live[k] = [n, tag, self._op, tuple(t.shape), str(t.dtype).replace("torch.", "")]
        self.by_tag[tag] += n
        self.cur += n
        weakref.finalize(st, self._free, k)

    def retag(self, t, tag: str) -> None:
        st = self._storage(t)
        if st is None:
            return
        entry = self.live.get(id(st))
        if entry is None:
            self.add(t, tag)
            return
        n, old = entry[0], entry[1]
        if old != tag:
            self.by_tag[old] -= n
            self.by_tag[tag] += n
            entry[1] = tag

    def _free(self, k: int) -> None:
        entry = self.live.pop(k, None)
        if entry is not None:
            self.cur -= entry[0]
            self.by_tag[entry[1]] -= entry[0]

    def scan(self, modules=(), optimizer=None) -> None:
        """Register what is alive now: module parameters and buffers as weights, the
        optimizer's state, parameter gradients, then every other tensor the gc can see."""
        import warnings

        import torch

        prev_op, self._op = self._op, "(alive before the window)"
        seen_params = set()
        for mod in modules:
            for p in mod.parameters():
                if id(p) in seen_params:
                    continue
                seen_params.add(id(p))
                self.retag(p, "weights")
                for q in _quant_state_tensors(p):
                    self.retag(q, "weights")
                if p.grad is not None:
                    self.retag(p.grad, "gradients")
            for b in mod.buffers():
                self.retag(b, "weights")
        if optimizer is not None:
            for state in _optimizer_states(optimizer):
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        self.retag(v, "optimizer_state")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance() on deprecated torch objects warns
            for obj in gc.get_objects():
                if isinstance(obj, torch.Tensor):
                    self.add(obj, "other")
        self._op = prev_op

    # window ------------------------------------------------------------------------
    def open_window(self, phase: str = "forward_backward") -> None:
        self.window = True
        self.phase = phase
        self.peak = self.cur
        self.peak_by_tag = dict(self.by_tag)
        self.peak_phase = phase
        self.phase_peak = {phase: self.cur}

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.window:
            self.phase_peak[phase] = max(self.phase_peak.get(phase, 0), self.cur)

    def close_window(self) -> None:
        self.window = False

    # the mode itself is pushed/popped around parts of a run: ``suspend`` removes it from
    # the dispatch stack (no per-op Python overhead while timing), ``resume`` puts it back
    active = False

    def resume(self) -> None:
        if not self.active:
            self.__enter__()
            self.active = True

    def suspend(self) -> None:
        if self.active:
            self.__exit__(None, None, None)
            self.active = False

    def _note(self) -> None:
        if not self.window:
            return
        cur = self.cur
        ph = self.phase
        if cur > self.phase_peak.get(ph, -1):
            self.phase_peak[ph] = cur
        if cur > self.peak:
            self.peak = cur
            self.peak_by_tag = dict(self.by_tag)
            self.peak_phase = ph
            self.peak_op = self._op
            if cur > self._snap_at * 1.002:  # the biggest non-static tensors near the peak
                self._snap_at = cur
                self.top_at_peak = sorted(
                    (e for e in self.live.values() if e[1] in ("other", "gradients")), key=lambda e: -e[0]
                )[: int(os.environ.get("FTADVISOR_CALIB_TOPN", "12"))]


def _meter_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensorMeter(_LiveBytes, TorchDispatchMode):
        """Running and peak bytes of live tensor storages, with a split by tag at the peak and
        a peak per phase. Only counts inside a window (``open_window`` .. ``close_window``)."""

        def __init__(self, fake: bool = False):
            super().__init__()
            self._init_book(fake)

        def _storage(self, t):
            if not isinstance(t, torch.Tensor) or t.is_sparse or getattr(t, "is_nested", False):
                return None
            if self.fake:
                from torch._subclasses.fake_tensor import FakeTensor

                if not isinstance(t, FakeTensor):
                    return None
            elif t.device.type == "meta":
                return None
            try:
                return t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                return None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            self._op = func.__name__
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.add(t)
            self._note()
            return out

    return LiveTensorMeter


def _quant_state_tensors(p):
    """Tensors of a bitsandbytes parameter's quantization state (absmax, nested absmax, code ...):
    part of the stored weights, but not parameters or buffers themselves."""
    import torch

    out, todo, seen = [], [getattr(p, "quant_state", None)], set()
    while todo:
        qs = todo.pop()
        if qs is None or id(qs) in seen:
            continue
        seen.add(id(qs))
        for v in vars(qs).values() if hasattr(qs, "__dict__") else ():
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif hasattr(v, "absmax"):  # nested QuantState (double quantization)
                todo.append(v)
    scb = getattr(p, "SCB", None)  # LLM.int8 row scales
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def _optimizer_states(optimizer):
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
    state = getattr(opt, "state", {}) or {}
    return [s for s in state.values() if isinstance(s, dict)]


def _modules_of(session) -> list:
    """Every model a session holds: the policy, extra models and trainer-held modules."""
    import torch

    mods = [session.model]
    mods += [m for m in (session.extra_models or {}).values() if isinstance(m, torch.nn.Module)]
    trainer = session.trainer
    if trainer is not None:
        for v in vars(trainer).values():
            if isinstance(v, torch.nn.Module):
                mods.append(v)
    out, seen = [], set()
    for m in mods:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


# --- trace mode: fake tensors ---------------------------------------------------------------


@contextlib.contextmanager
def trace_mode():
    """FakeTensorMode plus two adaptations that let transformers, peft and trl run under it:

    1. ``nn.Module._apply`` (``.to()``, ``.float()``): torch swaps fake parameters with
       ``torch.utils.swap_tensors``, which refuses tensors the fake mode holds weak references
       to; inside this context a converted parameter is replaced by a new ``Parameter`` (an
       unchanged one is kept as is), tied parameters stay tied.
    2. data-dependent scalars (``aten._local_scalar_dense``, behind ``.item()`` and ``bool()``)
       read as 1, or False for booleans: fake tensors have no values.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    original_apply = torch.nn.Module._apply

    def fake_apply(self, fn, recurse=True):
        if not any(isinstance(p, FakeTensor) for p in self.parameters(recurse=True)) and not any(
            isinstance(b, FakeTensor) for b in self.buffers(recurse=True)
        ):
            return original_apply(self, fn, recurse)
        memo: dict[int, torch.nn.Parameter] = {}
        for mod in self.modules() if recurse else [self]:
            for key, p in list(mod._parameters.items()):
                if p is None:
                    continue
                if id(p) in memo:
                    mod._parameters[key] = memo[id(p)]
                    continue
                with torch.no_grad():
                    new = fn(p)
                if new is p:
                    continue
                newp = torch.nn.Parameter(new, requires_grad=p.requires_grad)
                memo[id(p)] = newp
                mod._parameters[key] = newp
            for key, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[key] = fn(b)
        return self

    class FakeScalars(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                t = args[0]
                if t.dtype == torch.bool:
                    return False
                return 1.0 if (t.is_floating_point() or t.is_complex()) else 1
            return func(*args, **(kwargs or {}))

    torch.nn.Module._apply = fake_apply
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), FakeScalars():
            yield
    finally:
        torch.nn.Module._apply = original_apply


# --- the step probe (trainer callback) --------------------------------------------------------


class _StepWindow:
    """The step probe's measurement window, without the trainer hooks (:func:`_probe` adds them):
    which global steps are timed and measured, the phase, and the cuda peaks per phase (or the
    live-tensor meter's window)."""

    def __init__(self, meter_kind: str, meter, session, warmup: int, steps: int, timing_steps: int):
        import torch

        self._torch = torch
        self.meter_kind, self.meter, self.session = meter_kind, meter, session
        self.timing_steps = timing_steps
        self.cuda = meter_kind == "cuda"
        self.mem_start = warmup + timing_steps  # window opens after this step ends
        self.mem_end = self.mem_start + steps
        self.time_start = warmup
        self.time_end = warmup + (timing_steps or steps)
        self.t_last = None
        self.step_seconds: list[float] = []
        self.in_window = False
        self.done = False
        self.cuda_phase_peak: dict[str, int] = {}
        self.cuda_phase_reserved: dict[str, int] = {}
        self.phase = "forward_backward"
        self.hooks = []
        self.steps_measured = 0

    def sync(self):
        if self.cuda:
            self._torch.cuda.synchronize()

    # cuda peaks per phase ------------------------------------------------------------
    def _cuda_close_phase(self):
        cuda = self._torch.cuda
        self.sync()
        a = cuda.max_memory_allocated()
        r = cuda.max_memory_reserved()
        self.cuda_phase_peak[self.phase] = max(self.cuda_phase_peak.get(self.phase, 0), a)
        self.cuda_phase_reserved[self.phase] = max(self.cuda_phase_reserved.get(self.phase, 0), r)
        cuda.reset_peak_memory_stats()

    def set_phase(self, phase: str):
        if phase == self.phase:
            return
        if self.in_window:
            if self.cuda:
                self._cuda_close_phase()
        self.phase = phase
        if self.meter is not None:
            self.meter.set_phase(phase)

    # window --------------------------------------------------------------------------
    def _open(self):
        meter, session = self.meter, self.session
        if self.meter_kind in ("cpu", "trace"):
            meter.resume()
            meter.scan(_modules_of(session), session.trainer.optimizer)
            for m in _modules_of(session):
                for p in m.parameters():
                    if p.requires_grad and id(p) not in self._hooked:
                        self._hooked.add(id(p))
                        self.hooks.append(p.register_post_accumulate_grad_hook(
                            lambda q: meter.retag(q.grad, "gradients") if q.grad is not None else None))
            meter.open_window("forward_backward")
        else:
            self.sync()
            self._torch.cuda.reset_peak_memory_stats()
        self.phase = "forward_backward"
        self.in_window = True

    def _close(self):
        if not self.in_window:
            return
        if self.cuda:
            self._cuda_close_phase()
        if self.meter is not None:
            self.meter.close_window()
        self.in_window = False
        self.done = True

    _hooked: set = set()


def _probe(meter_kind: str, meter, session, warmup: int, steps: int, timing_steps: int):
    """A TrainerCallback that drives the meter over the measured window.

    Steps (global_step after each optimizer step): 1..warmup warm-up; for the cpu meter the next
    ``timing_steps`` are timed with the meter paused; the final ``steps`` are measured."""
    from transformers import TrainerCallback

    class StepProbe(_StepWindow, TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self._hooked = set()
            self.sync()
            self.t_last = time.perf_counter()
            if self.mem_start == 0:
                self._open()

        def on_step_begin(self, args, state, control, **kw):
            self.set_phase("forward_backward")

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.set_phase("optimizer_step")

        def on_step_end(self, args, state, control, **kw):
            self.sync()
            now = time.perf_counter()
            g = state.global_step
            if self.time_start < g <= self.time_end:
                self.step_seconds.append(now - self.t_last)
            if self.in_window:
                self.steps_measured += 1
            if g == self.mem_end:
                self._close()
            if self.meter_kind == "cpu" and self.timing_steps and g == self.time_start:
                # off the dispatch stack over the timing steps; _open puts it back (and rescans)
                self.meter.suspend()
            if g == self.mem_start and not self.done and not self.in_window:
                self._open()
            self.set_phase("forward_backward")
            self.sync()
            self.t_last = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self._close()
            for h in self.hooks:
                h.remove()

    return StepProbe(meter_kind, meter, session, warmup, steps, timing_steps)


@contextlib.contextmanager
def _generation_phase(probe):
    """Mark ``GenerationMixin.generate`` calls as the generation phase (PPO/GRPO rollouts)."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate
    depth = [0]

    def generate(self, *args, **kwargs):
        depth[0] += 1
        prev = probe.phase
        if depth[0] == 1:
            probe.set_phase("generation")
        try:
            return original(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                probe.set_phase(prev)

    GenerationMixin.generate = generate
    try:
        yield
    finally:
        GenerationMixin.generate = original


# --- one measured launch ----------------------------------------------------------------------


def _job(case, num_layers: int | None, max_steps: int, device: str, out_dir: str):
    from ftadvisor.train.engine import TrainJob

    return TrainJob(
        model=case.config,
        plan=dict(case.plan),
        data="synthetic",
        random_init=True,
        num_layers=num_layers,
        output_dir=out_dir,
        max_steps=max_steps,
        seed=case.seed,
        device=device,
        save_final=False,
    )


def tokens_per_step(plan: dict, objective) -> int:
    """Tokens in one optimizer step on one process (sequences per example x seq_len)."""
    return plan["micro_batch_size"] * plan["gradient_accumulation_steps"] * objective.sequences_per_example * plan["seq_len"]


def _launch(case, kind: str, num_layers: int | None, warmup: int, steps: int, device: str) -> dict[str, Any]:
    """Build and run the case once under the given meter kind; returns the raw measurement."""
    import torch

    from ftadvisor.train.engine import build, run

    timing_steps = steps if kind == "cpu" else 0
    total_steps = warmup + timing_steps + steps
    tmp = tempfile.mkdtemp(prefix="ftadvisor-calib-")
    meter = None
    if kind in ("cpu", "trace"):
        meter = _meter_class()(fake=kind == "trace")
    try:
        ctx = trace_mode() if kind == "trace" else contextlib.nullcontext()
        with ctx:
            session = build(_job(case, num_layers, total_steps, device, tmp))
            probe = _probe(kind, meter, session, warmup, steps, timing_steps)
            if meter is not None:
                meter.scan(_modules_of(session))
            with _generation_phase(probe):
                if meter is not None:
                    meter.resume()
                try:
                    result = run(session, callbacks=[probe])
                finally:
                    if meter is not None:
                        meter.suspend()
        out: dict[str, Any] = {
            "steps_run": int(result.steps),
            "steps_measured": probe.steps_measured,
            "trainable_params": int(session.trainable_params),
            "total_params": int(session.total_params),
            "engine_notes": list(session.notes),
        }
        if probe.steps_measured < steps:
            out["warning"] = f"only {probe.steps_measured} of {steps} steps fell in the measurement window"
        if kind == "cuda":
            out["phases_bytes"] = dict(probe.cuda_phase_peak)
            out["phases_reserved_bytes"] = dict(probe.cuda_phase_reserved)
            out["peak_allocated_bytes"] = max(probe.cuda_phase_peak.values(), default=0)
            out["peak_reserved_bytes"] = max(probe.cuda_phase_reserved.values(), default=0)
            out["peak_phase"] = max(probe.cuda_phase_peak, key=probe.cuda_phase_peak.get) if probe.cuda_phase_peak else None
            out.update(_static_bytes(session))
            out.update(device_memory_used())
        else:
            out["phases_bytes"] = dict(meter.phase_peak)
            out["peak_allocated_bytes"] = int(meter.peak)
            out["peak_phase"] = meter.peak_phase
            out["peak_split_bytes"] = {k: int(v) for k, v in meter.peak_by_tag.items()}
            out["peak_op"] = meter.peak_op
            out["largest_at_peak"] = [
                {"bytes": e[0], "kind": e[1], "op": e[2], "shape": list(e[3]), "dtype": e[4]} for e in meter.top_at_peak
            ]
            out["ops_tracked"] = meter.ops
            out.update(_static_bytes(session))
        if kind != "trace":
            secs = probe.step_seconds
            out["step_seconds"] = secs
            if secs:
                med = statistics.median(secs)
                out["step_time_s"] = med
                out["tokens_per_step"] = tokens_per_step(case.plan, session.technique.objective)
                out["tokens_per_s"] = out["tokens_per_step"] / med if med > 0 else None
            out["torch_threads"] = torch.get_num_threads()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()


def _static_bytes(session) -> dict[str, int]:
    """Bytes of the parameters (every model the session holds), their gradients if they were all
    materialised (parameter dtype), and the optimizer state at the end of the run."""
    import torch

    seen: set[int] = set()
    weights = grads = 0
    for m in _modules_of(session):
        for p in m.parameters():
            try:
                k = id(p.untyped_storage())
            except (RuntimeError, NotImplementedError):
                k = id(p)
            if k in seen:
                continue
            seen.add(k)
            weights += p.untyped_storage().nbytes() if hasattr(p, "untyped_storage") else p.numel() * p.element_size()
            for q in _quant_state_tensors(p):
                if id(q.untyped_storage()) not in seen:
                    seen.add(id(q.untyped_storage()))
                    weights += q.untyped_storage().nbytes()
            if p.requires_grad:
                grads += p.numel() * p.element_size()
    opt = 0
    if session.trainer is not None and getattr(session.trainer, "optimizer", None) is not None:
        for s in _optimizer_states(session.trainer.optimizer):
            for v in s.values():
                if isinstance(v, torch.Tensor):
                    opt += v.numel() * v.element_size()
    return {"weights_bytes": int(weights), "gradients_bytes_if_all": int(grads), "optimizer_state_bytes": int(opt)}


def device_memory_used() -> dict[str, Any]:
    """What nvidia-smi shows for this process (NVML when pynvml imports, else nvidia-smi)."""
    import torch

    pid = os.getpid()
    idx = torch.cuda.current_device()
    try:
        import pynvml  # noqa: PLC0415 - optional

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(idx)
        used = None
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                used = int(proc.usedGpuMemory)
        info = pynvml.nvmlDeviceGetMemoryInfo(h)
        out = {"device_used_bytes": int(info.used), "device_capacity_bytes": int(info.total), "device_total_source": "nvml"}
        if used is not None:
            out["device_total_bytes"] = used
            out["device_total_source"] = "nvml per-process"
        else:
            out["device_total_bytes"] = int(info.used)
            out["device_total_source"] = "nvml device used (all processes)"
        return out
    except Exception:  # noqa: BLE001 - pynvml missing or refusing: fall back to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        apps = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
        for line in apps.splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
                return {"device_total_bytes": int(parts[1]) * 2**20, "device_total_source": "nvidia-smi per-process"}
        q = subprocess.run([smi, f"--id={idx}", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20).stdout.strip().split(",")
        used, total = (int(x.strip()) * 2**20 for x in q[:2])
        return {"device_total_bytes": used, "device_capacity_bytes": total,
                "device_total_source": "nvidia-smi memory.used (all processes)"}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


# --- backends ---------------------------------------------------------------------------------

METHODS_TEXT = {
    "cuda": "torch.cuda max_memory_allocated/max_memory_reserved per phase after reset_peak_memory_stats; "
            "device total from NVML or nvidia-smi; step time = synchronize + perf_counter",
    "cpu": "TorchDispatchMode over every aten op: bytes of live untyped storages (weakref-freed), peak "
           "in the measured steps; step time from separate steps with the tracker paused",
    "trace": "FakeTensorMode + the cpu live-storage meter at two depths, extrapolated linearly per phase "
             "to the full depth; no data, no timing",
}


def measure_case(case) -> dict[str, Any]:
    """Measure one :class:`~ftadvisor.calibration.sweep.Case`; returns the measurement dict.
    Raises :class:`Unsupported` for cases this backend cannot run here."""
    from ftadvisor.techniques import parse_technique

    import importlib.util

    backend = resolve_backend(case.backend)
    tech = parse_technique(case.plan["technique"])
    quant = case.plan.get("quantization") or tech.method.default_quantization
    needs_bnb = quant not in (None, "none") or "8bit" in case.plan.get("optimizer", "") or "paged" in case.plan.get("optimizer", "")
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        raise Unsupported("needs the bitsandbytes package (quantized base or 8-bit/paged optimizer), not installed here")
    base = {"backend": backend, "method": METHODS_TEXT[backend], "warmup": case.warmup, "steps": case.steps}
    if backend == "cuda":
        if not cuda_visible():
            raise Unsupported("backend cuda: no CUDA GPU visible")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        import torch

        torch.cuda.set_device(local)
        device = f"cuda:{local}" if case.num_processes > 1 else "cuda"
        m = _launch(case, "cuda", case.num_layers, case.warmup, case.steps, device)
        return {**base, **m, "num_layers": case.num_layers or case.full_layers()}
    if backend == "cpu":
        m = _launch(case, "cpu", case.num_layers, case.warmup, case.steps, "cpu")
        return {**base, **m, "num_layers": case.num_layers or case.full_layers()}
    # trace
    if quant not in (None, "none"):
        raise Unsupported(f"trace: a {quant} base needs real weights (bitsandbytes quantizes data)")
    if tech.objective.generation:
        raise Unsupported("trace: generation has data-dependent stopping; measure ppo/grpo with cpu or cuda")
    full = case.full_layers()
    n1 = case.num_layers or min(2, full)
    if n1 >= full:
        m = _traced(case, None)
        return {**base, **m, "num_layers": full, "extrapolated": False}
    n2 = n1 + 1
    a = _traced(case, n1)
    b = _traced(case, n2)
    return {**base, **extrapolate(a, b, n1, n2, full), "num_layers": full}


def _traced(case, num_layers: int | None) -> dict[str, Any]:
    """One traced launch; ops whose output shape or value depends on data end the trace as
    Unsupported (fake tensors carry no values)."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    try:
        return _launch(case, "trace", num_layers, case.warmup, case.steps, "cpu")
    except (DynamicOutputShapeException, DataDependentOutputException) as err:
        raise Unsupported(f"trace: {type(err).__name__} in {err} (an op whose output depends on data; "
                          "measure this case with the cpu or cuda backend)") from None


def extrapolate(a: dict, b: dict, n1: int, n2: int, full: int) -> dict[str, Any]:
    """Per-phase linear extrapolation from depths n1, n2 to ``full`` layers (see module docstring)."""
    f = (full - n1) / (n2 - n1)

    def lin(x1, x2):
        return int(round(x1 + f * (x2 - x1)))

    phases = {ph: lin(a["phases_bytes"][ph], b["phases_bytes"][ph])
              for ph in a["phases_bytes"] if ph in b["phases_bytes"]}
    peak_phase = max(phases, key=phases.get)
    split_a, split_b = a.get("peak_split_bytes", {}), b.get("peak_split_bytes", {})
    out = {
        "extrapolated": True,
        "extrapolation": f"linear in decoder layers from {n1} and {n2} to {full}, per phase, then max over phases",
        "traced_layers": [n1, n2],
        "traced": {str(n1): a, str(n2): b},
        "phases_bytes": phases,
        "peak_allocated_bytes": phases[peak_phase],
        "peak_phase": peak_phase,
        "trainable_params": lin(a["trainable_params"], b["trainable_params"]),
        "total_params": lin(a["total_params"], b["total_params"]),
        "weights_bytes": lin(a["weights_bytes"], b["weights_bytes"]),
        "optimizer_state_bytes": lin(a["optimizer_state_bytes"], b["optimizer_state_bytes"]),
        "gradients_bytes_if_all": lin(a["gradients_bytes_if_all"], b["gradients_bytes_if_all"]),
    }
    if a.get("peak_phase") == b.get("peak_phase") == peak_phase and split_a and split_b:
        out["peak_split_bytes"] = {k: lin(split_a.get(k, 0), split_b.get(k, 0)) for k in set(split_a) | set(split_b)}
    return out


def environment() -> dict[str, Any]:
    """Versions, device and git revision of this process's environment (no heavy imports)."""
    import platform
    import socket
    from importlib import metadata

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname()}
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None)
    except OSError:
        cpu = None
    env["cpu"] = cpu
    env["cpu_count"] = os.cpu_count()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            rows = [r.strip() for r in q.stdout.splitlines() if r.strip()]
            if rows:
                name, driver, mem = (x.strip() for x in rows[0].split(",")[:3])
                env.update(device=name, driver=driver, device_memory=mem, device_count=len(rows))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    env.setdefault("device", "cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            env["git_revision"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            env["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
