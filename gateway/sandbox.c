/*
 * The sandbox table: ids, the create config of both SDKs, the life of a sandbox (BOOTING ->
 * READY -> STOPPING -> GONE), its timeout, and its state file DATA/sandboxes/<id>.json.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "link.h"

#define LABELS_MAX      5
#define LABEL_KEY_MAX   64
#define LABEL_VALUE_MAX 128
#define MEMORY_MIN_MB   128
#define MEMORY_MAX_MB   65536
#define ENV_MAX         256
#define ENV_KEY_MAX     256
#define ENV_VALUE_MAX   (32u << 10)
#define ALLOW_NET_MAX   256
#define ALLOW_NET_LEN   300
#define STATE_FILES_MAX (4 * GW_SANDBOXES_MAX)

struct sb_waiter {
    struct sb_waiter *next;
    gw_sandbox_ready_fn cb;
    void *user;
};

/* A sandbox with what only this file sees; sb first, so the two pointers convert. */
struct sbp {
    struct gw_sandbox sb;
    uv_timer_t timer; /* the deadline while running, the expiry of a GONE entry after */
    struct sb_waiter *waiters;
    bool shut; /* the gateway is stopping: arm no timer */
};

static struct sbp *priv(struct gw_sandbox *sb)
{
    return (struct sbp *)sb;
}

static const char *state_name(enum gw_sandbox_state st)
{
    switch (st) {
    case GW_SB_BOOTING:
        return "booting";
    case GW_SB_READY:
        return "ready";
    case GW_SB_STOPPING:
        return "stopping";
    case GW_SB_GONE:
        return "gone";
    }
    return "gone";
}

static int state_path(const struct gw_sandbox *sb, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/sandboxes/%s.json", sb->g->opt.data_dir, sb->id);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* --- table ---------------------------------------------------------------------------------- */

struct gw_sandbox *gw_sandbox_find(struct gw *g, const char *id)
{
    for (struct gw_sandbox *sb = g->sandboxes; sb != NULL; sb = sb->next) {
        if (strcmp(sb->id, id) == 0) {
            return sb;
        }
    }
    return NULL;
}

static void sb_free_cb(uv_handle_t *h)
{
    struct sbp *p = h->data;

    json_decref(p->sb.labels);
    json_decref(p->sb.env);
    json_decref(p->sb.config);
    json_decref(p->sb.secrets);
    while (p->waiters != NULL) {
        struct sb_waiter *w = p->waiters;
        p->waiters = w->next;
        free(w);
    }
    free(p);
}

/* Take @sb out of the table and free it (its backend already let go of it). */
static void sb_remove(struct gw_sandbox *sb)
{
    struct gw *g = sb->g;

    for (struct gw_sandbox **pp = &g->sandboxes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == sb) {
            *pp = sb->next;
            g->nsandboxes--;
            break;
        }
    }
    gw_link_close(sb, "the sandbox is gone");
    if (sb->backend != NULL) {
        gw_backend_get(g)->release(sb);
    }
    uv_close((uv_handle_t *)&priv(sb)->timer, sb_free_cb);
}

static struct sbp *sb_new(struct gw *g, const char *id)
{
    struct sbp *p = calloc(1, sizeof *p);

    if (p == NULL) {
        return NULL;
    }
    if (uv_timer_init(g->loop, &p->timer) != 0) {
        free(p);
        return NULL;
    }
    p->timer.data = p;
    p->sb.g = g;
    (void)snprintf(p->sb.id, sizeof p->sb.id, "%s", id);
    p->sb.next = g->sandboxes;
    g->sandboxes = &p->sb;
    g->nsandboxes++;
    return p;
}

/* A GONE entry has been listed long enough: forget it, on disk too. */
static void expire_cb(uv_timer_t *t)
{
    struct sbp *p = t->data;
    char path[PATH_MAX];

    if (state_path(&p->sb, path, sizeof path) == 0 && unlink(path) < 0 && errno != ENOENT) {
        gw_log("%s: %s: %s", p->sb.id, path, strerror(errno));
    }
    sb_remove(&p->sb);
}

