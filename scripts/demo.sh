#!/bin/sh
# The sbx demo: install what is missing, build, fetch the guest kernel, build the busybox
# image, boot it under QEMU, drive it through the sbx CLI, power it off.
set -eu
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing missing Debian packages (scripts/deps.sh)"
scripts/deps.sh
say "building into build/"
cmake -S . -B build -DSBX_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
say "fetching the Debian cloud kernel (cached)"
build/bin/sbx-rootfs kernel
say "building the busybox guest image"
build/bin/sbx-rootfs build --base busybox -o build/demo.cpio.gz
say "booting it under QEMU and running a session through the sbx CLI"
PATH="$PWD/build/bin:$PATH" build/bin/sbx-vm --append "sbx.env.GREETING=hello-from-the-kernel-cmdline" build/demo.cpio.gz -- sh -c '
    set -x
    export PATH
    sbx hello
    sbx info
    sbx exec -- uname -a
    sbx sh "for i in 1 2 3; do echo tick \$i; sleep 0.2; done"
    sbx sh "echo \$GREETING"
    sbx env set COLOR=blue
    sbx sh "echo color=\$COLOR"
    printf "streamed stdin\n" | sbx exec -- tr a-z A-Z
    sbx exec -t -- sh -c "stty size; tty"
    sbx sh "exit 3" || echo "remote exit status: $?"
    sbx ps
'
say "the VM powered off"
