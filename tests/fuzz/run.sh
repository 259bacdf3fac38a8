#!/bin/sh
# Fuzzing campaign: run every libFuzzer target of a fuzz build for SECONDS each (one at a time),
# then merge what added coverage into its checked-in corpus. Builds nothing; first:
#
#   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DSBX_FUZZ=ON \
#         -DSBX_SANITIZE=address,undefined && cmake --build build-fuzz -j2
#
# Usage: tests/fuzz/run.sh [SECONDS [BUILD]]   (default 10 s, build-fuzz; or env BUILD)
#   TARGETS="request sbxconn"  run only these targets (names without fuzz_)
#   MINIMIZE=1                 re-minimise each corpus from scratch (-set_cover_merge; regress-*
#                              files always kept); default: only add inputs with new coverage
#   FUZZ_ARGS="..."            extra libFuzzer flags (e.g. -dict=...)
# The corpus of a target is the directory its ctest replay test (fuzz.NAME.corpus) names, so
# CORPUS of sbx_fuzz_target is honoured; else tests/fuzz/corpus/NAME. Prints a table per target
# (execs, execs/s, cov, ft, corpus files and bytes, crashes) and exits 1 if any target crashed,
# leaked, timed out or ran out of memory; the input that did it is left in the artifacts
# directory printed (minimise it with: BIN -minimize_crash=1 -runs=10000 FILE).
set -u

SECS=${1:-10}
BUILD=${2:-${BUILD:-build-fuzz}}
HERE=$(cd "$(dirname "$0")" && pwd)
MAXLEN=65536 # no corpus file above 64 KiB

if [ ! -d "$BUILD/tests" ]; then
    echo "run.sh: no $BUILD/tests: build with -DSBX_FUZZ=ON first (see the top of this file)" >&2
    exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sbx-fuzz.XXXXXX")
ART="$WORK/artifacts"
mkdir -p "$ART"
TABLE="$WORK/table"
: >"$TABLE"
FAILED=0

# The corpus directory of target $1: from the replay test's command line in the build tree.
corpus_of() {
    dir=$(grep -rh "add_test(\[*=*\[*fuzz\.$1\.corpus" "$BUILD/tests" --include=CTestTestfile.cmake \
        2>/dev/null | head -n 1 | sed -e 's/.*_replay"* *"*\([^") ]*\)"*.*/\1/')
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        echo "$dir"
    else
        echo "$HERE/corpus/$1"
    fi
}

found=0
for bin in "$BUILD"/tests/fuzz_*; do
    [ -x "$bin" ] || continue
    case "$bin" in *_replay) continue ;; esac
    name=${bin##*/fuzz_}
    if [ -n "${TARGETS:-}" ]; then
        case " $TARGETS " in *" $name "*) ;; *) continue ;; esac
    fi
    found=$((found + 1))
    corpus=$(corpus_of "$name")
    mkdir -p "$corpus"
    scratch="$WORK/new-$name"
    mkdir -p "$scratch"
    log="$WORK/$name.log"
    echo "== $name: ${SECS}s, corpus $corpus"
    # New units go to the first directory (scratch); the corpus is read only here.
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$SECS" -max_len=$MAXLEN -timeout=25 -print_final_stats=1 \
        -artifact_prefix="$ART/$name-" ${FUZZ_ARGS:-} "$scratch" "$corpus" >"$log" 2>&1
    rc=$?
    crashes=$(ls "$ART" 2>/dev/null | grep -c "^$name-" || true)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
    cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        FAILED=1
        crashes=$((crashes > 0 ? crashes : 1))
        grep -E 'ERROR: |SUMMARY: |Test unit written to' "$log" | head -n 5
        echo "   log: $log"
    fi
    # Merge: inputs with new coverage (and no crash) into the corpus; above 64 KiB never.
    find "$scratch" -type f -size +64k -delete
    if [ "${MINIMIZE:-0}" = 1 ]; then
        fresh="$WORK/min-$name"
        mkdir -p "$fresh"
        "$bin" -set_cover_merge=1 -max_len=$MAXLEN "$fresh" "$corpus" "$scratch" >"$WORK/$name.merge" 2>&1
        if [ "$(ls "$fresh" | wc -l)" -gt 0 ]; then
            find "$corpus" -maxdepth 1 -type f ! -name 'regress-*' -delete
            cp "$fresh"/* "$corpus"/
        fi
    else
        "$bin" -merge=1 -max_len=$MAXLEN "$corpus" "$scratch" >"$WORK/$name.merge" 2>&1
    fi
    files=$(find "$corpus" -maxdepth 1 -type f | wc -l)
    bytes=$(find "$corpus" -maxdepth 1 -type f -exec cat {} + | wc -c)
    printf '%-10s %12s %8s %7s %7s %6s %9s %7s\n' "$name" "${execs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "$files" "$bytes" "$crashes" >>"$TABLE"
done

if [ "$found" -eq 0 ]; then
    echo "run.sh: no fuzz_* binaries in $BUILD/tests (configure with -DSBX_FUZZ=ON)" >&2
    exit 2
fi
echo
printf '%-10s %12s %8s %7s %7s %6s %9s %7s\n' target execs execs/s cov ft files bytes crashes
cat "$TABLE"
if [ "$FAILED" -ne 0 ]; then
    echo
    echo "crash inputs (artifacts): $ART"
    ls -1 "$ART"/* 2>/dev/null
    exit 1
fi
rm -rf "$WORK"
exit 0
