#!/bin/sh
# Serve the Deno Sandbox API on this machine: install what is missing, build, build the gateway
# guest image (Debian + deno, workload user `app`) if it is missing, then run sbx-gateway in the
# foreground. Each Sandbox.create() of the SDK boots a QEMU VM from build/gateway.ext4.
#
#   scripts/gateway.sh                     listen on 127.0.0.1:8080, state in build/gateway-data
#   scripts/gateway.sh --mem 2G ...        extra options go to sbx-gateway (see --help)
#   SBX_GATEWAY_FAST=1 scripts/gateway.sh  skip scripts/deps.sh (packages already there)
#
# It prints the token and the two endpoints; in another shell:
#   export DENO_DEPLOY_TOKEN=ddo_... DENO_SANDBOX_ENDPOINT=http://127.0.0.1:8080 \
#          DENO_DEPLOY_ENDPOINT=http://127.0.0.1:8080
#   deno run -A tests/gateway/sdk/seed.ts
set -eu
cd "$(dirname "$0")/.."

if [ -t 2 ]; then B=$(printf '\033[1m'); N=$(printf '\033[0m'); else B=; N=; fi
step() { printf '%s==> %s%s\n' "$B" "$*" "$N" >&2; }

if [ "${SBX_GATEWAY_FAST:-0}" != 1 ]; then
    step "installing missing Debian packages (scripts/deps.sh)"
    scripts/deps.sh
fi

step "building sbx-gateway, sbx-init, sbx-agent and the VM runner into build/"
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)" --target sbx-gateway sbx-init sbx-agent sbx >/dev/null

IMAGE=build/gateway.ext4
# sbx-rootfs writes the ext4 atomically, then the stage-1 initrd beside it: both must be there.
if [ ! -f "$IMAGE" ] || [ ! -f build/gateway.initrd.cpio.gz ]; then
    step "building the gateway image $IMAGE (debootstrap + deno; cached after the first time)"
    rootfs-builder/sbx-rootfs build --base debian --with-deno --workload-user app \
        --init build/bin/sbx-init --agent build/bin/sbx-agent -o "$IMAGE"
fi

mkdir -p build/gateway-data
step "starting sbx-gateway: API :8080, exposeHttp ingress :8081, SSH :2222 (Ctrl-C stops it; sandboxes with a duration timeout are kept in build/gateway-data)"
exec build/bin/sbx-gateway --listen 127.0.0.1:8080 --image "$IMAGE" \
    --http-listen 127.0.0.1:8081 --ssh-listen 127.0.0.1:2222 \
    --data-dir build/gateway-data "$@"
