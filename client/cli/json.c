/* JSON for the CLI: msgpack objects out as JSON, JSON params in as msgpack. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define JSON_MAX_DEPTH 32

/* --- output ------------------------------------------------------------------------------- */

void cli_base64_write(FILE *f, const uint8_t *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        (void)fputc(tab[v >> 18], f);
        (void)fputc(tab[(v >> 12) & 63], f);
        (void)fputc(tab[(v >> 6) & 63], f);
        (void)fputc(tab[v & 63], f);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        (void)fputc(tab[v >> 18], f);
        (void)fputc(tab[(v >> 12) & 63], f);
        (void)fputs("==", f);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        (void)fputc(tab[v >> 18], f);
        (void)fputc(tab[(v >> 12) & 63], f);
        (void)fputc(tab[(v >> 6) & 63], f);
        (void)fputc('=', f);
    }
}

/* Length of the valid UTF-8 sequence at @s (1..4), or 0 when it is not valid UTF-8. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len;

    if (s[0] < 0x80) {
        return 1;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8. */
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

void cli_json_write_str(FILE *f, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    (void)fputc('"', f);
    while (i < n) {
        unsigned char ch = s[i];
        size_t k;

        switch (ch) {
        case '"':
            (void)fputs("\\\"", f);
            i++;
            continue;
        case '\\':
            (void)fputs("\\\\", f);
            i++;
            continue;
        case '\n':
            (void)fputs("\\n", f);
            i++;
            continue;
        case '\r':
            (void)fputs("\\r", f);
            i++;
            continue;
        case '\t':
            (void)fputs("\\t", f);
            i++;
            continue;
        case '\b':
            (void)fputs("\\b", f);
            i++;
            continue;
        case '\f':
            (void)fputs("\\f", f);
            i++;
            continue;
        default:
            break;
        }
        if (ch < 0x20 || ch == 0x7f) {
            (void)fprintf(f, "\\u%04x", ch);
            i++;
            continue;
        }
        k = utf8_seq(s + i, n - i);
        if (k == 0) {
            (void)fputs("\\ufffd", f);
            i++;
            continue;
        }
        (void)fwrite(s + i, 1, k, f);
        i += k;
    }
    (void)fputc('"', f);
}

static void write_key(FILE *f, const msgpack_object *k)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m;

    if (k->type == MSGPACK_OBJECT_STR) {
        cli_json_write_str(f, k->via.str.ptr, k->via.str.size);
        return;
    }
    /* JSON keys are strings: render the key as JSON, then quote that text. */
    m = open_memstream(&buf, &len);
    if (m == NULL) {
        (void)fputs("\"\"", f);
        return;
    }
    (void)cli_json_write(m, k);
    if (fclose(m) != 0 || buf == NULL) {
        (void)fputs("\"\"", f);
    } else {
        cli_json_write_str(f, buf, len);
    }
    free(buf);
}

/* The shortest %g form that reads back as the same double (0.41, not 0.40999999999999998). */
static void write_double(FILE *f, double v)
{
    char buf[40];

    for (int prec = 15; prec <= 17; prec++) {
        (void)snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (strtod(buf, NULL) == v) {
            break;
        }
    }
    (void)fputs(buf, f);
}

static void write_value(FILE *f, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        (void)fputs("null", f);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        (void)fputs(o->via.boolean ? "true" : "false", f);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        (void)fprintf(f, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        (void)fprintf(f, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (isfinite(o->via.f64)) {
            write_double(f, o->via.f64);
        } else {
            (void)fputs("null", f);
        }
        break;
    case MSGPACK_OBJECT_STR:
        cli_json_write_str(f, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        (void)fputc('"', f);
        cli_base64_write(f, (const uint8_t *)o->via.bin.ptr, o->via.bin.size);
        (void)fputc('"', f);
        break;
    case MSGPACK_OBJECT_ARRAY:
        (void)fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i > 0) {
                (void)fputc(',', f);
            }
            write_value(f, &o->via.array.ptr[i]);
        }
        (void)fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        (void)fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (i > 0) {
                (void)fputc(',', f);
            }
            write_key(f, &o->via.map.ptr[i].key);
            (void)fputc(':', f);
            write_value(f, &o->via.map.ptr[i].val);
        }
        (void)fputc('}', f);
        break;
    default: /* ext: the decoder refuses it, so this is unreachable from the wire */
        (void)fputs("null", f);
        break;
    }
}

