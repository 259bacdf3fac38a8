/* Message decoding (validated pre-scan + msgpack-c), params accessors and encoders. */
#include "sbx/msg.h"

#include <stdlib.h>
#include <string.h>

#include "sbx/frame.h"

/* --- pre-scan ---------------------------------------------------------------------------- */

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

/*
 * Walk the msgpack encoding without building anything. Every container claims a count; each
 * element needs at least one byte, so a count larger than the bytes left is a lie and is refused
 * here, before msgpack-c would size an allocation from it.
 */
int sbx_msgpack_validate(const uint8_t *buf, size_t len, struct sbx_err *err)
{
    return sbx_msgpack_scan(buf, len, NULL, err);
}

int sbx_msgpack_scan(const uint8_t *buf, size_t len, size_t *used, struct sbx_err *err)
{
    uint64_t todo[SBX_MSG_MAX_DEPTH + 1];
    unsigned depth = 0;
    size_t pos = 0;
    uint64_t objects = 0;

    todo[0] = 1;
    for (;;) {
        uint8_t b;
        uint64_t skip = 0;     /* payload bytes after the header */
        uint64_t children = 0; /* elements of a container */
        bool container = false;
        unsigned hdr = 1;

        while (todo[depth] == 0) {
            if (depth == 0) {
                if (used != NULL) {
                    *used = pos;
                    return 0;
                }
                if (pos != len) {
                    return sbx_err_set(err, SBX_E_BAD_MESSAGE,
                                       "%zu trailing bytes after the message", len - pos);
                }
                return 0;
            }
            depth--;
        }
        todo[depth]--;
        if (pos >= len) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "message truncated at byte %zu", pos);
        }
        if (++objects > SBX_MSG_MAX_OBJECTS) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "more than %u objects in one message",
                               SBX_MSG_MAX_OBJECTS);
        }
        b = buf[pos];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b >= 0x80 && b <= 0x8f) {
            children = 2u * (b & 0x0f);
            container = true;
        } else if (b >= 0x90 && b <= 0x9f) {
            children = b & 0x0f;
            container = true;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            unsigned n = 0; /* size of the length field */
            switch (b) {
            case 0xc4:
            case 0xd9:
                n = 1;
                break; /* bin8, str8 */
            case 0xc5:
            case 0xda:
                n = 2;
                break; /* bin16, str16 */
            case 0xc6:
            case 0xdb:
                n = 4;
                break; /* bin32, str32 */
            case 0xca:
                skip = 4;
                break;
            case 0xcb:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xdc:
            case 0xde:
                n = 2;
                break; /* array16, map16 */
            case 0xdd:
            case 0xdf:
                n = 4;
                break; /* array32, map32 */
            default:
                return sbx_err_set(err, SBX_E_BAD_MESSAGE,
                                   "unsupported msgpack type 0x%02x at byte %zu", b, pos);
            }
            if (n != 0) {
                uint64_t v;
                if (len - pos - 1 < n) {
                    return sbx_err_set(err, SBX_E_BAD_MESSAGE, "message truncated at byte %zu",
                                       pos);
                }
                v = be(buf + pos + 1, n);
                hdr += n;
                if (b == 0xdc || b == 0xdd) {
                    children = v;
                    container = true;
                } else if (b == 0xde || b == 0xdf) {
                    children = 2 * v;
                    container = true;
                } else {
                    skip = v;
                }
            }
        }
        if (len - pos < hdr) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "message truncated at byte %zu", pos);
        }
        pos += hdr;
        if (skip > len - pos) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE,
                               "value at byte %zu claims %llu bytes but %zu remain", pos - hdr,
                               (unsigned long long)skip, len - pos);
        }
        pos += skip;
        /* An empty container counts for depth as well (PROTOCOL.md §4.1): msgpack-c has its own
         * depth limit and would fail on it in a way that cannot be told from out-of-memory. */
        if (container && depth + 1 > SBX_MSG_MAX_DEPTH) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "nesting deeper than %u", SBX_MSG_MAX_DEPTH);
        }
        if (children > 0) {
            if (children > len - pos) {
                return sbx_err_set(
                    err, SBX_E_BAD_MESSAGE,
                    "container at byte %zu claims %llu elements but %zu bytes remain", pos - hdr,
                    (unsigned long long)children, len - pos);
            }
            todo[++depth] = children;
        }
    }
}

