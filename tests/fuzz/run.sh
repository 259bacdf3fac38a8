#!/bin/sh
# Fuzzing campaign: run every libFuzzer target of a fuzz build for SECONDS each (one at a time),
# then merge what added coverage into its checked-in corpus. Builds nothing; first:
#
#   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DSBX_FUZZ=ON \
#         -DSBX_SANITIZE=address,undefined && cmake --build build-fuzz -j2
#
# Usage: tests/fuzz/run.sh [SECONDS [BUILD]]   (default 10 s, build-fuzz; or env BUILD)
#   TARGETS="request sbxconn"  run only these targets (names without fuzz_), in this order
#   MINIMIZE=1                 re-minimise each corpus from scratch (-set_cover_merge; regress-*
#                              files always kept); default: only add inputs with new coverage
#   FUZZ_ARGS="..."            extra libFuzzer flags (e.g. -dict=...)
#   MAX_LEN=N                  longest input to make (default: libFuzzer's choice)
#   MAX_LENS="gw_agent=256 gw_jsonrpc=1024"
#                              the same per target (before MAX_LEN): the operation-list targets
#                              run 2-10x as many execs a second on short inputs (tests/fuzz/
#                              README.md); the ledger's build column then ends in " len=N"
#   JOBS=2                     run that many targets at once (default 1): each lane takes the
#                              next target not yet taken
#   BUDGET=SECONDS             end the whole run by then: a target runs at most the time left,
#                              and none starts with less than a minute left
#   RUNS="request=100000000 glob=10000000"
#                              stop a target after that many execs (or SECONDS, first reached)
#   LEDGER=tests/fuzz/campaign.tsv
#                              append one row per target run (date, commit, build, target,
#                              seconds, execs, cov, ft, corpus files, crashes); ledger.sh sums
#                              it against the campaign's goals. The commit is the tree's HEAD
#                              when run.sh started: BUILD may have been built from another.
#                              The next leg of a campaign: TARGETS=$(ledger.sh --short)
#                              RUNS=$(ledger.sh --runs) (the targets short of their goal, quickest
#                              first, each until it has its goal).
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
# The longest input a run makes (len_of): libFuzzer's own choice unless MAX_LENS or MAX_LEN set it
# (its largest corpus file or 4096, grown slowly by -len_control); long inputs slow the framing
# targets tenfold.

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

# The -max_len of target $1: MAX_LENS ("name=N ..."), else MAX_LEN, else nothing.
len_of() {
    for kv in ${MAX_LENS:-}; do
        case "$kv" in "$1="*) echo "${kv#*=}" && return ;; esac
    done
    echo "${MAX_LEN:-}"
}

# The exec cap of target $1 from RUNS ("name=N ..."), or nothing.
runs_of() {
    for kv in ${RUNS:-}; do
        case "$kv" in "$1="*) echo "-runs=${kv#*=}" ;; esac
    done
}

