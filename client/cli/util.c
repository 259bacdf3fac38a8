/* Small CLI helpers: durations, numbers, human output. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int cli_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (s == NULL || *s == '\0') {
        return -1;
    }
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10) {
            return -1;
        }
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

int cli_parse_signal(const char *s)
{
    uint64_t v;
    int sig;

    if (s == NULL) {
        return -1;
    }
    if ((s[0] == 'S' || s[0] == 's') && (s[1] == 'I' || s[1] == 'i') &&
        (s[2] == 'G' || s[2] == 'g') && s[3] >= '0' && s[3] <= '9') {
        s += 3; /* "SIG40" */
    }
    if (s[0] >= '0' && s[0] <= '9') {
        return cli_parse_u64(s, &v) == 0 && v >= 1 && v <= 64 ? (int)v : -1;
    }
    sig = sbx_signal_parse(s);
    return sig >= 1 && sig < 32 ? sig : -1;
}

/* Milliseconds per unit; 0 for an unknown unit. @n is the unit's length. */
static uint64_t unit_ms(const char *u, size_t n)
{
    if (n == 2 && memcmp(u, "ms", 2) == 0) {
        return 1;
    }
    if (n == 1 && u[0] == 's') {
        return 1000;
    }
    if (n == 1 && u[0] == 'm') {
        return 60000;
    }
    if (n == 1 && u[0] == 'h') {
        return 3600000;
    }
    return 0;
}

int cli_parse_duration(const char *s, uint64_t *ms)
{
    uint64_t total = 0;
    int parts = 0;

    if (s == NULL || *s == '\0') {
        return -1;
    }
    while (*s != '\0') {
        uint64_t whole = 0, frac = 0, scale = 1, mul, v;
        const char *u;
        bool digits = false;

        for (; *s >= '0' && *s <= '9'; s++) {
            if (whole > (UINT64_MAX - 9) / 10) {
                return -1;
            }
            whole = whole * 10 + (uint64_t)(*s - '0');
            digits = true;
        }
        if (*s == '.') {
            s++;
            for (; *s >= '0' && *s <= '9'; s++) {
                /* Digits past nanosecond precision of a millisecond do not matter. */
                if (scale < 1000000000) {
                    frac = frac * 10 + (uint64_t)(*s - '0');
                    scale *= 10;
                }
                digits = true;
            }
        }
        if (!digits) {
            return -1;
        }
        u = s;
        while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')) {
            s++;
        }
        if (s == u) {
            /* A bare number means seconds, but only on its own ("90", not "1m30"). */
            if (parts > 0 || *s != '\0') {
                return -1;
            }
            mul = 1000;
        } else {
            mul = unit_ms(u, (size_t)(s - u));
            if (mul == 0) {
                return -1;
            }
        }
        if (whole > UINT64_MAX / mul) {
            return -1;
        }
        v = whole * mul + frac * mul / scale;
        if (v > UINT64_MAX - total) {
            return -1;
        }
        total += v;
        parts++;
    }
    *ms = total;
    return 0;
}

/* The length of the UTF-8 character at @p (at most @n bytes) and its code point, or 0 when the
 * bytes there are not one (overlong, a surrogate, beyond U+10FFFF, cut short). */
static size_t utf8_char(const unsigned char *p, size_t n, uint32_t *cp)
{
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : 2;
    unsigned char lo = 0x80, hi = 0xbf;

    if (p[0] < 0xc2 || p[0] > 0xf4 || len > n) {
        return 0;
    }
    if (p[0] == 0xe0) {
        lo = 0xa0;
    } else if (p[0] == 0xed) {
        hi = 0x9f;
    } else if (p[0] == 0xf0) {
        lo = 0x90;
    } else if (p[0] == 0xf4) {
        hi = 0x8f;
    }
    if (p[1] < lo || p[1] > hi) {
        return 0;
    }
    *cp = p[0] & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
    for (size_t i = 1; i < len; i++) {
        if (i > 1 && (p[i] < 0x80 || p[i] > 0xbf)) {
            return 0;
        }
        *cp = *cp << 6 | (p[i] & 0x3f);
    }
    return len;
}

size_t cli_escape(char *out, size_t cap, const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t o = 0;

    if (cap == 0) {
        return 0;
    }
    for (size_t i = 0; i < n;) {
        char esc[12];
        size_t take = 1, elen = 0;
        uint32_t cp = s[i];

        if (s[i] >= 0x80) {
            take = utf8_char(s + i, n - i, &cp);
            if (take == 0) {
                take = 1;
                elen = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", s[i]);
            } else if (cp <= 0x9f || (cp >= 0x202a && cp <= 0x202e) ||
                       (cp >= 0x2066 && cp <= 0x2069)) {
                elen = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)cp);
            }
        } else if ((cp < 0x20 && cp != '\t') || cp == 0x7f) {
            elen = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", (unsigned)cp);
        }
        if (elen == 0) {
            elen = take;
            memcpy(esc, s + i, take);
        }
        if (o + elen >= cap) {
            break; /* whole characters and escapes only */
        }
        memcpy(out + o, esc, elen);
        o += elen;
        i += take;
    }
    out[o] = '\0';
    return o;
}

void cli_put_text(FILE *f, const char *p, size_t n)
{
    char out[4 * 256 + 16];

    /* In pieces of at most 256 bytes (an escape is at most 4 times its bytes), cut between
     * characters: a piece ends before a lead byte whose character would not fit. */
    while (n > 0) {
        size_t k = n < 256 ? n : 256;
        while (k < n && k > 252 && ((unsigned char)p[k] & 0xc0) == 0x80) {
            k--;
        }
        (void)fwrite(out, 1, cli_escape(out, sizeof(out), p, k), f);
        p += k;
        n -= k;
    }
}

void cli_print_human(FILE *f, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        (void)fputc('-', f);
        break;
    case MSGPACK_OBJECT_STR:
        cli_put_text(f, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN: /* a bstr that is not UTF-8 (PROTOCOL.md 4.4): escaped like a str */
        cli_put_text(f, o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        (void)fprintf(f, "%.2f", o->via.f64);
        break;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i > 0) {
                (void)fputc(' ', f);
            }
            cli_print_human(f, &o->via.array.ptr[i]);
        }
        break;
    default:
        (void)cli_json_write(f, o);
        break;
    }
}

uint64_t cli_now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void cli_format_ns(char *buf, size_t bufsz, uint64_t ns)
{
    uint64_t ms = ns / 1000000;

    if (ns < 1000000) {
        (void)snprintf(buf, bufsz, "%.1fus", (double)ns / 1e3);
    } else if (ms < 1000) {
        (void)snprintf(buf, bufsz, "%.1fms", (double)ns / 1e6);
    } else if (ms < 60000) {
        (void)snprintf(buf, bufsz, "%.2fs", (double)ns / 1e9);
    } else if (ms < 3600000) {
        (void)snprintf(buf, bufsz, "%llum%02llus", (unsigned long long)(ms / 60000),
                       (unsigned long long)(ms / 1000 % 60));
    } else {
        (void)snprintf(buf, bufsz, "%lluh%02llum", (unsigned long long)(ms / 3600000),
                       (unsigned long long)(ms / 60000 % 60));
    }
}

int cli_push(const char ***v, size_t *n, const char *s)
{
    const char **p = realloc(*v, (*n + 2) * sizeof(*p));

    if (p == NULL) {
        return -1;
    }
    p[(*n)++] = s;
    p[*n] = NULL;
    *v = p;
    return 0;
}
