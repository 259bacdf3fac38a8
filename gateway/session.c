/*
 * One SDK WebSocket <-> one sbx connection to the sandbox's agent.
 *
 * The SDK speaks JSON-RPC 2.0 in text messages; the agent speaks framed msgpack through libsbx's
 * sans-I/O core (sbx/conn.h), whose bytes this file moves over a uv_pipe_t. A request becomes a
 * struct gw_call handed to its method (methods.c); the method makes typed sbx calls whose
 * responses come back to it through gw_call_expect. Streams are relayed both ways:
 *
 *   agent out stream -> $sandbox.stream.start/enqueue/end/error   (gw_ostream, gw_session_collect)
 *   $sandbox.stream.start/enqueue/end/error -> a method's sink     (gw_istream_claim)
 *
 * Flow control lives here, because the SDK has none (docs/GATEWAY.md): agent output is
 * acknowledged (sbx_conn_consumed, which grants the agent credit) only while the WebSocket's
 * write queue is under GW_WS_HIGH, so a client that does not read holds the agent's window, not
 * the gateway's memory; and the WebSocket is not read while that queue is full or a sink's
 * receiver is (a hold, which gives up after --stream-stall-timeout without progress).
 *
 * Lifetime: the session ends when either side does. It is freed once the WebSocket is gone, the
 * pipe is closed and no call is allocated (calls whose agent requests are outstanding wait for
 * the EOF failures sbx_conn_eof synthesizes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "http.h"
#include "m_fs.h"
#include "m_proc.h"
#include "sbx/client.h"

#include <nettle/base64.h>

#define GW_IOV_MAX 64
/* How long a session whose agent link ended waits for the sandbox to explain (a VM that died is
 * reported by the backend with its console tail) before closing with the link's own error. */
#define GW_GRACE_MS 2000

/* What an agent stream's stream_user points at. */
enum astream_kind {
    AS_RELAY = 1, /* gw_ostream: relayed to the SDK */
    AS_COLLECT,   /* gw_session_collect: bytes to a method */
    AS_FEED,      /* gw_session_feed: an in stream a method writes */
};

struct gw_ostream {
    enum astream_kind kind;
    struct gw_session *s;
    struct gw_ostream *next, *prev; /* the session's agent streams */
    uint32_t sid;                   /* agent stream */
    uint64_t sdk;                   /* AS_RELAY: the SDK's stream id */
    gw_ostream_xform_fn xform;
    gw_sink_fn sink;
    gw_credit_fn credit;
    void *user;
    size_t unacked; /* bytes received and not yet acknowledged (the WebSocket was full) */
    bool cancelled; /* the SDK cancelled: never send on it again */
    bool finished;  /* ended or failed: only the unacked bytes remain */
};

/* A stream the SDK produces (stdin, writeFile content). */
struct chunk {
    struct chunk *next;
    size_t len;
    uint8_t data[];
};

struct gw_istream {
    struct gw_istream *next;
    uint64_t id;
    struct chunk *head, *tail; /* buffered before the claim */
    size_t buffered;
    bool claimed, ended, failed;
    json_t *error; /* the client's error, when failed before the claim */
    struct gw_istream_sink sink;
};

/* gw_session_on_done / gw_session_on_cancel / gw_session_on_end registrations. */
struct hook {
    struct hook *next;
    bool cancel;   /* on_cancel (by SDK id) or on_done (by agent stream) */
    bool end_only; /* gw_session_on_end: at the session's end only, never by a client's cancel */
    uint64_t key;
    gw_done_fn done;
    void (*cancel_fn)(void *user);
    void *user;
};

/* gw_session_on_drain registrations. */
struct drainer {
    struct drainer *next;
    void (*fn)(void *user);
    void *user;
};

struct gw_session {
    struct gw *g;
    struct gw_sandbox *sb;
    struct gw_session *next; /* sb->sessions */
    struct gw_ws *ws;        /* NULL once the WebSocket is gone */
    bool primary;

    uv_pipe_t pipe;
    /* Until hello: --agent-hello-timeout. Once the agent link ended: how long the sandbox may
     * take to say why. */
    uv_timer_t grace;
    bool grace_open, grace_closing;
    uv_timer_t stall; /* the oldest hold's --stream-stall-timeout */
    bool stall_open, stall_closing;
    uv_connect_t connect;
    uv_write_t write;
    bool pipe_open, pipe_closing, writing, agent_up, agent_eof;
    size_t wlen;
    struct sbx_conn *c;

    struct gw_call *calls;
    unsigned ncalls;
    unsigned gathers;                      /* calls holding a turn (gw_call_when_room) */
    struct gw_call *room_head, *room_tail; /* calls waiting for one, oldest first */
    struct gw_ostream *streams;            /* agent streams with a stream_user of ours */
    struct gw_istream *istreams;
    unsigned nistreams;
    struct hook *hooks;
    struct drainer *drainers; /* gw_session_on_drain */
    struct dn_repl *repls;    /* m_deno.c's, emptied as each REPL's call ends */
    size_t unclaimed;         /* bytes buffered on unclaimed istreams */
    struct gw_hold *holds;    /* the holds that are on; the WebSocket is paused while any is */
    bool paused;              /* what was last told to gw_ws_pause */
    bool in_cb;               /* inside one of our callbacks: flush on return */
    bool freed;
    char why[256]; /* why the agent link ended */
    char *scratch; /* gw_ostream_enqueue's message buffer */
    size_t scratch_cap;
};

static void session_maybe_free(struct gw_session *s);
static void session_process(struct gw_session *s);
static void session_end_agent(struct gw_session *s, const char *why);
static struct hook *hook_take(struct gw_session *s, bool cancel, uint64_t key);

/* --- small helpers -------------------------------------------------------------------------- */

struct sbx_conn *gw_session_conn(struct gw_session *s)
{
    return s->agent_up && !s->agent_eof ? s->c : NULL;
}

struct gw_sandbox *gw_session_sandbox(struct gw_session *s)
{
    return s->sb;
}

struct dn_repl **gw_session_repls(struct gw_session *s)
{
    return &s->repls;
}

const char *gw_session_user(struct gw_session *s)
{
    return s->g->opt.user;
}

const char *gw_session_cwd(struct gw_session *s)
{
    return s->g->opt.cwd;
}

uint64_t gw_stream_id(struct gw *g)
{
    return g->next_stream++;
}

static void apply_pause(struct gw_session *s);

/* Send one JSON value as a text message (stolen). */
static void send_json(struct gw_session *s, json_t *msg)
{
    char *text;

    if (msg == NULL) {
        gw_log("session %s: out of memory building a message", s->sb->id);
        return;
    }
    if (s->ws == NULL) {
        json_decref(msg);
        return;
    }
    text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (text == NULL) {
        gw_log("session %s: out of memory encoding a message", s->sb->id);
        return;
    }
    if (s->g->opt.trace) {
        gw_log("%s > %.300s", s->sb->id, text);
    }
    (void)gw_ws_send_text(s->ws, text, strlen(text)); /* -1: closing, nothing to do */
    free(text);
    apply_pause(s);
}

void gw_session_notify(struct gw_session *s, const char *method, json_t *params)
{
    send_json(s, json_pack("{s:s, s:s, s:o}", "jsonrpc", "2.0", "method", method, "params",
                           params != NULL ? params : json_object()));
}

/*
 * The WebSocket is read only while the agent is up, no sink holds it, and what waits to be
 * written to the client is under GW_WS_HIGH: a client that sends requests and does not read the
 * answers stops being read (its own TCP window then stops it), resumed from on_ws_drain.
 */
static void apply_pause(struct gw_session *s)
{
    bool want = s->holds != NULL || !s->agent_up || gw_session_congested(s);

    if (s->ws != NULL && want != s->paused) {
        s->paused = want;
        gw_ws_pause(s->ws, want);
    }
}

