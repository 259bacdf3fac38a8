/* Small helpers of the gateway: logging, clocks, durations, random ids, files, processes.
 * (gw_stream_id lives in session.c, base64 in m_fs.c.) */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"

void gw_log(const char *fmt, ...)
{
    char line[2048];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    /* One write per line, so lines of concurrent writers do not interleave. */
    (void)fprintf(stderr, "sbx-gateway: %s\n", line);
}

int64_t gw_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) < 0) {
        return 0;
    }
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gw_hello_ms(const struct gw *g)
{
    return g->opt.hello_ms > 0 ? g->opt.hello_ms : GW_HELLO_MS;
}

int gw_random_chars(char *out, size_t n, const char *alphabet)
{
    size_t k = strlen(alphabet);
    unsigned limit = 256 - 256 % (unsigned)k; /* reject above it: no modulo bias */
    size_t done = 0;

    if (k == 0 || k > 256) {
        errno = EINVAL;
        return -1;
    }
    while (done < n) {
        unsigned char buf[64];
        ssize_t got = getrandom(buf, sizeof buf, 0);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        for (ssize_t i = 0; i < got && done < n; i++) {
            if (buf[i] < limit) {
                out[done++] = alphabet[buf[i] % k];
            }
        }
    }
    out[n] = '\0';
    return 0;
}

bool gw_ct_streq(const char *a, const char *b)
{
    size_t la = strlen(a);
    size_t lb = strlen(b);
    unsigned char diff = la != lb;

    /* Walk the expected string (@b) whole, whatever @a holds. */
    for (size_t i = 0; i < lb; i++) {
        diff |= (unsigned char)(b[i] ^ (i < la ? a[i] : 0));
    }
    return diff == 0;
}

static int fsync_dir_of(const char *path)
{
    char copy[PATH_MAX];

    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int rc = fsync(fd);
    (void)close(fd); /* read-only: nothing to lose */
    return rc;
}

int gw_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[PATH_MAX];
    const char *p = data;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        return -1;
    }
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            goto fail;
        }
        p += w;
        len -= (size_t)w;
    }
    if (fsync(fd) < 0) {
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        goto fail;
    }
    return fsync_dir_of(path);
fail : {
    int e = errno;
    if (fd >= 0) {
        (void)close(fd); /* already failing */
    }
    (void)unlink(tmp); /* best effort: the old file stays valid */
    errno = e;
    return -1;
}
}

int gw_file_read(const char *path, size_t max, char **out, size_t *lenp)
{
    struct stat st = { 0 };
    /* O_NONBLOCK: a FIFO put in the data dir must not hang the gateway in open(); regular
     * files ignore it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

    if (fd < 0) {
        return -1;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        int e = (uint64_t)st.st_size > max ? EFBIG : EINVAL;
        (void)close(fd); /* read-only */
        errno = e;
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1;
    char *buf = malloc(cap);
    size_t len = 0;
    if (buf == NULL) {
        (void)close(fd); /* read-only */
        errno = ENOMEM;
        return -1;
    }
    while (len < cap - 1) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            free(buf);
            (void)close(fd); /* read-only */
            errno = e;
            return -1;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
    }
    (void)close(fd); /* read-only */
    buf[len] = '\0';
    *out = buf;
    *lenp = len;
    return 0;
}

void gw_file_tail(const char *path, unsigned lines, char *out, size_t outlen)
{
    char buf[16384];
    ssize_t n = 0;

    if (outlen == 0) {
        return;
    }
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
    if (end >= 0) {
        n = pread(fd, buf, sizeof buf - 1, start);
    }
    (void)close(fd); /* read-only */
    if (n <= 0) {
        return;
    }
    /* Drop trailing newlines, then walk back over @lines lines. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
        n--;
    }
    buf[n] = '\0';
    ssize_t i = n;
    unsigned seen = 0;
    while (i > 0) {
        if (buf[i - 1] == '\n' && ++seen == lines) {
            break;
        }
        i--;
    }
    /* Keep it one JSON-friendly string: control characters (other than newline) become '?'. */
    size_t o = 0;
    for (; i < n && o + 1 < outlen; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\r') {
            continue; /* console lines end in CR LF */
        }
        out[o++] = (c < 0x20 && c != '\n') || c == 0x7f ? '?' : (char)c;
    }
    out[o] = '\0';
}

