/*
 * sbx-fcproxy: a test tool that plays the host side of Firecracker's hybrid vsock in front of a
 * plain unix socket. It accepts on LISTEN, expects "CONNECT <port>\n", answers "OK <n>\n" (n a
 * made-up local port, counting up from 1073741824 as Firecracker's do) and then relays bytes
 * both ways to BACKEND. One forked child per connection; when either side closes, both close
 * (there is no half-close in hybrid vsock either).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LINE_MAX_LEN      64
#define HANDSHAKE_TIMEOUT 10000 /* ms for the CONNECT line */
#define RELAY_BUF         (64 << 10)
#define FIRST_LOCAL_PORT  1073741824u

/* The listen path, for the termination handler (written once before any signal can come). */
static char listen_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static void on_term(int sig)
{
    (void)sig;
    (void)unlink(listen_path);
    _exit(0);
}

static void usage(FILE *f)
{
    (void)fprintf(f, "Usage: sbx-fcproxy LISTEN_UNIX_PATH BACKEND_UNIX_PATH [--port N]\n"
                     "\n"
                     "Serve the Firecracker hybrid-vsock handshake (\"CONNECT <port>\\n\" -> "
                     "\"OK <n>\\n\") on\nLISTEN_UNIX_PATH and relay each connection to "
                     "BACKEND_UNIX_PATH. With --port,\nonly CONNECT N is accepted; other lines "
                     "are answered by closing the connection.\n");
}

static int fill_sun(struct sockaddr_un *sun, const char *path)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun->sun_path)) {
        return -1;
    }
    memcpy(sun->sun_path, path, strlen(path));
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read the "CONNECT <port>\n" line; returns 0 with *port set, or -1. */
static int read_connect(int fd, uint32_t *port)
{
    char line[LINE_MAX_LEN + 1];
    size_t n = 0;
    uint64_t v = 0;
    const char *p;

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char ch;
        ssize_t r;

        if (poll(&pfd, 1, HANDSHAKE_TIMEOUT) <= 0) {
            return -1;
        }
        r = read(fd, &ch, 1);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        if (ch == '\n') {
            break;
        }
        if (n == LINE_MAX_LEN) {
            return -1;
        }
        line[n++] = ch;
    }
    line[n] = '\0';
    if (strncmp(line, "CONNECT ", 8) != 0 || line[8] == '\0') {
        return -1;
    }
    for (p = line + 8; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || v > UINT32_MAX) {
            return -1;
        }
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > UINT32_MAX) {
        return -1;
    }
    *port = (uint32_t)v;
    return 0;
}

/* One direction of the relay: bytes read from @from, waiting to be written to @to. */
struct dir {
    int from, to;
    size_t off, len;
    char buf[RELAY_BUF];
};

/*
 * Copy bytes both ways until either side closes or fails. Both fds are non-blocking and each
 * direction has its own buffer, so a peer that is slow to read in one direction never stops
 * the other direction (a blocking write here could deadlock an echoing peer).
 */
static void relay(int a, int b)
{
    static struct dir d[2];
    int fl;

    fl = fcntl(a, F_GETFL);
    if (fl < 0 || fcntl(a, F_SETFL, fl | O_NONBLOCK) < 0) {
        return;
    }
    fl = fcntl(b, F_GETFL);
    if (fl < 0 || fcntl(b, F_SETFL, fl | O_NONBLOCK) < 0) {
        return;
    }
    d[0].from = a;
    d[0].to = b;
    d[1].from = b;
    d[1].to = a;
    d[0].len = d[1].len = 0;
    for (;;) {
        /* pfd[0] is a, pfd[1] is b; direction i reads pfd[i] and writes pfd[1 - i]. */
        struct pollfd pfd[2] = { { .fd = a }, { .fd = b } };
        int r;

        for (int i = 0; i < 2; i++) {
            if (d[i].len == 0) {
                pfd[i].events |= POLLIN;
            } else {
                pfd[1 - i].events |= POLLOUT;
            }
        }
        r = poll(pfd, 2, -1);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return;
        }
        for (int i = 0; i < 2; i++) {
            if ((pfd[i].revents & (POLLHUP | POLLERR)) != 0 && (pfd[i].revents & POLLIN) == 0) {
                return; /* a side is gone: close both, do not spin on the hang-up */
            }
        }
        for (int i = 0; i < 2; i++) {
            struct dir *x = &d[i];
            ssize_t n;

            if (x->len == 0 && pfd[i].revents != 0) {
                n = read(x->from, x->buf, sizeof(x->buf));
                if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                    continue;
                }
                if (n <= 0) {
                    return; /* either side closing closes both */
                }
                x->off = 0;
                x->len = (size_t)n;
            }
            if (x->len > 0 && (pfd[1 - i].revents != 0 || x->off == 0)) {
                n = send(x->to, x->buf + x->off, x->len, MSG_NOSIGNAL);
                if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                    continue;
                }
                if (n < 0) {
                    return;
                }
                x->off += (size_t)n;
                x->len -= (size_t)n;
            }
        }
    }
}

