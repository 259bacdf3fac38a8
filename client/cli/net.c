/*
 * The net family (§20): sbx forward relays local TCP connections into the guest, each through
 * one net.connect (an `in` and an `out` stream) over one agent connection, in one poll() loop;
 * sbx ports prints net.listening.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

/* Forwards on one command line, and connections relayed at once (each takes two of the agent's
 * max_streams); more wait in the listen backlog. */
#define FWD_MAX       32
#define FWD_CONNS_MAX 1024
#define FWD_BACKLOG   128
/* Bytes read from a local socket at once (also at most the `in` stream's credit). */
#define FWD_READ_MAX (64u << 10)
/* Bytes from the guest held for a local socket that does not take them. Credit bounds them by
 * the agent's stream window (1 MiB from sbx-agent); this bounds what an agent that announced a
 * huge window can make us hold. */
#define FWD_BUF_MAX (4u << 20)
/* While accepting failed (out of fds or memory): try again after this long. */
#define FWD_ACCEPT_RETRY_MS 100

/* One listening forward: BIND:LOCAL here to HOST:PORT in the guest. */
struct fwd {
    int fd;
    const char *host; /* NULL: the agent's default (127.0.0.1) */
    uint32_t port;
    char host_buf[64];
    char local[80];  /* "127.0.0.1:8080", for messages */
    char remote[80]; /* "127.0.0.1:80" */
};

/* One relayed connection. Its `out` bytes that the local socket did not take yet wait in buf;
 * they are reported consumed (granting the agent more credit) only once written, so buf stays
 * within the stream window. */
struct fconn {
    const struct fwd *f;
    int fd;
    char peer[80];
    uint32_t req;     /* the net.connect request, until answered */
    uint32_t in, out; /* the streams, once connected */
    bool connected;   /* streams established */
    bool in_done;     /* `in` ended by us (local EOF) or cancelled by the agent */
    bool out_done;    /* `out` ended or cancelled */
    bool wr_shut;     /* local write side shut down after `out` ended */
    bool failed;      /* close now (an error, said on -v) */
    uint8_t *buf;
    size_t off, len, cap;
    uint64_t bytes_in, bytes_out; /* to the guest, from the guest */
};

static struct {
    bool verbose;
    struct fwd fwds[FWD_MAX];
    size_t nfwd;
} fo;

/* The write end of the self-pipe the signal handler reports into (signal-safe global). */
static volatile int fwd_sig_w = -1;

/* --- the specs ------------------------------------------------------------------------------ */

/* A decimal port in [min, 65535]. */
static int parse_port(const char *s, uint32_t min, uint32_t *port)
{
    uint64_t v;

    if (cli_parse_u64(s, &v) < 0 || v < min || v > 65535) {
        return -1;
    }
    *port = (uint32_t)v;
    return 0;
}

/* Split @spec on ':' outside [...] into at most 4 parts (written over @buf). Returns the count,
 * or -1 for more parts or unbalanced brackets. */
static int split_spec(char *buf, char *parts[4])
{
    int n = 0, depth = 0;

    parts[n++] = buf;
    for (char *p = buf; *p != '\0'; p++) {
        if (*p == '[') {
            depth++;
        } else if (*p == ']') {
            depth--;
        } else if (*p == ':' && depth == 0) {
            if (n == 4) {
                return -1;
            }
            *p = '\0';
            parts[n++] = p + 1;
        }
        if (depth < 0 || depth > 1) {
            return -1;
        }
    }
    return depth == 0 ? n : -1;
}

/* An address literal, "[v6]" or "localhost", NUL-terminated into @out without brackets; sets
 * *@family. -1 when it is none of these. */
static int parse_host(const char *s, char *out, size_t outsz, int *family)
{
    size_t n = strlen(s);
    unsigned char a[sizeof(struct in6_addr)];

    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= outsz) {
        return -1;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    if (strcmp(out, "localhost") == 0) {
        *family = AF_INET;
        (void)snprintf(out, outsz, "127.0.0.1");
        return 0;
    }
    if (inet_pton(AF_INET, out, a) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, out, a) == 1) {
        *family = AF_INET6;
        return 0;
    }
    return -1;
}

