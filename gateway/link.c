/*
 * The gateway's own agent connection per sandbox (link.h): a uv_pipe_t carrying libsbx's
 * sans-I/O core, events routed to the users that made the requests and streams.
 *
 * Lifetime: sb->link points at the link while it is usable. Once it ends (EOF, error,
 * gw_link_close) sb->link is cleared at once, so the next gw_link_get opens a fresh one; the
 * ended link is freed when its pipe is closed, no write is in flight and no callback of it runs.
 */
#include "link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx/client.h"

#define LINK_IOV_MAX 64

struct gw_link {
    struct gw_sandbox *sb; /* NULL once ended */
    uv_loop_t *loop;
    uv_pipe_t pipe;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t idle;
    uv_timer_t hello; /* the connect and hello must be done by --agent-hello-timeout */
    size_t wlen;
    int64_t hello_ms;
    struct sbx_conn *c;
    struct gw_link_user *users;
    bool pipe_open, idle_open, hello_open, writing, up, ended, freed;
    int in_cb; /* callbacks of ours on the stack: flush and free on return */
    char why[256];
};

static void link_end(struct gw_link *l, const char *why);

static void link_maybe_free(struct gw_link *l)
{
    if (l->freed || !l->ended || l->pipe_open || l->idle_open || l->hello_open || l->writing ||
        l->in_cb > 0) {
        return;
    }
    l->freed = true;
    sbx_conn_free(l->c);
    free(l);
}

static void on_handle_close(uv_handle_t *h)
{
    struct gw_link *l = h->data;

    if (h == (uv_handle_t *)&l->pipe) {
        l->pipe_open = false;
    } else if (h == (uv_handle_t *)&l->idle) {
        l->idle_open = false;
    } else {
        l->hello_open = false;
    }
    link_maybe_free(l);
}

static void on_idle(uv_timer_t *t)
{
    struct gw_link *l = t->data;

    if (l->users == NULL) {
        link_end(l, "the link was idle");
    }
}

/* An agent that accepts the connection but never answers hello (a hung or hostile guest) would
 * keep every user of the link waiting for `up` for ever: the link ends instead, and its users get
 * `down` with the reason. */
static void on_hello_timeout(uv_timer_t *t)
{
    struct gw_link *l = t->data;
    char d[32];

    gw_duration_text(l->hello_ms, d, sizeof d);
    snprintf(l->why, sizeof(l->why), "the agent did not answer hello within %s", d);
    link_end(l, l->why);
}

static void idle_check(struct gw_link *l)
{
    if (!l->ended && l->idle_open && l->users == NULL) {
        (void)uv_timer_start(&l->idle, on_idle, GW_LINK_IDLE_MS, 0);
    }
}

static void on_write(uv_write_t *w, int status)
{
    struct gw_link *l = w->data;

    l->writing = false;
    if (l->ended) {
        link_maybe_free(l);
        return;
    }
    if (status < 0) {
        char why[128];

        snprintf(why, sizeof(why), "writing to the agent: %s", uv_strerror(status));
        link_end(l, why);
        return;
    }
    sbx_conn_out_done(l->c, l->wlen);
    l->in_cb++;
    for (struct gw_link_user *u = l->users, *next; u != NULL && !l->ended; u = next) {
        next = u->next; /* a user may leave from its callback */
        if (u->drained != NULL && u->is_up) {
            u->drained(u);
        }
    }
    l->in_cb--;
    gw_link_flush(l);
    link_maybe_free(l);
}

void gw_link_flush(struct gw_link *l)
{
    struct iovec iov[LINK_IOV_MAX];
    uv_buf_t bufs[LINK_IOV_MAX];
    int n, r;

    if (l->writing || l->ended || !l->up || l->in_cb > 0) {
        return;
    }
    n = sbx_conn_out_iov(l->c, iov, LINK_IOV_MAX);
    if (n <= 0) {
        return;
    }
    l->wlen = 0;
    for (int i = 0; i < n; i++) {
        bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
        l->wlen += iov[i].iov_len;
    }
    l->write.data = l;
    r = uv_write(&l->write, (uv_stream_t *)&l->pipe, bufs, (unsigned)n, on_write);
    if (r < 0) {
        char why[128];

        snprintf(why, sizeof(why), "writing to the agent: %s", uv_strerror(r));
        link_end(l, why);
        return;
    }
    l->writing = true;
}

/* The hello went out before `up`: flush it regardless of l->up. */
static void flush_hello(struct gw_link *l)
{
    l->up = true;
    gw_link_flush(l);
    l->up = false;
}

