/*
 * The kernel's socket tables: the listening TCP and bound UDP sockets of /proc/net/{tcp,tcp6,
 * udp,udp6}, and the processes holding them (/proc/PID/fd). Plain blocking code with no tie to
 * the loop or a connection: net.c runs it on a threadpool worker; unit tests run it on files of
 * their own.
 */
#include "netproc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

const struct agent_net_table agent_net_tables[AGENT_NET_TABLES] = {
    { "tcp", "/proc/net/tcp", AF_INET, true },
    { "tcp6", "/proc/net/tcp6", AF_INET6, true },
    { "udp", "/proc/net/udp", AF_INET, false },
    { "udp6", "/proc/net/udp6", AF_INET6, false },
};

#define NET_TCP_LISTEN 0x0A /* include/net/tcp_states.h: TCP_LISTEN */
#define NET_UDP_BOUND  0x07 /* TCP_CLOSE: an unconnected UDP socket */

/* Longest line read whole; a table line is under 200 bytes. */
#define NET_LINE_MAX 512

/*
 * One 32-bit word of an address as the tables print it: the word as it lies in memory, printed
 * as a host-order number (%08X). @hex holds 8 hex digits; writes the 4 bytes to @out.
 */
static bool hex_word(const char *hex, uint8_t *out)
{
    char w[9];
    char *end;
    uint32_t v;

    memcpy(w, hex, 8);
    w[8] = '\0';
    v = (uint32_t)strtoul(w, &end, 16);
    if (end != w + 8) {
        return false;
    }
    memcpy(out, &v, 4);
    return true;
}

bool agent_net_parse_line(const struct agent_net_table *t, const char *line,
                          struct agent_net_sock *e)
{
    /* "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
     *  inode ..."; UDP has the same columns up to inode. */
    char local[33], remote[33];
    unsigned lport, rport, st;
    unsigned long long inode;
    uint8_t raw[16];
    size_t words = t->family == AF_INET ? 1 : 4;

    if (sscanf(line,
               " %*u: %32[0-9A-Fa-f]:%4x %32[0-9A-Fa-f]:%4x %2x %*x:%*x %*x:%*x %*x %*u %*u %llu",
               local, &lport, remote, &rport, &st, &inode) != 6) {
        return false;
    }
    if (strlen(local) != 8 * words || strlen(remote) != 8 * words) {
        return false;
    }
    if (t->tcp ? st != NET_TCP_LISTEN : (st != NET_UDP_BOUND || lport == 0)) {
        return false;
    }
    for (size_t i = 0; i < words; i++) {
        if (!hex_word(local + 8 * i, raw + 4 * i)) {
            return false;
        }
    }
    if (inet_ntop(t->family, raw, e->addr, sizeof(e->addr)) == NULL) {
        return false;
    }
    e->port = (uint16_t)lport;
    e->inode = inode;
    e->pid = 0;
    e->table = (uint8_t)(t - agent_net_tables);
    return true;
}

/* Add @e; false once @l is full (then truncated). */
static bool list_add(struct agent_net_list *l, const struct agent_net_sock *e)
{
    if (l->n >= l->max) {
        l->truncated = true;
        return false;
    }
    if (l->n == l->cap) {
        unsigned cap = l->cap != 0 ? l->cap * 2 : 64;
        struct agent_net_sock *ne;
        if (cap > l->max) {
            cap = l->max;
        }
        ne = realloc(l->e, cap * sizeof(*ne));
        if (ne == NULL) {
            l->truncated = true; /* what fits is still an answer */
            return false;
        }
        l->e = ne;
        l->cap = cap;
    }
    l->e[l->n++] = *e;
    return true;
}

void agent_net_read_table(struct agent_net_list *l, unsigned ti, FILE *f)
{
    char line[NET_LINE_MAX];
    bool starts = true; /* the buffer begins a line */

    while (!l->truncated && fgets(line, sizeof(line), f) != NULL) {
        bool at_start = starts;
        struct agent_net_sock e;

        /* The pieces of a longer line are not lines: skipped up to its newline. */
        starts = strchr(line, '\n') != NULL;
        if (at_start && starts && agent_net_parse_line(&agent_net_tables[ti], line, &e)) {
            (void)list_add(l, &e);
        }
    }
}

static int inode_cmp(const void *a, const void *b)
{
    unsigned long long x = ((const struct agent_net_sock *)a)->inode;
    unsigned long long y = ((const struct agent_net_sock *)b)->inode;

    return x < y ? -1 : x > y;
}