/* "ADDR:PORT", IPv6 in brackets. */
static void format_hostport(char *buf, size_t bufsz, int family, const char *host, uint32_t port)
{
    (void)snprintf(buf, bufsz, family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

static void format_sockaddr(char *buf, size_t bufsz, const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        (void)inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        format_hostport(buf, bufsz, AF_INET6, host, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        (void)inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        format_hostport(buf, bufsz, AF_INET, host, ntohs(s4->sin_port));
    }
}

/* Listen on @family @bind:@port; the actual address (port 0 picks one) goes to f->local. */
static int listen_on(struct fwd *f, int family, const char *bind_host, uint32_t port)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    int one = 1;

    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        (void)inet_pton(AF_INET6, bind_host, &s6->sin6_addr);
        len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        (void)inet_pton(AF_INET, bind_host, &s4->sin_addr);
        len = sizeof(*s4);
    }
    f->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->fd < 0) {
        return -1;
    }
    /* Best effort: a restart right after connections closed can bind again at once; v6 only. */
    (void)setsockopt(f->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (family == AF_INET6) {
        (void)setsockopt(f->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(f->fd, (struct sockaddr *)&ss, len) < 0 || listen(f->fd, FWD_BACKLOG) < 0) {
        return -1;
    }
    len = sizeof(ss);
    if (getsockname(f->fd, (struct sockaddr *)&ss, &len) < 0) {
        return -1;
    }
    format_sockaddr(f->local, sizeof(f->local), &ss);
    return 0;
}

/* One [BIND:]LOCAL:REMOTE spec: parsed here, listened on in cli_cmd_forward. */
static struct spec {
    char bind[64];
    int bind_family;
    uint32_t local;
    int host_family;
} specs[FWD_MAX];

static int parse_spec(const char *arg, struct fwd *f, struct spec *sp)
{
    char buf[256];
    char *parts[4];
    const char *bind_s = "127.0.0.1", *local_s, *host_s = NULL, *port_s;
    int n;

    if (strlen(arg) >= sizeof(buf)) {
        return -1;
    }
    memcpy(buf, arg, strlen(arg) + 1);
    n = split_spec(buf, parts);
    if (n == 2) {
        local_s = parts[0];
        port_s = parts[1];
    } else if (n == 3 && parse_port(parts[0], 0, &sp->local) == 0) {
        local_s = parts[0]; /* LOCAL:HOST:PORT */
        host_s = parts[1];
        port_s = parts[2];
    } else if (n == 3) {
        bind_s = parts[0]; /* BIND:LOCAL:PORT */
        local_s = parts[1];
        port_s = parts[2];
    } else if (n == 4) {
        bind_s = parts[0];
        local_s = parts[1];
        host_s = parts[2];
        port_s = parts[3];
    } else {
        return -1;
    }
    if (parse_host(bind_s, sp->bind, sizeof(sp->bind), &sp->bind_family) < 0 ||
        parse_port(local_s, 0, &sp->local) < 0 || parse_port(port_s, 1, &f->port) < 0) {
        return -1;
    }
    sp->host_family = AF_INET;
    if (host_s != NULL) {
        if (parse_host(host_s, f->host_buf, sizeof(f->host_buf), &sp->host_family) < 0) {
            return -1;
        }
        f->host = f->host_buf;
    }
    format_hostport(f->remote, sizeof(f->remote), sp->host_family,
                    f->host != NULL ? f->host : "127.0.0.1", f->port);
    return 0;
}

int cli_parse_forward(struct cli *cli, int opt, const char *arg)
{
    (void)arg;
    if (opt == 'v') {
        fo.verbose = true;
        return 0;
    }
    if (opt != 0 || cli->argc == 0) {
        return CLI_OPTS_BAD;
    }
    if (cli->argc > FWD_MAX) {
        (void)fprintf(stderr, "sbx: forward: at most %d forwards at once\n", FWD_MAX);
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < cli->argc; i++) {
        struct fwd *f = &fo.fwds[i];
        f->fd = -1;
        if (parse_spec(cli->argv[i], f, &specs[i]) < 0) {
            (void)fprintf(stderr,
                          "sbx: forward: bad forward \"%s\": expected [BIND:]LOCAL:PORT or "
                          "[BIND:]LOCAL:HOST:PORT (addresses as IP literals, [v6], localhost)\n",
                          cli->argv[i]);
            return CLI_EXIT_USAGE;
        }
        fo.nfwd++;
    }
    return 0;
}

/* --- connections ---------------------------------------------------------------------------- */

struct fw {
    struct sbx_client *c;
    struct fconn **conns;
    size_t nconns;
    bool accept_paused; /* out of fds or memory: accept again once a connection closed, or after
                         * FWD_ACCEPT_RETRY_MS (a failure may pass with no connection open) */
    bool agent_in;      /* the last poll saw the agent's socket readable (or nothing polled yet) */
};

/* "sbx: forward LOCAL <- PEER: <message>" on -v. */
__attribute__((format(printf, 2, 3))) static void conn_say(const struct fconn *k, const char *fmt,
                                                           ...)
{
    char msg[512];
    va_list ap;

    if (!fo.verbose) {
        return;
    }
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cli_say("sbx: forward %s <- %s: %s\n", k->f->local, k->peer, msg);
}

static void conn_fail(struct fconn *k, const char *what, const struct sbx_err *e)
{
    if (k->failed) {
        return; /* said once */
    }
    if (e != NULL && e->code[0] != '\0' && strstr(e->msg, e->code) == NULL) {
        conn_say(k, "%s: %s (%s)", what, e->msg, e->code);
    } else {
        conn_say(k, "%s: %s", what, e != NULL ? e->msg : "failed");
    }
    k->failed = true;
}

static void conn_fail_errno(struct fconn *k, const char *what, int errnum)
{
    if (k->failed) {
        return;
    }
    conn_say(k, "%s: %s", what, strerror(errnum));
    k->failed = true;
}

/* The connection waiting for the answer to request @id; 0 (no request of ours, or answered)
 * matches none. */
static struct fconn *by_req(struct fw *w, uint32_t id)
{
    for (size_t i = 0; id != 0 && i < w->nconns; i++) {
        if (w->conns[i]->req == id && !w->conns[i]->connected) {
            return w->conns[i];
        }
    }
    return NULL;
}

static struct fconn *by_stream(struct fw *w, uint32_t sid)
{
    for (size_t i = 0; sid != 0 && i < w->nconns; i++) {
        if (w->conns[i]->in == sid || w->conns[i]->out == sid) {
            return w->conns[i];
        }
    }
    return NULL;
}

/* Accept on forward @f and ask the agent for its guest side. */
static int accept_one(struct fw *w, const struct fwd *f, struct sbx_err *err)
{
    struct sbx_net_connect_params p = { .host = f->host, .port = f->port };
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    struct fconn *k, **v;
    int fd, one = 1;

    fd = accept4(f->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            if (fo.verbose) {
                cli_say("sbx: forward %s: accept: %s\n", f->local, strerror(errno));
            }
            w->accept_paused = true;
        }
        return 0; /* EAGAIN, or a connection that died in the backlog */
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* interactive use */
    k = calloc(1, sizeof(*k));
    v = realloc(w->conns, (w->nconns + 1) * sizeof(*v));
    if (k == NULL || v == NULL) {
        free(k);
        (void)close(fd);
        w->conns = v != NULL ? v : w->conns;
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
    }
    w->conns = v;
    w->conns[w->nconns++] = k;
    k->f = f;
    k->fd = fd;
    format_sockaddr(k->peer, sizeof(k->peer), &ss);
    if (sbx_client_sent(w->c, sbx_net_connect(sbx_client_conn(w->c), &p, NULL, &k->req, err), err) <
        0) {
        /* Refused locally (LIMIT: too many requests in flight): this connection only. */
        if (strcmp(err->code, SBX_E_LIMIT) == 0 || strcmp(err->code, SBX_E_UNSUPPORTED) == 0) {
            conn_fail(k, "net.connect", err);
            k->req = 0;
            sbx_err_clear(err);
            return 0;
        }
        return -1;
    }
    return 0;
}

/* The answer to a connection's net.connect. */
/* The streams of a net.connect result, when they are new: stream ids are never reused on a
 * connection (§8.1), so ids another connection still holds are a broken agent's, and taking them
 * would route that connection's bytes here and let this one's close cancel its streams. */
static int new_streams(struct fw *w, const struct sbx_msg *m, struct sbx_net_connect_result *r,
                       struct sbx_err *e)
{
    if (sbx_net_connect_result_read(m->result, r, e) < 0) {
        return -1;
    }
    if (r->in == r->out || by_stream(w, r->in) != NULL || by_stream(w, r->out) != NULL) {
        return sbx_err_set(e, SBX_E_BAD_MESSAGE,
                           "the agent answered with streams %u and %u, ids already in use", r->in,
                           r->out);
    }
    return 0;
}

static void on_connected(struct fw *w, struct fconn *k, const struct sbx_msg *m)
{
    struct sbx_net_connect_result r;
    struct sbx_err e;

    if (m->error != NULL) {
        sbx_err_from_obj(m->error, &e);
        conn_fail(k, "net.connect", &e);
        return;
    }
    if (new_streams(w, m, &r, &e) < 0) {
        conn_fail(k, "net.connect", &e);
        return;
    }
    k->in = r.in;
    k->out = r.out;
    k->connected = true;
    conn_say(k, "connected to %s", k->f->remote);
}

/* Write what waits in k->buf to the local socket; report what went as consumed. */
static int flush_local(struct fw *w, struct fconn *k, struct sbx_err *err)
{
    while (k->len > 0) {
        ssize_t n = write(k->fd, k->buf + k->off, k->len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            break;
        }
        if (n < 0) {
            conn_fail_errno(k, "write", errno);
            return 0;
        }
        k->off += (size_t)n;
        k->len -= (size_t)n;
        if (sbx_client_consumed(w->c, k->out, (uint32_t)n, err) < 0) {
            return -1;
        }
    }
    if (k->len == 0) {
        k->off = 0;
    }
    if (k->len == 0 && k->out_done && !k->wr_shut && !k->failed) {
        /* The guest side sent its FIN: pass it on, the other direction stays open. */
        k->wr_shut = true;
        if (shutdown(k->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
            conn_fail_errno(k, "shutdown", errno);
        }
    }
    return 0;
}

/* Bytes from the guest: straight to the local socket when nothing waits, else queued. */
static int on_data(struct fw *w, struct fconn *k, const struct sbx_msg *m, struct sbx_err *err)
{
    const uint8_t *p = m->data;
    size_t n = m->data_len;

    k->bytes_out += n;
    if (k->len == 0) {
        ssize_t r;
        do {
            r = write(k->fd, p, n);
        } while (r < 0 && errno == EINTR);
        if (r < 0 && errno != EAGAIN) {
            conn_fail_errno(k, "write", errno);
            return 0;
        }
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            if (sbx_client_consumed(w->c, k->out, (uint32_t)r, err) < 0) {
                return -1;
            }
        }
    }
    if (n == 0) {
        return 0;
    }
    if (k->len + n > FWD_BUF_MAX) {
        struct sbx_err e;
        (void)sbx_err_set(&e, SBX_E_LIMIT, "more than %u bytes from the guest wait for this client",
                          FWD_BUF_MAX);
        conn_fail(k, "out", &e);
        return 0;
    }
    if (k->off + k->len + n > k->cap) {
        size_t cap = k->cap != 0 ? k->cap : 65536;
        uint8_t *b;
        if (k->off > 0) {
            memmove(k->buf, k->buf + k->off, k->len);
            k->off = 0;
        }
        while (cap < k->len + n) {
            cap *= 2;
        }
        if (cap > k->cap) {
            b = realloc(k->buf, cap);
            if (b == NULL) {
                return sbx_err_set(err, SBX_E_INTERNAL, "out of memory");
            }
            k->buf = b;
            k->cap = cap;
        }
    }
    memcpy(k->buf + k->off + k->len, p, n);
    k->len += n;
    return 0;
}

/* stream.end / stream.cancel of one of a connection's streams. */
static void on_stream_note(struct fw *w, const char *method, const struct sbx_msg *m,
                           struct sbx_err *err)
{
    struct sbx_stream_note n;
    struct fconn *k;
    struct sbx_err e;

    if (sbx_stream_note_read(method, m->params, &n, &e) < 0 ||
        (k = by_stream(w, n.stream)) == NULL) {
        return;
    }
    if (n.stream == k->in) {
        /* The agent cancelled `in`: the guest socket can take no more. */
        k->in_done = true;
        if (n.has_error) {
            conn_fail(k, "guest socket", &n.error);
        }
        return;
    }
    k->out_done = true;
    if (n.has_error) {
        conn_fail(k, "guest socket", &n.error); /* e.g. ECONNRESET: no clean half-close */
    } else if (strcmp(method, SBX_N_STREAM_CANCEL) == 0) {
        conn_fail(k, "guest socket", NULL);
    } else if (flush_local(w, k, err) < 0) {
        /* a transport error: the caller sees it on the next call */
        return;
    }
}

static int handle(struct fw *w, const struct sbx_msg *m, struct sbx_err *err)
{
    struct fconn *k;
    struct sbx_err e;

    switch (m->kind) {
    case SBX_MSG_RESPONSE:
        if ((k = by_req(w, m->id)) != NULL) {
            k->req = 0;
            if (k->failed && m->error == NULL) {
                /* The local side died meanwhile: the streams are ours to close. */
                struct sbx_net_connect_result r;
                if (new_streams(w, m, &r, &e) == 0) {
                    k->in = r.in;
                    k->out = r.out;
                }
                return 0;
            }
            on_connected(w, k, m);
        }
        return 0;
    case SBX_MSG_DATA:
        k = by_stream(w, m->stream);
        if (k == NULL || k->failed || m->stream != k->out) {
            return 0;
        }
        return on_data(w, k, m, err);
    case SBX_MSG_NOTIFY:
        if (sbx_msg_method_is(m, SBX_N_STREAM_END)) {
            on_stream_note(w, SBX_N_STREAM_END, m, err);
        } else if (sbx_msg_method_is(m, SBX_N_STREAM_CANCEL)) {
            on_stream_note(w, SBX_N_STREAM_CANCEL, m, err);
        } else if (sbx_msg_method_is(m, SBX_N_ERROR) && m->params != NULL) {
            sbx_err_from_obj(m->params, &e);
            cli_print_err("forward: agent", &e);
        }
        return 0;
    default:
        return 0;
    }
}

/* Bytes from the local socket to the guest, within the `in` stream's credit. */
static int read_local(struct fw *w, struct fconn *k, struct sbx_err *err)
{
    static uint8_t buf[FWD_READ_MAX];
    uint64_t credit = sbx_client_credit(w->c, k->in);
    size_t want = credit < sizeof(buf) ? (size_t)credit : sizeof(buf);
    ssize_t n;

    if (want == 0) {
        return 0;
    }
    n = read(k->fd, buf, want);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return 0;
    }
    if (n < 0) {
        conn_fail_errno(k, "read", errno);
        return 0;
    }
    if (n == 0) {
        /* The local client's FIN: after the bytes sent, the agent half-closes the guest side. */
        k->in_done = true;
        return sbx_client_stream_end(w->c, k->in, err);
    }
    k->bytes_in += (uint64_t)n;
    if (sbx_client_stream_write(w->c, k->in, buf, (size_t)n, err) < 0) {
        if (strcmp(err->code, SBX_E_STREAM) != 0) {
            return -1;
        }
        sbx_err_clear(err); /* cancelled by the agent meanwhile: on_stream_note says why */
        k->in_done = true;
    }
    return 0;
}

