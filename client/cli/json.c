/* JSON for the CLI through jansson: msgpack objects out as JSON, JSON params in as msgpack. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include <nettle/base64.h>

#define JSON_MAX_DEPTH 32

/* --- msgpack -> JSON ---------------------------------------------------------------------- */

/* The fewest significant digits (from @prec up to 17) that print every real in @j so that it
 * reads back as the same double: 0.41, not 0.40999999999999998. */
static int real_precision(json_t *j, int prec)
{
    switch (json_typeof(j)) {
    case JSON_REAL:
        for (char buf[40]; prec < DBL_DECIMAL_DIG; prec++) {
            (void)snprintf(buf, sizeof(buf), "%.*g", prec, json_real_value(j));
            if (strtod(buf, NULL) == json_real_value(j)) {
                break;
            }
        }
        return prec;
    case JSON_ARRAY:
        for (size_t i = 0; i < json_array_size(j); i++) {
            prec = real_precision(json_array_get(j, i), prec);
        }
        return prec;
    case JSON_OBJECT:
        for (void *it = json_object_iter(j); it != NULL; it = json_object_iter_next(j, it)) {
            prec = real_precision(json_object_iter_value(it), prec);
        }
        return prec;
    default:
        return prec;
    }
}

/* Compact, keys in insertion order (jansson keeps it), any value at the top. */
static size_t dump_flags(json_t *j)
{
    return JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(real_precision(j, DBL_DIG));
}

/* Bytes in the sequence UTF-8 lead byte @c announces (0: not a lead byte). Whether the sequence
 * is valid (continuation bytes, overlong forms, surrogates, range) is jansson's to say. */
static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xc2 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 0;
}

static bool utf8_valid(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    bool ok = j != NULL;

    json_decref(j);
    return ok;
}

json_t *cli_json_str(const char *s, size_t n)
{
    json_t *j;
    char *buf;
    size_t len = 0;

    if (n == 0) {
        return json_string("");
    }
    j = json_stringn(s, n); /* jansson checks the UTF-8 */
    if (j != NULL) {
        return j;
    }
    /* Not UTF-8: every byte that does not start a valid sequence becomes U+FFFD (3 bytes). */
    buf = malloc(n * 3);
    if (buf == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len((unsigned char)s[i]);
        if (k == 1) {
            while (i + k < n && (unsigned char)s[i + k] < 0x80) {
                k++; /* a run of ASCII */
            }
        } else if (k > n - i || (k > 1 && !utf8_valid(s + i, k))) {
            k = 0;
        }
        if (k == 0) {
            memcpy(buf + len, "\xef\xbf\xbd", 3);
            len += 3;
            i++;
        } else {
            memcpy(buf + len, s + i, k);
            len += k;
            i += k;
        }
    }
    j = json_stringn(buf, len);
    free(buf);
    return j;
}

static json_t *from_bin(const uint8_t *p, size_t n)
{
    char *b64 = malloc(BASE64_ENCODE_RAW_LENGTH(n) + 1);
    json_t *j;

    if (b64 == NULL) {
        return NULL;
    }
    base64_encode_raw(b64, n, p);
    j = json_stringn(b64, BASE64_ENCODE_RAW_LENGTH(n));
    free(b64);
    return j;
}

static json_t *from_map(const msgpack_object_map *m)
{
    json_t *obj = json_object();

    for (uint32_t i = 0; obj != NULL && i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        json_t *key = NULL, *val = cli_json_from_msgpack(&m->ptr[i].val);
        char *text = NULL;

        if (k->type == MSGPACK_OBJECT_STR) {
            key = cli_json_str(k->via.str.ptr, k->via.str.size);
        } else {
            /* JSON keys are strings: a key of another type is keyed by its JSON text. */
            json_t *kj = cli_json_from_msgpack(k);
            text = kj != NULL ? json_dumps(kj, dump_flags(kj)) : NULL;
            key = text != NULL ? json_string(text) : NULL;
            json_decref(kj);
            free(text);
        }
        if (key == NULL || val == NULL ||
            json_object_setn_new(obj, json_string_value(key), json_string_length(key), val) < 0) {
            json_decref(val);
            json_decref(obj);
            obj = NULL;
        }
        json_decref(key);
    }
    return obj;
}

