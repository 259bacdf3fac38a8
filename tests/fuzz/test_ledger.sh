#!/bin/sh
# ledger.sh against a made-up ledger: the table's sums and exit status, --short's order and
# --runs' remainders, and a crash row that is open until its note says "fixed COMMIT".
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/sbx-ledger.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() {
    echo "test_ledger: $*" >&2
    exit 1
}
tab=$(printf '\t')
row() { # target seconds execs crashes [note]
    printf 'd%sc%sb%s%s%s%s%s%s%s1%s2%s3%s%s%s%s\n' "$tab" "$tab" "$tab" "$1" "$tab" "$2" "$tab" \
        "$3" "$tab" "$tab" "$tab" "$tab" "$4" "${5:+$tab}" "${5:-}"
}
{
    echo "# date${tab}commit${tab}build${tab}target${tab}seconds${tab}execs${tab}cov${tab}ft${tab}files${tab}crashes"
    row gw_slow 100 1000000 0    # 10 k/s, lacks 99 M: 9900 s
    row gw_fast 100 40000000 0   # 400 k/s, lacks 40 M after the next row: 100 s
    row gw_fast 100 20000000 0
    row glob 10 10000000 0       # its goal (10 M) met
    row netproc 10 9000000 1     # 900 k/s, lacks 1 M: about 1 s; a crash
} >"$T/l.tsv"

out=$("$HERE/ledger.sh" "$T/l.tsv" "$T/none") && fail "an open crash must exit 1"
echo "$out" | grep -q "^gw_fast *2 .* 60000000 *100000000 *no " || fail "gw_fast not summed: $out"
echo "$out" | grep -q "^glob .* yes " || fail "glob's goal is met: $out"
echo "$out" | grep -q "a crash is open" || fail "the open crash is not said: $out"

[ "$("$HERE/ledger.sh" --short "$T/l.tsv" "$T/none")" = "netproc gw_fast gw_slow" ] ||
    fail "--short: $("$HERE/ledger.sh" --short "$T/l.tsv" "$T/none")"
[ "$("$HERE/ledger.sh" --runs "$T/l.tsv" "$T/none")" = \
    "netproc=1000000 gw_fast=40000000 gw_slow=99000000" ] ||
    fail "--runs: $("$HERE/ledger.sh" --runs "$T/l.tsv" "$T/none")"

md=$("$HERE/ledger.sh" --markdown "$T/l.tsv" "$T/none")
echo "$md" | grep -q '^| `gw_fast` | 2 | 0.06 | 60,000,000 | 100 M | no |' || fail "--markdown: $md"
echo "$md" | grep -q '^total execs 80,000,000; .*a crash is open\.$' || fail "--markdown total: $md"

# The crash fixed: the same row with a note.
sed "s/^\(.*netproc.*1\)\$/\1${tab}fixed abc1234 (regress-x)/" "$T/l.tsv" >"$T/f.tsv"
grep -q "fixed abc1234" "$T/f.tsv" || fail "fixture: no note added"
out=$("$HERE/ledger.sh" "$T/f.tsv" "$T/none") || fail "a fixed crash must exit 0: $out"
echo "$out" | grep -q "no open crash" || fail "fixed crash still open: $out"

"$HERE/ledger.sh" --bogus "$T/l.tsv" >/dev/null 2>&1
[ $? -eq 2 ] || fail "an unknown option must exit 2"
echo "test_ledger: ok"