static void arm_expiry(struct sbp *p)
{
    if (p->shut) {
        return;
    }
    int64_t left = p->sb.stopped_ms + GW_GONE_KEEP_MS - gw_now_ms();
    int rc = uv_timer_start(&p->timer, expire_cb, left > 0 ? (uint64_t)left : 0, 0);
    if (rc != 0) {
        gw_log("%s: timer: %s", p->sb.id, uv_strerror(rc));
    }
}

/* Room for one more sandbox: at the cap, the GONE entry that stopped first makes way. */
static int make_room(struct gw *g)
{
    struct gw_sandbox *oldest = NULL;

    if (g->nsandboxes < GW_SANDBOXES_MAX) {
        return 0;
    }
    for (struct gw_sandbox *sb = g->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->state == GW_SB_GONE && (oldest == NULL || sb->stopped_ms < oldest->stopped_ms)) {
            oldest = sb;
        }
    }
    if (oldest == NULL) {
        return -1;
    }
    uv_timer_stop(&priv(oldest)->timer);
    expire_cb(&priv(oldest)->timer);
    return 0;
}

/* --- state file ----------------------------------------------------------------------------- */

int gw_sandbox_save(struct gw_sandbox *sb)
{
    char path[PATH_MAX];
    json_t *o = json_object();
    json_t *b = json_object();
    int rc = -1;

    if (o == NULL || b == NULL || state_path(sb, path, sizeof path) < 0) {
        goto out;
    }
    if (sb->backend != NULL) {
        gw_backend_get(sb->g)->save(sb, b);
    }
    if (json_object_set_new(o, "id", json_string(sb->id)) < 0 ||
        json_object_set_new(o, "state", json_string(state_name(sb->state))) < 0 ||
        json_object_set_new(o, "created_ms", json_integer(sb->created_ms)) < 0 ||
        json_object_set_new(o, "stopped_ms", json_integer(sb->stopped_ms)) < 0 ||
        json_object_set_new(o, "stop_at_ms", json_integer(sb->stop_at_ms)) < 0 ||
        json_object_set_new(o, "memory_mb", json_integer((json_int_t)sb->memory_mb)) < 0 ||
        json_object_set(o, "labels", sb->labels) < 0 ||
        json_object_set_new(o, "env", sb->env != NULL ? json_incref(sb->env) : json_null()) < 0 ||
        json_object_set_new(o, "config",
                            sb->config != NULL ? json_incref(sb->config) : json_null()) < 0 ||
        json_object_set_new(o, "addr", json_string(sb->addr)) < 0 ||
        json_object_set_new(o, "why", json_string(sb->why)) < 0 ||
        json_object_set_new(o, "backend_name", json_string(gw_backend_get(sb->g)->name)) < 0 ||
        json_object_set(o, "backend", b) < 0) {
        goto out;
    }
    char *text = json_dumps(o, JSON_COMPACT);
    if (text == NULL) {
        goto out;
    }
    rc = gw_file_write_atomic(path, text, strlen(text), 0600);
    if (rc < 0) {
        gw_log("%s: writing %s: %s", sb->id, path, strerror(errno));
    }
    free(text);
out:
    if (rc < 0 && o == NULL) {
        gw_log("%s: state: out of memory", sb->id);
    }
    json_decref(o);
    json_decref(b);
    return rc;
}

/* --- life ----------------------------------------------------------------------------------- */

static void call_waiters(struct sbp *p)
{
    /* A waiter may add or drop others: take the list first. */
    struct sb_waiter *w = p->waiters;
    p->waiters = NULL;
    while (w != NULL) {
        struct sb_waiter *next = w->next;
        gw_sandbox_ready_fn cb = w->cb;
        void *user = w->user;
        free(w);
        cb(&p->sb, user);
        w = next;
    }
}

/* The sandbox is off: GONE, listed until its expiry. */
static void become_gone(struct sbp *p)
{
    p->sb.state = GW_SB_GONE;
    p->sb.stopped_ms = gw_now_ms();
    uv_timer_stop(&p->timer);
    (void)gw_sandbox_save(&p->sb); /* logged; the entry in memory is right either way */
    arm_expiry(p);
    call_waiters(p);
}

