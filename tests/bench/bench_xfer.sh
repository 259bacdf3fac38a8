#!/bin/sh
# Transfer benchmarks (issue 7), rows in the table format of run.sh:
#   tests/bench/bench_xfer.sh [--quick] [BUILD_DIR]
# - upload / download of a 4 GiB file (--quick: 1 GiB) with `sbx cp --no-verify` (size checked,
#   as the raw copy does nothing more) and with `sbx cp` (sha256 on both sides, end to end),
#   against the same bytes through file -> socat -b 262144 -> unix socket -> socat -> file;
# - tree upload of 10,000 small files with `sbx cp -r` against tar | socat -> socat | tar;
# - the agent's peak RSS (VmHWM) over a fresh agent's whole upload.
# Files live on a private tmpfs (mounted here; needs root), so the disk is not measured.
# 5 repetitions (--quick: 3); a ratio is the median of the per-repetition ratios, each
# repetition's raw and sbx copies having run back to back.
set -eu
cd "$(dirname "$0")/../.."

QUICK=""
if [ "${1:-}" = "--quick" ]; then
    QUICK=1
    shift
fi
BUILD="$(cd "${1:-build}" && pwd)"
SBX="$BUILD/bin/sbx"
AGENT="$BUILD/bin/sbx-agent"
GIB=4
REPS=5
if [ -n "$QUICK" ]; then
    GIB=1
    REPS=3
fi
BYTES=$((GIB * 1073741824))
NFILES=10000

W=$(mktemp -d /tmp/sbx-bench-xfer.XXXXXX)
APID=""
cleanup() {
    [ -n "$APID" ] && kill "$APID" 2>/dev/null || true
    umount "$W/t" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
mkdir "$W/t"
if ! mount -t tmpfs -o size=$((3 * GIB + 2))g tmpfs "$W/t" 2>/dev/null; then
    echo "bench_xfer: cannot mount a tmpfs (needs root); skipped" >&2
    exit 0
fi
T="$W/t"
SOCK="$W/agent.sock"
RAW="$W/raw.sock"

now() { date +%s.%N; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
minmax() { sort -g | awk 'NR==1{a=$1} {b=$1} END {printf "%.2f–%.2f", a, b}'; }
# Per-rep ratios (percent) of the raw copy's time in file $1 to ours in file $2, one per line:
# each rep's pair ran back to back, so drift in the machine's speed cancels out.
ratios() { paste "$1" "$2" | awk '{printf "%.1f\n", 100 * $1 / $2}'; }

start_agent() {
    rm -f "$SOCK"
    "$AGENT" --listen "unix:$SOCK" 2>/dev/null &
    APID=$!
    while [ ! -S "$SOCK" ]; do sleep 0.01; done
    sleep 0.05
}
stop_agent() {
    kill "$APID" 2>/dev/null || true
    wait "$APID" 2>/dev/null || true
    APID=""
}

# One raw copy: src -> socat -> unix socket -> socat -> dst. Prints seconds.
raw_copy() {
    rm -f "$RAW" "$2"
    socat -u -b 262144 "UNIX-LISTEN:$RAW" "OPEN:$2,creat,trunc" &
    rx=$!
    while [ ! -S "$RAW" ]; do sleep 0.005; done
    t0=$(now)
    socat -u -b 262144 "OPEN:$1" "UNIX-CONNECT:$RAW"
    wait $rx
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}

timed() {
    t0=$(now)
    "$@"
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}

row() { # what figure spread baseline ratio target met
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7"
}

gbps() { echo "$BYTES / $1 / 1000000000" | bc -l; }

head -c "$BYTES" /dev/urandom >"$T/src" 2>/dev/null ||
    dd if=/dev/urandom of="$T/src" bs=1M count=$((GIB * 1024)) status=none
want=$(sha256sum <"$T/src" | cut -d' ' -f1)
# In a VM with free page reporting (virtio-balloon), memory freed more than ~2 s ago has gone back
# to the hypervisor, and the first touch of each such page costs a host fault, far more than the
# copy; which copy pays that was down to timing (a 4 GiB run measured the raw copy at 0.83 GB/s,
# the next at 2.24). So every measured copy writes into memory touched and freed just before it,
# unmeasured (prime), and the download lands on the name of the source (checked by sha256)
# rather than as a third file.
prime() {
    dd if=/dev/zero of="$T/warm" bs=1M count=$((GIB * 1024)) status=none
    rm -f "$T/warm"
}
export SBX_ADDR="unix:$SOCK"

# --- file upload / download ------------------------------------------------------------------
: >"$W/up"
: >"$W/upv"
: >"$W/down"
: >"$W/raw"
: >"$W/rss"
for i in $(seq $REPS); do
    prime
    raw_copy "$T/src" "$T/dst" >>"$W/raw"
    rm -f "$T/dst"
    start_agent
    prime
    timed "$SBX" cp -q --no-verify "$T/src" ":$T/dst" >>"$W/up"
    awk '/^VmHWM/ {print $2}' "/proc/$APID/status" >>"$W/rss"
    rm -f "$T/dst"
    prime
    timed "$SBX" cp -q "$T/src" ":$T/dst" >>"$W/upv"
    rm -f "$T/src"
    prime
    timed "$SBX" cp -q ":$T/dst" "$T/src" >>"$W/down"
    stop_agent
    [ "$(sha256sum <"$T/src" | cut -d' ' -f1)" = "$want" ] ||
        { echo "bench_xfer: download differs" >&2; exit 1; }
    rm -f "$T/dst"
done
raw=$(median <"$W/raw")
for dir in up upv down; do
    s=$(median <"$W/$dir")
    fig=$(gbps "$s")
    base=$(gbps "$raw")
    ratio=$(ratios "$W/raw" "$W/$dir" | median)
    rspread=$(ratios "$W/raw" "$W/$dir" | minmax)
    spread=$(while read -r x; do gbps "$x"; done <"$W/$dir" | minmax)
    met=NO
    if [ "$(echo "$ratio >= 100 && $fig >= 1" | bc -l)" = 1 ]; then met=yes; fi
    target="≥ 100 % of raw, ≥ 1 GB/s"
    if [ $dir = upv ]; then
        # SHA-256 (SHA-NI, ~1.2 GB per CPU-second) on both sides is more CPU than the whole raw
        # copy on two cores: an information row; the comparable one is --no-verify.
        target="- (hash-bound)"
        met="-"
    fi
    case $dir in
    up) what="sbx cp --no-verify LOCAL :REMOTE (upload, size checked)" ;;
    upv) what="sbx cp LOCAL :REMOTE (upload, sha256 on both sides)" ;;
    *) what="sbx cp :REMOTE LOCAL (download)" ;;
    esac
    what="$what, $GIB GiB"
    row "$what" "$(printf '%.2f GB/s' "$fig")" "$spread GB/s" \
        "$(printf '%.2f GB/s' "$base") file→socat→unix→socat→file" \
        "$(printf '%.0f %% (%s)' "$ratio" "$rspread")" \
        "$target" "$met"