/* --- decoding ---------------------------------------------------------------------------- */

int sbx_decoder_init(struct sbx_decoder *d)
{
    return msgpack_zone_init(&d->zone, 4096) ? 0 : -1;
}

void sbx_decoder_destroy(struct sbx_decoder *d)
{
    msgpack_zone_destroy(&d->zone);
}

/* Read a msgpack unsigned integer at @p; returns bytes used or 0 if not a uint. */
static size_t read_uint(const uint8_t *p, size_t len, uint64_t *v)
{
    unsigned n;

    if (len < 1) {
        return 0;
    }
    if (p[0] <= 0x7f) {
        *v = p[0];
        return 1;
    }
    if (p[0] < 0xcc || p[0] > 0xcf) {
        return 0;
    }
    n = 1u << (p[0] - 0xcc); /* 0xcc..0xcf: 1, 2, 4, 8 bytes */
    if (len < 1 + n) {
        return 0;
    }
    *v = be(p + 1, n);
    return 1 + n;
}

/* The common stream-data encoding, parsed by hand so bulk bytes skip msgpack-c entirely. */
static int decode_data_fast(const uint8_t *buf, size_t len, struct sbx_msg *m)
{
    uint64_t stream, n;
    size_t off = 2, k;

    if (len < 5 || buf[0] != 0x93 || buf[1] != 0x03) {
        return 0;
    }
    k = read_uint(buf + off, len - off, &stream);
    if (k == 0) {
        return 0;
    }
    off += k;
    if (off >= len) {
        return 0;
    }
    switch (buf[off]) {
    case 0xc4:
        k = 1;
        break;
    case 0xc5:
        k = 2;
        break;
    case 0xc6:
        k = 4;
        break;
    default:
        return 0;
    }
    if (len - off - 1 < k) {
        return 0;
    }
    n = be(buf + off + 1, (unsigned)k);
    off += 1 + k;
    if (n != len - off) {
        return 0;
    }
    m->kind = SBX_MSG_DATA;
    m->stream = (uint32_t)stream;
    m->data = buf + off;
    m->data_len = (uint32_t)n;
    return stream <= UINT32_MAX ? 1 : 0;
}

static bool is_uint(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

static int decode_id(const msgpack_object *o, struct sbx_msg *m, struct sbx_err *err)
{
    if (!is_uint(o) || o->via.u64 > UINT32_MAX) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "message id must be a uint32");
    }
    m->id = (uint32_t)o->via.u64;
    return 0;
}

static int decode_method(const msgpack_object *o, struct sbx_msg *m, struct sbx_err *err)
{
    if (o->type != MSGPACK_OBJECT_STR) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "method must be a string");
    }
    if (o->via.str.size == 0 || o->via.str.size > SBX_METHOD_MAX) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "method name must be 1..%u bytes",
                           SBX_METHOD_MAX);
    }
    m->method = o->via.str.ptr;
    m->method_len = o->via.str.size;
    return 0;
}

static int decode_params(const msgpack_object *o, struct sbx_msg *m, struct sbx_err *err)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        m->params = NULL;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "params must be a map");
    }
    m->params = o;
    return 0;
}

/*
 * Find the id of something that starts like a request, for an addressed error reply (PROTOCOL.md
 * §3.3): an array header announcing at least 2 elements, the fixint 0, then an unsigned integer
 * that fits in u32, all of it complete. Whatever follows may be broken.
 */
static void sniff_request_id(const uint8_t *buf, size_t len, struct sbx_msg *m)
{
    uint64_t count, id;
    size_t off;

    if (len < 1) {
        return;
    }
    if (buf[0] >= 0x90 && buf[0] <= 0x9f) {
        count = buf[0] & 0x0f;
        off = 1;
    } else if (buf[0] == 0xdc && len >= 3) {
        count = be(buf + 1, 2);
        off = 3;
    } else if (buf[0] == 0xdd && len >= 5) {
        count = be(buf + 1, 4);
        off = 5;
    } else {
        return;
    }
    if (count < 2 || off >= len || buf[off] != 0x00) {
        return;
    }
    off++;
    if (read_uint(buf + off, len - off, &id) > 0 && id <= UINT32_MAX) {
        m->kind = SBX_MSG_REQUEST;
        m->id = (uint32_t)id;
        m->id_valid = true;
    }
}

