/*
 * What main.c, sandbox.c, rest.c, backend.c and util.c share beyond gw.h: the sandbox backends
 * (vm: a QEMU guest booted by sbx-vm; addr: one agent already running at an address) behind one
 * small interface, the hooks the backends and the REST routes call in sandbox.c, and small
 * helpers (random ids, files).
 */
#ifndef SBX_GW_BACKEND_H
#define SBX_GW_BACKEND_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gw.h"
#include "http.h"

/* GONE sandboxes stay listed this long, then leave memory and disk. */
#define GW_GONE_KEEP_MS (60 * 60 * 1000)
/* The longest timeout a sandbox may have (create and extend). */
#define GW_TIMEOUT_MAX_MS GW_DURATION_MAX_MS
/* A state file read at start (they are small: config, labels, env). */
#define GW_STATE_FILE_MAX (1u << 20)
/* Lines of the console log quoted in boot failures and deaths. */
#define GW_CONSOLE_TAIL_LINES 20

/* --- backends (backend.c) ------------------------------------------------------------------ */

struct gw_backend_ops {
    const char *name; /* "vm" or "addr" (the state file's "backend") */
    /* Start booting @sb (sb->backend is NULL). Later (or before returning) the backend calls
     * gw_sandbox_booted once. Returns 0, or -1 with a message in @why (nothing started). */
    int (*start)(struct gw_sandbox *sb, char *why, size_t whylen);
    /* Power @sb off (BOOTING or READY); the backend calls gw_sandbox_stopped once it is off
     * (possibly before returning). */
    void (*stop)(struct gw_sandbox *sb);
    /* Add the backend's state to @obj (the state file's "backend" object). */
    void (*save)(const struct gw_sandbox *sb, json_t *obj);
    /* At start, from the state file's "backend" object: 1 when the sandbox still runs (then it is
     * watched again and sb->backend set), 0 when it does not. */
    int (*restore)(struct gw_sandbox *sb, json_t *obj);
    /* Let go of @sb: stop watching it (the VM keeps running: a gateway shutdown), close the
     * backend's handles and free its state once they are closed. sb->backend is NULL after. */
    void (*release)(struct gw_sandbox *sb);
};

/* The backend gw->opt.backend names: addr for "addr:ADDR", else vm (main.c checked it). */
const struct gw_backend_ops *gw_backend_get(const struct gw *g);

/* --- sandbox.c hooks ----------------------------------------------------------------------- */

/* The backend finished booting @sb: READY with agent address @addr, or (@addr NULL) GONE with
 * @why. Waiters are called. */
void gw_sandbox_booted(struct gw_sandbox *sb, const char *addr, const char *why);
/* The backend confirmed @sb is off after a stop: GONE. */
void gw_sandbox_stopped(struct gw_sandbox *sb);
/* Write DATA/sandboxes/<id>.json atomically. 0, or -1 (logged). */
int gw_sandbox_save(struct gw_sandbox *sb);
/*
 * gw_sandbox_create with the error code for the SDK ("INVALID_CONFIG", "NOT_SUPPORTED",
 * "TOO_MANY_SANDBOXES", "SANDBOX_BOOT_FAILED") in *@code.
 */
struct gw_sandbox *gw_sandbox_create_ex(struct gw *g, json_t *config, int *status,
                                        const char **code, char *why, size_t whylen);
/*
 * Check @config (a decoded create config, or NULL: none) as gw_sandbox_create does, creating
 * nothing: 0, or -1 with the error code in *@code and "<key>: <why>" in @why.
 */
int gw_sandbox_config_check(json_t *config, const char **code, char *why, size_t whylen);
/*
 * Move @sb's deadline to @stop_at_ms (clamped to now + GW_TIMEOUT_MAX_MS; a "session" sandbox
 * becomes a timed one that outlives its sessions). Returns the deadline now in force, or -1 with
 * a message in @why (a time not in the future).
 */
int64_t gw_sandbox_extend(struct gw_sandbox *sb, int64_t stop_at_ms, char *why, size_t whylen);
/* The gateway is stopping: kill "session" and booting sandboxes, leave timed ones running
 * (released from the backend, state on disk), stop every timer. */
void gw_sandboxes_shutdown(struct gw *g);
/* Free every sandbox (after the loop ran out; runs the loop once more for close callbacks). */
void gw_sandboxes_free(struct gw *g);

/* --- rest.c -------------------------------------------------------------------------------- */

/* The request handler given to gw_http_listen (@user: the struct gw). */
void gw_rest_handle(struct gw_http_conn *hc, const struct gw_http_req *req, void *user);
/* The x-deno-sandbox-config header's value @hdr (base64 of a JSON text; NULL: no header)
 * decoded into *@config (new reference; NULL without a header). 0, or -1 with @why. */
int gw_config_decode(const char *hdr, json_t **config, char *why, size_t whylen);
/* 1 when @id has the SDK's sandbox id shape ^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$, else 0. */
int gw_sandbox_id_valid(const char *id);

/* --- util.c -------------------------------------------------------------------------------- */

/* The alphabet of sandbox id tails, [0-9a-hjkmnp-z] (no i, l, o). */
#define GW_ID_ALPHABET "0123456789abcdefghjkmnpqrstuvwxyz"

/* Fill @out with @n characters drawn uniformly from @alphabet (getrandom) and a NUL (@out holds
 * n + 1). 0, or -1 with errno set. */
int gw_random_chars(char *out, size_t n, const char *alphabet);
/* Compare two strings without an early exit on the first difference (token checks). */
bool gw_ct_streq(const char *a, const char *b);
/* Write @len bytes to @path atomically (PATH.tmp, fsync, rename, fsync the dir), mode @mode.
 * 0, or -1 with errno set. */
int gw_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* Read all of @path (at most @max bytes) into a malloc'd NUL-terminated buffer. 0, or -1 with
 * errno set (EFBIG when bigger than @max; EINVAL for anything but a regular file, a FIFO
 * included, without blocking; ELOOP for a symlink). */
int gw_file_read(const char *path, size_t max, char **out, size_t *len);
/* The last @lines lines of @path (at most its last 16 KiB) into @out, "" when unreadable. */
void gw_file_tail(const char *path, unsigned lines, char *out, size_t outlen);
/* 1 when process @pid exists and its /proc/PID/cmdline contains @needle, else 0. */
int gw_pid_runs(pid_t pid, const char *needle);
/* @ms since the epoch as an ISO 8601 UTC string ("2026-01-02T03:04:05.678Z") in @out. */
void gw_iso_time(int64_t ms, char *out, size_t outlen);

#endif /* SBX_GW_BACKEND_H */