static void deadline_cb(uv_timer_t *t)
{
    struct sbp *p = t->data;
    gw_sandbox_kill(&p->sb, "the sandbox's timeout expired");
}

static void arm_deadline(struct sbp *p)
{
    if (p->shut || p->sb.stop_at_ms == 0) {
        return;
    }
    int64_t left = p->sb.stop_at_ms - gw_now_ms();
    int rc = uv_timer_start(&p->timer, deadline_cb, left > 0 ? (uint64_t)left : 0, 0);
    if (rc != 0) {
        gw_log("%s: timer: %s", p->sb.id, uv_strerror(rc));
    }
}

void gw_sandbox_booted(struct gw_sandbox *sb, const char *addr, const char *why)
{
    struct sbp *p = priv(sb);

    if (sb->state == GW_SB_STOPPING) {
        return; /* killed while booting: the backend's stop will confirm */
    }
    if (sb->state != GW_SB_BOOTING) {
        return;
    }
    if (addr == NULL) {
        (void)snprintf(sb->why, sizeof sb->why, "%s", why != NULL ? why : "boot failed");
        gw_log("%s: %s", sb->id, sb->why);
        become_gone(p);
        return;
    }
    (void)snprintf(sb->addr, sizeof sb->addr, "%s", addr);
    sb->state = GW_SB_READY;
    (void)gw_sandbox_save(sb); /* logged */
    arm_deadline(p);
    if (!sb->g->opt.quiet) {
        gw_log("%s: ready at %s", sb->id, sb->addr);
    }
    call_waiters(p);
}

void gw_sandbox_stopped(struct gw_sandbox *sb)
{
    if (sb->state == GW_SB_GONE) {
        return;
    }
    if (!sb->g->opt.quiet) {
        gw_log("%s: stopped (%s)", sb->id, sb->why);
    }
    become_gone(priv(sb));
}

void gw_sandbox_wait(struct gw_sandbox *sb, gw_sandbox_ready_fn cb, void *user)
{
    struct sbp *p = priv(sb);

    if (sb->state != GW_SB_BOOTING) {
        cb(sb, user);
        return;
    }
    struct sb_waiter *w = calloc(1, sizeof *w);
    if (w == NULL) {
        /* Out of memory: answer now; the caller sees a sandbox that is not READY. */
        cb(sb, user);
        return;
    }
    w->cb = cb;
    w->user = user;
    w->next = p->waiters;
    p->waiters = w;
}

void gw_sandbox_unwait(struct gw_sandbox *sb, gw_sandbox_ready_fn cb, void *user)
{
    for (struct sb_waiter **pp = &priv(sb)->waiters; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->cb == cb && (*pp)->user == user) {
            struct sb_waiter *w = *pp;
            *pp = w->next;
            free(w);
            return;
        }
    }
}

void gw_sandbox_kill(struct gw_sandbox *sb, const char *why)
{
    if (sb->state != GW_SB_BOOTING && sb->state != GW_SB_READY) {
        return;
    }
    sb->state = GW_SB_STOPPING;
    (void)snprintf(sb->why, sizeof sb->why, "%s", why);
    uv_timer_stop(&priv(sb)->timer);
    (void)gw_sandbox_save(sb); /* logged */
    if (!sb->g->opt.quiet) {
        gw_log("%s: stopping: %s", sb->id, why);
    }
    gw_session_close_all(sb, 1000, why);
    gw_link_close(sb, why);
    if (sb->backend != NULL) {
        gw_backend_get(sb->g)->stop(sb); /* may call gw_sandbox_stopped at once */
    } else {
        gw_sandbox_stopped(sb);
    }
}

void gw_sandbox_session_ended(struct gw_sandbox *sb, struct gw_session *s)
{
    if (s == NULL || s != sb->primary) {
        return;
    }
    sb->primary = NULL;
    if (sb->stop_at_ms == 0) {
        gw_sandbox_kill(sb, "its creating session ended (timeout \"session\")");
    }
}

