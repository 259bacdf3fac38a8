/*
 * The gateway's HTTP routes (docs/GATEWAY.md): the two WebSocket routes that create or
 * connect to a sandbox and hand the socket to a session, and the REST routes of both SDKs (list,
 * kill, extend, expose, deploy, revisions; the services behind expose and deploy are in
 * ingress.c, ssh.c and deploy.c). One table; every route needs the bearer token.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "m_fs.h"

/* x-deno-sandbox-config, decoded (the header itself is capped by GW_HTTP_HEAD_MAX). */
#define CONFIG_MAX (48u << 10)
/* labels[k]=v filters in one list query. */
#define FILTERS_MAX    16
#define QUERY_PART_MAX 512

struct route_ctx {
    struct gw *g;
    struct gw_http_conn *hc;
    const struct gw_http_req *req;
    const char *id; /* the <id> of the path, when the route has one */
};

typedef void (*route_fn)(struct route_ctx *c);

struct route {
    const char *method;
    const char *pattern; /* "*" stands for one path segment: the id */
    bool websocket;
    route_fn fn;
};

json_t *gw_error_body(const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    /* The message may quote what the request, an agent or a console log held, or cut a UTF-8
     * sequence with a precision: decoded lossily, so that json_pack never refuses it. */
    json_t *m = gw_fs_json_lossy(msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    return m != NULL ? json_pack("{s:s, s:o}", "code", code, "message", m) : NULL;
}

int gw_sandbox_id_valid(const char *id)
{
    static const char prefix[] = "sbx_";

    if (strlen(id) != 28 || strncmp(id, prefix, 4) != 0 || id[7] != '_') {
        return 0;
    }
    for (int i = 4; i < 7; i++) {
        if (id[i] < 'a' || id[i] > 'z') {
            return 0;
        }
    }
    for (int i = 8; i < 28; i++) {
        if (id[i] == '\0' || strchr(GW_ID_ALPHABET, id[i]) == NULL) {
            return 0;
        }
    }
    return 1;
}

/* The sandbox of the path, or NULL having answered 404. GONE ones count as absent when
 * @live_only. */
static struct gw_sandbox *path_sandbox(struct route_ctx *c, bool live_only)
{
    struct gw_sandbox *sb = gw_sandbox_id_valid(c->id) ? gw_sandbox_find(c->g, c->id) : NULL;

    if (sb == NULL || (live_only && (sb->state == GW_SB_GONE || sb->state == GW_SB_STOPPING))) {
        gw_rest_error(c->hc, 404, "SANDBOX_NOT_FOUND", "sandbox %.40s not found%s%s", c->id,
                      sb != NULL ? ": " : "", sb != NULL ? sb->why : "");
        return NULL;
    }
    return sb;
}

/* --- the WebSocket routes ------------------------------------------------------------------- */

struct ws_wait {
    struct gw_sandbox *sb;
    struct gw_http_conn *hc;
    bool create; /* the sandbox is this request's own: it dies if the request does */
};

static void ws_start(struct gw_sandbox *sb, struct gw_http_conn *hc, bool create)
{
    if (sb->state != GW_SB_READY) {
        gw_rest_error(hc, 502, "SANDBOX_BOOT_FAILED", "sandbox %s did not start: %s", sb->id,
                      sb->why[0] ? sb->why : "it was stopped");
        if (create) {
            gw_sandbox_kill(sb, "its creating request failed");
        }
        return;
    }
    struct gw_session *s = gw_session_start(sb, hc, create);
    if (s == NULL) {
        /* gw_session_start answered; the client never got a session on its new sandbox. */
        if (create) {
            gw_sandbox_kill(sb, "its creating session could not start");
        }
        return;
    }
    if (create && sb->primary == NULL) {
        sb->primary = s;
    }
}

static void ws_ready_cb(struct gw_sandbox *sb, void *user)
{
    struct ws_wait *w = user;
    struct gw_http_conn *hc = w->hc;
    bool create = w->create;

    free(w);
    ws_start(sb, hc, create);
}

static void ws_abandon_cb(struct gw_http_conn *hc, void *user);

/* Wait for @sb to boot, or start the session at once when it is not booting. */
static void ws_wait_or_start(struct gw_sandbox *sb, struct gw_http_conn *hc, bool create)
{
    if (sb->state != GW_SB_BOOTING) {
        ws_start(sb, hc, create);
        return;
    }
    struct ws_wait *w = calloc(1, sizeof *w);
    if (w == NULL) {
        gw_rest_error(hc, 500, "INTERNAL", "out of memory");
        if (create) {
            gw_sandbox_kill(sb, "out of memory");
        }
        return;
    }
    w->sb = sb;
    w->hc = hc;
    w->create = create;
    /* BOOTING: the waiter is called later, never from inside gw_sandbox_wait. */
    gw_sandbox_wait(sb, ws_ready_cb, w);
    gw_http_on_abandon(hc, ws_abandon_cb, w);
}

/* The client of a create or connect gave up while the VM booted: a sandbox it was creating is
 * nobody's, so it is killed. */
static void ws_abandon_cb(struct gw_http_conn *hc, void *user)
{
    struct ws_wait *w = user;
    struct gw_sandbox *sb = w->sb;
    bool create = w->create;

    (void)hc;
    gw_sandbox_unwait(sb, ws_ready_cb, w);
    free(w);
    if (create) {
        gw_sandbox_kill(sb, "its client went away while it booted");
    }
}

int gw_config_decode(const char *hdr, json_t **config, char *why, size_t whylen)
{
    uint8_t *text = NULL;
    size_t len = 0;
    json_error_t jerr;

    *config = NULL;
    if (hdr == NULL) {
        return 0;
    }
    if (strlen(hdr) > CONFIG_MAX / 3 * 4 + 4 ||
        gw_fs_b64_decode(hdr, strlen(hdr), CONFIG_MAX, &text, &len) < 0) {
        (void)snprintf(why, whylen, "x-deno-sandbox-config: not base64, or more than %u bytes",
                       CONFIG_MAX);
        return -1;
    }
    *config = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (*config == NULL) {
        (void)snprintf(why, whylen, "x-deno-sandbox-config: not JSON: %s", jerr.text);
        return -1;
    }
    return 0;
}

static void route_create(struct route_ctx *c)
{
    const char *hdr = gw_http_header(c->req, "x-deno-sandbox-config");
    json_t *config = NULL;
    char why[1024];
    int status = 400;
    const char *code = "INVALID_CONFIG";

    if (gw_config_decode(hdr, &config, why, sizeof why) < 0) {
        gw_rest_error(c->hc, 400, "INVALID_CONFIG", "%s", why);
        return;
    }
    struct gw_sandbox *sb = gw_sandbox_create_ex(c->g, config, &status, &code, why, sizeof why);
    json_decref(config);
    if (sb == NULL) {
        gw_rest_error(c->hc, status, code, "%s", why);
        return;
    }
    ws_wait_or_start(sb, c->hc, true);
}

static void route_connect(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, true);

    if (sb != NULL) {
        ws_wait_or_start(sb, c->hc, false);
    }
}