static int64_t stall_ms(const struct gw_session *s)
{
    return s->g->opt.stall_ms > 0 ? s->g->opt.stall_ms : GW_STALL_MS;
}

static void hold_unlink(struct gw_session *s, struct gw_hold *h)
{
    struct gw_hold **pp = &s->holds;

    while (*pp != NULL && *pp != h) {
        pp = &(*pp)->next;
    }
    if (*pp == h) {
        *pp = h->next;
    }
    h->next = NULL;
    h->on = false;
}

static void on_stall(uv_timer_t *t);

/* Arm the stall timer for the hold whose time runs out first (none on: it stays idle). */
static void stall_arm(struct gw_session *s)
{
    uint64_t now = uv_now(s->g->loop), limit = (uint64_t)stall_ms(s), wait = limit;

    if (!s->stall_open || s->stall_closing || s->holds == NULL) {
        return;
    }
    for (struct gw_hold *h = s->holds; h != NULL; h = h->next) {
        uint64_t used = now - h->since;
        uint64_t left = used < limit ? limit - used : 0;

        if (left < wait) {
            wait = left;
        }
    }
    (void)uv_timer_start(&s->stall, on_stall, wait, 0); /* fails only on a closing handle */
}

/* Give up the holds whose receiver took nothing for --stream-stall-timeout: each holder cuts its
 * stream, and the session reads its client again. */
static void on_stall(uv_timer_t *t)
{
    struct gw_session *s = t->data;
    int64_t limit = stall_ms(s);
    bool again = true;

    s->in_cb = true;
    while (again) {
        uint64_t now = uv_now(s->g->loop);

        again = false;
        for (struct gw_hold *h = s->holds; h != NULL; h = h->next) {
            if (now - h->since >= (uint64_t)limit) {
                char d[32];

                gw_duration_text(limit, d, sizeof(d));
                gw_log("session %s: a client stream's receiver took none of it for %s: the "
                       "stream is cut, so that the session reads its client again",
                       s->sb->id, d);
                hold_unlink(s, h);
                h->stalled(h->user, limit);
                again = true; /* the callback may have changed the list */
                break;
            }
        }
    }
    s->in_cb = false;
    stall_arm(s);
    apply_pause(s);
    gw_session_flush(s);
    session_maybe_free(s);
}

void gw_session_hold(struct gw_session *s, struct gw_hold *h, bool hold)
{
    if (hold && !h->on) {
        h->on = true;
        h->since = uv_now(s->g->loop);
        h->next = s->holds;
        s->holds = h;
        if (s->stall_open && !uv_is_active((uv_handle_t *)&s->stall)) {
            stall_arm(s);
        }
    } else if (!hold && h->on) {
        hold_unlink(s, h);
    }
    apply_pause(s);
}

void gw_session_hold_progress(struct gw_session *s, struct gw_hold *h)
{
    h->since = uv_now(s->g->loop); /* the timer, when it fires, finds this one not due */
}

/* --- writing to the agent ------------------------------------------------------------------- */

static void on_pipe_write(uv_write_t *w, int status)
{
    struct gw_session *s = w->data;

    s->writing = false;
    if (s->pipe_closing || s->c == NULL) {
        session_maybe_free(s);
        return;
    }
    if (status < 0) {
        char why[128];

        snprintf(why, sizeof(why), "writing to the agent: %s", uv_strerror(status));
        session_end_agent(s, why);
        return;
    }
    sbx_conn_out_done(s->c, s->wlen);
    /* Room freed: feeders may write more, then flush again. A feeder may unfeed (free) its own
     * stream from the callback, so the next one is taken first. */
    s->in_cb = true;
    for (struct gw_ostream *os = s->streams, *next; os != NULL; os = next) {
        next = os->next;
        if (os->kind == AS_FEED && os->credit != NULL) {
            os->credit(os->user);
        }
    }
    s->in_cb = false;
    gw_session_flush(s);
}

void gw_session_flush(struct gw_session *s)
{
    struct iovec iov[GW_IOV_MAX];
    uv_buf_t bufs[GW_IOV_MAX];
    int n, r;

    if (s->writing || !s->pipe_open || s->pipe_closing || s->c == NULL) {
        return;
    }
    n = sbx_conn_out_iov(s->c, iov, GW_IOV_MAX);
    if (n <= 0) {
        return;
    }
    s->wlen = 0;
    for (int i = 0; i < n; i++) {
        bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
        s->wlen += iov[i].iov_len;
    }
    s->write.data = s;
    r = uv_write(&s->write, (uv_stream_t *)&s->pipe, bufs, (unsigned)n, on_pipe_write);
    if (r < 0) {
        char why[128];

        snprintf(why, sizeof(why), "writing to the agent: %s", uv_strerror(r));
        session_end_agent(s, why);
        return;
    }
    s->writing = true;
}

/* Allocations a call keeps until it is freed. */
struct keep {
    struct keep *next;
    void *p;
    void (*fn)(void *);
};

/* --- calls ---------------------------------------------------------------------------------- */

static void call_free(struct gw_call *call)
{
    struct gw_session *s = call->s;

    if (call->gathers) {
        s->gathers--; /* the next waiting call starts from the session's callback (start_room) */
    } else if (call->room_fn != NULL) {
        struct gw_call **pp = &s->room_head, *prev = NULL;

        while (*pp != call) {
            prev = *pp;
            pp = &(*pp)->room_next;
        }
        *pp = call->room_next;
        if (s->room_tail == call) {
            s->room_tail = prev;
        }
    }
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        s->calls = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    }
    s->ncalls--;
    if (call->data_free != NULL) {
        call->data_free(call->data);
    }
    while (call->keeps != NULL) {
        struct keep *k = call->keeps;

        call->keeps = k->next;
        k->fn(k->p);
        free(k);
    }
    json_decref(call->id);
    free(call);
}

/* Free @call if it is done: answered and nothing of it outstanding. */
static void call_maybe_free(struct gw_call *call)
{
    struct gw_session *s = call->s;

    if (call->answered && call->outstanding == 0) {
        call_free(call);
        session_maybe_free(s);
    }
}

void gw_call_when_room(struct gw_call *call, void (*start)(struct gw_call *call))
{
    struct gw_session *s = call->s;

    if (s->room_head == NULL && s->gathers < GW_GATHERS_MAX && !gw_session_congested(s)) {
        call->gathers = true;
        s->gathers++;
        start(call);
        return;
    }
    call->room_fn = start;
    call->room_next = NULL;
    if (s->room_tail != NULL) {
        s->room_tail->room_next = call;
    } else {
        s->room_head = call;
    }
    s->room_tail = call;
}

/* Start the calls waiting for a turn that now have room; from the end of the session's own
 * callbacks, where a start may answer and free its call. */
static void start_room(struct gw_session *s)
{
    while (s->room_head != NULL && s->gathers < GW_GATHERS_MAX && s->ws != NULL &&
           !gw_session_congested(s)) {
        struct gw_call *call = s->room_head;
        void (*start)(struct gw_call *) = call->room_fn;

        s->room_head = call->room_next;
        if (s->room_head == NULL) {
            s->room_tail = NULL;
        }
        call->room_fn = NULL;
        if (call->answered) {
            continue; /* answered meanwhile, freed once its own requests are */
        }
        call->gathers = true;
        s->gathers++;
        start(call);
    }
}

void *gw_call_expect(struct gw_call *call, gw_call_done_fn done)
{
    call->done = done;
    call->outstanding++;
    return call;
}

void gw_call_hold(struct gw_call *call)
{
    call->outstanding++;
}