int cli_json_write(FILE *f, const msgpack_object *o)
{
    write_value(f, o);
    return ferror(f) ? -1 : 0;
}

/* --- input -------------------------------------------------------------------------------- */

struct jp {
    const char *s;
    size_t len;
    size_t pos;
    unsigned depth;
    struct sbx_err *err;
};

static int jp_fail(struct jp *p, const char *what)
{
    return sbx_err_param(p->err, "json", "bad JSON at byte %zu: %s", p->pos, what);
}

static void skip_ws(struct jp *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r')) {
        p->pos++;
    }
}

static int hex4(struct jp *p, uint32_t *v)
{
    *v = 0;
    if (p->len - p->pos < 4) {
        return jp_fail(p, "truncated \\u escape");
    }
    for (int i = 0; i < 4; i++) {
        char ch = p->s[p->pos++];
        *v <<= 4;
        if (ch >= '0' && ch <= '9') {
            *v |= (uint32_t)(ch - '0');
        } else if (ch >= 'a' && ch <= 'f') {
            *v |= (uint32_t)(ch - 'a' + 10);
        } else if (ch >= 'A' && ch <= 'F') {
            *v |= (uint32_t)(ch - 'A' + 10);
        } else {
            return jp_fail(p, "bad hex digit in \\u escape");
        }
    }
    return 0;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parse a string at p->pos (on the opening quote); pack it when @pk is not NULL. */
static int parse_string(struct jp *p, msgpack_packer *pk)
{
    /* The decoded text is never longer than the escaped source. */
    char *buf = pk != NULL ? malloc(p->len - p->pos + 1) : NULL;
    size_t n = 0;

    if (pk != NULL && buf == NULL) {
        return sbx_err_set(p->err, SBX_E_INTERNAL, "out of memory");
    }
    p->pos++; /* opening quote */
    for (;;) {
        char ch;
        if (p->pos >= p->len) {
            free(buf);
            return jp_fail(p, "unterminated string");
        }
        ch = p->s[p->pos++];
        if (ch == '"') {
            break;
        }
        if ((unsigned char)ch < 0x20) {
            free(buf);
            return jp_fail(p, "control character in string");
        }
        if (ch != '\\') {
            if (buf != NULL) {
                buf[n++] = ch;
            }
            continue;
        }
        if (p->pos >= p->len) {
            free(buf);
            return jp_fail(p, "unterminated escape");
        }
        ch = p->s[p->pos++];
        switch (ch) {
        case '"':
        case '\\':
        case '/':
            break;
        case 'b':
            ch = '\b';
            break;
        case 'f':
            ch = '\f';
            break;
        case 'n':
            ch = '\n';
            break;
        case 'r':
            ch = '\r';
            break;
        case 't':
            ch = '\t';
            break;
        case 'u': {
            uint32_t cp, lo;
            if (hex4(p, &cp) < 0) {
                free(buf);
                return -1;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    free(buf);
                    return jp_fail(p, "lone high surrogate");
                }
                p->pos += 2;
                if (hex4(p, &lo) < 0) {
                    free(buf);
                    return -1;
                }
                if (lo < 0xdc00 || lo > 0xdfff) {
                    free(buf);
                    return jp_fail(p, "bad low surrogate");
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                free(buf);
                return jp_fail(p, "lone low surrogate");
            }
            if (buf != NULL) {
                n += put_utf8(buf + n, cp);
            }
            continue;
        }
        default:
            free(buf);
            return jp_fail(p, "unknown escape");
        }
        if (buf != NULL) {
            buf[n++] = ch;
        }
    }
    if (pk != NULL) {
        sbx_pack_strn(pk, buf, n);
    }
    free(buf);
    return 0;
}

static int parse_number(struct jp *p, msgpack_packer *pk)
{
    size_t start = p->pos;
    bool neg = false, is_float = false;
    char tmp[64];
    char *end;

    if (p->s[p->pos] == '-') {
        neg = true;
        p->pos++;
    }
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
        return jp_fail(p, "bad number");
    }
    if (p->s[p->pos] == '0' && p->pos + 1 < p->len && p->s[p->pos + 1] >= '0' &&
        p->s[p->pos + 1] <= '9') {
        return jp_fail(p, "leading zero in number");
    }
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        p->pos++;
    }
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_float = true;
        p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
            return jp_fail(p, "digit expected after '.'");
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            p->pos++;
        }
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_float = true;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) {
            p->pos++;
        }
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
            return jp_fail(p, "digit expected in exponent");
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            p->pos++;
        }
    }
    if (p->pos - start >= sizeof(tmp)) {
        return jp_fail(p, "number too long");
    }
    if (pk == NULL) {
        return 0;
    }
    memcpy(tmp, p->s + start, p->pos - start);
    tmp[p->pos - start] = '\0';
    errno = 0;
    if (!is_float && !neg) {
        unsigned long long v = strtoull(tmp, &end, 10);
        if (errno == 0) {
            (void)msgpack_pack_uint64(pk, v);
            return 0;
        }
    } else if (!is_float) {
        long long v = strtoll(tmp, &end, 10);
        if (errno == 0) {
            (void)msgpack_pack_int64(pk, v);
            return 0;
        }
    }
    /* Fractions, exponents and integers beyond 64 bits are doubles. */
    (void)msgpack_pack_double(pk, strtod(tmp, &end));
    return 0;
}