int sbx_msg_decode(struct sbx_decoder *d, const uint8_t *buf, size_t len, struct sbx_msg *m,
                   struct sbx_err *err)
{
    const msgpack_object *a;
    uint32_t n;
    size_t off = 0;
    msgpack_unpack_return ur;

    memset(m, 0, sizeof(*m));
    m->kind = -1;
    if (decode_data_fast(buf, len, m) == 1) {
        if (m->stream == 0 || m->data_len == 0 || m->data_len > SBX_STREAM_CHUNK_MAX) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE,
                               "stream data needs a stream id > 0 and 1..%u bytes",
                               SBX_STREAM_CHUNK_MAX);
        }
        return 0;
    }
    if (sbx_msgpack_validate(buf, len, err) < 0) {
        sniff_request_id(buf, len, m);
        return -1;
    }
    msgpack_zone_clear(&d->zone);
    ur = msgpack_unpack((const char *)buf, len, &off, &d->zone, &m->root);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        sniff_request_id(buf, len, m);
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory decoding a message");
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        sniff_request_id(buf, len, m);
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "invalid msgpack");
    }
    if (m->root.type != MSGPACK_OBJECT_ARRAY || m->root.via.array.size < 2) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a message is an array of 3 or 4 elements");
    }
    a = m->root.via.array.ptr;
    n = m->root.via.array.size;
    if (!is_uint(&a[0]) || a[0].via.u64 > SBX_MSG_DATA) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "unknown message kind");
    }
    m->kind = (int)a[0].via.u64;
    if (m->kind != SBX_MSG_REQUEST && (n < 3 || n > 4)) {
        return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a message is an array of 3 or 4 elements");
    }
    switch (m->kind) {
    case SBX_MSG_REQUEST:
        /* The id first, so a request with params missing gets an addressed error response. */
        if (decode_id(&a[1], m, err) < 0) {
            return -1;
        }
        m->id_valid = true;
        if (n != 4) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a request has 4 elements");
        }
        if (decode_method(&a[2], m, err) < 0 || decode_params(&a[3], m, err) < 0) {
            return -1;
        }
        return 0;
    case SBX_MSG_RESPONSE:
        if (n != 4) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a response has 4 elements");
        }
        if (decode_id(&a[1], m, err) < 0) {
            return -1;
        }
        if (a[2].type == MSGPACK_OBJECT_MAP) {
            m->error = &a[2];
        } else if (a[2].type != MSGPACK_OBJECT_NIL) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a response's error must be nil or a map");
        }
        m->result = &a[3];
        return 0;
    case SBX_MSG_NOTIFY:
        if (n != 3) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE, "a notification has 3 elements");
        }
        if (decode_method(&a[1], m, err) < 0 || decode_params(&a[2], m, err) < 0) {
            return -1;
        }
        return 0;
    default: /* SBX_MSG_DATA in an unusual but valid encoding */
        if (n == 3 && is_uint(&a[1]) && a[1].via.u64 <= UINT32_MAX) {
            m->stream = (uint32_t)a[1].via.u64; /* so a bad payload can be pinned on its stream */
        }
        if (n != 3 || !is_uint(&a[1]) || a[1].via.u64 == 0 || a[1].via.u64 > UINT32_MAX ||
            a[2].type != MSGPACK_OBJECT_BIN || a[2].via.bin.size == 0 ||
            a[2].via.bin.size > SBX_STREAM_CHUNK_MAX) {
            return sbx_err_set(err, SBX_E_BAD_MESSAGE,
                               "stream data is [3, stream>0, bin of 1..%u bytes]",
                               SBX_STREAM_CHUNK_MAX);
        }
        m->stream = (uint32_t)a[1].via.u64;
        m->data = (const uint8_t *)a[2].via.bin.ptr;
        m->data_len = a[2].via.bin.size;
        return 0;
    }
}

bool sbx_msg_method_is(const struct sbx_msg *m, const char *name)
{
    size_t n = strlen(name);
    return m->method != NULL && m->method_len == n && memcmp(m->method, name, n) == 0;
}

/* --- accessors --------------------------------------------------------------------------- */