/* Done with a connection: both directions finished, or it failed (and the net.connect was
 * answered, so no streams can still appear for it). */
static bool conn_over(const struct fconn *k)
{
    if (k->req != 0) {
        return false;
    }
    return k->failed || (k->connected && k->in_done && k->out_done && k->len == 0);
}

static int conn_close(struct fw *w, size_t i, struct sbx_err *err)
{
    struct fconn *k = w->conns[i];

    /* Streams still live are cancelled: the agent then closes the guest socket (§20.1). A
     * stream that finished is a no-op here. */
    if ((k->in != 0 && sbx_client_stream_cancel(w->c, k->in, err) < 0) ||
        (k->out != 0 && sbx_client_stream_cancel(w->c, k->out, err) < 0)) {
        return -1;
    }
    if (k->connected) {
        conn_say(k, "closed, %llu bytes in, %llu out", (unsigned long long)k->bytes_in,
                 (unsigned long long)k->bytes_out);
    }
    (void)close(k->fd);
    free(k->buf);
    free(k);
    w->conns[i] = w->conns[--w->nconns];
    w->accept_paused = false;
    return 0;
}

/* --- the loop ------------------------------------------------------------------------------- */

/* The loop ends cleanly on its next round. Once only: a write to an agent that takes no bytes (a
 * paused VM) waits inside the library, so a second SIGINT or SIGTERM ends the process. */
