/* listen.c: the agent's listen addresses, parsed, opened and checked (listen.h). */
#include "listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *parse_unix(const char *path, struct sbx_listen_addr *la)
{
    size_t n = strlen(path);

    if (n == 0) {
        return "expected unix:PATH";
    }
    if (n >= sizeof(la->u.un.sun_path)) {
        return "socket path too long";
    }
    la->domain = la->u.un.sun_family = AF_UNIX;
    memcpy(la->u.un.sun_path, path, n + 1);
    la->len = (socklen_t)sizeof(la->u.un);
    return NULL;
}

static const char *parse_tcp(const char *hostport, struct sbx_listen_addr *la)
{
    const char *colon = strrchr(hostport, ':');
    char host[INET6_ADDRSTRLEN + 2], *end;
    size_t hlen = colon != NULL ? (size_t)(colon - hostport) : 0;
    long port;

    if (colon == NULL || hlen >= sizeof(host)) {
        return colon == NULL ? "expected tcp:HOST:PORT"
                             : "HOST must be a numeric IPv4 or IPv6 address";
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 || port <= 0 ||
        port > 65535) {
        return "bad port";
    }
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    if (inet_pton(AF_INET, host, &la->u.in.sin_addr) == 1) {
        la->domain = la->u.in.sin_family = AF_INET;
        la->u.in.sin_port = htons((uint16_t)port);
        la->len = (socklen_t)sizeof(la->u.in);
    } else if (inet_pton(AF_INET6, host, &la->u.in6.sin6_addr) == 1) {
        la->domain = la->u.in6.sin6_family = AF_INET6;
        la->u.in6.sin6_port = htons((uint16_t)port);
        la->len = (socklen_t)sizeof(la->u.in6);
    } else {
        return "HOST must be a numeric IPv4 or IPv6 address";
    }
    return NULL;
}

static const char *parse_vsock(const char *portstr, struct sbx_listen_addr *la)
{
    char *end;
    unsigned long port;

    errno = 0;
    port = strtoul(portstr, &end, 10);
    /* VMADDR_PORT_ANY (2^32 - 1) would bind a random port. */
    if (*portstr < '0' || *portstr > '9' || *end != '\0' || errno != 0 || port >= VMADDR_PORT_ANY) {
        return "expected vsock:PORT";
    }
    la->domain = la->u.vm.svm_family = AF_VSOCK;
    la->u.vm.svm_cid = VMADDR_CID_ANY;
    la->u.vm.svm_port = (unsigned)port;
    la->len = (socklen_t)sizeof(la->u.vm);
    return NULL;
}

const char *sbx_listen_parse(const char *addr, struct sbx_listen_addr *la)
{
    memset(la, 0, sizeof(*la));
    if (strncmp(addr, "unix:", 5) == 0) {
        la->kind = SBX_LISTEN_UNIX;
        return parse_unix(addr + 5, la);
    }
    if (strncmp(addr, "tcp:", 4) == 0) {
        la->kind = SBX_LISTEN_TCP;
        return parse_tcp(addr + 4, la);
    }
    if (strncmp(addr, "vsock:", 6) == 0) {
        la->kind = SBX_LISTEN_VSOCK;
        return parse_vsock(addr + 6, la);
    }
    if (strncmp(addr, "serial:", 7) == 0) {
        la->kind = SBX_LISTEN_SERIAL;
        return addr[7] == '\0' ? "expected serial:NAME or serial:/dev/PATH" : NULL;
    }
    return "unknown address (unix:PATH, vsock:PORT, serial:NAME, tcp:HOST:PORT)";
}

int sbx_listen_open(const struct sbx_listen_addr *la)
{
    int one = 1, e;
    int fd = socket(la->domain, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) {
        return -errno;
    }
    if (la->kind == SBX_LISTEN_UNIX) {
        (void)unlink(la->u.un.sun_path); /* a stale socket of a previous run; none is fine */
    }
    /* Connections are refused until listen(), so the socket file is private before anyone can
     * connect through it. */
    if ((la->kind == SBX_LISTEN_TCP &&
         setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) ||
        bind(fd, &la->u.sa, la->len) < 0 ||
        (la->kind == SBX_LISTEN_UNIX && chmod(la->u.un.sun_path, 0600) < 0) ||
        listen(fd, SBX_LISTEN_BACKLOG) < 0) {
        e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int sockopt(int fd, int opt)
{
    int v = -1;
    socklen_t len = sizeof(v);

    return getsockopt(fd, SOL_SOCKET, opt, &v, &len) < 0 ? -errno : v;
}

int sbx_listen_check(int fd, const struct sbx_listen_addr *la)
{
    union sbx_listen_sa got;
    socklen_t len = sizeof(got);
    int domain = sockopt(fd, SO_DOMAIN);

    if (domain < 0) {
        return domain;
    }
    if (domain != la->domain || sockopt(fd, SO_TYPE) != SOCK_STREAM ||
        sockopt(fd, SO_ACCEPTCONN) != 1) {
        return -EINVAL;
    }
    memset(&got, 0, sizeof(got));
    if (getsockname(fd, &got.sa, &len) < 0) {
        return -errno;
    }
    switch (la->kind) {
    case SBX_LISTEN_UNIX:
        return strncmp(got.un.sun_path, la->u.un.sun_path, sizeof(got.un.sun_path)) == 0
                   ? 0
                   : -EADDRNOTAVAIL;
    case SBX_LISTEN_TCP:
        return (domain == AF_INET ? got.in.sin_port == la->u.in.sin_port
                                  : got.in6.sin6_port == la->u.in6.sin6_port)
                   ? 0
                   : -EADDRNOTAVAIL;
    case SBX_LISTEN_VSOCK:
        return got.vm.svm_port == la->u.vm.svm_port ? 0 : -EADDRNOTAVAIL;
    default:
        return -EINVAL;
    }
}