void gw_sandbox_died(struct gw_sandbox *sb, const char *why)
{
    if (sb->state == GW_SB_GONE) {
        return;
    }
    (void)snprintf(sb->why, sizeof sb->why, "%s", why);
    gw_log("%s: %s", sb->id, why);
    gw_session_close_all(sb, 1011, "the sandbox stopped unexpectedly");
    gw_link_close(sb, "the sandbox stopped unexpectedly");
    become_gone(priv(sb));
}

int64_t gw_sandbox_extend(struct gw_sandbox *sb, int64_t stop_at_ms, char *why, size_t whylen)
{
    int64_t now = gw_now_ms();

    if (stop_at_ms <= now) {
        (void)snprintf(why, whylen, "stop_at_ms: %" PRId64 " is not in the future", stop_at_ms);
        return -1;
    }
    if (stop_at_ms > now + GW_TIMEOUT_MAX_MS) {
        stop_at_ms = now + GW_TIMEOUT_MAX_MS;
    }
    /* A "session" sandbox asked to live until a time now outlives its sessions until then: the
     * client asked for that time explicitly, and the SDK trusts the date we answer. */
    sb->stop_at_ms = stop_at_ms;
    (void)gw_sandbox_save(sb); /* logged */
    if (sb->state == GW_SB_READY) {
        arm_deadline(priv(sb));
    }
    return stop_at_ms;
}

/* --- config --------------------------------------------------------------------------------- */

struct cfg {
    int64_t stop_at_ms;
    uint64_t memory_mb;
    json_t *labels; /* new reference */
    json_t *env;    /* new reference or NULL */
};

#define BAD(...)                                                                                   \
    do {                                                                                           \
        (void)snprintf(why, whylen, __VA_ARGS__);                                                  \
        return -1;                                                                                 \
    } while (0)

static int parse_labels(json_t *v, struct cfg *c, char *why, size_t whylen)
{
    const char *k;
    json_t *x;

    if (json_is_null(v)) {
        return 0;
    }
    if (!json_is_object(v)) {
        BAD("labels: not an object");
    }
    if (json_object_size(v) > LABELS_MAX) {
        BAD("labels: more than %d labels", LABELS_MAX);
    }
    json_object_foreach(v, k, x)
    {
        if (strlen(k) == 0 || strlen(k) > LABEL_KEY_MAX) {
            BAD("labels: a key must be 1 to %d bytes", LABEL_KEY_MAX);
        }
        if (!json_is_string(x)) {
            BAD("labels: the value of \"%.64s\" is not a string", k);
        }
        if (json_string_length(x) > LABEL_VALUE_MAX) {
            BAD("labels: the value of \"%.64s\" is longer than %d bytes", k, LABEL_VALUE_MAX);
        }
        if (json_object_set(c->labels, k, x) < 0) {
            BAD("labels: out of memory");
        }
    }
    return 0;
}

static int parse_env(json_t *v, struct cfg *c, char *why, size_t whylen)
{
    const char *k;
    json_t *x;

    if (json_is_null(v)) {
        return 0;
    }
    if (!json_is_object(v)) {
        BAD("env: not an object");
    }
    if (json_object_size(v) > ENV_MAX) {
        BAD("env: more than %d variables", ENV_MAX);
    }
    json_object_foreach(v, k, x)
    {
        if (strlen(k) == 0 || strlen(k) > ENV_KEY_MAX || strchr(k, '=') != NULL) {
            BAD("env: \"%.64s\" is not a variable name", k);
        }
        if (!json_is_string(x) || json_string_length(x) > ENV_VALUE_MAX ||
            memchr(json_string_value(x), '\0', json_string_length(x)) != NULL) {
            BAD("env: the value of \"%.64s\" is not a string of at most %u bytes", k,
                ENV_VALUE_MAX);
        }
    }
    c->env = json_incref(v);
    return 0;
}