static const int fwd_sigs[] = { SIGINT, SIGTERM };

static void on_fwd_signal(int sig)
{
    static const struct sigaction dfl = { .sa_handler = SIG_DFL };
    int saved = errno;
    char b = (char)sig;

    for (size_t i = 0; i < sizeof(fwd_sigs) / sizeof(fwd_sigs[0]); i++) {
        (void)sigaction(fwd_sigs[i], &dfl, NULL);
    }
    if (fwd_sig_w >= 0) {
        (void)!write(fwd_sig_w, &b, 1); /* a full pipe already holds enough wake-ups */
    }
    errno = saved;
}

static int fwd_signals(int *rfd)
{
    struct sigaction sa;
    int p[2];

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        return -1;
    }
    fwd_sig_w = p[1];
    *rfd = p[0];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fwd_signal;
    (void)sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fwd_sigs) / sizeof(fwd_sigs[0]); i++) {
        if (sigaction(fwd_sigs[i], &sa, NULL) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Handle what the library holds, then one poll round. 0 to go on, 1 on a signal, -1 on error. */
static int fwd_round(struct fw *w, int sig_r, struct pollfd *pfd, struct fconn **who,
                     struct sbx_err *err)
{
    size_t np = 0, nl;
    struct sbx_msg m;
    int r;

    /* The library is asked for messages only when the socket was readable or it holds some: an
     * empty read after every local read would be one more system call per request relayed.
     * Its writes never leave bytes behind (they wait), so there is nothing to flush here. */
    r = 0;
    while ((w->agent_in || sbx_client_pending(w->c)) &&
           (r = sbx_client_recv(w->c, &m, 0, err)) == 1) {
        if (handle(w, &m, err) < 0) {
            return -1;
        }
    }
    if (r < 0) {
        return -1;
    }
    w->agent_in = false;
    for (size_t i = w->nconns; i-- > 0;) {
        if (conn_over(w->conns[i]) && conn_close(w, i, err) < 0) {
            return -1;
        }
    }
    pfd[np++] = (struct pollfd){ .fd = sbx_client_fd(w->c), .events = POLLIN };
    pfd[np++] = (struct pollfd){ .fd = sig_r, .events = POLLIN };
    for (size_t i = 0; i < fo.nfwd; i++) {
        bool room = w->nconns < FWD_CONNS_MAX && !w->accept_paused;
        pfd[np++] = (struct pollfd){ .fd = room ? fo.fwds[i].fd : -1, .events = POLLIN };
    }
    nl = np;
    for (size_t i = 0; i < w->nconns; i++) {
        struct fconn *k = w->conns[i];
        short ev = 0;
        if (k->connected && !k->in_done && sbx_client_credit(w->c, k->in) > 0) {
            ev |= POLLIN;
        }
        if (k->len > 0) {
            ev |= POLLOUT;
        }
        who[i] = k;
        /* Not polled before it is connected, nor while it has nothing to do: a hang-up is
         * noticed when it next reads or writes. */
        pfd[np++] = (struct pollfd){ .fd = ev != 0 ? k->fd : -1, .events = ev };
    }
    r = poll(pfd, (nfds_t)np,
             sbx_client_poll_ms(w->c, w->accept_paused ? FWD_ACCEPT_RETRY_MS : -1));
    if (r == 0) {
        w->accept_paused = false; /* try the listeners again */
        w->agent_in = true;       /* and let the library's keepalive look (a ping, or the end) */
        return 0;
    }
    if (r < 0 && errno == EINTR) {
        return 0;
    }
    if (r < 0) {
        return sbx_err_sys(err, errno, NULL, "poll");
    }
    w->agent_in = pfd[0].revents != 0;
    if (pfd[1].revents != 0) {
        return 1;
    }
    /* Several listeners may be ready at once: the cap is checked before each accept, as the
     * poll set above was sized for FWD_CONNS_MAX connections. */
    for (size_t i = 0; i < fo.nfwd && w->nconns < FWD_CONNS_MAX; i++) {
        if (pfd[2 + i].fd >= 0 && pfd[2 + i].revents != 0 && accept_one(w, &fo.fwds[i], err) < 0) {
            return -1;
        }
    }
    for (size_t i = nl; i < np; i++) {
        struct fconn *k = who[i - nl];
        if (pfd[i].fd < 0 || pfd[i].revents == 0 || k->failed) {
            continue;
        }
        if ((pfd[i].revents & (POLLOUT | POLLERR | POLLHUP)) != 0 && k->len > 0 &&
            flush_local(w, k, err) < 0) {
            return -1;
        }
        if ((pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0 && !k->failed &&
            (pfd[i].events & POLLIN) != 0 && read_local(w, k, err) < 0) {
            return -1;
        }
    }
    return 0;
}

int cli_cmd_forward(struct cli *cli, struct sbx_client *c)
{
    struct fw w = { .c = c, .agent_in = true };
    struct pollfd *pfd = NULL;
    struct fconn **who = NULL;
    struct sbx_err err;
    int status = 0, sig_r = -1, r = 0;

    (void)cli;
    sbx_err_clear(&err);
    if (!sbx_client_has_cap(c, "net")) {
        (void)fprintf(stderr, "sbx: forward: the agent does not support net.connect "
                              "(capability \"net\")\n");
        return CLI_EXIT_FAIL;
    }
    pfd = calloc(2 + FWD_MAX + FWD_CONNS_MAX, sizeof(*pfd));
    who = calloc(FWD_CONNS_MAX, sizeof(*who));
    if (pfd == NULL || who == NULL || fwd_signals(&sig_r) < 0) {
        (void)fprintf(stderr, "sbx: forward: %s\n", strerror(errno));
        status = CLI_EXIT_FAIL;
        goto out;
    }
    for (size_t i = 0; i < fo.nfwd; i++) {
        struct fwd *f = &fo.fwds[i];
        char want[80];
        format_hostport(want, sizeof(want), specs[i].bind_family, specs[i].bind, specs[i].local);
        if (listen_on(f, specs[i].bind_family, specs[i].bind, specs[i].local) < 0) {
            (void)fprintf(stderr, "sbx: forward: listen on %s: %s\n", want, strerror(errno));
            status = CLI_EXIT_FAIL;
            goto out;
        }
        (void)fprintf(stderr, "sbx: forward %s -> %s\n", f->local, f->remote);
    }
    while ((r = fwd_round(&w, sig_r, pfd, who, &err)) == 0) {
    }
    if (r < 0) {
        cli_print_err("forward", &err);
        status = CLI_EXIT_FAIL;
    }
out:
    while (w.nconns > 0) {
        struct fconn *k = w.conns[--w.nconns];
        (void)close(k->fd);
        free(k->buf);
        free(k);
    }
    free(w.conns);
    for (size_t i = 0; i < fo.nfwd; i++) {
        if (fo.fwds[i].fd >= 0) {
            (void)close(fo.fwds[i].fd);
        }
    }
    if (sig_r >= 0) {
        int wfd = fwd_sig_w;
        fwd_sig_w = -1;
        (void)close(sig_r);
        (void)close(wfd);
    }
    free(pfd);
    free(who);
    return status;
}

/* --- sbx ports ------------------------------------------------------------------------------ */

int cli_print_ports(const struct cli *cli, const msgpack_object *res, struct sbx_err *err)
{
    const msgpack_object *socks = NULL, *trunc;
    struct sbx_listening l;
    int width = 4;

    if (sbx_param_array(res, "sockets", SBX_REQUIRED, UINT32_MAX, &socks, err) < 0) {
        return -1;
    }
    if (cli->json) {
        cli_json_println(res);
        return 0;
    }
    for (uint32_t i = 0; i < socks->via.array.size; i++) {
        if (sbx_listening_read(&socks->via.array.ptr[i], &l, err) < 0) {
            return -1;
        }
        if ((int)l.addr_len > width) {
            width = (int)l.addr_len;
        }
    }
    (void)printf("%-5s %-*s %-5s %s\n", "PROTO", width, "ADDR", "PORT", "PID");
    for (uint32_t i = 0; i < socks->via.array.size; i++) {
        (void)sbx_listening_read(&socks->via.array.ptr[i], &l, err); /* checked above */
        char proto[4 * 16], addr[4 * 64];
        (void)cli_escape(proto, sizeof(proto), l.proto, l.proto_len);
        (void)cli_escape(addr, sizeof(addr), l.addr, l.addr_len);
        (void)printf("%-5s %-*s %-5u ", proto, width, addr, l.port);
        if (l.has_pid) {
            (void)printf("%u\n", l.pid);
        } else {
            (void)printf("-\n");
        }
    }
    trunc = sbx_obj_get(res, "truncated");
    if (trunc != NULL && trunc->type == MSGPACK_OBJECT_BOOLEAN && trunc->via.boolean) {
        (void)fprintf(stderr, "sbx: ports: the agent listed only the first %u sockets\n",
                      socks->via.array.size);
    }
    return 0;
}
