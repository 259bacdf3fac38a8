PS1=''; PS2=''; set +m 2>/dev/null
__sbx_pong() { printf 'pong %s\n' "$1" >&4; }
if [ -n "${BASH_VERSION-}" ]; then trap 'return 130 2>/dev/null' INT; fi
printf 'ready\n' >&4