const msgpack_object *sbx_obj_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);

    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        return NULL;
    }
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0) {
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

/* Look up @key; 0 found, 1 absent and optional, -1 absent and required. */
static int lookup(const msgpack_object *params, const char *key, int required,
                  const msgpack_object **o, struct sbx_err *err)
{
    *o = sbx_obj_get(params, key);
    if (*o == NULL || (*o)->type == MSGPACK_OBJECT_NIL) {
        if (required) {
            return sbx_err_param(err, key, "missing required parameter \"%s\"", key);
        }
        return 1;
    }
    return 0;
}

int sbx_param_str(const msgpack_object *params, const char *key, int required, size_t max,
                  const char **s, size_t *len, struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        return sbx_err_param(err, key, "parameter \"%s\" must be a string", key);
    }
    if (o->via.str.size > max) {
        return sbx_err_param(err, key, "parameter \"%s\" is longer than %zu bytes", key, max);
    }
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

bool sbx_obj_bytes(const msgpack_object *o, const char **p, size_t *n)
{
    if (o == NULL) {
        return false;
    }
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *n = o->via.str.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *n = o->via.bin.size;
        return true;
    }
    return false;
}

int sbx_param_bstr(const msgpack_object *params, const char *key, int required, char *buf,
                   size_t bufsz, struct sbx_err *err)
{
    const msgpack_object *o;
    const char *p;
    size_t n;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (!sbx_obj_bytes(o, &p, &n)) {
        return sbx_err_param(err, key, "parameter \"%s\" must be a string", key);
    }
    if (n >= bufsz) {
        return sbx_err_param(err, key, "parameter \"%s\" is longer than %zu bytes", key, bufsz - 1);
    }
    if (memchr(p, '\0', n) != NULL) {
        return sbx_err_param(err, key, "parameter \"%s\" contains a NUL byte", key);
    }
    memcpy(buf, p, n);
    buf[n] = '\0';
    return 0;
}

int sbx_obj_cstr(const msgpack_object *o, char *buf, size_t bufsz)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size >= bufsz ||
        memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL) {
        return -1;
    }
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return 0;
}

int sbx_param_cstr(const msgpack_object *params, const char *key, int required, char *buf,
                   size_t bufsz, struct sbx_err *err)
{
    const char *s;
    size_t n;
    int r = sbx_param_str(params, key, required, bufsz - 1, &s, &n, err);

    if (r != 0) {
        return r;
    }
    if (memchr(s, '\0', n) != NULL) {
        return sbx_err_param(err, key, "parameter \"%s\" contains a NUL byte", key);
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

int sbx_param_u64(const msgpack_object *params, const char *key, int required, uint64_t min,
                  uint64_t max, uint64_t *out, struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return sbx_err_param(err, key, "parameter \"%s\" must be a non-negative integer", key);
    }
    if (o->via.u64 < min || o->via.u64 > max) {
        return sbx_err_param(err, key, "parameter \"%s\" must be in %llu..%llu", key,
                             (unsigned long long)min, (unsigned long long)max);
    }
    *out = o->via.u64;
    return 0;
}

int sbx_param_i64(const msgpack_object *params, const char *key, int required, int64_t min,
                  int64_t max, int64_t *out, struct sbx_err *err)
{
    const msgpack_object *o;
    int64_t v;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > INT64_MAX) {
            return sbx_err_param(err, key, "parameter \"%s\" is out of range", key);
        }
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return sbx_err_param(err, key, "parameter \"%s\" must be an integer", key);
    }
    if (v < min || v > max) {
        return sbx_err_param(err, key, "parameter \"%s\" must be in %lld..%lld", key,
                             (long long)min, (long long)max);
    }
    *out = v;
    return 0;
}

int sbx_param_bool(const msgpack_object *params, const char *key, int required, bool *out,
                   struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return sbx_err_param(err, key, "parameter \"%s\" must be a boolean", key);
    }
    *out = o->via.boolean;
    return 0;
}

int sbx_param_bin(const msgpack_object *params, const char *key, int required, size_t max,
                  const uint8_t **p, size_t *len, struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_BIN) {
        return sbx_err_param(err, key, "parameter \"%s\" must be binary (msgpack bin)", key);
    }
    if (o->via.bin.size > max) {
        return sbx_err_param(err, key, "parameter \"%s\" is longer than %zu bytes", key, max);
    }
    *p = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return 0;
}

