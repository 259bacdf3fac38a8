/* Benchmark helpers: clock, order statistics, table rows. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

uint64_t bench_now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for this clock */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

double bench_percentile(double *v, size_t n, double p)
{
    double pos;
    size_t i;

    if (n == 0) {
        return 0;
    }
    qsort(v, n, sizeof(*v), cmp_double);
    /* Linear interpolation between closest ranks (numpy's default). */
    pos = p * (double)(n - 1);
    i = (size_t)pos;
    if (i + 1 >= n) {
        return v[n - 1];
    }
    return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

struct bench_stat bench_stat_of(double *v, size_t n)
{
    struct bench_stat s = { 0, 0, 0, n };

    if (n == 0) {
        return s;
    }
    s.med = bench_percentile(v, n, 0.5);
    s.min = v[0];
    s.max = v[n - 1];
    return s;
}

void bench_row(const char *what, const char *figure, const char *spread, const char *baseline,
               const char *ratio, const char *target, const char *met)
{
    printf("| %s | %s | %s | %s | %s | %s | %s |\n", what, figure, spread, baseline, ratio, target,
           met);
    (void)fflush(stdout);
}

void bench_fmt_gbps(char *buf, size_t n, double bytes_per_s)
{
    snprintf(buf, n, "%.2f GB/s", bytes_per_s / 1e9);
}

void bench_fmt_spread(char *buf, size_t n, const struct bench_stat *s, double scale,
                      const char *unit)
{
    snprintf(buf, n, "%.2f–%.2f %s (n=%zu)", s->min / scale, s->max / scale, unit, s->n);
}

void bench_note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void)fputs("bench: ", stderr);
    (void)vfprintf(stderr, fmt, ap);
    (void)fputc('\n', stderr);
    va_end(ap);
}

pid_t bench_spawn(const char *const *argv, int in, int out, int err)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int r;

    if (posix_spawn_file_actions_init(&fa) != 0) {
        return -1;
    }
    if ((in >= 0 && posix_spawn_file_actions_adddup2(&fa, in, 0) != 0) ||
        (out >= 0 && posix_spawn_file_actions_adddup2(&fa, out, 1) != 0) ||
        (err >= 0 && posix_spawn_file_actions_adddup2(&fa, err, 2) != 0)) {
        (void)posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    (void)posix_spawn_file_actions_destroy(&fa); /* cannot fail for an initialised object */
    if (r != 0) {
        fprintf(stderr, "bench: spawn %s: %s\n", argv[0], strerror(r));
        return -1;
    }
    return pid;
}

int bench_unix_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path)) {
        return -1;
    }
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

int bench_write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n > 0) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            if (k == 0) {
                errno = EIO;
            }
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* User + system CPU seconds of @pid from /proc/PID/stat; -1 on error. */
double bench_proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long ut, st;
    const char *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    p = strrchr(buf, ')');
    /* After "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime. */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        return -1;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}
