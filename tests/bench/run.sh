#!/bin/sh
# Run the benchmarks (issues 2, 3, 13 and 15) from an existing build and print one results table.
#   tests/bench/run.sh [--quick] [BUILD_DIR]      (BUILD_DIR defaults to build/)
# Builds nothing: first
#   cmake --build build --target bench_proto bench_agent bench_repl sbx-agent sbx-test-helper sbx
# With /usr/sbin/sshd installed, the cli rows also compare `sbx exec` with ssh (an sshd of its
# own on 127.0.0.1, stopped at the end); without it they say the ssh baseline was not measured.
# Needs socat (the raw baselines) and python3 (bench_forward.py). --quick moves 1 GiB instead of
# 4 GiB and takes fewer samples.
# Every figure is a median over repetitions, next to a baseline measured in the same run.
set -eu
cd "$(dirname "$0")/../.."

QUICK=""
if [ "${1:-}" = "--quick" ]; then
    QUICK="--quick"
    shift
fi
BUILD="${1:-build}"
# Absolute: the agent runs what it spawns from "/" (PROTOCOL.md §14.2), not from here.
BUILD=$(cd "$BUILD" && pwd)

for f in "$BUILD/bench/bench_proto" "$BUILD/bench/bench_agent" "$BUILD/bin/sbx-agent" \
         "$BUILD/tests/sbx-test-helper" "$BUILD/bin/sbx"; do
    if [ ! -x "$f" ]; then
        echo "run.sh: $f is missing; build it first:" >&2
        echo "  cmake --build $BUILD --target bench_proto bench_agent sbx-agent" \
             "sbx-test-helper sbx" >&2
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
# The ssh baseline of the cli rows: when sshd is installed, one of our own on 127.0.0.1 (a
# throw-away host key, key-only login as this user) with a ControlMaster connection to it.
# SHLVL=1 keeps bash from sourcing ~/.bashrc for a command run by sshd: the baseline measures
# ssh, not this user's shell start-up files.
SSH_ARGS=""
SSH_DIR=""
ssh_stop() {
    [ -n "$SSH_DIR" ] || return 0
    ssh -F "$SSH_DIR/ssh_config" -O exit sbxbench >/dev/null 2>&1 || true
    if [ -f "$SSH_DIR/sshd.pid" ]; then
        kill "$(cat "$SSH_DIR/sshd.pid")" 2>/dev/null || true
    fi
    rm -rf "$SSH_DIR"
    SSH_DIR=""
}
trap ssh_stop EXIT
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 &&
    command -v ssh-keygen >/dev/null 2>&1; then
    SSH_DIR=$(mktemp -d /tmp/sbx-bench-ssh.XXXXXX)
    port=$((20000 + $$ % 20000))
    ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/client_key"
    cp "$SSH_DIR/client_key.pub" "$SSH_DIR/authorized_keys"
    cat >"$SSH_DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $SSH_DIR/host_key
AuthorizedKeysFile $SSH_DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $SSH_DIR/sshd.pid
SetEnv SHLVL=1
LogLevel ERROR
EOF
    cat >"$SSH_DIR/ssh_config" <<EOF
Host sbxbench
    HostName 127.0.0.1
    Port $port
    User $(id -un)
    IdentityFile $SSH_DIR/client_key
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ControlMaster auto
    ControlPath $SSH_DIR/ctl
    ControlPersist 600
EOF
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p /run/sshd # sshd's privilege separation directory
    fi
    if /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log" &&
        ssh -F "$SSH_DIR/ssh_config" sbxbench true; then
        SSH_ARGS="--ssh-config $SSH_DIR/ssh_config"
    else
        echo "run.sh: could not start sshd on 127.0.0.1:$port: no ssh baseline" >&2
        cat "$SSH_DIR/sshd.log" >&2 || true
    fi
fi
# shellcheck disable=SC2086
"$BUILD/bench/bench_agent" $QUICK --agent "$BUILD/bin/sbx-agent" \
    --helper "$BUILD/tests/sbx-test-helper" --sbx "$BUILD/bin/sbx" $SSH_ARGS || rc=1
ssh_stop
# Transfers (needs the sbx CLI built too, root for its tmpfs, and bc).
tests/bench/bench_xfer.sh $QUICK "$BUILD" || rc=1
# Port forwarding (issue 15): sbx forward against a socat relay over a unix socket.
python3 tests/bench/bench_forward.py $QUICK "$BUILD" || rc=1
if [ -x "$BUILD/bench/bench_repl" ]; then
    "$BUILD/bench/bench_repl" $QUICK --agent "$BUILD/bin/sbx-agent" \
        --helper "$BUILD/tests/sbx-test-helper" || rc=1
fi
# sbx-gateway (issue 16): the real Deno Sandbox SDK under the pinned deno against the gateway
# (root: it creates a workload user); the vm row needs the gateway image (ctest -R gateway.image).
if [ -x "$BUILD/bin/sbx-gateway" ]; then
    python3 tests/bench/bench_gateway.py $QUICK "$BUILD" || rc=1
    # exposeHttp (issue 17): HTTP through the gateway's ingress against `sbx forward`.
    python3 tests/bench/bench_ingress.py $QUICK "$BUILD" || rc=1
fi
exit $rc
