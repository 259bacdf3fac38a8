/* log.c: the console log (one timestamped line per step), and reading small files. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "init.h"

int64_t init_now(clockid_t id)
{
    struct timespec ts;

    return clock_gettime(id, &ts) < 0 ? 0 : (int64_t)ts.tv_sec * INIT_NSEC + ts.tv_nsec;
}

void init_log(const char *fmt, ...)
{
    int64_t now = init_now(CLOCK_MONOTONIC);
    int saved = errno;
    char line[640];
    va_list ap;
    int n;

    n = snprintf(line, sizeof(line), "sbx-init[%lld.%06lld]: ", (long long)(now / INIT_NSEC),
                 (long long)(now % INIT_NSEC / 1000));
    errno = saved;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = n > (int)sizeof(line) - 2 ? (int)sizeof(line) - 2 : n; /* truncated: end the line */
    line[n++] = '\n';
    /* One write, so init's and the agent's lines never interleave. A console that is gone
     * cannot be told about it, so the result is deliberately ignored. */
    (void)!write(STDERR_FILENO, line, (size_t)n);
    errno = saved;
}

ssize_t init_read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -errno : read(fd, buf, size - 1);

    if (n == -1) {
        n = -errno;
    }
    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    return n;
}
