/*
 * libFuzzer target for sbx-init's kernel command line parser (init/config.c,
 * init_config_load_cmdline): the input is /proc/cmdline's text, applied over the defaults. The
 * configuration that comes out must be valid (fuzz_init_check.h), and written back as a command
 * line (each sbx.* key with its value, quoted) it must give the same configuration again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_init_check.h"
#include "init.h"
#include "listen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char line[INIT_FILE_MAX], back[2 * INIT_FILE_MAX + INIT_ENV_MAX * (INIT_ENV_LEN + 16)];
static struct init_config cfg, cfg2;

/* Appends ` key="value"` to back at *off. */
static void put(size_t *off, const char *key, const char *value)
{
    int n = snprintf(back + *off, sizeof(back) - *off, " %s=\"%s\"", key, value);

    if (n < 0 || (size_t)n >= sizeof(back) - *off) {
        abort();
    }
    *off += (size_t)n;
}

static void put_u(size_t *off, const char *key, uint64_t v, uint64_t autov)
{
    char num[24];

    snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    put(off, key, v == INIT_LIMIT_NONE ? "max" : v == autov ? "auto" : num);
}

/* Whether two configurations say the same (the bytes after a string's NUL may differ). */
static bool same(const struct init_config *a, const struct init_config *b)
{
    if (a->lifetime != b->lifetime ||
        (a->lifetime == INIT_LIFETIME_DURATION && a->lifetime_s != b->lifetime_s) ||
        a->session_grace_s != b->session_grace_s || a->shutdown_grace_s != b->shutdown_grace_s ||
        strcmp(a->listen, b->listen) != 0 || strcmp(a->hostname, b->hostname) != 0 ||
        a->rescue_after != b->rescue_after || a->debug_shell != b->debug_shell ||
        a->vsock_allow_local != b->vsock_allow_local || a->has_ip != b->has_ip ||
        a->has_gw != b->has_gw || a->seccomp != b->seccomp ||
        (a->has_ip && (a->ip.s_addr != b->ip.s_addr || a->ip_prefix != b->ip_prefix)) ||
        (a->has_gw && a->gw.s_addr != b->gw.s_addr) || strcmp(a->root, b->root) != 0 ||
        strcmp(a->token_file, b->token_file) != 0 || strcmp(a->replay, b->replay) != 0 ||
        a->squashfs != b->squashfs || a->root_ro != b->root_ro || a->overlay != b->overlay ||
        a->wl_memory_max != b->wl_memory_max || a->wl_pids_max != b->wl_pids_max ||
        a->wl_cpu_max != b->wl_cpu_max || a->nenv != b->nenv) {
        return false;
    }
    for (int i = 0; i < a->nenv; i++) {
        if (strcmp(a->env[i], b->env[i]) != 0) {
            return false;
        }
    }
    return true;
}

/* Each address sbx.listen took, as sbx-init parses it when it holds the listener (agent.c's
 * hold_listener): parsed into an address of its kind, or refused with a reason; never both. */
