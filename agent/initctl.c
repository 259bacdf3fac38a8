/*
 * The control channel to sbx-init (docs/INIT.md): a SOCK_SEQPACKET socket inherited as
 * SBX_INIT_FD, one ASCII line per datagram. init tells us the boot timings and lifetime; we tell
 * init when we are ready, how many host clients are connected, and when the host asks for a
 * shutdown or a longer lifetime.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "proc.h"
#include "session.h"

#define INITCTL_MAX 512

/* Value of "key=" in a line of space-separated key=value words; false if absent. */
static bool kv_get(const char *line, const char *key, char *out, size_t outsz)
{
    size_t klen = strlen(key);
    const char *p = line;

    while ((p = strstr(p, key)) != NULL) {
        if ((p == line || p[-1] == ' ') && p[klen] == '=') {
            size_t n = strcspn(p + klen + 1, " \n");
            if (n >= outsz) {
                return false;
            }
            memcpy(out, p + klen + 1, n);
            out[n] = '\0';
            return true;
        }
        p += klen;
    }
    return false;
}

static uint64_t kv_u64(const char *line, const char *key)
{
    char v[32];

    return kv_get(line, key, v, sizeof(v)) ? strtoull(v, NULL, 10) : 0;
}

static void answer_lifetime(struct agent *a, const char *line)
{
    char mode[16] = "none";
    uint64_t deadline = kv_u64(line, "deadline_ns");
    uint64_t now = agent_boottime_ns();
    struct agent_waiter *w;
    msgpack_packer *pk;

    (void)kv_get(line, "mode", mode, sizeof(mode));
    if (agent_list_empty(&a->lifetime_waiters)) {
        return;
    }
    w = agent_container_of(a->lifetime_waiters.next, struct agent_waiter, link);
    agent_list_del(&w->link);
    if (w->ref.conn == NULL) {
        agent_conn_ref_del(&w->ref);
        free(w);
        return;
    }
    if (w->extend && strcmp(mode, "duration") != 0) {
        struct sbx_err err;
        sbx_err_set(&err, SBX_E_UNSUPPORTED,
                    "the lifetime is \"%s\": only a duration can be "
                    "extended",
                    mode);
        agent_conn_reply_error(w->ref.conn, w->id, &err);
        agent_conn_ref_del(&w->ref);
        free(w);
        return;
    }
    pk = agent_conn_begin(w->ref.conn);
    sbx_pack_response_head(pk, w->id);
    msgpack_pack_map(pk, deadline ? 3 : 1);
    sbx_pack_kv_str(pk, "mode", mode);
    if (deadline) {
        /* init keeps the deadline on CLOCK_BOOTTIME; clients get a wall-clock instant. */
        uint64_t left = deadline > now ? deadline - now : 0;
        sbx_pack_kv_u64(pk, "deadline_ns", agent_realtime_ns() + left);
        sbx_pack_kv_u64(pk, "remaining_ms", left / 1000000u);
    }
    agent_conn_send(w->ref.conn);
    agent_conn_ref_del(&w->ref);
    free(w);
}

static void initctl_line(struct agent *a, const char *line)
{
    if (strncmp(line, "boot ", 5) == 0) {
        a->have_boot = true;
        a->boot_kernel_ns = kv_u64(line, "kernel_ns");
        a->boot_init_ns = kv_u64(line, "init_ns");
    } else if (strncmp(line, "lifetime ", 9) == 0) {
        answer_lifetime(a, line);
    } else {
        agent_log("init channel: ignoring \"%.64s\"", line);
    }
}

static void initctl_cb(uv_poll_t *h, int status, int events)
{
    struct agent *a = h->data;
    char buf[INITCTL_MAX + 1];
    ssize_t n;

    if (status < 0) {
        agent_initctl_close(a);
        return;
    }
    for (;;) {
        n = recv(a->initctl_fd, buf, INITCTL_MAX, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (n <= 0) {
            /* init went away: keep serving the host; lifetime questions get "none" from now. */
            agent_log("init channel closed");
            agent_initctl_close(a);
            return;
        }
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        initctl_line(a, buf);
    }
}

int agent_initctl_open(struct agent *a, int fd)
{
    int r = uv_poll_init(a->loop, &a->initctl_poll, fd);

    if (r < 0) {
        return r;
    }
    a->initctl_poll.data = a;
    a->initctl_fd = fd;
    a->initctl_open = true;
    return uv_poll_start(&a->initctl_poll, UV_READABLE, initctl_cb);
}

void agent_initctl_send(struct agent *a, const char *fmt, ...)
{
    char line[INITCTL_MAX];
    va_list ap;
    int n;

    if (!a->initctl_open) {
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        return;
    }
    /* Datagrams this small never block for long; if init is wedged, dropping one is better
     * than stalling every host connection. */
    if (send(a->initctl_fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        agent_log("init channel: send \"%s\": %s", line, strerror(errno));
    }
}

void agent_initctl_clients_changed(struct agent *a)
{
    agent_initctl_send(a, "clients n=%u", a->nhello);
}

static void initctl_close_cb(uv_handle_t *h)
{
    struct agent *a = h->data;

    close(a->initctl_fd);
    a->initctl_fd = -1;
}

void agent_initctl_close(struct agent *a)
{
    if (!a->initctl_open) {
        return;
    }
    a->initctl_open = false;
    /* Pending lifetime questions get an answer rather than hanging. */
    while (!agent_list_empty(&a->lifetime_waiters)) {
        answer_lifetime(a, "lifetime mode=none");
    }
    uv_close((uv_handle_t *)&a->initctl_poll, initctl_close_cb);
}
