#!/usr/bin/env bash
# Mutation testing of the cost model (issue 14, item 6). On demand only: CI does not run it.
#
#   scripts/mutation.sh                 # the whole scope below, 1 worker
#   MUTATION_WORKERS=2 scripts/mutation.sh
#   scripts/mutation.sh 'ftadvisor.memory.x_evaluate__*'   # one function (globs over mutant names)
#   MUTATION_KEEP=1 scripts/mutation.sh # reuse mutants/ (results of unchanged functions are cached)
#   MUTATION_REPORT_ONLY=1 scripts/mutation.sh  # only print the score of the results in mutants/
#
# Tool: mutmut 3.8.1 (pinned, installed into .venv on first use). Configuration: the [mutmut]
# section of setup.cfg (files mutated, tests run). mutmut writes mutants/ (git-ignored); inspect a
# survivor with `.venv/bin/mutmut show NAME`.
#
# Time: ~1.5 min to generate the mutants of the four files, ~1 min to map tests to functions, then
# ~1-4 mutants/s depending on load. Measured: 1,647 s (27 min) for the 3,093 mutants of the
# baseline scope with 1 worker on 2 CPU cores shared with other work; plan on 25-40 minutes.
#
# What is mutated: the number-carrying functions of the cost model (list SCOPE below), not the
# whole of memory/speed/quality/recommend (7,346 mutants there, >40 min): layout decisions,
# validation, messages and the result models are left out. Which tests run: the fast, in-process
# test files (setup.cfg); the subprocess-only tests (CLI tables, import-hygiene checks) are
# deselected because they re-import the mutated modules in a child process (~10-20 s each) and
# check no number that an in-process test does not.
#
# The score printed at the end is killed / all mutants in the scope: survived, timed out and
# "no tests" (no selected test reaches the function) count as not killed and are listed, in
# mutants/survivors.txt and, with each diff, in mutants/survivors.tsv. Survivors judged
# equivalent are explained in docs/mutation.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
MUTMUT_VERSION=3.8.1
if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('mutmut') != '$MUTMUT_VERSION')" 2>/dev/null; then
    "$py" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi
mutmut="$(dirname "$py")/mutmut"

SCOPE=(
    # memory: every byte formula (not build_layout and its helpers, which make the categorical
    # decisions, nor the LoRA target validation). Names as of the split of evaluate/count_params/
    # activation_coefficients into named steps; at the baseline (0e952d3) the same code was in
    # count_params, activation_coefficients and evaluate alone.
    'ftadvisor.memory.x_int8_bytes_per_param__*'
    'ftadvisor.memory.x__quant_bytes__*'
    'ftadvisor.memory.xǁ_Tallyǁ*'
    'ftadvisor.memory.x__count_linears__*'
    'ftadvisor.memory.x__count_embeddings_and_norms__*'
    'ftadvisor.memory.x_count_params__*'
    'ftadvisor.memory.x_frozen_copy_bytes__*'
    'ftadvisor.memory.x_optimizer_state_bytes__*'
    'ftadvisor.memory.xǁ_Savedǁ*'
    'ftadvisor.memory.x_activation_coefficients__*'
    'ftadvisor.memory.x_loss_logits_bytes__*'
    'ftadvisor.memory.x__model_copies__*'
    'ftadvisor.memory.x__replicated_states__*'
    'ftadvisor.memory.x__zero_states__*'
    'ftadvisor.memory.x__fsdp_states__*'
    'ftadvisor.memory.x__sharded_states__*'
    'ftadvisor.memory.x__activations__*'
    'ftadvisor.memory.x__workspace_bytes__*'
    'ftadvisor.memory.x__generation_phase__*'
    'ftadvisor.memory.x_evaluate__*'
    # speed: FLOPs, peak rates, roofline op time, the step simulation, optimizer traffic, communication
    'ftadvisor.speed.x__active_fraction__*'
    'ftadvisor.speed.x_forward_matmul_flops_per_token__*'
    'ftadvisor.speed.x_attention_flops_per_token__*'
    'ftadvisor.speed.x_adapter_flops_per_token__*'
    'ftadvisor.speed.x_backward_depth_fraction__*'
    'ftadvisor.speed.x_trained_matmul_flops_per_token__*'
    'ftadvisor.speed.x_training_flops_per_token__*'
    'ftadvisor.speed.x_matmul_shape_factor__*'
    'ftadvisor.speed.x_peak_flops__*'
    'ftadvisor.speed.x_ring_allreduce_seconds__*'
    'ftadvisor.speed.x_ring_gather_seconds__*'
    'ftadvisor.speed.x_optimizer_bytes_per_param__*'
    'ftadvisor.speed.x__op_time__*'
    'ftadvisor.speed.x__simulate__*'
    'ftadvisor.speed.xǁ_Partsǁtotal__*'
    'ftadvisor.speed.x__communication_seconds__*'
    # quality: the score's arithmetic (curve terms, LoRA rank terms, products, the regime)
    'ftadvisor.quality.x__prod__*'
    'ftadvisor.quality.x__term__*'
    'ftadvisor.quality.x__extend__*'
    'ftadvisor.quality.x__curve_term__*'
    'ftadvisor.quality.x__lora_base__*'
    'ftadvisor.quality.x__low_rank__*'
    'ftadvisor.quality.x__orpo_term__*'
    'ftadvisor.quality.x_regime_for__*'
    'ftadvisor.quality.x__compose__*'  # split out of quality._estimate (not mutated at the baseline)
    # recommend: the configuration picked per technique and the ranking
    'ftadvisor.recommend.x_recommend__*'
    'ftadvisor.recommend.x__methods_for__*'
    'ftadvisor.recommend.x__technique_name__*'
    'ftadvisor.recommend.x__seq_len_for__*'
    'ftadvisor.recommend.x__sharding_options__*'
    'ftadvisor.recommend.x__fits__*'
    'ftadvisor.recommend.x__largest_fitting__*'
    'ftadvisor.recommend.x_max_micro_batch__*'
    'ftadvisor.recommend.x_max_seq_len__*'
    'ftadvisor.recommend.x_min_gpus__*'
    'ftadvisor.recommend.x__largest_micro_batches__*'  # baseline name
    'ftadvisor.recommend.x__fitting_rows__*'  # its successor
    'ftadvisor.recommend.x__accumulation__*'
)
if [ "$#" -gt 0 ]; then SCOPE=("$@"); fi