/* The Python SDK's timeout: "session", "<n>s", "<n>m" (and "<n>h"). */
static int parse_timeout(json_t *v, struct cfg *c, int64_t now, char *why, size_t whylen)
{
    if (json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        BAD("timeout: not a string");
    }
    const char *s = json_string_value(v);
    if (strcmp(s, "session") == 0) {
        c->stop_at_ms = 0;
        return 0;
    }
    int64_t ms = 0;
    int r = gw_duration_parse(s, &ms);
    if (r == -1) {
        BAD("timeout: \"%.32s\" is not \"session\" or a duration like \"30s\" or \"5m\"", s);
    }
    if (r < 0) {
        BAD("timeout: must be positive and at most 24 hours");
    }
    c->stop_at_ms = now + ms;
    return 0;
}

static int not_empty(json_t *v)
{
    return !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0) &&
           !(json_is_object(v) && json_object_size(v) == 0);
}

/*
 * Check the create config of either SDK (docs/GATEWAY.md) into @c. -1 with "<key>: <why>"
 * and *@code set.
 */
static int parse_config(json_t *cfg, struct cfg *c, const char **code, char *why, size_t whylen)
{
    int64_t now = gw_now_ms();
    json_t *v;

    *code = "INVALID_CONFIG";
    if (cfg == NULL) {
        return 0;
    }
    if (!json_is_object(cfg)) {
        BAD("config: not a JSON object");
    }
    if ((v = json_object_get(cfg, "memory_mb")) != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < MEMORY_MIN_MB ||
            json_integer_value(v) > MEMORY_MAX_MB) {
            BAD("memory_mb: must be an integer from %d to %d", MEMORY_MIN_MB, MEMORY_MAX_MB);
        }
        c->memory_mb = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(cfg, "labels")) != NULL && parse_labels(v, c, why, whylen) < 0) {
        return -1;
    }
    if ((v = json_object_get(cfg, "env")) != NULL && parse_env(v, c, why, whylen) < 0) {
        return -1;
    }
    if ((v = json_object_get(cfg, "timeout")) != NULL &&
        parse_timeout(v, c, now, why, whylen) < 0) {
        return -1;
    }
    /* The JS SDK's absolute deadline; absent or 0: "session". Wins over a Python timeout. */
    if ((v = json_object_get(cfg, "stop_at_ms")) != NULL && !json_is_null(v)) {
        int64_t at;
        if (gw_json_int64(v, &at) < 0) {
            BAD("stop_at_ms: not a whole number of milliseconds");
        }
        if (at != 0 && at <= now) {
            BAD("stop_at_ms: not in the future");
        }
        if (at > now + GW_TIMEOUT_MAX_MS) {
            BAD("stop_at_ms: more than 24 hours ahead");
        }
        c->stop_at_ms = at;
    }
    /*
     * allow_net and secrets are checked for shape and recorded with the config. Our VMs have no
     * network device, so nothing leaves the guest whatever they say; fetch.c enforces them on
     * the gateway's egress (and puts the secrets' values on the wire there).
     */
    if ((v = json_object_get(cfg, "allow_net")) != NULL && !json_is_null(v)) {
        size_t i;
        json_t *h;
        if (!json_is_array(v) || json_array_size(v) > ALLOW_NET_MAX) {
            BAD("allow_net: must be an array of at most %d host names", ALLOW_NET_MAX);
        }
        json_array_foreach(v, i, h)
        {
            if (!json_is_string(h) || json_string_length(h) == 0 ||
                json_string_length(h) > ALLOW_NET_LEN) {
                BAD("allow_net: entry %zu is not a host name", i);
            }
        }
    }
    if ((v = json_object_get(cfg, "secrets")) != NULL && !json_is_null(v) && !json_is_object(v)) {
        BAD("secrets: not an object");
    }
    *code = "NOT_SUPPORTED";
    if ((v = json_object_get(cfg, "root")) != NULL && !json_is_null(v)) {
        BAD("root: volumes and snapshots are not supported by sbx-gateway yet");
    }
    if ((v = json_object_get(cfg, "volumes")) != NULL && not_empty(v)) {
        BAD("volumes: volumes are not supported by sbx-gateway yet");
    }
    /* The Python SDK's create flags: it never asks for the credentials or the domain they would
     * make, so the gateway cannot hand them over; the REST routes can. */
    if ((v = json_object_get(cfg, "ssh")) != NULL && json_is_true(v)) {
        BAD("ssh: not supported in the create config (the SDK would never learn the login); "
            "create without it and POST /api/v3/sandbox/<id>/expose/ssh");
    }
    if ((v = json_object_get(cfg, "port")) != NULL && !json_is_null(v)) {
        BAD("port: not supported in the create config (the SDK would never learn the domain); "
            "create without it, POST /api/v3/sandbox/<id>/expose/http and call exposeHttp");
    }
    *code = "INVALID_CONFIG";
    return 0;
}

