/* Addresses: parse unix:/vsock:/fc:/tcp: strings and connect to them with a deadline. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* The longest reply line of a hybrid-vsock handshake we accept ("OK 1073741824\n" is 14). */
#define FC_LINE_MAX 64

/* Decimal uint32, no sign, no spaces, not empty. */
static int parse_u32(const char *s, size_t n, uint32_t *out)
{
    uint64_t v = 0;

    if (n == 0 || n > 10) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > UINT32_MAX) {
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int bad_addr(struct sbx_err *err, const char *s, const char *why)
{
    return sbx_err_param(err, "addr", "bad address \"%s\": %s", s, why);
}

/* Split "LEFT:PORT" at the last colon into @left (NUL-terminated, < leftsz) and a port. */
static int split_port(const char *full, const char *rest, char *left, size_t leftsz, uint32_t *port,
                      struct sbx_err *err)
{
    const char *colon = strrchr(rest, ':');
    size_t n;

    if (colon == NULL) {
        return bad_addr(err, full, "missing :PORT");
    }
    n = (size_t)(colon - rest);
    if (n == 0) {
        return bad_addr(err, full, "empty path or host before :PORT");
    }
    if (n >= leftsz) {
        return bad_addr(err, full, "path or host too long");
    }
    if (parse_u32(colon + 1, strlen(colon + 1), port) < 0) {
        return bad_addr(err, full, "PORT must be a decimal number up to 4294967295");
    }
    memcpy(left, rest, n);
    left[n] = '\0';
    return 0;
}

int sbx_addr_parse(const char *s, struct sbx_addr *a, struct sbx_err *err)
{
    memset(a, 0, sizeof(*a));
    if (s == NULL || s[0] == '\0') {
        return sbx_err_param(err, "addr", "empty address");
    }
    if (strncmp(s, "unix:", 5) == 0) {
        const char *p = s + 5;
        size_t n = strlen(p);
        a->kind = SBX_ADDR_UNIX;
        if (n == 0 || (p[0] == '@' && n == 1)) {
            return bad_addr(err, s, "empty socket path");
        }
        if (n >= sizeof(a->path)) {
            return bad_addr(err, s, "socket path longer than 107 bytes");
        }
        memcpy(a->path, p, n + 1);
        return 0;
    }
    if (strncmp(s, "vsock:", 6) == 0) {
        const char *p = s + 6;
        const char *colon = strchr(p, ':');
        a->kind = SBX_ADDR_VSOCK;
        if (colon == NULL || parse_u32(p, (size_t)(colon - p), &a->cid) < 0 ||
            parse_u32(colon + 1, strlen(colon + 1), &a->port) < 0) {
            return bad_addr(err, s, "expected vsock:CID:PORT with decimal numbers");
        }
        return 0;
    }
    if (strncmp(s, "fc:", 3) == 0) {
        a->kind = SBX_ADDR_FC;
        return split_port(s, s + 3, a->path, sizeof(a->path), &a->port, err);
    }
    if (strncmp(s, "tcp:", 4) == 0) {
        size_t n;
        a->kind = SBX_ADDR_TCP;
        if (split_port(s, s + 4, a->host, sizeof(a->host), &a->port, err) < 0) {
            return -1;
        }
        if (a->port == 0 || a->port > 65535) {
            return bad_addr(err, s, "TCP port must be 1..65535");
        }
        n = strlen(a->host);
        if (a->host[0] == '[') {
            if (n < 3 || a->host[n - 1] != ']') {
                return bad_addr(err, s, "unbalanced [ ] around the host");
            }
            memmove(a->host, a->host + 1, n - 2);
            a->host[n - 2] = '\0';
        } else if (strchr(a->host, ':') != NULL) {
            return bad_addr(err, s, "write an IPv6 host in brackets: tcp:[::1]:PORT");
        }
        return 0;
    }
    return bad_addr(err, s, "expected unix:PATH, vsock:CID:PORT, fc:PATH:PORT or tcp:HOST:PORT");
}

/* connect() a non-blocking socket, waiting for completion until @deadline. */
static int connect_deadline(int fd, const struct sockaddr *sa, socklen_t salen, int64_t deadline,
                            const char *addr, struct sbx_err *err)
{
    for (;;) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        int r;

        if (connect(fd, sa, salen) == 0) {
            return 0;
        }
        if (errno == EAGAIN) {
            /* A unix listener's backlog is full: retry shortly, within the deadline. */
            if (deadline >= 0 && sbx__remaining(deadline) == 0) {
                return sbx_err_sys(err, ETIMEDOUT, NULL, "connect %s (listen backlog full)", addr);
            }
            (void)poll(NULL, 0, 10); /* a plain sleep; nothing to watch */
            continue;
        }
        if (errno != EINPROGRESS && errno != EINTR) {
            return sbx_err_sys(err, errno, NULL, "connect %s", addr);
        }
        do {
            r = poll(&pfd, 1, sbx__remaining(deadline));
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
            return sbx_err_sys(err, errno, NULL, "connect %s: poll", addr);
        }
        if (r == 0) {
            return sbx_err_sys(err, ETIMEDOUT, NULL, "connect %s", addr);
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
            return sbx_err_sys(err, errno, NULL, "connect %s: getsockopt", addr);
        }
        if (soerr != 0) {
            return sbx_err_sys(err, soerr, NULL, "connect %s", addr);
        }
        return 0;
    }
}

