"""Measure litgpt 0.5.13's own fine-tuning step on CPU with ftadvisor's live-tensor meter.

What runs: litgpt's real training loops, ``litgpt.finetune.lora.fit`` (LoRA) and
``litgpt.finetune.full.fit`` (full fine-tuning), on a tiny random-weight llama-like ``litgpt.Config``
(the ``tiny-llama`` of calibration/sweeps/cpu-tiny.yaml), set up the way each recipe's ``main``
does it: ``lightning.Fabric(devices=1, strategy="auto", precision=...)``, ``fabric.init_module`` +
``GPT(config)``, ``mark_only_lora_as_trainable`` (LoRA), ``fabric.setup``,
``litgpt.utils.instantiate_torch_optimizer("AdamW", ...)``, ``fabric.setup_optimizers`` and the
recipe's ``get_lr_scheduler``. Only what needs files or a download is replaced: the checkpoint
(random weights instead of ``load_checkpoint``), the tokenizer (a stand-in ``fit`` only constructs)
and the data module (synthetic token batches of the planned shape, in litgpt's batch format).

How it is measured: ``ftadvisor.calibration.measure``'s ``LiveTensorMeter`` (a TorchDispatchMode
summing the bytes of live untyped storages, the host analogue of ``max_memory_allocated``) is on
the dispatch stack for the whole run; its window opens at the start of the third training forward
(after two optimizer steps, so AdamW's state exists) and closes after that iteration's
``optimizer.step``; ``forward_backward`` / ``optimizer_step`` phases are split by an optimizer
step pre-hook. Each case runs in its own subprocess.

Setup (litgpt 0.5.13 pins huggingface-hub<1.4, so it gets its own venv, never /work/main/.venv)::

    python3 -m venv /tmp/venv-litgpt
    /tmp/venv-litgpt/bin/pip install torch==2.13.0
    /tmp/venv-litgpt/bin/pip install --no-deps litgpt==0.5.13 lightning==2.5.6 jsonargparse==4.53.0 \\
        torchmetrics==1.9.0
    /tmp/venv-litgpt/bin/pip install lightning-utilities==0.15.3 packaging==26.4 tqdm==4.70.1 \\
        safetensors==0.8.0 psutil==7.2.2 \\
        pydantic==2.14.4 pyyaml==6.0.4 rich==15.0.0 typer==0.29.2 numpy==2.4.6  # requirements/core.txt

(``--no-deps``: litgpt 0.5.13 declares lightning>=2.6.1 and huggingface-hub<1.4; the recipes' code
paths used here run on lightning 2.5.6 and never touch the Hub.)

Run (from the repository root; ftadvisor is imported from the working tree)::

    PYTHONPATH=. /tmp/venv-litgpt/bin/python calibration/frameworks/measure_litgpt.py
    # -> rewrites calibration/results/frameworks/litgpt-cpu.jsonl (about a minute on 2 cores)
    .venv/bin/python calibration/frameworks/measure_litgpt.py --report   # measured vs predicted (ftadvisor core only)

The script puts the repository root on ``sys.path`` itself, so ``PYTHONPATH`` is optional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "calibration" / "results" / "frameworks" / "litgpt-cpu.jsonl"
SCRIPT = "calibration/frameworks/measure_litgpt.py"
SCHEMA_VERSION = 1
WARMUP_ITERS = 2  # optimizer steps before the measured one (AdamW allocates its state in step 1)

# The cpu-tiny sweep's tiny-llama (calibration/sweeps/cpu-tiny.yaml) as a Hugging Face config ...
HF_CONFIG = {
    "model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 352,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 1024, "tie_word_embeddings": False,
}
# ... and the same model as a litgpt Config (litgpt/config.py: the Llama-2/3 entries' fields).
LIT_CONFIG = {
    "name": "tiny-llama", "block_size": 1024, "vocab_size": 1024, "padded_vocab_size": 1024,
    "n_layer": 3, "n_embd": 128, "n_head": 4, "n_query_groups": 2, "intermediate_size": 352,
    "rotary_percentage": 1.0, "parallel_residual": False, "bias": False,
    "norm_class_name": "RMSNorm", "norm_eps": 1e-5, "mlp_class_name": "LLaMAMLP",
}
LORA_R = 8
# litgpt's LoRA flags for all linears but the head == the plan's lora_targets "all-linear".
LORA_FLAGS = {"lora_query": True, "lora_key": True, "lora_value": True, "lora_projection": True,
              "lora_mlp": True, "lora_head": False}

# (recipe, litgpt precision, micro_batch, seq_len)
CASES = [
    ("full", "bf16-true", 2, 128),
    ("full", "bf16-true", 1, 256),
    ("full", "bf16-mixed", 2, 128),
    ("full", "32-true", 2, 128),
    ("lora", "bf16-true", 2, 128),
    ("lora", "bf16-true", 2, 256),
    ("lora", "bf16-true", 1, 512),
    ("lora", "bf16-mixed", 2, 128),
    ("lora", "bf16-mixed", 4, 256),
    ("lora", "32-true", 2, 128),
]

# litgpt precision flag -> ftadvisor plan precision
PLAN_PRECISION = {"bf16-true": "bf16-true", "bf16-mixed": "bf16-mixed", "32-true": "fp32"}


def plan_for(recipe: str, precision: str, micro_batch: int, seq_len: int) -> dict:
    """The ftadvisor plan equivalent to the litgpt run."""
    plan = {"technique": recipe, "framework": "litgpt", "precision": PLAN_PRECISION[precision],
            "optimizer": "adamw", "micro_batch_size": micro_batch, "seq_len": seq_len,
            "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "attention": "sdpa"}
    if recipe == "lora":
        plan.update(lora_r=LORA_R, lora_dropout=0.0, lora_targets="all-linear")
    return plan


# --- one case, in a child process (litgpt + torch) ----------------------------------------------


def _run_case(recipe: str, precision: str, micro_batch: int, seq_len: int) -> dict:
    import torch
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    import litgpt.finetune.full as full_recipe
    import litgpt.finetune.lora as lora_recipe
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.utils import instantiate_torch_optimizer, num_parameters

    from ftadvisor.calibration.measure import _meter_class, _optimizer_states

    torch.set_num_threads(1)
    recipe_mod = lora_recipe if recipe == "lora" else full_recipe

    class _Tokenizer:  # fit() only constructs it (used by generate_example, which is not reached)
        def __init__(self, checkpoint_dir):
            self.checkpoint_dir = checkpoint_dir

    recipe_mod.Tokenizer = _Tokenizer

    V = LIT_CONFIG["padded_vocab_size"]

    class Tokens(Dataset):  # litgpt's SFT batch format (litgpt/data/base.py get_sft_collate_fn)
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.rows = [torch.randint(0, V, (seq_len,), generator=g) for _ in range(n)]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            ids = self.rows[i]
            return {"input_ids": ids, "labels": ids.clone(),
                    "token_counts": {"raw": torch.tensor(seq_len), "raw_plus_prompt_template": torch.tensor(seq_len)}}

    steps = WARMUP_ITERS + 1
    train_dl = DataLoader(Tokens(micro_batch * (steps + 1)), batch_size=micro_batch)
    val_dl = DataLoader(Tokens(micro_batch), batch_size=micro_batch)
    train = TrainArgs(save_interval=None, log_interval=1, global_batch_size=micro_batch, micro_batch_size=micro_batch,
                      lr_warmup_steps=1, epochs=1000, max_steps=steps, max_seq_length=None)
    evalargs = EvalArgs(interval=10_000, max_new_tokens=1, max_iters=1, initial_validation=False,
                        final_validation=False)

    # recipe main(): Fabric, model, optimizer, scheduler (litgpt/finetune/{lora,full}.py setup + main)
    fabric = L.Fabric(devices=1, accelerator="cpu", strategy="auto", precision=precision)
    fabric.seed_everything(1337)
    if recipe == "lora":
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        config = Config(**LIT_CONFIG, lora_r=LORA_R, lora_alpha=16, lora_dropout=0.0, **LORA_FLAGS)
        with fabric.init_module(empty_init=False):
            model = GPT(config)
        mark_only_lora_as_trainable(model)
        model = fabric.setup_module(model)
    else:
        from litgpt.model import GPT
        from litgpt.config import Config

        config = Config(**LIT_CONFIG)
        with fabric.init_module(empty_init=False):
            model = GPT(config)
        model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(instantiate_torch_optimizer("AdamW", model.parameters()))
    scheduler = recipe_mod.get_lr_scheduler(optimizer, warmup_steps=train.lr_warmup_steps, max_steps=steps)
    raw_opt = optimizer.optimizer
    gpt = model.module

    meter = _meter_class()()
    state = {"forwards": 0, "window": False, "done": False}

    def on_forward(module, args):
        if not (module.training and torch.is_grad_enabled()) or state["done"]:
            return
        state["forwards"] += 1
        if state["forwards"] == WARMUP_ITERS + 1:
            meter.scan([gpt], raw_opt)
            meter.open_window("forward_backward")
            state["window"] = True

    def on_step_pre(opt, args, kwargs):
        if state["window"]:
            meter.set_phase("optimizer_step")

    def on_step_post(opt, args, kwargs):
        if state["window"]:
            meter.close_window()
            state["window"], state["done"] = False, True

    gpt.register_forward_pre_hook(on_forward)
    raw_opt.register_step_pre_hook(on_step_pre)
    raw_opt.register_step_post_hook(on_step_post)
    for p in gpt.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda q: meter.retag(q.grad, "gradients"))

    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "ftadvisor-litgpt-measure"
    t0 = time.perf_counter()
    meter.resume()
    try:
        if recipe == "lora":
            recipe_mod.fit(fabric=fabric, model=model, optimizer=optimizer, scheduler=scheduler,
                           train_dataloader=train_dl, val_dataloader=val_dl, devices=1, checkpoint_dir=out_dir,
                           out_dir=out_dir, train=train, eval=evalargs, data=None)
        else:
            fit_state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "iter_num": 0,
                         "step_count": 0}
            recipe_mod.fit(fabric=fabric, state=fit_state, train_dataloader=train_dl, val_dataloader=val_dl,
                           devices=1, resume=False, checkpoint_dir=out_dir, out_dir=out_dir, train=train,
                           eval=evalargs, data=None)
    finally:
        meter.suspend()
    wall = time.perf_counter() - t0
    if not state["done"]:
        raise RuntimeError("the measured iteration did not complete")
    opt_bytes = sum(int(v.untyped_storage().nbytes()) for s in _optimizer_states(raw_opt)
                    for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {
        "peak_allocated_bytes": int(meter.peak),
        "peak_phase": meter.peak_phase,
        "peak_op": meter.peak_op,
        "phases_bytes": {k: int(v) for k, v in meter.phase_peak.items()},
        "peak_split_bytes": {k: int(v) for k, v in meter.peak_by_tag.items()},
        "largest_at_peak": [{"bytes": e[0], "kind": e[1], "op": e[2], "shape": list(e[3]), "dtype": e[4]}
                            for e in meter.top_at_peak[:int(os.environ.get("FTADVISOR_LITGPT_TOPN", "8"))]],
        "total_params": int(num_parameters(gpt)),
        "trainable_params": int(num_parameters(gpt, requires_grad=True)),
        "optimizer_state_bytes": opt_bytes,
        "ops_tracked": meter.ops,
        "wall_s": round(wall, 3),
        "torch_threads": 1,
    }


def environment() -> dict:
    from importlib.metadata import version

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for pkg in ("litgpt", "torch", "lightning", "lightning-utilities", "torchmetrics", "jsonargparse"):
        try:
            env[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is recorded as such
            env[pkg] = None
    try:
        env["git_revision"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git_revision"] = None
    return env


def measure_all(out: Path) -> None:
    env = environment()
    rows = []
    for recipe, precision, mb, s in CASES:
        label = f"{recipe} {precision} mb{mb} s{s}"
        args = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps([recipe, precision, mb, s])]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"case {label} failed")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({
            "schema_version": SCHEMA_VERSION, "framework": "litgpt", "label": label, "hardware": "cpu",
            "backend": "cpu",
            "method": "ftadvisor.calibration.measure LiveTensorMeter (TorchDispatchMode, bytes of live untyped "
                      "storages) over the third iteration of litgpt's own fit()",
            "recipe": f"litgpt/finetune/{recipe}.py fit",
            "litgpt_args": {"precision": precision, "micro_batch_size": mb, "seq_len": s,
                            "optimizer": "AdamW", "devices": 1,
                            **({"lora_r": LORA_R, "lora_alpha": 16, "lora_dropout": 0.0, **LORA_FLAGS}
                               if recipe == "lora" else {})},
            "litgpt_config": LIT_CONFIG, "model_config": HF_CONFIG, "plan": plan_for(recipe, precision, mb, s),
            "measurement": m, "environment": env,
            "command": f"PYTHONPATH=. /tmp/venv-litgpt/bin/python {SCRIPT}",
        })
        print(f"{label:32s} peak {m['peak_allocated_bytes']:>12,d} B ({m['peak_phase']}, {m['wall_s']} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(out)
    print(f"wrote {len(rows)} cases to {out.relative_to(ROOT)}")


# --- measured vs predicted (ftadvisor core only) -----------------------------------------------------


def predicted_peak(model_config: dict, plan: dict) -> int:
    """ftadvisor's uncorrected estimate of the peak allocated bytes on the cpu hardware profile."""
    from ftadvisor.estimator import estimate

    est = estimate(dict(model_config), "cpu", plan=dict(plan), calibrated=False)
    return int(est.memory.peak_allocated_bytes)


