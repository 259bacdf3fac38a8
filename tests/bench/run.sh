#!/bin/sh
# Run the benchmarks (issues 2 and 3) from an existing build and print one results table.
#   tests/bench/run.sh [--quick] [BUILD_DIR]      (BUILD_DIR defaults to build/)
# Builds nothing: first
#   cmake --build build --target bench_proto bench_agent bench_repl sbx-agent sbx-test-helper sbx
# Needs socat (the raw baselines). --quick moves 1 GiB instead of 4 GiB and takes fewer samples.
# Every figure is a median over repetitions, next to a baseline measured in the same run.
set -eu
cd "$(dirname "$0")/../.."

QUICK=""
if [ "${1:-}" = "--quick" ]; then
    QUICK="--quick"
    shift
fi
BUILD="${1:-build}"

for f in "$BUILD/bench/bench_proto" "$BUILD/bench/bench_agent" "$BUILD/bin/sbx-agent" \
         "$BUILD/tests/sbx-test-helper"; do
    if [ ! -x "$f" ]; then
        echo "run.sh: $f is missing; build it first:" >&2
        echo "  cmake --build $BUILD --target bench_proto bench_agent sbx-agent sbx-test-helper" >&2
        exit 1
    fi
done
if ! command -v socat >/dev/null 2>&1; then
    echo "run.sh: socat is needed for the raw baselines" >&2
    exit 1
fi

echo "sbx benchmarks ${QUICK:-(full)}: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| benchmark | figure (median) | spread | baseline (same run) | ratio | target | met |"
echo "|---|---|---|---|---|---|---|"
rc=0
"$BUILD/bench/bench_proto" $QUICK || rc=1
"$BUILD/bench/bench_agent" $QUICK --agent "$BUILD/bin/sbx-agent" \
    --helper "$BUILD/tests/sbx-test-helper" || rc=1
# Transfers (needs the sbx CLI built too, root for its tmpfs, and bc).
tests/bench/bench_xfer.sh $QUICK "$BUILD" || rc=1
if [ -x "$BUILD/bench/bench_repl" ]; then
    "$BUILD/bench/bench_repl" $QUICK --agent "$BUILD/bin/sbx-agent" \
        --helper "$BUILD/tests/sbx-test-helper" || rc=1
fi
exit $rc
