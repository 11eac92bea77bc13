#!/usr/bin/env bash
# Learning probe: do the learning tests really check learning?
#
# Runs every technique's learning test twice: normally, then with the learning rate forced to 0 in
# every Python process (tests/_probe/sitecustomize.py on PYTHONPATH with FTADVISOR_PROBE_LR_ZERO=1;
# this reaches the launcher, accelerate's workers and the TUI's launch, which the tests start as
# subprocesses). Steps still run and log losses, but no weight changes, so each learning test must
# FAIL under the probe. Prints one row per technique and exits non-zero when a learning test passes
# under the probe (it would pass for a trainer that learns nothing) or does not pass normally.
#
#   scripts/learning_probe.sh              # both passes (about 4 minutes on 2 CPU cores)
#   scripts/learning_probe.sh --probe-only # only the lr=0 pass
#   scripts/learning_probe.sh --all        # also: every test of the engine/launch/TUI files under the
#                                          # probe, listing which fail (information, no verdict)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py="${PYTHON:-$here/.venv/bin/python}"

normal=1
all=0
for arg in "$@"; do
    case "$arg" in
        --probe-only) normal=0 ;;
        --all) all=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done

E=tests/test_train_engine.py
L=tests/test_launch.py
T=tests/test_tui.py
# technique | pytest node id of the test that must see it learn
CASES="
method full|$E::test_loss_falls_on_memorisable_data[full]
method lora|$E::test_loss_falls_on_memorisable_data[lora]
method qlora|$E::test_loss_falls_on_memorisable_data[qlora]
method dora|$E::test_loss_falls_on_memorisable_data[dora]
method adapter|$E::test_loss_falls_on_memorisable_data[adapter]
method half_ft|$E::test_loss_falls_on_memorisable_data[half_ft]
method lamini|$E::test_loss_falls_on_memorisable_data[lamini]
method moe (qwen2_moe)|$E::test_loss_falls_on_memorisable_data[moe-qwen_moe]
method moe (mixtral)|$E::test_loss_falls_on_memorisable_data[moe-mixtral]
objective sft (lora)|$E::test_loss_falls_on_memorisable_data[lora]
objective dpo|$E::test_preference_objectives_widen_the_reward_margin[dpo+lora]
objective orpo|$E::test_preference_objectives_widen_the_reward_margin[orpo+lora]
objective grpo|$E::test_grpo_raises_a_learnable_reward
objective ppo|$E::test_ppo_raises_the_reward_model_score
launch sft lora|$L::test_sft_lora_trains_saves_and_generates
launch dpo lora|$L::test_dpo_lora_trains_and_generates
launch 2-process DDP|$L::test_two_process_ddp_on_cpu_through_accelerate
tui real launch|$T::test_launch_real_tiny_cpu_run
"
mapfile -t nodes < <(printf '%s\n' "$CASES" | sed -n 's/^[^|]*|//p' | awk 'NF && !seen[$0]++')

work="$(mktemp -d "${TMPDIR:-/tmp}/learning-probe.XXXXXX")"
trap 'rm -rf "$work"' EXIT
probe_env=(env FTADVISOR_PROBE_LR_ZERO=1 "PYTHONPATH=$here/tests/_probe${PYTHONPATH:+:$PYTHONPATH}")

# The probe must be active, or every verdict below is meaningless.
active="$("${probe_env[@]}" "$py" -c 'import ftadvisor.train.engine as e; print(getattr(e._common_args, "probe_lr_zero", False))')"
if [ "$active" != "True" ]; then
    echo "learning probe: the lr=0 patch (tests/_probe/sitecustomize.py) is not active" >&2
    exit 2
fi

run_pytest() {  # label junit-file [env...] -- pytest args
    local label="$1" xml="$2"; shift 2
    local t0=$SECONDS
    echo "== $label: pytest ${#nodes[@]} tests" >&2
    "$@" "$py" -m pytest -q -p no:cacheprovider --junitxml="$xml" -o junit_family=xunit1 "${nodes[@]}" \
        >"$xml.out" 2>&1 || true
    echo "   $(tail -n 1 "$xml.out")  [$((SECONDS - t0))s]" >&2
}

if [ "$normal" = 1 ]; then
    run_pytest "normal" "$work/normal.xml" env
fi
run_pytest "probe (learning rate forced to 0)" "$work/probe.xml" "${probe_env[@]}"

status=0
"$py" - "$work" "$normal" <<PYEOF || status=$?
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, normal = Path(sys.argv[1]), sys.argv[2] == "1"
cases = [line.split("|", 1) for line in """$CASES""".strip().splitlines()]


def outcomes(path):
    out = {}
    if not path.is_file():
        return out
    for tc in ET.parse(path).getroot().iter("testcase"):
        key = tc.get("file") or tc.get("classname", "").replace(".", "/") + ".py"
        key = f"{key}::{tc.get('name')}"
        kinds = {child.tag for child in tc}
        why = next((c.get("message", "") for c in tc if c.tag in ("failure", "error")), "")
        out[key] = ("FAIL" if kinds & {"failure", "error"} else "skip" if "skipped" in kinds else "pass",
                    " ".join(why.split())[:110])
    return out


norm = outcomes(work / "normal.xml") if normal else {}
probe = outcomes(work / "probe.xml")
w = max(len(t) for t, _ in cases)
print(f"{'technique':<{w}}  {'normally':<8}  {'lr=0':<5}  verdict  test")
bad = 0
for tech, node in cases:
    n = norm.get(node, ("missing", ""))[0] if normal else "-"
    p, why = probe.get(node, ("missing", ""))
    if normal and n != "pass":
        verdict = "BROKEN"   # must pass normally for the probe to mean anything
    elif p == "FAIL":
        verdict = "ok"       # fails when nothing is learned: the test checks learning
    else:
        verdict = "BLIND"    # passes (or does not run) without learning
    bad += verdict != "ok"
    print(f"{tech:<{w}}  {n:<8}  {p:<5}  {verdict:<7}  {node}")
    if why:
        print(f"{'':<{w}}  lr=0 failure: {why}")
tail = " and pass normally" if normal else " (normal pass skipped)"
print(f"\n{len(cases) - bad}/{len(cases)} learning checks fail under the probe{tail}")
sys.exit(1 if bad else 0)
PYEOF

if [ "$all" = 1 ]; then
    echo "== every test of $E, $L, $T under the probe (information)" >&2
    "${probe_env[@]}" "$py" -m pytest -q -p no:cacheprovider -rf "$E" "$L" "$T" 2>&1 \
        | grep -E '^(FAILED|ERROR)|passed|failed' || true
fi
exit "$status"