static int connect_unix_path(const char *path, int64_t deadline, const char *addr,
                             struct sbx_err *err)
{
    struct sockaddr_un sun;
    socklen_t len;
    size_t n = strlen(path);
    int fd;

    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (n >= sizeof(sun.sun_path)) {
        return sbx_err_param(err, "addr", "bad address \"%s\": socket path too long", addr);
    }
    if (path[0] == '@') {
        /* Abstract namespace: a leading NUL and no terminator. */
        memcpy(sun.sun_path + 1, path + 1, n - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        memcpy(sun.sun_path, path, n);
        len = (socklen_t)sizeof(sun);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return sbx_err_sys(err, errno, NULL, "socket for %s", addr);
    }
    if (connect_deadline(fd, (struct sockaddr *)&sun, len, deadline, addr, err) < 0) {
        (void)close(fd); /* nothing to report beyond the connect error */
        return -1;
    }
    return fd;
}

static int connect_vsock(const struct sbx_addr *a, int64_t deadline, const char *addr,
                         struct sbx_err *err)
{
    struct sockaddr_vm svm;
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) {
        return sbx_err_sys(err, errno, NULL, "socket for %s (is vsock available on this host?)",
                           addr);
    }
    memset(&svm, 0, sizeof(svm));
    svm.svm_family = AF_VSOCK;
    svm.svm_cid = a->cid;
    svm.svm_port = a->port;
    if (connect_deadline(fd, (struct sockaddr *)&svm, sizeof(svm), deadline, addr, err) < 0) {
        (void)close(fd);
        return -1;
    }
    return fd;
}

static int connect_tcp(const struct sbx_addr *a, int64_t deadline, const char *addr,
                       struct sbx_err *err)
{
    struct addrinfo hints, *res = NULL;
    char port[16];
    int r, fd = -1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    (void)snprintf(port, sizeof(port), "%u", a->port);
    r = getaddrinfo(a->host, port, &hints, &res);
    if (r != 0) {
        if (r == EAI_SYSTEM) {
            return sbx_err_sys(err, errno, NULL, "resolve %s", addr);
        }
        return sbx_err_set(err, "EADDRNOTAVAIL", "resolve %s: %s", addr, gai_strerror(r));
    }
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int one = 1;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            (void)sbx_err_sys(err, errno, NULL, "socket for %s", addr);
            continue;
        }
        if (connect_deadline(fd, ai->ai_addr, ai->ai_addrlen, deadline, addr, err) == 0) {
            if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
                (void)sbx_err_sys(err, errno, NULL, "TCP_NODELAY on %s", addr);
                (void)close(fd);
                fd = -1;
                break;
            }
            break;
        }
        (void)close(fd); /* err already says why; try the next address */
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Write all of @s to a non-blocking fd before @deadline. */
static int write_str_deadline(int fd, const char *s, int64_t deadline, const char *addr,
                              struct sbx_err *err)
{
    size_t n = strlen(s), off = 0;

    while (off < n) {
        ssize_t w = send(fd, s + off, n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            int r = poll(&pfd, 1, sbx__remaining(deadline));
            if (r == 0) {
                return sbx_err_sys(err, ETIMEDOUT, NULL, "%s: handshake", addr);
            }
            continue;
        }
        return sbx_err_sys(err, errno, NULL, "%s: handshake write", addr);
    }
    return 0;
}