# What the build was made with, for the ledger: its type and sanitizers.
build_flavour() {
    t=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
    z=$(sed -n 's/^SBX_SANITIZE:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
    echo "${t:-?}/${z:-none}"
}
COMMIT=$(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || git rev-parse --short HEAD 2>/dev/null ||
    echo '?')
FLAVOUR=$(build_flavour)

run_one() {
    bin=$1
    name=${bin##*/fuzz_}
    secs=$SECS
    if [ -n "${BUDGET:-}" ]; then
        left=$((START + BUDGET - $(date +%s)))
        if [ "$left" -lt 60 ]; then
            echo "== $name: not run, the budget is spent"
            return 0
        fi
        [ "$left" -lt "$secs" ] && secs=$left
    fi
    corpus=$(corpus_of "$name")
    mkdir -p "$corpus"
    scratch="$WORK/new-$name"
    mkdir -p "$scratch"
    log="$WORK/$name.log"
    echo "== $name: ${secs}s, corpus $corpus"
    # New units go to the first directory (scratch); the corpus is read only here.
    t0=$(date +%s)
    # The targets' own stdout and stderr are closed (some log every message they refuse);
    # libFuzzer keeps its output and the sanitizers' reports on a copy of stderr. Replay an
    # input with the target's _replay binary to see what the target printed.
    # shellcheck disable=SC2046,SC2086
    len=$(len_of "$name")
    "$bin" -max_total_time="$secs" $(runs_of "$name") ${len:+-max_len=$len} -timeout=25 \
        -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$ART/$name-" ${FUZZ_ARGS:-} \
        "$scratch" "$corpus" >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - t0))
    crashes=$(find "$ART" -maxdepth 1 -name "$name-*" | wc -l)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
    cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    # Stopped by hand (SIGINT: libFuzzer says so and exits non-zero): not a failure.
    if [ "$crashes" -eq 0 ] && grep -q 'libFuzzer: run interrupted' "$log"; then
        rc=0
    fi
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        : >"$WORK/failed"
        crashes=$((crashes > 0 ? crashes : 1))
        grep -E 'ERROR: |SUMMARY: |Test unit written to' "$log" | head -n 5
        echo "   log: $log"
    fi
    # Merge: inputs with new coverage (and no crash) into the corpus; above 64 KiB never. The
    # control file is named, so targets in fuzz_sandbox.h's read-only namespace can write it.
    find "$scratch" -type f -size +64k -delete
    if [ "${MINIMIZE:-0}" = 1 ]; then
        fresh="$WORK/min-$name"
        mkdir -p "$fresh"
        "$bin" -set_cover_merge=1 -max_len=$MAXLEN -merge_control_file="$WORK/$name.ctl" \
            "$fresh" "$corpus" "$scratch" >"$WORK/$name.merge" 2>&1
        if [ "$(ls "$fresh" | wc -l)" -gt 0 ]; then
            find "$corpus" -maxdepth 1 -type f ! -name 'regress-*' -delete
            cp "$fresh"/* "$corpus"/
        fi
    else
        "$bin" -merge=1 -max_len=$MAXLEN -merge_control_file="$WORK/$name.ctl" "$corpus" "$scratch" \
            >"$WORK/$name.merge" 2>&1
    fi
    files=$(find "$corpus" -maxdepth 1 -type f | wc -l)
    bytes=$(find "$corpus" -maxdepth 1 -type f -exec cat {} + | wc -c)
    printf '%-10s %12s %8s %7s %7s %6s %9s %7s\n' "$name" "${execs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "$files" "$bytes" "$crashes" >>"$TABLE"
    if [ -n "${LEDGER:-}" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" \
            "$COMMIT" "$FLAVOUR${len:+ len=$len}" "$name" "$took" "${execs:-0}" "${cov:-?}" "${ft:-?}" "$files" \
            "$crashes" >>"$LEDGER"
    fi
}

# The targets to run (in TARGETS' order when given), then JOBS lanes, each taking the next target
# no other lane has taken (a mkdir claims it), one at a time.
LIST=
found=0
if [ -n "${TARGETS:-}" ]; then
    for name in $TARGETS; do
        bin="$BUILD/tests/fuzz_$name"
        if [ -x "$bin" ]; then
            found=$((found + 1))
            LIST="$LIST $bin"
        else
            echo "run.sh: no target $name in $BUILD/tests" >&2
        fi
    done
else
    for bin in "$BUILD"/tests/fuzz_*; do
        [ -x "$bin" ] || continue
        case "$bin" in *_replay) continue ;; esac
        found=$((found + 1))
        LIST="$LIST $bin"
    done
fi
case "${BUDGET:-0}" in *[!0-9]*) echo "run.sh: BUDGET must be a number of seconds" >&2 && exit 2 ;; esac
START=$(date +%s)
JOBS=${JOBS:-1}
case "$JOBS" in '' | *[!0-9]* | 0) echo "run.sh: JOBS must be a positive number" >&2 && exit 2 ;; esac
lane=0
while [ "$lane" -lt "$JOBS" ]; do
    (
        for bin in $LIST; do
            mkdir "$WORK/claim-${bin##*/fuzz_}" 2>/dev/null && run_one "$bin"
        done
    ) &
    lane=$((lane + 1))
done
wait
[ -e "$WORK/failed" ] && FAILED=1

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
