/* ctl.c: the init <-> agent control channel, one ASCII line per SOCK_SEQPACKET datagram. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"

struct init_args {
    int n;
    const char *key[INIT_CTL_ARGS], *value[INIT_CTL_ARGS];
};

static __attribute__((format(printf, 2, 3))) void ctl_send(struct init_state *st, const char *fmt,
                                                           ...)
{
    char buf[INIT_CTL_MAX + 1];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* Non-blocking: a wedged agent must never stall PID 1. */
    if (st->ctl >= 0 && n > 0 && n <= INIT_CTL_MAX &&
        send(st->ctl, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) != n) {
        init_log("ctl: send \"%.40s\": %m", buf);
    }
}

static const char *value(const struct init_args *a, const char *key)
{
    for (int i = 0; i < a->n; i++) {
        if (strcmp(a->key[i], key) == 0) {
            return a->value[i];
        }
    }
    return NULL;
}

/* Answers "extend" and "lifetime?": the agent pairs each question with one reply. */
static void reply_lifetime(struct init_state *st, const struct init_args *a)
{
    /* Only the lifetime mode's own timer is ever set: deadline_ns or session_ns, or none. */
    ctl_send(st, "lifetime mode=%s deadline_ns=%lld", init_lifetime_names[st->cfg.lifetime],
             (long long)(st->deadline_ns != 0 ? st->deadline_ns : st->session_ns));
}

void init_ctl_send_boot(struct init_state *st, int64_t exec_ns)
{
    char secs[24];

    snprintf(secs, sizeof(secs), "%lld", (long long)st->cfg.lifetime_s);
    ctl_send(st, "boot kernel_ns=%lld init_ns=%lld lifetime=%s deadline_ns=%lld",
             (long long)st->start_ns, (long long)exec_ns,
             st->cfg.lifetime == INIT_LIFETIME_DURATION ? secs
                                                        : init_lifetime_names[st->cfg.lifetime],
             (long long)st->deadline_ns);
}

void init_set_clients(struct init_state *st, int n)
{
    bool session = st->cfg.lifetime == INIT_LIFETIME_SESSION;

    if (session && n > 0 && st->session_ns != 0) {
        st->session_ns = 0;
        init_log("lifetime: a client connected; session timer stopped");
    } else if (session && n == 0 && st->clients > 0) {
        /* Armed only on the way down: a VM nobody has connected to yet stays up. */
        st->session_ns = init_now(CLOCK_BOOTTIME) + st->cfg.session_grace_s * INIT_NSEC;
        init_log("lifetime: last client left; power off in %llds unless one connects",
                 (long long)st->cfg.session_grace_s);
    }
    st->clients = n;
}

static void on_ready(struct init_state *st, const struct init_args *a)
{
    int64_t now = init_now(CLOCK_BOOTTIME);

    st->agent_ready = true;
    st->start_failures = 0;
    init_log("agent ready (pid %d): %.6fs after init started, %.6fs after boot", (int)st->agent.pid,
             (double)(now - st->start_ns) / INIT_NSEC, (double)now / INIT_NSEC);
}

static void on_clients(struct init_state *st, const struct init_args *a)
{
    long long n = init_parse_uint(value(a, "n"), 1 << 20);

    if (n < 0) {
        init_log("ctl: clients: n= missing or not a number; ignored");
        return;
    }
    init_log("agent: %lld host client(s) connected", n);
    init_set_clients(st, (int)n);
}

static void on_extend(struct init_state *st, const struct init_args *a)
{
    long long s = init_parse_uint(value(a, "seconds"), INIT_DURATION_MAX_S);
    int64_t now = init_now(CLOCK_BOOTTIME);

    if (s < 0) {
        init_log("ctl: extend: seconds= missing or not a number; ignored");
    } else if (st->cfg.lifetime != INIT_LIFETIME_DURATION) {
        init_log("ctl: extend: lifetime is not a duration; ignored");
    } else {
        /* From the later of now and the current deadline: extending never shortens. */
        st->deadline_ns = (st->deadline_ns > now ? st->deadline_ns : now) + s * INIT_NSEC;
        init_log("lifetime: extended by %llds; power off in %.3fs", s,
                 (double)(st->deadline_ns - now) / INIT_NSEC);
    }
    reply_lifetime(st, a); /* always, even when ignored */
}

static void on_shutdown(struct init_state *st, const struct init_args *a)
{
    const char *action = value(a, "action") ? value(a, "action") : "poweroff";

    if (strcmp(action, "poweroff") == 0 || strcmp(action, "reboot") == 0) {
        init_request_shutdown(st, action[0] == 'r' ? INIT_REBOOT : INIT_POWEROFF,
                              "asked by the agent");
    } else {
        init_log("ctl: shutdown: action=\"%.20s\" is not poweroff or reboot; ignored", action);
    }
}

static const struct {
    const char *verb;
    void (*handle)(struct init_state *st, const struct init_args *a);
} init_verbs[] = {
    { "ready", on_ready },       { "clients", on_clients },       { "extend", on_extend },
    { "shutdown", on_shutdown }, { "lifetime?", reply_lifetime },
};

/* Parses and dispatches one datagram of `len` bytes (NUL-terminated in buf). */
static void handle(struct init_state *st, char *buf, size_t len)
{
    struct init_args a = { 0 };
    char *save = NULL, *verb, *tok, *eq;

    for (size_t i = 0; i < len; i++) {
        if (buf[i] < 0x20 || buf[i] > 0x7e) {
            init_log("ctl: message with a control or non-ASCII byte; ignored");
            return;
        }
    }
    if ((verb = strtok_r(buf, " ", &save)) == NULL) {
        init_log("ctl: empty message; ignored");
        return;
    }
    while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
        if ((eq = strchr(tok, '=')) == NULL || eq == tok || a.n == INIT_CTL_ARGS) {
            init_log("ctl: %.20s: bad argument \"%.40s\"; ignored", verb, tok);
            continue;
        }
        *eq = '\0';
        a.key[a.n] = tok;
        a.value[a.n++] = eq + 1;
    }
    for (size_t i = 0; i < sizeof(init_verbs) / sizeof(init_verbs[0]); i++) {
        if (strcmp(init_verbs[i].verb, verb) == 0) {
            init_verbs[i].handle(st, &a);
            return;
        }
    }
    init_log("ctl: unknown verb \"%.40s\"; ignored", verb);
}

void init_ctl_read(struct init_state *st)
{
    char buf[INIT_CTL_MAX + 1];

    while (st->ctl >= 0) {
        /* MSG_TRUNC: the real length, so an oversized datagram is dropped whole, not cut short. */
        ssize_t n = recv(st->ctl, buf, INIT_CTL_MAX, MSG_DONTWAIT | MSG_TRUNC);
        struct pollfd p = { st->ctl, POLLIN, 0 };

        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return; /* EINTR: the main loop comes back */
        }
        /* 0 is an empty datagram or the agent's end closing: only poll can tell which. */
        if (n < 0 || (n == 0 && poll(&p, 1, 0) >= 0 && (p.revents & POLLHUP))) {
            if (n < 0 && errno != ECONNRESET) {
                init_log("ctl: recv: %m; closing the channel");
            }
            close(st->ctl); /* the agent's exit itself is handled by reaping */
            st->ctl = -1;
            return;
        }
        if (n > INIT_CTL_MAX) {
            init_log("ctl: message of %zd bytes (max %d); ignored", n, INIT_CTL_MAX);
            continue;
        }
        n -= n > 0 && buf[n - 1] == '\n';
        buf[n] = '\0';
        handle(st, buf, (size_t)n);
    }
}