int sbx_param_map(const msgpack_object *params, const char *key, int required, uint32_t max_entries,
                  const msgpack_object **out, struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        return sbx_err_param(err, key, "parameter \"%s\" must be a map", key);
    }
    if (o->via.map.size > max_entries) {
        return sbx_err_param(err, key, "parameter \"%s\" has more than %u entries", key,
                             max_entries);
    }
    *out = o;
    return 0;
}

int sbx_param_array(const msgpack_object *params, const char *key, int required, uint32_t max_items,
                    const msgpack_object **out, struct sbx_err *err)
{
    const msgpack_object *o;
    int r = lookup(params, key, required, &o, err);

    if (r != 0) {
        return r;
    }
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return sbx_err_param(err, key, "parameter \"%s\" must be an array", key);
    }
    if (o->via.array.size > max_items) {
        return sbx_err_param(err, key, "parameter \"%s\" has more than %u items", key, max_items);
    }
    *out = o;
    return 0;
}

static void obj_copy(const msgpack_object *map, const char *key, char *dst, size_t dstsz)
{
    const msgpack_object *o = sbx_obj_get(map, key);
    size_t n;

    if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
        return;
    }
    n = o->via.str.size < dstsz - 1 ? o->via.str.size : dstsz - 1;
    memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
}

void sbx_err_from_obj(const msgpack_object *o, struct sbx_err *e)
{
    const msgpack_object *n;

    sbx_err_clear(e);
    obj_copy(o, "code", e->code, sizeof(e->code));
    obj_copy(o, "message", e->msg, sizeof(e->msg));
    obj_copy(o, "stage", e->stage, sizeof(e->stage));
    obj_copy(o, "field", e->field, sizeof(e->field));
    obj_copy(o, "limit", e->limit, sizeof(e->limit));
    n = sbx_obj_get(o, "path");
    if (n != NULL) {
        const char *p;
        size_t len;
        if (sbx_obj_bytes(n, &p, &len) && len < sizeof(e->path) && memchr(p, '\0', len) == NULL) {
            memcpy(e->path, p, len);
            e->path[len] = '\0';
        }
    }
    n = sbx_obj_get(o, "min");
    if (n != NULL && n->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        e->min = n->via.u64;
        e->has_min = true;
    }
    n = sbx_obj_get(o, "max");
    if (n != NULL && n->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        e->max = n->via.u64;
        e->has_max = true;
    }
    n = sbx_obj_get(o, "errno");
    if (n != NULL && n->type == MSGPACK_OBJECT_POSITIVE_INTEGER && n->via.u64 < 4096) {
        e->sys_errno = (int)n->via.u64;
    }
    if (e->code[0] == '\0') {
        memcpy(e->code, SBX_E_INTERNAL, sizeof(SBX_E_INTERNAL));
    }
}

/* --- encoding ---------------------------------------------------------------------------- */

/* msgpack-c's packer callback; a sticky flag makes one failed write poison the whole frame. */
static int out_write(void *data, const char *buf, size_t len)
{
    struct sbx_out *o = data;

    if (o->failed) {
        return -1;
    }
    if (msgpack_sbuffer_write(&o->sb, buf, len) != 0) {
        o->failed = 1;
        return -1;
    }
    return 0;
}

void sbx_out_init(struct sbx_out *o)
{
    msgpack_sbuffer_init(&o->sb);
    msgpack_packer_init(&o->pk, o, out_write);
    o->start = 0;
    o->failed = 0;
}

void sbx_out_destroy(struct sbx_out *o)
{
    msgpack_sbuffer_destroy(&o->sb);
    msgpack_sbuffer_init(&o->sb);
}

void sbx_out_reset(struct sbx_out *o)
{
    o->sb.size = 0;
    o->start = 0;
    o->failed = 0;
}

char *sbx_out_steal(struct sbx_out *o, size_t *len)
{
    *len = o->sb.size;
    return msgpack_sbuffer_release(&o->sb);
}

void sbx_out_begin(struct sbx_out *o)
{
    static const char zero[4];

    o->failed = 0;
    o->start = o->sb.size;
    (void)out_write(o, zero, sizeof(zero)); /* a failure is caught by sbx_out_end */
}

