/*
 * Listeners: unix and TCP sockets through libuv, AF_VSOCK through a poll handle (libuv has no
 * vsock), and virtio-serial ports, where "host not connected" is a normal, recurring state.
 */
#include "listener.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "conn.h"

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
 * True when the new connection @c (already counted) is one too many: it is then told why with an
 * error notification LIMIT max_conns and closed once that is written (PROTOCOL.md §2.1, §7.2).
 */
static bool conn_over_capacity(struct agent_conn *c)
{
    struct agent *a = c->a;
    struct sbx_err err;

    if (a->nconns <= SBX_MAX_CONNS) {
        return false;
    }
    agent_log("refusing a connection: %u connections open (cap %u)", a->nconns - 1, SBX_MAX_CONNS);
    sbx_err_limit(&err, "max_conns", SBX_MAX_CONNS, "the agent already has %u connections",
                  SBX_MAX_CONNS);
    agent_conn_refuse(c, &err);
    return true;
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
    if (r == 0 && conn_over_capacity(c)) {
        return;
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
    if (r == 0) {
        r = agent_conn_start(c);
    }
    if (r < 0) {
        agent_conn_close(c);
    }
}

static int listen_unix(struct agent *a, const char *addr, const char *path, struct sbx_err *err)
{
    struct agent_listener *l;
    int r;

    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        return sbx_err_param(err, "listen", "%s: socket path too long", addr);
    }
    l = listener_new(a, AGENT_T_UNIX, addr);
    if (l == NULL) {
        return sbx_err_oom(err);
    }
    (void)unlink(path); /* a stale socket from a previous run; a missing one is fine */
    r = uv_pipe_init(a->loop, &l->h.pipe, 0);
    l->h.handle.data = l;
    if (r == 0) {
        r = uv_pipe_bind(&l->h.pipe, path);
    }
    if (r == 0) {
        /* The socket is the agent's front door: only root (or the owner) may knock. */
        (void)chmod(path, 0600);
        r = uv_listen(&l->h.stream, 128, on_stream_connection);
    }
    if (r < 0) {
        return sbx_err_sys(err, -r, "listen", "listen on %s", addr);
    }
    return 0;
}

static int listen_tcp(struct agent *a, const char *addr, const char *hostport, struct sbx_err *err)
{
    struct agent_listener *l;
    struct sockaddr_storage ss;
    char host[256];
    const char *colon = strrchr(hostport, ':');
    char *end;
    long port;
    int r;

    if (a->token[0] == '\0') {
        return sbx_err_set(err, SBX_E_AUTH,
                           "%s: a TCP listener needs a token (--token or --token-file)", addr);
    }
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host)) {
        return sbx_err_param(err, "listen", "%s: expected tcp:HOST:PORT", addr);
    }
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535) {
        return sbx_err_param(err, "listen", "%s: bad port", addr);
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) != 0) {
        return sbx_err_param(err, "listen", "%s: HOST must be a numeric IPv4 or IPv6 address",
                             addr);
    }
    l = listener_new(a, AGENT_T_TCP, addr);
    if (l == NULL) {
        return sbx_err_oom(err);
    }
    r = uv_tcp_init(a->loop, &l->h.tcp);
    l->h.handle.data = l;
    if (r == 0) {
        r = uv_tcp_bind(&l->h.tcp, (struct sockaddr *)&ss, 0);
    }
    if (r == 0) {
        r = uv_listen(&l->h.stream, 128, on_stream_connection);
    }
    if (r < 0) {
        return sbx_err_sys(err, -r, "listen", "listen on %s", addr);
    }
    return 0;
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
    /* A serial port carries one connection at a time; max_conns does not apply to it (§2.4). */
    if (t != AGENT_T_SERIAL && conn_over_capacity(c)) {
        return NULL;
    }
    if (agent_conn_start(c) != 0) {
        agent_conn_close(c);
        return NULL;
    }
    return c;
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

static int listen_vsock(struct agent *a, const char *addr, const char *portstr, struct sbx_err *err)
{
    struct agent_listener *l;
    struct sockaddr_vm sa;
    char *end;
    unsigned long port = strtoul(portstr, &end, 10);
    int fd, r;

    if (*portstr == '\0' || *end != '\0' || port > UINT32_MAX - 1) {
        return sbx_err_param(err, "listen", "%s: expected vsock:PORT", addr);
    }
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return sbx_err_sys(err, errno, "listen", "%s: socket(AF_VSOCK)", addr);
    }
    memset(&sa, 0, sizeof(sa));
    sa.svm_family = AF_VSOCK;
    sa.svm_cid = VMADDR_CID_ANY;
    sa.svm_port = (unsigned)port;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0) {
        r = errno;
        close(fd);
        return sbx_err_sys(err, r, "listen", "listen on %s", addr);
    }
    l = listener_new(a, AGENT_T_VSOCK, addr);
    if (l == NULL) {
        close(fd);
        return sbx_err_oom(err);
    }
    l->fd = fd;
    r = uv_poll_init(a->loop, &l->h.poll, fd);
    l->h.handle.data = l;
    if (r == 0) {
        r = uv_poll_start(&l->h.poll, UV_READABLE, on_vsock_readable);
    }
    if (r < 0) {
        return sbx_err_sys(err, -r, "listen", "listen on %s", addr);
    }
    return 0;
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

int agent_listen(struct agent *a, const char *addr, struct sbx_err *err)
{
    if (strncmp(addr, "unix:", 5) == 0) {
        return listen_unix(a, addr, addr + 5, err);
    }
    if (strncmp(addr, "tcp:", 4) == 0) {
        return listen_tcp(a, addr, addr + 4, err);
    }
    if (strncmp(addr, "vsock:", 6) == 0) {
        return listen_vsock(a, addr, addr + 6, err);
    }
    if (strncmp(addr, "serial:", 7) == 0) {
        return listen_serial(a, addr, err);
    }
    return sbx_err_param(err, "listen",
                         "%s: unknown address (unix:PATH, vsock:PORT, serial:NAME, tcp:HOST:PORT)",
                         addr);
}