void gw_call_release(struct gw_call *call)
{
    struct gw_session *s = call->s;
    bool outer = !s->in_cb; /* from a callback of the method's own (a timer, another socket) */

    if (call->outstanding > 0) {
        call->outstanding--;
    }
    s->in_cb = true; /* the session outlives the call's end until it is through here */
    call_maybe_free(call);
    if (outer) {
        s->in_cb = false;
        start_room(s); /* a turn the call held: the next call waiting for one starts now */
        gw_session_flush(s);
        session_maybe_free(s);
    }
}

void gw_call_unexpect(struct gw_call *call)
{
    if (call->outstanding > 0) {
        call->outstanding--;
    }
}

static void answer(struct gw_call *call, json_t *result)
{
    struct gw_session *s = call->s;

    if (call->answered) {
        json_decref(result);
        return;
    }
    call->answered = true;
    send_json(s, json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", call->id, "result", result));
    if (!s->in_cb) {
        gw_session_flush(s);
    }
}

void gw_call_ok(struct gw_call *call, json_t *value)
{
    answer(call, json_pack("{s:o}", "ok", value != NULL ? value : json_null()));
    call_maybe_free(call);
}

void gw_call_fail(struct gw_call *call, const char *cls, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    answer(call, json_pack("{s:o}", "error", gw_errobj(cls, code, msg)));
    call_maybe_free(call);
}

void gw_call_fail_sbx(struct gw_call *call, const struct sbx_err *e, const char *op,
                      const char *path)
{
    answer(call, json_pack("{s:o}", "error", gw_errobj_sbx(e, op, path)));
    call_maybe_free(call);
}

/* A REPL exception answered with its own ErrorObject (its guest stack included). */
void gw_call_fail_obj(struct gw_call *call, json_t *error)
{
    answer(call, json_pack("{s:o}", "error", error != NULL ? error : json_null()));
    call_maybe_free(call);
}

/* --- params --------------------------------------------------------------------------------- */

static int param_type_error(struct gw_call *call, const char *key, const char *what)
{
    gw_call_fail(call, "TypeError", NULL, "%s: param '%s' must be %s", call->method, key, what);
    return -1;
}

int gw_param_str(struct gw_call *call, json_t *params, const char *key, bool required,
                 const char **out)
{
    json_t *v = json_object_get(params, key);

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        return required ? param_type_error(call, key, "a string (it is missing)") : 0;
    }
    if (!json_is_string(v)) {
        return param_type_error(call, key, "a string");
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        return param_type_error(call, key, "a string without NUL characters");
    }
    *out = json_string_value(v);
    return 0;
}

int gw_param_int(struct gw_call *call, json_t *params, const char *key, bool required, int64_t min,
                 int64_t max, int64_t dflt, int64_t *out)
{
    json_t *v = json_object_get(params, key);
    char what[96];

    *out = dflt;
    if (v == NULL || json_is_null(v)) {
        if (!required) {
            return 0;
        }
        snprintf(what, sizeof(what), "an integer (it is missing)");
        return param_type_error(call, key, what);
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(what, sizeof(what), "an integer in %lld..%lld", (long long)min, (long long)max);
        return param_type_error(call, key, what);
    }
    *out = json_integer_value(v);
    return 0;
}

int gw_param_bool(struct gw_call *call, json_t *params, const char *key, bool dflt, bool *out)
{
    json_t *v = json_object_get(params, key);

    *out = dflt;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return param_type_error(call, key, "a boolean");
    }
    *out = json_is_true(v);
    return 0;
}

int gw_param_obj(struct gw_call *call, json_t *params, const char *key, bool required, json_t **out)
{
    json_t *v = json_object_get(params, key);

    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        return required ? param_type_error(call, key, "an object (it is missing)") : 0;
    }
    if (!json_is_object(v)) {
        return param_type_error(call, key, "an object");
    }
    *out = v;
    return 0;
}

static void strv_free(void *p)
{
    free(p);
}

int gw_param_strv(struct gw_call *call, json_t *params, const char *key, const char ***out,
                  size_t *n)
{
    json_t *v = json_object_get(params, key);
    const char **arr;
    size_t i, len;
    json_t *e;

    *out = NULL;
    *n = 0;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) > SBX_ARGV_MAX) {
        return param_type_error(call, key, "an array of strings");
    }
    len = json_array_size(v);
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || strlen(json_string_value(e)) != json_string_length(e)) {
            return param_type_error(call, key, "an array of strings without NUL characters");
        }
    }
    /* The array is the call's: kept in a list of allocations freed with it. */
    arr = calloc(len + 1, sizeof(*arr));
    if (arr == NULL || gw_call_keep(call, arr, strv_free) < 0) {
        free(arr);
        gw_call_fail(call, "Error", "ENOMEM", "%s: out of memory", call->method);
        return -1;
    }
    json_array_foreach(v, i, e)
    {
        arr[i] = json_string_value(e);
    }
    *out = arr;
    *n = len;
    return 0;
}

int gw_call_keep(struct gw_call *call, void *p, void (*fn)(void *))
{
    struct keep *k = calloc(1, sizeof(*k));

    if (k == NULL) {
        return -1;
    }
    k->p = p;
    k->fn = fn;
    k->next = call->keeps;
    call->keeps = k;
    return 0;
}

/* --- agent streams -------------------------------------------------------------------------- */

static struct gw_ostream *astream_new(struct gw_session *s, uint32_t sid, enum astream_kind kind)
{
    struct gw_ostream *os;

    if (s->c == NULL || !sbx_conn_stream_live(s->c, sid)) {
        return NULL;
    }
    os = calloc(1, sizeof(*os));
    if (os == NULL) {
        return NULL;
    }
    os->kind = kind;
    os->s = s;
    os->sid = sid;
    if (sbx_conn_stream_set_user(s->c, sid, os) < 0) {
        free(os);
        return NULL;
    }
    os->next = s->streams;
    if (s->streams != NULL) {
        s->streams->prev = os;
    }
    s->streams = os;
    return os;
}

static void astream_free(struct gw_ostream *os)
{
    struct gw_session *s = os->s;

    if (os->prev != NULL) {
        os->prev->next = os->next;
    } else {
        s->streams = os->next;
    }
    if (os->next != NULL) {
        os->next->prev = os->prev;
    }
    if (s->c != NULL) {
        (void)sbx_conn_stream_set_user(s->c, os->sid, NULL); /* -1: no longer live, fine */
    }
    free(os);
}

uint64_t gw_ostream_open(struct gw_session *s, uint32_t agent_stream, gw_ostream_xform_fn xform,
                         void *user)
{
    struct gw_ostream *os = astream_new(s, agent_stream, AS_RELAY);

    if (os == NULL) {
        return 0;
    }
    os->sdk = gw_stream_id(s->g);
    os->xform = xform;
    os->user = user;
    gw_session_notify(s, "$sandbox.stream.start",
                      json_pack("{s:I}", "streamId", (json_int_t)os->sdk));
    return os->sdk;
}

void gw_ostream_enqueue(struct gw_ostream *os, const void *data, size_t len)
{
    static const char head[] =
        "{\"jsonrpc\":\"2.0\",\"method\":\"$sandbox.stream.enqueue\",\"params\":{\"streamId\":";
    struct gw_session *s = os->s;
    size_t need = sizeof(head) + 32 + BASE64_ENCODE_RAW_LENGTH(len) + 4;
    int n;

    if (os->cancelled || s->ws == NULL) {
        return;
    }
    /* The hot path of every output byte: the message is written straight into one buffer kept
     * by the session (base64 needs no JSON escaping), not built and dumped by jansson. */
    if (need > s->scratch_cap) {
        char *p = realloc(s->scratch, need);

        if (p == NULL) {
            gw_log("session %s: out of memory relaying stream data", s->sb->id);
            return;
        }
        s->scratch = p;
        s->scratch_cap = need;
    }
    n = snprintf(s->scratch, s->scratch_cap, "%s%llu,\"data\":\"", head,
                 (unsigned long long)os->sdk);
    base64_encode_raw(s->scratch + n, len, data);
    n += (int)BASE64_ENCODE_RAW_LENGTH(len);
    memcpy(s->scratch + n, "\"}}", 3);
    n += 3;
    if (s->g->opt.trace) {
        gw_log("%s > %.*s", s->sb->id, n < 300 ? n : 300, s->scratch);
    }
    (void)gw_ws_send_text(s->ws, s->scratch, (size_t)n); /* -1: closing */
    apply_pause(s);
}

