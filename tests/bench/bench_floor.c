/*
 * The floor under the cli row of bench_agent: the least a client and an agent can do for
 * `sbx exec -n -- /bin/true` over a unix socket, so the row's ratio can be read against what this
 * machine allows at all. Static, no allocation, no event loop, no parsing beyond frame lengths.
 *
 *   bench_floor client SOCK HEX   connect, write the bytes HEX spells (hello + proc.spawn, packed
 *                                 by bench_agent with the protocol's own packers), read frames
 *                                 until one holds "proc.exit"; exit 0 then, 1 on EOF or error
 *   bench_floor server SOCK HEX   listen; per connection: read two whole frames, posix_spawn
 *                                 /bin/true with stdout and stderr on pipes read to EOF, waitpid,
 *                                 write the bytes HEX spells (a proc.exit frame), close
 *
 * The client is what a CLI does once its options are parsed and its libraries are set up; the
 * server is an agent with no loop, no spawner thread, no identity switch and no stream framing.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

extern char **environ;

#define BUF_MAX 65536

static uint8_t buf[BUF_MAX];
static uint8_t msg[4096];

static int nibble(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Decode lowercase hex @h into @out; the byte count, or -1. */
static int unhex(const char *h, uint8_t *out, size_t cap)
{
    size_t n = strlen(h);

    if (n % 2 != 0 || n / 2 > cap) {
        return -1;
    }
    for (size_t i = 0; i < n / 2; i++) {
        int hi = nibble(h[2 * i]), lo = nibble(h[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (int)(n / 2);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read from @fd until @want whole frames are in buf; 0, or -1 on EOF, error or a frame too big. */
static int read_frames(int fd, int want, const char *until)
{
    size_t have = 0, off = 0;
    int got = 0;

    for (;;) {
        while (have - off >= 4 && have - off - 4 >= be32(buf + off)) {
            size_t len = be32(buf + off);
            if (until != NULL && memmem(buf + off + 4, len, until, strlen(until)) != NULL) {
                return 0;
            }
            off += 4 + len;
            if (++got == want) {
                return 0;
            }
        }
        if (off > 0) {
            memmove(buf, buf + off, have - off);
            have -= off;
            off = 0;
        }
        if (have == sizeof(buf)) {
            return -1;
        }
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        have += (size_t)n;
    }
}

static int client(const char *path, size_t len)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bench_unix_addr(&sa, path) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || bench_write_all(fd, msg, len) < 0) {
        return 1;
    }
    return read_frames(fd, -1, "proc.exit") == 0 ? 0 : 1;
}

/* /bin/true with stdout and stderr on pipes, read to EOF, then reaped. */
static void run_true(void)
{
    static char *const argv[] = { "/bin/true", NULL };
    posix_spawn_file_actions_t fa;
    int o[2], e[2], st;
    pid_t pid;

    if (pipe2(o, O_CLOEXEC) < 0) {
        return;
    }
    if (pipe2(e, O_CLOEXEC) < 0) {
        close(o[0]);
        close(o[1]);
        return;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, o[1], 1);
    posix_spawn_file_actions_adddup2(&fa, e[1], 2);
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(o[1]);
    close(e[1]);
    if (rc == 0) {
        while (read(o[0], buf, sizeof(buf)) > 0) {
        }
        while (read(e[0], buf, sizeof(buf)) > 0) {
        }
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    close(o[0]);
    close(e[0]);
}

static int server(const char *path, size_t len)
{
    struct sockaddr_un sa;
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    signal(SIGPIPE, SIG_IGN);
    if (l < 0 || bench_unix_addr(&sa, path) < 0) {
        return 1;
    }
    (void)unlink(path);
    if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l, 64) < 0) {
        perror("bench_floor: listen");
        return 1;
    }
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            perror("bench_floor: accept");
            return 1;
        }
        if (read_frames(c, 2, NULL) == 0) {
            run_true();
            (void)bench_write_all(c, msg, len);
        }
        close(c);
    }
}

int main(int argc, char **argv)
{
    int len;

    if (argc != 4 || (len = unhex(argv[3], msg, sizeof(msg))) <= 0) {
        fprintf(stderr, "usage: bench_floor client|server SOCK HEX\n");
        return 2;
    }
    if (strcmp(argv[1], "client") == 0) {
        return client(argv[2], (size_t)len);
    }
    if (strcmp(argv[1], "server") == 0) {
        return server(argv[2], (size_t)len);
    }
    fprintf(stderr, "usage: bench_floor client|server SOCK HEX\n");
    return 2;
}