start=$(date +%s)
status=0
if [ "${MUTATION_REPORT_ONLY:-0}" != 1 ]; then
    [ "${MUTATION_KEEP:-0}" = 1 ] || rm -rf mutants
    "$mutmut" run --max-children "${MUTATION_WORKERS:-1}" "${SCOPE[@]}" > mutants.log 2>&1 || status=$?
    mv mutants.log mutants/run.log 2>/dev/null || true
fi
end=$(date +%s)
if [ "$status" -ne 0 ]; then
    tail -n 40 mutants/run.log | tr '\r' '\n' | tail -n 40
    echo "mutmut run failed (exit $status); log: mutants/run.log" >&2
    exit "$status"
fi

"$py" - "$((end - start))" "${SCOPE[@]}" <<'EOF'
import ast, collections, difflib, fnmatch, json, pathlib, re, sys

seconds, scope = int(sys.argv[1]), sys.argv[2:]
status = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "type check"}
res = {}
for meta in sorted(pathlib.Path("mutants/ftadvisor").glob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if any(fnmatch.fnmatchcase(name, s) for s in scope):
            res[name] = status.get(code, "not checked" if code is None else "suspicious")
by = collections.Counter(res.values())
per_func = collections.defaultdict(collections.Counter)
for name, st in res.items():
    per_func[name.rsplit("__mutmut_", 1)[0]][st] += 1
print(f"{'function':58s} {'killed':>6s} {'total':>6s}")
for f in sorted(per_func):
    c = per_func[f]
    print(f"{f:58s} {c['killed']:6d} {sum(c.values()):6d}")
total = len(res)
killed = by["killed"]
print()
print("by status:", dict(by))
print(f"SCORE: {killed} killed / {total} mutants = {100 * killed / max(total, 1):.1f}%  ({seconds} s)")
surv = sorted((n for n, s in res.items() if s not in ("killed",)),
              key=lambda n: (n.rsplit("__mutmut_", 1)[0], int(n.rsplit("_", 1)[1])))
pathlib.Path("mutants/survivors.txt").write_text("".join(f"{res[n]}\t{n}\n" for n in surv))


# One line per not-killed mutant with its diff (old -> new line) and a class: "message" when the
# changed line only builds a note, an assumption, a reason, a label or an error text; else "logic".
def mutant_bodies(mod, cache={}):
    if mod not in cache:
        text = pathlib.Path(f"mutants/ftadvisor/{mod}.py").read_text()
        lines, out = text.splitlines(), {}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
                out[node.name] = [re.sub(r"\s+# type: ignore # mutmut generated", "", l.replace(node.name, "F"))
                                  for l in lines[node.lineno - 1:node.end_lineno]]
        cache[mod] = out
    return cache[mod]


MESSAGE = re.compile(r"(assumptions\.append|notes\.append|\.weak\.append|\.label = |link = |reasons|"
                     r"warnings\.append|raise FtAdvisorError|over\.append)")
rows = []
for n in surv:
    mod, fn = n.split(".")[1], n.split(".", 2)[2]
    bodies = mutant_bodies(mod)
    orig, mut = bodies.get(fn.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"), bodies.get(fn)
    if orig is None or mut is None:
        rows.append(f"{res[n]}\t{n}\t?\t?\t?")
        continue
    d = [l for l in difflib.unified_diff(orig, mut, lineterm="", n=0) if l[:1] in "+-" and l[:3] not in ("+++", "---")]
    old = " | ".join(l[1:].strip() for l in d if l.startswith("-"))
    new = " | ".join(l[1:].strip() for l in d if l.startswith("+"))
    rows.append(f"{res[n]}\t{n}\t{'message' if MESSAGE.search(old) else 'logic'}\t{old[:200]}\t{new[:200]}")
pathlib.Path("mutants/survivors.tsv").write_text("status\tmutant\tclass\toriginal\tmutated\n" + "\n".join(rows) + "\n")
print(f"with diffs and a class (message / logic): mutants/survivors.tsv")
EOF
