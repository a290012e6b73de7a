#!/usr/bin/env bash
# The GPU half of the speed benchmarks, one command under 5 minutes on one H100/H200:
#
#   benchmarks/gpu_speed.sh OUTDIR          # writes OUTDIR/{fast-paths,speed}.json, gpu-tests.txt
#   benchmarks/gpu_speed.sh OUTDIR --tiny   # a brief rehearsal of fast-paths.json (CPU without CUDA)
#   PYTHON=.venv/bin/python benchmarks/gpu_speed.sh OUTDIR   # another interpreter than python3
#
# Installs this checkout without dependencies when metactl is not importable (the GPU image has
# torch; nothing is downloaded), fetches Omniglot from $METACTL_MIRROR (default: a shared/datasets
# folder beside or inside the checkout), checks the CUDA graph paths against the plain ones, and
# measures. A failing part is recorded and the others still run.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_speed.sh OUTDIR [--tiny]}
tiny=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo" || exit 1
if ! "$python" -c "import metactl_plugins" 2>/dev/null; then
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e . >"$out/install.txt" 2>&1
fi
for candidate in "${METACTL_MIRROR:-}" "$repo/shared/datasets" "$repo/../shared/datasets"; do
    if [ -n "$candidate" ] && [ -e "$candidate" ]; then export METACTL_MIRROR=$candidate; break; fi
done
export METACTL_HOME=${METACTL_HOME:-$out/metactl-home}
"$python" -c "from metactl.cli.main import main; main()" data fetch omniglot >"$out/fetch.txt" 2>&1 || echo "fetch failed: see $out/fetch.txt"
status=0
if [ "$tiny" = "--tiny" ]; then
    "$python" benchmarks/gpu_speed.py --tiny --out "$out/fast-paths.json" || status=1
    exit $status
fi
timeout 90 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_fast_paths.py >"$out/gpu-tests.txt" 2>&1 || status=1
timeout 100 "$python" benchmarks/gpu_speed.py --out "$out/fast-paths.json" --seconds 3 || status=1
timeout 120 "$python" benchmarks/speed.py --device cuda --seconds 2 --rounds 4 --json >"$out/speed.json" || status=1
exit $status