int gw_pid_runs(pid_t pid, const char *needle)
{
    char path[64];
    char cmd[8192];

    if (pid <= 1) {
        return 0;
    }
    (void)snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    ssize_t n = read(fd, cmd, sizeof cmd - 1);
    (void)close(fd); /* read-only */
    if (n <= 0) {
        return 0; /* gone, or a zombie (empty cmdline) */
    }
    for (ssize_t i = 0; i < n; i++) {
        if (cmd[i] == '\0') {
            cmd[i] = ' ';
        }
    }
    cmd[n] = '\0';
    return strstr(cmd, needle) != NULL;
}

void gw_iso_time(int64_t ms, char *out, size_t outlen)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL) {
        (void)snprintf(out, outlen, "1970-01-01T00:00:00.000Z");
        return;
    }
    (void)snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

int gw_duration_parse(const char *s, int64_t *ms)
{
    char *end = NULL;
    int64_t unit = 0;

    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (end != NULL && end != s && s[0] >= '0' && s[0] <= '9' && end[0] != '\0' && end[1] == '\0') {
        unit = end[0] == 's' ? 1000 : end[0] == 'm' ? 60000 : end[0] == 'h' ? 3600000 : 0;
    }
    if (unit == 0 || errno != 0) {
        return -1;
    }
    if (n <= 0 || n > GW_DURATION_MAX_MS / unit) {
        return -2;
    }
    *ms = n * unit;
    return 0;
}

void gw_duration_text(int64_t ms, char *out, size_t outlen)
{
    if (ms >= 3600000 && ms % 3600000 == 0) {
        (void)snprintf(out, outlen, "%" PRId64 " h", ms / 3600000);
    } else if (ms >= 60000 && ms % 60000 == 0) {
        (void)snprintf(out, outlen, "%" PRId64 " min", ms / 60000);
    } else if (ms % 1000 == 0) {
        (void)snprintf(out, outlen, "%" PRId64 " s", ms / 1000);
    } else {
        (void)snprintf(out, outlen, "%" PRId64 " ms", ms);
    }
}

int gw_bytes_push(struct gw_bytes *q, const void *data, size_t len)
{
    struct gw_chunk *c = malloc(sizeof(*c) + len);

    if (c == NULL) {
        return -1;
    }
    c->next = NULL;
    c->len = len;
    c->off = 0;
    memcpy(c->data, data, len);
    *(q->tail != NULL ? &q->tail->next : &q->head) = c;
    q->tail = c;
    q->len += len;
    return 0;
}

const struct sbx_hello gw_agent_hello = {
    .version = SBX_PROTO_VERSION,
    .min_version = SBX_PROTO_MIN_VERSION,
    .client = "sbx-gateway",
    .client_len = sizeof("sbx-gateway") - 1,
    .recv_window = GW_AGENT_RECV_WINDOW,
};

void gw_bytes_take(struct gw_bytes *q, size_t n)
{
    struct gw_chunk *c = q->head;

    c->off += n;
    q->len -= n;
    if (c->off == c->len) {
        q->head = c->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        free(c);
    }
}

void gw_bytes_clear(struct gw_bytes *q)
{
    while (q->head != NULL) {
        struct gw_chunk *c = q->head;

        q->head = c->next;
        free(c);
    }
    q->tail = NULL;
    q->len = 0;
}

int gw_json_int64(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);

        /* 2^63 is exactly representable; every double strictly inside the range converts. */
        if (d > -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(int64_t)d) {
            *out = (int64_t)d;
            return 0;
        }
    }
    return -1;
}
