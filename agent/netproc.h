/* The kernel's socket tables (netproc.c): what net.listening reads. */
#ifndef SBX_AGENT_NETPROC_H
#define SBX_AGENT_NETPROC_H

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* One table of /proc/net: its name on the wire, its path, its address family and kind. */
struct agent_net_table {
    const char *proto; /* "tcp", "tcp6", "udp", "udp6" */
    const char *path;  /* "/proc/net/tcp", ... */
    int family;        /* AF_INET, AF_INET6 */
    bool tcp;          /* TCP: sockets in LISTEN; UDP: bound, unconnected sockets */
};

/* The four tables, in the order net.listening answers them. */
#define AGENT_NET_TABLES 4
extern const struct agent_net_table agent_net_tables[AGENT_NET_TABLES];

/* One listening socket. */
struct agent_net_sock {
    unsigned long long inode;
    uint32_t pid; /* 0: no holder found */
    uint16_t port;
    uint8_t table; /* index in agent_net_tables */
    char addr[INET6_ADDRSTRLEN];
};

/* A growing list of sockets, capped at @max entries (more set @truncated). */
struct agent_net_list {
    struct agent_net_sock *e;
    unsigned n, cap, max;
    bool truncated;
};

/*
 * Parse one line of table @t into @e: true for a listening TCP socket (state 0A) or a bound UDP
 * socket (state 07, local port not 0); false for the header, other states and malformed lines.
 * The address words are the kernel's memory order printed as host-order numbers (%08X each), so
 * an IPv6 address comes out right on any byte order. Pure: safe on any thread.
 */
bool agent_net_parse_line(const struct agent_net_table *t, const char *line,
                          struct agent_net_sock *e);

/*
 * Add the sockets of table @ti (index in agent_net_tables) read from @f to @l, until @l is full
 * (then truncated). Lines of any length are read; one longer than a table line can be is skipped
 * whole, as is every malformed one. Out of memory also ends the list as truncated. Any thread.
 */
void agent_net_read_table(struct agent_net_list *l, unsigned ti, FILE *f);

/*
 * Find a process holding each socket of @l: one pass over @proc/PID/fd of every process (@proc
 * is "/proc"; tests give a tree of their own), matching "socket:[INODE]" links against a sorted
 * index. Processes that vanish or cannot be read are skipped. At most @max_links links are read
 * and @max_ms spent; sockets not found by then keep pid 0. Blocking: a worker thread's job.
 */
void agent_net_find_pids(struct agent_net_list *l, const char *proc, unsigned max_links,
                         unsigned max_ms);

#endif /* SBX_AGENT_NETPROC_H */