int sbx_out_end(struct sbx_out *o, struct sbx_err *err)
{
    size_t len = o->sb.size - o->start - SBX_FRAME_HDR;

    if (o->failed) {
        o->sb.size = o->start;
        return sbx_err_set(err, SBX_E_INTERNAL, "out of memory encoding a message");
    }
    if (len > SBX_FRAME_MAX) {
        o->sb.size = o->start;
        return sbx_err_limit(err, "frame_max", SBX_FRAME_MAX,
                             "message of %zu bytes exceeds the %u-byte frame cap", len,
                             SBX_FRAME_MAX);
    }
    sbx_frame_put_len((uint8_t *)o->sb.data + o->start, (uint32_t)len);
    return 0;
}

void sbx_pack_cstr(msgpack_packer *pk, const char *s)
{
    sbx_pack_strn(pk, s, strlen(s));
}

/*
 * Length of the valid UTF-8 sequence at @s (1..4), or 0 when the byte there starts none: a stray
 * continuation byte, an overlong form, a surrogate, a code point past U+10FFFF or a sequence cut
 * short by the end of the string.
 */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp;

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        k = 1;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 2;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 3;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n - 1 < k) {
        return 0;
    }
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[j] & 0x3f);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return k + 1;
}

/* Bytes of @s once every byte that starts no valid sequence is replaced by U+FFFD (3 bytes). */
static size_t utf8_fixed_len(const char *s, size_t n, bool *valid)
{
    size_t i = 0, out = 0;

    *valid = true;
    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k == 0) {
            *valid = false;
            out += 3;
            i++;
        } else {
            out += k;
            i += k;
        }
    }
    return out;
}

void sbx_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    static const char fffd[3] = { (char)0xef, (char)0xbf, (char)0xbd };
    size_t i = 0, run = 0;
    bool valid;
    size_t len = utf8_fixed_len(s, n, &valid);

    /* Failures are sticky, see out_write. */
    if (valid) {
        (void)msgpack_pack_str_with_body(pk, s, n);
        return;
    }
    /* A str is UTF-8 on the wire, whatever was formatted into it (PROTOCOL.md §4.4): a path or a
     * peer string quoted in a message must not make a strict client reject the whole frame. */
    (void)msgpack_pack_str(pk, len);
    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k != 0) {
            run += k;
            i += k;
            continue;
        }
        if (run > 0) {
            (void)msgpack_pack_str_body(pk, s + i - run, run);
            run = 0;
        }
        (void)msgpack_pack_str_body(pk, fffd, sizeof(fffd));
        i++;
    }
    if (run > 0) {
        (void)msgpack_pack_str_body(pk, s + n - run, run);
    }
}

void sbx_pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    (void)msgpack_pack_bin_with_body(pk, p, n);
}

void sbx_hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

bool sbx_utf8_valid(const char *str, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)str + i, n - i);
        if (k == 0) {
            return false;
        }
        i += k;
    }
    return true;
}

void sbx_pack_bstr(msgpack_packer *pk, const char *s, size_t n)
{
    if (sbx_utf8_valid(s, n)) {
        (void)msgpack_pack_str_with_body(pk, s, n);
    } else {
        sbx_pack_bin(pk, s, n);
    }
}

void sbx_pack_request_head(msgpack_packer *pk, uint32_t id, const char *method)
{
    (void)msgpack_pack_array(pk, 4);
    (void)msgpack_pack_uint8(pk, SBX_MSG_REQUEST);
    (void)msgpack_pack_uint32(pk, id);
    sbx_pack_cstr(pk, method);
}

void sbx_pack_response_head(msgpack_packer *pk, uint32_t id)
{
    (void)msgpack_pack_array(pk, 4);
    (void)msgpack_pack_uint8(pk, SBX_MSG_RESPONSE);
    (void)msgpack_pack_uint32(pk, id);
    (void)msgpack_pack_nil(pk);
}

void sbx_pack_notify_head(msgpack_packer *pk, const char *method)
{
    (void)msgpack_pack_array(pk, 3);
    (void)msgpack_pack_uint8(pk, SBX_MSG_NOTIFY);
    sbx_pack_cstr(pk, method);
}

/* How many bytes of @s (@n of them) sbx_pack_strn packs into at most @cap bytes, U+FFFD for each
 * invalid byte counted: a cut between characters, never inside one. */
static size_t utf8_prefix_within(const char *s, size_t n, size_t cap)
{
    size_t i = 0, out = 0;

    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        size_t add = k == 0 ? 3 : k;
        if (out + add > cap) {
            break;
        }
        out += add;
        i += k == 0 ? 1 : k;
    }
    return i;
}

