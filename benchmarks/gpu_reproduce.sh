#!/usr/bin/env bash
# The Omniglot rows a 2-core CPU cannot afford, in order of value, as one prepared GPU run of
# under 10 minutes on one H100/H200: MAML 20-way, MetaNet, MANN, Relation 20-way (Meta-Learner
# LSTM's table is on mini-ImageNet, run by benchmarks/gpu_mini_imagenet.sh). Each row trains
# within its own budget and is then evaluated as it stands (`--evaluate-partial`), so a protocol
# that needs longer is reported as partial, with its step count and learning curve.
#
#   METACTL_MIRROR=/path/to/omniglot-mirror benchmarks/gpu_reproduce.sh OUTDIR
#   METACTL_REPRODUCE_TINY=1 benchmarks/gpu_reproduce.sh OUTDIR    # CPU smoke test, seconds
#
# Reports: OUTDIR/<algorithm>.json and .md; runs: OUTDIR/runs. Run it again to continue.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_reproduce.sh OUTDIR}
metactl=${METACTL:-metactl}
if [[ -n "${METACTL_REPRODUCE_TINY:-}" ]]; then
    device=cpu scale=0 episodes=4
else
    device=${METACTL_DEVICE:-cuda} scale=1 episodes=1000
fi

row() {  # algorithm, settings (space-separated), training budget in seconds on the GPU
    [[ -n "${METACTL_REPRODUCE_TINY:-}" && "${4:-}" == heavy ]] && return 0  # minutes on a CPU
    local budget=$(( $3 * scale )) settings=()
    for setting in $2; do settings+=(--setting "$setting"); done
    "$metactl" reproduce "$1" "${settings[@]}" --budget "$(( budget > 0 ? budget : 1 ))s" \
        --device "$device" --test-episodes "$episodes" --evaluate-partial \
        --out "$out" --runs "$out/runs"
}

row maml 20w1s 120
row maml 20w5s 60 heavy
row metanet 5w1s 60
row mann "5w1s 5w5s" 60
row relation 20w1s 60
"$metactl" results "$out" -o "$out/RESULTS.md"