static int parse_value(struct jp *p, msgpack_packer *pk);

/* Parse the members of an array or object starting after its opening bracket. */
static int parse_members(struct jp *p, bool object, msgpack_packer *pk, uint32_t *count)
{
    char close = object ? '}' : ']';

    *count = 0;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    for (;;) {
        skip_ws(p);
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                return jp_fail(p, "object key (a string) expected");
            }
            if (parse_string(p, pk) < 0) {
                return -1;
            }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                return jp_fail(p, "':' expected");
            }
            p->pos++;
        }
        if (parse_value(p, pk) < 0) {
            return -1;
        }
        if (*count == UINT32_MAX) {
            return jp_fail(p, "too many members");
        }
        (*count)++;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return 0;
        }
        return jp_fail(p, object ? "',' or '}' expected" : "',' or ']' expected");
    }
}

/*
 * msgpack wants a container's size before its elements: a container is scanned once without
 * packing to count its members, then parsed again for real (O(size * depth), depth <= 32).
 */
static int parse_container(struct jp *p, bool object, msgpack_packer *pk)
{
    size_t start;
    uint32_t count;

    if (++p->depth > JSON_MAX_DEPTH) {
        return jp_fail(p, "nested too deeply");
    }
    p->pos++; /* opening bracket */
    start = p->pos;
    if (parse_members(p, object, NULL, &count) < 0) {
        return -1;
    }
    if (pk != NULL) {
        if (object) {
            (void)msgpack_pack_map(pk, count);
        } else {
            (void)msgpack_pack_array(pk, count);
        }
        p->pos = start;
        if (parse_members(p, object, pk, &count) < 0) {
            return -1;
        }
    }
    p->depth--;
    return 0;
}

static int parse_literal(struct jp *p, const char *word)
{
    size_t n = strlen(word);

    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) {
        return jp_fail(p, "unexpected character");
    }
    p->pos += n;
    return 0;
}

static int parse_value(struct jp *p, msgpack_packer *pk)
{
    char ch;

    skip_ws(p);
    if (p->pos >= p->len) {
        return jp_fail(p, "value expected");
    }
    ch = p->s[p->pos];
    switch (ch) {
    case '{':
        return parse_container(p, true, pk);
    case '[':
        return parse_container(p, false, pk);
    case '"':
        return parse_string(p, pk);
    case 't':
        if (parse_literal(p, "true") < 0) {
            return -1;
        }
        if (pk != NULL) {
            (void)msgpack_pack_true(pk);
        }
        return 0;
    case 'f':
        if (parse_literal(p, "false") < 0) {
            return -1;
        }
        if (pk != NULL) {
            (void)msgpack_pack_false(pk);
        }
        return 0;
    case 'n':
        if (parse_literal(p, "null") < 0) {
            return -1;
        }
        if (pk != NULL) {
            (void)msgpack_pack_nil(pk);
        }
        return 0;
    default:
        if (ch == '-' || (ch >= '0' && ch <= '9')) {
            return parse_number(p, pk);
        }
        return jp_fail(p, "unexpected character");
    }
}

int cli_json_to_msgpack(const char *s, size_t len, msgpack_packer *pk, struct sbx_err *err)
{
    struct jp p = { .s = s, .len = len, .pos = 0, .depth = 0, .err = err };

    /* Validate everything first, so nothing is packed for bad input. */
    if (parse_value(&p, NULL) < 0) {
        return -1;
    }
    skip_ws(&p);
    if (p.pos != p.len) {
        return jp_fail(&p, "trailing characters after the value");
    }
    p.pos = 0;
    p.depth = 0;
    return parse_value(&p, pk);
}
