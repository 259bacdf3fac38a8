/*
 * Listeners: unix and TCP sockets through libuv, AF_VSOCK through a poll handle (libuv has no
 * vsock), and virtio-serial ports, where "host not connected" is a normal, recurring state.
 */
#include "listener.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"
#include "listen.h"

#define SERIAL_RETRY_MS 100

static struct agent_listener *listener_new(struct agent *a, enum agent_transport t,
                                           const char *addr)
{
    struct agent_listener *l = calloc(1, sizeof(*l));

    if (l == NULL) {
        return NULL;
    }
    l->a = a;
    l->transport = t;
    l->fd = -1;
    (void)snprintf(l->addr, sizeof(l->addr), "%s", addr);
    agent_list_add_tail(&a->listeners, &l->link);
    return l;
}

/*
 * A bigger send buffer on connection sockets: with the default (~208 KiB) the agent's writes of
 * 256 KiB chunks block half-way and every chunk costs extra wakeups; 1 MiB measured +10 % stdout
 * throughput. SO_SNDBUFFORCE passes net.core.wmem_max (the agent runs as root in the guest);
 * plain SO_SNDBUF is the fallback, and failing both only costs speed.
 */
static void conn_tune_socket(int fd)
{
    int sz = 1 << 20;

    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
}

static void on_stream_connection(uv_stream_t *server, int status)
{
    struct agent_listener *l = server->data;
    struct agent *a = l->a;
    struct agent_conn *c;
    int r;

    if (status < 0) {
        agent_log("%s: accept: %s", l->addr, uv_strerror(status));
        return;
    }
    c = agent_conn_new(a, l->transport);
    if (c == NULL) {
        agent_log("%s: out of memory", l->addr);
        return;
    }
    if (l->transport == AGENT_T_TCP) {
        r = uv_tcp_init(a->loop, &c->h.tcp);
    } else {
        r = uv_pipe_init(a->loop, &c->h.pipe, 0);
    }
    c->h.handle.data = c;
    if (r == 0) {
        r = uv_accept(server, &c->h.stream);
    }
    if (r == 0 && l->transport == AGENT_T_TCP) {
        (void)uv_tcp_nodelay(&c->h.tcp, 1); /* latency matters more than packet count */
    }
    if (r == 0) {
        uv_os_fd_t fd;
        if (uv_fileno(&c->h.handle, &fd) == 0) {
            conn_tune_socket(fd);
        }
    }
    if (r < 0) {
        agent_conn_close(c);
        return;
    }
    (void)agent_conn_admit(c); /* or refused: it closes by itself */
}

/* Wrap a connected fd (vsock or serial) in a connection. */
static struct agent_conn *conn_from_fd(struct agent *a, enum agent_transport t, int fd)
{
    struct agent_conn *c = agent_conn_new(a, t);

    if (c == NULL) {
        close(fd);
        return NULL;
    }
    if (uv_pipe_init(a->loop, &c->h.pipe, 0) != 0) {
        close(fd);
        agent_list_del(&c->link); /* never became a handle: undo by hand */
        a->nconns--;
        sbx_framer_free(&c->framer);
        sbx_decoder_destroy(&c->dec);
        sbx_out_destroy(&c->out);
        agent_slab_release(a, c->slab);
        free(c);
        return NULL;
    }
    c->h.handle.data = c;
    if (uv_pipe_open(&c->h.pipe, fd) != 0) {
        close(fd);
        agent_conn_close(c);
        return NULL;
    }
    return agent_conn_admit(c) == 0 ? c : NULL;
}

static void on_vsock_readable(uv_poll_t *h, int status, int events)
{
    struct agent_listener *l = h->data;
    struct agent *a = l->a;

    if (status < 0) {
        agent_log("%s: poll: %s", l->addr, uv_strerror(status));
        return;
    }
    for (;;) {
        struct sockaddr_vm peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                agent_log("%s: accept: %s", l->addr, strerror(errno));
            }
            return;
        }
        /* Anyone inside the guest can reach a vsock port through loopback (CID 1): only the
         * host (CID 2) may drive the agent, unless local peers were explicitly allowed. */
        if (peer.svm_cid != VMADDR_CID_HOST &&
            !(a->vsock_allow_local && peer.svm_cid == VMADDR_CID_LOCAL)) {
            agent_log("%s: refusing a connection from CID %u", l->addr, peer.svm_cid);
            close(fd);
            continue;
        }
        conn_tune_socket(fd);
        (void)conn_from_fd(a, AGENT_T_VSOCK, fd);
    }
}

