"""The speed model against measurements: golden cases, and the GPU measurements behind its constants.

    .venv/bin/python scripts/bench_speed.py            # every golden case: predicted, measured, error, window;
                                                        # MdAPE over all cases and over the held-out ones
    python3 scripts/bench_speed.py --device OUT_DIR     # on a GPU machine: measure, write OUT_DIR/device_speed.json
    .venv/bin/python scripts/bench_speed.py --smoke     # the --device code paths on the CPU with tiny models

The golden cases live in profiles/speed/measurements.yaml (source, setup and measured tokens/s of
each); tests/test_speed.py asserts the same cases inside their windows. Cases marked ``fitted`` set a
constant of the model and are left out of the held-out accuracy figure. ``--device`` measures
what the model's constants rest on (bf16 matmul rate, streaming bandwidth, eager dispatch time
per decoder layer) and end-to-end Hugging Face training steps (full, LoRA, QLoRA, DoRA) and
decoding, with random weights built from configs (no downloads). Its results were copied into the
YAML file with the machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# Golden cases
# ---------------------------------------------------------------------------------------------


def load_data() -> dict:
    import yaml

    with open(ROOT / "profiles" / "speed" / "measurements.yaml") as fh:
        return yaml.safe_load(fh)


def load_cases() -> list[dict]:
    return load_data()["cases"]


def predict(case: dict):
    """The model's SpeedEstimate for a golden case."""
    from ftadvisor.estimator import make_plan
    from ftadvisor.schema import HardwareProfile
    from ftadvisor.speed import estimate_speed

    hw = case["hardware"]
    if isinstance(hw, dict):
        hw = HardwareProfile(**hw)
    kwargs = dict(case.get("speed_kwargs") or {})
    return estimate_speed(case["model"], hw, make_plan(**case["plan"]), **kwargs)


def window(case: dict, eager: float, fused: float, max_window: float) -> tuple[float, float]:
    """The tokens/s the measurement must lie between (profiles/speed/measurements.yaml header): Hugging
    Face eager runs within the tolerance of the eager prediction; compiled/fused stacks from the eager
    prediction (less tolerance_below) up to the fused bound (plus tolerance_above), the window capped
    at max_window times its lower end."""
    if case["stack"] == "hf_eager":
        tol = case["tolerance"]
        return eager * (1 - tol), eager * (1 + tol)
    lo = eager * (1 - case["tolerance_below"])
    return lo, min(fused * (1 + case["tolerance_above"]), lo * max_window)


def within(case: dict, sp, max_window: float, scale: float = 1.0) -> bool:
    """Whether the case's measurement lies in its window; ``scale`` multiplies the model's figures
    (a uniform error of that factor)."""
    lo, hi = window(case, sp.tokens_per_second_per_gpu * scale, sp.fused_tokens_per_second_per_gpu * scale,
                    max_window)
    return lo <= case["measured_tokens_per_second_per_gpu"] <= hi


def fitted(case: dict) -> bool:
    """True when a constant of ftadvisor/speed.py was derived from this case's measurement."""
    return bool(case.get("fitted"))