/* --- REST ----------------------------------------------------------------------------------- */

static void route_kill(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, false);

    if (sb == NULL) {
        return;
    }
    /* The JS SDK only checks resp.ok, then waits for its WebSocket to close (the kill closes
     * every session of the sandbox). Killing a stopped sandbox again is not an error. */
    gw_sandbox_kill(sb, "killed through the API");
    gw_http_respond_json(c->hc, 200, NULL, json_object());
}

static void route_extend(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, true);
    json_error_t jerr;
    char why[256];

    if (sb == NULL) {
        return;
    }
    json_t *body = json_loadb(c->req->body, c->req->body_len, 0, &jerr);
    json_t *v = json_object_get(body, "stop_at_ms");
    int64_t at;
    if (gw_json_int64(v, &at) < 0) {
        json_decref(body);
        gw_rest_error(c->hc, 400, "INVALID_TIMEOUT",
                      "the body must be {\"stop_at_ms\": <whole number of ms>}");
        return;
    }
    json_decref(body);
    int64_t now_at = gw_sandbox_extend(sb, at, why, sizeof why);
    if (now_at < 0) {
        gw_rest_error(c->hc, 400, "INVALID_TIMEOUT", "%s", why);
        return;
    }
    gw_http_respond_json(c->hc, 200, NULL, json_pack("{s:I}", "stop_at_ms", (json_int_t)now_at));
}

