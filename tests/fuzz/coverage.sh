#!/bin/sh
# Source-based coverage (clang) of the fuzz corpora's replay: which lines and branches of the
# parsers the checked-in corpora reach. Configures and builds BUILD (default build-cov) with
# -DSBX_COVERAGE=ON, replays every corpus (ctest -L fuzz) with profiling on, merges the
# profiles and prints llvm-cov's report for agent/, protocol/, gateway/, init/ and client/lib/.
#
# Usage: tests/fuzz/coverage.sh [BUILD]
#   HTML=DIR      also write the annotated sources as HTML under DIR
#   FILES="agent/glob.c gateway/http.c"
#                 also print those files' lines that no corpus input reached
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
BUILD=${1:-build-cov}

cmake -S "$TOP" -B "$BUILD" -DCMAKE_C_COMPILER=clang -DSBX_COVERAGE=ON \
    -DCMAKE_BUILD_TYPE=Debug >"$BUILD.configure.log" 2>&1 || {
    cat "$BUILD.configure.log" >&2
    exit 1
}
BUILD=$(cd "$BUILD" && pwd)
# Only the replay binaries are needed.
REPLAYS=$(cd "$BUILD" && grep -rhoE 'add_test\(\[*=*\[*fuzz\.[a-z0-9_]+\.corpus' tests \
    --include=CTestTestfile.cmake | sed 's/.*fuzz\.\([a-z0-9_]*\)\.corpus/fuzz_\1_replay/' | sort -u)
[ -n "$REPLAYS" ] || {
    echo "coverage.sh: no fuzz replay tests in $BUILD" >&2
    exit 1
}
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$(nproc)" --target $REPLAYS >"$BUILD/coverage-build.log" 2>&1 || {
    tail -n 30 "$BUILD/coverage-build.log" >&2
    exit 1
}

PROF="$BUILD/profiles"
rm -rf "$PROF"
mkdir -p "$PROF"
# %m: one file per binary, merged across its processes; %p keeps forked children apart.
(cd "$BUILD" && LLVM_PROFILE_FILE="$PROF/%m-%p.profraw" ctest -L fuzz -j"$(nproc)" \
    --output-on-failure >"$BUILD/coverage-ctest.log" 2>&1) || {
    tail -n 30 "$BUILD/coverage-ctest.log" >&2
    echo "coverage.sh: a corpus replay failed (log: $BUILD/coverage-ctest.log)" >&2
    exit 1
}
llvm-profdata merge -sparse "$PROF"/*.profraw -o "$BUILD/fuzz.profdata"

OBJS=
first=
for r in $REPLAYS; do
    if [ -z "$first" ]; then first="$BUILD/tests/$r"; else OBJS="$OBJS -object=$BUILD/tests/$r"; fi
done
SRCS="$TOP/agent $TOP/protocol $TOP/gateway $TOP/init $TOP/client/lib"
# shellcheck disable=SC2086
llvm-cov report -instr-profile="$BUILD/fuzz.profdata" "$first" $OBJS $SRCS \
    -show-region-summary=false >"$BUILD/coverage.txt"
# The table per file, then a total per directory (lines and branches).
sed "s|$TOP/||" "$BUILD/coverage.txt"
echo
# llvm-cov columns (no regions): Filename Functions Missed% Lines Missed Cover Branches Missed Cover
# llvm-cov's columns here: file, functions, missed, cover, lines, missed, cover, branches,
# missed, cover; the paths are relative to the sources' common directory.
awk '$1 ~ /\.[ch]$/ && $2 > 0 {
        d = $1; sub(/\/[^\/]*$/, "", d)
        fl[d] += $5; fm[d] += $6; bl[d] += $8; bm[d] += $9
    }
    END {
        for (d in fl) printf "%-24s %9d %9d %6.1f%% %9d %9d %6.1f%%\n", d, fl[d], fm[d], fl[d] ? 100 * (fl[d] - fm[d]) / fl[d] : 0, bl[d], bm[d], bl[d] ? 100 * (bl[d] - bm[d]) / bl[d] : 0
    }' "$BUILD/coverage.txt" | sort | {
    printf "%-24s %9s %9s %7s %9s %9s %7s\n" directory lines missed cover branches missed cover
    cat
}
# The sources no fuzz target compiles (their code runs only against real I/O).
echo
echo "not in any fuzz target:"
for d in agent protocol/src gateway init client/lib; do
    for f in "$TOP/$d"/*.c; do
        [ -e "$f" ] || continue
        rel=${f#"$TOP/"}
        base=${rel##*/}
        grep -q "[ /]$base " "$BUILD/coverage.txt" || grep -q "^$base " "$BUILD/coverage.txt" ||
            printf '  %s\n' "$rel"
    done
done | column -c 100
if [ -n "${FILES:-}" ]; then
    for f in $FILES; do
        echo
        echo "== $f: lines no corpus input reached"
        # shellcheck disable=SC2086
        llvm-cov show -instr-profile="$BUILD/fuzz.profdata" "$first" $OBJS "$TOP/$f" \
            -show-line-counts-or-regions | awk -F'|' '$2 ~ /^ *0$/ { print $1 ": " $3 }'
    done
fi
if [ -n "${HTML:-}" ]; then
    # shellcheck disable=SC2086
    llvm-cov show -format=html -output-dir="$HTML" -instr-profile="$BUILD/fuzz.profdata" \
        "$first" $OBJS $SRCS
    echo "HTML: $HTML/index.html"
fi