int gw_session_collect(struct gw_session *s, uint32_t agent_stream, gw_sink_fn fn, void *user)
{
    struct gw_ostream *os = astream_new(s, agent_stream, AS_COLLECT);

    if (os == NULL) {
        return -1;
    }
    os->sink = fn;
    os->user = user;
    return 0;
}

static void ack(struct gw_ostream *os, size_t n);

static struct gw_ostream *collect_find(struct gw_session *s, uint32_t agent_stream)
{
    for (struct gw_ostream *os = s->streams; os != NULL; os = os->next) {
        if (os->kind == AS_COLLECT && os->sid == agent_stream) {
            return os;
        }
    }
    return NULL;
}

void gw_session_collect_ack(struct gw_session *s, uint32_t agent_stream, size_t n)
{
    struct gw_ostream *os = collect_find(s, agent_stream);

    if (os != NULL && n > 0) {
        ack(os, n);
        if (!s->in_cb) {
            gw_session_flush(s);
        }
    }
}

void gw_session_collect_cancel(struct gw_session *s, uint32_t agent_stream)
{
    struct gw_ostream *os = collect_find(s, agent_stream);
    struct sbx_err err;

    if (os == NULL) {
        return;
    }
    if (s->c != NULL) {
        (void)sbx_conn_cancel(s->c, os->sid, &err); /* -1: no longer live, nothing to cancel */
    }
    astream_free(os);
    if (!s->in_cb) {
        gw_session_flush(s);
    }
}

int gw_session_feed(struct gw_session *s, uint32_t agent_stream, gw_credit_fn fn, void *user)
{
    struct gw_ostream *os = astream_new(s, agent_stream, AS_FEED);

    if (os == NULL) {
        return -1;
    }
    os->credit = fn;
    os->user = user;
    return 0;
}

void gw_session_unfeed(struct gw_session *s, uint32_t agent_stream)
{
    for (struct gw_ostream *os = s->streams; os != NULL; os = os->next) {
        if (os->kind == AS_FEED && os->sid == agent_stream) {
            astream_free(os);
            return;
        }
    }
}

/* Acknowledge what the WebSocket has room for. */
static void ack(struct gw_ostream *os, size_t n)
{
    struct gw_session *s = os->s;
    struct sbx_err err;

    if (s->ws != NULL && gw_ws_queued(s->ws) > GW_WS_HIGH) {
        os->unacked += n; /* on_drain acknowledges them */
        return;
    }
    if (s->c != NULL && sbx_conn_consumed(s->c, os->sid, os->unacked + n, &err) < 0) {
        gw_log("session %s: acknowledging stream %u: %s", s->sb->id, os->sid, err.msg);
    }
    os->unacked = 0;
}

static void relay_data(struct gw_ostream *os, const struct sbx_event *ev)
{
    if (os->kind == AS_RELAY) {
        if (!os->cancelled) {
            if (os->xform != NULL) {
                if (os->xform(os, ev->data, ev->len, os->user) < 0) {
                    struct sbx_err err;

                    gw_session_notify(os->s, "$sandbox.stream.error",
                                      json_pack("{s:I, s:o}", "streamId", (json_int_t)os->sdk,
                                                "error",
                                                gw_errobj("InvalidData", NULL,
                                                          "the stream's data could not be "
                                                          "converted")));
                    os->cancelled = true;
                    (void)sbx_conn_cancel(os->s->c, os->sid, &err);
                    return;
                }
            } else {
                gw_ostream_enqueue(os, ev->data, ev->len);
            }
        }
        ack(os, ev->len);
    } else if (os->kind == AS_COLLECT) {
        struct sbx_err err;
        int r = os->sink(os->user, ev->data, ev->len, false, NULL);

        if (r < 0) {
            (void)sbx_conn_cancel(os->s->c, os->sid, &err);
            astream_free(os);
            return;
        }
        if (r != GW_SINK_LATER) {
            ack(os, ev->len); /* what the method sends on waits for the WebSocket too */
        }
    }
}

static void relay_end(struct gw_ostream *os, const struct sbx_event *ev)
{
    const struct sbx_err *e = ev->kind == SBX_EV_CANCEL || ev->error != NULL ? ev->error : NULL;
    /* stream.end with an error is an abnormal end (PROTOCOL.md §8.4: a read error part-way): a
     * failure too, or a download cut short by EIO would be answered as the whole file. */
    bool failed = ev->kind == SBX_EV_CANCEL || ev->error != NULL;

    if (os->kind == AS_RELAY) {
        if (!os->cancelled) {
            if (failed) {
                json_t *eo = e != NULL ? gw_errobj_sbx(e, "read", NULL)
                                       : gw_errobj("Interrupted", NULL, "the stream was cancelled");

                gw_session_notify(
                    os->s, "$sandbox.stream.error",
                    json_pack("{s:I, s:o}", "streamId", (json_int_t)os->sdk, "error", eo));
            } else {
                gw_session_notify(os->s, "$sandbox.stream.end",
                                  json_pack("{s:I}", "streamId", (json_int_t)os->sdk));
            }
        }
    } else if (os->kind == AS_COLLECT) {
        struct sbx_err tmp;

        if (failed && e == NULL) {
            sbx_err_set(&tmp, SBX_E_STREAM, "the stream was cancelled");
            e = &tmp;
        }
        (void)os->sink(os->user, NULL, 0, !failed, failed ? e : NULL);
    } else if (os->kind == AS_FEED && os->credit != NULL) {
        gw_credit_fn fn = os->credit;
        void *user = os->user;

        /* Freed first: the feeder, finding the stream no longer live, unfeeds and frees its own
         * state, which must not find this entry. */
        astream_free(os);
        fn(user);
        return;
    }
    astream_free(os);
}

/* The SDK cancelled server stream @sdk. */
static void sdk_cancel(struct gw_session *s, uint64_t sdk)
{
    for (struct gw_ostream *os = s->streams; os != NULL; os = os->next) {
        if (os->kind == AS_RELAY && os->sdk == sdk && !os->cancelled) {
            struct sbx_err err;

            os->cancelled = true;
            if (s->c != NULL) {
                (void)sbx_conn_cancel(s->c, os->sid, &err);
            }
            astream_free(os);
            return;
        }
    }
    {
        struct hook *h = hook_take(s, true, sdk);

        if (h != NULL) {
            h->cancel_fn(h->user);
            free(h);
        }
    }
}

static void on_ws_drain(struct gw_ws *ws, void *user)
{
    struct gw_session *s = user;

    s->in_cb = true;
    for (struct gw_ostream *os = s->streams; os != NULL; os = os->next) {
        if ((os->kind == AS_RELAY || os->kind == AS_COLLECT) && os->unacked > 0) {
            size_t n = os->unacked;

            os->unacked = 0;
            ack(os, n);
        }
    }
    /* A drainer may forget itself from its callback (never another): the next one is taken
     * first. */
    for (struct drainer *d = s->drainers, *next; d != NULL; d = next) {
        next = d->next;
        d->fn(d->user);
    }
    start_room(s);
    s->in_cb = false;
    apply_pause(s);
    gw_session_flush(s);
}

bool gw_session_agent_gone(const struct gw_session *s)
{
    return s->agent_eof;
}

bool gw_session_congested(struct gw_session *s)
{
    return s->ws != NULL && gw_ws_queued(s->ws) > GW_WS_HIGH;
}