/* Percent-decode @len bytes of @in (a query part; '+' is a space) into @out. -1 when it does
 * not fit or is malformed. */
static int query_decode(const char *in, size_t len, char *out, size_t outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (ch == '%') {
            unsigned v;
            char hex[3] = { 0 };
            if (i + 2 >= len) {
                return -1;
            }
            hex[0] = in[i + 1];
            hex[1] = in[i + 2];
            if (sscanf(hex, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", hex[0]) ||
                !strchr("0123456789abcdefABCDEF", hex[1]) || v == 0) {
                return -1;
            }
            ch = (char)v;
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (o + 1 >= outlen) {
            return -1;
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

struct filter {
    char key[QUERY_PART_MAX];
    char value[QUERY_PART_MAX];
};

static int parse_filters(const char *query, struct filter *f, size_t *n)
{
    *n = 0;
    while (*query != '\0') {
        const char *amp = strchr(query, '&');
        size_t len = amp != NULL ? (size_t)(amp - query) : strlen(query);
        const char *eq = memchr(query, '=', len);
        char key[QUERY_PART_MAX];
        if (eq != NULL && query_decode(query, (size_t)(eq - query), key, sizeof key) == 0 &&
            strncmp(key, "labels[", 7) == 0 && strlen(key) > 8 && key[strlen(key) - 1] == ']') {
            if (*n == FILTERS_MAX) {
                return -1;
            }
            key[strlen(key) - 1] = '\0';
            (void)snprintf(f[*n].key, sizeof f[*n].key, "%s", key + 7);
            if (query_decode(eq + 1, len - (size_t)(eq + 1 - query), f[*n].value,
                             sizeof f[*n].value) < 0) {
                return -1;
            }
            (*n)++;
        }
        /* Other parameters (cursor, limit) are ignored: the list is one page. */
        query += len;
        if (*query == '&') {
            query++;
        }
    }
    return 0;
}

static void route_list(struct route_ctx *c)
{
    struct filter f[FILTERS_MAX];
    size_t nf = 0;

    if (parse_filters(c->req->query, f, &nf) < 0) {
        gw_rest_error(c->hc, 400, "INVALID_QUERY", "bad or too many labels[key]=value filters");
        return;
    }
    json_t *arr = json_array();
    if (arr == NULL) {
        gw_rest_error(c->hc, 500, "INTERNAL", "out of memory");
        return;
    }
    for (struct gw_sandbox *sb = c->g->sandboxes; sb != NULL; sb = sb->next) {
        bool match = true;
        for (size_t i = 0; i < nf && match; i++) {
            const char *v = json_string_value(json_object_get(sb->labels, f[i].key));
            match = v != NULL && strcmp(v, f[i].value) == 0;
        }
        if (match && json_array_append_new(arr, gw_sandbox_json(sb)) < 0) {
            json_decref(arr);
            gw_rest_error(c->hc, 500, "INTERNAL", "out of memory");
            return;
        }
    }
    gw_http_respond_json(c->hc, 200, NULL, arr);
}

static void route_not_supported(struct route_ctx *c)
{
    gw_rest_error(c->hc, 501, "NOT_SUPPORTED",
                  "expose/vscode is not supported: sbx-gateway's images carry no VS Code server");
}

static void route_expose_http(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, true);

    if (sb != NULL) {
        gw_rest_expose_http(c->g, c->hc, c->req, sb);
    }
}

static void route_expose_ssh(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, true);

    if (sb != NULL) {
        gw_rest_expose_ssh(c->g, c->hc, c->req, sb);
    }
}

static void route_deploy(struct route_ctx *c)
{
    struct gw_sandbox *sb = path_sandbox(c, true);

    if (sb != NULL) {
        gw_rest_deploy(c->g, c->hc, c->req, sb);
    }
}

static void route_revision(struct route_ctx *c)
{
    const char *slash = strrchr(c->req->path, '/');
    const char *what = slash != NULL && strcmp(slash + 1, c->id) != 0 ? slash + 1 : "";

    gw_rest_revision(c->g, c->hc, c->req, c->id, what);
}

static const struct route routes[] = {
    { "GET", "/api/v3/sandboxes/create", true, route_create },
    { "GET", "/api/v3/sandbox/*/connect", true, route_connect },
    { "DELETE", "/api/v3/sandbox/*", false, route_kill },
    { "DELETE", "/api/v3/sandboxes/*", false, route_kill },
    { "PATCH", "/api/v3/sandbox/*", false, route_extend },
    { "GET", "/api/v2/sandboxes", false, route_list },
    { "GET", "/api/v3/sandboxes", false, route_list },
    { "POST", "/api/v3/sandbox/*/expose/http", false, route_expose_http },
    { "POST", "/api/v3/sandbox/*/expose/ssh", false, route_expose_ssh },
    { "POST", "/api/v3/sandbox/*/expose/vscode", false, route_not_supported },
    { "POST", "/api/v2/sandboxes/*/deploy", false, route_deploy },
    { "GET", "/api/v2/revisions/*", false, route_revision },
    { "GET", "/api/v2/revisions/*/progress", false, route_revision },
    { "GET", "/api/v2/revisions/*/timelines", false, route_revision },
    { "GET", "/api/v2/revisions/*/build_logs", false, route_revision },
};

/* Does @path match @pattern? The segment under "*" is copied to @id. */
static bool match(const char *pattern, const char *path, char *id, size_t idlen)
{
    while (*pattern != '\0') {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= idlen) {
                return false;
            }
            memcpy(id, path, n);
            id[n] = '\0';
            path += n;
            pattern++;
            continue;
        }
        if (*pattern != *path) {
            return false;
        }
        pattern++;
        path++;
    }
    return *path == '\0';
}