/* Find /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is @name (no udev here). */
static int serial_find(const char *name, char *dev, size_t devsz)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *de;
    int found = -1;

    if (d == NULL) {
        return -1;
    }
    while (found < 0 && (de = readdir(d)) != NULL) {
        char path[512], buf[256];
        FILE *fp;
        if (de->d_name[0] == '.') {
            continue;
        }
        (void)snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
        fp = fopen(path, "re");
        if (fp == NULL) {
            continue;
        }
        if (fgets(buf, sizeof(buf), fp) != NULL) {
            buf[strcspn(buf, "\n")] = '\0';
            if (strcmp(buf, name) == 0) {
                (void)snprintf(dev, devsz, "/dev/%s", de->d_name);
                found = 0;
            }
        }
        fclose(fp);
    }
    closedir(d);
    return found;
}

static void serial_try(uv_timer_t *t)
{
    struct agent_listener *l = t->data;
    struct pollfd pfd;
    const char *name = l->addr + strlen("serial:");

    if (l->closing || l->serial_conn != NULL) {
        return;
    }
    if (l->fd < 0) {
        if (l->path[0] == '\0' || name[0] != '/') {
            if (name[0] == '/') {
                (void)snprintf(l->path, sizeof(l->path), "%s", name);
            } else if (serial_find(name, l->path, sizeof(l->path)) < 0) {
                l->path[0] = '\0';
                uv_timer_start(&l->retry, serial_try, 500, 0); /* the driver may still load */
                return;
            }
        }
        l->fd = open(l->path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (l->fd < 0) {
            agent_log("%s: open %s: %s", l->addr, l->path, strerror(errno));
            uv_timer_start(&l->retry, serial_try, 1000, 0);
            return;
        }
    }
    /* POLLHUP means no host is connected to the port's chardev right now. virtio_console also
     * reports POLLIN then (a read would return 0 at once), so POLLIN must not count. */
    pfd.fd = l->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) >= 0 && (pfd.revents & POLLHUP)) {
        uv_timer_start(&l->retry, serial_try, SERIAL_RETRY_MS, 0);
        return;
    }
    l->serial_conn = conn_from_fd(l->a, AGENT_T_SERIAL, l->fd);
    l->fd = -1; /* the connection owns it now */
    if (l->serial_conn == NULL) {
        uv_timer_start(&l->retry, serial_try, 1000, 0);
        return;
    }
    l->serial_conn->listener = l;
}

void agent_listener_serial_gone(struct agent_listener *l)
{
    l->serial_conn = NULL;
    if (!l->closing) {
        uv_timer_start(&l->retry, serial_try, SERIAL_RETRY_MS, 0);
    }
}

static int listen_serial(struct agent *a, const char *addr, struct sbx_err *err)
{
    struct agent_listener *l;

    if (addr[strlen("serial:")] == '\0') {
        return sbx_err_param(err, "listen", "%s: expected serial:NAME or serial:/dev/PATH", addr);
    }
    l = listener_new(a, AGENT_T_SERIAL, addr);
    if (l == NULL) {
        return sbx_err_oom(err);
    }
    uv_timer_init(a->loop, &l->retry);
    l->retry.data = l;
    uv_timer_start(&l->retry, serial_try, 0, 0);
    return 0;
}

/*
 * Serve listening socket @fd (ours from here: closed on failure) of @addr, parsed into @la:
 * unix and TCP through libuv, vsock through a poll handle. The fd stays close-on-exec, so no
 * process the agent starts inherits it.
 */
