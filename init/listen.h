/*
 * listen.h: the agent's listen addresses (unix:, tcp:, vsock:, serial:), parsed and opened in one
 * place for sbx-init, which creates the listening sockets once and hands them to every agent it
 * starts (so no restart leaves a port free for someone else to take), and for sbx-agent, which
 * adopts them or, run standalone, opens its own.
 */
#ifndef SBX_GUEST_LISTEN_H
#define SBX_GUEST_LISTEN_H

#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

enum sbx_listen_kind { SBX_LISTEN_UNIX, SBX_LISTEN_TCP, SBX_LISTEN_VSOCK, SBX_LISTEN_SERIAL };

#define SBX_LISTEN_BACKLOG 128

/* Any address of the families a listen address can have. */
union sbx_listen_sa {
    struct sockaddr sa;
    struct sockaddr_un un;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_vm vm;
};

/* A parsed address. Serial ports are devices, not sockets: they have no sockaddr. */
struct sbx_listen_addr {
    enum sbx_listen_kind kind;
    int domain; /* AF_UNIX, AF_INET, AF_INET6 or AF_VSOCK; 0 for serial */
    socklen_t len;
    union sbx_listen_sa u;
};

/*
 * Parses @addr: unix:PATH, tcp:HOST:PORT (numeric IPv4, IPv6 or [IPv6]), vsock:PORT or
 * serial:NAME. Returns NULL, or why it is not an address (a static string).
 */
const char *sbx_listen_parse(const char *addr, struct sbx_listen_addr *la);

/*
 * Creates the listening socket of @la (not serial): close-on-exec and non-blocking, bound and
 * listening; a unix socket replaces a stale one at its path and is made mode 0600; TCP sets
 * SO_REUSEADDR. Returns the fd or a negative errno.
 */
int sbx_listen_open(const struct sbx_listen_addr *la);

/*
 * Checks that @fd is a listening stream socket bound to @la (same family; the same port for
 * vsock and TCP, the same path for unix). Returns 0, or -ENOTSOCK, -EINVAL (not listening, or
 * another type) or -EADDRNOTAVAIL (bound elsewhere).
 */
int sbx_listen_check(int fd, const struct sbx_listen_addr *la);

#endif