static void dispatch(struct gw_link *l, const struct sbx_event *ev)
{
    switch (ev->kind) {
    case SBX_EV_RESPONSE: {
        struct gw_link_req *r = ev->user;

        if (ev->unknown || r == NULL) {
            return;
        }
        if (r == (struct gw_link_req *)l) { /* the hello */
            return;
        }
        r->fn(r, ev);
        return;
    }
    case SBX_EV_DATA:
    case SBX_EV_END:
    case SBX_EV_CANCEL:
    case SBX_EV_CREDIT:
    case SBX_EV_TRANSFER_DONE: {
        struct gw_link_stream *st = ev->stream_user;

        if (st != NULL) {
            st->fn(st, ev);
        } else if (ev->kind == SBX_EV_DATA) {
            /* Nobody reads it: acknowledge, so the agent's window does not stall. */
            (void)sbx_conn_consumed(l->c, ev->stream, ev->len, &(struct sbx_err){ 0 });
        } else if (ev->kind == SBX_EV_TRANSFER_DONE) {
            /* An upload its user ended already (sbx_conn_end forgets the stream, and its user,
             * once the end is out): every user's `event` gets it, to match by ev->stream. */
            for (struct gw_link_user *u = l->users, *next; u != NULL && !l->ended; u = next) {
                next = u->next;
                if (u->event != NULL && u->is_up) {
                    u->event(u, ev);
                }
            }
        }
        return;
    }
    case SBX_EV_EXIT:
    case SBX_EV_NOTIFY:
        for (struct gw_link_user *u = l->users, *next; u != NULL && !l->ended; u = next) {
            next = u->next;
            if (u->event != NULL && u->is_up) {
                u->event(u, ev);
            }
        }
        return;
    case SBX_EV_ERROR:
        if (l->sb != NULL) {
            gw_log("link %s: agent error: %s: %s", l->sb->id, ev->error->code, ev->error->msg);
        }
        return;
    }
}

static void on_hello(struct gw_link *l, const struct sbx_event *ev)
{
    struct sbx_err err;

    if (ev->error != NULL) {
        snprintf(l->why, sizeof(l->why), "hello refused by the agent: %s: %s", ev->error->code,
                 ev->error->msg);
        link_end(l, l->why);
        return;
    }
    l->up = true;
    uv_timer_stop(&l->hello);
    if (l->sb->g->opt.user != NULL && sbx_conn_set_identity(l->c, l->sb->g->opt.user, &err) < 0) {
        gw_log("link %s: identity %s: %s", l->sb->id, l->sb->g->opt.user, err.msg);
    }
    for (struct gw_link_user *u = l->users, *next; u != NULL && !l->ended; u = next) {
        next = u->next;
        if (!u->is_up) {
            u->is_up = true;
            u->up(u, l->c);
        }
    }
}

static void process(struct gw_link *l)
{
    struct sbx_event ev;
    struct sbx_err err;
    int r = 0;

    l->in_cb++;
    while (!l->ended && (r = sbx_conn_next(l->c, &ev, &err)) == 1) {
        if (ev.kind == SBX_EV_RESPONSE && ev.call == SBX_CALL_HELLO && ev.user == (void *)l) {
            on_hello(l, &ev);
        } else {
            dispatch(l, &ev);
        }
    }
    l->in_cb--;
    if (!l->ended && r < 0) {
        snprintf(l->why, sizeof(l->why), "agent connection failed: %s: %s", err.code, err.msg);
        link_end(l, l->why);
        return;
    }
    gw_link_flush(l);
    link_maybe_free(l);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct gw_link *l = h->data;
    size_t len = 0;
    uint8_t *p = l->ended ? NULL : sbx_conn_feed_space(l->c, &len);

    (void)suggested;
    *buf = uv_buf_init((char *)p, (unsigned)len);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct gw_link *l = st->data;

    (void)buf;
    if (l->ended) {
        return;
    }
    if (n > 0) {
        sbx_conn_feed_commit(l->c, (size_t)n);
        process(l);
    } else if (n == UV_ENOBUFS) {
        process(l);
    } else if (n < 0) {
        char why[160];

        snprintf(why, sizeof(why), "the agent connection ended: %s",
                 n == UV_EOF ? "end of file" : uv_strerror((int)n));
        link_end(l, why);
    }
}

/*
 * The link is over: fail what is outstanding through the core's EOF events, tell every user,
 * close the handles. sb->link is cleared so that the next user gets a fresh link.
 */
