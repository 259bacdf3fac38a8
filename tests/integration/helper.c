/*
 * sbx-test-helper: a multi-call program that plays the children in integration tests, as crun's
 * tests/init.c and libuv's spawn helpers do. `sbx-test-helper MODE ARGS...`.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 65536

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* N bytes of a fixed pattern (a repeated 64 KiB block, byte i = (i*131+7)&255): tests compute
 * the expected checksum without storing the output. */
static int flood(int fd, unsigned long long n)
{
    static unsigned char block[1 << 20];

    for (size_t i = 0; i < sizeof(block); i++) {
        block[i] = (unsigned char)(((i % BLOCK) * 131 + 7) & 255);
    }
    while (n > 0) {
        size_t k = n < sizeof(block) ? (size_t)n : sizeof(block);
        if (write_all(fd, block, k) < 0) {
            return 1;
        }
        n -= k;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";

    if (strcmp(mode, "echo") == 0) {
        for (int i = 2; i < argc; i++) {
            printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
        }
        return 0;
    }
    if (strcmp(mode, "flood") == 0 && argc >= 3) {
        return flood(1, strtoull(argv[2], NULL, 10));
    }
    if (strcmp(mode, "drip") == 0) {
        /* One byte per write(2), as fast as they go, until stdout fails. */
        while (write_all(1, "x", 1) == 0) {
        }
        return 1;
    }
    if (strcmp(mode, "flood-err") == 0 && argc >= 3) {
        return flood(2, strtoull(argv[2], NULL, 10));
    }
    if (strcmp(mode, "sleep") == 0 && argc >= 3) {
        sleep_ms(strtol(argv[2], NULL, 10));
        return 0;
    }
    if (strcmp(mode, "exit") == 0 && argc >= 3) {
        return atoi(argv[2]);
    }
    if (strcmp(mode, "killself") == 0 && argc >= 3) {
        signal(atoi(argv[2]), SIG_DFL);
        kill(getpid(), atoi(argv[2]));
        sleep_ms(5000);
        return 99;
    }
    if (strcmp(mode, "print-exit") == 0) {
        /* Output written just before exit must never be lost. */
        static const char msg[] = "last words before exit\n";
        (void)write_all(1, msg, sizeof(msg) - 1);
        (void)write_all(2, msg, sizeof(msg) - 1);
        _exit(argc >= 3 ? atoi(argv[2]) : 0);
    }
    if (strcmp(mode, "bg-hold") == 0 && argc >= 3) {
        /* A background child keeps stdout open long after the parent exits. */
        pid_t pid = fork();
        if (pid == 0) {
            sleep_ms(strtol(argv[2], NULL, 10));
            _exit(0);
        }
        printf("parent done\n");
        fflush(stdout);
        return 0;
    }
    if (strcmp(mode, "sigpipe-default") == 0) {
        /* Was SIGPIPE reset to default for us? */
        struct sigaction sa;
        sigaction(SIGPIPE, NULL, &sa);
        printf("%s\n", sa.sa_handler == SIG_DFL ? "default" : "changed");
        return 0;
    }
    if (strcmp(mode, "pgid") == 0) {
        printf("%d %d %d\n", (int)getpid(), (int)getpgrp(), (int)getsid(0));
        return 0;
    }
    if (strcmp(mode, "ids") == 0) {
        gid_t g[64];
        int n = getgroups(64, g);
        printf("%d %d", (int)getuid(), (int)getgid());
        for (int i = 0; i < n; i++) {
            printf(" %d", (int)g[i]);
        }
        printf("\n");
        return 0;
    }
    if (strcmp(mode, "stdin-isnull") == 0) {
        char c;
        ssize_t n = read(0, &c, 1);
        printf("%s\n", n == 0 ? "eof" : "data");
        return 0;
    }
    fprintf(stderr,
            "usage: sbx-test-helper echo ARGS | flood N | flood-err N | sleep MS | exit N |\n"
            "       killself SIG | print-exit [CODE] | bg-hold MS | sigpipe-default | pgid |\n"
            "       ids | stdin-isnull\n");
    return 2;
}
