#!/bin/sh
# Sum a fuzzing ledger (rows appended by run.sh with LEDGER=FILE) per target, against the
# campaign's goals: 100 M execs for each wire and gateway target, 10 M for every other one.
#
# Usage: tests/fuzz/ledger.sh [--short | --runs | --markdown] [FILE [BUILD]]   (default
#        tests/fuzz/campaign.tsv, build-fuzz or $BUILD)
# Prints per target: runs, hours, execs, goal, the last cov/ft and corpus size, crashes (open ones:
# a row whose crash was fixed says so in an 11th column, "fixed COMMIT"); exits 1 when a crash is
# open. A target of BUILD (its fuzz_* binaries) that the ledger has never seen is listed with 0
# execs. For the next leg of a campaign:
#   --short  the targets short of their goal, one line, quickest to finish first (the execs they
#            lack at their ledger's rate; a target never run counts as slowest): run.sh's TARGETS
#   --runs   "name=N ..." with N the execs each of those lacks: run.sh's RUNS
#   --markdown  the table as README.md's "### Campaign" section has it
set -u
MODE=table
case "${1:-}" in
--short) MODE=short && shift ;;
--runs) MODE=runs && shift ;;
--markdown) MODE=markdown && shift ;;
-*)
    echo "usage: ledger.sh [--short | --runs | --markdown] [FILE [BUILD]]" >&2
    exit 2
    ;;
esac
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
} | grep -v '^$' | sort -u | awk -F'\t' -v ledger="$FILE" -v mode="$MODE" '
function commas(x,    s, r) {
    s = sprintf("%d", x); r = ""
    while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
    return s r
}
function goal(t) { return (t == "decode" || t == "request" || t == "sbxconn" || t ~ /^gw_/) ? 100000000 : 10000000 }
BEGIN {
    while ((getline line < ledger) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        t = f[4]; runs[t]++; secs[t] += f[5]; execs[t] += f[6]
        cov[t] = f[7]; ft[t] = f[8]; files[t] = f[9]; seen[t] = 1
        if (f[10] > 0 && f[11] !~ /^fixed /) { crashes[t] += f[10]; bad = 1 }
    }
}
{ names[++n] = $0; seen[$0] = seen[$0] }
END {
    if (mode == "markdown") {
        print "| target | runs | hours | execs | goal | met | cov | ft | corpus files | crashes open |"
        print "|---|---|---|---|---|---|---|---|---|---|"
        for (i = 1; i <= n; i++) {
            t = names[i]; g = goal(t); met = (execs[t] >= g) ? "yes" : "no"
            if (met == "no") short++
            printf "| `%s` | %d | %.2f | %s | %d M | %s | %s | %s | %s | %d |\n", t, runs[t], secs[t] / 3600, commas(execs[t]), g / 1000000, met, (t in cov) ? cov[t] : "-", (t in ft) ? ft[t] : "-", (t in files) ? files[t] : "-", crashes[t]
            total += execs[t]
        }
        printf "\ntotal execs %s; %d of %d targets short of their goal; %s.\n", commas(total), short, n, bad ? "a crash is open" : "no open crash"
        exit bad
    }
    if (mode != "table") {
        # Quickest to finish first: the execs a target lacks at its ledger rate.
        for (i = 1; i <= n; i++) {
            t = names[i]; lack = goal(t) - execs[t]
            if (lack <= 0) continue
            left[++m] = t; need[t] = lack
            eta[t] = (secs[t] > 0 && execs[t] > 0) ? lack / (execs[t] / secs[t]) : 1e18
        }
        for (i = 2; i <= m; i++)
            for (j = i; j > 1 && eta[left[j]] < eta[left[j - 1]]; j--) {
                x = left[j]; left[j] = left[j - 1]; left[j - 1] = x
            }
        for (i = 1; i <= m; i++)
            printf "%s%s", (i > 1 ? " " : ""), (mode == "runs" ? left[i] "=" need[left[i]] : left[i])
        printf "\n"
        exit 0
    }
    printf "%-13s %5s %7s %14s %12s %5s %6s %6s %6s %7s\n", "target", "runs", "hours", "execs", "goal", "met", "cov", "ft", "files", "crashes"
    for (i = 1; i <= n; i++) {
        t = names[i]; g = goal(t); met = (execs[t] >= g) ? "yes" : "no"
        if (met == "no") short++
        printf "%-13s %5d %7.2f %14d %12d %5s %6s %6s %6s %7d\n", t, runs[t], secs[t] / 3600, execs[t], g, met, (t in cov) ? cov[t] : "-", (t in ft) ? ft[t] : "-", (t in files) ? files[t] : "-", crashes[t]
        total += execs[t]
    }
    printf "total execs %d; %d of %d targets short of their goal; %s\n", total, short, n, bad ? "a crash is open" : "no open crash"
    exit bad
}'
