#!/bin/sh
# Sum a fuzzing ledger (rows appended by run.sh with LEDGER=FILE) per target, against the
# campaign's goals: 100 M execs for each wire and gateway target, 10 M for every other one.
#
# Usage: tests/fuzz/ledger.sh [FILE [BUILD]]   (default tests/fuzz/campaign.tsv, build-fuzz or
#        $BUILD)
# Prints per target: runs, hours, execs, goal, the last cov/ft and corpus size, crashes; exits 1
# when a row recorded a crash. A target of BUILD (its fuzz_* binaries) that the ledger has never
# seen is listed with 0 execs.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
FILE=${1:-$HERE/campaign.tsv}
[ -r "$FILE" ] || {
    echo "ledger.sh: cannot read $FILE" >&2
    exit 2
}
BUILD=${2:-${BUILD:-build-fuzz}}
{
    grep -v '^#' "$FILE" | cut -f4
    for bin in "$BUILD"/tests/fuzz_*; do
        [ -x "$bin" ] || continue
        case "$bin" in *_replay) continue ;; esac
        echo "${bin##*/fuzz_}"
    done
} | grep -v '^$' | sort -u | awk -F'\t' -v ledger="$FILE" '
function goal(t) { return (t == "decode" || t == "request" || t == "sbxconn" || t ~ /^gw_/) ? 100000000 : 10000000 }
BEGIN {
    while ((getline line < ledger) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        t = f[4]; runs[t]++; secs[t] += f[5]; execs[t] += f[6]
        cov[t] = f[7]; ft[t] = f[8]; files[t] = f[9]; crashes[t] += f[10]; seen[t] = 1
        if (f[10] > 0) bad = 1
    }
}
{ names[++n] = $0; seen[$0] = seen[$0] }
END {
    printf "%-13s %5s %7s %14s %12s %5s %6s %6s %6s %7s\n", "target", "runs", "hours", "execs", "goal", "met", "cov", "ft", "files", "crashes"
    for (i = 1; i <= n; i++) {
        t = names[i]; g = goal(t); met = (execs[t] >= g) ? "yes" : "no"
        if (met == "no") short++
        printf "%-13s %5d %7.2f %14d %12d %5s %6s %6s %6s %7d\n", t, runs[t], secs[t] / 3600, execs[t], g, met, (t in cov) ? cov[t] : "-", (t in ft) ? ft[t] : "-", (t in files) ? files[t] : "-", crashes[t]
        total += execs[t]
    }
    printf "total execs %d; %d of %d targets short of their goal\n", total, short, n
    exit bad
}'