/*
 * The Firecracker / Cloud Hypervisor host side of hybrid vsock: "CONNECT <port>\n", then one
 * line that must start with "OK ". Read byte by byte so not one byte of the protocol that
 * follows is consumed here.
 */
static int fc_handshake(int fd, uint32_t port, int64_t deadline, const char *addr,
                        struct sbx_err *err)
{
    char line[FC_LINE_MAX + 1];
    size_t n = 0;

    (void)snprintf(line, sizeof(line), "CONNECT %u\n", port);
    if (write_str_deadline(fd, line, deadline, addr, err) < 0) {
        return -1;
    }
    for (;;) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r == 1) {
            if (ch == '\n') {
                break;
            }
            if (n == FC_LINE_MAX) {
                return sbx_err_set(err, "EPROTO", "%s: hybrid vsock handshake reply too long",
                                   addr);
            }
            line[n++] = ch;
            continue;
        }
        if (r == 0) {
            return sbx_err_set(err, "ECONNREFUSED",
                               "%s: the VMM closed the connection during the handshake "
                               "(nothing listening on guest port %u?)",
                               addr, port);
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            struct pollfd pfd = { .fd = fd, .events = POLLIN };
            if (poll(&pfd, 1, sbx__remaining(deadline)) == 0) {
                return sbx_err_sys(err, ETIMEDOUT, NULL, "%s: waiting for the handshake reply",
                                   addr);
            }
            continue;
        }
        return sbx_err_sys(err, errno, NULL, "%s: handshake read", addr);
    }
    line[n] = '\0';
    if (n > 0 && line[n - 1] == '\r') {
        line[--n] = '\0';
    }
    if (strncmp(line, "OK ", 3) != 0) {
        /* Keep the reply printable in the message. */
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) {
                line[i] = '?';
            }
        }
        return sbx_err_set(err, "EPROTO", "%s: hybrid vsock handshake refused: \"%s\"", addr, line);
    }
    return 0;
}

/*
 * fc: connect to the VMM's socket and do the handshake. A refused handshake usually means the
 * agent is not listening yet (the guest is booting), so it is retried with backoff (5 ms doubling
 * to 200 ms, PROTOCOL.md 2.3) until the deadline; without a deadline it is not retried.
 */
static int connect_fc(const struct sbx_addr *a, int64_t deadline, const char *addr,
                      struct sbx_err *err)
{
    struct sbx_err refused;
    int backoff = 5, tries = 0;

    for (;;) {
        int fd = connect_unix_path(a->path, deadline, addr, err);
        if (fd < 0) {
            return -1;
        }
        if (fc_handshake(fd, a->port, deadline, addr, err) == 0) {
            return fd;
        }
        (void)close(fd);
        if (tries > 0 && strcmp(err->code, "ETIMEDOUT") == 0) {
            /* The deadline passed during a retry: the refusal is the news. */
            *err = refused;
            sbx_err_prefix(err, "retried %d times", tries);
            return -1;
        }
        if (strcmp(err->code, "ECONNREFUSED") != 0 || deadline < 0) {
            return -1;
        }
        refused = *err;
        if (sbx__remaining(deadline) <= backoff) {
            sbx_err_prefix(err, "retried %d times", tries);
            return -1;
        }
        (void)poll(NULL, 0, backoff); /* a plain sleep */
        backoff = backoff * 2 > 200 ? 200 : backoff * 2;
        tries++;
    }
}

int sbx__connect(const struct sbx_addr *a, const char *addr, int timeout_ms, struct sbx_err *err)
{
    int64_t deadline = sbx__deadline(timeout_ms);
    int fd, sz = SBX_CLIENT_SNDBUF;

    switch (a->kind) {
    case SBX_ADDR_UNIX:
        fd = connect_unix_path(a->path, deadline, addr, err);
        break;
    case SBX_ADDR_VSOCK:
        fd = connect_vsock(a, deadline, addr, err);
        break;
    case SBX_ADDR_TCP:
        fd = connect_tcp(a, deadline, addr, err);
        break;
    case SBX_ADDR_FC:
        fd = connect_fc(a, deadline, addr, err);
        break;
    default:
        return sbx_err_param(err, "addr", "bad address \"%s\"", addr);
    }
    /* Room for whole stream-data frames in the socket: the agent then reads each one in one
     * piece and hands it to the child without collecting it first (best effort; the kernel
     * caps it at net.core.wmem_max, doubled, which still holds a 256 KiB frame). */
    if (fd >= 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    return fd;
}