int gw_sandbox_config_check(json_t *config, const char **code, char *why, size_t whylen)
{
    struct cfg c = { .labels = json_object() };
    int r;

    if (c.labels == NULL) {
        *code = "INTERNAL";
        (void)snprintf(why, whylen, "out of memory");
        return -1;
    }
    r = parse_config(config, &c, code, why, whylen);
    json_decref(c.labels);
    json_decref(c.env);
    return r;
}

/* The config as kept in the state file: secret values are not written to disk. */
static json_t *config_for_disk(json_t *cfg)
{
    json_t *copy = json_deep_copy(cfg);
    json_t *secrets = copy != NULL ? json_object_get(copy, "secrets") : NULL;
    const char *k;
    json_t *x;

    if (json_is_object(secrets)) {
        json_object_foreach(secrets, k, x)
        {
            if (json_is_object(x)) {
                (void)json_object_del(x, "value"); /* absent is fine */
            }
        }
    }
    return copy;
}

#undef BAD

static int new_id(struct gw *g, char *out, size_t len)
{
    char tail[21];

    for (int tries = 0; tries < 16; tries++) {
        if (gw_random_chars(tail, 20, GW_ID_ALPHABET) < 0) {
            return -1;
        }
        (void)snprintf(out, len, "sbx_ord_%s", tail);
        if (gw_sandbox_find(g, out) == NULL) {
            return 0;
        }
    }
    return -1;
}