static void link_end(struct gw_link *l, const char *why)
{
    struct sbx_event ev;
    struct sbx_err err;

    if (l->ended) {
        return;
    }
    if (why != l->why) {
        snprintf(l->why, sizeof(l->why), "%s", why);
    }
    /* Events first, with `ended` still false so that dispatch delivers them. */
    sbx_conn_eof(l->c);
    l->in_cb++;
    while (sbx_conn_next(l->c, &ev, &err) == 1) {
        if (!(ev.kind == SBX_EV_RESPONSE && ev.user == (void *)l)) {
            dispatch(l, &ev);
        }
    }
    l->ended = true;
    if (l->sb != NULL && l->sb->link == l) {
        l->sb->link = NULL;
    }
    l->sb = NULL;
    while (l->users != NULL) {
        struct gw_link_user *u = l->users;

        l->users = u->next;
        u->next = NULL;
        u->joined = false;
        u->is_up = false;
        if (u->down != NULL) {
            u->down(u, l->why);
        }
    }
    l->in_cb--;
    if (l->pipe_open && !uv_is_closing((uv_handle_t *)&l->pipe)) {
        uv_close((uv_handle_t *)&l->pipe, on_handle_close);
    }
    if (l->idle_open && !uv_is_closing((uv_handle_t *)&l->idle)) {
        uv_close((uv_handle_t *)&l->idle, on_handle_close);
    }
    if (l->hello_open && !uv_is_closing((uv_handle_t *)&l->hello)) {
        uv_close((uv_handle_t *)&l->hello, on_handle_close);
    }
    link_maybe_free(l);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct gw_link *l = req->data;
    struct sbx_err err;
    int r;

    if (l->ended) {
        return;
    }
    if (status < 0) {
        snprintf(l->why, sizeof(l->why), "cannot reach the sandbox's agent: %s",
                 uv_strerror(status));
        link_end(l, l->why);
        return;
    }
    r = uv_read_start((uv_stream_t *)&l->pipe, on_alloc, on_read);
    if (r < 0 || sbx_conn_hello(l->c, &gw_agent_hello, l, NULL, &err) < 0) {
        snprintf(l->why, sizeof(l->why), "starting the agent connection: %s",
                 r < 0 ? uv_strerror(r) : err.msg);
        link_end(l, l->why);
        return;
    }
    flush_hello(l);
}

struct gw_link *gw_link_get(struct gw_sandbox *sb, char *why, size_t whylen)
{
    struct sbx_addr addr;
    struct sbx_err err;
    struct gw_link *l;

    if (sb->link != NULL) {
        return sb->link;
    }
    if (sb->state != GW_SB_READY) {
        snprintf(why, whylen, "the sandbox is not running");
        return NULL;
    }
    if (sbx_addr_parse(sb->addr, &addr, &err) < 0 || addr.kind != SBX_ADDR_UNIX) {
        snprintf(why, whylen, "the sandbox's agent address is not a unix socket");
        return NULL;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL || (l->c = sbx_conn_new(&err)) == NULL) {
        free(l);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    l->sb = sb;
    l->loop = sb->g->loop;
    if (uv_pipe_init(l->loop, &l->pipe, 0) < 0 || uv_timer_init(l->loop, &l->idle) < 0 ||
        uv_timer_init(l->loop, &l->hello) < 0) {
        /* uv_pipe_init cannot fail on Linux without a bad loop; nothing to close then. */
        sbx_conn_free(l->c);
        free(l);
        snprintf(why, whylen, "cannot create a pipe handle");
        return NULL;
    }
    l->pipe.data = l;
    l->idle.data = l;
    l->hello.data = l;
    l->pipe_open = true;
    l->idle_open = true;
    l->hello_open = true;
    /* A gw whose options were not parsed (the fuzz targets) gets the default. */
    l->hello_ms = gw_hello_ms(sb->g);
    (void)uv_timer_start(&l->hello, on_hello_timeout, (uint64_t)l->hello_ms, 0);
    sb->link = l;
    l->connect.data = l;
    uv_pipe_connect(&l->connect, &l->pipe, addr.path, on_connect);
    idle_check(l);
    return l;
}

void gw_link_join(struct gw_link *l, struct gw_link_user *u)
{
    if (u->joined || l->ended) {
        return;
    }
    u->next = l->users;
    l->users = u;
    u->joined = true;
    u->is_up = false;
    uv_timer_stop(&l->idle);
    if (l->up) {
        u->is_up = true;
        l->in_cb++;
        u->up(u, l->c);
        l->in_cb--;
        gw_link_flush(l);
        link_maybe_free(l);
    }
}

void gw_link_leave(struct gw_link *l, struct gw_link_user *u)
{
    struct gw_link_user **pp = &l->users;

    if (!u->joined) {
        return;
    }
    while (*pp != NULL && *pp != u) {
        pp = &(*pp)->next;
    }
    if (*pp == u) {
        *pp = u->next;
    }
    u->next = NULL;
    u->joined = false;
    u->is_up = false;
    idle_check(l);
}

struct sbx_conn *gw_link_conn(struct gw_link *l)
{
    return l->up && !l->ended ? l->c : NULL;
}

struct gw_sandbox *gw_link_sandbox(struct gw_link *l)
{
    return l->sb;
}

void gw_link_close(struct gw_sandbox *sb, const char *why)
{
    if (sb->link != NULL) {
        link_end(sb->link, why);
    }
}
