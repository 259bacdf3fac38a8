/*
 * What every sbx-init configuration must look like, whatever the command line and init.conf
 * said (init/config.c, docs/INIT.md): the fuzz targets of both sources check it after each input.
 * A bad value gets the key's default, so every field always holds a value its key accepts.
 */
#ifndef SBX_FUZZ_INIT_CHECK_H
#define SBX_FUZZ_INIT_CHECK_H

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "init.h"

/* The value `v` of `key` is what init_config_set takes, and taking it again changes nothing. */
static inline void fuzz_init_reapply(const struct init_config *cfg, const char *key, const char *v)
{
    static struct init_config again;
    char copy[INIT_VALUE_LEN];

    again = *cfg;
    snprintf(copy, sizeof(copy), "%s", v);
    if (init_config_set(&again, key, copy) != 0 || memcmp(&again, cfg, sizeof(again)) != 0) {
        abort();
    }
}

static inline void fuzz_init_check(const struct init_config *cfg)
{
    int64_t max = INIT_DURATION_MAX_S;

    if (cfg->lifetime > INIT_LIFETIME_DURATION ||
        (cfg->lifetime == INIT_LIFETIME_DURATION &&
         (cfg->lifetime_s <= 0 || cfg->lifetime_s > max)) ||
        cfg->session_grace_s < 0 || cfg->session_grace_s > max || cfg->shutdown_grace_s < 0 ||
        cfg->shutdown_grace_s > max || cfg->shutdown_sync_s < 0 ||
        cfg->shutdown_sync_s > INIT_SYNC_MAX_S || cfg->rescue_after < 0 ||
        cfg->rescue_after > 1000 || cfg->seccomp > SBX_FILTER_LOG ||
        (cfg->has_ip && (cfg->ip_prefix < 1 || cfg->ip_prefix > 32))) {
        abort();
    }
    /* The strings: terminated, and each one its key takes as it is. */
    if (memchr(cfg->listen, '\0', sizeof(cfg->listen)) == NULL ||
        memchr(cfg->hostname, '\0', sizeof(cfg->hostname)) == NULL ||
        memchr(cfg->root, '\0', sizeof(cfg->root)) == NULL ||
        memchr(cfg->token_file, '\0', sizeof(cfg->token_file)) == NULL ||
        memchr(cfg->replay, '\0', sizeof(cfg->replay)) == NULL) {
        abort();
    }
    fuzz_init_reapply(cfg, "sbx.listen", cfg->listen);
    fuzz_init_reapply(cfg, "sbx.hostname", cfg->hostname);
    fuzz_init_reapply(cfg, "root", cfg->root);
    fuzz_init_reapply(cfg, "sbx.token_file", cfg->token_file[0] ? cfg->token_file : "none");
    fuzz_init_reapply(cfg, "sbx.replay", cfg->replay[0] ? cfg->replay : "default");
    fuzz_init_reapply(cfg, "sbx.seccomp", sbx_filter_mode_name(cfg->seccomp));
    if (cfg->token_file[0] != '\0' && cfg->token_file[0] != '/') {
        abort();
    }
    /* The workload limits: auto (not for cpu_max), max, or a number in the key's range. */
    if ((cfg->wl_memory_max != INIT_LIMIT_AUTO && cfg->wl_memory_max != INIT_LIMIT_NONE &&
         (cfg->wl_memory_max < (16ull << 20) || cfg->wl_memory_max > (1ull << 50))) ||
        (cfg->wl_pids_max != INIT_LIMIT_AUTO && cfg->wl_pids_max != INIT_LIMIT_NONE &&
         (cfg->wl_pids_max < 16 || cfg->wl_pids_max > 4194304)) ||
        (cfg->wl_cpu_max != INIT_LIMIT_NONE && (cfg->wl_cpu_max < 1 || cfg->wl_cpu_max > 100000))) {
        abort();
    }
    /* The environment: at most INIT_ENV_MAX "NAME=VALUE", each name valid and there once. */
    if (cfg->nenv < 0 || cfg->nenv > INIT_ENV_MAX) {
        abort();
    }
    for (int i = 0; i < cfg->nenv; i++) {
        const char *e = cfg->env[i], *eq;
        size_t n;

        if (memchr(e, '\0', INIT_ENV_LEN) == NULL || (eq = strchr(e, '=')) == NULL || eq == e ||
            isdigit((unsigned char)e[0])) {
            abort();
        }
        n = (size_t)(eq - e);
        for (size_t k = 0; k < n; k++) {
            if (!isalnum((unsigned char)e[k]) && e[k] != '_') {
                abort();
            }
        }
        if (n == strlen("SBX_AGENT_TOKEN") && memcmp(e, "SBX_AGENT_TOKEN", n) == 0) {
            abort(); /* never from the command line or init.conf */
        }
        for (int j = 0; j < i; j++) {
            if (strncmp(cfg->env[j], e, n + 1) == 0) {
                abort();
            }
        }
    }
}

#endif