def golden_report() -> dict[str, float]:
    data = load_data()
    mw = data["max_window"]
    rows = []
    for case in data["cases"]:
        sp = predict(case)
        pred = sp.tokens_per_second_per_gpu
        meas = case["measured_tokens_per_second_per_gpu"]
        lo, hi = window(case, pred, sp.fused_tokens_per_second_per_gpu, mw)
        rows.append(dict(id=case["id"], pred=pred, fused=sp.fused_tokens_per_second_per_gpu, meas=meas,
                         err=pred / meas - 1, mfu=sp.mfu, ok=lo <= meas <= hi, lo=lo, hi=hi, stack=case["stack"],
                         fitted=", ".join(case.get("fitted") or ())))
    print(f"{'case':46s} {'predicted':>9s} {'fused':>8s} {'measured':>9s} {'error':>6s} {'MFU':>5s} "
          f"{'window':>15s}  stack     fitted")
    for r in rows:
        flag = "" if r["ok"] else "  OUTSIDE WINDOW"
        print(f"{r['id']:46s} {r['pred']:9.0f} {r['fused']:8.0f} {r['meas']:9.0f} {r['err']:+6.0%} {r['mfu']:5.2f} "
              f"{r['lo']:7.0f}-{r['hi']:<7.0f}  {r['stack']:9s} {r['fitted'] or '-'}{flag}")
    held = [r for r in rows if not r["fitted"]]
    figures = {
        "all": statistics.median(abs(r["err"]) for r in rows),
        "held_out": statistics.median(abs(r["err"]) for r in held),
    }
    print("\nmedian absolute percentage error of the eager prediction vs measured:")
    print(f"  all cases              {len(rows):2d} cases, MdAPE {figures['all']:.1%}")
    print(f"  held out (not fitted)  {len(held):2d} cases, MdAPE {figures['held_out']:.1%}   <- the accuracy figure")
    fit_rows = [r for r in rows if r["fitted"]]
    if fit_rows:
        print(f"  fitted                 {len(fit_rows):2d} cases, MdAPE "
              f"{statistics.median(abs(r['err']) for r in fit_rows):.1%} (used to set constants; not a check)")
    for stack in sorted({r["stack"] for r in rows}):
        sub = [abs(r["err"]) for r in held if r["stack"] == stack]
        print(f"  held out, {stack:12s} {len(sub):2d} cases, MdAPE {statistics.median(sub):.1%}")
    print("\nconstants fitted on this file's data (profiles/speed/measurements.yaml `fits`):")
    for name, fit in data.get("fits", {}).items():
        on = "; ".join(f"{k}: {', '.join(v)}" for k, v in fit["fitted_on"].items())
        held_out = "; ".join(f"{k}: {', '.join(v)}" for k, v in (fit.get("held_out") or {}).items()) or "none"
        print(f"  {name}\n      fitted on {on}\n      held out  {held_out}")
    return figures


# ---------------------------------------------------------------------------------------------
# GPU measurements (heavy imports only here)
# ---------------------------------------------------------------------------------------------

LLAMA31_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
    hidden_act="silu", tie_word_embeddings=False, rope_theta=500000.0,
)
LLAMA32_1B = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
    rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, rope_theta=500000.0,
)
LLAMA32_3B = dict(
    model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
    num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
    rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, rope_theta=500000.0,
)
TINY = dict(
    model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
    hidden_act="silu", tie_word_embeddings=False,
)