static void serve(int conn, const char *backend, bool want_port, uint32_t port, uint32_t local_port)
{
    struct sockaddr_un sun;
    char reply[32];
    uint32_t asked;
    int fd;

    if (read_connect(conn, &asked) < 0 || (want_port && asked != port)) {
        return;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || fill_sun(&sun, backend) < 0 ||
        connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        /* Like Firecracker when nothing listens on the guest port: just close. */
        (void)fprintf(stderr, "sbx-fcproxy: connect %s: %s\n", backend, strerror(errno));
        return;
    }
    (void)snprintf(reply, sizeof(reply), "OK %u\n", local_port);
    if (write_all(conn, reply, strlen(reply)) == 0) {
        relay(conn, fd);
    }
    (void)close(fd);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "port", required_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct sockaddr_un sun;
    struct sigaction sa;
    struct stat st;
    uint32_t port = 0, next = FIRST_LOCAL_PORT;
    bool want_port = false;
    int opt, lfd;

    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end;
        unsigned long v;
        switch (opt) {
        case 'p':
            errno = 0;
            v = strtoul(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || end == optarg || v > UINT32_MAX) {
                (void)fprintf(stderr, "sbx-fcproxy: bad --port \"%s\"\n", optarg);
                return 2;
            }
            port = (uint32_t)v;
            want_port = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    if (fill_sun(&sun, argv[optind]) < 0 || strlen(argv[optind + 1]) >= sizeof(sun.sun_path)) {
        (void)fprintf(stderr, "sbx-fcproxy: socket path too long\n");
        return 2;
    }
    memcpy(listen_path, sun.sun_path, sizeof(listen_path));

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = SA_NOCLDWAIT; /* children reap themselves */
    (void)sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("sbx-fcproxy: sigaction");
        return 1;
    }
    (void)signal(SIGPIPE, SIG_IGN);

    /* A stale socket from an earlier run is replaced; any other file is left alone. */
    if (lstat(listen_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        (void)unlink(listen_path);
    }
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(lfd, 64) < 0) {
        (void)fprintf(stderr, "sbx-fcproxy: listen %s: %s\n", listen_path, strerror(errno));
        return 1;
    }
    sa.sa_handler = on_term;
    sa.sa_flags = 0;
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
        perror("sbx-fcproxy: sigaction");
        return 1;
    }
    for (;;) {
        int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        uint32_t local = next++;
        pid_t pid;

        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE) {
                (void)poll(NULL, 0, 100); /* out of fds: back off instead of spinning */
                continue;
            }
            (void)fprintf(stderr, "sbx-fcproxy: accept: %s\n", strerror(errno));
            return 1;
        }
        pid = fork();
        if (pid == 0) {
            (void)close(lfd);
            /* The child must not unlink the parent's socket when the test stops it. */
            (void)signal(SIGTERM, SIG_DFL);
            (void)signal(SIGINT, SIG_DFL);
            serve(conn, argv[optind + 1], want_port, port, local);
            _exit(0);
        }
        if (pid < 0) {
            (void)fprintf(stderr, "sbx-fcproxy: fork: %s\n", strerror(errno));
        }
        (void)close(conn);
    }
}