static int listener_adopt(struct agent *a, const char *addr, const struct sbx_listen_addr *la,
                          int fd, struct sbx_err *err)
{
    static const enum agent_transport transports[] = {
        [SBX_LISTEN_UNIX] = AGENT_T_UNIX,
        [SBX_LISTEN_TCP] = AGENT_T_TCP,
        [SBX_LISTEN_VSOCK] = AGENT_T_VSOCK,
    };
    struct agent_listener *l;
    int r;

    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || (r = fcntl(fd, F_GETFL)) < 0 ||
        fcntl(fd, F_SETFL, r | O_NONBLOCK) < 0) {
        r = errno;
        close(fd);
        return sbx_err_sys(err, r, "listen", "listen on %s", addr);
    }
    l = listener_new(a, transports[la->kind], addr);
    if (l == NULL) {
        close(fd);
        return sbx_err_oom(err);
    }
    if (la->kind == SBX_LISTEN_VSOCK) {
        l->fd = fd; /* libuv has no AF_VSOCK: accept4 when the poll handle says readable */
        r = uv_poll_init(a->loop, &l->h.poll, fd);
        l->h.handle.data = l;
        if (r == 0) {
            r = uv_poll_start(&l->h.poll, UV_READABLE, on_vsock_readable);
        }
    } else {
        r = la->kind == SBX_LISTEN_TCP ? uv_tcp_init(a->loop, &l->h.tcp)
                                       : uv_pipe_init(a->loop, &l->h.pipe, 0);
        l->h.handle.data = l;
        if (r == 0) {
            r = la->kind == SBX_LISTEN_TCP ? uv_tcp_open(&l->h.tcp, fd)
                                           : uv_pipe_open(&l->h.pipe, fd);
        }
        if (r < 0) {
            close(fd); /* libuv did not take it */
        } else {
            r = uv_listen(&l->h.stream, SBX_LISTEN_BACKLOG, on_stream_connection);
        }
    }
    if (r < 0) {
        return sbx_err_sys(err, -r, "listen", "listen on %s", addr);
    }
    return 0;
}

/* TCP needs the token clients must give (§2.6). */
static int tcp_needs_token(const char *addr, struct sbx_err *err)
{
    return sbx_err_set(err, SBX_E_AUTH,
                       "%s: a TCP listener needs a token (--token-file, SBX_AGENT_TOKEN)", addr);
}

int agent_listen(struct agent *a, const char *addr, struct sbx_err *err)
{
    struct sbx_listen_addr la;
    const char *why;
    int fd;

    if (strncmp(addr, "tcp:", 4) == 0 && a->token[0] == '\0') {
        return tcp_needs_token(addr, err);
    }
    if ((why = sbx_listen_parse(addr, &la)) != NULL) {
        return sbx_err_param(err, "listen", "%s: %s", addr, why);
    }
    if (la.kind == SBX_LISTEN_SERIAL) {
        return listen_serial(a, addr, err);
    }
    if ((fd = sbx_listen_open(&la)) < 0) {
        return sbx_err_sys(err, -fd, "listen", "listen on %s", addr);
    }
    return listener_adopt(a, addr, &la, fd, err);
}

int agent_listen_fd(struct agent *a, const char *spec, struct sbx_err *err)
{
    struct sbx_listen_addr la;
    const char *addr = strchr(spec, '='), *why;
    char *end;
    long fd;
    int r;

    errno = 0;
    fd = strtol(spec, &end, 10);
    if (addr == NULL || end != addr || spec[0] < '0' || spec[0] > '9' || errno != 0 || fd < 3 ||
        fd > INT_MAX) {
        return sbx_err_param(err, "listen", "--listen-fd %s: expected FD=ADDR, FD 3 or more", spec);
    }
    addr++;
    /* Before anything can fail: whatever happens to it, no child may inherit it. */
    if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0) {
        return sbx_err_sys(err, errno, "listen", "--listen-fd %s: fd %ld", spec, fd);
    }
    if ((why = sbx_listen_parse(addr, &la)) != NULL) {
        return sbx_err_param(err, "listen", "%s: %s", addr, why);
    }
    if (la.kind == SBX_LISTEN_SERIAL) {
        return sbx_err_param(err, "listen", "--listen-fd %s: a serial port is not a socket", spec);
    }
    /* Not ours to close unless it is what it claims to be. */
    if ((r = sbx_listen_check((int)fd, &la)) < 0) {
        return sbx_err_sys(err, -r, "listen", "--listen-fd %s: not a socket listening on %s", spec,
                           addr);
    }
    if (la.kind == SBX_LISTEN_TCP && a->token[0] == '\0') {
        close((int)fd);
        return tcp_needs_token(addr, err);
    }
    return listener_adopt(a, addr, &la, (int)fd, err);
}