def _device_measure(out_dir: Path, smoke: bool) -> dict:
    import gc

    import torch

    dev = "cpu" if smoke else "cuda"
    results: dict = {"cases": {}, "micro": {}, "errors": {}}

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def save():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "device_speed.json").write_text(json.dumps(results, indent=1, default=str))

    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    try:
        import peft

        env["peft"] = peft.__version__
    except Exception as err:  # noqa: BLE001
        env["peft"] = f"missing: {err}"
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except Exception as err:  # noqa: BLE001
        env["bitsandbytes"] = f"missing: {err}"
    if dev == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    results["env"] = env
    print(json.dumps(env), flush=True)

    # 1. bf16 matmul rate, for the square shape and the shapes of Llama-3.1-8B at 4096 tokens.
    def matmul_tflops(m, n, k, reps=20):
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        return 2.0 * m * n * k * reps / (time.perf_counter() - t0) / 1e12

    shapes = [(8192, 8192, 8192), (4096, 4096, 4096), (4096, 14336, 4096), (4096, 4096, 14336),
              (4096, 128256, 4096), (840, 3072, 3072), (840, 8192, 3072)]
    if smoke:
        shapes = [(64, 64, 64)]
    try:
        results["micro"]["matmul_bf16_tflops"] = {f"{m}x{n}x{k}": matmul_tflops(m, n, k, 3 if smoke else 20)
                                                  for m, n, k in shapes}
    except Exception as err:  # noqa: BLE001
        results["errors"]["matmul"] = repr(err)
    print("matmul", results["micro"].get("matmul_bf16_tflops"), flush=True)

    # 2. streaming bandwidth: device copy and a + b (bytes read + written per second).
    try:
        n = (1 << 20) if smoke else (1 << 30)
        x = torch.empty(n, device=dev, dtype=torch.bfloat16).fill_(1)
        y = torch.empty_like(x)
        z = torch.empty_like(x)
        for _ in range(2):
            y.copy_(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        sync()
        copy = 2 * 2 * n * 10 / (time.perf_counter() - t0) / 1e9
        t0 = time.perf_counter()
        for _ in range(10):
            torch.add(x, y, out=z)
        sync()
        add = 3 * 2 * n * 10 / (time.perf_counter() - t0) / 1e9
        results["micro"]["copy_gbps"] = copy
        results["micro"]["add_gbps"] = add
        del x, y, z
    except Exception as err:  # noqa: BLE001
        results["errors"]["bandwidth"] = repr(err)
    print("bandwidth", results["micro"].get("copy_gbps"), results["micro"].get("add_gbps"), flush=True)

    # 3. Eager dispatch: a tiny op in a loop, and a tiny Llama's decoder layers at one token
    #    (forward no-grad, and forward+backward with and without LoRA), per layer from the slope
    #    between 4 and 20 layers.
    from transformers import AutoConfig, AutoModelForCausalLM

    def build(cfg: dict, dtype, layers=None, **extra):
        c = dict(cfg)
        if layers is not None:
            c["num_hidden_layers"] = layers
        conf = AutoConfig.for_model(**c)
        conf._attn_implementation = "sdpa"
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(conf, dtype=dtype, **extra)
        return model

    try:
        t = torch.zeros(16, device=dev)
        for _ in range(100):
            t.add_(1)
        sync()
        t0 = time.perf_counter()
        for _ in range(20000):
            t.add_(1)
        sync()
        results["micro"]["tiny_op_s"] = (time.perf_counter() - t0) / 20000
        per_layer = {}
        for mode in ("fwd_nograd", "fwd_bwd", "fwd_bwd_lora"):
            times = {}
            for nl in (4, 20):
                model = build(TINY, torch.bfloat16 if not smoke else torch.float32, layers=nl)
                if mode == "fwd_bwd_lora":
                    from peft import LoraConfig, get_peft_model

                    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
                ids = torch.randint(0, 256, (1, 1), device=dev)
                reps = 30 if smoke else 200
                for i in range(reps + 10):
                    if i == 10:
                        sync()
                        t0 = time.perf_counter()
                    if mode == "fwd_nograd":
                        with torch.no_grad():
                            model(input_ids=ids)
                    else:
                        model(input_ids=ids, labels=ids).loss.backward()
                sync()
                times[nl] = (time.perf_counter() - t0) / reps
                del model
            per_layer[mode] = (times[20] - times[4]) / 16
        results["micro"]["eager_seconds_per_layer"] = per_layer
    except Exception as err:  # noqa: BLE001
        results["errors"]["dispatch"] = repr(err)
    print("dispatch", results["micro"].get("tiny_op_s"), results["micro"].get("eager_seconds_per_layer"), flush=True)
    save()

    # 4. End-to-end training steps (random weights, sdpa, torch fused AdamW, clip 1.0).
    def train_case(name, cfg, method, precision, mb, seq, ckpt, r=16, steps=4, warm=2, targets="all-linear",
                   autocast=True, fused=True):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t_build = time.perf_counter()
        mixed = precision == "bf16-mixed"
        if method == "full":
            dtype = torch.float32 if mixed else torch.bfloat16
        else:
            dtype = torch.bfloat16
        model = build(cfg, dtype if not smoke else torch.float32)
        if method == "qlora":
            import bitsandbytes as bnb

            for mod in list(model.modules()):
                for cname, child in list(mod.named_children()):
                    if isinstance(child, torch.nn.Linear) and cname != "lm_head":
                        q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                              compute_dtype=torch.bfloat16, compress_statistics=True,
                                              quant_type="nf4", device="meta")
                        q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu" if smoke else dev), requires_grad=False,
                                                     compress_statistics=True, quant_type="nf4")
                        q = q.to(dev)
                        setattr(mod, cname, q)
            model.is_loaded_in_4bit = True
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method in ("lora", "qlora", "dora"):
            model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                     lora_dropout=0.0, use_dora=method == "dora"))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, fused=(dev == "cuda") if fused else None)
        n_4bit = sum(1 for m_ in model.modules() if type(m_).__name__ == "Linear4bit")
        V = cfg["vocab_size"]
        ids = torch.randint(0, V, (mb, seq), device=dev)
        build_s = time.perf_counter() - t_build
        times = []
        for i in range(warm + steps):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(dev, dtype=torch.bfloat16,
                                enabled=autocast and (mixed or method in ("lora", "qlora", "dora"))):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= warm:
                times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        res = {"method": method, "precision": precision, "micro_batch_size": mb, "seq_len": seq,
               "gradient_checkpointing": ckpt, "lora_r": r, "step_seconds": step,
               "tokens_per_second": mb * seq / step, "build_seconds": build_s, "targets": targets,
               "autocast": autocast, "fused_adamw": fused, "linear4bit_modules": n_4bit,
               "peak_allocated_gib": (torch.cuda.max_memory_allocated() / 2**30) if dev == "cuda" else None}
        del model, opt, params
        return res

    cases = [
        ("llama31_8b_lora_r16_mb2_s2048_ckpt", LLAMA31_8B, "lora", "bf16-mixed", 2, 2048, True),
        ("llama31_8b_qlora_r16_mb2_s2048_ckpt", LLAMA31_8B, "qlora", "bf16-mixed", 2, 2048, True),
        ("llama31_8b_full_bf16_mb2_s2048_ckpt", LLAMA31_8B, "full", "bf16-true", 2, 2048, True),
        ("llama31_8b_dora_r16_mb2_s2048_ckpt", LLAMA31_8B, "dora", "bf16-mixed", 2, 2048, True),
        ("llama32_1b_full_mixed_mb8_s1024", LLAMA32_1B, "full", "bf16-mixed", 8, 1024, False),
        ("llama32_1b_lora_r16_mb4_s512", LLAMA32_1B, "lora", "bf16-mixed", 4, 512, False),
        ("llama32_1b_qlora_r16_mb4_s512", LLAMA32_1B, "qlora", "bf16-mixed", 4, 512, False),
        ("llama31_8b_lora_r16_mb2_s2048_nockpt", LLAMA31_8B, "lora", "bf16-mixed", 2, 2048, False),
    ]
    # the peft method_comparison setup (Llama-3.2-3B, bf16 weights, no autocast, torch AdamW
    # default (foreach), batch 4 of ~210 tokens) replayed on this GPU
    peft_like = [
        ("llama32_3b_lora_qv_r32_mb4_s210_peftbench", LLAMA32_3B, "lora", "bf16-true", 4, 210, False,
         dict(r=32, targets=["q_proj", "v_proj"], autocast=False, fused=False)),
        ("llama32_3b_full_bf16_mb4_s210_peftbench", LLAMA32_3B, "full", "bf16-true", 4, 210, False,
         dict(autocast=False, fused=False)),
    ]
    if smoke:
        cases = [(n, TINY, m, p, 1, 32, ck) for n, _, m, p, _, _, ck in cases]
        peft_like = [(n, TINY, m, p, 1, 32, ck, kw) for n, _, m, p, _, _, ck, kw in peft_like]
    for name, cfg, method, prec, mb, seq, ckpt, *kw in cases + peft_like:
        try:
            t0 = time.perf_counter()
            results["cases"][name] = train_case(name, cfg, method, prec, mb, seq, ckpt, steps=2 if smoke else 4,
                                                **(kw[0] if kw else {}))
            print(name, results["cases"][name], f"{time.perf_counter() - t0:.0f}s", flush=True)
        except Exception as err:  # noqa: BLE001
            results["errors"][name] = repr(err)
            print(name, "FAILED", repr(err), flush=True)
        save()

    # 5. Decoding with transformers generate (what PPO/GRPO without vLLM do).
    try:
        gc.collect()
        model = build(LLAMA32_1B if not smoke else TINY, torch.bfloat16 if not smoke else torch.float32)
        model.eval()
        B, P, new = (16, 128, 256) if not smoke else (2, 8, 8)
        ids = torch.randint(0, 1000 if not smoke else 256, (B, P), device=dev)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, pad_token_id=0)
        with torch.no_grad():
            model.generate(input_ids=ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})
            sync()
            t0 = time.perf_counter()
            model.generate(input_ids=ids, **kw)
            sync()
        dt = time.perf_counter() - t0
        results["cases"]["llama32_1b_generate_b16_p128_n256"] = {
            "batch": B, "prompt": P, "new_tokens": new, "seconds": dt, "generated_tokens_per_second": B * new / dt}
        print("generate", results["cases"]["llama32_1b_generate_b16_p128_n256"], flush=True)
        del model
    except Exception as err:  # noqa: BLE001
        results["errors"]["generate"] = repr(err)
        print("generate FAILED", repr(err), flush=True)
    save()
    return results


