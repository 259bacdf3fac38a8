/* log.c: the console log, one timestamped line per boot step. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "init.h"

int64_t init_now(clockid_t id)
{
    struct timespec ts;

    if (clock_gettime(id, &ts) < 0) {
        return 0;
    }
    return (int64_t)ts.tv_sec * INIT_NSEC + ts.tv_nsec;
}

void init_log(const char *fmt, ...)
{
    char line[640];
    int64_t now = init_now(CLOCK_MONOTONIC);
    int saved = errno; /* callers log with %m after a failure */
    va_list ap;
    int n;

    n = snprintf(line, sizeof(line), "sbx-init[%lld.%06lld]: ", (long long)(now / INIT_NSEC),
                 (long long)(now % INIT_NSEC / 1000));
    errno = saved;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2) {
        n = (int)sizeof(line) - 2; /* truncated: still end the line */
    }
    line[n++] = '\n';
    /* One write so lines from init and the agent never interleave mid-line. A console that
     * is gone cannot be reported anywhere, so the result is deliberately ignored. */
    (void)!write(STDERR_FILENO, line, (size_t)n);
    errno = saved;
}
