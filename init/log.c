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
    int saved = errno;
    int64_t now = init_now(CLOCK_MONOTONIC);
    char line[640];
    int n = snprintf(line, sizeof(line), "sbx-init[%lld.%06lld]: ", (long long)(now / INIT_NSEC),
                     (long long)(now % INIT_NSEC / 1000));
    va_list ap;

    errno = saved; /* for %m */
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = n > (int)sizeof(line) - 2 ? (int)sizeof(line) - 2 : n; /* truncated: end the line */
    line[n++] = '\n';
    /* One write, so init's and the agent's lines never interleave; a gone console can't be told. */
    (void)!write(STDERR_FILENO, line, (size_t)n);
    errno = saved;
}

ssize_t init_read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, size - 1);

    n = n < 0 ? -errno : n;
    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    return n;
}