def _device_measure_part2(out_dir: Path, smoke: bool) -> dict:
    """Second pass: elementwise bandwidth at activation sizes, bitsandbytes dequantization, the host
    time of a forward with autograd (to split forward/backward), larger batches, and decoding at
    batch 1 and with an explicit attention mask."""
    import gc

    import torch

    dev = "cpu" if smoke else "cuda"
    res: dict = {"micro": {}, "cases": {}, "errors": {}}

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def timeit(fn, reps=50):
        for _ in range(3):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    def save():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "device_speed_part2.json").write_text(json.dumps(res, indent=1, default=str))

    # 1. Elementwise kernels at activation sizes (4096 tokens x 4096): GB/s counting bytes read + written.
    try:
        n0, n1 = (4096, 4096) if not smoke else (64, 64)
        xb = torch.randn(n0, n1, device=dev, dtype=torch.bfloat16)
        yb = torch.randn_like(xb)
        xf = xb.float()
        e = xb.numel()
        ew = {
            "copy_bf16": (lambda: xb.clone(), 4 * e),
            "add_bf16": (lambda: xb + yb, 6 * e),
            "mul_bf16": (lambda: xb * yb, 6 * e),
            "to_fp32": (lambda: xb.to(torch.float32), 6 * e),
            "to_bf16": (lambda: xf.to(torch.bfloat16), 6 * e),
            "pow2_fp32": (lambda: xf.pow(2), 8 * e),
            "mean_fp32": (lambda: xf.mean(-1, keepdim=True), 4 * e),
            "silu_bf16": (lambda: torch.nn.functional.silu(xb), 4 * e),
            "rmsnorm_hf_bf16": (lambda: (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16), 28 * e),
        }
        res["micro"]["elementwise_gbps"] = {k: nbytes / timeit(fn) / 1e9 for k, (fn, nbytes) in ew.items()}
        del xb, yb, xf
    except Exception as err:  # noqa: BLE001
        res["errors"]["elementwise"] = repr(err)
    print("elementwise", res["micro"].get("elementwise_gbps"), flush=True)

    # 2. bitsandbytes NF4 dequantization of one 4096 x 14336 weight, and matmul_4bit at 4096 tokens.
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        o, i = (14336, 4096) if not smoke else (128, 64)
        w = torch.randn(o, i, device=dev, dtype=torch.bfloat16)
        qw, st = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        t_dq = timeit(lambda: F.dequantize_4bit(qw, st), 50)
        x = torch.randn(4096 if not smoke else 8, i, device=dev, dtype=torch.bfloat16)
        t_mm4 = timeit(lambda: bnb.matmul_4bit(x, qw.t(), quant_state=st), 20)
        t_mm = timeit(lambda: x @ w.t(), 20)
        res["micro"]["nf4_dequant"] = {"seconds": t_dq, "weights": o * i,
                                       "gbps_read_nf4_write_bf16": o * i * (0.5 + 2.0) / t_dq / 1e9,
                                       "matmul_4bit_seconds": t_mm4, "bf16_matmul_seconds": t_mm}
    except Exception as err:  # noqa: BLE001
        res["errors"]["dequant"] = repr(err)
    print("dequant", res["micro"].get("nf4_dequant"), flush=True)
    save()

    # 3. Host time per decoder layer: forward with autograd recording (no backward), at one token.
    from transformers import AutoConfig, AutoModelForCausalLM

    def build(cfg: dict, dtype, layers=None):
        c = dict(cfg)
        if layers is not None:
            c["num_hidden_layers"] = layers
        conf = AutoConfig.for_model(**c)
        conf._attn_implementation = "sdpa"
        with torch.device(dev):
            return AutoModelForCausalLM.from_config(conf, dtype=dtype)

    try:
        per_layer = {}
        for mode in ("fwd_grad", "fwd_bwd_qlora_like_dora"):
            times = {}
            for nl in (4, 20):
                model = build(TINY, torch.bfloat16 if not smoke else torch.float32, layers=nl)
                if mode == "fwd_bwd_qlora_like_dora":
                    from peft import LoraConfig, get_peft_model

                    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", use_dora=True))
                ids = torch.randint(0, 256, (1, 1), device=dev)
                reps = 20 if smoke else 150
                for k in range(reps + 10):
                    if k == 10:
                        sync()
                        t0 = time.perf_counter()
                    if mode == "fwd_grad":
                        model(input_ids=ids, labels=ids)
                    else:
                        model(input_ids=ids, labels=ids).loss.backward()
                sync()
                times[nl] = (time.perf_counter() - t0) / reps
                del model
            per_layer[mode] = (times[20] - times[4]) / 16
        res["micro"]["eager_seconds_per_layer"] = per_layer
    except Exception as err:  # noqa: BLE001
        res["errors"]["dispatch"] = repr(err)
    print("dispatch", res["micro"].get("eager_seconds_per_layer"), flush=True)
    save()

    # 4. Decoding: batch 1 and batch 16 with an explicit all-ones attention mask.
    try:
        gc.collect()
        model = build(LLAMA32_1B if not smoke else TINY, torch.bfloat16 if not smoke else torch.float32)
        model.eval()
        for B, P, new in ((1, 128, 128), (16, 128, 128), (64, 128, 128)):
            if smoke:
                B, P, new = min(B, 2), 8, 8
            ids = torch.randint(1, 1000 if not smoke else 256, (B, P), device=dev)
            mask = torch.ones_like(ids)
            kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, pad_token_id=0, attention_mask=mask)
            with torch.no_grad():
                model.generate(input_ids=ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
                sync()
                t0 = time.perf_counter()
                model.generate(input_ids=ids, **kw)
                sync()
            dt = time.perf_counter() - t0
            res["cases"][f"llama32_1b_generate_b{B}_p{P}_n{new}_mask"] = {
                "batch": B, "prompt": P, "new_tokens": new, "seconds": dt, "seconds_per_step": dt / new}
            print("generate", B, dt / new, flush=True)
        del model
    except Exception as err:  # noqa: BLE001
        res["errors"]["generate"] = repr(err)
    save()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", metavar="OUT_DIR", help="measure on this machine's GPU, write OUT_DIR/device_speed.json")
    ap.add_argument("--smoke", action="store_true", help="run the --device code paths on the CPU with tiny models")
    ap.add_argument("--part", type=int, default=1, choices=(1, 2), help="which set of device measurements")
    args = ap.parse_args()
    if args.device or args.smoke:
        fn = _device_measure if args.part == 1 else _device_measure_part2
        fn(Path(args.device or "/tmp/bench_speed_smoke"), smoke=args.smoke)
        return
    golden_report()


if __name__ == "__main__":
    main()