int gw_session_on_drain(struct gw_session *s, void (*fn)(void *user), void *user)
{
    struct drainer *d = calloc(1, sizeof(*d));

    if (d == NULL) {
        return -1;
    }
    d->fn = fn;
    d->user = user;
    d->next = s->drainers;
    s->drainers = d;
    return 0;
}

void gw_session_off_drain(struct gw_session *s, void *user)
{
    for (struct drainer **pp = &s->drainers; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->user == user) {
            struct drainer *d = *pp;

            *pp = d->next;
            free(d);
            return;
        }
    }
}

/* --- hooks -------------------------------------------------------------------------------- */

static int hook_add(struct gw_session *s, bool cancel, uint64_t key, gw_done_fn done,
                    void (*cancel_fn)(void *), void *user)
{
    struct hook *h = calloc(1, sizeof(*h));

    if (h == NULL) {
        return -1;
    }
    h->cancel = cancel;
    h->key = key;
    h->done = done;
    h->cancel_fn = cancel_fn;
    h->user = user;
    h->next = s->hooks;
    s->hooks = h;
    return 0;
}

/* Remove and return the hook for (@cancel, @key), or NULL. */
static struct hook *hook_take(struct gw_session *s, bool cancel, uint64_t key)
{
    for (struct hook **pp = &s->hooks; *pp != NULL; pp = &(*pp)->next) {
        struct hook *h = *pp;

        if (h->cancel == cancel && !h->end_only && h->key == key) {
            *pp = h->next;
            return h;
        }
    }
    return NULL;
}

int gw_session_on_done(struct gw_session *s, uint32_t agent_stream, gw_done_fn fn, void *user)
{
    return hook_add(s, false, agent_stream, fn, NULL, user);
}

int gw_session_on_cancel(struct gw_session *s, uint64_t sdk_stream, void (*fn)(void *user),
                         void *user)
{
    return hook_add(s, true, sdk_stream, NULL, fn, user);
}

int gw_session_on_end(struct gw_session *s, void (*fn)(void *user), void *user)
{
    if (hook_add(s, true, 0, NULL, fn, user) < 0) {
        return -1;
    }
    s->hooks->end_only = true; /* hook_add put it first */
    return 0;
}

void gw_session_off_cancel(struct gw_session *s, uint64_t sdk_stream)
{
    free(hook_take(s, true, sdk_stream));
}

static void transfer_done(struct gw_session *s, const struct sbx_transfer_done *d)
{
    struct hook *h = hook_take(s, false, d->stream);

    if (h != NULL) {
        h->done(h->user, d);
        free(h);
    }
}

/* The session ends: every hook hears of it. */
static void hooks_fire_all(struct gw_session *s)
{
    while (s->hooks != NULL) {
        struct hook *h = s->hooks;

        s->hooks = h->next;
        if (h->cancel) {
            h->cancel_fn(h->user);
        } else {
            struct sbx_transfer_done d;

            memset(&d, 0, sizeof(d));
            d.stream = (uint32_t)h->key;
            d.failed = true;
            sbx_err_set(&d.error, SBX_E_EOF, "the agent connection ended: %s", s->why);
            h->done(h->user, &d);
        }
        free(h);
    }
}

/* --- client streams ------------------------------------------------------------------------- */

static struct gw_istream *istream_find(struct gw_session *s, uint64_t id)
{
    for (struct gw_istream *is = s->istreams; is != NULL; is = is->next) {
        if (is->id == id) {
            return is;
        }
    }
    return NULL;
}

static void istream_drop_chunks(struct gw_session *s, struct gw_istream *is)
{
    while (is->head != NULL) {
        struct chunk *ch = is->head;

        is->head = ch->next;
        if (!is->claimed) {
            s->unclaimed -= ch->len;
        }
        free(ch);
    }
    is->tail = NULL;
    is->buffered = 0;
}

static void istream_free(struct gw_session *s, struct gw_istream *is)
{
    struct gw_istream **pp = &s->istreams;

    while (*pp != NULL && *pp != is) {
        pp = &(*pp)->next;
    }
    if (*pp == is) {
        *pp = is->next;
    }
    istream_drop_chunks(s, is);
    json_decref(is->error);
    s->nistreams--;
    free(is);
}

void gw_istream_cancel(struct gw_session *s, uint64_t sdk_stream, json_t *reason)
{
    struct gw_istream *is = istream_find(s, sdk_stream);

    gw_session_notify(s, "$sandbox.stream.cancel",
                      json_pack("{s:I, s:o}", "streamId", (json_int_t)sdk_stream, "reason",
                                reason != NULL ? reason : json_null()));
    if (is != NULL) {
        istream_free(s, is);
    }
}

void gw_istream_refuse(struct gw_session *s, uint64_t sdk_stream, json_t *reason)
{
    struct gw_istream *is = istream_find(s, sdk_stream);

    /* Its claimant's sink would never hear of a cancel from here: that call would wait for
     * ever, its state kept by the sink's reference. */
    if (is != NULL && is->claimed) {
        json_decref(reason);
        return;
    }
    gw_istream_cancel(s, sdk_stream, reason);
}

int gw_istream_claim(struct gw_session *s, uint64_t sdk_stream, const struct gw_istream_sink *sink)
{
    struct gw_istream *is = istream_find(s, sdk_stream);

    if (is == NULL || is->claimed) {
        return -1;
    }
    is->claimed = true;
    is->sink = *sink;
    s->unclaimed -= is->buffered;
    /* Deliver what came before the claim, then the end or the error if they came too. */
    while (is->head != NULL) {
        struct chunk *ch = is->head;

        is->head = ch->next;
        if (is->head == NULL) {
            is->tail = NULL;
        }
        is->buffered -= ch->len;
        if (sink->data(sink->user, ch->data, ch->len) < 0) {
            free(ch);
            gw_istream_cancel(s, sdk_stream, NULL);
            return 0;
        }
        free(ch);
        if (istream_find(s, sdk_stream) != is) {
            return 0; /* the sink cancelled the stream itself */
        }
    }
    if (is->failed) {
        sink->error(sink->user, is->error);
        istream_free(s, is);
    } else if (is->ended) {
        sink->end(sink->user);
        istream_free(s, is);
    }
    return 0;
}

static int stream_id_param(json_t *params, uint64_t *id)
{
    json_t *v = json_object_get(params, "streamId");

    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return -1;
    }
    *id = (uint64_t)json_integer_value(v);
    return 0;
}