json_t *cli_json_from_msgpack(const msgpack_object *o)
{
    json_t *arr;

    switch (o->type) {
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        /* jansson's integers are int64: beyond that, the nearest double. */
        return o->via.u64 <= INT64_MAX ? json_integer((json_int_t)o->via.u64)
                                       : json_real((double)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR:
        return cli_json_str(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return from_bin((const uint8_t *)o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY:
        arr = json_array();
        for (uint32_t i = 0; arr != NULL && i < o->via.array.size; i++) {
            if (json_array_append_new(arr, cli_json_from_msgpack(&o->via.array.ptr[i])) < 0) {
                json_decref(arr);
                arr = NULL;
            }
        }
        return arr;
    case MSGPACK_OBJECT_MAP:
        return from_map(&o->via.map);
    default: /* nil; ext, which the decoder refuses, so this is unreachable from the wire */
        return json_null();
    }
}

int cli_json_dump(FILE *f, json_t *j)
{
    if (j == NULL || json_dumpf(j, f, dump_flags(j)) < 0) {
        return -1;
    }
    return ferror(f) ? -1 : 0;
}

int cli_json_write(FILE *f, const msgpack_object *o)
{
    json_t *j = cli_json_from_msgpack(o);
    int r = cli_json_dump(f, j);

    json_decref(j);
    return r;
}

void cli_json_println(const msgpack_object *o)
{
    (void)cli_json_write(stdout, o);
    (void)putchar('\n');
}

void cli_json_write_str(FILE *f, const char *s, size_t n)
{
    json_t *j = cli_json_str(s, n);

    (void)cli_json_dump(f, j);
    json_decref(j);
}

/* --- JSON -> msgpack ---------------------------------------------------------------------- */

/* Nesting depth of @j: 0 for a scalar, 1 + the deepest member for an array or object. */
static int depth_of(json_t *j)
{
    int d = 0;

    if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++) {
            int dv = depth_of(json_array_get(j, i));
            d = dv > d ? dv : d;
        }
        return d + 1;
    }
    if (json_is_object(j)) {
        for (void *it = json_object_iter(j); it != NULL; it = json_object_iter_next(j, it)) {
            int dv = depth_of(json_object_iter_value(it));
            d = dv > d ? dv : d;
        }
        return d + 1;
    }
    return 0;
}

static void pack_json(msgpack_packer *pk, json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        (void)msgpack_pack_map(pk, (uint32_t)json_object_size(j));
        for (void *it = json_object_iter(j); it != NULL; it = json_object_iter_next(j, it)) {
            sbx_pack_strn(pk, json_object_iter_key(it), json_object_iter_key_len(it));
            pack_json(pk, json_object_iter_value(it));
        }
        break;
    case JSON_ARRAY:
        (void)msgpack_pack_array(pk, (uint32_t)json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++) {
            pack_json(pk, json_array_get(j, i));
        }
        break;
    case JSON_STRING:
        sbx_pack_strn(pk, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        if (json_integer_value(j) >= 0) {
            (void)msgpack_pack_uint64(pk, (uint64_t)json_integer_value(j));
        } else {
            (void)msgpack_pack_int64(pk, json_integer_value(j));
        }
        break;
    case JSON_REAL:
        (void)msgpack_pack_double(pk, json_real_value(j));
        break;
    case JSON_TRUE:
        (void)msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        (void)msgpack_pack_false(pk);
        break;
    default:
        (void)msgpack_pack_nil(pk);
        break;
    }
}

int cli_json_to_msgpack(const char *s, size_t len, msgpack_packer *pk, struct sbx_err *err)
{
    json_error_t je;
    json_t *j = json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);

    if (j == NULL) {
        return sbx_err_param(err, "json", "bad JSON at byte %d: %s", je.position, je.text);
    }
    if (depth_of(j) > JSON_MAX_DEPTH) {
        json_decref(j);
        return sbx_err_param(err, "json", "bad JSON: nested too deeply (more than %d levels)",
                             JSON_MAX_DEPTH);
    }
    pack_json(pk, j);
    json_decref(j);
    return 0;
}