void sbx_pack_err(msgpack_packer *pk, const struct sbx_err *e)
{
    uint32_t n = 2 + (e->sys_errno != 0) + (e->stage[0] != '\0') + (e->field[0] != '\0') +
                 (e->limit[0] != '\0') + (e->path[0] != '\0') + e->has_min + e->has_max;

    (void)msgpack_pack_map(pk, n);
    sbx_pack_kv_str(pk, "code", e->code[0] ? e->code : SBX_E_INTERNAL);
    /* At most SBX_ERR_MSG_MAX bytes on the wire (§7.1) also once invalid bytes of a name it
     * quotes became U+FFFD (3 bytes each). */
    sbx_pack_cstr(pk, "message");
    sbx_pack_strn(pk, e->msg, utf8_prefix_within(e->msg, strlen(e->msg), SBX_ERR_MSG_MAX));
    if (e->sys_errno != 0) {
        sbx_pack_kv_u64(pk, "errno", (uint64_t)e->sys_errno);
    }
    if (e->stage[0] != '\0') {
        sbx_pack_kv_str(pk, "stage", e->stage);
    }
    if (e->field[0] != '\0') {
        sbx_pack_kv_str(pk, "field", e->field);
    }
    if (e->limit[0] != '\0') {
        sbx_pack_kv_str(pk, "limit", e->limit);
    }
    if (e->has_min) {
        sbx_pack_kv_u64(pk, "min", e->min);
    }
    if (e->has_max) {
        sbx_pack_kv_u64(pk, "max", e->max);
    }
    if (e->path[0] != '\0') {
        sbx_pack_cstr(pk, "path");
        sbx_pack_bstr(pk, e->path, strlen(e->path));
    }
}

void sbx_pack_error_response(msgpack_packer *pk, uint32_t id, const struct sbx_err *e)
{
    (void)msgpack_pack_array(pk, 4);
    (void)msgpack_pack_uint8(pk, SBX_MSG_RESPONSE);
    (void)msgpack_pack_uint32(pk, id);
    sbx_pack_err(pk, e);
    (void)msgpack_pack_nil(pk);
}

void sbx_pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    sbx_pack_cstr(pk, k);
    if (v == NULL) {
        (void)msgpack_pack_nil(pk);
    } else {
        sbx_pack_cstr(pk, v);
    }
}

void sbx_pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    sbx_pack_cstr(pk, k);
    (void)msgpack_pack_uint64(pk, v);
}

void sbx_pack_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
    sbx_pack_cstr(pk, k);
    (void)msgpack_pack_int64(pk, v);
}

void sbx_pack_kv_bool(msgpack_packer *pk, const char *k, bool v)
{
    sbx_pack_cstr(pk, k);
    if (v) {
        (void)msgpack_pack_true(pk);
    } else {
        (void)msgpack_pack_false(pk);
    }
}

void sbx_pack_kv_nil(msgpack_packer *pk, const char *k)
{
    sbx_pack_cstr(pk, k);
    (void)msgpack_pack_nil(pk);
}

size_t sbx_data_header(uint8_t out[SBX_STREAM_DATA_HDR_MAX], uint32_t stream, uint32_t len)
{
    size_t n = SBX_FRAME_HDR;

    out[n++] = 0x93;
    out[n++] = 0x03;
    if (stream <= 0x7f) {
        out[n++] = (uint8_t)stream;
    } else if (stream <= 0xff) {
        out[n++] = 0xcc;
        out[n++] = (uint8_t)stream;
    } else if (stream <= 0xffff) {
        out[n++] = 0xcd;
        out[n++] = (uint8_t)(stream >> 8);
        out[n++] = (uint8_t)stream;
    } else {
        out[n++] = 0xce;
        sbx_frame_put_len(out + n, stream);
        n += 4;
    }
    if (len <= 0xff) {
        out[n++] = 0xc4;
        out[n++] = (uint8_t)len;
    } else if (len <= 0xffff) {
        out[n++] = 0xc5;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = 0xc6;
        sbx_frame_put_len(out + n, len);
        n += 4;
    }
    sbx_frame_put_len(out, (uint32_t)(n - SBX_FRAME_HDR + len));
    return n;
}