/* $sandbox.stream.* from the client. Misuse is logged and dropped: notifications get no answer. */
static void client_stream(struct gw_session *s, const char *method, json_t *params)
{
    struct gw_istream *is;
    uint64_t id;

    if (stream_id_param(params, &id) < 0) {
        gw_log("session %s: %s without a valid streamId: dropped", s->sb->id, method);
        return;
    }
    if (strcmp(method, "$sandbox.stream.cancel") == 0) {
        sdk_cancel(s, id);
        return;
    }
    is = istream_find(s, id);
    if (strcmp(method, "$sandbox.stream.start") == 0) {
        if (is != NULL) {
            /* A stream id reused while live: refuse the new one, keep the old one. */
            gw_session_notify(
                s, "$sandbox.stream.cancel",
                json_pack("{s:I, s:o}", "streamId", (json_int_t)id, "reason",
                          gw_errobj("AlreadyExists", NULL, "stream id already in use")));
            return;
        }
        if (s->nistreams >= GW_CLIENT_STREAMS_MAX) {
            gw_session_notify(
                s, "$sandbox.stream.cancel",
                json_pack("{s:I, s:o}", "streamId", (json_int_t)id, "reason",
                          gw_errobj("Error", "LIMIT", "too many open client streams")));
            return;
        }
        is = calloc(1, sizeof(*is));
        if (is == NULL) {
            return;
        }
        is->id = id;
        is->next = s->istreams;
        s->istreams = is;
        s->nistreams++;
        return;
    }
    if (is == NULL) {
        return; /* data for a stream cancelled or never started (§3.3): dropped */
    }
    if (strcmp(method, "$sandbox.stream.enqueue") == 0) {
        json_t *d = json_object_get(params, "data");
        uint8_t *bytes;
        size_t len = 0;

        if (!json_is_string(d) || gw_fs_b64_decode(json_string_value(d), json_string_length(d),
                                                   GW_WS_MSG_MAX, &bytes, &len) < 0) {
            json_t *why = gw_errobj("InvalidData", NULL, "stream data is not a base64 string");

            if (is->claimed) {
                is->sink.error(is->sink.user, why); /* as the client's own error would */
            }
            gw_istream_cancel(s, id, why);
            return;
        }
        if (is->claimed) {
            if (len > 0 && is->sink.data(is->sink.user, bytes, len) < 0) {
                gw_istream_cancel(s, id, NULL);
            }
            free(bytes);
            return;
        }
        if (s->unclaimed + len > GW_UNCLAIMED_MAX) {
            free(bytes);
            gw_istream_cancel(s, id,
                              gw_errobj("Error", "LIMIT",
                                        "too much stream data before the request that "
                                        "uses it"));
            return;
        }
        {
            struct chunk *ch = malloc(sizeof(*ch) + len);

            if (ch == NULL) {
                free(bytes);
                gw_istream_cancel(s, id, gw_errobj("Error", "ENOMEM", "out of memory"));
                return;
            }
            ch->next = NULL;
            ch->len = len;
            memcpy(ch->data, bytes, len);
            free(bytes);
            if (is->tail != NULL) {
                is->tail->next = ch;
            } else {
                is->head = ch;
            }
            is->tail = ch;
            is->buffered += len;
            s->unclaimed += len;
        }
        return;
    }
    if (strcmp(method, "$sandbox.stream.end") == 0) {
        if (is->claimed) {
            is->sink.end(is->sink.user);
            istream_free(s, is);
        } else {
            is->ended = true;
        }
        return;
    }
    if (strcmp(method, "$sandbox.stream.error") == 0) {
        json_t *e = json_object_get(params, "error");

        if (is->claimed) {
            is->sink.error(is->sink.user, e);
            istream_free(s, is);
        } else {
            is->failed = true;
            json_decref(is->error); /* a second error replaces the first */
            is->error = json_incref(e);
        }
        return;
    }
    gw_log("session %s: unknown notification %s: dropped", s->sb->id, method);
}

/* --- abort ---------------------------------------------------------------------------------- */

/* abort{abortId}: always {ok: null}, even for unknown or finished ids (an error crashes the SDK,
 * docs/GATEWAY.md); a call in flight with that abortId hears of it. */
void gw_m_abort(struct gw_call *call, json_t *params)
{
    json_t *v = json_object_get(params, "abortId");

    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        uint64_t id = (uint64_t)json_integer_value(v) + 1;

        for (struct gw_call *c = call->s->calls; c != NULL; c = c->next) {
            if (c != call && c->abort_id == id && (!c->answered || c->abort_late) &&
                c->on_abort != NULL) {
                c->on_abort(c);
                break;
            }
        }
    }
    gw_call_ok(call, NULL);
}

/* --- JSON-RPC in ---------------------------------------------------------------------------- */

/*
 * The request id of a message that could not be parsed: the first `"id": <integer>` in its text
 * (the SDKs put it before the params), so the caller's call fails instead of hanging. NULL when
 * there is none.
 */
static json_t *recover_id(const char *data, size_t len)
{
    const char *end = data + len;

    for (const char *p = memmem(data, len, "\"id\"", 4); p != NULL;
         p = memmem(p + 4, (size_t)(end - p - 4), "\"id\"", 4)) {
        const char *q = p + 4;
        json_int_t v = 0;
        int digits = 0;

        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) {
            q++;
        }
        if (q >= end || *q != ':') {
            continue;
        }
        q++;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) {
            q++;
        }
        while (q < end && *q >= '0' && *q <= '9' && digits < 15) {
            v = v * 10 + (*q - '0');
            q++;
            digits++;
        }
        if (digits > 0 && (q >= end || *q == ',' || *q == '}' || *q == ' ')) {
            return json_integer(v);
        }
        return NULL;
    }
    return NULL;
}

/*
 * Answer a message that is not a usable request with a result-level error, to @id. Without an id
 * nothing is sent: an answer with id null makes the JS SDK drop the whole connection (it
 * refuses it as an invalid message, close 4001), so the problem is logged instead.
 */
static void answer_bad(struct gw_session *s, json_t *id, const char *cls, const char *msg)
{
    if (id == NULL || (!json_is_integer(id) && !json_is_string(id))) {
        gw_log("session %s: dropped a message that names no request: %s", s->sb->id, msg);
        return;
    }
    send_json(s, json_pack("{s:s, s:O, s:{s:o}}", "jsonrpc", "2.0", "id", id, "result", "error",
                           gw_errobj(cls, NULL, msg)));
}

static void on_request(struct gw_session *s, json_t *msg, json_t *id, const char *method,
                       json_t *params)
{
    const struct gw_method *m;
    struct gw_call *call;

    if (!json_is_integer(id) && !json_is_string(id)) {
        answer_bad(s, NULL, "TypeError", "request id must be a number or a string");
        return;
    }
    if (s->ncalls >= GW_CALLS_MAX) {
        send_json(s, json_pack("{s:s, s:O, s:{s:o}}", "jsonrpc", "2.0", "id", id, "result", "error",
                               gw_errobj("Error", "LIMIT", "too many calls in flight")));
        return;
    }
    call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return;
    }
    call->s = s;
    call->id = json_incref(id);
    call->next = s->calls;
    if (s->calls != NULL) {
        s->calls->prev = call;
    }
    s->calls = call;
    s->ncalls++;
    m = gw_method_find(method);
    if (m == NULL) {
        call->method = "?";
        gw_call_fail(call, "TypeError", "UNKNOWN_METHOD", "Method not found: '%.100s'", method);
        return;
    }
    call->method = m->name;
    if (params == NULL || json_is_null(params)) {
        params = json_object();
        if (params == NULL || gw_call_keep(call, params, (void (*)(void *))json_decref) < 0) {
            json_decref(params);
            gw_call_fail(call, "Error", "ENOMEM", "out of memory");
            return;
        }
    } else if (!json_is_object(params)) {
        gw_call_fail(call, "TypeError", NULL, "%s: params must be an object", m->name);
        return;
    } else {
        /* The handler may keep pointers into params (strings) until the call is freed. */
        json_incref(params);
        if (gw_call_keep(call, params, (void (*)(void *))json_decref) < 0) {
            json_decref(params);
            gw_call_fail(call, "Error", "ENOMEM", "out of memory");
            return;
        }
    }
    if (gw_session_conn(s) == NULL) {
        gw_call_fail(call, "Error", "ECONNRESET", "the sandbox's agent is not connected: %s",
                     s->why[0] != '\0' ? s->why : "starting");
        return;
    }
    (void)msg;
    m->fn(call, params);
}

