#!/usr/bin/env bash
# mini-ImageNet on one GPU, from the four archive parts to evaluation reports, in about ten
# minutes on an H100/H200:
#   1. build the store from the mirror's four tar.xz parts and the Ravi split lists;
#   2. train ProtoNet and MAML with Conv-4 at 5-way 1-shot and 5-shot under the papers'
#      protocols (ProtoNet: 30-way 1-shot / 20-way 5-shot training episodes, 15 queries, Adam
#      1e-3 halved every 2,000 episodes; MAML: 32 filters, 5 inner steps of 0.01 (10 at test),
#      meta-batch 4 / 2, 15 queries, Adam 1e-3), each for TRAIN_SECONDS of wall time (Ctrl-C
#      semantics: the trainer finishes its step and saves; the papers train far longer);
#   3. evaluate each on 1,000 fixed 5-way test episodes (15 queries per class, 95% CI) and
#      write the evaluation JSON, and a summary, to OUTDIR.
#
# Usage: benchmarks/gpu_mini_imagenet.sh OUTDIR
# Environment:
#   MINI_IMAGENET_MIRROR  a mirror folder holding mini-imagenet/{train-1,train-2,val,test}.tar.xz
#                         and mini-imagenet/splits/ravi/{train,val,test}.csv (default:
#                         $METACTL_MIRROR, else ../shared/datasets beside this checkout)
#   METACTL_HOME          where the store is built (default: OUTDIR/data)
#   METACTL               the metactl command (default: metactl on PATH, else .venv/bin/metactl)
#   TRAIN_SECONDS         wall-time budget of each training run (default 105)
#   EVAL_EPISODES         test episodes per evaluation (default 1000)
#   DEVICE                auto, cuda or cpu (default auto)
#   TINY=1                shrink everything (a CPU smoke test): 4 training episodes of 5-way
#                         tasks with 8 filters, 20 test episodes, no time budget; with DATASET,
#                         any dataset
#   DATASET               the dataset (default mini-imagenet)
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out="$(mkdir -p "$1" && cd "$1" && pwd)"
here="$(cd "$(dirname "$0")/.." && pwd)"
dataset="${DATASET:-mini-imagenet}"
mirror="${MINI_IMAGENET_MIRROR:-${METACTL_MIRROR:-$here/../shared/datasets}}"
export METACTL_HOME="${METACTL_HOME:-$out/data}"
metactl="${METACTL:-$(command -v metactl || echo "$here/.venv/bin/metactl")}"
device="${DEVICE:-auto}"
seconds="${TRAIN_SECONDS:-105}"
evaluation_episodes="${EVAL_EPISODES:-1000}"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/log.txt" >&2; }

tiny() { :; }
if [[ "${TINY:-0}" == 1 ]]; then
    # Small enough for a CPU in seconds; the task shapes stay 5-way K-shot.
    tiny() {
        echo --episodes 4 --set train_way=5 --set train_query=2 --query 2 --set hidden=8 \
            --set meta_batch=2
        [[ $1 == maml ]] && echo --set inner_steps=1 --set test_inner_steps=1
        return 0
    }
    evaluation_episodes="${EVAL_EPISODES:-20}"
    seconds="${TRAIN_SECONDS:-3600}"  # the episodes, not the clock, end a tiny run
fi

log "metactl $("$metactl" --version | cut -d' ' -f2); data root $METACTL_HOME; mirror $mirror"
started=$(date +%s)
"$metactl" data fetch "$dataset" --mirror "$mirror" 2>&1 | tee -a "$out/log.txt" >&2
log "store ready in $(( $(date +%s) - started )) s"
"$metactl" data info "$dataset" --json > "$out/store.json"

# The paper protocols are the algorithms' mini-ImageNet defaults (`metactl plugins info NAME`).
runs=("prototypical 1" "prototypical 5" "maml 1" "maml 5")
for entry in "${runs[@]}"; do
    read -r algorithm shot <<< "$entry"
    name="$algorithm-5way-${shot}shot"
    run="$out/runs/$name"
    rm -rf "$run"
    log "training $name for at most $seconds s"
    status=0
    # shellcheck disable=SC2046  # tiny's words are options
    timeout -s INT -k 60 "$seconds" "$metactl" train "$algorithm" --dataset "$dataset" \
        --way 5 --shot "$shot" --device "$device" --set val_episodes=0 --out "$run" \
        $(tiny "$algorithm") 2>&1 | tee -a "$out/log.txt" >&2 || status=$?
    if [[ $status -ne 0 && $status -ne 124 ]]; then
        log "training $name failed with status $status"
        exit "$status"
    fi
    log "evaluating $name on $evaluation_episodes episodes"
    "$metactl" evaluate "$run" --episodes "$evaluation_episodes" --device "$device" --json \
        > "$out/evaluation-$name.json"
done

python="$(dirname "$metactl")/python"
[[ -x "$python" ]] || python=python3
"$python" - "$out" <<'EOF'
import json, pathlib, sys

import torch

out = pathlib.Path(sys.argv[1])
lines = ["| run | training steps | test accuracy (95% CI) | episodes |", "|---|---|---|---|"]
for path in sorted(out.glob("evaluation-*.json")):
    result = json.loads(path.read_text())
    name = path.stem.removeprefix("evaluation-")
    last = out / "runs" / name / "checkpoints" / "last.pt"
    step = torch.load(last, map_location="cpu", weights_only=True)["step"]
    lines.append(f"| {name} | {step} | {100 * result['mean']:.2f} ± "
                 f"{100 * result['ci95']:.2f} | {result['episodes']} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
log "done in $(( $(date +%s) - started )) s; reports in $out"