def table(rows: list[tuple[str, int, int]], title: str) -> float:
    print(f"\n{title}\n{'case':40s} {'measured':>12s} {'predicted':>12s} {'error':>8s}")
    errs = []
    for label, meas, pred in rows:
        err = (pred - meas) / meas
        errs.append(abs(err))
        print(f"{label:40s} {meas:>12,d} {pred:>12,d} {err:>+8.1%}")
    med = statistics.median(errs)
    print(f"median |error| {med:.1%}, max {max(errs):.1%} over {len(errs)} cases")
    return med


def report() -> None:
    lit = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]
    table([(r["label"], r["measurement"]["peak_allocated_bytes"], predicted_peak(r["model_config"], r["plan"]))
           for r in lit], f"litgpt ({RESULTS.relative_to(ROOT)})")
    trl_rows = []
    cpu_tiny = ROOT / "calibration" / "results" / "cpu" / "cpu-tiny.jsonl"
    for line in cpu_tiny.read_text().splitlines():
        r = json.loads(line)
        if r.get("status") != "ok" or r["plan"].get("num_gpus", 1) != 1 or r["plan"].get("sharding") != "none":
            continue
        plan = dict(r["plan"], framework="hf-trl")
        trl_rows.append((r["label"], r["measurement"]["peak_allocated_bytes"],
                         predicted_peak(r["model"]["config"], plan)))
    table(trl_rows, f"hf-trl ({cpu_tiny.relative_to(ROOT)}, single-process cases)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="print measured vs predicted for litgpt and hf-trl")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(_run_case(*json.loads(a.case))))
    elif a.report:
        report()
    else:
        measure_all(a.out)


if __name__ == "__main__":
    main()