struct gw_sandbox *gw_sandbox_create_ex(struct gw *g, json_t *config, int *status,
                                        const char **code, char *why, size_t whylen)
{
    struct cfg c = { .labels = json_object() };
    char id[32];

    *status = 400;
    if (c.labels == NULL) {
        *status = 500;
        *code = "INTERNAL";
        (void)snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (parse_config(config, &c, code, why, whylen) < 0) {
        goto fail;
    }
    if (make_room(g) < 0) {
        *status = 503;
        *code = "TOO_MANY_SANDBOXES";
        (void)snprintf(why, whylen, "this gateway already runs %d sandboxes", GW_SANDBOXES_MAX);
        goto fail;
    }
    struct sbp *p = NULL;
    if (new_id(g, id, sizeof id) < 0 || (p = sb_new(g, id)) == NULL) {
        *status = 500;
        *code = "INTERNAL";
        (void)snprintf(why, whylen, "cannot make a sandbox id: %s", strerror(errno));
        goto fail;
    }
    struct gw_sandbox *sb = &p->sb;
    sb->state = GW_SB_BOOTING;
    sb->created_ms = gw_now_ms();
    sb->stop_at_ms = c.stop_at_ms;
    sb->memory_mb = c.memory_mb;
    sb->labels = c.labels;
    sb->env = c.env;
    sb->config = config != NULL ? config_for_disk(config) : NULL;
    if (config != NULL && json_is_object(json_object_get(config, "secrets"))) {
        sb->secrets = json_deep_copy(json_object_get(config, "secrets")); /* fetch.c's */
    }
    (void)gw_sandbox_save(sb); /* logged */
    if (!g->opt.quiet) {
        gw_log("%s: creating (memory %" PRIu64 " MiB, timeout %s)", sb->id, sb->memory_mb,
               sb->stop_at_ms == 0 ? "session" : "timed");
    }
    if (gw_backend_get(g)->start(sb, sb->why, sizeof sb->why) < 0) {
        *status = 502;
        *code = "SANDBOX_BOOT_FAILED";
        (void)snprintf(why, whylen, "%s", sb->why);
        gw_log("%s: %s", sb->id, sb->why);
        become_gone(p);
        return NULL;
    }
    return sb;
fail:
    json_decref(c.labels);
    json_decref(c.env);
    return NULL;
}

struct gw_sandbox *gw_sandbox_create(struct gw *g, json_t *config, int *status, char *why,
                                     size_t whylen)
{
    const char *code = NULL;
    return gw_sandbox_create_ex(g, config, status, &code, why, whylen);
}

json_t *gw_sandbox_json(const struct gw_sandbox *sb)
{
    char created[40];
    char stopped[40];
    char region[4] = "ord";

    gw_iso_time(sb->created_ms, created, sizeof created);
    gw_iso_time(sb->stopped_ms, stopped, sizeof stopped);
    memcpy(region, sb->id + 4, 3); /* ids are "sbx_<region>_..." */
    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    if (json_object_set_new(o, "id", json_string(sb->id)) < 0 ||
        json_object_set_new(o, "region", json_string(region)) < 0 ||
        json_object_set_new(o, "status",
                            json_string(sb->state == GW_SB_GONE ? "stopped" : "running")) < 0 ||
        json_object_set_new(o, "createdAt", json_string(created)) < 0 ||
        json_object_set_new(o, "stoppedAt",
                            sb->state == GW_SB_GONE ? json_string(stopped) : json_null()) < 0 ||
        json_object_set(o, "labels", sb->labels) < 0 ||
        json_object_set_new(o, "memoryMb",
                            json_integer(sb->memory_mb != 0 ? (json_int_t)sb->memory_mb : 1280)) <
            0) {
        json_decref(o);
        return NULL;
    }
    if (sb->stop_at_ms != 0) {
        char at[40];
        gw_iso_time(sb->stop_at_ms, at, sizeof at);
        if (json_object_set_new(o, "stopAt", json_string(at)) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* --- start and stop of the gateway ---------------------------------------------------------- */

static int64_t int_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

/* One state file into the table. */
static void load_one(struct gw *g, const char *path, const char *id)
{
    char *text = NULL;
    size_t len = 0;
    json_error_t jerr;

    if (gw_file_read(path, GW_STATE_FILE_MAX, &text, &len) < 0) {
        gw_log("%s: %s", path, strerror(errno));
        return;
    }
    json_t *o = json_loadb(text, len, 0, &jerr);
    free(text);
    json_t *idv = json_object_get(o, "id");
    if (!json_is_object(o) || !json_is_string(idv) || strcmp(json_string_value(idv), id) != 0 ||
        gw_sandbox_find(g, id) != NULL || g->nsandboxes >= GW_SANDBOXES_MAX) {
        gw_log("%s: not a sandbox state file (or one too many); ignored", path);
        json_decref(o);
        return;
    }
    struct sbp *p = sb_new(g, id);
    if (p == NULL) {
        gw_log("%s: out of memory", path);
        json_decref(o);
        return;
    }
    struct gw_sandbox *sb = &p->sb;
    json_t *labels = json_object_get(o, "labels");
    json_t *env = json_object_get(o, "env");
    json_t *config = json_object_get(o, "config");
    const char *state = json_string_value(json_object_get(o, "state"));
    const char *addr = json_string_value(json_object_get(o, "addr"));
    const char *why = json_string_value(json_object_get(o, "why"));
    const char *bname = json_string_value(json_object_get(o, "backend_name"));
    sb->labels = json_is_object(labels) ? json_incref(labels) : json_object();
    sb->env = json_is_object(env) ? json_incref(env) : NULL;
    sb->config = json_is_object(config) ? json_incref(config) : NULL;
    sb->created_ms = int_of(o, "created_ms");
    sb->stopped_ms = int_of(o, "stopped_ms");
    sb->stop_at_ms = int_of(o, "stop_at_ms");
    sb->memory_mb = (uint64_t)int_of(o, "memory_mb");
    (void)snprintf(sb->addr, sizeof sb->addr, "%s", addr != NULL ? addr : "");
    (void)snprintf(sb->why, sizeof sb->why, "%s", why != NULL ? why : "");
    sb->state = GW_SB_GONE;

    const struct gw_backend_ops *be = gw_backend_get(g);
    bool was_running = state != NULL && strcmp(state, "gone") != 0;
    bool was_ready = state != NULL && strcmp(state, "ready") == 0;
    bool same_backend = bname != NULL && strcmp(bname, be->name) == 0;
    int alive = 0;
    if (was_running && same_backend && json_is_object(json_object_get(o, "backend"))) {
        alive = be->restore(sb, json_object_get(o, "backend"));
    }
    json_decref(o);
    /* @o is freed: state, bname point nowhere now. */
    if (alive == 1 && was_ready && sb->stop_at_ms != 0 && sb->addr[0] != '\0') {
        sb->state = GW_SB_READY;
        gw_log("%s: still running at %s", sb->id, sb->addr);
        (void)gw_sandbox_save(sb); /* logged */
        arm_deadline(p);           /* kills it at once when its time passed while we were away */
        return;
    }
    if (alive == 1) {
        /* A "session" sandbox lost its clients with the old gateway; a half-booted one cannot
         * be finished: power them off. */
        sb->state = GW_SB_READY;
        gw_sandbox_kill(sb, "left over by a previous sbx-gateway");
        return;
    }
    if (was_running) {
        (void)snprintf(sb->why, sizeof sb->why, "%s",
                       "the sandbox stopped while sbx-gateway was not running");
        sb->stopped_ms = gw_now_ms();
        (void)gw_sandbox_save(sb); /* logged */
    }
    arm_expiry(p); /* removes it at once when it stopped more than an hour ago */
}

int gw_sandboxes_load(struct gw *g)
{
    char dir[PATH_MAX];

    if (snprintf(dir, sizeof dir, "%s/sandboxes", g->opt.data_dir) >= (int)sizeof dir) {
        gw_log("%s: path too long", g->opt.data_dir);
        return -1;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        gw_log("%s: %s", dir, strerror(errno));
        return -1;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        gw_log("%s: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    unsigned n = 0;
    while ((de = readdir(d)) != NULL && n < STATE_FILES_MAX) {
        char id[32];
        size_t len = strlen(de->d_name);
        if (len != 33 || strcmp(de->d_name + 28, ".json") != 0) {
            continue; /* ".", "..", "*.json.tmp" left by a crash */
        }
        memcpy(id, de->d_name, 28);
        id[28] = '\0';
        if (!gw_sandbox_id_valid(id)) {
            continue;
        }
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) {
            continue;
        }
        load_one(g, path, id);
        n++;
    }
    if (closedir(d) < 0) {
        gw_log("%s: %s", dir, strerror(errno));
    }
    return 0;
}

void gw_sandboxes_shutdown(struct gw *g)
{
    for (struct gw_sandbox *sb = g->sandboxes; sb != NULL; sb = sb->next) {
        struct sbp *p = priv(sb);
        p->shut = true;
        uv_timer_stop(&p->timer);
    }
    for (struct gw_sandbox *sb = g->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->state == GW_SB_BOOTING || (sb->state == GW_SB_READY && sb->stop_at_ms == 0)) {
            gw_sandbox_kill(sb, "sbx-gateway is stopping");
        } else if (sb->state == GW_SB_READY && sb->backend != NULL) {
            /* Timed: it keeps running; the next gateway finds it through its state file. */
            gw_link_close(sb, "sbx-gateway is stopping");
            gw_backend_get(g)->release(sb);
        }
    }
}

void gw_sandboxes_free(struct gw *g)
{
    while (g->sandboxes != NULL) {
        sb_remove(g->sandboxes);
    }
    /* The close callbacks free the entries. */
    int rc = uv_run(g->loop, UV_RUN_DEFAULT);
    (void)rc; /* nothing left to wait for: the return only says whether handles remain */
}
