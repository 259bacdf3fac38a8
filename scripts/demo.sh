#!/bin/sh
# The sbx demo, on a fresh Debian 12 machine: install what is missing, build, fetch the guest
# kernel, build the busybox guest image, boot it under QEMU and drive it through the sbx CLI,
# then power it off. Prints what it does as it goes. About 30 s after the first install.
#
#   scripts/demo.sh            the whole thing
#   SBX_DEMO_FAST=1 ...        skip scripts/deps.sh (packages already there)
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s.%N)

if [ -t 1 ]; then B=$(printf '\033[1m'); D=$(printf '\033[2m'); N=$(printf '\033[0m'); else B=; D=; N=; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "${SBX_DEMO_FAST:-0}" != 1 ]; then
    step "installing missing Debian packages (scripts/deps.sh)"
    scripts/deps.sh
fi

step "building sbx-init, sbx-agent, the sbx CLI and the image tools into build/"
# Only the targets the demo needs; the build directory's options (set by scripts/test.sh or
# you) are left as they are.
cmake -S . -B build >/dev/null
t=$(date +%s.%N)
cmake --build build -j"$(nproc)" --target sbx-init sbx-agent sbx >/dev/null
echo "built in $(elapsed "$t")s: $(cd build/bin && ls sbx sbx-init sbx-agent sbx-rootfs sbx-vm | tr '\n' ' ')"

step "fetching the Debian cloud kernel (apt-get download + dpkg-deb -x; cached, never installed)"
build/bin/sbx-rootfs kernel

step "building the busybox guest image (gzip'd cpio: sbx-init as /init, sbx-agent, busybox, virtio modules)"
build/bin/sbx-rootfs build --base busybox -o build/demo.cpio.gz
sed -n 's/^# //p' build/demo.cpio.gz.manifest | sed 's/^/    /'

step "booting it under QEMU (q35, TCG) and running a session through the sbx CLI"
echo "${D}sbx-vm waits until the agent answers hello, runs the session below with SBX_ADDR set,"
echo "then asks the agent to power the VM off.${N}"

# The session, run by `sbx-vm IMAGE -- sh FILE`, which exports SBX_ADDR.
cat > build/demo-session.sh <<'SESSION'
set -eu
# run CMD...: show it (quoted like a shell would need it), then run it
run() {
    line=
    for a in "$@"; do
        case $a in *[!A-Za-z0-9_./=:,+@%-]* | "") a="'$a'" ;; esac
        line="$line $a"
    done
    printf '\n%s$%s%s\n' "$B" "$line" "$N"
    "$@"
}
note() { printf '%s# %s%s\n' "$D" "$*" "$N"; }

note "the agent: version, capabilities, limits"
run sbx hello
note "boot timings (CLOCK_BOOTTIME): kernel_ns = when sbx-init started, init_ns = when it"
note "started the agent, agent_ns = the agent's main(), ready_ns = it listens"
run sbx info
run sbx ping -n 3

note "a command; its output is streamed as it is produced"
run sbx exec -- sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.3; done; uname -sr'
note "the exit status is passed through"
run sbx sh 'echo about to fail >&2; exit 3' || note "exit status: $?"
run sbx exec -- sh -c 'kill -TERM $$' || note "exit status: $? (128 + SIGTERM)"
note "stdin is streamed too"
printf '\n%s$ echo hello through stdin | sbx exec -- tr a-z A-Z%s\n' "$B" "$N"
echo hello through stdin | sbx exec -- tr a-z A-Z

note "the environment: GREETING came from sbx.env.GREETING on the kernel command line"
run sbx env get GREETING
run sbx env set COLOR=blue
run sbx sh 'echo "$GREETING, COLOR=$COLOR"'

note "files: sbx cp moves them in (atomically, sha256-checked end to end) and out again"
run sbx cp "$0" :/tmp/session.sh
run sbx exec -- wc -c /tmp/session.sh
run sbx cp :/tmp/session.sh "$0.back"
cmp "$0" "$0.back" && note "the same bytes came back"

note "a REPL: one interpreter whose state persists between evaluations (sh here; bash, python3,"
note "node and deno where the image has them); a timeout interrupts like ^C and the session lives on"
run sbx repl sh -e 'x=41; greet() { echo "hello, $1"; }' -e 'greet repl; echo $((x + 1))'
run sbx repl sh --timeout 1s -e 'sleep 30' || note "exit status: $? (timed out)"

note "processes outlive their connection: list them, signal them"
sbx exec -- sleep 60 >/dev/null 2>&1 &
sleep 0.5
run sbx ps
id=$(sbx ps | awk '/sleep 60/ && /running/ { print $1; exit }')
run sbx kill "$id"
wait || true
run sbx ps

note "detach and attach again: output nobody reads is kept in a replay ring, so a client"
note "that reconnects (after a host restart, a snapshot restore) loses nothing"
id=$(sbx exec --detach -- sh -c 'for i in 1 2 3; do echo step $i; sleep 0.4; done; exit 4')
run sbx ps
run sbx attach -n "$id" || note "exit status: $? (the process's own)"

note "ports: a web server in the guest, on lo only (the VM has no network device), reached"
note "from the host through sbx forward (each connection relayed by net.connect)"
sbx sh 'mkdir -p /tmp/www && echo "hello from inside the VM" > /tmp/www/index.html'
sbx exec --detach -- httpd -f -p 127.0.0.1:8080 -h /tmp/www >/dev/null
run sbx ports
sbx forward 127.0.0.1:18080:8080 &
fwd=$!
get() {
    python3 -c 'import sys, time, urllib.request
for i in range(100):
    try:
        sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no answer from " + sys.argv[1])' "$1"
}
run get http://127.0.0.1:18080/
kill "$fwd"
wait "$fwd" 2>/dev/null || true

note "a terminal: sbx exec -t gives the process a PTY"
run sbx exec -t -- sh -c 'tty; stty size' </dev/null
SESSION

rc=0
PATH="$ROOT/build/bin:$PATH" B="$B" D="$D" N="$N" \
    build/bin/sbx-vm --append "sbx.env.GREETING=hello-from-the-kernel-command-line" \
    build/demo.cpio.gz -- sh build/demo-session.sh || rc=$?

if [ $rc -eq 0 ]; then
    step "done: the VM powered off; the whole demo took $(elapsed "$T0")s"
else
    step "FAILED (exit status $rc) after $(elapsed "$T0")s"
fi
exit $rc
