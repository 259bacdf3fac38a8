#!/bin/sh
# Install what is missing, build into build/ (or build-asan/ with --sanitize), run every test.
#   scripts/test.sh              the full suite (unit, integration, fuzz-corpus replay, vm)
#   scripts/test.sh --sanitize   the same suite built with ASan+UBSan into build-asan/
#   scripts/test.sh -L unit      extra arguments go to ctest
set -eu
cd "$(dirname "$0")/.."

BUILD=build
CMAKE_ARGS="-DSBX_WERROR=ON"
if [ "${1:-}" = "--sanitize" ]; then
    shift
    BUILD=build-asan
    CMAKE_ARGS="$CMAKE_ARGS -DSBX_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug"
fi

scripts/deps.sh
# shellcheck disable=SC2086
cmake -S . -B "$BUILD" $CMAKE_ARGS >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
cd "$BUILD"
# Everything runs, the Debian and deno images included (debootstrap and the deno download: a few
# minutes when the cache is cold, seconds after).
ctest --output-on-failure --timeout 900 -j"$(nproc)" "$@"