static void on_ws_message(struct gw_ws *ws, const char *data, size_t len, void *user)
{
    struct gw_session *s = user;
    json_error_t jerr;
    json_t *msg, *id, *method, *params;

    if (s->g->opt.trace) {
        gw_log("%s < %.*s", s->sb->id, (int)(len < 300 ? len : 300), data);
    }
    if (len == 4 && memcmp(data, "ping", 4) == 0) {
        (void)gw_ws_send_text(ws, "pong", 4);
        return;
    }
    s->in_cb = true;
    /* NUL is a valid character in a JSON string (file content, env values): allowed here, and
     * refused per parameter where a C string is needed (gw_param_str). */
    msg = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (msg == NULL) {
        char m[300];
        json_t *rid = recover_id(data, len);

        snprintf(m, sizeof(m), "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        answer_bad(s, rid, "SyntaxError", m);
        json_decref(rid);
        goto out;
    }
    if (!json_is_object(msg)) {
        answer_bad(s, NULL, "TypeError", "a JSON-RPC message must be an object");
        goto out;
    }
    id = json_object_get(msg, "id");
    method = json_object_get(msg, "method");
    params = json_object_get(msg, "params");
    if (!json_is_string(method)) {
        if (id != NULL &&
            (json_object_get(msg, "result") != NULL || json_object_get(msg, "error") != NULL)) {
            goto out; /* a response: the gateway sends no requests, ignore it */
        }
        answer_bad(s, id, "TypeError", "a JSON-RPC request needs a string 'method'");
        goto out;
    }
    if (id == NULL) {
        if (params != NULL && !json_is_object(params)) {
            gw_log("session %s: notification %.64s with bad params: dropped", s->sb->id,
                   json_string_value(method));
        } else if (strncmp(json_string_value(method), "$sandbox.stream.", 16) == 0) {
            client_stream(s, json_string_value(method), params);
        } else {
            gw_log("session %s: unknown notification %.64s: dropped", s->sb->id,
                   json_string_value(method));
        }
        goto out;
    }
    on_request(s, msg, id, json_string_value(method), params);
out:
    json_decref(msg);
    start_room(s); /* a call that ended (an abort) made room */
    s->in_cb = false;
    apply_pause(s);
    gw_session_flush(s);
}

/* --- agent events --------------------------------------------------------------------------- */

static void on_response(struct gw_session *s, const struct sbx_event *ev)
{
    struct gw_call *call = ev->user;
    gw_call_done_fn done;

    if (ev->unknown || call == NULL) {
        return;
    }
    if (call->outstanding > 0) {
        call->outstanding--;
    }
    done = call->done;
    if (done != NULL) {
        call->outstanding++; /* keep the call while its handler answers (and maybe frees) it */
        done(call, ev);
        call->outstanding--;
    }
    call_maybe_free(call);
}

static void on_hello(struct gw_session *s, const struct sbx_event *ev)
{
    struct sbx_err err;

    if (s->grace_open) {
        uv_timer_stop(&s->grace); /* the hello deadline */
    }
    if (ev->error != NULL) {
        snprintf(s->why, sizeof(s->why), "hello refused by the agent: %s: %s", ev->error->code,
                 ev->error->msg);
        session_end_agent(s, s->why);
        return;
    }
    s->agent_up = true;
    /* File requests act as the sandbox user (§17.1); processes name it in their params. */
    if (s->g->opt.user != NULL && sbx_conn_set_identity(s->c, s->g->opt.user, &err) < 0) {
        gw_log("session %s: identity %s: %s", s->sb->id, s->g->opt.user, err.msg);
    }
    gw_methods_session_ready(s);
    apply_pause(s);
}

static void session_process(struct gw_session *s)
{
    struct sbx_event ev;
    struct sbx_err err;
    int r;

    s->in_cb = true;
    while (s->c != NULL && (r = sbx_conn_next(s->c, &ev, &err)) == 1) {
        struct gw_ostream *os = ev.stream_user;

        switch (ev.kind) {
        case SBX_EV_RESPONSE:
            if (ev.call == SBX_CALL_HELLO && ev.user == s) {
                on_hello(s, &ev);
            } else {
                on_response(s, &ev);
            }
            break;
        case SBX_EV_DATA:
            if (os != NULL) {
                relay_data(os, &ev);
            }
            break;
        case SBX_EV_END:
        case SBX_EV_CANCEL:
            if (os != NULL) {
                relay_end(os, &ev);
            }
            break;
        case SBX_EV_CREDIT:
            if (os != NULL && os->kind == AS_FEED && os->credit != NULL) {
                os->credit(os->user);
            }
            break;
        case SBX_EV_EXIT:
            break; /* processWait asks with proc.wait */
        case SBX_EV_TRANSFER_DONE:
            transfer_done(s, ev.done);
            break;
        case SBX_EV_ERROR:
            gw_log("session %s: agent error: %s: %s", s->sb->id, ev.error->code, ev.error->msg);
            break;
        case SBX_EV_NOTIFY:
            break; /* nothing the gateway subscribes to yet */
        }
    }
    if (s->c != NULL && r == 0) {
        start_room(s); /* answered calls made room */
    }
    s->in_cb = false;
    if (s->c != NULL && r < 0 && !s->agent_eof) {
        snprintf(s->why, sizeof(s->why), "agent connection failed: %s: %s", err.code, err.msg);
        session_end_agent(s, s->why);
        return;
    }
    gw_session_flush(s);
}

static void on_pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct gw_session *s = h->data;
    size_t len = 0;
    uint8_t *p = s->c != NULL ? sbx_conn_feed_space(s->c, &len) : NULL;

    *buf = uv_buf_init((char *)p, (unsigned)len);
}

static void on_pipe_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct gw_session *s = st->data;

    if (n > 0) {
        sbx_conn_feed_commit(s->c, (size_t)n);
        session_process(s);
        return;
    }
    if (n == UV_ENOBUFS) {
        session_process(s); /* drain, then libuv asks again */
        return;
    }
    if (n < 0) {
        char why[160];

        snprintf(why, sizeof(why), "the agent connection ended: %s",
                 n == UV_EOF ? "end of file" : uv_strerror((int)n));
        session_end_agent(s, why);
    }
}

static void on_pipe_close(uv_handle_t *h)
{
    struct gw_session *s = h->data;

    s->pipe_open = false;
    session_maybe_free(s);
}

/* Close the WebSocket with 1011 and why the agent link ended. */
static void close_ws_why(struct gw_session *s)
{
    char reason[120];

    if (s->ws == NULL) {
        return;
    }
    /* A close reason is at most 123 bytes. */
    snprintf(reason, sizeof(reason), "%s", s->why);
    gw_ws_close(s->ws, 1011, reason);
}

static void on_grace(uv_timer_t *t)
{
    close_ws_why(t->data);
}

/* An agent that accepts the connection and never answers hello (a hung guest, or a workload
 * that took the agent's port) would keep the session's client waiting for ever, its messages
 * unread: the session ends as when the agent goes, the WebSocket closed with the reason. */
static void on_hello_timeout(uv_timer_t *t)
{
    struct gw_session *s = t->data;
    char d[32];

    gw_duration_text(gw_hello_ms(s->g), d, sizeof d);
    snprintf(s->why, sizeof(s->why), "the agent did not answer hello within %s", d);
    session_end_agent(s, s->why);
}

/*
 * The agent link is over (EOF, error, or the WebSocket went away): fail what is outstanding
 * through the core's EOF events, close the pipe, and close the WebSocket with 1011 unless the
 * WebSocket is what ended.
 */