static bool authorized(const struct gw *g, const struct gw_http_req *req)
{
    const char *auth = gw_http_header(req, "authorization");
    char want[sizeof g->token + 8];

    if (auth == NULL) {
        return false;
    }
    (void)snprintf(want, sizeof want, "Bearer %s", g->token);
    return gw_ct_streq(auth, want);
}

void gw_rest_handle(struct gw_http_conn *hc, const struct gw_http_req *req, void *user)
{
    struct gw *g = user;
    char id[64] = "";

    if (!authorized(g, req)) {
        gw_rest_error(hc, 401, "INVALID_TOKEN",
                      "missing or wrong token (send authorization: Bearer <the token sbx-gateway "
                      "printed>)");
        return;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const struct route *r = &routes[i];
        if (strcmp(r->method, req->method) != 0 || !match(r->pattern, req->path, id, sizeof id)) {
            continue;
        }
        if (r->websocket != req->websocket) {
            gw_rest_error(hc, 400, "BAD_REQUEST", "%s %s %s", req->method, req->path,
                          r->websocket ? "needs a WebSocket upgrade" : "is not a WebSocket route");
            return;
        }
        struct route_ctx c = { .g = g, .hc = hc, .req = req, .id = id };
        r->fn(&c);
        return;
    }
    gw_rest_error(hc, 404, "NOT_FOUND", "no route for %s %.200s", req->method, req->path);
}