static void check_listen(const char *list)
{
    char buf[sizeof(cfg.listen)], *save = NULL;

    (void)snprintf(buf, sizeof(buf), "%s", list);
    for (char *a = strtok_r(buf, ",", &save); a != NULL; a = strtok_r(NULL, ",", &save)) {
        struct sbx_listen_addr la;
        const char *why;

        memset(&la, 0xa5, sizeof(la));
        why = sbx_listen_parse(a, &la);
        if (why != NULL) {
            if (why[0] == '\0') {
                abort(); /* "a refusal has a reason" */
            }
            continue;
        }
        switch (la.kind) {
        case SBX_LISTEN_SERIAL:
            if (la.domain != 0) {
                abort(); /* "a serial port has no socket address" */
            }
            break;
        case SBX_LISTEN_UNIX:
            if (la.domain != AF_UNIX || la.u.un.sun_family != AF_UNIX ||
                memchr(la.u.un.sun_path, '\0', sizeof(la.u.un.sun_path)) == NULL ||
                la.u.un.sun_path[0] == '\0') {
                abort(); /* "a unix address is a non-empty path that fits sun_path" */
            }
            break;
        case SBX_LISTEN_TCP:
            if (!((la.domain == AF_INET && la.len == sizeof(la.u.in) && la.u.in.sin_port != 0) ||
                  (la.domain == AF_INET6 && la.len == sizeof(la.u.in6) &&
                   la.u.in6.sin6_port != 0))) {
                abort(); /* "a TCP address is IPv4 or IPv6 with a port from 1" */
            }
            break;
        case SBX_LISTEN_VSOCK:
            if (la.domain != AF_VSOCK || la.len != sizeof(la.u.vm)) {
                abort(); /* "a vsock address is sockaddr_vm" */
            }
            break;
        default:
            abort(); /* "a parsed address has a kind" */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = size < sizeof(line) - 1 ? size : sizeof(line) - 1, off = 0;
    char num[32], addr[40];

    /* /proc/cmdline is read as a C string: it ends at the first NUL. */
    memcpy(line, data, n);
    line[n] = '\0';
    cfg.quiet = true;
    init_config_defaults(&cfg);
    init_config_load_cmdline(&cfg, line);
    fuzz_init_check(&cfg);
    check_listen(cfg.listen);

    /* Back to a command line. A value with a '"' cannot be written (and cannot come from one). */
    put(&off, "sbx.lifetime",
        cfg.lifetime == INIT_LIFETIME_DURATION
            ? (snprintf(num, sizeof(num), "%llds", (long long)cfg.lifetime_s), num)
            : init_lifetime_names[cfg.lifetime]);
    snprintf(num, sizeof(num), "%lld", (long long)cfg.session_grace_s);
    put(&off, "sbx.session_grace", num);
    snprintf(num, sizeof(num), "%lld", (long long)cfg.shutdown_grace_s);
    put(&off, "sbx.shutdown_grace", num);
    put(&off, "sbx.listen", cfg.listen);
    put(&off, "sbx.hostname", cfg.hostname);
    put(&off, "sbx.debug", cfg.debug_shell ? "shell" : "none");
    snprintf(addr, sizeof(addr), "%u.%u.%u.%u/%d", ((uint8_t *)&cfg.ip)[0], ((uint8_t *)&cfg.ip)[1],
             ((uint8_t *)&cfg.ip)[2], ((uint8_t *)&cfg.ip)[3], cfg.ip_prefix);
    put(&off, "sbx.ip", cfg.has_ip ? addr : "none");
    snprintf(addr, sizeof(addr), "%u.%u.%u.%u", ((uint8_t *)&cfg.gw)[0], ((uint8_t *)&cfg.gw)[1],
             ((uint8_t *)&cfg.gw)[2], ((uint8_t *)&cfg.gw)[3]);
    put(&off, "sbx.gw", cfg.has_gw ? addr : "none");
    put(&off, "sbx.vsock_allow_local", cfg.vsock_allow_local ? "1" : "0");
    snprintf(num, sizeof(num), "%d", cfg.rescue_after);
    put(&off, "sbx.rescue_after", num);
    put(&off, "sbx.seccomp", sbx_filter_mode_name(cfg.seccomp));
    put(&off, "sbx.token_file", cfg.token_file[0] ? cfg.token_file : "none");
    put(&off, "sbx.replay", cfg.replay[0] ? cfg.replay : "default");
    put_u(&off, "sbx.workload.memory_max", cfg.wl_memory_max, INIT_LIMIT_AUTO);
    put_u(&off, "sbx.workload.pids_max", cfg.wl_pids_max, INIT_LIMIT_AUTO);
    put_u(&off, "sbx.workload.cpu_max", cfg.wl_cpu_max, INIT_LIMIT_NONE);
    put(&off, "sbx.overlay", cfg.overlay ? "tmpfs" : "none");
    put(&off, "root", cfg.root);
    put(&off, "rootfstype", cfg.squashfs ? "squashfs" : "ext4");
    off += (size_t)snprintf(back + off, sizeof(back) - off, " %s", cfg.root_ro ? "ro" : "rw");
    for (int i = 0; i < cfg.nenv; i++) {
        char key[INIT_ENV_LEN + 8];
        const char *eq = strchr(cfg.env[i], '=');

        snprintf(key, sizeof(key), "sbx.env.%.*s", (int)(eq - cfg.env[i]), cfg.env[i]);
        put(&off, key, eq + 1);
    }
    cfg2.quiet = true;
    init_config_defaults(&cfg2);
    init_config_load_cmdline(&cfg2, back);
    if (!same(&cfg, &cfg2)) {
        abort();
    }
    return 0;
}