static struct agent_net_sock *inode_find(struct agent_net_sock *sorted, unsigned n,
                                         unsigned long long ino)
{
    struct agent_net_sock key = { .inode = ino };

    return bsearch(&key, sorted, n, sizeof(*sorted), inode_cmp);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The inode of a "socket:[INODE]" link target @t (@k bytes, not terminated), or 0. */
static unsigned long long socket_inode(char *t, ssize_t k)
{
    unsigned long long ino;
    char *end;

    if (k < 10 || memcmp(t, "socket:[", 8) != 0 || t[k - 1] != ']') {
        return 0;
    }
    t[k - 1] = '\0';
    ino = strtoull(t + 8, &end, 10);
    return *end == '\0' && t[8] >= '0' && t[8] <= '9' ? ino : 0;
}

/* Match the fd links of one process (@fds, its fd directory) against @sorted; returns false once
 * the budget is spent. @left counts the sockets still without a holder. */
static bool scan_process(DIR *fds, uint32_t pid, struct agent_net_sock *sorted, unsigned n,
                         unsigned *left, unsigned *links, unsigned max_links, uint64_t deadline)
{
    struct dirent *fe;

    while (*left > 0 && (fe = readdir(fds)) != NULL) {
        char target[64];
        struct agent_net_sock *e;
        unsigned long long ino;
        ssize_t k;

        if (fe->d_name[0] == '.') {
            continue;
        }
        if (++*links > max_links || ((*links & 255) == 0 && mono_ms() > deadline)) {
            return false;
        }
        k = readlinkat(dirfd(fds), fe->d_name, target, sizeof(target) - 1);
        ino = k > 0 ? socket_inode(target, k) : 0;
        if (ino == 0 || (e = inode_find(sorted, n, ino)) == NULL || e->pid != 0) {
            continue;
        }
        e->pid = pid;
        --*left;
    }
    return true;
}

/* Scan @proc into @sorted (@n sockets ordered by inode) within the budget. */
static void scan_procs(const char *proc, struct agent_net_sock *sorted, unsigned n,
                       unsigned max_links, unsigned max_ms)
{
    uint64_t deadline = mono_ms() + max_ms;
    unsigned left = n, links = 0;
    struct dirent *pe;
    DIR *pd = opendir(proc); /* glibc opens it O_CLOEXEC */

    if (pd == NULL) {
        return;
    }
    while (left > 0 && (pe = readdir(pd)) != NULL) {
        char path[300];
        unsigned long pid;
        char *end;
        DIR *fds;
        int dfd;
        bool more;

        /* Per process too: processes without fds (or fd directories we cannot read) cost an
         * openat each and never reach scan_process's check. */
        if (mono_ms() > deadline) {
            break;
        }

        pid = strtoul(pe->d_name, &end, 10);
        if (pe->d_name[0] < '1' || pe->d_name[0] > '9' || *end != '\0' || pid > UINT32_MAX) {
            continue;
        }
        (void)snprintf(path, sizeof(path), "%s/fd", pe->d_name);
        dfd = openat(dirfd(pd), path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
            continue; /* gone since, or not ours to read */
        }
        fds = fdopendir(dfd);
        if (fds == NULL) {
            (void)close(dfd);
            continue;
        }
        more = scan_process(fds, (uint32_t)pid, sorted, n, &left, &links, max_links, deadline);
        (void)closedir(fds); /* a directory: nothing to lose */
        if (!more) {
            break;
        }
    }
    (void)closedir(pd);
}

void agent_net_find_pids(struct agent_net_list *l, const char *proc, unsigned max_links,
                         unsigned max_ms)
{
    struct agent_net_sock *sorted;

    if (l->n == 0) {
        return;
    }
    /* A sorted copy for the lookups; the answer keeps the tables' order. */
    sorted = malloc(l->n * sizeof(*sorted));
    if (sorted == NULL) {
        return; /* the pids stay unknown */
    }
    memcpy(sorted, l->e, l->n * sizeof(*sorted));
    qsort(sorted, l->n, sizeof(*sorted), inode_cmp);
    scan_procs(proc, sorted, l->n, max_links, max_ms);
    for (unsigned i = 0; i < l->n; i++) {
        struct agent_net_sock *e = inode_find(sorted, l->n, l->e[i].inode);
        l->e[i].pid = e != NULL ? e->pid : 0;
    }
    free(sorted);
}