static void session_end_agent(struct gw_session *s, const char *why)
{
    if (s->agent_eof) {
        return;
    }
    s->agent_eof = true;
    if (s->why[0] == '\0' || why != s->why) {
        snprintf(s->why, sizeof(s->why), "%s", why);
    }
    if (s->c != NULL) {
        struct sbx_event ev;
        struct sbx_err err;

        sbx_conn_eof(s->c);
        s->in_cb = true;
        while (sbx_conn_next(s->c, &ev, &err) == 1) {
            struct gw_ostream *os = ev.stream_user;

            if (ev.kind == SBX_EV_RESPONSE && ev.user != s) {
                on_response(s, &ev);
            } else if ((ev.kind == SBX_EV_END || ev.kind == SBX_EV_CANCEL) && os != NULL) {
                relay_end(os, &ev);
            }
        }
        s->in_cb = false;
    }
    while (s->streams != NULL) {
        astream_free(s->streams);
    }
    s->in_cb = true;
    hooks_fire_all(s);
    s->in_cb = false;
    if (s->pipe_open && !s->pipe_closing) {
        s->pipe_closing = true;
        uv_close((uv_handle_t *)&s->pipe, on_pipe_close);
    }
    if (s->ws != NULL) {
        /* The agent link ended under a live client: most often the VM died, which the backend
         * learns a moment later and reports with the console tail (gw_sandbox_died closes this
         * WebSocket with that reason). Give it that moment before closing with our own. */
        if (!s->grace_open || uv_timer_start(&s->grace, on_grace, GW_GRACE_MS, 0) < 0) {
            close_ws_why(s);
        }
    }
    session_maybe_free(s);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct gw_session *s = req->data;
    struct sbx_err err;
    int r;

    if (s->pipe_closing) {
        return;
    }
    if (status < 0) {
        snprintf(s->why, sizeof(s->why), "cannot reach the sandbox's agent at %s: %s", s->sb->addr,
                 uv_strerror(status));
        session_end_agent(s, s->why);
        return;
    }
    r = uv_read_start((uv_stream_t *)&s->pipe, on_pipe_alloc, on_pipe_read);
    if (r < 0 || sbx_conn_hello(s->c, &gw_agent_hello, s, NULL, &err) < 0) {
        snprintf(s->why, sizeof(s->why), "starting the agent connection: %s",
                 r < 0 ? uv_strerror(r) : err.msg);
        session_end_agent(s, s->why);
        return;
    }
    gw_session_flush(s);
}

/* --- lifetime ------------------------------------------------------------------------------- */

static void on_ws_close(struct gw_ws *ws, uint16_t code, const char *reason, void *user)
{
    struct gw_session *s = user;

    s->ws = NULL;
    /* Client streams die with the socket; the agent link goes too (processes keep running in
     * the guest, PROTOCOL.md §2.1). */
    while (s->istreams != NULL) {
        struct gw_istream *is = s->istreams;

        if (is->claimed) {
            is->sink.error(is->sink.user, NULL);
        }
        istream_free(s, is);
    }
    session_end_agent(s, "the client closed the WebSocket");
    /* A call waiting on nothing the session could still deliver is answered (to no one), so
     * that nothing keeps the session alive. */
    s->in_cb = true;
    for (struct gw_call *call = s->calls, *next; call != NULL; call = next) {
        next = call->next;
        if (!call->answered && call->outstanding == 0) {
            gw_call_fail(call, "Error", "ECONNRESET", "the connection closed");
        }
    }
    s->in_cb = false;
    gw_sandbox_session_ended(s->sb, s);
    session_maybe_free(s);
}

static void session_unlink(struct gw_session *s)
{
    struct gw_session **pp = &s->sb->sessions;

    while (*pp != NULL && *pp != s) {
        pp = &(*pp)->next;
    }
    if (*pp == s) {
        *pp = s->next;
    }
    if (s->sb->primary == s) {
        s->sb->primary = NULL;
    }
}

static void on_grace_close(uv_handle_t *h)
{
    struct gw_session *s = h->data;

    s->grace_open = false;
    session_maybe_free(s);
}

static void on_stall_close(uv_handle_t *h)
{
    struct gw_session *s = h->data;

    s->stall_open = false;
    session_maybe_free(s);
}

static void session_maybe_free(struct gw_session *s)
{
    if (s->freed || s->ws != NULL || s->pipe_open || s->writing || s->calls != NULL || s->in_cb) {
        return;
    }
    if (s->grace_open || s->stall_open) {
        /* The last handles: the session is freed in the last close callback. */
        if (s->grace_open && !s->grace_closing) {
            s->grace_closing = true;
            uv_close((uv_handle_t *)&s->grace, on_grace_close);
        }
        if (s->stall_open && !s->stall_closing) {
            s->stall_closing = true;
            uv_close((uv_handle_t *)&s->stall, on_stall_close);
        }
        return;
    }
    s->freed = true;
    session_unlink(s);
    while (s->drainers != NULL) {
        struct drainer *d = s->drainers;

        s->drainers = d->next;
        free(d);
    }
    free(s->scratch);
    sbx_conn_free(s->c);
    s->c = NULL;
    free(s);
}

static const struct gw_ws_ops ws_ops = {
    .on_message = on_ws_message,
    .on_drain = on_ws_drain,
    .on_close = on_ws_close,
};

struct gw_session *gw_session_start(struct gw_sandbox *sb, struct gw_http_conn *hc, bool primary)
{
    char hdr[64];
    const char *headers[] = { hdr, NULL };
    struct gw_session *s;
    struct sbx_addr addr;
    struct sbx_err err;
    unsigned n = 0;

    for (struct gw_session *o = sb->sessions; o != NULL; o = o->next) {
        n++;
    }
    if (n >= GW_SESSIONS_MAX) {
        gw_http_respond_json(hc, 429, NULL,
                             json_pack("{s:s, s:s}", "code", "TOO_MANY_CONNECTIONS", "message",
                                       "too many connections to this sandbox"));
        return NULL;
    }
    if (sbx_addr_parse(sb->addr, &addr, &err) < 0 || addr.kind != SBX_ADDR_UNIX) {
        gw_http_respond_json(hc, 502, NULL,
                             json_pack("{s:s, s:s}", "code", "SANDBOX_UNREACHABLE", "message",
                                       "the sandbox's agent address is not a unix socket"));
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->c = sbx_conn_new(&err)) == NULL) {
        free(s);
        gw_http_respond_json(
            hc, 500, NULL, json_pack("{s:s, s:s}", "code", "INTERNAL", "message", "out of memory"));
        return NULL;
    }
    s->g = sb->g;
    s->sb = sb;
    s->primary = primary;
    if (uv_pipe_init(sb->g->loop, &s->pipe, 0) < 0) {
        sbx_conn_free(s->c);
        free(s);
        gw_http_respond_json(
            hc, 500, NULL,
            json_pack("{s:s, s:s}", "code", "INTERNAL", "message", "cannot create a pipe handle"));
        return NULL;
    }
    s->pipe.data = s;
    s->pipe_open = true;
    if (uv_timer_init(sb->g->loop, &s->grace) == 0) {
        s->grace.data = s;
        s->grace_open = true;
    }
    /* Without it (it cannot fail on a live loop) holds would only end with their receiver. */
    if (uv_timer_init(sb->g->loop, &s->stall) == 0) {
        s->stall.data = s;
        s->stall_open = true;
    }
    snprintf(hdr, sizeof(hdr), "x-deno-sandbox-id: %s", sb->id);
    s->ws = gw_http_upgrade(hc, headers, &ws_ops, s);
    s->next = sb->sessions;
    sb->sessions = s;
    if (primary) {
        sb->primary = s;
    }
    if (s->ws == NULL) {
        s->pipe_closing = true;
        uv_close((uv_handle_t *)&s->pipe, on_pipe_close);
        return NULL;
    }
    /* Nothing is read from the SDK until the agent said hello (apply_pause). */
    s->paused = true;
    gw_ws_pause(s->ws, true);
    s->connect.data = s;
    uv_pipe_connect(&s->connect, &s->pipe, addr.path, on_connect);
    if (s->grace_open) {
        (void)uv_timer_start(&s->grace, on_hello_timeout, (uint64_t)gw_hello_ms(s->g),
                             0); /* cannot fail: a live handle, a callback */
    }
    return s;
}

void gw_session_close_all(struct gw_sandbox *sb, uint16_t code, const char *reason)
{
    for (struct gw_session *s = sb->sessions, *next; s != NULL; s = next) {
        next = s->next; /* gw_ws_close may end (and free) the session at once */
        if (s->ws != NULL) {
            gw_ws_close(s->ws, code, reason);
        }
    }
}