done
rss=$(sort -g "$W/rss" | tail -1)
met=NO
if [ "$rss" -le 32768 ]; then met=yes; fi
row "agent peak RSS (VmHWM) over a $GIB GiB upload" "$((rss / 1024)) MiB" "" "" "" "≤ 32 MiB" "$met"

# --- tree of small files ---------------------------------------------------------------------
rm -f "$T/src"
mkdir "$T/tree"
i=0
while [ $i -lt 100 ]; do
    mkdir "$T/tree/d$i"
    i=$((i + 1))
done
python3 - "$T/tree" "$NFILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for k in range(n):
    with open(os.path.join(root, "d%d" % (k % 100), "f%d.txt" % k), "wb") as f:
        f.write(os.urandom(100 + (k * 37) % 4000))
EOF
: >"$W/tup"
: >"$W/traw"
for i in $(seq $REPS); do
    rm -rf "$T/out"
    mkdir "$T/out"
    rm -f "$RAW"
    t0=$(now)
    socat -u -b 262144 "UNIX-LISTEN:$RAW" STDOUT | tar -C "$T/out" -xf - &
    rx=$!
    while [ ! -S "$RAW" ]; do sleep 0.005; done
    tar -C "$T/tree" -cf - . | socat -u -b 262144 STDIN "UNIX-CONNECT:$RAW"
    wait $rx
    t1=$(now)
    echo "$t1 - $t0" | bc -l >>"$W/traw"
    rm -rf "$T/out"
    start_agent
    timed "$SBX" cp -q -r "$T/tree" ":$T/out" >>"$W/tup"
    stop_agent
    [ "$(find "$T/out" -type f | wc -l)" = "$NFILES" ] || { echo "bench_xfer: tree incomplete" >&2; exit 1; }
done
s=$(median <"$W/tup")
raw=$(median <"$W/traw")
ratio=$(ratios "$W/traw" "$W/tup" | median)
met=NO
if [ "$(echo "$ratio >= 100" | bc -l)" = 1 ]; then met=yes; fi
row "sbx cp -r: $NFILES small files (100 B–4 KiB) upload" "$(printf '%.0f ms' "$(echo "$s * 1000" | bc -l)")" \
    "$(while read -r x; do echo "$x * 1000" | bc -l; done <"$W/tup" | minmax) ms" \
    "$(printf '%.0f ms' "$(echo "$raw * 1000" | bc -l)") tar|socat→socat|tar" \
    "$(printf '%.0f %%' "$ratio")" "≥ 100 % of tar|tar" "$met"
